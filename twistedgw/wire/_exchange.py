"""One request/response exchange, and the interfaces a front implements to serve it.

The gateway's request path (``http/_resource.py``), the caller resolution
(``http/_callers.py``) and the forwarder (``upstream/_forward.py``) read a request
and answer it through these, never through twisted.web's ``Request``: data apart
from I/O, as h11's events and mitmproxy's flows keep them. A front (the HTTP/1.1
channel in ``http/_front.py``, an HTTP/2 stream, or the adapter for
twisted.web-``Request``-shaped callers in ``http/_webexchange.py``) builds one
``Exchange`` per request and gives it

* a ``Responder``: how the answer leaves (status and headers once, body writes,
  finish or abort, back-pressure), and
* a ``BodySource`` when a body follows the head: how the body is read, *only once
  the request was allowed*. Nothing reads a body before that: a refused request is
  answered without reading it (issue 22 item 4).

The front calls ``site.resource.handle(exchange)`` (``GatewayResource.handle``)
as soon as the head is parsed and routed; the verdict is known from the head and
the connection, since plugins never read a body (``pipeline/_interfaces.py``).

Writing a front (HTTP/2 streams, for example):

``Responder``
    ``start_response(status, headers, length, reason=None)``
        The status and the end-to-end header fields, once: ``headers`` is a list of
        ``(name, value)`` byte pairs, complete (``Server`` and ``Date`` included:
        ``answer_headers()`` starts one) and free of framing fields
        (``Content-Length``, ``Transfer-Encoding``, ``Connection``): the front adds
        those from ``length`` (the body's length when known, else None) and its own
        connection state. A response to ``HEAD`` announces ``length`` and carries no
        body; 1xx, 204 and 304 carry neither. Values hold no CR, LF or NUL (the
        HTTP/1.1 front replaces any with a space). Build the head (HTTP/1.1: one
        bytes string; HTTP/2: one header list) here, and send it with the first
        body bytes or at ``finish``. If the request's body was not read, the
        HTTP/1.1 front answers ``Connection: close`` and closes after a linger.
    ``write(data)``
        Body bytes, in order. Ignored after ``finish``/``abort`` or once the client
        left.
    ``finish()``
        The answer is complete. The next request of the connection may start.
    ``abort()``
        Drop the client's connection (HTTP/2: reset the stream) so that a partial
        body can never look complete.
    ``register_producer(producer)`` / ``unregister_producer()``
        An ``IPushProducer`` (the forwarder's relay of a backend body) to pause
        while the client's output is full and resume when it drains; if it is full
        when registered, pause it at once.
    ``when_gone(callback)``
        ``callback()`` once if the client goes away before ``finish``
        (None: forget it). At most one at a time.
    ``started``, ``finished``, ``gone``
        Whether ``start_response`` ran, whether ``finish`` ran, whether the client
        left (or the exchange was aborted).

``BodySource``
    ``length``
        The announced length (Content-Length), or None (chunked; HTTP/2 without
        ``content-length``).
    ``read(ready)``
        Start reading the body: send ``100 Continue`` if the client waits for it
        (HTTP/1.1), let the client send (HTTP/1.1: resume the transport, paused
        since the head; HTTP/2: open the stream's flow-control window), count it
        against the route's ``body_limit`` and spool it (memory up to 100 kB, a
        temporary file beyond). Call ``ready(spool, size)`` once with the whole body
        (``spool`` positioned at its start, or None when empty). When the body
        cannot be read (over the limit, malformed, too slow, the client left), the
        front answers the client itself (413, 400, 408) and records it; ``ready``
        is never called.

``Connection`` is what every exchange of one connection shares (its addresses,
TLS transport and the values derived from them once); ``Exchange.client_ip`` and
``Exchange.secure`` start as its values and change only where a trusted proxy
says otherwise (``http/_callers.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, Protocol

from twisted.internet.interfaces import IAddress, IPushProducer

from twistedgw.wire._fields import Fields


class Responder(Protocol):
    """How one exchange is answered (see the module docstring)."""

    @property
    def started(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    @property
    def gone(self) -> bool: ...

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
    ) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...

    def register_producer(self, producer: IPushProducer) -> None: ...

    def unregister_producer(self) -> None: ...

    def when_gone(self, callback: Callable[[], None] | None) -> None: ...


class ResponderWrapper:
    """A ``Responder`` that hands everything to the responder it wraps: a subclass
    overrides only what it changes (the CORS headers, the response cache's copy)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Responder) -> None:
        self._inner = inner

    @property
    def started(self) -> bool:
        return self._inner.started

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def gone(self) -> bool:
        return self._inner.gone

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
    ) -> None:
        self._inner.start_response(status, headers, length, reason)

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def finish(self) -> None:
        self._inner.finish()

    def abort(self) -> None:
        self._inner.abort()

    def register_producer(self, producer: IPushProducer) -> None:
        self._inner.register_producer(producer)

    def unregister_producer(self) -> None:
        self._inner.unregister_producer()

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        self._inner.when_gone(callback)


