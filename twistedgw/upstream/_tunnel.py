"""Upgraded connections (WebSockets) relayed both ways after a backend's ``101``.

The request path (``http/_upgrade.py``) forwards an allowed WebSocket opening
handshake like any request, with ``Upgrade: websocket`` and ``Connection:
Upgrade`` kept for it. When the backend answers ``101 Switching Protocols``, the
upstream client (``_client.py``) hands the backend connection over instead of
parsing a response: it leaves the pool for good. ``check_switch`` judges that
``101`` (a valid head, the upgrade to ``websocket``, the ``Sec-WebSocket-Accept``
the client's key asks for); the front writes the ``101`` to the client and hands
its connection over too; then a ``Tunnel`` owns both connections:

* bytes go each way as they arrive, never parsed into messages: a
  ``FrameScanner`` per direction follows the frame headers only, so the tunnel
  knows where frames start (to close with a ``1001`` Close frame where one can
  be sent) and reads the status code of the first Close frame (for the record);
* back-pressure both ways with Twisted's producers and consumers: each
  connection is registered as the other's producer (through a ``_Valve``), so
  once ``websocket_buffer_bytes`` wait to be sent to a receiver that does not
  read, the sender is no longer read. What the gateway holds per direction is
  bounded by that and one read (TCP's read size is the same bound);
* with no byte relayed either way, or one direction stalled, for
  ``websocket_idle_timeout``, both are closed (``backend_timeout`` no longer
  applies after the ``101``);
* when one side closes, the other is closed after what it still has to
  receive (boundedly: a peer that reads nothing is aborted); a graceful stop
  calls ``shutdown`` after the drain timeout: a ``1001`` Close frame to each side
  at a frame boundary, then a close.

``on_end`` gets one ``TunnelStats`` when it ends (the access-log record).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedgw._headers import HOP_BY_HOP
from twistedgw.wire import TOKEN, connection_tokens

__all__ = [
    "ClientEnd",
    "FrameScanner",
    "Tunnel",
    "TunnelStats",
    "accept_value",
    "check_switch",
    "close_frame",
    "upgrade_protocols",
]

#: RFC 6455 1.3: appended to the client's key to compute Sec-WebSocket-Accept.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Seconds a closing backend connection may take to flush before it is aborted.
CLOSE_TIMEOUT = 5.0
#: Status code of the Close frames the gateway sends (RFC 6455 7.4.1: going away).
GOING_AWAY = 1001
#: A byte no field line may hold once split on CRLF (HTAB allowed).
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: The 101's fields never copied to the client: hop-by-hop ones (Upgrade and
#: Connection are set by the gateway), framing, and the backend's Server.
_SWITCH_SKIP = HOP_BY_HOP | {b"server", b"content-length"}


def accept_value(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value that answers ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())


def check_switch(raw: bytes, key: bytes | None) -> list[tuple[bytes, bytes]] | str:
    """The end-to-end fields of a backend's ``101`` head (``raw``, without its final
    CRLFCRLF), or why it cannot be relayed: the same grammar the response parser
    applies, an upgrade to ``websocket`` only, and the accept value ``key`` asks for."""
    lines = raw.split(b"\r\n")
    status = lines[0]
    if not (status == b"HTTP/1.1 101" or status.startswith(b"HTTP/1.1 101 ")):
        return "invalid 101 status line"
    if _CTL.search(status) is not None:
        return "a control byte in the status line"
    fields: list[tuple[bytes, bytes]] = []
    upgrade: list[bytes] = []
    connection: list[bytes] = []
    accept: list[bytes] = []
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            return "obsolete line folding in the 101 head"
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.match(name) or _CTL.search(value) is not None:
            return "an invalid field in the 101 head"
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"upgrade":
            upgrade.append(value)
        elif lower == b"connection":
            connection.append(value)
        elif lower == b"sec-websocket-accept":
            accept.append(value)
        fields.append((name, value))
    if upgrade_protocols(upgrade) != [b"websocket"]:
        return "the 101 does not upgrade to websocket"
    named = connection_tokens(connection)
    if b"upgrade" not in named:
        return "the 101 does not say Connection: upgrade"
    if key is not None and accept != [accept_value(key)]:
        return "the 101's Sec-WebSocket-Accept does not answer the client's key"
    return [(n, v) for n, v in fields if n.lower() not in _SWITCH_SKIP and n.lower() not in named]


def upgrade_protocols(values: list[bytes]) -> list[bytes]:
    """The protocol names (no version) ``Upgrade`` field values list, lower-case."""
    return [
        item.strip(b" \t").split(b"/", 1)[0].lower()
        for value in values
        for item in value.split(b",")
        if item.strip(b" \t")
    ]


# -- frames ------------------------------------------------------------------


#: Frame headers one read may hold before the scanner stops following its direction:
#: a read of at most 64 KiB with more frames than this (averaging under 16 bytes) would
#: cost the reactor milliseconds; the direction then closes without a 1001 Close frame
#: and its close code goes unlogged (the bytes are still relayed).
FRAMES_PER_READ = 4096


class FrameScanner:
    """RFC 6455 frame boundaries in one direction, read from the frame headers alone.

    Payloads are skipped, never copied or unmasked (the first two bytes of a Close
    frame's payload excepted: its status code). It judges nothing: a peer's framing
    errors are for the other peer to refuse. Extensions (permessage-deflate) leave
    frame headers as they are. One pass per read, bounded by ``FRAMES_PER_READ``."""

    __slots__ = ("_close", "_code", "_head", "_left", "_mask", "close_code", "lost")

    def __init__(self) -> None:
        self._head = b""  # the first bytes of a frame header still incomplete
        self._left = 0  # payload bytes of the current frame still to come
        self._close = False  # the current frame is the first Close: its code is read
        self._code = b""
        self._mask = b""
        #: The status code of the first Close frame (1005 when it had none), else None.
        self.close_code: int | None = None
        #: No longer followed (``FRAMES_PER_READ``): never at a boundary again.
        self.lost = False

    @property
    def at_boundary(self) -> bool:
        """Whether the next byte would start a frame (a frame may be inserted here)."""
        return not self._left and not self._head and not self.lost

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        if self._head:  # a header split across reads (rare): one copy of this read
            data = self._head + data
            self._head = b""
        i, n = 0, len(data)
        budget = FRAMES_PER_READ
        while i < n:
            left = self._left
            if left:
                take = left if left < n - i else n - i
                if self._close and len(self._code) < 2:
                    self._code += data[i : i + min(take, 2 - len(self._code))]
                self._left = left - take
                i += take
                if not self._left and self._close:
                    self._closed()
                continue
            if n - i < 2:
                self._head = data[i:]
                return
            second = data[i + 1]
            length = second & 0x7F
            extended = 0 if length < 126 else 2 if length == 126 else 8
            end = i + 2 + extended + (4 if second & 0x80 else 0)
            if end > n:
                self._head = data[i:]
                return
            if extended:
                length = int.from_bytes(data[i + 2 : i + 2 + extended], "big")
            budget -= 1
            if not budget:
                self.lost = True
                return
            if data[i] & 0x0F == 0x8 and self.close_code is None:
                self._close = True
                self._code = b""
                self._mask = data[end - 4 : end] if second & 0x80 else b""
                self._left = length
                i = end
                if not length:
                    self._closed()
                continue
            i = end + length
            if i > n:
                self._left = i - n
                return

    def _closed(self) -> None:
        self._close = False
        code, mask = self._code, self._mask
        if mask:
            code = bytes(b ^ mask[k] for k, b in enumerate(code))
        self.close_code = int.from_bytes(code, "big") if len(code) == 2 else 1005


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A Close frame (RFC 6455 5.5.1): masked when a client sends it (to a backend)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    return (
        bytes((0x88, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    )


# -- the relay ---------------------------------------------------------------


class TunnelStats(NamedTuple):
    """One relayed WebSocket connection, for its access-log record and metrics."""

    received: int  # bytes from the client after the handshake
    sent: int  # bytes to the client after the 101
    close_code: int | None  # the first Close frame's status code, either way (None: none)
    # Why it ended: "client" or "backend" (that side sent the first Close frame, or
    # without one closed its connection first), "idle_timeout" or "shutdown" (a graceful
    # stop); None while it is open (the 101's record).
    closed_by: str | None


class ClientEnd(Protocol):
    """The client's connection as the front hands it over after the ``101``."""

    transport: Any

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> IDelayedCall: ...

    def loseConnection(self) -> None:
        """Close once what is buffered was sent, aborting a peer that reads nothing."""


def _tcp(transport: Any) -> Any:
    return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport


def _adopt(transport: Any, protocol: Any) -> None:
    """Make ``protocol`` receive ``transport``'s bytes and loss from now on, in place of
    the upstream client's connection protocol (TLS: the protocol it wraps)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.transport = transport


class _BackendEnd:
    """The backend connection's protocol once the tunnel owns it."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: Any = None
        self.connected = 1

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.from_backend(data)

    def connectionLost(self, reason: Failure) -> None:
        self.connected = 0
        self.tunnel.backend_lost()

    def makeConnection(self, transport: Any) -> None:  # never called: adopted (``_adopt``)
        self.transport = transport


@implementer(IPushProducer)
class _Valve:
    """One connection registered as the producer of the other: when the consumer's
    output is over its bound, the producer's connection is no longer read."""

    def __init__(self, tunnel: Tunnel, source: Any) -> None:
        self.tunnel = tunnel
        self.source = source  # the transport to stop reading
        self.paused_at: float | None = None

    def pauseProducing(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.tunnel.now()
            self.source.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused_at is not None:
            self.paused_at = None
            if not self.tunnel.done:
                self.source.resumeProducing()

    def stopProducing(self) -> None:
        """The consumer's connection is lost: the tunnel hears it from there."""


class Tunnel:
    """One upgraded connection relayed both ways (module docstring)."""

    def __init__(
        self,
        backend: Any,
        *,
        idle_timeout: float,
        buffer_bytes: int,
        on_end: Callable[[TunnelStats], None],
    ) -> None:
        """``backend``: the upstream client's connection (a protocol with its transport)
        on which the backend answered 101."""
        self._backend: Any = backend.transport
        self._client: ClientEnd | None = None
        self._idle = idle_timeout
        self._buffer = buffer_bytes
        self._on_end: Callable[[TunnelStats], None] | None = on_end
        self._up = FrameScanner()  # client -> backend
        self._down = FrameScanner()  # backend -> client
        self.received = 0
        self.sent = 0
        self.close_code: int | None = None
        self._closer: str | None = None  # the side whose Close frame came first
        self.done = False
        self._timer: IDelayedCall | None = None
        self._last = 0.0
        self._valves: list[_Valve] = []
        self._backend_closer: IDelayedCall | None = None
        self.now: Callable[[], float] = _no_clock

    def start(self, client: ClientEnd, client_rest: bytes, backend_rest: bytes) -> None:
        """Relay from now on; ``*_rest``: bytes each side sent after its head."""
        self._client = client
        client_t, backend_t = client.transport, self._backend
        _adopt(backend_t, _BackendEnd(self))
        timer = self._timer = client.callLater(self._idle, self._check_idle)
        self.now = timer.seconds  # type: ignore[attr-defined]  # DelayedCall's clock
        self._last = self.now()
        for transport in (client_t, backend_t):
            tcp = _tcp(transport)
            if tcp is not None and hasattr(tcp, "bufferSize"):
                tcp.bufferSize = self._buffer  # when its producer is paused (and read size)
        down, up = _Valve(self, backend_t), _Valve(self, client_t)
        self._valves = [down, up]
        client_t.registerProducer(down, True)  # a full client output: stop reading backend
        backend_t.registerProducer(up, True)  # and the other way
        if client_rest:
            self.from_client(client_rest)
        if backend_rest and not self.done:
            self.from_backend(backend_rest)

    # -- relaying ------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.done:
            return
        self._last = self.now()
        self.received += len(data)
        up = self._up
        up.feed(data)
        if self.close_code is None and up.close_code is not None:
            self.close_code, self._closer = up.close_code, "client"
        self._backend.write(data)

    def from_backend(self, data: bytes) -> None:
        if self.done:
            return
        client = self._client
        assert client is not None
        self._last = self.now()
        self.sent += len(data)
        down = self._down
        down.feed(data)
        if self.close_code is None and down.close_code is not None:
            self.close_code, self._closer = down.close_code, "backend"
        client.transport.write(data)

    # -- endings -------------------------------------------------------------

    def client_lost(self) -> None:
        self._end("client")

    def backend_lost(self) -> None:
        if self._backend_closer is not None and self._backend_closer.active():
            self._backend_closer.cancel()
        self._backend_closer = None
        self._end("backend")

    def shutdown(self) -> None:
        """A graceful stop's drain timeout passed: close both sides, with a ``1001``
        Close frame to each that has not received one, where a frame can start."""
        self._close_both("shutdown", "the gateway is stopping")

    def _check_idle(self) -> None:
        self._timer = None
        if self.done:
            return
        now = self.now()
        due = self._last + self._idle
        for valve in self._valves:
            if valve.paused_at is not None:  # a receiver that reads nothing
                due = min(due, valve.paused_at + self._idle)
        if now >= due:
            self._close_both("idle_timeout", "idle timeout")
            return
        client = self._client
        assert client is not None
        self._timer = client.callLater(due - now, self._check_idle)

    def _close_both(self, why: str, words: str) -> None:
        if self.done or self._client is None:
            return
        if self._down.at_boundary and self._down.close_code is None:
            self._client.transport.write(close_frame(GOING_AWAY, words, masked=False))
        if self._up.at_boundary and self._up.close_code is None:
            self._backend.write(close_frame(GOING_AWAY, words, masked=True))
        if self.close_code is None:
            self.close_code = GOING_AWAY
        self._end(why)

    def _end(self, why: str) -> None:
        """Stop relaying, close both connections after what they still hold, report."""
        if self.done:
            return
        self.done = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        client = self._client
        backend = self._backend
        for transport in (client.transport if client is not None else None, backend):
            if transport is not None:
                transport.unregisterProducer()  # else TLS waits for the producer to close
        if why != "client" and client is not None:
            client.loseConnection()
        if why != "backend" and getattr(backend, "connected", False) and client is not None:
            backend.loseConnection()
            self._backend_closer = client.callLater(CLOSE_TIMEOUT, self._abort_backend)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            # A closing handshake's side is who began it, not whose TCP close came first
            # (RFC 6455 7.1.1: the server closes TCP first, whoever began).
            by = self._closer if why in ("client", "backend") and self._closer else why
            on_end(TunnelStats(self.received, self.sent, self.close_code, by))

    def _abort_backend(self) -> None:
        self._backend_closer = None
        if getattr(self._backend, "connected", False):
            self._backend.abortConnection()


def _no_clock() -> float:
    raise RuntimeError("Tunnel: no clock before start")
