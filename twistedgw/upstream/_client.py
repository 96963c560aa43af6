"""A lean HTTP/1.1 client for the forwarding hot path: bytes out, bytes in.

Twisted's ``Agent`` spent about a fifth of the gateway's CPU per keep-alive
request (CHANGELOG.md, 0.2.0 performance notes): URL parsing, endpoint and pool Deferreds, a
line-by-line parser building ``Headers``, and a pause/resume of the backend
socket per response (two epoll calls). The forwarder needs much less: write a
request head it has already built, parse one response head, relay the body
with back-pressure, and keep the connection for the next request.

``Upstream`` is the pool: idle connections per backend origin (scheme, host,
port and TLS policy), new ones through Twisted endpoints (``wrapClientTLS``
for ``https``). It keeps up to ``max_idle_per_origin`` connections per origin; a
request that finds none idle while that many are open (busy or connecting) waits for
the first to finish, in arrival order, for at most ``QUEUE_WAIT`` seconds, then gets
a connection of its own (closed after its response if the pool is full). A burst of
concurrent requests (HTTP/2 multiplexes hundreds on a few client connections) thus
reuses the kept connections instead of opening and closing one per request beyond
them. A request is a ``BackendCall``; what happens to it is reported to a
``ResponseHandler`` exactly once as a head followed by data and an end, or as a
failure. ``BackendCall.cancel`` is silent: whoever cancels decides what to answer.
Response heads and chunked bodies are read by ``twistedgw.wire``, the parser the
front reads requests with.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from twistedgw._memo import remember
from twistedgw.wire import (
    RESPONSE_HEAD_LIMIT,
    TOKEN,
    BadResponseHead,
    ChunkedDecoder,
    Framing,
    MalformedChunks,
    ResponseHead,
    ResponseShape,
    connection_tokens,
    learn_shape,
    parse_response_head,
)

__all__ = [
    "TOKEN",
    "BackendCall",
    "BadResponse",
    "ConnectFailed",
    "NoResponse",
    "Origin",
    "ResponseHandler",
    "ResponseHead",
    "Truncated",
    "Upstream",
    "UpstreamError",
    "connection_tokens",
    "parse_origin",
]

#: Largest response head accepted (status line and headers together).
HEAD_LIMIT = RESPONSE_HEAD_LIMIT
_READ_SIZE = 64 * 1024
#: Methods retried once on a fresh connection when a pooled one turns out dead
#: before any response byte arrived (the backend closed it while it was idle).
_RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})
#: Longest a request waits for one of an origin's kept connections to finish (all of
#: them busy) before it gets a connection of its own: a slow backend's busy connections
#: delay other requests by at most this.
QUEUE_WAIT = 0.25


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
(_F_NONE, _F_LENGTH, _F_CHUNKED, _F_UNTIL_CLOSE) = (
    Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE,
)


class UpstreamError(Exception):
    """Why a backend request failed; ``reason`` is the underlying failure, if any."""

    def __init__(self, message: str, reason: Failure | None = None) -> None:
        super().__init__(message)
        self.reason = reason

    def caused_by(self, *types: type[BaseException]) -> bool:
        return self.reason is not None and self.reason.check(*types) is not None


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable, DNS, or the connect timeout."""


class NoResponse(UpstreamError):
    """The connection closed (or TLS failed) before a complete response head."""


class BadResponse(UpstreamError):
    """The backend's response head is not valid HTTP/1.1 we can relay."""


class Truncated(UpstreamError):
    """The connection closed before the body's announced end."""


