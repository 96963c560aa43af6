"""twisted.web ``Request``-shaped callers, adapted to the exchange the request path reads.

One kind of request still arrives as a twisted.web ``Request``: a request of an
embedding application's own ``Site`` that mounts ``GatewayResource`` (HTTP/1.1
and HTTP/2 on the gateway's own listeners build their exchange themselves:
``http/_front.py``, ``http/_h2.py``). ``web_exchange`` makes a
``GatewayExchange`` of one: its fields, connection and body (twisted.web read the
body already), with a ``WebResponder`` that answers through the request's own
API. Nothing else in the gateway reads a twisted.web request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedgw import _hosts, _twisted
from twistedgw.http._resource import GatewayExchange
from twistedgw.wire import BodyReady, Connection, Fields

log = Logger()


class WebResponder:
    """A ``wire.Responder`` over a twisted.web ``Request``."""

    __slots__ = ("_on_gone", "finished", "gone", "request", "started")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.started = False
        self.finished = False
        self.gone = _twisted.client_disconnected(request)
        self._on_gone: Callable[[], None] | None = None
        request.notifyFinish().addBoth(self._ended)

    def _ended(self, result: object) -> None:
        if isinstance(result, Failure):  # the client left before the answer ended
            self.gone = True
            callback, self._on_gone = self._on_gone, None
            if callback is not None and not self.finished:
                callback()

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
    ) -> None:
        if self.started or self.gone:
            return
        self.started = True
        request = self.request
        request.setResponseCode(status, reason)
        request.defaultContentType = None  # an absent Content-Type stays absent
        grouped: dict[bytes, tuple[bytes, list[bytes]]] = {}
        for name, value in headers:
            entry = grouped.get(name.lower())
            if entry is None:
                grouped[name.lower()] = (name, [value])
            else:
                entry[1].append(value)
        response_headers = request.responseHeaders
        for name, values in grouped.values():
            response_headers.setRawHeaders(name, values)
        if length is not None:
            response_headers.setRawHeaders(b"Content-Length", [b"%d" % (length,)])

    def write(self, data: bytes) -> None:
        if not self.finished and not self.gone and data:
            self.request.write(data)

    def finish(self) -> None:
        if self.finished or self.gone:
            return
        self.finished = True
        self._on_gone = None
        self.request.finish()

    def abort(self) -> None:
        """Drop the client's connection (HTTP/2: reset the stream)."""
        if self.finished or self.gone:
            return
        self.gone = True
        self._on_gone = None
        request = self.request
        channel = request.channel
        if channel is None:
            return
        try:
            if request.producer is not None:
                request.unregisterProducer()
            stream_abort = getattr(channel, "abortConnection", None)  # an HTTP/2 stream
            if stream_abort is not None:
                stream_abort()
                return
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            else:
                channel.loseConnection()
        except Exception:
            log.failure("could not abort the client connection")

    def register_producer(self, producer: IPushProducer) -> None:
        request = self.request
        if self.gone or request.channel is None:
            return
        request.registerProducer(producer, True)
        # A channel whose send buffer is already full only tells producers about
        # the next transition: start paused rather than produce into a full buffer.
        if getattr(request.channel, "_waitingForTransport", False):
            producer.pauseProducing()

    def unregister_producer(self) -> None:
        request = self.request
        if request.channel is not None and request.producer is not None:
            request.unregisterProducer()

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        self._on_gone = callback


class SpooledBody:
    """A ``wire.BodySource`` over a body twisted.web already read (``request.content``)."""

    __slots__ = ("content", "size")

    def __init__(self, content: IO[bytes], size: int) -> None:
        self.content = content
        self.size = size

    @property
    def length(self) -> int | None:
        return self.size

    def read(self, ready: BodyReady) -> None:
        self.content.seek(0)
        ready(self.content, self.size)


def web_exchange(request: Any) -> GatewayExchange:
    """The exchange of a twisted.web ``Request`` (``H2Request`` keeps the route its
    HEADERS had; an embedding's request is routed by ``http._resource.serve_exchange``)."""
    fields = Fields(
        [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
         for value in values]
    )
    host: bytes | None = None
    hosts = fields.getRawHeaders(b"host")
    if hosts:
        try:
            _hosts.from_header(hosts[0])
        except _hosts.BadHost:
            pass  # routing refuses it (400); never copied into X-Forwarded-Host
        else:
            host = hosts[0]
    conn = Connection(
        request.getClientAddress(),
        request.getHost(),
        request.isSecure(),
        _twisted.connection_transport(request.channel),
    )
    content = request.content
    body: SpooledBody | None = None
    if content is not None:
        size = content.seek(0, 2)
        content.seek(0)
        if size:
            body = SpooledBody(content, size)
    version = b"HTTP/2" if request.clientproto == b"HTTP/2" else request.clientproto
    return GatewayExchange(
        request.method, request.uri, version, fields, host, conn, WebResponder(request), body,
        getattr(request, "routed", None),
    )
