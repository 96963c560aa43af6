"""The gateway's HTTP/1.1 server front: bytes in, one parse per request head, bytes out.

It serves every HTTP/1.1 connection of the gateway's listeners, those with
``http2 = true`` included (http/_h2.py hands a connection over to HTTP/2 when ALPN
chose h2, before any byte is read here). twisted.web's ``HTTPChannel``, which it
replaced, parses line by line through ``LineReceiver``, builds a ``Request`` and
two ``Headers`` per request, resets a timer per read and writes the status line,
the headers and the body in separate writes, and needed the gateway's checks
added on top. This channel works directly on the (TLS) transport:

* one input buffer; a request head is parsed in one pass once ``CRLFCRLF`` is
  in, by ``twistedgw.wire`` (the grammar and framing rules the upstream client
  shares), counted against ``max_header_bytes`` as it arrives (414 for the
  request line, 431 for the rest);
* the request is routed once and becomes one object, an ``_H1Exchange`` (the request
  path's ``GatewayExchange`` that is its own ``wire.Responder`` and
  ``wire.BodySource``), handed to the site's resource (``GatewayResource.handle``) *as
  soon as its head is in*. Every verdict is
  known from the head and the connection (plugins never read a body), so the body
  waits unread while the request is judged (``Phase.JUDGING``: the transport is
  paused, no ``100 Continue`` is sent); only an allow reads it
  (``BodySource.read``: ``100 Continue`` then, the body counted as it arrives
  against the route's limit, 413 over it, chunked included, and spooled: memory
  up to ``MEMORY_BODY``, a temporary file beyond). A request answered without its
  body being read (a refusal) says ``Connection: close``; the connection then
  lingers (``LINGER_SECONDS``, ``LINGER_BYTES``) and closes. So an unauthenticated
  client can make the gateway neither read nor store an upload (issue 22 item 4);
* the response head is built once, as bytes, and written together with the first
  body bytes;
* keep-alive on HTTP/1.1, and on HTTP/1.0 when the client asks for it
  (``Connection: keep-alive``) and the answer has a length;
* one request at a time (pipelined requests wait in the buffer, reading stops
  past ``EAGER_READ`` of them), reading stops while the transport's unsent output
  is over its bound, and no timer is armed while a request is answered.

Where the connection is (``Phase``) is one named state, not integers and flags.
Refusals are ``http/_guard.raw_response`` (WSO2-style JSON, ``Connection: close``),
followed by a linger and the guard's bounded close (``BoundedClose``); each is
recorded as a ``RequestRecord`` like any answered request.
"""

from __future__ import annotations

import enum
import io
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.server import Site
from zope.interface import implementer

from twistedgw import _deadlines, _hosts, errors
from twistedgw._deadlines import Deadline
from twistedgw._memo import remember
from twistedgw._twisted import fresh_bios
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._guard import (
    LINGER_SECONDS,
    BoundedClose,
    Guard,
    raw_response,
    request_timeout,
)
from twistedgw.http._resource import (
    Gateway,
    GatewayExchange,
    GatewayResource,
    RequestRecord,
    Routed,
    serve_exchange,
)
from twistedgw.wire import (
    USUAL_HEAD_MAX,
    USUAL_LINES_MAX,
    USUAL_REQUEST_HEAD,
    BodyReady,
    ChunkedDecoder,
    Connection,
    Fields,
    Framing,
    MalformedChunks,
    TinyChunks,
    WireError,
    answer_headers,
    check_partial_head,
    parse_request_fields,
    usual_fields,
)

log = Logger()

#: Bytes of pipelined requests read while one is answered before reading pauses.
EAGER_READ = 0x4000
#: Bodies up to this size are kept in memory, larger ones spooled to a temporary file
#: (as twisted.web does).
MEMORY_BODY = 100_000
#: Bytes a lingering connection (refused, or answered without its body) reads and
#: discards before it stops reading; it closes ``LINGER_SECONDS`` after the answer.
LINGER_BYTES = 256 * 1024

_NO_BODY_STATUSES = frozenset({204, 304})
_HTTP11, _HTTP10 = b"HTTP/1.1", b"HTTP/1.0"
_new_routed = tuple.__new__  # a Routed without its NamedTuple __new__ (a Python call)
#: The usual head's Host values (bytes as sent) and the host each names (``_hosts``'
#: spelling, a value of these bytes only): callers repeat a few hosts. Emptied when
#: full, so unique values cannot grow memory; a refused value is never stored.
_host_names: dict[bytes, str] = {}
_HOST_NAMES_MAX = 1024


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
_F_NONE, _F_LENGTH, _F_CHUNKED = Framing.NONE, Framing.LENGTH, Framing.CHUNKED


class Phase(enum.Enum):
    """Where a connection is between two requests' bytes."""

    HEAD = "reading a request head (or idle between requests)"
    JUDGING = "the head is dispatched; its body waits unread (reading paused) for a verdict"
    BODY = "allowed: reading the request body"
    ANSWERING = "the request is in: its answer is awaited or being sent"
    LINGERING = "refused, or answered unread: discarding what the client sends, then closing"
    UPGRADED = "switched protocols (101): its bytes are a tunnel's (http/_upgrade.py)"


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
(_HEAD, _JUDGING, _BODY, _ANSWERING, _LINGERING, _UPGRADED) = (
    Phase.HEAD, Phase.JUDGING, Phase.BODY, Phase.ANSWERING, Phase.LINGERING, Phase.UPGRADED,
)


def _bad(description: str) -> WireError:
    return WireError(errors.bad_request(description))


