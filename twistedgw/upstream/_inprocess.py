"""A backend in this process: a Twisted ``IResource`` serving an API's allowed requests.

An API with ``backend = "resource:package.module:attribute"`` (or one its embedding
application supplies: ``make_service(..., resources={name: resource})``) is served by
``ResourceBackend``, which has ``Forwarder.forward``'s signature: the request path
hands it an exchange once the API's pipeline allowed it, exactly as it would hand it
to the forwarder.

The resource gets a twisted.web ``server.Request`` (``ResourceRequest``) built from
the exchange the way the forwarder builds a backend's request head
(``build_request_head``: the identity headers, ``X-Forwarded-*``, the removed and set
headers, ``Host``), so it reads what a network backend would receive. The API's
context is the request's ``prepath`` (and ``sitepath``), the rest its ``postpath``;
``isSecure()``, ``getHost()`` and ``getClientAddress()`` say what the client used
(``transport`` is None: the connection stays the gateway's);
``content`` is the request body; ``notifyFinish()`` fails when the client leaves;
``NOT_DONE_YET`` and later writes work, and producers registered on it are paused
while the client's connection (or HTTP/2 stream) is full.

Its answer goes out through the exchange's responder, as a forwarded answer does:
the gateway's ``Server`` header, framing by the front (``Content-Length`` when the
resource set one, else chunked or HTTP/2 DATA frames), the API's response transforms
(``on_answer``), and one ``ForwardResult`` (``on_done``). A resource that raises
before answering gets the gateway's JSON 500; after, the client's connection is
aborted so a partial body never looks complete.

``render`` runs on the reactor thread, synchronously: a resource that takes 100 ms
holds every request of every API for 100 ms. Slow work belongs in a Deferred (a thread
pool, an asynchronous client) with ``NOT_DONE_YET``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Sequence
from io import BytesIO
from typing import IO, Any
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site
from zope.interface import implementer

from twistedgw import errors
from twistedgw._headers import HOP_BY_HOP
from twistedgw.upstream._client import Origin
from twistedgw.upstream._forward import (
    CLIENT_CLOSED_REQUEST,
    ForwardResult,
    OnAnswer,
    build_request_head,
)
from twistedgw.wire import SERVER, Exchange, Responder, http_date

_log = Logger(namespace="twistedgw.upstream._inprocess")

#: Response headers a resource does not decide: the front frames the body, and the
#: gateway's Server header is sent (as for a network backend's answer).
_SKIP = HOP_BY_HOP | {b"server", b"content-length"}


class ResourceError(Exception):
    """A ``resource:`` backend that cannot be used (the message says why)."""


def load_resource(spec: str) -> IResource:
    """Import ``package.module:attribute`` and return the ``IResource`` it names; an
    object with a ``resource()`` method (a Klein app) gives that method's resource."""
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ResourceError(f"cannot import {module_name!r}: {e}") from None
    except Exception as e:  # the module's own code failed
        raise ResourceError(f"importing {module_name!r} failed: {type(e).__name__}: {e}"
                            ) from None
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise ResourceError(f"{module_name!r} has no attribute {attribute!r}") from None
    return as_resource(found, spec)


def as_resource(found: Any, what: str) -> IResource:
    """``found`` as an ``IResource`` (a Klein app's ``resource()``), or ResourceError."""
    if not IResource.providedBy(found):
        make = getattr(found, "resource", None)
        if callable(make):
            found = make()
    if not IResource.providedBy(found):
        raise ResourceError(f"{what} is not a twisted.web resource (IResource) nor a Klein "
                            f"app, but {type(found).__name__}")
    resource: IResource = found
    return resource