class ResponseHandler(TypingProtocol):
    """What hears of a ``BackendCall``'s response. A handler may also have
    ``response_whole(head, body)``: then a response whose body arrived with its head
    (the common case) is reported in that one call instead of head, data and end."""

    def response_head(self, head: ResponseHead) -> None: ...
    def response_data(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def response_failed(self, error: UpstreamError) -> None: ...


PoolKey = tuple[bytes, bytes, int, IPolicyForHTTPS | None]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect; ``key`` identifies the pool the connection belongs to."""

    scheme: bytes
    host: bytes
    port: int
    host_header: bytes
    tls: IPolicyForHTTPS | None
    # Policies compare by their settings (backendtls.BackendPolicy), so a connection is
    # only reused for a target that asks for the same TLS. Made once: the pool looks a
    # connection up by it twice per request.
    key: PoolKey = field(init=False, repr=False, compare=False)

    # Whether ``host_header`` holds no CR, LF or NUL (then a backend head built with it
    # needs no scan for one on its account): checked once, not per request.
    plain_host: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.scheme, self.host, self.port, self.tls))
        host = self.host_header
        object.__setattr__(self, "plain_host", not (b"\r" in host or b"\n" in host
                                                    or b"\x00" in host))


class BackendCall:
    """One request on its way to a backend; the handle to cancel or pace it."""

    __slots__ = ("_connecting", "body", "cancelled", "conn", "handler", "head", "method",
                 "origin", "queued_at")

    def __init__(
        self,
        upstream: Upstream,
        origin: Origin,
        method: bytes,
        head: bytes,
        body: IO[bytes] | None,
        handler: ResponseHandler,
    ) -> None:
        self.origin = origin
        self.method = method
        self.head = head
        self.body = body
        self.handler = handler
        self.cancelled = False
        self.conn: _Connection | None = None
        self._connecting: Deferred[Any] | None = None
        self.queued_at = 0.0  # when it started waiting for a kept connection (``Upstream``)

    @property
    def retryable(self) -> bool:
        return self.body is None and self.method in _RETRYABLE

    def cancel(self) -> None:
        """Stop: close the backend connection (it cannot be reused); no more reports."""
        if self.cancelled:
            return
        self.cancelled = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def pause(self) -> None:
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    # reports, at most one terminal one

    def failed(self, error: UpstreamError) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.conn = None
            self.handler.response_failed(error)


def _ip_endpoint(
    reactor: Any, host: str, port: int, timeout: float
) -> IStreamClientEndpoint | None:
    """A plain TCP endpoint for an IP-literal backend, else None. ``HostnameEndpoint``
    resolves even a literal in the reactor's thread pool and builds a class per
    connect; a burst of requests beyond the idle pool opens connections at that cost."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        return None
    kind = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
    return kind(reactor, literal, port, timeout=timeout)


class Upstream:
    """The backend connection pool and the way requests get onto connections."""

    def __init__(
        self,
        reactor: Any,
        *,
        connect_timeout: float = 5.0,
        max_idle_per_origin: int = 64,
        idle_timeout: float = 60.0,
    ) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._endpoints: dict[PoolKey, IStreamClientEndpoint] = {}
        self._sweeper: IDelayedCall | None = None
        #: Connections open or connecting per origin (a tunnel's are not counted).
        self._open: dict[PoolKey, int] = {}
        #: Requests waiting for a kept connection per origin, oldest first (a cancelled
        #: one is skipped when its turn comes).
        self._waiting: dict[PoolKey, deque[BackendCall]] = {}
        self._spiller: IDelayedCall | None = None

    def request(
        self,
        origin: Origin,
        method: bytes,
        head: bytes,
        body: IO[bytes] | None,
        handler: ResponseHandler,
    ) -> BackendCall:
        """Send ``head`` (and ``body``, read to its end) on a pooled or new connection."""
        call = BackendCall(self, origin, method, head, body, handler)
        self.send(call)
        return call

    def send(self, call: BackendCall) -> None:
        """``request`` for a call its caller made: a subclass of ``BackendCall`` that is
        its own handler (the forwarder's ``_Forwarding``, one object per request). Such a
        call must have ``response_whole`` (``dataReceived`` calls it without looking)."""
        key = call.origin.key
        idle = self._idle.get(key)
        while idle:  # the newest idle connection (``_dispatch``'s pick, written out)
            conn = idle.pop()
            if conn.connected:
                transport = conn.transport
                assert transport is not None
                # ``conn.start(call, True)``, written out (once per request).
                conn.call = call
                call.conn = conn
                conn.reused = True
                conn.state = _S_HEAD
                conn._seen_bytes = False
                conn._head_only = call.method == b"HEAD"
                transport.write(call.head)
                if call.body is not None:
                    conn._pump = _BodyPump(conn, call.body)
                    transport.registerProducer(conn._pump, False)  # type: ignore[attr-defined]
                return
        if self._max_idle and self._open.get(key, 0) >= self._max_idle:
            self._wait(key, call)
        else:
            self._connect(call)

    # -- requests waiting for a kept connection ----------------------------

    def _wait(self, key: PoolKey, call: BackendCall) -> None:
        """Every kept connection is busy: ``call`` waits for the first that finishes."""
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = deque()
        call.queued_at = self._reactor.seconds()
        waiting.append(call)
        if self._spiller is None:
            self._spiller = self._reactor.callLater(QUEUE_WAIT, self._spill)

    def _next_waiting(self, key: PoolKey) -> BackendCall | None:
        waiting = self._waiting.get(key)
        while waiting:
            call = waiting.popleft()
            if not call.cancelled:
                return call
        if waiting is not None:
            del self._waiting[key]
        return None

    def _wake(self, key: PoolKey) -> None:
        """A connection of ``key`` closed: waiting requests get new ones, up to the bound."""
        while self._open.get(key, 0) < self._max_idle:
            call = self._next_waiting(key)
            if call is None:
                return
            self._connect(call)

    def _spill(self) -> None:
        """Requests that waited ``QUEUE_WAIT`` get connections of their own (one timer for
        all, re-armed for the oldest left)."""
        self._spiller = None
        deadline = self._reactor.seconds() - QUEUE_WAIT
        oldest: float | None = None
        for key in list(self._waiting):
            waiting = self._waiting[key]
            while waiting and (waiting[0].cancelled or waiting[0].queued_at <= deadline):
                call = waiting.popleft()
                if not call.cancelled:
                    self._connect(call)
            if not waiting:
                self._waiting.pop(key, None)
            elif oldest is None or waiting[0].queued_at < oldest:
                oldest = waiting[0].queued_at
        if oldest is not None:
            self._spiller = self._reactor.callLater(
                max(oldest + QUEUE_WAIT - self._reactor.seconds(), 0.0), self._spill
            )

    def _dispatch(self, call: BackendCall, *, fresh: bool) -> None:
        if not fresh:
            idle = self._idle.get(call.origin.key)
            while idle:
                conn = idle.pop()
                if conn.connected:
                    conn.start(call, reused=True)
                    return
        self._connect(call)

    def _connect(self, call: BackendCall) -> None:
        origin = call.origin
        key = origin.key
        self._open[key] = self._open.get(key, 0) + 1  # the connection holds it once made
        try:
            d = self._endpoint(origin).connect(_ConnectionFactory(self, origin))
        except BaseException:
            self._uncount(key)
            raise
        call._connecting = d

        def connected(conn: _Connection) -> None:
            call._connecting = None
            conn.counted = True
            if call.cancelled:
                conn.abort()
            else:
                conn.start(call, reused=False)

        def failed(reason: Failure) -> None:
            call._connecting = None
            self._uncount(key)
            if not call.cancelled:
                call.failed(ConnectFailed("could not connect to the backend", reason))
            self._wake(key)

        d.addCallbacks(connected, failed)

    def _endpoint(self, origin: Origin) -> IStreamClientEndpoint:
        key = origin.key
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            host = origin.host.decode("ascii")
            endpoint = _ip_endpoint(self._reactor, host, origin.port, self._connect_timeout)
            if endpoint is None:
                endpoint = HostnameEndpoint(
                    self._reactor, host, origin.port, timeout=self._connect_timeout
                )
            if origin.scheme == b"https":
                policy = origin.tls
                if policy is None:
                    raise ValueError("an https origin needs a TLS policy")
                creator = policy.creatorForNetloc(origin.host, origin.port)
                endpoint = wrapClientTLS(creator, endpoint)
            remember(self._endpoints, key, endpoint, 1024)
        return endpoint

    # -- idle connections ------------------------------------------------

    def park(self, conn: _Connection) -> None:
        """Keep a connection whose exchange ended cleanly, for the next request (the
        oldest waiting one, if any, at once)."""
        key = conn.origin.key
        if key in self._waiting:
            call = self._next_waiting(key)
            if call is not None:
                conn.start(call, True)
                return
        idle = self._idle.get(key)
        if idle is None:  # (not ``setdefault``: it would make a list per request)
            idle = self._idle[key] = []
        if len(idle) >= self._max_idle:
            conn.abort()
            return
        conn.parked_at = self._reactor.seconds()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._reactor.callLater(self._sweep_interval, self._sweep)

    @property
    def _sweep_interval(self) -> float:
        return max(0.5, min(self._idle_timeout / 4, 5.0))

    def _sweep(self) -> None:
        """Close connections idle longer than ``idle_timeout`` (one timer for all)."""
        self._sweeper = None
        deadline = self._reactor.seconds() - self._idle_timeout
        remaining = 0
        for key, idle in list(self._idle.items()):
            stale = [c for c in idle if c.parked_at <= deadline]
            for conn in stale:
                idle.remove(conn)
                conn.abort()
            if idle:
                remaining += len(idle)
            else:
                del self._idle[key]
        if remaining:
            self._sweeper = self._reactor.callLater(self._sweep_interval, self._sweep)

    def forget(self, conn: _Connection) -> None:
        """``conn`` is closed (or a tunnel's now): out of the pool and of the count."""
        key = conn.origin.key
        idle = self._idle.get(key)
        if idle and conn in idle:
            idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._uncount(key)
            if key in self._waiting:
                self._wake(key)

    def _uncount(self, key: PoolKey) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def retry(self, call: BackendCall) -> None:
        self._dispatch(call, fresh=True)

    def close(self) -> Deferred[None]:
        """Close the idle connections; in-flight requests are left alone (waiting ones
        get connections of their own now)."""
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        if self._spiller is not None and self._spiller.active():
            self._spiller.cancel()
        self._spiller = None
        for key in list(self._waiting):
            call = self._next_waiting(key)
            while call is not None:
                self._connect(call)
                call = self._next_waiting(key)
        waits: list[Deferred[None]] = []
        for idle in self._idle.values():
            for conn in idle:
                waits.append(conn.closed)
                conn.abort()
        self._idle.clear()
        done: Deferred[None] = DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None
        )
        return done


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, upstream: Upstream, origin: Origin) -> None:
        self.upstream = upstream
        self.origin = origin

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.upstream, self.origin)


