"""HTTP/2 on listeners with ``http2 = true``: the ``h2`` state machine, driven directly.

ALPN (tls/_server.py) offers h2, then http/1.1, on those listeners only. Every
connection starts as the byte-level HTTP/1.1 ``FrontChannel`` (http/_front.py: it
counts the connection against ``max_connections`` and bounds the handshake), wrapped
in ``NegotiatingChannel``, which hands the connection over to ``H2Channel`` when the
TLS handshake completes with ALPN h2, before any byte is read as HTTP/1.1; any other
client stays on the front.

``H2Channel`` feeds what it reads to ``h2.connection.H2Connection`` (the protocol:
frames, HPACK, stream states, windows) and does the rest itself, with no twisted.web
connection, priority tree or ``Request`` in between (twisted.web's ``H2Connection``,
which this replaced, cost a reactor turn per frame):

* one write per read batch: every frame a read causes (SETTINGS and PING acks,
  WINDOW_UPDATEs, answers made at once, DATA the client's windows let out) leaves
  in one transport write at the end of ``dataReceived``; what backends answer in one
  reactor turn leaves in one write at the start of the next (``callLater(0)``, once
  per connection, not per frame);
* no priority scheduling: streams with something to send and an open window take
  turns, one frame each, round-robin; PRIORITY frames are read and ignored;
* flow control explicit: the connection's receive window is kept large and topped
  up per read batch whatever a stream's state; a stream's own window is topped up
  only while its request is allowed (``H2Channel.allow_body``: a verdict still
  pending gets no WINDOW_UPDATE, so no more body than the initial window arrives
  before it); a send window made negative by SETTINGS (RFC 9113 §6.9.2) waits until
  WINDOW_UPDATEs make it positive again, then the rest goes out;
* back-pressure: the channel is the TLS transport's producer; while the transport's
  output is over its bound, no DATA is sent, reading stops, and every stream's
  response producer (the forwarder's relay) is paused, as is one stream's whose own
  unsent bytes are over ``STREAM_HIGH_WATER``.

Requests reach the same ``GatewayResource`` as over HTTP/1.1 through
``StreamRequest``, the one adapter between a stream and the gateway (what the
resource, the caller resolution, the forwarder and the drain read and call); the
client-certificate verdict is the connection's, shared by all its streams.

Errors (RFC 9113 §5.4): a malformed request (a field h2 refuses, a header name that
is not a token, pseudo-header faults, ``:authority`` and ``Host`` that disagree,
``content-length`` that does not match the DATA) is a stream error: RST_STREAM
PROTOCOL_ERROR on that stream only. Connection errors (an invalid preface, HPACK,
frame sizes, flow control, floods) get GOAWAY and the connection is closed at once.

The defences (each a setting; README "HTTP/2"):

* ``h2_max_concurrent_streams``: advertised in SETTINGS and enforced by h2
  (a client opening more gets GOAWAY);
* ``max_header_bytes``: the header list size (SETTINGS_MAX_HEADER_LIST_SIZE,
  enforced on the decoded list, which also stops HPACK bombs) and the size of a
  header block before decoding (CONTINUATION floods, with
  ``h2_max_continuation_frames``);
* ``max_body_bytes`` (or the API's): counted per stream; over it, or a
  ``content-length`` over it, the stream is answered 413 and reset;
* ``h2_max_resets_per_second`` (rapid reset, CVE-2023-44487) and
  ``h2_max_control_frames_per_second`` (SETTINGS and PING floods): over either,
  GOAWAY ENHANCE_YOUR_CALM and the connection is closed, counted frame by frame
  so one large read cannot slip a flood through;
* ``idle_timeout``: a connection with no stream and no frame for that long gets
  GOAWAY and is closed; a stream whose request stops arriving for that long is
  answered 408 and reset; a stream whose response waits on a flow-control window
  the client keeps closed is reset once it waited that long (PINGs keep the
  connection, not such a stream, alive);
* graceful stop: GOAWAY naming the last stream accepted; those finish, later
  ones are refused (REFUSED_STREAM), and the connection closes when none is left.
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet import address as taddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from twistedgw import _hosts, errors
from twistedgw._ratelimitlog import RateLimitedLog
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._front import MEMORY_BODY, FrontChannel
from twistedgw.http._guard import (
    SERVER,
    BoundedClose,
    Guard,
    _http_date,
    _tcp,
    _unsent,
    request_timeout,
    target_problem,
)
from twistedgw.http._resource import RequestRecord
from twistedgw.http._routing import split_target

if TYPE_CHECKING:
    from twistedgw.http._resource import Routed

log = Logger()
# What a client can make the gateway log per stream: one line per address a minute.
_client_faults = RateLimitedLog(log, level=LogLevel.info)

PROTOCOL = "HTTP/2"

#: A stream's unsent response bytes over which its producer (the forwarder's relay,
#: reading the backend) is paused; it resumes under ``STREAM_LOW_WATER``.
STREAM_HIGH_WATER = 1 << 16
STREAM_LOW_WATER = 1 << 14
#: DATA bytes one flush sends before it lets the reactor read again.
FLUSH_BUDGET = 1 << 18
#: The connection's receive window, topped up per read batch: streams' own windows
#: (the initial 65,535 bytes each) are what bound a request body in flight.
CONNECTION_WINDOW = 1 << 24

_ErrorCodes = h2.errors.ErrorCodes
_CLOSED = h2.connection.ConnectionState.CLOSED

# RFC 9110 token, lower case (h2 has refused upper case and controls already).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
# A method: a token with no lower-case letter (as NGINX and the HTTP/1.1 front).
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Z]+\Z")
# Connection-specific response fields, never sent over HTTP/2 (RFC 9113 §8.2.2).
_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_STATUS = {code: b"%d" % code for code in RESPONSES}


_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
# RFC 9113 §8.2.1: no NUL, CR or LF, no leading or trailing SP or HTAB.
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
# RFC 9113 §8.2.2: connection-specific fields make a request malformed.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

#: What ``_parse_request`` makes of a valid request's header block: method, target,
#: host (``:authority``, else ``Host``), content-length, ``:protocol``, the fields.
_Parsed = tuple[bytes, bytes, bytes, int | None, bytes | None, Headers]


def _parse_request(fields: Any) -> _Parsed | str:
    """Check a request header block against RFC 9113 §8.2 and §8.3 in one pass and
    take it apart; a string says why it is malformed (a stream error).

    Names are lower-case tokens (``x(y)`` is not one; nor is an upper-case name);
    values hold no NUL, CR or LF nor surrounding whitespace; pseudo-header fields come
    first, once each, known ones only, ``:protocol`` only with CONNECT; ``:method``,
    and ``:scheme`` and a non-empty ``:path`` unless CONNECT; no connection-specific
    field, ``te`` only ``trailers``; ``:authority`` or ``Host``, one each, the same.
    Split ``cookie`` fields are joined (§8.2.3)."""
    pseudo: dict[bytes, bytes] = {}
    headers = Headers()
    add = headers.addRawHeader
    host: bytes | None = None
    length: int | None = None
    cookies: list[bytes] | None = None
    regular = False
    bad_value = _BAD_VALUE.search
    for name, value in fields:
        if value and bad_value(value) is not None:
            return f"the value of {name[:64]!r} holds a forbidden byte or surrounding space"
        if name[:1] == b":":
            if regular:
                return f"pseudo-header field {name[:64]!r} after a regular field"
            if name not in _PSEUDO:
                return f"unknown pseudo-header field {name[:64]!r}"
            if name in pseudo:
                return f"pseudo-header field {name!r} twice"
            pseudo[name] = value
            continue
        regular = True
        if _NAME.match(name) is None:
            return f"header name {name[:64]!r} is not a lower-case token"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific header field {name!r}"
        if name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                return "more than one Host header"
            host = value
        elif name == b"content-length":
            length = int(value)  # h2 refused anything but digits, and disagreeing values
        elif name == b"te" and value != b"trailers":
            return "te other than 'trailers'"
        add(name, value)
    if cookies is not None:
        add(b"cookie", b"; ".join(cookies))
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    protocol = pseudo.get(b":protocol")
    scheme, path = pseudo.get(b":scheme"), pseudo.get(b":path")
    if method == b"CONNECT" and protocol is None:
        if scheme is not None or path is not None:
            return "CONNECT with :scheme or :path"
        path = b""
    else:
        if protocol is not None and method != b"CONNECT":
            return ":protocol without CONNECT"
        if scheme is None or not path:
            return "no :scheme, or no (or an empty) :path"
    authority = pseudo.get(b":authority")
    if authority is not None:
        if host is None:
            add(b"host", authority)
        elif host != authority:
            return ":authority and the Host header name different hosts"
        host = authority
    elif host is None:
        return "no :authority nor Host"
    return method, path, host, length, protocol, headers


def _trailers_fault(fields: Any) -> str | None:
    """Why a trailer block is malformed, if it is: no pseudo-header field, the field
    rules of ``_parse_request``."""
    for name, value in fields:
        if name[:1] == b":":
            return f"pseudo-header field {name[:64]!r} in trailers"
        if _NAME.match(name) is None:
            return f"trailer name {name[:64]!r} is not a lower-case token"
        if value and _BAD_VALUE.search(value) is not None:
            return f"the value of trailer {name[:64]!r} holds a forbidden byte"
    return None


class _Calm(h2.exceptions.DenialOfServiceError):
    """A flood: h2 answers it with GOAWAY ENHANCE_YOUR_CALM."""


class _Rate:
    """Events in the current one-second window (cheap: no timer, no list)."""

    __slots__ = ("count", "limit", "second")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.second = 0
        self.count = 0

    def hit(self) -> bool:
        """Count one; True when this one is over the limit."""
        now = int(time.monotonic())
        if now != self.second:
            self.second, self.count = now, 0
        self.count += 1
        return self.count > self.limit


class _BoundedFrames(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, with a header block bounded in frames and bytes.

    h2 joins a HEADERS frame and its CONTINUATIONs before decoding them; its own
    bound is 64 frames of up to 16 KiB each. Here a block is refused once it has
    more than ``h2_max_continuation_frames`` CONTINUATIONs or ``max_header_bytes``
    of (compressed) bytes, before any decoding."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(server=True)
        self._max_frames = limits.h2_max_continuation_frames
        self._max_bytes = limits.max_header_bytes
        self._block_bytes = 0

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if self._headers_buffer or isinstance(f, HeadersFrame):
            if not self._headers_buffer:
                self._block_bytes = 0
            self._block_bytes += len(getattr(f, "data", b""))
            if isinstance(f, ContinuationFrame) and len(self._headers_buffer) > self._max_frames:
                raise _Calm(
                    f"a header block of more than {self._max_frames} CONTINUATION frames"
                )
            if self._block_bytes > self._max_bytes:
                raise _Calm(f"a header block of more than {self._max_bytes} bytes")
        result: Frame | None = super()._update_header_buffer(f)
        return result


class _Decoder(hpack.Decoder):
    """hpack's decoder, counting the blocks it decoded: an error raised after a block
    was decoded concerns the request (a stream error), one raised while decoding
    leaves the connection's HPACK context unknown (a connection error)."""

    decoded = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        headers = super().decode(data, raw)
        self.decoded += 1
        return headers