class ResourceBackend:
    """Serves one API's allowed exchanges with ``resource`` (the API's context mounted at
    its root); ``prefix`` is the API's backend string, which starts its route targets."""

    def __init__(self, resource: IResource, context: str, prefix: bytes) -> None:
        self.resource = resource
        # A Site the requests point at: sessions (getSession) and the error page setting.
        self.site = Site(resource)
        self.site.displayTracebacks = False
        self.context = b"" if context == "/" else context.encode()
        self.prefix = prefix

    def forward(
        self,
        exchange: Exchange,
        target: bytes,
        *,
        body: IO[bytes] | None = None,
        body_size: int = 0,
        add_headers: Sequence[tuple[bytes, bytes]] = (),
        remove_headers: Collection[bytes] = (),
        on_done: Callable[[ForwardResult], None] | None = None,
        on_answer: OnAnswer | None = None,
        backend_timeout: float | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
        alternatives: Sequence[bytes] = (),
        send_timeout: float | None = None,
        trace: Any = None,
    ) -> None:
        """Serve ``exchange``; never raises (what happened goes to ``on_done`` once).
        ``backend_timeout``, ``tls_policy``, ``alternatives``, ``send_timeout`` and
        ``trace`` (a backend span is the forwarder's) are the forwarder's and mean nothing
        here."""
        channel = _Channel(exchange, on_answer, on_done)
        try:
            request = self._request(channel, exchange, target, body if body_size else None,
                                    body_size, add_headers, remove_headers)
        except Exception:
            _log.failure("could not build the request for the in-process resource")
            channel.fail()
            return
        channel.request = request
        exchange.responder.when_gone(channel.client_left)
        try:
            resource = getChildForRequest(self.resource, request)
            request.render(resource)
        except Exception:
            request.processingFailed(Failure())

    def _request(
        self,
        channel: _Channel,
        exchange: Exchange,
        target: bytes,
        body: IO[bytes] | None,
        body_size: int,
        add_headers: Sequence[tuple[bytes, bytes]],
        remove_headers: Collection[bytes],
    ) -> ResourceRequest:
        rest = target[len(self.prefix):] if target.startswith(self.prefix) else b"/"
        path, _, query = rest.partition(b"?")
        request = ResourceRequest(channel, parsePOSTFormSubmission=False)
        request.site = self.site
        request.method = exchange.method
        request.clientproto = exchange.version
        request.path = self.context + path
        request.uri = request.path + (b"?" + query if b"?" in rest else b"")
        request.args = parse_qs(query, keep_blank_values=True) if query else {}
        # The head a network backend would get, read back into fields: one set of rules
        # (build_request_head) for what reaches a backend, wherever it runs.
        host = exchange.host or _local_host(exchange)
        origin = Origin(b"http", host, 0, host, None)
        head = build_request_head(exchange, origin, request.uri, add_headers=add_headers,
                                  remove_headers=remove_headers,
                                  body_length=body_size if body is not None else None)
        headers = Headers()
        for line in head.split(b"\r\n")[1:]:
            if line:
                name, _, value = line.partition(b": ")
                headers.addRawHeader(name, value)
        request.requestHeaders = headers
        request.parseCookies()
        if body is None:
            request.content = BytesIO()
        else:
            body.seek(0)
            request.content = body
        mounted = [unquote_to_bytes(s) for s in self.context.split(b"/")[1:]]
        request.sitepath = mounted  # where the resource is mounted: the API's context
        request.prepath = list(mounted)
        request.postpath = [unquote_to_bytes(s) for s in path[1:].split(b"/")]
        request.client = _client_address(exchange)
        request.gateway_secure = exchange.secure
        return request


def _local_host(exchange: Exchange) -> bytes:
    local = exchange.conn.local
    host = getattr(local, "host", None)
    return host.encode("ascii", "replace") if isinstance(host, str) else b"localhost"


def _client_address(exchange: Exchange) -> Any:
    """The client's address: the connection's peer, or the client a trusted proxy named
    (``X-Forwarded-For``, as the backend is told), with no port."""
    conn = exchange.conn
    if exchange.client_ip == conn.client_ip:
        return conn.peer
    if ":" in exchange.client_ip:
        return IPv6Address("TCP", exchange.client_ip, 0)
    return IPv4Address("TCP", exchange.client_ip, 0)


class ResourceRequest(Request):
    """The twisted.web request an in-process resource renders (module docstring)."""

    gateway_secure = False
    sitepath: list[bytes] = []  # set per request, as a Site sets it

    def isSecure(self) -> bool:
        """What the client used: TLS to the gateway, or https at a trusted proxy."""
        return self.gateway_secure

    def processingFailed(self, reason: Failure) -> Failure:
        """The resource raised: the gateway's JSON 500 (nothing of the exception reaches
        the client), or an aborted connection when its answer had started."""
        self._log.failure("the in-process resource for {uri} failed", failure=reason,
                          uri=self.uri)
        channel = self.channel
        if isinstance(channel, _Channel) and not self.finished:
            self.finished = 1
            channel.fail()
            # As twisted.web's own error page would: the request is over.
            notifications, self.notifications = self.notifications, []
            for d in notifications:
                d.callback(None)
        return reason


@implementer(IPushProducer)
class _Pull:
    """A pull producer (twisted.web's static file producers) driven as a push one: asked
    for more after each write while the client keeps up, held while it does not."""

    def __init__(self, producer: IPullProducer, channel: _Channel) -> None:
        self.producer = producer
        self.channel = channel
        self.paused = False
        self.stopped = False
        self.pending = False

    def more(self) -> None:
        if self.paused or self.stopped or self.pending:
            return
        from twisted.internet import reactor

        self.pending = True
        reactor.callLater(0, self._produce)  # type: ignore[attr-defined]

    def _produce(self) -> None:
        self.pending = False
        if not self.paused and not self.stopped:
            self.producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.more()

    def stopProducing(self) -> None:
        self.stopped = True
        self.producer.stopProducing()


