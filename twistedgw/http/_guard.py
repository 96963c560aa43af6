"""The rules of the HTTP/1.1 front (http/_front.py), and the helpers it shares.

The front applies them on every HTTP/1.1 connection (HTTP/2 streams, http/_h2.py,
share the target grammar, the limits and the JSON refusals). A gateway needs
more than a careful HTTP/1.1 parser (twisted.web's, which the front replaced,
lacked most of these):

* obsolete line folding, ``Transfer-Encoding`` other than a single ``chunked``,
  Content-Length with Transfer-Encoding, and several ``Host`` headers are
  refused with 400, because a proxy in front may read them differently
  (request smuggling);
* the body is counted while it arrives (chunked too) and refused with 413 once
  over the API's ``max_body_bytes``, so nothing is ever forwarded partially;
* ``client_header_timeout`` bounds the whole header section (an inactivity
  timer reset by every byte never cuts a client dribbling headers byte by
  byte), ``handshake_timeout`` the TLS handshake;
* ``max_connections`` caps open connections per process (``Guard.open``);
* every request target is checked against the RFC 3986/9112 origin-form
  grammar and refused with 400 before routing (``target_problem``);
* reading and parsing stop while the transport's unsent output is over its
  bound, so pipelined requests from a client that reads nothing are not
  answered and buffered without end;
* the chunked decoder (``_ChunkedDecoder``) costs one regular-expression match
  per chunk, and a body of many tiny chunks is refused;
* after a closing response the TCP connection is closed ``CLOSE_TIMEOUT``
  seconds later whatever the client does (``BoundedClose``): TLS would wait
  for the client's close_notify, and TCP for a client that reads nothing,
  with no timer.

Refusals are WSO2-style JSON written straight to the transport (the request has
not been dispatched yet) with ``Connection: close`` (``raw_response``). The
connection then lingers briefly (``LINGER_SECONDS``), discarding what the client
still sends, because closing a socket with unread data makes the kernel send a
reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import RESPONSES, _MalformedChunkedDataError, datetimeToString

from twistedgw.config import Limits
from twistedgw.errors import GatewayError

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, Routed

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


class BoundedClose:
    """The close after close_notify, bounded by ``CLOSE_TIMEOUT`` whatever the peer does.

    Mixed into the HTTP/1.1 front (``http/_front.FrontChannel``): call
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