#: What ``BodySource.read`` calls with the whole body: the spool (at its start) and size.
BodyReady = Callable[["IO[bytes] | None", int], None]


class BodySource(Protocol):
    """How one exchange's request body is read, after an allow (module docstring)."""

    @property
    def length(self) -> int | None: ...

    def read(self, ready: BodyReady) -> None: ...


def _host_of(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else ""


class Connection:
    """What every exchange of one client connection shares, computed once.

    ``transport`` is the connection's own transport (TLS or TCP; an HTTP/2 stream's
    connection's): the client-certificate verdict and ``tcpi_bytes_acked`` are read
    from it. ``forwarded`` is the ``X-Forwarded-For``/``-Proto`` block of every
    request forwarded from this connection, built the first time one is.

    The request path keeps here what it derives from the connection alone, the first
    time a request needs it (issue 27 item 3), under the config generation it was
    derived with (``derived_under``; a reload's new runtime derives them again):
    ``caller`` (who the handshake says the caller is, whether a load balancer's header
    may say otherwise: ``http/_callers.py``), ``sni`` (the ``[[tls.sni]]`` entry the
    handshake chose, for the 421 check) and ``verdict`` (an API's pipeline's verdict on
    that caller with the header lines it forwards, for pipelines whose verdict depends
    on nothing else: ``http/_resource.py``). Their types are the request path's.

    ``peer`` and ``local`` (address objects) are asked of ``transport`` the first time
    something reads them when the connection was made without them (``of_transport``):
    an idle connection keeps the client's address as the ``client_ip`` string only."""

    __slots__ = (
        "_local", "_peer", "caller", "client_ip", "forwarded", "generation", "secure", "sni",
        "transport", "verdict",
    )

    def __init__(self, peer: IAddress | None, local: IAddress | None, secure: bool,
                 transport: Any) -> None:
        self._peer = peer
        self._local = local
        self.secure = secure
        self.transport = transport
        self.client_ip = _host_of(peer)
        self.forwarded: bytes | None = None
        self.generation: object = None
        self.caller: Any = None
        self.sni: Any = None
        self.verdict: Any = None

    @classmethod
    def of_transport(cls, transport: Any, secure: bool, peer: IAddress | None) -> Connection:
        """A connection that keeps of ``peer`` (its address now) its host only, and asks
        ``transport`` for its addresses when they are read."""
        conn = cls(None, None, secure, transport)
        conn.client_ip = _host_of(peer)
        return conn

    @property
    def peer(self) -> IAddress | None:
        peer = self._peer
        if peer is None and self.transport is not None:
            peer = self._peer = self.transport.getPeer()
        return peer

    @property
    def local(self) -> IAddress | None:
        local = self._local
        if local is None and self.transport is not None:
            try:
                local = self._local = self.transport.getHost()
            except OSError:  # the socket is closed already
                return None
        return local

    def derived_under(self, generation: object) -> None:
        """Forget the derived values unless they were derived under ``generation`` (the
        runtime in force): a reload's config may judge the same connection otherwise."""
        if self.generation is not generation:
            self.generation = generation
            self.caller = self.sni = self.verdict = None


class Exchange:
    """One request as the front parsed it, and the handles to read its body and answer it.

    Slotted, built once per request; ``http/_resource.GatewayExchange`` extends it
    with what the request path learns (route, caller, record)."""

    __slots__ = (
        "body", "client_ip", "conn", "fields", "host", "lines", "method", "responder",
        "secure", "target", "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        fields: Fields,
        host: bytes | None,
        conn: Connection,
        responder: Responder,
        body: BodySource | None,
    ) -> None:
        self.method = method
        self.target = target  # origin-form, as sent
        self.version = version  # b"HTTP/1.1", b"HTTP/1.0" or b"HTTP/2"
        self.fields = fields
        # The Host (HTTP/2: :authority) value as sent, *validated* (_hosts.from_header);
        # None when absent. The only value ever copied into X-Forwarded-Host.
        self.host = host
        self.conn = conn
        self.responder = responder
        self.body = body  # None: no body follows the head
        self.client_ip = conn.client_ip
        self.secure = conn.secure
        # The field lines after Host as the client sent them, each with the CRLF before
        # it, when the front checked the head with ``wire.USUAL_REQUEST_HEAD``: none
        # names a field in ``wire.UNUSUAL_NAMES`` or holds a ``_`` in its name, none
        # holds a CTL, and the forwarder copies them as they came. None: read ``fields``.
        self.lines: bytes | None = None

    @property
    def path(self) -> bytes:
        """The target's path (no query), as sent."""
        return self.target.split(b"?", 1)[0]
