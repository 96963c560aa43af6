"""The gateway's HTTP/1.1 server front: bytes in, one parse per request head, bytes out.

It serves every HTTP/1.1 connection of the gateway's listeners, those with
``http2 = true`` included (http/_h2.py hands a connection over to HTTP/2 when ALPN
chose h2, before any byte is read here). twisted.web's ``HTTPChannel``, which it
replaced, parses line by line through ``LineReceiver``, builds a ``Request`` and
two ``Headers`` per request, resets a timer per read and writes the status line,
the headers and the body in separate writes, and needed the gateway's checks
added on top. This channel works directly on the (TLS) transport, with the rules
of ``http/_guard.py``:

* one input buffer; a request head is parsed in one pass once ``CRLFCRLF`` is
  in (split on CRLF, every line checked: bare LF, obs-fold, token names,
  CR/LF/NUL in values), counted against ``max_header_bytes`` as it arrives
  (414 for the request line, 431 for the rest);
* framing decided from the parsed head with the guard's rules (CL+TE,
  duplicate or non-digit Content-Length, Transfer-Encoding other than a
  single ``chunked`` or outside HTTP/1.1, several Host headers: 400 and
  close), the target checked against the origin-form grammar, the body
  counted as it arrives (413, chunked included, with the guard's decoder);
* the request is routed once, then handed to the site's resource as a
  ``FrontRequest``: the subset of twisted.web's ``Request`` the resource, the
  forwarder and the drain use, so neither they nor plugins see which front
  served them;
* the response head is written as bytes together with the first body chunk;
* keep-alive on HTTP/1.1, and on HTTP/1.0 when the client asks for it
  (``Connection: keep-alive``) and the answer has a length;
* one request at a time (pipelined requests wait in the buffer, reading stops
  past 16 KiB of them), reading stops while the transport's unsent output is
  over its bound, and no timer is armed while a request is answered.

Refusals are ``http/_guard.raw_response`` (WSO2-style JSON, ``Connection: close``),
followed by a linger and the guard's bounded close (``BoundedClose``); each is
recorded as a ``RequestRecord`` like any answered request.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
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
from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from twistedgw import errors
from twistedgw._twisted import fresh_bios
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._guard import (
    LINGER_SECONDS,
    SERVER,
    BoundedClose,
    Guard,
    _http_date,
    raw_response,
    request_timeout,
)
from twistedgw.wire import (
    ChunkedDecoder,
    Framing,
    MalformedChunks,
    RequestHead,
    TinyChunks,
    WireError,
    check_partial_head,
    parse_request_head,
)

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, Routed

log = Logger()

#: Bytes of pipelined requests read while one is answered before reading pauses.
EAGER_READ = 0x4000
#: Bodies up to this size are kept in memory, larger ones spooled to a temporary file
#: (as twisted.web does).
MEMORY_BODY = 100_000
# parser states
_HEAD, _BODY, _HANDLING = 0, 1, 2


def _bad(description: str) -> WireError:
    return WireError(errors.bad_request(description))


class FrontRequest:
    """One request, as much of twisted.web's ``Request`` as the gateway uses.

    The resource (``http/_resource.py``), the caller resolution, the forwarder
    (``upstream/_forward.py``) and the drain read and answer it as they would a
    twisted.web request; the response head leaves as one write with the first
    body bytes.
    """

    defaultContentType: bytes | None = b"text/html"
    routed: Routed | None = None
    _forceSSL = False

    def __init__(
        self,
        channel: FrontChannel,
        method: bytes,
        uri: bytes,
        version: bytes,
        headers: Headers,
    ) -> None:
        self.channel: FrontChannel | None = channel
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.clientproto = version
        self.requestHeaders = headers
        self.responseHeaders = Headers()
        self.code = 200
        self.code_message = b"OK"
        self.startedWriting = False
        self.finished = False
        self.chunked = False
        self.sentLength = 0
        self.content: IO[bytes] | None = None
        self.producer: Any = None
        self._disconnected = False
        self._silent = False  # HEAD or a status without a body: writes carry no body
        self._notify: list[Deferred[None]] = []
        self.client = channel.peer
        self.host = channel.local

    # -- what the request says ---------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getClientAddress(self) -> Any:
        return self.client

    def getHost(self) -> Any:
        return self.host

    def isSecure(self) -> bool:
        if self._forceSSL:
            return True
        channel = self.channel
        return channel is not None and channel.secure

    def setHost(self, host: bytes, port: int, ssl: bool = False) -> None:
        """twisted.web's: the address a proxy in front says the client used."""
        self._forceSSL = ssl
        default = 443 if self.isSecure() else 80
        header = host if port == default else b"%s:%d" % (host, port)
        self.requestHeaders.setRawHeaders(b"host", [header])
        self.host = taddress.IPv4Address("TCP", host.decode("latin-1"), port)

    # -- answering ---------------------------------------------------------

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message if message is not None else RESPONSES.get(code, b"Unknown")

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def write(self, data: bytes) -> None:
        channel = self.channel
        if self.finished or channel is None:
            return
        if not self.startedWriting:
            self.startedWriting = True
            channel.write(self._head(data))
            return
        if self._silent or not data:
            return
        self.sentLength += len(data)
        if self.chunked:
            channel.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            channel.write(data)

    def _head(self, data: bytes) -> bytes:
        """The status line and headers, and ``data`` framed after them."""
        code = self.code
        headers = self.responseHeaders
        if (
            code not in (204, 304)
            and self.defaultContentType is not None
            and not headers.hasHeader(b"content-type")
        ):
            headers.setRawHeaders(b"content-type", [self.defaultContentType])
        silent = self._silent = self.method == b"HEAD" or code in NO_BODY_CODES
        if (
            not silent
            and self.clientproto == b"HTTP/1.1"
            and not headers.hasHeader(b"content-length")
        ):
            headers.setRawHeaders(b"transfer-encoding", [b"chunked"])
            self.chunked = True
        channel = self.channel
        if self.clientproto == b"HTTP/1.0" and channel is not None and channel.persistent:
            if silent or headers.hasHeader(b"content-length"):
                headers.setRawHeaders(b"connection", [b"keep-alive"])
            else:  # the body ends where the connection does
                channel.persistent = False
        out = [b"%s %d %s\r\n" % (self.clientproto, code, self.code_message)]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                out.append(b"%s: %s\r\n" % (name, value))  # Headers replaced CR/LF already
        out.append(b"\r\n")
        if data and not silent:
            self.sentLength += len(data)
            out.append(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        return b"".join(out)

    def finish(self) -> None:
        channel = self.channel
        if self.finished or channel is None:
            return
        if not self.startedWriting:
            self.write(b"")
        if self.chunked:
            channel.write(b"0\r\n\r\n")
        self.finished = True
        self._close_content()
        notify, self._notify = self._notify, []
        for d in notify:
            d.callback(None)
        channel.request_done(self)

    def notifyFinish(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.finished:
            d.callback(None)
        elif self._disconnected:
            d.errback(Failure(ConnectionError("the client connection was lost")))
        else:
            self._notify.append(d)
        return d

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.channel is not None:
            self.producer = producer
            self.channel.register_producer(producer)

    def unregisterProducer(self) -> None:
        if self.channel is not None:
            self.channel.register_producer(None)
        self.producer = None

    def processingFailed(self, reason: Failure) -> None:
        log.failure("rendering a request failed", reason)
        if self.startedWriting:
            channel = self.channel
            if channel is not None and channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]
            return
        body = errors.write_error(self, errors.internal_error())
        self.write(body)
        self.finish()

    def connection_lost(self, reason: Failure) -> None:
        self._disconnected = True
        self.channel = None
        self._close_content()
        notify, self._notify = self._notify, []
        for d in notify:
            d.errback(reason)

    def _close_content(self) -> None:
        content = self.content
        if content is not None and not isinstance(content, io.BytesIO):
            content.close()


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
        "_closing_timer", "_closing_unsent", "_counted", "_decoder", "_handshake_at",
        "_header_at", "_idle_at", "_left", "_limits", "_network", "_now", "_output_full",
        "_parsing", "_partial", "_producer", "_reading", "_request", "_served", "_state",
        "_timer", "_timer_at",
        "guard", "local", "peer", "persistent", "refused", "requests", "secure",
    )

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.refused = False
        self.persistent = True
        self.requests: list[FrontRequest] = []
        self.peer: Any = None
        self.local: Any = None
        self.secure = False
        self._limits = Limits()
        self._buf = b""
        self._state = _HEAD
        self._counted = False
        self._partial = False  # some bytes of a request are in, not all
        self._request: FrontRequest | None = None  # the request being read or answered
        self._left = 0  # Content-Length bytes still due
        self._decoder: ChunkedDecoder | None = None
        self._body_size = 0
        self._body_limit = 0
        self._body: IO[bytes] | None = None
        self._producer: Any = None  # the response's (the forwarder's relay)
        self._network: Any = None  # the transport as a push producer (reading)
        self._output_full = False
        self._reading = True
        # One timer per connection (a DelayedCall is ~0.4 KiB, and each one armed and
        # cancelled is reactor work): it is armed at the earliest of these deadlines
        # (reactor seconds; None = not timed) and finds what is due when it fires.
        # Reads and answers only move ``_idle_at``; the timer, found early, re-arms.
        self._handshake_at: float | None = None
        self._header_at: float | None = None
        self._idle_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._timer_at = 0.0  # the deadline the timer was armed for
        self._now: Callable[[], float] = _no_clock  # the reactor's clock: connectionMade
        self._close_timer: IDelayedCall | None = None
        self._closing_timer: IDelayedCall | None = None
        self._closing_unsent = 0
        self._closing = False
        self._parsing = False
        self._served = 0  # request heads taken on this connection

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        limits = self._limits = self.guard.limits()
        self.guard.open += 1
        self._counted = True
        self.secure = isinstance(transport, TLSMemoryBIOProtocol)
        # The socket's own transport under TLS: TLS's getPeer, getHost and the rest go
        # to it through ProtocolWrapper's __getattr__ (a cost per connection).
        tcp = transport.transport if self.secure else transport
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)
        self.peer = tcp.getPeer()
        self.local = tcp.getHost()
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
        if self.secure:
            first = min(first, limits.handshake_timeout)
        if limits.idle_timeout:
            first = min(first, limits.idle_timeout)
        timer = self._timer = self.callLater(first, self._timed_out)
        self._now = timer.seconds  # type: ignore[attr-defined]  # DelayedCall's clock
        now = self._now()
        self._timer_at = now + first  # the earliest deadline below, to the bit
        if self.secure:
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
        requests, self.requests = self.requests, []
        for request in requests:
            if not request.finished:
                request.connection_lost(reason)
        body, self._body = self._body, None
        if body is not None:
            body.close()
        self._buf = b""

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
        self._timer = self.callLater(max(at - self._now(), 0.0), self._timed_out)

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
            and self._state == _HEAD and not self._partial and not self._buf
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
        if self.refused:
            return
        if self._state == _HANDLING:  # not idle: answering; timed again when done
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
        if self.refused or self._state != _HEAD:
            return  # the head it timed is in
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
        if self.refused or self._closing:
            return  # lingering (or closing): discard
        if self._idle_at is not None:  # pushed back; the timer, found early, re-arms
            self._idle_at = self._now() + self._limits.idle_timeout
        if self._state == _HANDLING:
            self._buf += data
            if len(self._buf) > EAGER_READ:
                self._set_reading()
            return
        self._buf = self._buf + data if self._buf else data
        self._parse()

    def _parse(self) -> None:
        """Consume what the buffer holds, request by request, until it needs more."""
        if self._parsing:
            return
        self._parsing = True
        try:
            while self._buf and not self.refused and not self._output_full:
                state = self._state
                if state == _HEAD:
                    if not self._head():
                        return
                elif state == _BODY:
                    self._body_bytes()
                    if self._state == _BODY:
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
        """Parse a complete request head, or check the partial one; True if one was taken."""
        buf = self._buf
        if not self._partial:
            self._partial = True
            if self._served:  # a keep-alive connection's next request: timed from now
                self._header_at = self._now() + self._limits.client_header_timeout
            # (The first request's deadline runs from the connection's start.)
        limit = self._limits.max_header_bytes
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            header_at = self._header_at
            if header_at is not None:  # the head stays incomplete: the timer must see it
                self._arm(header_at)
            check_partial_head(buf, limit)
            return False
        self._buf = buf[end + 4 :]
        self._served += 1
        head = parse_request_head(buf[:end], limit)
        # The head is in: its deadline is done with (the timer, if armed for it, finds
        # nothing due). The timer is touched only by a head that arrives in pieces.
        self._header_at = None
        self._request_head(head)
        return True

    def _request_head(self, head: RequestHead) -> None:
        """Take a parsed request head: route it, frame its body."""
        method, target, version = head.method, head.target, head.version
        self._line = (method, target)
        headers = Headers()
        add = headers.addRawHeader
        for name, value in head.fields.pairs:
            add(name, value)
        request = FrontRequest(self, method, target, version, headers)
        request.responseHeaders.setRawHeaders(b"server", [SERVER])
        request.responseHeaders.setRawHeaders(b"date", [_http_date()])
        if not head.persistent:
            self.persistent = False
            if version == b"HTTP/1.1":
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        # else an HTTP/1.0 keep-alive: kept if the answer has a length (FrontRequest._head)
        self.requests.append(request)
        self._request = request
        host = head.host
        guard = self.guard
        if _route is not None and type(guard) is Guard:  # the guard's route, minus its import
            routed: Routed | None = _route(guard.gateway.runtime, target, method, host=host)
        else:
            routed = guard.route(target, method, host)
        request.routed = routed
        limit = routed.body_limit if routed is not None else self._limits.max_body_bytes
        self._body_limit = limit
        self._body_size = 0
        framing = head.framing
        if framing is Framing.LENGTH and head.length > limit:
            raise WireError(errors.payload_too_large(limit), "body_too_large")
        if head.expect_continue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if framing is Framing.CHUNKED:
            self._body = io.BytesIO()
            self._decoder = ChunkedDecoder()
            self._state = _BODY
        elif framing is Framing.LENGTH:
            size = head.length
            self._body = io.BytesIO() if size < MEMORY_BODY else tempfile.TemporaryFile()
            self._left = size
            self._state = _BODY
        else:
            self._dispatch()

    # -- the body ----------------------------------------------------------

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
                self._dispatch()
            return
        left = self._left
        if len(buf) < left:
            self._left = left - len(buf)
            self._store(buf)
            return
        self._store(buf[:left] if len(buf) > left else buf)
        self._buf = buf[left:]
        self._left = 0
        self._dispatch()

    def _store(self, data: bytes) -> None:
        body = self._body
        if body is None or self.refused:
            return
        self._body_size += len(data)
        if self._body_size > self._body_limit:
            raise WireError(errors.payload_too_large(self._body_limit), "body_too_large")
        if isinstance(body, io.BytesIO) and self._body_size > MEMORY_BODY:
            spool: IO[bytes] = tempfile.TemporaryFile()  # closed with the request
            spool.write(body.getvalue())
            body = self._body = spool
        body.write(data)

    # -- dispatch ----------------------------------------------------------

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None
        body, self._body = self._body, None
        if body is not None:
            body.seek(0)
        request.content = body
        self._partial = False
        self._state = _HANDLING  # the idle timer ignores this state (no re-arm per request)
        resource = self.site.resource
        try:
            result = resource.render(request)  # type: ignore[attr-defined]
        except Exception:
            request.processingFailed(Failure())
            return
        if result is NOT_DONE_YET:
            return
        if not isinstance(result, bytes):
            log.error("render returned {kind}, not bytes", kind=type(result).__name__)
            request.processingFailed(Failure(TypeError("render did not return bytes")))
            return
        if result or request.method != b"HEAD":  # as twisted.web: a HEAD keeps its length
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(result),)])
        request.write(result)
        request.finish()

    def request_done(self, request: FrontRequest) -> None:
        """The response to ``request`` is complete: the next request, or close."""
        if request in self.requests:
            self.requests.remove(request)
        if request is self._request:
            self._request = None
        if self.transport is None:
            return
        if not self.persistent:
            self.loseConnection()
            return
        self._state = _HEAD
        if self._idle_at is not None:
            self._idle_at = self._now() + self._limits.idle_timeout  # timer stays earlier
        else:
            self._arm_idle()
        self._set_reading()
        if self._buf:
            self._parse()
        elif self._served == 1:  # the first answer: the handshake's flights went through
            self._release_buffers()

    # -- writing and back-pressure ------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def register_producer(self, producer: Any) -> None:
        self._producer = producer

    @property
    def _waitingForTransport(self) -> bool:
        """The forwarder's relay starts paused when the output is already full."""
        return self._output_full

    def _set_reading(self) -> None:
        """Read from the transport unless the output is full or too much is buffered."""
        want = not self._output_full and not (
            self._state == _HANDLING and len(self._buf) > EAGER_READ
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
        self._set_reading()

    def resumeProducing(self) -> None:
        if not self._output_full:
            return
        self._output_full = False
        producer = self._producer
        if producer is not None:
            producer.resumeProducing()
        self._set_reading()
        if self._buf and self._state != _HANDLING and not self.refused and self.transport:
            self._parse()

    def stopProducing(self) -> None:
        producer = self._producer
        if producer is not None:
            producer.stopProducing()

    # -- refusing and closing ----------------------------------------------

    _line: tuple[bytes, bytes] | None = None

    def refuse(self, error: GatewayError, kind: str, *, linger: bool = True) -> None:
        """Answer ``error`` and close; the request in progress is never dispatched."""
        if self.refused:
            return
        self.refused = True
        self._partial = False
        self._buf = b""
        self.requests = [r for r in self.requests if r.startedWriting]  # never dispatched
        self._decoder = None
        self._stop_timing("_header_at", "_idle_at")
        body, self._body = self._body, None
        if body is not None:
            body.close()
        transport: Any = self.transport
        if transport is None or not getattr(transport, "connected", True):
            return
        transport.write(raw_response(error))
        self._record(error, kind, len(error.body()))
        if linger:
            self._close_timer = self.callLater(LINGER_SECONDS, self._close)
        else:
            self._close()

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
        import time

        from twistedgw.http._resource import RequestRecord
        from twistedgw.http._routing import split_target

        method, target = self._line or (b"-", b"-")
        self.guard.gateway.notify(
            RequestRecord(
                started=time.time(),
                duration=0.0,
                client=self._peer(),
                method=method.decode("latin-1"),
                path=split_target(target)[0].decode("latin-1"),
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


#: ``http._resource.route_request``, bound by ``serve`` (importing it here would be circular).
_route: Callable[..., Routed] | None = None


def serve(site: Site, gateway: Gateway) -> Guard:
    """Make ``site`` serve HTTP/1.1 through ``FrontChannel`` for ``gateway``."""
    global _route
    from twistedgw.http._resource import route_request

    _route = route_request
    guard = Guard(gateway)
    protocol: Callable[[], FrontChannel] = lambda: FrontChannel(guard)  # noqa: E731
    site.protocol = protocol  # type: ignore[assignment]
    return guard