class State(enum.Enum):
    """Where a backend connection is in its exchange."""

    IDLE = "no request on it (pooled, or just connected)"
    HEAD = "a request sent: reading its response head"
    BODY = "relaying the response body"


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
_S_IDLE, _S_HEAD, _S_BODY = State.IDLE, State.HEAD, State.BODY


class _Connection(Protocol):
    """One backend connection, carrying one request at a time."""

    __slots__ = (
        "_buf", "_chunks", "_framing", "_head_only", "_pump", "_remaining", "_seen_bytes", "_shape",
        "call", "closed", "counted", "origin", "parked_at", "paused", "reusable", "reused",
        "state", "upstream",
    )

    def __init__(self, upstream: Upstream, origin: Origin) -> None:
        self.upstream = upstream
        self.origin = origin
        self.call: BackendCall | None = None
        self.state = _S_IDLE
        self.reused = False
        self.reusable = True
        self.paused = False
        self.parked_at = 0.0
        self.counted = False  # in the pool's count of open connections (``Upstream._open``)
        self.closed: Deferred[None] = Deferred()
        self._buf = b""
        self._seen_bytes = False
        self._framing = _F_NONE
        self._remaining = 0
        self._chunks: ChunkedDecoder | None = None
        self._pump: _BodyPump | None = None
        self._head_only = False
        # The layout of this backend's responses, once seen twice (``wire.ResponseShape``).
        self._shape: ResponseShape | None = None

    # -- driving ---------------------------------------------------------

    def start(self, call: BackendCall, reused: bool) -> None:
        assert self.transport is not None
        self.call = call
        call.conn = self
        self.reused = reused
        self.state = _S_HEAD
        self._seen_bytes = False
        self._head_only = call.method == b"HEAD"
        self.transport.write(call.head)
        if call.body is not None:
            self._pump = _BodyPump(self, call.body)
            self.transport.registerProducer(self._pump, False)  # type: ignore[attr-defined]

    def upload_done(self) -> None:
        self._pump = None
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def _stop_upload(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.stopped = True
            self.reusable = False  # the backend may still expect the rest of the body
            if self.transport is not None and self.connected:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.call = None
        self.reusable = False
        self._stop_upload()
        if self.transport is not None and self.connected:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- receiving -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.call is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        self._seen_bytes = True
        if self.state is _S_BODY:
            self._read_body(data)
            return
        if self.state is not _S_HEAD:
            return
        # The response head (``_read_head``, written out: once per response).
        if self._buf:
            data = self._buf + data
            self._buf = b""
        shape = self._shape
        head = shape.read(data, self._head_only) if shape is not None else None
        if head is not None:  # the layout this backend sends: read with its head's end
            assert shape is not None
            buf = data[shape.end:]
        else:
            buf = data
            while True:  # the general parser, interim 1xx responses skipped
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        self._fail(BadResponse("the response head is too large"))
                    else:
                        self._buf = buf
                    return
                if end > HEAD_LIMIT:
                    self._fail(BadResponse("the response head is too large"))
                    return
                try:
                    head = parse_response_head(buf[:end], self._head_only)
                except BadResponseHead as e:
                    if self._switched(buf[:end], buf[end + 4 :]):  # a 101 (_tunnel.py)
                        return
                    self._fail(BadResponse(str(e)))
                    return
                buf = buf[end + 4 :]
                if head is not None:
                    break
            shape = learn_shape(head)
            if shape is not None:
                self._shape = shape
        # Its fields by index: 3.11 reads a NamedTuple's field by name through the generic
        # attribute path (~2x an index's cost; unpacking all nine iterates; issue 27, once
        # per response). tests/test_upstream.py checks the positions.
        framing, body_length, keep_alive = head[5], head[6], head[7]
        if not keep_alive:
            self.reusable = False
        if self._pump is not None:
            self._stop_upload()  # answered before the whole body was sent
        call = self.call
        assert call is not None
        if (len(buf) == body_length if framing is _F_LENGTH
                else framing is _F_NONE and not buf):
            # The whole response is in (the common case: a small body read with its head).
            # The exchange on this connection is over before the handler hears of it, so
            # the handler gets it in one call when it can take it so (no pacing, no body
            # timer): the forwarder's ``response_whole``.
            # A call that is its own handler is a forwarding (``Upstream.send``), which
            # has ``response_whole``: called as a method, not looked up by ``getattr`` and
            # called bound (~0.5k instructions more, once per request).
            handler: object = call.handler
            whole = None if handler is call else getattr(handler, "response_whole", None)
            if handler is call or whole is not None:
                # ``_complete_quietly``, written out (once per request; no upload left).
                self.call = None
                self.state = _S_IDLE
                call.conn = None
                call.cancelled = True  # finished: later cancel() calls are no-ops
                if self.reusable and self.connected:
                    if self.paused:
                        self.resume()
                    # ``upstream.park(self)``, written out for the usual case: no request
                    # waits for one of this origin's connections, and the pool has room.
                    upstream = self.upstream
                    key = self.origin.key
                    idle = upstream._idle.get(key)
                    if idle is not None and (
                        not upstream._waiting or key not in upstream._waiting
                    ) and len(idle) < upstream._max_idle:
                        self.parked_at = upstream._reactor.seconds()
                        idle.append(self)
                        if upstream._sweeper is None:
                            upstream._sweeper = upstream._reactor.callLater(
                                upstream._sweep_interval, upstream._sweep
                            )
                    else:
                        upstream.park(self)
                else:
                    self.abort()
                if whole is None:
                    call.response_whole(head, buf)  # type: ignore[attr-defined]
                else:
                    whole(head, buf)
                return
        self.state = _S_BODY
        self._framing = framing
        self._remaining = body_length
        # (``refuse_tiny_chunks=False`` by position: a keyword call costs a nested interpreter)
        self._chunks = ChunkedDecoder(False) if framing is _F_CHUNKED else None
        call.handler.response_head(head)
        if self.call is not call:  # the handler cancelled
            return
        if framing is _F_NONE:
            if buf:
                self.reusable = False
            self._complete()
        elif buf:
            self._read_body(buf)

    def _switched(self, head: bytes, rest: bytes) -> bool:
        """A ``101`` to a request whose handler asked for an upgrade (``switching``): the
        handler gets this connection, which leaves the pool for good, with the 101's
        head and the bytes after it. Any other 101 is an invalid response."""
        call = self.call
        if call is None or head[9:12] != b"101" or not getattr(call.handler, "switching", False):
            return False
        self.call, call.conn, call.cancelled = None, None, True
        self.state, self.reusable = _S_IDLE, False
        self._stop_upload()
        self.upstream.forget(self)  # the tunnel's now: no longer the pool's
        call.handler.response_switched(head, rest, self)  # type: ignore[attr-defined]
        return True

    def _read_body(self, data: bytes) -> None:
        call = self.call
        assert call is not None
        framing = self._framing
        if framing is _F_LENGTH:
            remaining = self._remaining
            if len(data) >= remaining:
                if len(data) > remaining:
                    self.reusable = False  # bytes beyond the response: don't trust the rest
                    data = data[:remaining]
                self._remaining = 0
                if data:
                    call.handler.response_data(data)
                if self.call is call:
                    self._complete()
            else:
                self._remaining = remaining - len(data)
                call.handler.response_data(data)
        elif framing is _F_CHUNKED:
            assert self._chunks is not None
            try:
                body, rest = self._chunks.feed(data)
            except MalformedChunks as e:
                self._fail(Truncated(f"invalid chunked body: {e}"), abort=True)
                return
            if body:
                call.handler.response_data(body)
                if self.call is not call:
                    return
            if rest is not None:
                if rest:
                    self.reusable = False
                self._complete()
        else:
            call.handler.response_data(data)

    def _complete(self) -> None:
        call = self.call
        if call is None:
            self.state = _S_IDLE
            self._chunks = None
            return
        self._complete_quietly(call)
        call.handler.response_end()

    def _complete_quietly(self, call: BackendCall) -> None:
        """``call``'s response is all in: the connection goes back to the pool (or is
        closed); its handler is told by the caller."""
        self.call = None
        self.state = _S_IDLE
        self._chunks = None
        call.conn = None
        call.cancelled = True  # finished: later cancel() calls are no-ops
        if self.reusable and self._pump is None and self.connected:
            if self.paused:
                self.resume()
            self.upstream.park(self)
        else:
            self.abort()

    def _fail(self, error: UpstreamError, *, abort: bool = True) -> None:
        call, self.call = self.call, None
        self.state = _S_IDLE
        if abort:
            self.abort()
        if call is not None:
            call.failed(error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.upstream.forget(self)
        self._stop_upload()
        call, self.call = self.call, None
        state = self.state
        self.state = _S_IDLE
        if not self.closed.called:
            self.closed.callback(None)
        if call is None or call.cancelled:
            return
        call.conn = None
        if state is _S_HEAD:
            if self.reused and not self._seen_bytes and call.retryable:
                self.upstream.retry(call)
                return
            call.failed(NoResponse("the backend closed the connection without responding",
                                   reason))
        elif state is _S_BODY:
            if self._framing is _F_UNTIL_CLOSE and reason.check(ierror.ConnectionDone):
                call.cancelled = True
                call.handler.response_end()
            else:
                call.failed(Truncated("the backend closed the connection mid-body", reason))


@implementer(IPullProducer)
class _BodyPump:
    """Feeds the spooled request body to the backend as fast as the socket drains."""

    def __init__(self, conn: _Connection, body: IO[bytes]) -> None:
        self.conn = conn
        self.body = body
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        try:
            chunk = self.body.read(_READ_SIZE)
        except (OSError, ValueError):  # the client request ended and closed its spool
            self.conn.abort()
            return
        transport = self.conn.transport
        if chunk and transport is not None:
            transport.write(chunk)
        else:
            self.stopped = True
            self.conn.upload_done()

    def stopProducing(self) -> None:
        self.stopped = True


def parse_origin(base: bytes, tls: IPolicyForHTTPS | None) -> Origin:
    """``scheme://host[:port]`` (no path) -> Origin; ValueError when unusable."""
    parts = urlsplit(base.decode("ascii"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unusable backend origin {base!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return Origin(
        scheme=parts.scheme.encode(),
        host=host.encode("ascii"),
        port=port,
        host_header=host_header.encode("ascii"),
        tls=tls if parts.scheme == "https" else None,
    )