def _one_line(value: bytes) -> bytes:
    """A header value can never carry a line break (or a NUL) into a response head."""
    return value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")


class _H1Exchange(GatewayExchange):
    """One request on an HTTP/1.1 connection: the request path's exchange
    (``GatewayExchange``) that is its own ``wire.Responder`` (the answer) and
    ``wire.BodySource`` (the request body), one object per request (issue 27 item 1).
    See ``twistedgw/wire/_exchange.py``.

    It refers to itself as ``responder`` (and ``body``) until its answer ends: then
    ``_end`` points them elsewhere, so no reference cycle outlives the request."""

    __slots__ = (
        "_chunked", "_fields", "_head", "_host_field", "_on_gone", "_silent", "body_length",
        "channel", "expect_continue", "finished", "gone", "head_request", "started",
    )
    # Its own fields (``GatewayExchange``'s are declared there), set by
    # ``FrontChannel._head``, the one place that makes an exchange.
    channel: FrontChannel
    # None: a head ``wire.USUAL_REQUEST_HEAD`` matched, whose ``Fields`` are made from
    # ``_host_field``, ``host`` and ``lines`` when something reads them.
    _fields: Fields | None
    _host_field: bytes
    head_request: bool
    started: bool
    finished: bool
    gone: bool
    _on_gone: Callable[[], None] | None
    # Set only for a request with a body.
    body_length: int | None  # Content-Length; None when chunked
    expect_continue: bool  # the client waits for 100 Continue
    # Set when the answer starts (``start_response``, ``switch_protocols``): the usual
    # answer (``respond_block``) reads none of them.
    _head: bytes | None  # the head, sent with the first bytes
    _chunked: bool
    _silent: bool  # HEAD, or a status without a body: writes carry nothing

    def __init__(self) -> None:
        """Not called: ``FrontChannel._head`` makes an exchange and sets its fields there,
        without a call (a call with its ~14 arguments is ~750 instructions on 3.11, once
        per request)."""
        raise TypeError("an HTTP/1.1 exchange is made by FrontChannel._head")

    @property  # type: ignore[override]
    def fields(self) -> Fields:
        """The request's header fields (``wire.Exchange.fields``), made on the first read
        for a usual head: the usual forwarded request reads none."""
        fields = self._fields
        if fields is None:
            assert self.host is not None and self.lines is not None
            fields = self._fields = usual_fields(self._host_field, self.host, self.lines)
        return fields

    @fields.setter
    def fields(self, fields: Fields) -> None:
        self._fields = fields

    def _end(self) -> None:
        """The answer ended (finished, aborted, or the client left): the exchange stops
        referring to itself (what still answers through ``responder`` finds it ended)."""
        self.responder = _ENDED
        if self.body is not None:
            self.body = _ENDED

    # -- wire.BodySource -----------------------------------------------------

    @property
    def length(self) -> int | None:
        return self.body_length

    def read(self, ready: BodyReady) -> None:
        self.channel.read_body(self, ready)

    # -- wire.Responder -------------------------------------------------------

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
        clean: bool = False,
    ) -> None:
        """``wire.Responder.start_response``; ``clean``: the caller knows no value (nor
        ``reason``) holds a CR, LF or NUL, and the head is not scanned for one."""
        if self.started or self.gone or self.finished:
            return
        self.started = True
        channel = self.channel
        if channel._phase is not _ANSWERING:  # the usual phase: nothing to do there
            channel.answering(self)  # the body unread: skipped if all in, else Connection: close
        version = self.version
        phrase = reason if reason is not None else RESPONSES.get(status, b"Unknown")
        lines = [b"%s %d %s" % (version, status, phrase)]
        lines.extend([b"%s: %s" % pair for pair in headers])
        head = b"\r\n".join(lines)
        # Every line but the last ends in the one CRLF joined after it: then no value
        # holds a CR, LF or NUL. Otherwise (a transform's value, say) each is made a space.
        crlfs = len(lines) - 1
        if not clean and (
            head.count(b"\n") != crlfs or head.count(b"\r") != crlfs or b"\x00" in head
        ):
            lines[1:] = [b"%s: %s" % (_one_line(n), _one_line(v)) for n, v in headers]
            lines[0] = b"%s %d %s" % (version, status, _one_line(phrase))
            head = b"\r\n".join(lines)
        self._head = head + self._framing(status, length)

    def _framing(self, status: int, length: int | None) -> bytes:
        """The head's end: its framing lines (each with the CRLF before it), from
        ``length`` and the connection's state, and the empty line. Decides whether the
        writes carry a body (``_silent``) and whether it is chunked."""
        version = self.version
        channel = self.channel
        self._chunked = False
        silent = self._silent = (
            self.head_request or status in _NO_BODY_STATUSES or status < 200
        )
        if silent:
            frame = b"\r\nContent-Length: %d" % (length,) if (
                self.head_request and length is not None and status not in _NO_BODY_STATUSES
            ) else b""
        elif length is not None:
            if channel.persistent and version == b"HTTP/1.1":  # the usual answer
                return b"\r\nContent-Length: %d\r\n\r\n" % (length,)
            frame = b"\r\nContent-Length: %d" % (length,)
        elif version == b"HTTP/1.1":
            frame = b"\r\nTransfer-Encoding: chunked"
            self._chunked = True
        else:  # HTTP/1.0 and no length: the body ends where the connection does
            frame = b""
            channel.persistent = False
        if not channel.persistent:
            if version == b"HTTP/1.1":
                return frame + b"\r\nConnection: close\r\n\r\n"
        elif version == b"HTTP/1.0":
            return frame + b"\r\nConnection: keep-alive\r\n\r\n"
        return frame + b"\r\n\r\n"

    def write(self, data: bytes) -> None:
        if self.finished or self.gone or not self.started:
            return
        head = self._head
        if head is not None:
            self._head = None
            if data and not self._silent:
                data = b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data
                self.channel.write(head + data)
            else:
                self.channel.write(head)
            return
        if self._silent or not data:
            return
        self.channel.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def finish(self) -> None:
        if self.finished or self.gone:
            return
        if not self.started:
            self.start_response(200, answer_headers(), 0)
        self.finished = True
        self._on_gone = None
        head, self._head = self._head, None
        tail = b"0\r\n\r\n" if self._chunked else b""
        if head is not None:
            self.channel.write(head + tail)
        elif tail:
            self.channel.write(tail)
        self._end()
        self.channel.request_done(self)

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None,
        body: bytes,
        clean: bool = False,
    ) -> None:
        """``start_response``, ``write(body)`` and ``finish`` in one call, for an answer
        whole in hand (a backend's small response): the head and body leave in one write.
        ``clean``: as ``start_response``'s."""
        if self.started or self.finished or self.gone:
            self.write(body)
            self.finish()
            return
        # (Arguments by position on the hot path: a call with keywords is not specialised
        # by 3.11's interpreter and runs the callee in a nested one.)
        self.start_response(status, headers, length, reason, clean)
        head = self._head
        self._head = None
        self.finished = True
        self._on_gone = None
        if self._chunked:
            data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        else:
            data = body if not self._silent else b""
        channel = self.channel
        transport = channel.transport
        if transport is not None and head is not None:
            transport.write(head + data)
        self._end()
        channel.request_done(self)

    def respond_block(
        self, status: int, block: bytes, length: int | None, reason: bytes, body: bytes
    ) -> None:
        """``respond`` with the header fields as one block of lines, each with the CRLF
        before it (``Server`` and ``Date`` included, no framing field), known to hold no
        CR, LF or NUL but those CRLFs: the forwarder's copy of a backend's own lines
        (``upstream.relay_block``), where ``respond`` would take a list to format."""
        if self.started or self.finished or self.gone:
            self.write(body)
            self.finish()
            return
        self.started = True
        channel = self.channel
        if channel._phase is not _ANSWERING:
            channel.answering(self)
        self.finished = True
        self._on_gone = None
        version = self.version
        if (
            length is not None and channel.persistent and version is _HTTP11  # (see below)
            and not self.head_request and 200 <= status and status not in _NO_BODY_STATUSES
        ):  # ``_framing``'s usual answer, head and body in one format (a usual head's
            # version is ``_HTTP11`` itself: tested by identity, not a bytes comparison;
            # another HTTP/1.1 takes ``_framing``, which frames it the same)
            data = b"%s %d %s%s\r\nContent-Length: %d\r\n\r\n%s" % (
                version, status, reason, block, length, body)
        else:
            data = b"%s %d %s%s%s" % (version, status, reason, block,
                                      self._framing(status, length))
            if self._chunked:
                data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            elif not self._silent:
                data += body
        transport = channel.transport
        if transport is not None:
            transport.write(data)
        # ``_end``, written out (the usual answer's path: a frame fewer per request).
        self.responder = _ENDED
        if self.body is not None:
            self.body = _ENDED
        channel.request_done(self)

    def abort(self) -> None:
        if self.finished or self.gone:
            return
        self.gone = True
        self._on_gone = None
        self._end()
        self.channel.abort_stream(self)

    def register_producer(self, producer: IPushProducer) -> None:
        if not self.gone and not self.finished:
            self.channel.register_producer(producer)

    def unregister_producer(self) -> None:
        self.channel.register_producer(None)

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        self._on_gone = callback

    def switch_protocols(self, head: bytes, tunnel: Any) -> tuple[FrontChannel, bytes] | None:
        """Send ``head`` (a ``101``) and hand the connection to ``tunnel``
        (``FrontChannel.switch``): the channel (an ``upstream.ClientEnd``) and the bytes
        the client sent after its head, or None if it is gone. Only this front offers
        it (WebSockets are HTTP/1.1's)."""
        if self.started or self.finished or self.gone:
            return None
        self.started = True
        self._head, self._chunked, self._silent = None, False, False
        return self.channel.switch(self, head, tunnel)

    # -- the channel's ---------------------------------------------------------

    def lost(self) -> None:
        """The client connection is gone."""
        if self.gone:
            return
        self.gone = True
        callback, self._on_gone = self._on_gone, None
        if callback is not None and not self.finished:
            callback()
        self._end()


