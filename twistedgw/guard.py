"""Connection-level defences: limits, timeouts and request-smuggling checks.

twisted.web parses HTTP/1.1 carefully (it refuses Content-Length together with
Transfer-Encoding, duplicate or non-numeric Content-Length, CR/LF/NUL in header
values and malformed request lines), but a gateway needs more:

* it joins obsolete line folding, accepts ``Transfer-Encoding: identity`` and
  several ``Host`` headers: refused here with 400, because a proxy in front may
  read them differently (request smuggling);
* it has no body limit and spools every body before ``render``: the body is
  counted while it arrives (chunked too) and refused with 413 once over the
  API's ``max_body_bytes``, so nothing is ever forwarded partially;
* its only timer is an inactivity timeout reset by every byte, so a client
  dribbling headers byte by byte is never cut: ``client_header_timeout`` bounds
  the whole header section, ``handshake_timeout`` the TLS handshake;
* ``max_connections`` caps open connections per process.

Refusals are WSO2-style JSON written straight to the transport (the request has
not been dispatched yet) with ``Connection: close``. The connection then lingers
briefly, discarding what the client still sends, because closing a socket with
unread data makes the kernel send a reset that can destroy the answer before
the client reads it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString
from twisted.web.server import Request, Site, version
from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.routing import split_target

if TYPE_CHECKING:
    from twistedgw.web import Gateway, Routed

log = Logger()

_BARE_LF = re.compile(rb"(?<!\r)\n")

#: Seconds a refused connection keeps reading (and discarding) before closing.
LINGER_SECONDS = 2.0


def header_too_large(limit: int) -> GatewayError:
    return GatewayError(
        431,
        "431",
        "Request Header Fields Too Large",
        f"request line and headers exceed the limit of {limit} bytes",
    )


def uri_too_long(limit: int) -> GatewayError:
    return GatewayError(414, "414", "URI Too Long", f"request line exceeds {limit} bytes")


def request_timeout(description: str) -> GatewayError:
    return GatewayError(408, "408", "Request Timeout", description)


def raw_response(error: GatewayError) -> bytes:
    """A complete HTTP/1.1 response for ``error``, closing the connection."""
    body = error.body()
    phrase = RESPONSES.get(error.status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (error.status, phrase, len(body))
    )
    return head + body


@dataclass
class Guard:
    """What every connection of one Site shares: the live gateway and the open count."""

    gateway: Gateway
    open: int = 0
    refused_connections: int = 0

    def limits(self) -> Limits:
        # Read per connection, so a reload applies to new connections.
        return self.gateway.runtime.config.limits

    def route(self, target: bytes | None) -> Routed | None:
        """Route ``target`` once, under the Runtime in force now; the resource reuses it."""
        if target is None:
            return None
        from twistedgw.web import route_request  # web imports nothing from here

        return route_request(self.gateway.runtime, target)


class _DateCache:
    """The HTTP Date header value, formatted once per second, not per request."""

    second = -1
    value = b""


def _http_date() -> bytes:
    now = int(time.time())
    if now != _DateCache.second:
        _DateCache.value = datetimeToString(now)
        _DateCache.second = now
    return _DateCache.value


class GuardedRequest(Request):
    """Counts the body as it arrives and stops at the limit, chunked bodies included.

    twisted.web spools a body to memory (under 100 kB) or a temporary file
    before ``render``; without this count a client could fill the disk.
    """

    # twisted.web would read urlencoded and multipart POST bodies whole into
    # memory to fill ``args``; the gateway never uses them.
    _parsePOSTFormSubmission = False
    body_limit: int | None = None
    body_received = 0
    routed: Routed | None = None  # set when the headers are in; the resource routes no more

    def process(self) -> None:
        """twisted.web's ``process`` without resource traversal when the root is a leaf.

        The gateway's site has one leaf resource, so splitting and unquoting the
        path into ``postpath`` (and formatting the Date header) per request only
        cost CPU. An embedding application's resource tree takes the usual path.
        """
        site: Site = self.channel.site  # type: ignore[attr-defined]
        root = site.resource
        if not getattr(root, "isLeaf", False) or self.path == b"*":
            super().process()
            return
        self.site = site
        self.setHeader(b"Server", version)
        self.setHeader(b"Date", _http_date())
        self.prepath = []
        self.postpath = []
        self.sitepath: list[bytes] = []
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(Failure())

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, GuardedChannel) and channel.refused:
            return
        self.body_received += len(data)
        if self.body_limit is not None and self.body_received > self.body_limit:
            if isinstance(channel, GuardedChannel):
                channel.refuse(errors.payload_too_large(self.body_limit), "body_too_large")
                return
        super().handleContentChunk(data)


@implementer(IHandshakeListener)
class GuardedChannel(HTTPChannel):
    """An HTTPChannel with header/body limits, header and handshake deadlines and
    strict framing. See the module docstring for why each exists."""

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.refused = False
        self._counted = False
        self._limits = Limits()
        self._header_bytes = 0
        self._partial = False  # bytes of a request not yet fully received
        self._tail = b""  # the last byte seen in line mode, for CRLF split across reads
        self._header_timer: IDelayedCall | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None

    # -- per-connection facts, looked up once ------------------------------

    _host: Any = None
    _secure: bool | None = None

    def getHost(self) -> Any:
        """The local address; twisted.web asks per request (a getsockname syscall)."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def isSecure(self) -> bool:
        """Whether the transport is TLS; an interface adaptation, so asked once."""
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(super().isSecure())
        return secure

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        limits = self._limits = self.guard.limits()
        self.timeOut = limits.idle_timeout  # type: ignore[assignment]  # used as a float
        self.totalHeadersSize = limits.max_header_bytes
        self.MAX_LENGTH = limits.max_header_bytes
        self.guard.open += 1
        self._counted = True
        super().connectionMade()
        if self.guard.open > limits.max_connections:
            self.guard.refused_connections += 1
            log.warn(
                "Refusing a connection: max_connections ({limit}) are open",
                limit=limits.max_connections,
            )
            self.setTimeout(None)
            self._abort()
            return
        if isinstance(self.transport, TLSMemoryBIOProtocol):
            self._handshake_timer = self.callLater(
                limits.handshake_timeout, self._handshake_timed_out
            )
        self._header_timer = self.callLater(limits.client_header_timeout, self._header_timed_out)

    def handshakeCompleted(self) -> None:
        self._cancel("_handshake_timer")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        for name in ("_header_timer", "_handshake_timer", "_close_timer"):
            self._cancel(name)
        if self._counted:
            self._counted = False
            self.guard.open -= 1
        super().connectionLost(reason)

    def _cancel(self, name: str) -> None:
        timer: IDelayedCall | None = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        log.info("TLS handshake not finished in time; closing {peer}", peer=self._peer())
        self._abort()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.refused or self._handlingRequest:
            return
        if not self._partial:  # nothing sent at all: nobody to answer
            self.setTimeout(None)
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

    def timeoutConnection(self) -> None:
        """Idle timeout (no byte for ``idle_timeout``): answer 408 if mid-request."""
        if self._partial and not self.refused:
            self.refuse(
                request_timeout(
                    f"the client sent nothing for {self._limits.idle_timeout:g} seconds"
                ),
                "body_timeout",
                linger=False,
            )
            return
        super().timeoutConnection()

    # -- parsing ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return  # lingering: discard
        if not self._handlingRequest and not self._partial:
            self._partial = True
            if self._header_timer is None:  # a keep-alive connection's next request
                self._header_timer = self.callLater(
                    self._limits.client_header_timeout, self._header_timed_out
                )
        if self.line_mode and not self._handlingRequest and b"\n" in data:
            # twisted.web would wait for CRLF forever; a bare LF is a framing
            # difference another parser may not share: refuse it at once.
            if _BARE_LF.search(self._tail + data, len(self._tail)):
                self.refuse(
                    errors.bad_request("a bare LF is not a valid line ending or header byte"),
                    "bad_request",
                )
                return
        self._tail = data[-1:]
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        self._header_bytes += len(line) + 2
        if self._header_bytes > self._limits.max_header_bytes:
            self.refuse(header_too_large(self._limits.max_header_bytes), "header_too_large")
            return
        if line[:1] in (b" ", b"\t") and getattr(self, "_command", None) is not None:
            self.refuse(
                errors.bad_request("obsolete line folding in request headers is not accepted"),
                "bad_request",
            )
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        limit = self._limits.max_header_bytes
        if getattr(self, "_command", None) is None:
            self.refuse(uri_too_long(limit), "header_too_large")
        else:
            self.refuse(header_too_large(limit), "header_too_large")

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel("_header_timer")
        self._header_bytes = 0
        request = self.requests[-1]
        problem = self._framing_problem(request)
        if problem is not None:
            self.refuse(errors.bad_request(problem), "bad_request")
            return
        routed = self.guard.route(getattr(self, "_path", None))
        limit = routed.body_limit if routed is not None else self._limits.max_body_bytes
        if isinstance(request, GuardedRequest):
            request.body_limit = limit
            request.routed = routed
        if self.length is not None and self.length > limit:
            # Before reading any of it (and before any 100 Continue).
            self.refuse(errors.payload_too_large(limit), "body_too_large")
            return
        super().allHeadersReceived()

    def _framing_problem(self, request: Request) -> str | None:
        headers = request.requestHeaders
        te = headers.getRawHeaders(b"transfer-encoding")
        if te is not None:
            if getattr(self, "_version", b"") != b"HTTP/1.1":
                return "Transfer-Encoding is only accepted in HTTP/1.1 requests"
            if len(te) != 1 or te[0].strip().lower() != b"chunked":
                return "only 'Transfer-Encoding: chunked' is accepted"
        hosts = headers.getRawHeaders(b"host")
        if hosts is not None and len(hosts) > 1:
            return "more than one Host header"
        return None

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._partial = False
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web's own refusals (bad framing, bad header syntax): JSON 400 too."""
        self.refuse(
            errors.bad_request(
                "malformed request: request line, header syntax or body framing is invalid"
            ),
            "bad_request",
        )

    # -- refusing --------------------------------------------------------

    def refuse(self, error: GatewayError, kind: str, *, linger: bool = True) -> None:
        """Answer ``error`` and close; the request in progress is never dispatched."""
        if self.refused:
            return
        self.refused = True
        self._partial = False
        self._cancel("_header_timer")
        self.setTimeout(None)
        if self.transport is None or not getattr(self.transport, "connected", True):
            return
        body = raw_response(error)
        self.transport.write(body)
        for request in self.requests:
            content = getattr(request, "content", None)
            if content is not None:
                content.close()  # a partial spool file is deleted now, not at GC
        self._record(error, kind, len(error.body()))
        if linger:
            self._close_timer = self.callLater(LINGER_SECONDS, self._close)
        else:
            self._close()

    def _close(self) -> None:
        self._close_timer = None
        transport: Any = self.transport
        if transport is None:
            return
        # The channel's loseConnection: it first unregisters the channel as the
        # transport's producer, without which TLS would wait for it forever.
        self.loseConnection()
        # A client that never reads would keep the connection open forever.
        self._close_timer = self.callLater(self.abortTimeout or 15, transport.abortConnection)

    def _record(self, error: GatewayError, kind: str, sent: int) -> None:
        command = getattr(self, "_command", b"-") or b"-"
        path = getattr(self, "_path", b"-") or b"-"
        from twistedgw.web import RequestRecord  # web imports nothing from here

        self.guard.gateway.notify(
            RequestRecord(
                started=time.time(),
                duration=0.0,
                client=self._peer(),
                method=command.decode("latin-1"),
                path=split_target(path)[0].decode("latin-1"),
                api=None,
                status=error.status,
                bytes_sent=sent,
                identity=None,
                error_kind=kind,
            )
        )

    def _peer(self) -> str:
        try:
            return str(getattr(self.transport.getPeer(), "host", "-"))  # type: ignore[union-attr]
        except Exception:
            return "-"


def harden(site: Site, gateway: Gateway) -> Guard:
    """Make ``site`` serve through ``GuardedChannel``/``GuardedRequest`` for ``gateway``.

    HTTP/1.1 only: the plain channel replaces twisted.web's HTTP/2-negotiating
    wrapper, which the gateway does not offer anyway (ALPN is http/1.1).
    """
    guard = Guard(gateway)
    protocol: Callable[[], GuardedChannel] = lambda: GuardedChannel(guard)  # noqa: E731
    site.protocol = protocol  # type: ignore[assignment]
    site.requestFactory = GuardedRequest
    return guard
