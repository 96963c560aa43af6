"""HTTP/2 on listeners with ``http2 = true``: twisted.web's H2Connection, guarded.

ALPN (tls/_server.py) offers h2, then http/1.1, on those listeners only. Every
connection starts as the byte-level HTTP/1.1 ``FrontChannel`` (http/_front.py: it
counts the connection against ``max_connections`` and bounds the handshake), wrapped
in ``NegotiatingChannel``, which hands the connection over to
``GuardedH2Connection`` when the TLS handshake completes with ALPN h2, before any
byte is read as HTTP/1.1; any other client stays on the front. Requests then reach
the same ``GatewayResource`` as over HTTP/1.1, and the client-certificate
verdict is the connection's, shared by all its streams (``_twisted.connection_transport``).

What twisted.web's H2 support lacks, and a gateway needs (each a setting):

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
* ``idle_timeout``: a stream whose request stops arriving for that long is
  answered 408 and reset; a stream whose response waits on a flow-control window the
  client keeps closed is reset once it waited that long (the connection's own
  idle timer is reset by any frame, a PING for instance);
* graceful stop: GOAWAY naming the last stream accepted; those finish, later
  ones are refused (REFUSED_STREAM), and the connection closes when none is left.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection
from twisted.web.server import Request, Site
from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.http._front import FrontChannel
from twistedgw.http._guard import (
    CLOSE_TIMEOUT,
    SERVER,
    Guard,
    _http_date,
    request_timeout,
    target_problem,
)
from twistedgw.http._routing import split_target

if TYPE_CHECKING:
    from twistedgw.http._resource import Routed

log = Logger()

PROTOCOL = "HTTP/2"


class _Calm(h2.exceptions.DenialOfServiceError):
    """A flood: h2 answers it with GOAWAY ENHANCE_YOUR_CALM, twisted.web closes."""


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
    """h2's connection state machine, counting resets and control frames as they arrive."""

    def __init__(self, config: h2.config.H2Configuration, limits: Limits) -> None:
        super().__init__(config=config)
        self.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.h2_max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            },
        )
        # Enforced from the first frame, not only once the client acknowledged SETTINGS.
        self.decoder.max_header_list_size = limits.max_header_bytes
        self.incoming_buffer = _BoundedFrames(limits)
        self._resets = _Rate(limits.h2_max_resets_per_second)
        self._control = _Rate(limits.h2_max_control_frames_per_second)
        self.flood: str | None = None

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
        events: list[h2.events.Event] = super()._receive_frame(frame)
        return events


class H2Request(Request):
    """A stream's request: its body counted against the limit as it arrives, per stream.

    twisted.web spools a body to memory (under 100 kB) or a temporary file before
    ``render``; without this count a client could fill the disk.
    """

    h2: GuardedH2Connection | None = None
    stream_id = 0
    body_limit: int | None = None
    body_received = 0
    routed: Routed | None = None  # set at HEADERS; the resource routes no more

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
        self.body_received += len(data)
        limit = self.body_limit
        if limit is not None and self.body_received > limit and self.h2 is not None:
            self.h2.refuse_stream(self.stream_id, errors.payload_too_large(limit), "body_too_large")
            return
        content: Any = self.content
        content.write(data)