#: ``FrontChannel``'s way to make an exchange: ``object.__new__``, its fields set in
#: ``_head`` (no ``__init__`` call).
_new_object = object.__new__


class _Ended:
    """The ``responder`` (and ``body``) of an exchange whose answer ended
    (``_H1Exchange._end``): it was finished, aborted or its client left, and everything
    asked of it now is ignored (its body is never read)."""

    __slots__ = ()

    started = finished = gone = True
    length = None

    def read(self, ready: BodyReady) -> None:
        pass

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
    ) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def register_producer(self, producer: IPushProducer) -> None:
        pass

    def unregister_producer(self) -> None:
        pass

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        pass


_ENDED = _Ended()


@implementer(IHandshakeListener, IPushProducer)
class FrontChannel(BoundedClose, Protocol):
    """One client connection: parse, guard, dispatch, answer. See the module docstring."""

    # Set by ``Site.buildProtocol``.
    site: Site
    callLater: Callable[..., IDelayedCall]
    timeOut: Any = None

    # One channel per open connection: slots keep its ~30 fields out of an instance
    # dict, which past 30 keys stops sharing its keys and costs ~1.5 KiB a connection.
    # (Twisted's Protocol has a dict: ``transport``, ``site`` and the like stay there.)
    __slots__ = (
        "_body", "_body_limit", "_body_size", "_buf", "_close_timer", "_closing",
        "_closing_timer", "_closing_unsent", "_conn", "_counted", "_decoder",
        "_handshake_at", "_header_at", "_idle_at", "_left", "_limits", "_line", "_lingered",
        "_network", "_now", "_output_full", "_parsing", "_partial", "_phase", "_producer",
        "_reading", "_ready", "_served", "_stream", "_timer", "_timer_at",
        "guard", "persistent", "refused", "upgraded",
    )

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.refused = False
        self.persistent = True
        self._conn: Connection | None = None
        self._limits = Limits()
        self._buf = b""
        self._phase = _HEAD
        self._counted = False
        self._partial = False  # some bytes of a request are in, not all
        self._stream: _H1Exchange | None = None  # the exchange being read or answered
        self._ready: BodyReady | None = None  # who waits for its body
        self._line: tuple[bytes, bytes] | None = None  # the last request line, for records
        self._left = 0  # Content-Length bytes still due
        self._decoder: ChunkedDecoder | None = None
        self._body_size = 0
        self._body_limit = 0
        self._body: IO[bytes] | None = None
        self._producer: Any = None  # the response's (the forwarder's relay)
        self._network: Any = None  # the transport as a push producer (reading)
        self._output_full = False
        self._reading = True
        self._lingered = 0  # bytes discarded while lingering
        # One timer per connection, a ``_deadlines.Deadline`` in one heap for every
        # channel (a DelayedCall each was ~0.4 KiB per connection, and reactor work):
        # it is armed at the earliest of these deadlines (reactor seconds; None = not
        # timed) and finds what is due when it fires. Reads and answers only move
        # ``_idle_at``; the timer, found early, re-arms.
        self._handshake_at: float | None = None
        self._header_at: float | None = None
        self._idle_at: float | None = None
        self._timer: Deadline | None = None
        self._timer_at = 0.0  # the deadline the timer was armed for
        self._now: Callable[[], float] = _no_clock  # the reactor's clock: connectionMade
        self._close_timer: IDelayedCall | None = None
        self._closing_timer: IDelayedCall | None = None
        self._closing_unsent = 0
        self._closing = False
        self._parsing = False
        self._served = 0  # request heads taken on this connection
        self.upgraded: Any = None  # the tunnel after a 101 (its ``shutdown``: app/_drain.py)

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def requests(self) -> list[GatewayExchange]:
        """The exchange in flight (a list of at most one): what a graceful stop waits for
        (app/_drain.py)."""
        stream = self._stream
        return [stream] if stream is not None else []

    @property
    def secure(self) -> bool:
        return self._conn is not None and self._conn.secure

    @property
    def peer(self) -> Any:
        return self._conn.peer if self._conn is not None else None

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        limits = self._limits = self.guard.limits()
        self.guard.open += 1
        self._counted = True
        secure = isinstance(transport, TLSMemoryBIOProtocol)
        # The socket's own transport under TLS: TLS's getPeer, getHost and the rest go
        # to it through ProtocolWrapper's __getattr__ (a cost per connection).
        tcp = transport.transport if secure else transport
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)
        self._conn = Connection.of_transport(transport, secure, tcp.getPeer())
        self._network = IPushProducer(transport, None)
        transport.registerProducer(self, True)
        if self.guard.open > limits.max_connections:
            self.guard.refused_connections += 1
            log.warn(
                "Refusing a connection: max_connections ({limit}) are open",
                limit=limits.max_connections,
            )
            self._abort()
            return
        # The header timeout runs from the connection's start, as do the handshake's
        # and the idle one: the one timer is armed at the earliest.
        first = limits.client_header_timeout
        if secure:
            first = min(first, limits.handshake_timeout)
        if limits.idle_timeout:
            first = min(first, limits.idle_timeout)
        clock = _deadlines.of(self.callLater)  # one heap and reactor call for all channels
        self._now = clock.seconds
        now = self._now()
        at = self._timer_at = now + first  # the earliest deadline below, to the bit
        self._timer = clock.arm(at, self)
        if secure:
            self._handshake_at = now + limits.handshake_timeout
        self._header_at = now + limits.client_header_timeout
        if limits.idle_timeout:
            self._idle_at = now + limits.idle_timeout

    def handshakeCompleted(self) -> None:
        self._handshake_at = None  # the timer, if armed for it, finds nothing due

    def hand_over(self) -> bool:
        """Give the connection up to another protocol (HTTP/2 after ALPN h2, http/_h2.py)
        before any byte was read: timers cancelled, no longer the transport's producer.
        Returns whether it counted against ``max_connections``; the new owner does now."""
        self._stop_timing("_header_at", "_handshake_at", "_idle_at")
        transport: Any = self.transport
        if transport is not None:
            transport.unregisterProducer()  # registered in connectionMade
        self._network = None
        self.transport = None
        counted, self._counted = self._counted, False
        return counted

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        tracker = getattr(getattr(self, "site", None), "tracker", None)  # app/_drain.py
        if tracker is not None:
            tracker.forget(self)
        self._stop_timing("_header_at", "_handshake_at", "_idle_at")
        for name in ("_close_timer", "_closing_timer"):
            self._cancel(name)
        if self._counted:
            self._counted = False
            self.guard.open -= 1
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopping a response producer failed")
        stream, self._stream = self._stream, None
        self._ready = None
        self._discard_body()
        self._buf = b""
        if stream is not None:
            stream.lost()

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # -- timers ----------------------------------------------------------

    def _arm(self, at: float) -> None:
        """Make the one timer fire by ``at``. A timer armed later is cancelled and made
        anew: ``DelayedCall.reset`` to an earlier time searches the reactor's whole heap."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = _deadlines.of(self.callLater).arm(at, self)

    def _stop_timing(self, *deadlines: str) -> None:
        """Drop ``deadlines``; the timer goes with the last one."""
        for name in deadlines:
            setattr(self, name, None)
        if self._handshake_at is None and self._header_at is None and self._idle_at is None:
            self._cancel("_timer")

    def _timed_out(self) -> None:
        """The timer fired: run what is due, earliest deadline first (ties: handshake,
        header, idle, the order the three timers this replaces were made in), then
        re-arm it at the next deadline."""
        self._timer = None
        # At least the deadline it was armed for: the clock may round below it.
        now = max(self._now(), self._timer_at)
        while True:
            due: float | None = None
            handler: Callable[[], None] | None = None
            for at, run in (
                (self._handshake_at, self._handshake_timed_out),
                (self._header_at, self._header_timed_out),
                (self._idle_at, self._idle_check),
            ):
                if at is not None and at <= now and (due is None or at < due):
                    due, handler = at, run
            if handler is None:
                break
            handler()
        nxt = [
            at for at in (self._handshake_at, self._header_at, self._idle_at) if at is not None
        ]
        if nxt:
            self._arm(min(nxt))
        self._release_buffers()  # idle housekeeping: after a large transfer, say

    def _release_buffers(self) -> None:
        """An idle TLS connection's memory BIOs keep the largest buffers they ever
        needed (the handshake's flights, a large body): give it empty ones."""
        if (
            self.secure and self._served  # a request was served: the handshake is done
            and self._phase is _HEAD and not self._partial and not self._buf
            and not self.refused and not self._closing and self.transport is not None
        ):
            handle = self.transport.getHandle()  # type: ignore[attr-defined]
            if handle is not None:  # None once TLS lost the connection
                fresh_bios(handle)

    def _arm_idle(self) -> None:
        idle = self._limits.idle_timeout
        if idle and self._idle_at is None:
            at = self._idle_at = self._now() + idle
            self._arm(at)

    def _idle_check(self) -> None:
        """No byte for ``idle_timeout`` (the deadline is pushed back per read): 408 if
        mid-request, else close."""
        self._idle_at = None
        phase = self._phase
        if phase is _LINGERING:
            return
        if phase is _ANSWERING or phase is _JUDGING:  # not idle: timed again later
            self._arm_idle()
            return
        if self._partial:
            self.refuse(
                request_timeout(
                    f"the client sent nothing for {self._limits.idle_timeout:g} seconds"
                ),
                "body_timeout",
                linger=False,
            )
            return
        log.info("Timing out client: {peer}", peer=self._peer())
        self.loseConnection()

    def _handshake_timed_out(self) -> None:
        self._handshake_at = None
        log.info("TLS handshake not finished in time; closing {peer}", peer=self._peer())
        self._abort()

    def _header_timed_out(self) -> None:
        self._header_at = None
        if self._phase is not _HEAD:
            return  # the head it timed is in (or the connection was refused)
        if not self._partial:
            if self._served:
                return  # between requests: the idle timeout's business
            # nothing sent at all: nobody to answer
            self._stop_timing("_idle_at")
            self._abort()
            return
        self.refuse(
            request_timeout(
                f"request headers were not received within "
                f"{self._limits.client_header_timeout:g} seconds"
            ),
            "header_timeout",
            linger=False,
        )

    # -- reading ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase is _LINGERING or self._closing:
            self._discard(len(data))
            return
        if self._idle_at is not None:  # pushed back; the timer, found early, re-arms
            self._idle_at = self._now() + self._limits.idle_timeout
        if phase is _ANSWERING or phase is _JUDGING:
            self._buf += data  # pipelined requests, or an unread body's first bytes
            if len(self._buf) > EAGER_READ:
                self._set_reading()
            return
        self._buf = self._buf + data if self._buf else data
        self._parse()

    def _discard(self, size: int) -> None:
        """Lingering: what the client still sends is dropped, up to ``LINGER_BYTES``."""
        self._lingered += size
        if self._lingered > LINGER_BYTES and self._reading and self._network is not None:
            self._reading = False
            self._network.pauseProducing()

    def _parse(self) -> None:
        """Consume what the buffer holds, request by request, until it needs more."""
        if self._parsing:
            return
        self._parsing = True
        try:
            while self._buf and not self._output_full:
                phase = self._phase
                if phase is _HEAD:
                    if not self._head():
                        return
                elif phase is _BODY:
                    self._body_bytes()
                    if self._phase is _BODY:
                        return
                else:
                    return
        except WireError as r:
            if r.line is not None:
                self._line = r.line
            self.refuse(r.error, r.kind)
        finally:
            self._parsing = False

    def _head(self) -> bool:
        """Parse a complete request head, or check the partial one; True if one was taken.
        A head taken is routed, its body framed, its exchange made and dispatched here, in
        one frame: the steps every request takes."""
        buf = self._buf
        limit = self._limits.max_header_bytes
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if not self._partial:  # its first bytes: timed from now (a head that came
                self._partial = True  # whole in one read needs no deadline)
                if self._served:  # a keep-alive connection's next request
                    self._header_at = self._now() + self._limits.client_header_timeout
                # (The first request's deadline runs from the connection's start.)
            header_at = self._header_at
            if header_at is not None:  # the head stays incomplete: the timer must see it
                self._arm(header_at)
            check_partial_head(buf, limit)
            return False
        self._buf = buf[end + 4 :]
        self._served += 1
        # The usual head in one match (``wire.USUAL_REQUEST_HEAD``: Host first, no field
        # that frames a body or that the forwarder drops): no body, persistent in HTTP/1.1
        # only, its fields made only if read. Any other head (or a Host that names no
        # host) is read line by line, which refuses what is invalid.
        # Not tried on a connection without a client address (a Unix socket's: NGINX in
        # front, every request of which carries X-Forwarded-For, which no usual head has,
        # after its ~1-2 KB certificate header: a match failing there costs ~48k).
        conn = self._conn
        match = USUAL_REQUEST_HEAD.fullmatch(buf, 0, end) if (
            end < USUAL_HEAD_MAX and end + 4 <= limit and (conn is None or conn.client_ip)
        ) else None
        if match is not None:
            method, target, minor, host_field, host, lines = match.groups()
            # Its host: ``_hosts.from_header``'s answer for these bytes, kept by value in
            # a plain bounded dict (one ``get``; an ``lru_cache`` call costs ~2x).
            host_name: str | None = _host_names.get(host)
            if host_name is None:
                try:
                    host_name = _hosts.from_header(host)  # (<= 255 bytes: the match's)
                except _hosts.BadHost:  # refusals are not kept
                    match = None
                else:
                    remember(_host_names, host, host_name, _HOST_NAMES_MAX)
            if len(lines) > USUAL_LINES_MAX:
                match = None
        if match is not None:
            persistent = minor == b"1"
            version = _HTTP11 if persistent else _HTTP10
            fields: Fields | None = None
            framing = _F_NONE
            length = 0
            expect_continue = False
        else:
            (method, target, version, fields, framing, length, host, host_name,
             expect_continue, persistent) = parse_request_fields(buf[:end], limit)
            host_field = b""
            lines = None
        # The head is in: its deadline is done with (the timer, if armed for it, finds
        # nothing due). The timer is touched only by a head that arrives in pieces.
        self._header_at = None
        # Route it (once: the resource reuses it).
        self._line = (method, target)
        if not persistent:
            self.persistent = False
        guard = self.guard
        if type(guard) is Guard and "route" not in guard.__dict__:
            # Its route (``route_parsed``, written out: the router's one call).
            runtime = guard.gateway.runtime
            if target == runtime.authz_target:  # the authz endpoint's question: no API's
                routed: Routed | None = _new_routed(  # path, its own normal form
                    Routed, (runtime, target, target, None, None, None, host_name))
            else:
                # (Built by the router in ``Routed``'s order: a refused path has no host.)
                routed = runtime.router.parts(Routed, runtime, target, method, host_name)
        else:
            routed = guard.route(target, method, host)
        if framing is not _F_NONE:
            # Frame its body against the route's limit (``Routed.body_limit``).
            if routed is None:
                limit = self._limits.max_body_bytes
            else:
                route = routed.route
                if route is not None and route.api.max_body_bytes is not None:
                    limit = route.api.max_body_bytes
                else:
                    limit = routed.runtime.config.limits.max_body_bytes
            if framing is _F_LENGTH and length > limit:
                raise WireError(errors.payload_too_large(limit), "body_too_large")
            self._body_limit = limit
            self._body_size = 0
        conn = self._conn
        assert conn is not None
        # The exchange, made here: ``object.__new__`` and its fields set in this frame (a
        # class call runs ``__init__`` in a nested interpreter on 3.11, and a call with its
        # arguments costs ~750 instructions; once per request). Each store costs ~80, so
        # what only a body or an answer's start reads is set then (``_H1Exchange``).
        # tests/test_front_channel.py checks that every slot is set.
        stream: _H1Exchange = _new_object(_H1Exchange)
        stream.method = method
        stream.target = target
        stream.version = version
        stream._fields = fields
        stream._host_field = host_field
        stream.lines = lines
        stream.host = host
        stream.conn = conn
        stream.responder = stream
        if framing is _F_NONE:
            stream.body = None
        else:
            stream.body = stream
            stream.body_length = None if framing is _F_CHUNKED else length
            stream.expect_continue = expect_continue
        stream.client_ip = conn.client_ip
        stream.secure = conn.secure
        stream.routed = routed
        stream.began = time.time()
        stream.judged_method = method
        stream.api = None
        stream.call = None
        stream.pipeline = None
        stream.trace = None
        stream.cache = None
        stream.verdict = None
        stream.gateway = None
        stream.edits = None
        stream.switch = None
        # The I/O side.
        stream.channel = self
        stream.head_request = method == b"HEAD"
        stream.started = False
        stream.finished = False
        stream.gone = False
        stream._on_gone = None
        self._stream = stream
        # Dispatched now, the body (if any) unread: it is read only if the exchange is
        # allowed (``read_body``). The idle timer ignores both phases (no re-arm per
        # request).
        self._partial = False
        if framing is _F_NONE:
            self._phase = _ANSWERING
        else:
            self._phase = _JUDGING
            self._set_reading()  # the body stays in the client's socket
        resource = self.site.resource
        try:
            if type(resource) is GatewayResource and "handle" not in resource.__dict__:
                serve_exchange(resource.gateway, stream)  # its ``handle``, minus a call
            else:
                resource.handle(stream)  # type: ignore[attr-defined]
        except Exception:
            self._handler_failed(stream, Failure())
        return True

    # -- the body ----------------------------------------------------------

    def read_body(self, stream: _H1Exchange, ready: BodyReady) -> None:
        """``BodySource.read``: the exchange was allowed; read its body, then ``ready``."""
        if stream is not self._stream or stream.gone or self._phase is not _JUDGING:
            return
        self._ready = ready
        self._phase = _BODY
        self._partial = True  # the idle timer answers 408 if the body stops arriving
        length = stream.body_length
        if length is None:
            self._body = io.BytesIO()
            self._decoder = ChunkedDecoder()
        else:
            self._body = io.BytesIO() if length < MEMORY_BODY else tempfile.TemporaryFile()
            self._left = length
        if stream.expect_continue and not self._buf:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._set_reading()
        if self._buf:
            self._parse()

    def _body_bytes(self) -> None:
        buf, self._buf = self._buf, b""
        decoder = self._decoder
        if decoder is not None:
            try:
                data, rest = decoder.feed(buf)
            except MalformedChunks as e:
                if isinstance(e, TinyChunks):
                    raise _bad(str(e)) from None
                raise _bad(f"malformed chunked body: {e}") from None
            if data:
                self._store(data)
            if rest is not None:
                self._decoder = None
                self._buf = rest + self._buf
                self._body_done()
            return
        left = self._left
        if len(buf) < left:
            self._left = left - len(buf)
            self._store(buf)
            return
        self._store(buf[:left] if len(buf) > left else buf)
        self._buf = buf[left:]
        self._left = 0
        self._body_done()

    def _store(self, data: bytes) -> None:
        body = self._body
        if body is None:
            return
        self._body_size += len(data)
        if self._body_size > self._body_limit:
            raise WireError(errors.payload_too_large(self._body_limit), "body_too_large")
        if isinstance(body, io.BytesIO) and self._body_size > MEMORY_BODY:
            spool: IO[bytes] = tempfile.TemporaryFile()  # closed with the request
            spool.write(body.getvalue())
            body = self._body = spool
        body.write(data)

    def _body_done(self) -> None:
        """The whole body is in: hand it to whoever asked for it."""
        self._phase = _ANSWERING
        self._partial = False
        self._set_reading()  # now reading only pipelined bytes, up to EAGER_READ
        ready, self._ready = self._ready, None
        body = self._body
        size = self._body_size
        if body is not None:
            body.seek(0)  # the spool stays the channel's: closed when the answer is done
        if ready is not None:
            ready(body if size else None, size)

    def _discard_body(self) -> None:
        self._decoder = None
        body, self._body = self._body, None
        if body is not None:
            body.close()

    # -- dispatch ----------------------------------------------------------

    def _handler_failed(self, stream: _H1Exchange, failure: Failure) -> None:
        log.failure("handling a request failed", failure)
        if stream.finished or stream.gone:
            return
        if stream.started:
            stream.abort()
            return
        error = errors.internal_error()
        body = error.body()
        stream.start_response(
            error.status, [*answer_headers(), (b"Content-Type", errors.JSON_TYPE)], len(body)
        )
        stream.write(body)
        stream.finish()

    def answering(self, stream: _H1Exchange) -> None:
        """``stream``'s answer starts. If its body was not read (a refusal), it is
        skipped when it is all in the buffer already, else the connection closes after
        the answer (``request_done`` lingers first)."""
        if stream is not self._stream or self._phase not in (_JUDGING, _BODY):
            return
        if self._phase is _JUDGING and self._skip_buffered_body(stream):
            self._phase = _ANSWERING
            return
        self.persistent = False

    def _skip_buffered_body(self, stream: _H1Exchange) -> bool:
        """Drop an unread body from the buffer if all of it is there; True if it was."""
        buf = self._buf
        length = stream.body_length
        if length is not None:
            if len(buf) < length:
                return False
            self._buf = buf[length:]
            return True
        try:
            _body, rest = ChunkedDecoder().feed(buf)
        except MalformedChunks:
            return False
        if rest is None:
            return False
        self._buf = rest
        return True

    def request_done(self, stream: _H1Exchange) -> None:
        """The answer to ``stream`` is complete: the next request, or close."""
        if stream is not self._stream:
            return
        self._stream = None
        self._ready = None
        if self._body is not None or self._decoder is not None:
            self._discard_body()
        if self.transport is None:
            return
        phase = self._phase
        if phase is _JUDGING or phase is _BODY:  # answered, its body not (all) read
            self._linger_start()
            self._stop_timing("_header_at", "_idle_at")
            self._close_timer = self.callLater(LINGER_SECONDS, self._close)
            return
        if not self.persistent:
            self.loseConnection()
            return
        self._phase = _HEAD
        self._line = None  # that request's; an idle connection keeps no bytes of it
        if self._idle_at is not None:
            self._idle_at = self._now() + self._limits.idle_timeout  # timer stays earlier
        else:
            self._arm_idle()
        if self._reading == self._output_full:  # (reading must change: ``_set_reading``)
            self._set_reading()
        if self._buf:
            self._parse()
        elif self._served == 1:  # the first answer: the handshake's flights went through
            self._release_buffers()

    def switch(
        self, stream: _H1Exchange, head: bytes, tunnel: Any
    ) -> tuple[FrontChannel, bytes] | None:
        """``101 Switching Protocols`` (http/_upgrade.py): write ``head``; from then on the
        connection's bytes go to ``tunnel.from_client`` and the tunnel paces and closes it.
        The channel stops parsing, timing and producing; the connection still counts
        against ``max_connections``, closes boundedly (``loseConnection``), stays busy
        for a graceful stop (``requests``) and its loss reaches the exchange's
        ``when_gone``. Returns itself and what the client sent after its head (None: the
        connection is gone or closing)."""
        transport: Any = self.transport
        if stream is not self._stream or transport is None or self._closing or self.refused:
            return None
        self._phase = _UPGRADED
        self.persistent = False
        self.upgraded = tunnel
        self._stop_timing("_header_at", "_handshake_at", "_idle_at")
        rest, self._buf = self._buf, b""
        network, self._network = self._network, None
        if network is not None:
            transport.unregisterProducer()  # the tunnel registers its own
            if not self._reading:
                network.resumeProducing()
        self._reading = True
        self._producer = None
        self.dataReceived = tunnel.from_client  # type: ignore[method-assign]
        transport.write(head)
        return self, rest

    def abort_stream(self, stream: _H1Exchange) -> None:
        """Drop the connection so a partial response cannot pass as complete."""
        if stream is self._stream:
            self.register_producer(None)
        self._abort()

    # -- writing and back-pressure ------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def register_producer(self, producer: Any) -> None:
        """The response's producer (None: none): paused while the output is full."""
        self._producer = producer
        if producer is not None and self._output_full:
            producer.pauseProducing()

    def _set_reading(self) -> None:
        """Read from the transport unless the output is full or too much is buffered."""
        phase = self._phase
        want = not self._output_full and phase is not _JUDGING and not (
            phase is _ANSWERING and len(self._buf) > EAGER_READ
        )
        network = self._network
        if want == self._reading or network is None:
            return
        self._reading = want
        if want:
            network.resumeProducing()
        else:
            network.pauseProducing()

    def pauseProducing(self) -> None:
        """The transport's unsent output is over its bound: stop reading and producing."""
        if self._output_full:
            return
        self._output_full = True
        producer = self._producer
        if producer is not None:
            producer.pauseProducing()
        if self._phase is not _LINGERING:
            self._set_reading()

    def resumeProducing(self) -> None:
        if not self._output_full:
            return
        self._output_full = False
        producer = self._producer
        if producer is not None:
            producer.resumeProducing()
        if self._phase is _LINGERING:
            return
        self._set_reading()
        if self._buf and self._phase in (_HEAD, _BODY) and self.transport:
            self._parse()

    def stopProducing(self) -> None:
        producer = self._producer
        if producer is not None:
            producer.stopProducing()

    # -- refusing and closing ----------------------------------------------

    def refuse(self, error: GatewayError, kind: str, *, linger: bool = True) -> None:
        """Answer ``error`` and close; the request in progress is never dispatched."""
        if self.refused:
            return
        self.refused = True
        self._linger_start()
        stream, self._stream = self._stream, None
        self._ready = None
        if stream is not None:
            stream.gone = True  # its handler (if any) writes nothing more
            stream._end()
        self._stop_timing("_header_at", "_idle_at")
        transport: Any = self.transport
        if transport is None or not getattr(transport, "connected", True):
            return
        transport.write(raw_response(error))
        self._record(error, kind, len(error.body()))
        if linger:
            self._close_timer = self.callLater(LINGER_SECONDS, self._close)
        else:
            self._close()

    def _linger_start(self) -> None:
        """From now on the connection reads only to discard (bounded), then closes."""
        self._phase = _LINGERING
        self._partial = False
        self._lingered = len(self._buf)
        self._buf = b""
        self._discard_body()
        self._producer = None
        if not self._reading and self._network is not None and self._lingered <= LINGER_BYTES:
            self._reading = True
            self._network.resumeProducing()

    def _close(self) -> None:
        self._close_timer = None
        if self.transport is not None:
            self.loseConnection()

    def loseConnection(self) -> None:
        """Close after the response, within ``CLOSE_TIMEOUT`` of the close_notify.

        ``TLSMemoryBIOProtocol.loseConnection`` sends close_notify and then waits
        for the client's with no timer; a TCP transport waits for its buffer to
        drain, forever if the client reads nothing. Every close the channel makes
        (``Connection: close``, HTTP/1.0, refusals, timeouts, drain) goes through
        here; unregistering as the transport's producer first, without which TLS
        would wait for it forever."""
        transport: Any = self.transport
        if transport is None:
            return
        self._closing = True
        self._stop_timing("_idle_at")
        if self._network is not None:
            transport.unregisterProducer()
        transport.loseConnection()
        self._start_closing(transport)

    def _record(self, error: GatewayError, kind: str, sent: int) -> None:
        method, target = self._line or (b"-", b"-")
        self.guard.gateway.notify(
            RequestRecord(
                started=time.time(),
                duration=0.0,
                client=self._peer(),
                method=method.decode("latin-1"),
                path=target.split(b"?", 1)[0].decode("latin-1"),
                api=None,
                status=error.status,
                bytes_sent=sent,
                identity=None,
                error_kind=kind,
                refusal=error,
            )
        )

    def _peer(self) -> str:
        return str(getattr(self.peer, "host", "-"))


def _no_clock() -> float:
    """The clock before ``connectionMade`` gave the channel the reactor's: no deadline is
    set before then, so nothing asks."""
    raise RuntimeError("FrontChannel: no clock before connectionMade")


def serve_http1(site: Site, gateway: Gateway) -> Guard:
    """Make ``site`` serve HTTP/1.1 through ``FrontChannel`` for ``gateway``."""
    guard = Guard(gateway)
    protocol: Callable[[], FrontChannel] = lambda: FrontChannel(guard)  # noqa: E731
    site.protocol = protocol  # type: ignore[assignment]
    return guard
