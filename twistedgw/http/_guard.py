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
* ``max_connections`` caps open connections per process;
* it accepts request-target bytes up to 0xB0 (``"``, ``<``, ``{``, DEL, ...):
  every target is checked against the RFC 3986/9112 origin-form grammar and
  refused with 400 before routing;
* it keeps reading and answering pipelined requests while the client reads
  nothing (the transport pauses it only between requests): reading and parsing
  stop while the transport's unsent output is over its bound;
* its chunked decoder costs a few microseconds per chunk: a cheaper one
  replaces it, and a body of many tiny chunks is refused;
* after a closing response it waits for the client's close_notify (or for a
  client that reads nothing to drain the socket) with no timer: the TCP
  connection is closed ``CLOSE_TIMEOUT`` seconds later whatever the client does.

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
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import (
    RESPONSES,
    HTTPChannel,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
    datetimeToString,
)
from twisted.web.server import Request, Site
from zope.interface import implementer

from twistedgw import _twisted, errors
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._routing import split_target

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, Routed

log = Logger()

_BARE_LF = re.compile(rb"(?<!\r)\n")

#: Seconds a refused connection keeps reading (and discarding) before closing.
LINGER_SECONDS = 2.0

#: Seconds the gateway waits, after its close_notify (or, on plain HTTP, after
#: deciding to close), before it closes the TCP connection itself whatever the
#: client does; a client still reading a response gets more time while it makes
#: progress, one that reads nothing is aborted.
CLOSE_TIMEOUT = 3.0

#: The Server header on every answer: no version (NGINX's ``server_tokens off``).
SERVER = b"twistedgw"

#: A chunked body is refused (400) once it has this many chunks averaging fewer
#: than ``MIN_AVERAGE_CHUNK`` bytes: each chunk costs CPU whatever its size.
SMALL_CHUNKS_AFTER = 1024
MIN_AVERAGE_CHUNK = 64

#: The ``kind`` of every refusal made here, and ``client_timeout`` (a forwarded
#: response the client accepted nothing of for ``send_timeout``, upstream/_forward.py):
#: client errors, never backend errors.
CLIENT_ERROR_KINDS = frozenset(
    {"bad_request", "header_too_large", "body_too_large", "header_timeout", "body_timeout",
     "client_timeout"}
)

# RFC 3986 / RFC 9112 origin-form: absolute-path [ "?" query ]; pchar, "/" and "?",
# percent-escapes of two hex digits. Anything else is refused before routing.
_TARGET_BYTE = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def target_problem(target: bytes) -> str | None:
    """Why ``target`` is not an origin-form request target, or None if it is."""
    if not target.startswith(b"/"):
        if target == b"*":
            return "the asterisk-form request target (OPTIONS *) is not served"
        return "request target must be an absolute path (origin-form)"
    bad = _TARGET_BYTE.search(target)
    if bad is not None:
        return (
            f"request target contains the byte 0x{target[bad.start()]:02x}, "
            f"which is not allowed in a URI (at offset {bad.start()})"
        )
    if b"%" in target and _BAD_ESCAPE.search(target) is not None:
        return "request target contains a malformed percent-escape"
    return None


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

    def route(
        self, target: bytes | None, method: bytes | None = None, host: bytes | None = None
    ) -> Routed | None:
        """Route ``target`` (and its ``Host``) once, under the Runtime in force now; the
        resource reuses it."""
        if target is None:
            return None
        from twistedgw.http._resource import route_request

        return route_request(self.gateway.runtime, target, method, host=host)


# chunk-size [ chunk-ext ] CRLF, as twisted.web accepts it (1024 bytes at most).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t !-\[\]-~\x80-\xff]{0,1000})?\r\n")
_MAX_CHUNK_LINE = 1024
_MAX_TRAILERS = 65536
_TRAILER_BAD = re.compile(rb"[\r\n\x00]")


class _TinyChunks(_MalformedChunkedDataError):
    """Too many chunks for the bytes they carry (see ``SMALL_CHUNKS_AFTER``)."""