class GuardedH2Connection(H2Connection):
    """twisted.web's HTTP/2 connection with the gateway's limits (module docstring)."""

    # twisted.web's own rapid-reset bucket (1000, then 33 a second) is lifted:
    # ``h2_max_resets_per_second`` is the one rule, counted in ``_GuardedH2``.
    _resetTokenBurst = 1 << 30

    def __init__(self, guard: Guard, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.guard = guard
        self.limits = guard.limits()
        self.guarded = _GuardedH2(self.conn.config, self.limits)
        self.conn = self.guarded
        self.counted = False  # taken over from the FrontChannel that started
        self._stalled: dict[int, float] = {}
        self._arriving: dict[int, float] = {}  # streams whose request is still arriving
        self._stall_timer: IDelayedCall | None = None
        self._goaway_last: int | None = None
        self._close_timer: IDelayedCall | None = None
        self._lost = False  # the transport reported the connection gone

    @property
    def requests(self) -> list[Any]:
        """The streams in flight: what a graceful stop waits for (app/_drain.py)."""
        return list(self.streams.values())

    def connectionMade(self) -> None:
        self.timeOut = self.limits.idle_timeout  # type: ignore[assignment]
        super().connectionMade()

    def connectionLost(  # type: ignore[override]
        self, reason: Failure, _cancelTimeouts: bool = True
    ) -> None:
        # twisted.web calls this itself (``_cancelTimeouts=False``) when it gives up on
        # a connection, before the transport is gone: the close timer must survive that.
        if not _cancelTimeouts:
            super().connectionLost(reason, _cancelTimeouts)
            return
        self._lost = True
        for name in ("_stall_timer", "_close_timer"):
            timer: IDelayedCall | None = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)
        if self.counted:
            self.counted = False
            self.guard.open -= 1
        super().connectionLost(reason, _cancelTimeouts)

    def dataReceived(self, data: bytes) -> None:
        if self._close_timer is not None:
            return  # closing: discard
        super().dataReceived(data)
        flood = self.guarded.flood
        if flood is not None:
            self.guarded.flood = None
            log.warn(
                "HTTP/2 flood from {peer}: {what}; sent GOAWAY and closed",
                peer=self._peer(), what=flood,
            )
        if self.conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
            # GOAWAY sent or received (a flood, a protocol error): twisted.web's
            # loseConnection alone waits on its own producer registration under TLS.
            self._close()

    def timeoutConnection(self) -> None:
        super().timeoutConnection()
        self._close()

    # -- streams -----------------------------------------------------------

    def _requestReceived(self, event: h2.events.RequestReceived) -> None:
        stream_id: int = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        super()._requestReceived(event)
        if self._stall_timer is None:
            self._schedule_stall_check()
        if not event.stream_ended:
            self._arriving[stream_id] = self._reactor.seconds()
        stream = self.streams[stream_id]
        request: Any = stream._request
        request.h2 = self
        request.stream_id = stream_id
        pseudo = {name: value for name, value in event.headers if name.startswith(b":")}
        target: bytes = pseudo.get(b":path", b"")
        problem = target_problem(target)
        if problem is not None:
            self.refuse_stream(stream_id, errors.bad_request(problem), "bad_request")
            return
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(set(hosts)) > 1:
            self.refuse_stream(
                stream_id,
                errors.bad_request(":authority and the Host header name different hosts"),
                "bad_request",
            )
            return
        routed: Routed | None = self.guard.route(
            target, pseudo.get(b":method"), hosts[0] if hosts else None
        )
        limit = routed.body_limit if routed is not None else self.limits.max_body_bytes
        request.body_limit = limit
        request.routed = routed
        length = request.requestHeaders.getRawHeaders(b"content-length")
        if length and length[0].isdigit() and int(length[0]) > limit:
            self.refuse_stream(stream_id, errors.payload_too_large(limit), "body_too_large")

    def _requestDataReceived(self, event: h2.events.DataReceived) -> None:
        if event.stream_id not in self.streams:  # refused: discard, keep the window open
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._tryToWriteControlData()
            return
        if event.stream_id in self._arriving:
            self._arriving[event.stream_id] = self._reactor.seconds()
        super()._requestDataReceived(event)

    def _requestEnded(self, event: h2.events.StreamEnded) -> None:
        self._arriving.pop(event.stream_id, None)
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: h2.events.StreamReset) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)
        self._stalled.pop(streamID, None)
        self._arriving.pop(streamID, None)
        if self._goaway_last is not None and not self.streams:
            self._close()

    def abortRequest(self, streamID: int) -> None:
        """RST_STREAM, once: a refused or stalled stream may be aborted again by the
        forwarder when its request learns it is gone."""
        if streamID in self.streams:
            super().abortRequest(streamID)

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            pass
        self._tryToWriteControlData()

    def refuse_stream(self, stream_id: int, error: GatewayError, kind: str) -> None:
        """Answer ``error`` on one stream and reset it (RFC 9113 §8.1: a complete
        response, then RST_STREAM NO_ERROR stops the upload); the connection stays."""
        body = error.body()
        try:
            self.conn.send_headers(
                stream_id,
                [
                    (b":status", str(error.status).encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"server", SERVER),
                ],
            )
            if self.conn.local_flow_control_window(stream_id) >= len(body):
                self.conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.H2Error:
            pass
        self._reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        stream = self.streams.get(stream_id)
        if stream is not None:
            request: Any = stream._request
            content = getattr(request, "content", None)
            if content is not None:
                content.close()
            self._requestDone(stream_id)
            stream.connectionLost(Failure(ConnectionLost(f"refused: {kind}")))
            self._record(stream, error, kind, len(body))

    def _record(self, stream: Any, error: GatewayError, kind: str, sent: int) -> None:
        from twistedgw.http._resource import RequestRecord

        method = (getattr(stream, "command", None) or b"-").decode("latin-1")
        path = getattr(stream, "path", None) or b"-"
        self.guard.gateway.notify(
            RequestRecord(
                started=time.time(),
                duration=0.0,
                client=self._peer(),
                method=method,
                path=split_target(path)[0].decode("latin-1"),
                api=None,
                status=error.status,
                bytes_sent=sent,
                identity=None,
                error_kind=kind,
                refusal=error,
                protocol=PROTOCOL,
            )
        )

    # -- flow-control stalls -------------------------------------------------

    def _schedule_stall_check(self) -> None:
        every = min(1.0, self.limits.idle_timeout / 4)
        self._stall_timer = self.callLater(every, self._stall_check)

    def _stall_check(self) -> None:
        """Reset streams whose response has waited ``idle_timeout`` on a closed window;
        answer 408 on those whose request body stopped arriving for that long (the
        connection's idle timer alone would let PINGs hold them open)."""
        self._stall_timer = None
        now = self._reactor.seconds()
        idle = self.limits.idle_timeout
        for stream_id, last in list(self._arriving.items()):
            if now - last >= idle and stream_id in self.streams:
                self.refuse_stream(
                    stream_id,
                    request_timeout(f"the client sent nothing on this stream for {idle:g} seconds"),
                    "body_timeout",
                )
        queues: dict[int, Any] = self._outboundStreamQueues
        for stream_id, queue in list(queues.items()):
            if queue and self.remainingOutboundWindow(stream_id) <= 0:
                since = self._stalled.setdefault(stream_id, now)
                if now - since >= self.limits.idle_timeout and stream_id in self.streams:
                    log.info(
                        "HTTP/2 stream {stream} from {peer}: flow-control window closed for "
                        "{timeout}s; reset",
                        stream=stream_id, peer=self._peer(), timeout=self.limits.idle_timeout,
                    )
                    stream = self.streams[stream_id]
                    self.abortRequest(stream_id)
                    stream.connectionLost(
                        Failure(ConnectionLost("flow-control window closed for idle_timeout"))
                    )
            else:
                self._stalled.pop(stream_id, None)
        if self.streams and not self._lost:  # an idle connection needs no timer
            self._schedule_stall_check()

    # -- graceful stop -------------------------------------------------------

    def graceful_close(self) -> None:
        """GOAWAY naming the last stream accepted: those finish, the connection closes
        after them. Written as a frame of its own, because h2's ``close_connection``
        would refuse every later frame, the in-flight streams' too."""
        if self._goaway_last is None and self.transport is not None:
            last = self.conn.highest_inbound_stream_id
            self._goaway_last = last
            self._tryToWriteControlData()
            frame = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0)
            self.transport.write(frame.serialize())
        if not self.streams:
            self._close()

    def _close(self) -> None:
        transport: Any = self.transport
        if transport is None or self._lost or self._close_timer is not None:
            return
        transport.unregisterProducer()  # TLS waits for a registered producer otherwise
        transport.loseConnection()
        self._close_timer = self.callLater(CLOSE_TIMEOUT, self._force_close)

    def _force_close(self) -> None:
        """The client did not finish the close (or read nothing) in time."""
        self._close_timer = None
        transport: Any = self.transport
        if not self._lost and transport is not None:
            transport.abortConnection()

    def _peer(self) -> str:
        try:
            return str(getattr(self.transport.getPeer(), "host", "-"))  # type: ignore[union-attr]
        except Exception:
            return "-"


@implementer(IHandshakeListener)
class NegotiatingChannel(Protocol):
    """One connection of an ``http2`` listener: the HTTP/1.1 front until ALPN says h2.

    The connection starts as a ``FrontChannel`` (it counts the connection, arms the
    handshake and header timers and registers itself as the TLS transport's
    producer). TLS calls ``handshakeCompleted`` before it delivers any application
    byte, so that is where the choice is made: with ALPN h2 the front hands the
    connection over (timers cancelled, the count and the producer registration
    moved) to a ``GuardedH2Connection``, which never saw a byte parsed as HTTP/1.1.
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
        front = self._front
        counted = front.hand_over()
        channel: Any = GuardedH2Connection(self._guard, getattr(self._site, "reactor", None))
        channel.counted = counted  # max_connections: still one connection
        channel.requestFactory = H2Request
        channel.site = self._site
        channel.factory = self._site
        channel.callLater = front.callLater
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