class _GuardedH2(h2.connection.H2Connection):
    """h2's connection state machine, counting resets and control frames as they arrive
    and turning a malformed request into a stream error (module docstring)."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(
            config=h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Responses are built from checked headers (names lower-cased and
                # connection fields dropped by ``StreamRequest``): h2 need not redo it.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                # Requests are checked in one pass by ``_parse_request`` (h2's chain of
                # generators cost a seventh of this module's CPU per request); a fault is
                # then a stream error, not the connection error h2 makes of it.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.h2_max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            },
        )
        self.decoder = self._counting = _Decoder()
        # Enforced from the first frame, not only once the client acknowledged SETTINGS.
        self.decoder.max_header_list_size = limits.max_header_bytes
        self.incoming_buffer = _BoundedFrames(limits)
        self._resets = _Rate(limits.h2_max_resets_per_second)
        self._control = _Rate(limits.h2_max_control_frames_per_second)
        self.flood: str | None = None
        #: Streams reset as malformed during the last ``receive_data``: id -> why.
        self.malformed: dict[int, str] = {}

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        kind = type(frame)
        if kind is RstStreamFrame:
            if self._resets.hit():
                self.flood = f"more than {self._resets.limit} stream resets in a second"
                raise _Calm(self.flood)
        elif kind is SettingsFrame or kind is PingFrame:
            if self._control.hit():
                self.flood = (
                    f"more than {self._control.limit} SETTINGS and PING frames in a second"
                )
                raise _Calm(self.flood)
        elif kind is HeadersFrame:
            decoded = self._counting.decoded
            try:
                events: list[h2.events.Event] = super()._receive_frame(frame)
            except h2.exceptions.ProtocolError as e:
                if type(e) is not h2.exceptions.ProtocolError:
                    raise  # too many streams, the header list size, a closed stream
                if self._counting.decoded == decoded:
                    if e.__cause__ is not None:  # HPACK: RFC 9113 §4.3
                        error = h2.exceptions.ProtocolError(str(e))
                        error.error_code = _ErrorCodes.COMPRESSION_ERROR
                        raise error from e
                    raise
                return self._stream_error(frame.stream_id, e)
            return events
        elif kind is DataFrame:
            try:
                events = super()._receive_frame(frame)
            except h2.exceptions.InvalidBodyLengthError as e:  # DATA against content-length
                return self._stream_error(frame.stream_id, e)
            return events
        elif kind is WindowUpdateFrame and frame.stream_id:
            events = super()._receive_frame(frame)
            for event in events:  # h2 reset a stream whose window the client overflowed
                if type(event) is h2.events.StreamReset and not event.remote_reset:
                    flood = self.reset_caused()
                    if flood is not None:
                        raise _Calm(flood)
            return events
        events = super()._receive_frame(frame)
        return events

    def reset_caused(self) -> str | None:
        """Count a stream reset the client caused (a malformed request, a stream window
        overflowed, a stream refused) against ``h2_max_resets_per_second``, as its own
        RST_STREAM frames are (CVE-2025-8671, "MadeYouReset"); the flood, if over."""
        if self._resets.hit():
            self.flood = f"more than {self._resets.limit} stream resets in a second"
            return self.flood
        return None

    def _stream_error(self, stream_id: int, error: h2.exceptions.ProtocolError) -> list[Any]:
        """RST_STREAM PROTOCOL_ERROR for a request h2 found malformed, if the stream
        exists and the connection is open; otherwise the connection error it was."""
        if stream_id not in self.streams or self.state_machine.state is _CLOSED:
            raise error
        try:
            self.reset_stream(stream_id, _ErrorCodes.PROTOCOL_ERROR)
        except h2.exceptions.H2Error:
            raise error from None
        self.malformed[stream_id] = str(error)
        return []


class StreamRequest:
    """One stream: the request as the gateway reads it, the response as it answers it.

    The one adapter between an HTTP/2 stream and the gateway: the subset of
    twisted.web's ``Request`` that ``http/_webexchange.web_exchange`` reads and
    answers through (it makes of it the ``wire.Exchange`` the resource, the caller
    resolution and the forwarder read), and the drain uses. It is its own ``channel`` while
    the stream lives (``transport`` is the connection's, ``abortConnection`` resets
    the stream only) and ``None`` once it is gone. It also holds the stream's state
    for ``H2Channel``: the request body arriving, the response bytes waiting for
    the client's window.
    """

    __slots__ = (
        "_body",
        "_body_limit",
        "_body_size",
        "_complete",
        "_conn",
        "_disconnected",
        "_ending",
        "_forceSSL",
        "_last_data",
        "_length",
        "_notify",
        "_out",
        "_out_size",
        "_producer_paused",
        "_refused",
        "_reset_after",
        "_silent",
        "_stalled_since",
        "_window",
        "allowed",
        "channel",
        "client",
        "clientproto",
        "code",
        "code_message",
        "content",
        "defaultContentType",
        "finished",
        "host",
        "method",
        "path",
        "producer",
        "requestHeaders",
        "responseHeaders",
        "routed",
        "sentLength",
        "startedWriting",
        "stream_id",
        "uri",
    )

    def __init__(
        self, conn: H2Channel, stream_id: int, method: bytes, uri: bytes, headers: Headers
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.channel: StreamRequest | None = self
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.clientproto = b"HTTP/2"
        self.requestHeaders = headers
        self.responseHeaders = Headers()
        self.responseHeaders.setRawHeaders(b"server", [SERVER])
        self.responseHeaders.setRawHeaders(b"date", [_http_date()])
        self.client = conn.peer
        self.host = conn.local
        self.routed: Routed | None = None
        self.code = 200
        self.code_message = b"OK"
        self.defaultContentType: bytes | None = b"text/html"
        self.startedWriting = False
        self.finished = False
        self.sentLength = 0
        self.content: IO[bytes] | None = None
        self.producer: Any = None
        self.allowed = True  # the request may send its body: its window is topped up
        self._forceSSL = False
        self._disconnected = False
        self._silent = False
        self._notify: list[Deferred[None]] = []
        # the request body
        self._body: IO[bytes] | None = None
        self._body_limit = 0
        self._body_size = 0
        self._length: int | None = None  # content-length
        self._complete = False  # END_STREAM received
        self._refused = False  # answered by the channel; its body is discarded
        self._window = 0  # what the client may still send on this stream, as granted
        self._last_data = 0.0
        # the response
        self._out: list[bytes] = []
        self._out_size = 0
        self._ending = False  # finished: END_STREAM goes after ``_out``
        self._reset_after: int | None = None  # RST_STREAM code once the response is out
        self._producer_paused = False
        self._stalled_since: float | None = None

    # -- what the request says ---------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def getClientAddress(self) -> Any:
        return self.client

    def getHost(self) -> Any:
        return self.host

    def isSecure(self) -> bool:
        return True  # HTTP/2 is offered through TLS (ALPN) only

    def setHost(self, host: bytes, port: int, ssl: bool = False) -> None:
        """twisted.web's: the address a proxy in front says the client used."""
        self._forceSSL = ssl
        header = host if port == 443 else b"%s:%d" % (host, port)
        self.requestHeaders.setRawHeaders(b"host", [header])
        self.host = taddress.IPv4Address("TCP", host.decode("latin-1"), port)

    # -- what the forwarder and the caller resolution ask of its channel -------

    @property
    def transport(self) -> Any:
        """The connection's (TLS) transport: its certificate verdict, its socket."""
        return self._conn.transport

    @property
    def _waitingForTransport(self) -> bool:
        """A producer registered now starts paused when this is true."""
        return self._conn.output_full or self._out_size > STREAM_HIGH_WATER

    def abortConnection(self) -> None:
        """Cut this stream short (RST_STREAM INTERNAL_ERROR): a partial response must not
        pass as complete. The connection and its other streams go on."""
        self._conn.abort_stream(self, _ErrorCodes.INTERNAL_ERROR, "the response was cut short")

    # -- answering ---------------------------------------------------------

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message if message is not None else RESPONSES.get(code, b"Unknown")

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def write(self, data: bytes) -> None:
        if self.finished or self.channel is None:
            return
        if not self.startedWriting:
            self.startedWriting = True
            self._head(end_stream=False)
        if self._silent or not data:
            return
        self.sentLength += len(data)
        self._out.append(data)
        self._out_size += len(data)
        self._conn.ready(self)

    def _head(self, end_stream: bool) -> None:
        """The response head as one HEADERS frame (END_STREAM when nothing follows)."""
        code = self.code
        headers = self.responseHeaders
        if (
            code not in NO_BODY_CODES
            and self.defaultContentType is not None
            and not headers.hasHeader(b"content-type")
        ):
            headers.setRawHeaders(b"content-type", [self.defaultContentType])
        self._silent = self.method == b"HEAD" or code in NO_BODY_CODES
        fields = [(b":status", _STATUS.get(code) or b"%d" % code)]
        append = fields.append
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _HOP:
                continue
            for value in values:
                append((lower, value))
        self._conn.send_head(self, fields, end_stream)

    def finish(self) -> None:
        if self.finished or self.channel is None:
            return
        self.finished = True
        if not self.startedWriting:
            self.startedWriting = True
            self._head(end_stream=True)
            done = True
        else:
            self._ending = True
            done = False
        self._close_content()
        notify, self._notify = self._notify, []
        for d in notify:
            d.callback(None)
        if done:
            self._conn.stream_sent(self)
        elif self.channel is not None:
            self._conn.ready(self)

    def notifyFinish(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.finished:
            d.callback(None)
        elif self._disconnected:
            d.errback(Failure(ConnectionLost("the client reset the stream")))
        else:
            self._notify.append(d)
        return d

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.channel is None:
            return
        self.producer = producer
        self._producer_paused = False
        if self._waitingForTransport:
            self._conn.pause_stream(self)

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False

    def processingFailed(self, reason: Failure) -> None:
        log.failure("rendering a request failed", reason)
        if self.startedWriting:
            if self.channel is not None:
                self.abortConnection()
            return
        body = errors.write_error(self, errors.internal_error())
        self.write(body)
        self.finish()

    # -- the channel's side -----------------------------------------------

    def _pause_producer(self) -> None:
        producer = self.producer
        if producer is not None and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()

    def _resume_producer(self) -> None:
        producer = self.producer
        if producer is not None and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes of the unsent response, joined from the front chunks."""
        out = self._out
        first = out[0]
        size = len(first)
        if size >= n:
            if size == n:
                del out[0]
            else:
                out[0] = first[n:]
                first = first[:n]
            self._out_size -= len(first)
            return first
        parts = [first]
        del out[0]
        while out and size + len(out[0]) <= n:
            chunk = out.pop(0)
            parts.append(chunk)
            size += len(chunk)
        if out and size < n:
            chunk = out[0]
            parts.append(chunk[: n - size])
            out[0] = chunk[n - size :]
            size = n
        self._out_size -= size
        return b"".join(parts)

    def _store(self, data: bytes) -> None:
        """Keep a piece of the request body (spooled to a file past ``MEMORY_BODY``)."""
        body = self._body
        if body is None:
            size = self._length or 0
            body = self._body = io.BytesIO() if size < MEMORY_BODY else tempfile.TemporaryFile()
        elif isinstance(body, io.BytesIO) and self._body_size > MEMORY_BODY:
            spool: IO[bytes] = tempfile.TemporaryFile()  # closed with the request
            spool.write(body.getvalue())
            body = self._body = spool
        body.write(data)

    def connection_lost(self, reason: Failure) -> None:
        """The stream is gone (reset, or the connection lost): nothing more is sent."""
        self._disconnected = True
        self.channel = None
        self._out = []
        self._out_size = 0
        self._close_content()
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopping a response producer failed")
        notify, self._notify = self._notify, []
        for d in notify:
            d.errback(reason)

    def _close_content(self) -> None:
        for body in (self.content, self._body):
            if body is not None and not isinstance(body, io.BytesIO):
                body.close()
        self._body = None


@implementer(IPushProducer)
class H2Channel(BoundedClose, Protocol):
    """One HTTP/2 connection: h2 driven directly (see the module docstring)."""

    def __init__(self, guard: Guard, site: Site) -> None:
        self.guard = guard
        self.site = site
        reactor: Any = getattr(site, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.callLater: Callable[..., IDelayedCall] = reactor.callLater
        self._clock: Callable[[], float] = reactor.seconds
        limits = self.limits = guard.limits()
        self.conn = _GuardedH2(limits)
        self.counted = False  # taken over from the FrontChannel that started
        self.streams: dict[int, StreamRequest] = {}
        self.peer: Any = None
        self.local: Any = None
        self.output_full = False
        self._ready: dict[int, StreamRequest] = {}  # streams with something to send
        self._granting: list[StreamRequest] = []  # streams whose window this read used
        self._paused: set[StreamRequest] = set()  # streams whose producer we paused
        self._in_read = False
        self._flush_call: IDelayedCall | None = None
        self._network: Any = None
        self._reading = True
        self._timer: IDelayedCall | None = None
        self._timer_at = 0.0
        self._period = min(1.0, limits.idle_timeout / 4)
        self._last_active = 0.0
        self._now = 0.0  # the clock at the start of the current read
        self._stream_window = self.conn.local_settings.initial_window_size
        self._goaway_last: int | None = None
        self._closing = False
        self._lost = False
        self._full_since: float | None = None  # the output over its bound since then
        self._full_unsent = 0  # and the unsent bytes the socket held then

    @property
    def requests(self) -> list[StreamRequest]:
        """The streams in flight: what a graceful stop waits for (app/_drain.py)."""
        return list(self.streams.values())

    # -- connection life -----------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        tcp: Any = transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport
        self.peer = tcp.getPeer()
        self.local = tcp.getHost()
        self._network = IPushProducer(transport, None)
        self._last_active = self._clock()
        conn = self.conn
        conn.initiate_connection()
        grow = CONNECTION_WINDOW - conn.inbound_flow_control_window
        if grow > 0:
            conn.increment_flow_control_window(grow)
        transport.write(conn.data_to_send())
        self._arm(self._last_active + self.limits.idle_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        for name in ("_timer", "_flush_call", "_closing_timer"):
            timer: IDelayedCall | None = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        if self.counted:
            self.counted = False
            self.guard.open -= 1
        streams, self.streams = self.streams, {}
        self._ready = {}
        self._paused = set()
        for request in streams.values():
            if not request._disconnected:
                request.connection_lost(reason)

    # -- reading ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._lost:
            return  # closing: discard
        conn = self.conn
        now = self._now = self._last_active = self._clock()
        self._in_read = True
        try:
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                self._connection_error(e)
                return
            malformed = conn.malformed
            handlers = _HANDLERS
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    if malformed and getattr(event, "stream_id", None) in malformed:
                        continue
                    handler(self, event)
                    if self._closing:
                        return  # a flood of resets the client caused
            if malformed:
                self._malformed(malformed)
                if self._closing:
                    return
            self._grant(now)
        finally:
            self._in_read = False
        if conn.state_machine.state is _CLOSED:  # the client's GOAWAY
            self._flush()
            self._close()
            return
        self._flush()

    def _caused_reset(self) -> None:
        """A stream reset the client caused: over the rate, GOAWAY ENHANCE_YOUR_CALM."""
        flood = self.conn.reset_caused()
        if flood is not None:
            self._connection_error(_Calm(flood))

    def _connection_error(self, error: h2.exceptions.ProtocolError) -> None:
        """GOAWAY (h2 prepared it, except for an invalid preface) and close at once."""
        conn = self.conn
        if conn.state_machine.state is not _CLOSED:
            try:
                conn.close_connection(error_code=error.error_code)
            except h2.exceptions.H2Error:
                pass
        flood, conn.flood = conn.flood, None
        if flood is not None:
            log.warn(
                "HTTP/2 flood from {peer}: {what}; sent GOAWAY and closed",
                peer=self._peer(), what=flood,
            )
        else:
            log.info(
                "HTTP/2 connection error from {peer}: {what}; sent GOAWAY and closed",
                peer=self._peer(), what=str(error) or type(error).__name__,
            )
        self._write(conn.data_to_send())
        self._close()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id: int = event.stream_id
        if (
            self._goaway_last is not None and stream_id > self._goaway_last
        ) or len(self.streams) >= self.limits.h2_max_concurrent_streams:
            # after a graceful stop's GOAWAY; or more streams in the gateway's hands
            # than allowed, whatever h2 counts as open (a reset stream's work is gone
            # from both, so this is a second bound, not a second count)
            self._reset(stream_id, _ErrorCodes.REFUSED_STREAM)
            self._caused_reset()
            return
        parsed = _parse_request(event.headers or ())
        if isinstance(parsed, str):
            self._malformed({stream_id: parsed})
            return
        method, uri, host, length, connect_protocol, headers = parsed
        request = StreamRequest(self, stream_id, method, uri, headers)
        request._complete = event.stream_ended is not None
        request._window = self._stream_window
        request._last_data = self._now
        request._length = length
        self.streams[stream_id] = request
        self._arm(self._now + self._period)  # per-stream timing: the tick runs often now
        if method == b"CONNECT":  # RFC 8441 (:protocol) is not offered either
            what = "extended CONNECT (RFC 8441)" if connect_protocol is not None else "CONNECT"
            self.refuse(request, errors.method_not_allowed(
                f"{what} is not served: the gateway does not open tunnels"), "bad_request")
            return
        if _METHOD.match(method) is None:
            self.refuse(request, errors.bad_request(
                "the request method must be an upper-case token"), "bad_request")
            return
        problem = target_problem(uri)
        if problem is not None:
            self.refuse(request, errors.bad_request(problem), "bad_request")
            return
        try:
            _hosts.from_header(host or b"")
        except _hosts.BadHost as e:
            self.refuse(request, errors.bad_request(f"bad :authority: {e}"), "bad_request")
            return
        routed = request.routed = self.guard.route(uri, method, host)
        limit = request._body_limit = (
            routed.body_limit if routed is not None else self.limits.max_body_bytes
        )
        size = request._length
        if size is not None:
            if request._complete and size:
                self._malformed({stream_id: "content-length, but no DATA"})
                return
            if size > limit:
                self.refuse(request, errors.payload_too_large(limit), "body_too_large")
                return
        if request._complete:
            return  # dispatched at StreamEnded, which follows
        if self.head_verdict(request):
            self.allow_body(request)
        else:
            request.allowed = False  # pending: allow_body once decided

    def _on_data(self, event: h2.events.DataReceived) -> None:
        request = self.streams.get(event.stream_id)
        if request is None or request._refused:
            return  # reset or answered: discarded (the connection's window is topped up)
        request._last_data = self._now
        data: bytes = event.data
        request._window -= event.flow_controlled_length
        if request.allowed and request._window < self._stream_window // 2:
            self._granting.append(request)
        size = request._body_size = request._body_size + len(data)
        if size > request._body_limit:
            self.refuse(request, errors.payload_too_large(request._body_limit), "body_too_large")
            return
        if data:
            request._store(data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        request = self.streams.get(event.stream_id)
        if request is None:
            return
        request._complete = True
        if request._refused:
            request._reset_after = None  # the client sent it all: no reset needed
            return
        if request._length is not None and request._length != request._body_size:
            # h2 checks DATA against content-length; a body ended by trailers is ours.
            self._malformed({request.stream_id: "content-length does not match the DATA"})
            return
        self._dispatch(request)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        """Trailers are read (and discarded, as over HTTP/1.1), but held to the field
        rules: a malformed one makes the request malformed."""
        fault = _trailers_fault(event.headers or ())
        if fault is not None:
            self._malformed({event.stream_id: fault})

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        request = self.streams.get(event.stream_id)
        if request is not None:
            self._drop(request)
            request.connection_lost(Failure(ConnectionLost("the client reset the stream")))
        # (A reset h2 made, for a stream window the client overflowed, was counted as
        # a reset the client caused as the frame arrived: _GuardedH2._receive_frame.)

    def _malformed(
        self, streams: dict[int, str], method: bytes | None = None, path: bytes | None = None
    ) -> None:
        """Streams reset with PROTOCOL_ERROR as malformed (RFC 9113 §8.1.1): logged and
        recorded as 400 ``bad_request``; the client got RST_STREAM, not a response."""
        for stream_id, why in list(streams.items()):
            self._reset(stream_id, _ErrorCodes.PROTOCOL_ERROR)  # unless h2 did already
            request = self.streams.get(stream_id)
            if request is not None:
                method, path = request.method, request.uri
                self._drop(request)
                request.connection_lost(Failure(ConnectionLost("malformed request")))
            peer = self._peer()
            _client_faults.emit(
                peer, "HTTP/2 stream {stream} from {peer}: malformed request ({why}); reset",
                stream=stream_id, peer=peer, why=why,
            )
            self._record(
                method, path, errors.bad_request(f"malformed HTTP/2 request: {why}"),
                "bad_request", 0,
            )
            self._caused_reset()
            if self._closing:
                break
        streams.clear()

    def _grant(self, now: float) -> None:
        """Top the receive windows up once per read batch: the connection's always, a
        stream's while its request is allowed and still arriving."""
        conn = self.conn
        if conn.inbound_flow_control_window < CONNECTION_WINDOW // 2:
            conn.increment_flow_control_window(
                CONNECTION_WINDOW - conn.inbound_flow_control_window
            )
        granting = self._granting
        if granting:
            for request in granting:
                if not request._complete and not request._refused and request.channel:
                    self._open_window(request)
            granting.clear()

    def _open_window(self, request: StreamRequest) -> None:
        grow = self._stream_window - request._window
        if grow <= 0:
            return
        try:
            self.conn.increment_flow_control_window(grow, request.stream_id)
        except h2.exceptions.H2Error:
            return
        request._window += grow

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self, request: StreamRequest) -> None:
        body, request._body = request._body, None
        if body is not None:
            body.seek(0)
        request.content = body
        resource: Any = self.site.resource
        try:
            result = resource.render(request)
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

    def head_verdict(self, request: StreamRequest) -> bool:
        """Whether a request whose body is still to come may send it, decided when its
        HEADERS arrive: False leaves it pending (its stream gets no WINDOW_UPDATE) until
        ``allow_body`` is called. The gateway's resource judges after the body today,
        so every request is allowed here."""
        return True

    def allow_body(self, request: StreamRequest) -> None:
        """Let ``request`` send its body: what arrived while it was pending is granted
        again (WINDOW_UPDATE) and ``100`` sent if it expects one. Until then its stream
        got no WINDOW_UPDATE: at most the initial window of body arrived."""
        request.allowed = True
        if request._complete or request._refused or request.channel is None:
            return
        self._open_window(request)
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[-1].lower() == b"100-continue":
            self.send_informational(request, b"100")
        self._wants_flush()

    def refuse(self, request: StreamRequest, error: GatewayError, kind: str) -> None:
        """Answer ``error`` on one stream before (or instead of) dispatching it, then
        reset it if the client is still sending (RFC 9113 §8.1: a complete response,
        then RST_STREAM NO_ERROR stops the upload); the connection stays."""
        if request._refused or request.channel is None:
            return
        request._refused = True
        if request.startedWriting:  # cannot happen before dispatch; never two heads
            self.abort_stream(request, _ErrorCodes.INTERNAL_ERROR, kind)
            return
        if not request._complete:
            request._reset_after = _ErrorCodes.NO_ERROR
        body = errors.write_error(request, error)
        request.write(body)
        request.finish()
        self._record(request.method, request.uri, error, kind, len(body))

    # -- writing -----------------------------------------------------------------

    def send_head(self, request: StreamRequest, fields: list[tuple[bytes, bytes]],
                  end_stream: bool) -> None:
        try:
            self.conn.send_headers(request.stream_id, fields, end_stream=end_stream)
        except h2.exceptions.H2Error:
            self.stream_gone(request)
            return
        self._wants_flush()

    def send_informational(self, request: StreamRequest, status: bytes) -> None:
        try:
            self.conn.send_headers(request.stream_id, [(b":status", status)])
        except h2.exceptions.H2Error:
            return
        self._wants_flush()

    def ready(self, request: StreamRequest) -> None:
        """``request`` has response bytes (or its end) to send."""
        self._ready[request.stream_id] = request
        if request._out_size > STREAM_HIGH_WATER and not request._producer_paused:
            self.pause_stream(request)
        self._wants_flush()

    def pause_stream(self, request: StreamRequest) -> None:
        """Pause ``request``'s producer until its bytes (and the transport) drain."""
        if request.producer is not None and not request._producer_paused:
            request._pause_producer()
            self._paused.add(request)

    def _wants_flush(self) -> None:
        if not self._in_read and self._flush_call is None and not self._lost:
            self._flush_call = self.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send what the windows let out, round-robin, one frame per stream per pass;
        then everything h2 has to send in one write."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self._lost:
            return
        conn = self.conn
        ready = self._ready
        if ready and not self.output_full:
            budget = FLUSH_BUDGET
            frame_size = conn.max_outbound_frame_size
            while ready and budget > 0:
                moved = False
                for request in list(ready.values()):
                    stream_id = request.stream_id
                    if request._out_size:
                        try:
                            window = conn.local_flow_control_window(stream_id)
                        except h2.exceptions.H2Error:
                            self.stream_gone(request)
                            continue
                        if window <= 0:
                            continue  # blocked (or negative, RFC 9113 §6.9.2): a later update
                        chunk = request._take(min(window, frame_size, budget))
                        end = request._ending and not request._out_size
                        try:
                            conn.send_data(stream_id, chunk, end_stream=end)
                        except h2.exceptions.H2Error:
                            self.stream_gone(request)
                            continue
                        budget -= len(chunk)
                        moved = True
                        if end:
                            self.stream_sent(request)
                        else:
                            del ready[stream_id]
                            if request._out_size:
                                ready[stream_id] = request  # to the back: round-robin
                        if request._producer_paused and request._out_size <= STREAM_LOW_WATER:
                            self._paused.discard(request)
                            request._resume_producer()
                        if budget <= 0:
                            break
                    elif request._ending:
                        try:
                            conn.end_stream(stream_id)
                        except h2.exceptions.H2Error:
                            self.stream_gone(request)
                            continue
                        moved = True
                        self.stream_sent(request)
                    else:
                        del ready[stream_id]
                if not moved:
                    break
            if ready and budget <= 0:
                self._flush_call = self.callLater(0, self._flush)  # reading goes first
        self._write(conn.data_to_send())
        if self._goaway_last is not None and not self.streams:
            self._close()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not self._lost and not self._closing:
            transport.write(data)

    def stream_sent(self, request: StreamRequest) -> None:
        """END_STREAM is queued: the stream is done, on our side."""
        stream_id = request.stream_id
        self._ready.pop(stream_id, None)
        self._paused.discard(request)
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self._last_active = self._clock()
        request.channel = None
        code = request._reset_after
        if code is not None and not request._complete:
            self._reset(stream_id, code)  # written by the flush under way, or scheduled

    def _drop(self, request: StreamRequest) -> None:
        """Forget a stream (reset, malformed, or gone)."""
        stream_id = request.stream_id
        self._ready.pop(stream_id, None)
        self._paused.discard(request)
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self._last_active = self._clock()

    def stream_gone(self, request: StreamRequest) -> None:
        """h2 refused to send on a stream it considers closed: treat it as reset."""
        self._drop(request)
        if not request._disconnected:
            request.connection_lost(Failure(ConnectionLost("the stream is closed")))

    def abort_stream(self, request: StreamRequest, code: int, why: str) -> None:
        """RST_STREAM ``code`` on ``request``'s stream; its producer is stopped. The
        notifyFinish errbacks fire on the next reactor turn, so that the caller that
        aborts (the forwarder) records its own outcome first."""
        if request._disconnected:
            return
        self._drop(request)
        self._reset(request.stream_id, code)
        notify, request._notify = request._notify, []
        request.connection_lost(Failure(ConnectionLost(why)))
        failure = Failure(ConnectionLost(why))
        for d in notify:
            self.callLater(0, d.errback, failure)
        self._wants_flush()

    def _reset(self, stream_id: int, code: int) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            pass

    # -- back-pressure (the TLS transport's producer) ----------------------------

    def pauseProducing(self) -> None:
        """The transport's unsent output is over its bound: no DATA, no reading, and
        every stream's producer paused."""
        if self.output_full:
            return
        self.output_full = True
        self._full_since = self._clock()
        self._full_unsent = _unsent(_tcp(self.transport))
        for request in self.streams.values():
            self.pause_stream(request)
        self._set_reading(False)

    def resumeProducing(self) -> None:
        if not self.output_full:
            return
        self.output_full = False
        self._full_since = None
        self._set_reading(True)
        for request in list(self._paused):
            if request._out_size <= STREAM_LOW_WATER:
                self._paused.discard(request)
                request._resume_producer()
        self._wants_flush()

    def stopProducing(self) -> None:
        """The connection is going: connectionLost stops the streams."""

    def _set_reading(self, want: bool) -> None:
        network = self._network
        if want == self._reading or network is None or self._lost:
            return
        self._reading = want
        if want:
            network.resumeProducing()
        else:
            network.pauseProducing()

    # -- timers: the idle connection, streams that stall ---------------------------

    def _arm(self, at: float) -> None:
        """Make the one timer fire by ``at`` (a later one is cancelled, made anew)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        if self._lost or self._closing:
            return
        self._timer_at = at
        self._timer = self.callLater(max(at - self._clock(), 0.0), self._tick)

    def _tick(self) -> None:
        """With streams: reset those whose response waited ``idle_timeout`` on a closed
        window, answer 408 on those whose request body stopped arriving for that long
        (PINGs keep the connection alive, not these); re-check every ``_period``.
        Without: GOAWAY and close after ``idle_timeout`` with no frame."""
        self._timer = None
        if self._lost or self._closing:
            return
        now = self._clock()
        idle = self.limits.idle_timeout
        if not self.streams:
            if now - self._last_active >= idle:
                log.info("Timing out HTTP/2 client: {peer}", peer=self._peer())
                self._goaway(_ErrorCodes.NO_ERROR)
                return
            self._arm(self._last_active + idle)
            return
        since = self._full_since
        if since is not None and now - since >= idle:
            unsent = _unsent(_tcp(self.transport))
            if unsent >= self._full_unsent:
                # It reads nothing: no stream can finish, and nothing else would time out
                # an answer the gateway made itself (a refusal, say).
                log.info(
                    "HTTP/2 client {peer} read nothing for {timeout}s; aborting",
                    peer=self._peer(), timeout=idle,
                )
                transport: Any = self.transport
                transport.abortConnection()
                return
            self._full_since, self._full_unsent = now, unsent  # it reads, slowly
        conn = self.conn
        for request in list(self.streams.values()):
            if (
                not request._complete
                and request.allowed
                and not request._refused
                and now - request._last_data >= idle
            ):
                self.refuse(
                    request,
                    request_timeout(f"the client sent nothing on this stream for {idle:g} seconds"),
                    "body_timeout",
                )
                continue
            if not request._out_size:
                request._stalled_since = None
                continue
            try:
                window = conn.local_flow_control_window(request.stream_id)
            except h2.exceptions.H2Error:
                window = 1
            if window > 0:
                request._stalled_since = None
            elif request._stalled_since is None:
                request._stalled_since = now
            elif now - request._stalled_since >= idle:
                log.info(
                    "HTTP/2 stream {stream} from {peer}: flow-control window closed for "
                    "{timeout}s; reset",
                    stream=request.stream_id, peer=self._peer(), timeout=idle,
                )
                self.abort_stream(
                    request, _ErrorCodes.CANCEL, "flow-control window closed for idle_timeout"
                )
        self._flush()
        self._arm(now + (self._period if self.streams else idle))

    # -- graceful stop and closing ---------------------------------------------------

    def graceful_close(self) -> None:
        """GOAWAY naming the last stream accepted: those finish, the connection closes
        after them. Written as a frame of its own, because h2's ``close_connection``
        would refuse every later frame, the in-flight streams' too."""
        if self._goaway_last is None and self.transport is not None and not self._lost:
            last = self.conn.highest_inbound_stream_id
            self._goaway_last = last
            self._write(self.conn.data_to_send())
            frame = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0)
            self._write(frame.serialize())
        if not self.streams:
            self._close()

    def _goaway(self, code: int) -> None:
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.H2Error:
            pass
        self._write(self.conn.data_to_send())
        self._close()

    def _close(self) -> None:
        transport: Any = self.transport
        if transport is None or self._lost or self._closing:
            return
        self._closing = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        transport.unregisterProducer()  # TLS waits for a registered producer otherwise
        transport.loseConnection()
        self._start_closing(transport)

    def _record(
        self, method: bytes | None, target: bytes | None, error: GatewayError, kind: str,
        sent: int,
    ) -> None:
        """A stream the channel answered (or reset) itself: its ``RequestRecord``, the
        refusal's code and reason for the access log and metrics."""
        self.guard.gateway.notify(
            RequestRecord(
                started=time.time(),
                duration=0.0,
                client=self._peer(),
                method=(method or b"-").decode("latin-1"),
                path=split_target(target or b"-")[0].decode("latin-1"),
                api=None,
                status=error.status,
                bytes_sent=sent,
                identity=None,
                error_kind=kind,
                refusal=error,
                protocol=PROTOCOL,
            )
        )

    def _peer(self) -> str:
        return str(getattr(self.peer, "host", "-"))