class _ChunkedDecoder:
    """RFC 9112 chunked body decoding at a small, fixed cost per chunk.

    twisted.web's decoder runs a state machine and a callback per chunk (~3 us
    each; 200,000 one-byte chunks cost 0.6 s of CPU). This one walks a read's
    bytes with one regular-expression match per chunk and hands the data on
    once per read. It is as strict: hex sizes only, CRLF after every chunk, no
    CR, LF or NUL in trailers (which are discarded). It counts chunks so the
    channel can refuse a body of many tiny ones.
    """

    __slots__ = ("_buffer", "_left", "_state", "_trailers", "chunks", "data", "done", "size")

    def __init__(self, data: Callable[[bytes], None], done: Callable[[bytes], None]) -> None:
        self.data = data
        self.done = done
        self._buffer = b""
        self._left = 0  # bytes still due in the current chunk
        self._state = 0  # 0 size line, 1 chunk data, 2 CRLF after data, 3 trailers, 4 finished
        self._trailers = 0
        self.chunks = 0
        self.size = 0  # body bytes so far

    def dataReceived(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, end = 0, len(buf)
        pieces: list[bytes] = []
        state = self._state
        try:
            while pos < end:
                if state == 0:
                    pos, state = self._chunks(buf, pos, end, pieces)
                    if state == 0:
                        break  # an incomplete size line
                elif state == 1:
                    take = min(self._left, end - pos)
                    pieces.append(buf[pos : pos + take])
                    pos += take
                    self._left -= take
                    if not self._left:
                        state = 2
                elif state == 2:
                    if end - pos < 2:
                        if buf[pos:] != b"\r":
                            raise _MalformedChunkedDataError("chunk did not end with CRLF")
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise _MalformedChunkedDataError("chunk did not end with CRLF")
                    pos += 2
                    state = 0
                elif state == 3:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if self._trailers + end - pos > _MAX_TRAILERS:
                            raise _MalformedChunkedDataError("trailers are too long")
                        break
                    if eol == pos:  # the end of the body
                        state = 4
                        if pieces:
                            self.data(b"".join(pieces))
                        self.done(buf[pos + 2 :])
                        return
                    self._trailers += eol - pos + 2
                    if self._trailers > _MAX_TRAILERS:
                        raise _MalformedChunkedDataError("trailers are too long")
                    if not self._trailer_ok(buf, pos, eol):
                        raise _MalformedChunkedDataError("invalid trailer line")
                    pos = eol + 2
                else:
                    raise RuntimeError("chunked body already finished")
        finally:
            self._state = state
        self._buffer = buf[pos:]
        if pieces:
            self.data(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _chunks(self, buf: bytes, pos: int, end: int, pieces: list[bytes]) -> tuple[int, int]:
        """Consume whole chunks from ``pos``: the hot loop, one match per chunk.

        Returns the new position and state: 0 (need more of a size line), 1 (in
        a chunk's data) or 3 (the last chunk was seen: trailers follow).
        """
        match = _CHUNK_LINE.match
        append = pieces.append
        chunks, size = self.chunks, self.size
        check = max(SMALL_CHUNKS_AFTER, chunks + 1)  # the chunk count of the next check
        try:
            while True:
                m = match(buf, pos)
                if m is None:
                    eol = buf.find(b"\r\n", pos, pos + _MAX_CHUNK_LINE + 2)
                    if eol >= 0 or end - pos > _MAX_CHUNK_LINE:
                        raise _MalformedChunkedDataError("invalid chunk size line")
                    return pos, 0
                length = int(m[1], 16)
                start = m.end()
                if not length:
                    return start, 3
                chunks += 1
                size += length
                if chunks >= check:
                    if size < MIN_AVERAGE_CHUNK * chunks:
                        break  # refused below
                    check += 256
                stop = start + length
                if stop + 2 > end:
                    self._left = length
                    return start, 1
                if buf[stop : stop + 2] != b"\r\n":
                    raise _MalformedChunkedDataError("chunk did not end with CRLF")
                append(buf[start:stop])
                pos = stop + 2
        finally:
            self.chunks, self.size = chunks, size
        raise _TinyChunks(
            f"chunked body of {chunks} chunks averaging under "
            f"{MIN_AVERAGE_CHUNK} bytes; send larger chunks"
        )

    def _trailer_ok(self, buf: bytes, start: int, end: int) -> bool:
        return _TRAILER_BAD.search(buf, start, end) is None

    def noMoreData(self) -> None:
        """Only for interface parity with twisted.web's decoders."""


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
        self.setHeader(b"Server", SERVER)
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


class BoundedClose:
    """The close after close_notify, bounded by ``CLOSE_TIMEOUT`` whatever the peer does.

    Shared by both HTTP/1.1 channels (``http/_front.FrontChannel`` and
    ``GuardedChannel``, which still serves HTTP/1.1 on ``http2`` listeners): call
    ``_start_closing`` right after asking the transport to close.
    """

    _closing_timer: IDelayedCall | None = None
    _closing_unsent = 0
    transport: Any
    callLater: Any

    def _start_closing(self, transport: Any) -> None:
        if self._closing_timer is None:
            self._closing_unsent = _unsent(_tcp(transport))
            self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)

    def _closing_check(self) -> None:
        self._closing_timer = None
        tcp = _tcp(self.transport)
        if tcp is None or getattr(tcp, "disconnected", True):
            return
        unsent = _unsent(tcp)
        if unsent and unsent < self._closing_unsent:
            # The client is reading what is left: give it time while it makes progress.
            self._closing_unsent = unsent
            self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)
            return
        if unsent or getattr(tcp, "disconnecting", False):
            # It reads nothing, or a TCP close did not finish: abort.
            tcp.abortConnection()
            return
        # Everything, close_notify included, has reached the kernel and the
        # client had CLOSE_TIMEOUT to answer: close TCP without its close_notify.
        tcp.loseConnection()
        self._closing_unsent = 0
        self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)