class _Channel:
    """What a twisted.web ``Request`` writes to: the exchange's responder. Also the
    request's ``channel`` for its address and security questions."""

    transport = None  # the connection stays the gateway's
    factory = None  # no Site logging: the gateway's access log has the request
    site = None

    def __init__(self, exchange: Exchange, on_answer: OnAnswer | None,
                 on_done: Callable[[ForwardResult], None] | None) -> None:
        self.exchange = exchange
        self.responder: Responder = exchange.responder
        self.on_answer = on_answer
        self.on_done = on_done
        self.request: ResourceRequest | None = None
        self.status = 0
        self.length: int | None = None
        self.sent = 0
        self.silent = False  # the answer was replaced by an error: the resource's is dropped
        self.done = False
        self.broken = False  # it wrote more than its Content-Length: aborted at the end
        self.pull: _Pull | None = None

    # -- what Request.__init__ asks
    def getPeer(self) -> Any:
        return self.exchange.conn.peer

    def getHost(self) -> Any:
        return self.exchange.conn.local

    def isSecure(self) -> bool:
        return self.exchange.secure

    # -- the answer
    def writeHeaders(self, version: bytes, code: bytes, reason: bytes,
                     headers: Headers) -> None:
        request = self.request
        if request is not None:  # the front frames the body: no chunks from twisted.web
            request.chunked = 0
        status = int(code)
        out: list[tuple[bytes, bytes]] = [(b"Server", SERVER)]
        dated = False
        length: int | None = None
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower == b"content-length":
                length = _length(values)
                continue
            if lower in _SKIP:
                continue
            if lower == b"date":
                dated = True
            out.extend((name, v) for v in values)
        if not dated:
            out.insert(1, (b"Date", http_date()))
        self.status, self.length = status, length
        if self.on_answer is not None:
            refused = self.on_answer(status, out)
            if refused is not None:  # a response transform failed: its error, not the answer
                self.silent = True
                self._error(refused, transform=False)
                return
        self.responder.start_response(status, out, length, reason or None)

    def write(self, data: bytes) -> None:
        if self.silent or self.done or not data:
            return
        length = self.length
        if length is not None and self.sent + len(data) > length:
            data = data[: max(length - self.sent, 0)]
            self.silent = True  # more than it announced: cut, and aborted at the end
            self.broken = True
        self.sent += len(data)
        self.responder.write(data)
        pull = self.pull
        if pull is not None:
            pull.more()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def requestDone(self, request: Request) -> None:
        """The resource called ``finish``."""
        if self.done:
            return
        self.done = True
        responder = self.responder
        self.unregisterProducer()
        responder.when_gone(None)
        if self.silent and not self.broken:
            return  # an error was answered instead; reported then
        short = self.length is not None and self.sent < self.length and (
            self.exchange.method != b"HEAD" and self.status not in (204, 304))
        if self.broken or short:
            _log.warn("the in-process resource for {uri} wrote {n} bytes of the {length} it "
                      "announced; aborting the client connection", uri=request.uri,
                      n=self.sent, length=self.length)
            responder.abort()
            self._report(self.status, "other")
            return
        responder.finish()
        self._report(self.status, None)

    # -- back-pressure
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if streaming:
            self.responder.register_producer(producer)
            return
        self.pull = _Pull(producer, self)
        self.responder.register_producer(self.pull)
        self.pull.more()

    def unregisterProducer(self) -> None:
        pull, self.pull = self.pull, None
        if pull is not None:
            pull.stopped = True  # a call already scheduled asks it for nothing more
        self.responder.unregister_producer()

    def loseConnection(self) -> None:
        self.responder.abort()

    # -- endings
    def client_left(self) -> None:
        """The client went away before the answer ended: the resource hears it through
        ``notifyFinish()`` (and ``stopProducing`` on its producer)."""
        if self.done:
            return
        self.done = True
        request = self.request
        producer = request.producer if request is not None else None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                _log.failure("stopping the in-process resource's producer failed")
        if request is not None and not request.finished:
            request.connectionLost(Failure(ConnectionDone("the client went away")))
        self._report(CLIENT_CLOSED_REQUEST if not self.responder.started else self.status,
                     "client_gone")

    def fail(self) -> None:
        """The resource failed: answer 500 if nothing was sent, else abort."""
        if self.done:
            return
        self.done = True
        self.responder.when_gone(None)
        if self.responder.started:
            self.responder.abort()
            self._report(self.status, "other")
        else:
            self._error(errors.internal_error(), transform=True)

    def _error(self, error: errors.GatewayError, *, transform: bool) -> None:
        body = error.body()
        headers = [(b"Server", SERVER), (b"Date", http_date()),
                   (b"Content-Type", errors.JSON_TYPE)]
        if transform and self.on_answer is not None:
            self.on_answer(error.status, headers)
        reason = None if error.status in RESPONSES else error.message.encode("latin-1")
        responder = self.responder
        responder.start_response(error.status, headers, len(body), reason)
        head = self.exchange.method == b"HEAD"
        if not head:
            responder.write(body)
        responder.finish()
        self.done = True
        self._report(error.status, "other", 0 if head else len(body))

    def _report(self, status: int, kind: str | None, sent: int | None = None) -> None:
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            try:
                on_done(ForwardResult(status, self.sent if sent is None else sent, kind))
            except Exception:
                _log.failure("on_done callback failed")


def _length(values: Sequence[bytes]) -> int | None:
    if len(set(values)) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0].strip())

