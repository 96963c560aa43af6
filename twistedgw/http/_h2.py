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
  only while its body is read, which is only once its request was allowed
  (``H2Stream.read``: a verdict still pending gets no WINDOW_UPDATE, so no more body
  than the initial window arrives before it, and a refusal resets the stream without
  reading it); a send window made negative by SETTINGS (RFC 9113 §6.9.2) waits until
  WINDOW_UPDATEs make it positive again, then the rest goes out;
* back-pressure: the channel is the TLS transport's producer; while the transport's
  output is over its bound, no DATA is sent, reading stops, and every stream's
  response producer (the forwarder's relay) is paused, as is one stream's whose own
  unsent bytes are over ``STREAM_HIGH_WATER``.

Each stream becomes a ``wire.Exchange`` handed to the same ``GatewayResource.handle``
as HTTP/1.1's, when its HEADERS are in (judged from the head, issue 22 item 4), with an
``H2Stream`` as its ``Responder`` and ``BodySource`` (``twistedgw/wire/_exchange.py``):
the one adapter between a stream and the gateway. The connection's ``wire.Connection``
(addresses, TLS transport, so the client-certificate verdict) is shared by all its
streams.

Errors (RFC 9113 §5.4): a malformed request (a field h2 refuses, a header name that
is not a token, a value with a control byte other than HTAB, pseudo-header faults,
``:authority`` and ``Host`` that disagree, ``content-length`` that does not match the
DATA) is a stream error: RST_STREAM PROTOCOL_ERROR on that stream only. Connection
errors (an invalid preface, HPACK, frame sizes, flow control, floods) get GOAWAY and
the connection is closed at once.

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
import struct
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
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
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.server import Site
from zope.interface import implementer

from twistedgw import _hosts, errors, wire
from twistedgw._memo import remember
from twistedgw._ratelimitlog import RateLimitedLog
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._front import MEMORY_BODY, FrontChannel
from twistedgw.http._guard import BoundedClose, Guard, _tcp, _unsent, request_timeout
from twistedgw.http._h2hpack import MemoDecoder, MemoEncoder
from twistedgw.http._resource import GatewayExchange, RequestRecord
from twistedgw.http._routing import split_target
from twistedgw.wire import BodyReady, answer_headers

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
_SEND_HEADERS = h2.connection.ConnectionInputs.SEND_HEADERS
_SEND_DATA = h2.connection.ConnectionInputs.SEND_DATA
_STREAM_SEND_HEADERS = h2.stream.StreamInputs.SEND_HEADERS
_STREAM_SEND_DATA = h2.stream.StreamInputs.SEND_DATA
_STREAM_SEND_END = h2.stream.StreamInputs.SEND_END_STREAM
# A frame's 9-byte head (RFC 9113 §4.1): length (24 bits, as 16 + 8), type, flags, stream.
_FRAME_HEAD = struct.Struct(">HBBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4

# RFC 9110 token, lower case (h2 has refused upper case and controls already).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
# Connection-specific response fields, never sent over HTTP/2 (RFC 9113 §8.2.2).
_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_STATUS = {code: b"%d" % code for code in RESPONSES}
# What a response field value must not hold over HTTP/2 (RFC 9113 §8.2.1).
_BAD_OUT = re.compile(rb"[\x00\r\n]")


_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
# RFC 9113 §8.2.1: no NUL, CR or LF, no leading or trailing SP or HTAB; nor any other
# control byte but HTAB (\x01-\x1f, \x7f), which §8.2.1 lets an intermediary treat as
# malformed: HTTP/1.1's field-value refuses them (400), so the backend never gets one.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z")
# RFC 9113 §8.2.2: connection-specific fields make a request malformed.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

#: What ``_parse_request`` makes of a valid request's header block: method, target,
#: host (``:authority``, else ``Host``), content-length, the fields, whether the client
#: waits for ``100 Continue``. (An extended CONNECT's ``:protocol`` is checked, then
#: answered 405 with any CONNECT.)
_Parsed = tuple[bytes, bytes, bytes, int | None, list[tuple[bytes, bytes]], bool]
#: The same, remembered per connection (the fields as a tuple, copied for each request).
_Known = tuple[bytes, bytes, bytes, int | None, tuple[tuple[bytes, bytes], ...], bool]
#: Request header blocks remembered per connection, with what ``_parse_request`` and the
#: head's checks made of them (the last few: a client repeats its requests).
KNOWN_REQUESTS = 8


def _parse_request(fields: Any) -> _Parsed | str:
    """Check a request header block against RFC 9113 §8.2 and §8.3 in one pass and
    take it apart; a string says why it is malformed (a stream error).

    Names are lower-case tokens (``x(y)`` is not one; nor is an upper-case name);
    values hold no control byte but HTAB (NUL, CR, LF, DEL...) nor surrounding
    whitespace; pseudo-header fields come first, once each, known ones only,
    ``:protocol`` only with CONNECT; ``:method``, and ``:scheme`` and a non-empty
    ``:path`` unless CONNECT; no connection-specific field, ``te`` only ``trailers``;
    ``:authority`` or ``Host``, one each, the same. Split ``cookie`` fields are joined
    (§8.2.3)."""
    pseudo: dict[bytes, bytes] = {}
    pairs: list[tuple[bytes, bytes]] = []
    add = pairs.append
    host: bytes | None = None
    expect = False
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
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        add((name, value))
    if cookies is not None:
        add((b"cookie", b"; ".join(cookies)))
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
            add((b"host", authority))
        elif host != authority:
            return ":authority and the Host header name different hosts"
        host = authority
    elif host is None:
        return "no :authority nor Host"
    return method, path, host, length, pairs, expect


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


class _GuardedH2(h2.connection.H2Connection):
    """h2's connection state machine, counting resets and control frames as they arrive
    and turning a malformed request into a stream error (module docstring)."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(
            config=h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Responses are built from checked headers (names lower-cased and
                # connection fields dropped by ``H2Stream``): h2 need not redo it.
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
        # The header list size enforced from the first frame, not only once the client
        # acknowledged SETTINGS; both coders remember the blocks that repeat (_h2hpack.py).
        self.decoder = self._counting = MemoDecoder(limits.max_header_bytes)
        self.encoder = MemoEncoder()
        self.incoming_buffer = _BoundedFrames(limits)
        self._resets = _Rate(limits.h2_max_resets_per_second)
        self._control = _Rate(limits.h2_max_control_frames_per_second)
        self.flood: str | None = None
        #: Streams reset as malformed during the last ``receive_data``: id -> why.
        self.malformed: dict[int, str] = {}

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        events: list[h2.events.Event]
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
                if frame.stream_id > self.highest_inbound_stream_id:
                    # A new stream (every request): h2's ``_receive_frame`` adds only a
                    # ``repr`` of the frame for its trace log (a tenth of receiving) and
                    # the RST_STREAM for a stream closed or an id too low, neither of
                    # which a new stream can be; the errors are the same either way.
                    sent, events = self._receive_headers_frame(cast(HeadersFrame, frame))
                    self._prepare_for_sending(sent)
                else:
                    events = super()._receive_frame(frame)
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

    # -- sending: the frames written directly ----------------------------------
    #
    # h2 builds a hyperframe object per frame sent (with its flag set, padding and
    # priority parts), then serialises it: a third of the sending cost. The two frames
    # of every answer are written here instead, with h2's own checks and state machine
    # inputs in h2's order, so its view of the streams, the windows and the HPACK
    # context stays what its own methods would leave (``tests/test_h2_unit.py`` holds the
    # bytes and the state to h2's). Anything else (an informational head, padding, a
    # stream h2 no longer holds) goes through h2's methods.

    def send_headers(  # type: ignore[override]
        self, stream_id: int, headers: Any, end_stream: bool = False, **priority: Any
    ) -> None:
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or priority
            or type(headers) is not list
            or not headers
            or headers[0][0] != b":status"
            or headers[0][1][:1] == b"1"  # informational: h2's other state input
        ):
            super().send_headers(stream_id, headers, end_stream, **priority)
            return
        self.state_machine.process_input(_SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(_STREAM_SEND_HEADERS)
        block = self.encoder.encode(headers)
        size = len(block)
        limit: int = stream.max_outbound_frame_size or self.max_outbound_frame_size
        head = _FRAME_HEAD.pack
        if size <= limit:
            flags = _END_HEADERS | _END_STREAM if end_stream else _END_HEADERS
            out = head(size >> 8, size & 0xFF, _HEADERS, flags, stream_id) + block
        else:  # HEADERS, then CONTINUATIONs, the last with END_HEADERS
            parts = [block[i:i + limit] for i in range(0, size, limit)]
            last = len(parts) - 1
            pieces = []
            for i, part in enumerate(parts):
                kind = _CONTINUATION if i else _HEADERS
                flags = (_END_STREAM if end_stream and not i else 0) | (
                    _END_HEADERS if i == last else 0
                )
                pieces.append(head(len(part) >> 8, len(part) & 0xFF, kind, flags, stream_id))
                pieces.append(part)
            out = b"".join(pieces)
        if end_stream:
            machine.process_input(_STREAM_SEND_END)
        if machine.trailers_sent and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        self._data_to_send += out

    def send_data(  # type: ignore[override]
        self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None
    ) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or pad_length is not None or type(data) is not bytes:
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        size = len(data)
        if size > 0 and size > min(
            self.outbound_flow_control_window, stream.outbound_flow_control_window
        ):
            raise h2.exceptions.FlowControlError(
                f"Cannot send {size} bytes, flow control window is "
                f"{self.local_flow_control_window(stream_id)}"
            )
        if size > self.max_outbound_frame_size:
            raise h2.exceptions.FrameTooLargeError(
                f"Cannot send frame size {size}, max frame size is "
                f"{self.max_outbound_frame_size}"
            )
        self.state_machine.process_input(_SEND_DATA)
        machine = stream.state_machine
        machine.process_input(_STREAM_SEND_DATA)
        if end_stream:
            machine.process_input(_STREAM_SEND_END)
        stream.outbound_flow_control_window -= size
        self._data_to_send += _FRAME_HEAD.pack(
            size >> 8, size & 0xFF, _DATA, _END_STREAM if end_stream else 0, stream_id
        ) + data
        self.outbound_flow_control_window -= size

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


class H2Stream:
    """One stream's I/O: its ``wire.Responder`` (the answer) and ``wire.BodySource``
    (the request body), see ``twistedgw/wire/_exchange.py``; the one adapter between an
    HTTP/2 stream and the gateway, which reads the request from the ``Exchange`` built
    at HEADERS. It also holds the stream's state for ``H2Channel``: the request body
    arriving (read only once the request is allowed), the response bytes waiting for
    the client's window.
    """

    __slots__ = (
        "_body",
        "_body_limit",
        "_body_size",
        "_complete",
        "_conn",
        "_discard",
        "_ending",
        "_expect",
        "_head",
        "_head_request",
        "_last_data",
        "_length",
        "_on_gone",
        "_out",
        "_out_size",
        "_producer_paused",
        "_ready",
        "_reset_after",
        "_silent",
        "_stalled_since",
        "_window",
        "finished",
        "gone",
        "method",
        "producer",
        "started",
        "stream_id",
        "target",
    )

    def __init__(
        self, conn: H2Channel, stream_id: int, method: bytes, target: bytes,
        length: int | None, complete: bool,
    ) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.method = method
        self.target = target  # for the records the channel makes itself
        self.started = False
        self.finished = False
        self.gone = False
        self.producer: Any = None
        self._on_gone: Callable[[], None] | None = None
        self._head_request = method == b"HEAD"
        self._head: list[tuple[bytes, bytes]] | None = None  # sent with the first bytes
        self._silent = False
        # the request body
        self._length = length  # content-length
        self._complete = complete  # END_STREAM received
        self._ready: BodyReady | None = None  # reading: who waits for the body
        self._discard = False  # answered without reading it: its DATA is dropped
        self._expect = False  # the client waits for 100 Continue
        self._body: IO[bytes] | None = None
        self._body_limit = 0
        self._body_size = 0
        self._window = 0  # what the client may still send on this stream, as granted
        self._last_data = 0.0
        # the response
        self._out: list[bytes] = []
        self._out_size = 0
        self._ending = False  # finished: END_STREAM goes after ``_out``
        self._reset_after: int | None = None  # RST_STREAM code once the response is out
        self._producer_paused = False
        self._stalled_since: float | None = None

    # -- wire.BodySource -----------------------------------------------------

    @property
    def length(self) -> int | None:
        return self._length

    def read(self, ready: BodyReady) -> None:
        """The request was allowed: its stream's window opens (``100`` if the client
        waits for one), and ``ready`` gets the whole body once END_STREAM is in."""
        self._conn.read_body(self, ready)

    # -- wire.Responder -------------------------------------------------------

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None = None,
        clean: bool = False,
    ) -> None:
        """``wire.Responder.start_response``; ``clean``: the caller knows no value holds
        CR, LF or NUL (a parsed backend head, the gateway's own fields), so none is
        scanned for."""
        if self.started or self.gone or self.finished:
            return
        self.started = True
        self._conn.answering(self)
        silent = self._silent = (
            self._head_request or status in NO_BODY_CODES or status < 200
        )
        fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
        append = fields.append
        for name, value in headers:
            lower = name.lower()
            if lower not in _HOP:
                append((lower, value))
        if length is not None and (not silent or (
            self._head_request and status not in NO_BODY_CODES
        )):
            append((b"content-length", b"%d" % length))
        if not clean and _BAD_OUT.search(b"\x01".join([value for _, value in fields])):
            # A transform's value, say: RFC 9113 §8.2.1 forbids these bytes in a field.
            fields = [(name, _BAD_OUT.sub(b" ", value)) for name, value in fields]
        self._head = fields

    def write(self, data: bytes) -> None:
        if self.finished or self.gone or not self.started:
            return
        head = self._head
        if head is not None:
            self._head = None
            self._conn.send_head(self, head, end_stream=False)
        if self._silent or not data:
            return
        self._out.append(data)
        self._out_size += len(data)
        self._conn.ready(self)

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        reason: bytes | None,
        body: bytes,
        clean: bool = False,
    ) -> None:
        """The whole response at once (``start_response``, ``write`` and ``finish``
        folded; the forwarder calls it when the backend's whole answer came in one
        read): HEADERS, and DATA with END_STREAM at once if the windows let it out in one
        frame, instead of a pass of the flush per stream. ``clean``: as
        ``start_response``'s."""
        if self.started or self.gone or self.finished:
            return
        self.start_response(status, headers, length, reason, clean)
        self.finished = True
        self._on_gone = None
        self._close_body()
        head, self._head = self._head, None
        if head is not None:
            self._conn.send_whole(self, head, b"" if self._silent else body)

    def finish(self) -> None:
        if self.finished or self.gone:
            return
        if not self.started:
            self.start_response(200, answer_headers(), 0)
        self.finished = True
        self._on_gone = None
        self._close_body()
        head, self._head = self._head, None
        if head is not None:  # nothing was written: the head carries END_STREAM
            self._conn.send_head(self, head, end_stream=True)
            self._conn.stream_sent(self)
        else:
            self._ending = True
            self._conn.ready(self)

    def abort(self) -> None:
        """Reset this stream (RST_STREAM INTERNAL_ERROR): a partial response must not
        pass as complete. The connection and its other streams go on."""
        if self.finished or self.gone:
            return
        self.gone = True
        self._on_gone = None
        self._conn.abort_stream(self, _ErrorCodes.INTERNAL_ERROR, "the response was cut short")

    def register_producer(self, producer: IPushProducer) -> None:
        if self.gone or self.finished:
            return
        self.producer = producer
        self._producer_paused = False
        if self._conn.output_full or self._out_size > STREAM_HIGH_WATER:
            self._conn.pause_stream(self)

    def unregister_producer(self) -> None:
        self.producer = None
        self._producer_paused = False

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        self._on_gone = callback

    # -- the channel's side -----------------------------------------------

    def lost(self) -> None:
        """The stream is gone (reset, or the connection lost): nothing more is sent."""
        self._out = []
        self._out_size = 0
        self._close_body()
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopping a response producer failed")
        if self.gone:
            return
        self.gone = True
        callback, self._on_gone = self._on_gone, None
        if callback is not None and not self.finished:
            callback()

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
            spool: IO[bytes] = tempfile.TemporaryFile()  # closed with the stream
            spool.write(body.getvalue())
            body = self._body = spool
        body.write(data)

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()


def _body_taken(body: IO[bytes] | None, size: int) -> None:
    """A stream's ``_ready`` once its body was handed over: read only once."""


_BODY_TAKEN: BodyReady = _body_taken


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
        self.streams: dict[int, H2Stream] = {}
        self.peer: Any = None
        self.local: Any = None
        self.output_full = False
        self._ready: dict[int, H2Stream] = {}  # streams with something to send
        self._granting: list[H2Stream] = []  # streams whose window this read used
        self._paused: set[H2Stream] = set()  # streams whose producer we paused
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
        self._connection: wire.Connection | None = None  # what every exchange shares
        # Request header blocks that passed the head's checks: fields -> what they said.
        self._known: dict[tuple[Any, ...], _Known] = {}
        self._full_since: float | None = None  # the output over its bound since then
        self._full_unsent = 0  # and the unsent bytes the socket held then

    @property
    def requests(self) -> list[H2Stream]:
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
        for stream in streams.values():
            stream.lost()

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
        fields = event.headers or ()
        key = tuple(fields)
        known = self._known.get(key)
        if known is None:
            parsed = _parse_request(fields)
            if isinstance(parsed, str):
                self._malformed({stream_id: parsed})
                return
            method, target, host, length, pairs, expect = parsed
        else:
            method, target, host, length, kept, expect = known
            pairs = list(kept)
        complete = event.stream_ended is not None
        stream = H2Stream(self, stream_id, method, target, length, complete)
        stream._window = self._stream_window
        stream._last_data = self._now
        stream._expect = expect
        self.streams[stream_id] = stream
        self._arm(self._now + self._period)  # per-stream timing: the tick runs often now
        if known is None:
            refusal = wire.method_refusal(method)
            if refusal is not None:  # CONNECT 405, extended CONNECT (RFC 8441); `get` 400
                self.refuse(stream, refusal, "bad_request")
                return
            problem = wire.target_problem(target)
            if problem is not None:
                self.refuse(stream, errors.bad_request(problem), "bad_request")
                return
            try:
                _hosts.from_header(host)
            except _hosts.BadHost as e:
                self.refuse(stream, errors.bad_request(f"bad :authority: {e}"), "bad_request")
                return
            # A header block that passed every check of the head: the next identical one
            # (a client repeating its request) is taken from here, not parsed again.
            remember(
                self._known, key, (method, target, host, length, tuple(pairs), expect),
                KNOWN_REQUESTS,
            )
        routed = self.guard.route(target, method, host)
        limit = stream._body_limit = (
            routed.body_limit if routed is not None else self.limits.max_body_bytes
        )
        if length is not None:
            if complete and length:
                self._malformed({stream_id: "content-length, but no DATA"})
                return
            if length > limit:
                self.refuse(stream, errors.payload_too_large(limit), "body_too_large")
                return
        conn = self._connection
        if conn is None:
            conn = self._connection = wire.Connection(self.peer, self.local, True, self.transport)
        exchange = GatewayExchange(
            method, target, b"HTTP/2", wire.Fields(pairs), host, conn, stream,
            None if complete else stream, routed,
        )
        # Judged now, from the head: the body is read (its window opened) only once
        # the request is allowed (``H2Stream.read``); a refusal never reads it.
        try:
            self.site.resource.handle(exchange)  # type: ignore[attr-defined]
        except Exception:
            log.failure("handling an HTTP/2 request failed")
            if stream.started:
                stream.abort()
            else:
                self.refuse(stream, errors.internal_error(), "other")

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream._discard:
            return  # reset or answered: discarded (the connection's window is topped up)
        stream._last_data = self._now
        data: bytes = event.data
        stream._window -= event.flow_controlled_length
        if stream._ready is not None and stream._window < self._stream_window // 2:
            self._granting.append(stream)  # reading it: its window is topped up
        size = stream._body_size = stream._body_size + len(data)
        if size > stream._body_limit:
            self.refuse(stream, errors.payload_too_large(stream._body_limit), "body_too_large")
            return
        if data:
            stream._store(data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream._complete = True
        if stream._discard:
            stream._reset_after = None  # the client sent it all: no reset needed
            return
        if stream._length is not None and stream._length != stream._body_size:
            # h2 checks DATA against content-length; a body ended by trailers is ours.
            self._malformed({stream.stream_id: "content-length does not match the DATA"})
            return
        if stream._ready is not None:
            self._body_ready(stream)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        """Trailers are read (and discarded, as over HTTP/1.1), but held to the field
        rules: a malformed one makes the request malformed."""
        fault = _trailers_fault(event.headers or ())
        if fault is not None:
            self._malformed({event.stream_id: fault})

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._drop(stream)
            stream.lost()
        # (A reset h2 made, for a stream window the client overflowed, was counted as
        # a reset the client caused as the frame arrived: _GuardedH2._receive_frame.)

    def _malformed(self, streams: dict[int, str]) -> None:
        """Streams reset with PROTOCOL_ERROR as malformed (RFC 9113 §8.1.1): logged and
        recorded as 400 ``bad_request``; the client got RST_STREAM, not a response."""
        for stream_id, why in list(streams.items()):
            self._reset(stream_id, _ErrorCodes.PROTOCOL_ERROR)  # unless h2 did already
            stream = self.streams.get(stream_id)
            method = target = None
            if stream is not None:
                method, target = stream.method, stream.target
                self._drop(stream)
                stream.lost()
            peer = self._peer()
            _client_faults.emit(
                peer, "HTTP/2 stream {stream} from {peer}: malformed request ({why}); reset",
                stream=stream_id, peer=peer, why=why,
            )
            self._record(
                method, target, errors.bad_request(f"malformed HTTP/2 request: {why}"),
                "bad_request", 0,
            )
            self._caused_reset()
            if self._closing:
                break
        streams.clear()

    def _grant(self, now: float) -> None:
        """Top the receive windows up once per read batch: the connection's always, a
        stream's while its body is being read (never before its request is allowed)."""
        conn = self.conn
        if conn.inbound_flow_control_window < CONNECTION_WINDOW // 2:
            conn.increment_flow_control_window(
                CONNECTION_WINDOW - conn.inbound_flow_control_window
            )
        granting = self._granting
        if granting:
            for stream in granting:
                if not stream._complete and not stream._discard and not stream.gone:
                    self._open_window(stream)
            granting.clear()

    def _open_window(self, stream: H2Stream) -> None:
        grow = self._stream_window - stream._window
        if grow <= 0:
            return
        try:
            self.conn.increment_flow_control_window(grow, stream.stream_id)
        except h2.exceptions.H2Error:
            return
        stream._window += grow

    # -- the body, once allowed ----------------------------------------------------

    def read_body(self, stream: H2Stream, ready: BodyReady) -> None:
        """``BodySource.read``: the request was allowed. What arrived meanwhile (at most
        the initial window: its stream got no WINDOW_UPDATE) is granted again, ``100``
        sent if the client waits for one, and ``ready`` called once END_STREAM is in."""
        if stream._ready is not None or stream.gone or stream._discard or stream.started:
            return
        stream._ready = ready
        stream._last_data = self._clock()  # the body timeout runs from now
        if stream._complete:
            self._body_ready(stream)
            return
        self._open_window(stream)
        if stream._expect:
            self.send_informational(stream, b"100")
        self._wants_flush()

    def _body_ready(self, stream: H2Stream) -> None:
        ready, stream._ready = stream._ready, _BODY_TAKEN
        body = stream._body
        if body is not None:
            body.seek(0)
        assert ready is not None
        try:
            ready(body, stream._body_size)
        except Exception:
            log.failure("handling an HTTP/2 request body failed")
            if stream.started:
                stream.abort()
            else:
                self.refuse(stream, errors.internal_error(), "other")

    def answering(self, stream: H2Stream) -> None:
        """``stream``'s answer starts. A body never read (a refusal) is not: the stream's
        window stays closed, what arrives is dropped, and once the answer is out the
        stream is reset (RST_STREAM NO_ERROR) if the client was still sending."""
        if stream._ready is None and not stream._complete:
            stream._discard = True
            stream._reset_after = _ErrorCodes.NO_ERROR
            stream._close_body()

    def refuse(self, stream: H2Stream, error: GatewayError, kind: str) -> None:
        """Answer ``error`` on one stream itself, before or instead of reading its body
        (a handler waiting for the body gets nothing more, and writes nothing), then
        reset it if the client is still sending (RFC 9113 §8.1: a complete response,
        then RST_STREAM NO_ERROR stops the upload); the connection stays."""
        if stream._discard or stream.gone or stream.finished:
            return
        if stream.started:  # the handler answers already: never two heads
            stream.abort()
            return
        stream._ready = None  # never read: answering() drops the rest
        body = error.body()
        headers = answer_headers()
        headers.append((b"content-type", errors.JSON_TYPE))
        stream.start_response(error.status, headers, len(body))
        if stream.method != b"HEAD":
            stream.write(body)
        stream.finish()
        self._record(stream.method, stream.target, error, kind, len(body))

    # -- writing -----------------------------------------------------------------

    def send_head(self, request: H2Stream, fields: list[tuple[bytes, bytes]],
                  end_stream: bool) -> None:
        try:
            self.conn.send_headers(request.stream_id, fields, end_stream=end_stream)
        except h2.exceptions.H2Error:
            self.stream_gone(request)
            return
        self._wants_flush()

    def send_whole(self, request: H2Stream, fields: list[tuple[bytes, bytes]],
                   body: bytes) -> None:
        """A whole response (``H2Stream.respond``): with no body, a HEADERS frame that
        ends the stream; with a body that the stream's and the connection's windows
        take in one frame (and the transport not over its bound), HEADERS and DATA with
        END_STREAM now; otherwise the body waits for the flush, as written ones do."""
        conn = self.conn
        stream_id = request.stream_id
        try:
            if not body:
                conn.send_headers(stream_id, fields, end_stream=True)
            else:
                conn.send_headers(stream_id, fields, end_stream=False)
                size = len(body)
                if (
                    self.output_full
                    or size > conn.max_outbound_frame_size
                    or conn.local_flow_control_window(stream_id) < size
                ):
                    request._out.append(body)
                    request._out_size = size
                    request._ending = True
                    self.ready(request)
                    return
                conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.H2Error:
            self.stream_gone(request)
            return
        self.stream_sent(request)
        self._wants_flush()

    def send_informational(self, request: H2Stream, status: bytes) -> None:
        try:
            self.conn.send_headers(request.stream_id, [(b":status", status)])
        except h2.exceptions.H2Error:
            return
        self._wants_flush()

    def ready(self, request: H2Stream) -> None:
        """``request`` has response bytes (or its end) to send."""
        self._ready[request.stream_id] = request
        if request._out_size > STREAM_HIGH_WATER and not request._producer_paused:
            self.pause_stream(request)
        self._wants_flush()

    def pause_stream(self, request: H2Stream) -> None:
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

    def stream_sent(self, request: H2Stream) -> None:
        """END_STREAM is queued: the stream is done, on our side."""
        stream_id = request.stream_id
        self._ready.pop(stream_id, None)
        self._paused.discard(request)
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self._last_active = self._clock()
        request.producer = None
        code = request._reset_after
        if code is not None and not request._complete:
            self._reset(stream_id, code)  # written by the flush under way, or scheduled

    def _drop(self, request: H2Stream) -> None:
        """Forget a stream (reset, malformed, or gone)."""
        stream_id = request.stream_id
        self._ready.pop(stream_id, None)
        self._paused.discard(request)
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self._last_active = self._clock()

    def stream_gone(self, request: H2Stream) -> None:
        """h2 refused to send on a stream it considers closed: treat it as reset."""
        self._drop(request)
        request.lost()

    def abort_stream(self, request: H2Stream, code: int, why: str) -> None:
        """RST_STREAM ``code`` on ``request``'s stream (its producer stopped; ``why`` for
        the log). The handler that aborts records its own outcome; a stream the channel
        aborts (a closed window) tells the handler through ``when_gone``."""
        self._drop(request)
        self._reset(request.stream_id, code)
        request.lost()
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
                request._ready is not None  # reading its body (allowed, not yet all in)
                and request._ready is not _BODY_TAKEN
                and not request._complete
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
        # Frames h2 holds go first: a stream answered whole leaves ``streams`` at once,
        # its frames written by the next turn's flush, which a close in between (a
        # graceful stop's drain tick) would otherwise drop.
        self._write(self.conn.data_to_send())
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
        """To whichever channel serves now; the drain's tracker forgets this connection."""
        self.connected = 0
        tracker = getattr(self._site, "tracker", None)  # app/_drain.py
        if tracker is not None:
            tracker.forget(self)
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
        # The byte-level front, built as Site.buildProtocol builds it (http/_front.serve_http1),
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