@implementer(IHandshakeListener)
class GuardedChannel(BoundedClose, HTTPChannel):
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
        self._tail = b""  # the last bytes seen, for CRLF (and CRLFCRLF) split across reads
        self._header_timer: IDelayedCall | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._closing_timer: IDelayedCall | None = None
        self._closing_unsent = 0
        self._output_full = False  # paused: the transport's unsent output is over its bound

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
        for name in ("_header_timer", "_handshake_timer", "_close_timer", "_closing_timer"):
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
        if self.refused or _twisted.handling_request(self):
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
        if not _twisted.handling_request(self) and not self._partial:
            self._partial = True
            if self._header_timer is None:  # a keep-alive connection's next request
                self._header_timer = self.callLater(
                    self._limits.client_header_timeout, self._header_timed_out
                )
        if self.line_mode and not _twisted.handling_request(self) and b"\n" in data:
            # twisted.web would wait for CRLF forever; a bare LF is a framing
            # difference another parser may not share: refuse it at once.
            seen = self._tail + data
            # Only up to the end of the header section: a body that arrives in
            # the same read may hold any byte (lineReceived checks later lines).
            end = seen.find(b"\r\n\r\n")
            if _BARE_LF.search(seen, len(self._tail), len(seen) if end < 0 else end + 4):
                self.refuse(
                    errors.bad_request("a bare LF is not a valid line ending or header byte"),
                    "bad_request",
                )
                return
        if data:
            self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        self._header_bytes += len(line) + 2
        if self._header_bytes > self._limits.max_header_bytes:
            self.refuse(header_too_large(self._limits.max_header_bytes), "header_too_large")
            return
        first = _twisted.request_line(self)[0] is None
        if b"\n" in line:
            self.refuse(
                errors.bad_request("a bare LF is not a valid line ending or header byte"),
                "bad_request",
            )
            return
        if line[:1] in (b" ", b"\t") and not first:
            self.refuse(
                errors.bad_request("obsolete line folding in request headers is not accepted"),
                "bad_request",
            )
            return
        super().lineReceived(line)
        if first and not self.refused:
            target: bytes | None = _twisted.request_line(self)[1]
            if target is not None:
                problem = target_problem(target)
                if problem is not None:
                    self.refuse(errors.bad_request(problem), "bad_request")

    def lineLengthExceeded(self, line: bytes) -> None:
        limit = self._limits.max_header_bytes
        if _twisted.request_line(self)[0] is None:
            self.refuse(uri_too_long(limit), "header_too_large")
        else:
            self.refuse(header_too_large(limit), "header_too_large")

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        decoder = self._transferDecoder
        if _twisted.handling_request(self) or not isinstance(decoder, _ChunkedDecoder):
            super().rawDataReceived(data)
            return
        try:
            decoder.dataReceived(data)
        except _TinyChunks as e:
            self.refuse(errors.bad_request(str(e)), "bad_request")
        except _MalformedChunkedDataError as e:
            self.refuse(errors.bad_request(f"malformed chunked body: {e}"), "bad_request")

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """twisted.web's choice, with its chunked decoder replaced by ``_ChunkedDecoder``."""
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        if ok and isinstance(self._transferDecoder, _ChunkedTransferDecoder):
            self._transferDecoder = _ChunkedDecoder(
                self.requests[-1].handleContentChunk, self._finishRequestBody
            )
        return ok

    # -- back-pressure -----------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's unsent output is over its bound (64 KiB in the TCP transport).

        twisted.web stops reading only when no request is in progress, but a
        pipelined request answered at once (a 401) is in progress exactly when
        its answer fills the buffer: so a client that sends and never reads made
        the gateway read, answer and buffer without end. Here reading stops in
        every case, and so does parsing (``LineReceiver.paused``): the next
        pipelined request waits in the (bounded) input buffer until the output
        drains.
        """
        super().pauseProducing()
        if not self._output_full:
            self._output_full = True
            self.paused = True
            if _twisted.handling_request(self):  # twisted.web only pauses between requests
                _twisted.network_producer(self).pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # resumes reading unless a request is in progress
        if self._output_full:
            self._output_full = False
            self.paused = False
            if self._buffer and not self.refused and self.transport is not None:
                # Parse what was held back; twisted.web's dataReceived minus the
                # idle-timer reset, as no byte arrived.
                LineReceiver.dataReceived(self, b"")

    def allHeadersReceived(self) -> None:
        self._cancel("_header_timer")
        self._header_bytes = 0
        request = self.requests[-1]
        problem = self._framing_problem(request)
        if problem is not None:
            self.refuse(errors.bad_request(problem), "bad_request")
            return
        method, target, _version = _twisted.request_line(self)
        routed = self.guard.route(
            target, method, request.requestHeaders.getRawHeaders(b"host", [None])[0]
        )
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
            if (_twisted.request_line(self)[2] or b"") != b"HTTP/1.1":
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
        # It also bounds the close (a client that never reads, or never sends
        # its close_notify, would otherwise hold the connection forever).
        self.loseConnection()

    # -- closing ---------------------------------------------------------

    def loseConnection(self) -> None:
        """Close after the response, within ``CLOSE_TIMEOUT`` of the close_notify.

        ``TLSMemoryBIOProtocol.loseConnection`` sends close_notify and then waits
        for the client's with no timer; a TCP transport waits for its buffer to
        drain, forever if the client reads nothing. Every close the channel
        makes (``Connection: close``, HTTP/1.0, refusals, timeouts, drain) goes
        through here.
        """
        super().loseConnection()
        if self.transport is not None:
            self._start_closing(self.transport)

    def _record(self, error: GatewayError, kind: str, sent: int) -> None:
        command = _twisted.request_line(self)[0] or b"-"
        path = _twisted.request_line(self)[1] or b"-"
        from twistedgw.http._resource import RequestRecord

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


def _tcp(transport: Any) -> Any:
    """The TCP transport under ``transport`` (itself unless it is TLS)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport.transport
    return transport


def _unsent(tcp: Any) -> int:
    """Bytes a TCP transport holds that the kernel has not taken yet."""
    if tcp is None:
        return 0
    buffered = getattr(tcp, "dataBuffer", b"")
    return len(buffered) - getattr(tcp, "offset", 0) + getattr(tcp, "_tempDataLen", 0)


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