# The events H2Channel acts on (the others, PING and SETTINGS acks, window and priority
# updates, are h2's business or read by the next flush).
_HANDLERS: dict[type[Any], Callable[[H2Channel, Any], None]] = {
    h2.events.RequestReceived: H2Channel._on_request,
    h2.events.DataReceived: H2Channel._on_data,
    h2.events.StreamEnded: H2Channel._on_end,
    h2.events.StreamReset: H2Channel._on_reset,
    h2.events.TrailersReceived: H2Channel._on_trailers,
}


@implementer(IHandshakeListener)
class NegotiatingChannel(Protocol):
    """One connection of an ``http2`` listener: the HTTP/1.1 front until ALPN says h2.

    The connection starts as a ``FrontChannel`` (it counts the connection, arms the
    handshake and header timers and registers itself as the TLS transport's
    producer). TLS calls ``handshakeCompleted`` before it delivers any application
    byte, so that is where the choice is made: with ALPN h2 the front hands the
    connection over (timers cancelled, the count and the producer registration
    moved) to an ``H2Channel``, which never saw a byte parsed as HTTP/1.1.
    ``_channel`` is whichever serves now; the drain (app/_drain.py) reads it.
    """

    def __init__(self, channel: FrontChannel, guard: Guard, site: Site) -> None:
        self._channel: Any = channel
        self._front = channel
        self._guard = guard
        self._site = site
        self._decided = False

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self._channel.makeConnection(transport)

    def handshakeCompleted(self) -> None:
        self._front.handshakeCompleted()  # the handshake timer
        self._decide()

    def dataReceived(self, data: bytes) -> None:
        if not self._decided:  # TLS reports the handshake first; never left undecided
            self._decide()
        self._channel.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """To whichever channel serves now (the drain's tracker wraps this method)."""
        self.connected = 0
        self._channel.connectionLost(reason)

    def _decide(self) -> None:
        if self._decided:
            return
        self._decided = True
        transport: Any = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return  # refused (max_connections) or closing: the front finishes it
        if getattr(transport, "negotiatedProtocol", None) != b"h2":
            return
        counted = self._front.hand_over()
        channel = H2Channel(self._guard, self._site)
        channel.counted = counted  # max_connections: still one connection
        channel.factory = self._site
        self._channel = channel
        channel.makeConnection(transport)
        transport.registerProducer(channel, True)


class H2Factory:
    """The factory of a listener with ``http2 = true``: the gateway's site, its
    connections wrapped to switch to HTTP/2 when ALPN chose h2."""

    http2 = True  # read by the ALPN callback (tls/_server.py)

    def __init__(self, site: Site, guard: Guard) -> None:
        self.site = site
        self.guard = guard

    def __getattr__(self, name: str) -> Any:  # doStart, doStop, logPrefix, ...
        return getattr(self.site, name)

    def buildProtocol(self, addr: Any) -> Any:
        # The byte-level front, built as Site.buildProtocol builds it (http/_front.serve),
        # but not tracked itself: the wrapper is, so the drain follows a switch to h2.
        site: Any = self.site
        channel = FrontChannel(self.guard)
        channel.factory = site
        channel.site = site
        channel.callLater = site.reactor.callLater  # type: ignore[method-assign]
        channel.timeOut = site.timeOut
        wrapper = NegotiatingChannel(channel, self.guard, site)
        wrapper.factory = site
        tracker = getattr(site, "tracker", None)
        if tracker is not None:
            tracker.track(wrapper)
        return wrapper
