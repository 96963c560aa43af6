"""twistedgw/_reactor.py: the gateway's TCP sockets' events run without Twisted's legacy
log context, every other selectable's as Twisted runs them; its TCP connections send at
once when nothing is queued, keeping Twisted's order and back-pressure; ``twistedgw
run`` uses it. (The soak, tests/test_soak.py, is what caught the missing back-pressure
of an earlier attempt; these pin each rule on a real socket.)"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.harness import env, gateway_config
from twistedgw import _reactor
from twistedgw import _unixsockets as unixsockets
from twistedgw.testing import devpki

pytestmark = pytest.mark.skipif(_reactor.EPollReactor is None, reason="epoll is Linux's")

IN = 1  # EPOLLIN


class _Poller:
    def __init__(self, events: list[tuple[int, int]]) -> None:
        self.events = events

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        return self.events


class _Other:
    """A selectable that is not a TCP socket (a waker, a pipe)."""

    def logPrefix(self) -> str:
        return "other-prefix"


def _tcp_server() -> Any:
    server = tcp.Server.__new__(tcp.Server)
    server.logstr = "FrontChannel,7,127.0.0.1"
    return server


def _reactor_with(selectables: dict[int, Any]) -> tuple[Any, list[tuple[Any, str]]]:
    reactor = _reactor.GatewayReactor()
    seen: list[tuple[Any, str]] = []

    def dispatch(selectable: Any, fd: int, event: int) -> None:
        system = (context.get(log.ILogContext) or {}).get("system", "-")
        seen.append((selectable, system))
        if getattr(selectable, "explode", False):
            raise RuntimeError("boom")

    reactor._poller = _Poller([(fd, IN) for fd in selectables] + [(999, IN)])  # 999: gone
    reactor._selectables = selectables
    reactor._doReadOrWrite = dispatch
    return reactor, seen


def test_tcp_sockets_run_without_the_legacy_context_others_with_it() -> None:
    server, other = _tcp_server(), _Other()
    reactor, seen = _reactor_with({3: server, 4: other})
    reactor.doIteration(0)
    assert seen == [(server, "-"), (other, "other-prefix")]
    # Twisted's own reactor pushes the context for both: what the override removes.
    from twisted.internet.epollreactor import EPollReactor

    plain, seen_plain = _reactor_with({3: server, 4: other})
    EPollReactor.doPoll(plain, 0)
    assert seen_plain == [(server, "FrontChannel,7,127.0.0.1"), (other, "other-prefix")]


def test_an_exception_escaping_dispatch_is_logged_with_the_prefix_and_the_poll_goes_on() -> None:
    server, after = _tcp_server(), _tcp_server()
    server.explode = True
    reactor, seen = _reactor_with({3: server, 5: after})
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        reactor.doIteration(0)
    finally:
        log.removeObserver(logged.append)
    assert seen == [(server, "-"), (after, "-")]
    errors = [e for e in logged if e.get("isError")]
    assert len(errors) == 1 and errors[0]["system"] == "FrontChannel,7,127.0.0.1"
    assert errors[0]["failure"].check(RuntimeError)
    # (flushLoggedErrors equivalent: the failure was handled by the observer above)


def test_adopt_switches_epoll_only() -> None:
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.pollreactor import PollReactor

    epoll = EPollReactor()
    assert _reactor.adopt(epoll) and type(epoll) is _reactor.GatewayReactor
    assert not _reactor.adopt(epoll)  # already one
    poll = PollReactor()
    assert not _reactor.adopt(poll) and type(poll) is PollReactor


def test_twistedgw_run_uses_the_gateway_reactor(tmp_path: Path) -> None:
    """``twistedgw run`` (app/_cli.serve) adopts the reactor before it runs and freezes
    the heap once running: a gateway whose port is taken stops at once, and says which
    reactor it ran and whether its heap was frozen."""
    pki = devpki.generate(tmp_path / "pki")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.toml"
        config.write_text(gateway_config(pki, [{"name": "a", "context": "/a",
                                                 "backend": "http://127.0.0.1:1"}], port=port))
        code = (
            "import sys\n"
            "from twistedgw.app import main\n"
            f"rc = main(['run', '--config', {str(config)!r}])\n"
            "import gc\n"
            "from twisted.internet import reactor\n"
            "print('REACTOR', type(reactor).__name__, rc, 'FROZEN', gc.get_freeze_count() > 0)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env(), timeout=60)
    # and froze its long-lived heap once running (app/_heap.py)
    assert "REACTOR GatewayReactor 1 FROZEN True" in out.stdout, out.stdout + out.stderr


# -- send-first writes (GatewayServer, GatewayClient) ----------------------------


@implementer(IPushProducer)
class _Push:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(IPullProducer)
class _Pull:
    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _pair(kind: str) -> Iterator[tuple[Any, socket.socket, MemoryReactorClock]]:
    if kind == "tcp":
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            peer = socket.create_connection(listening.getsockname())
            accepted, addr = listening.accept()
        transport: Any = _reactor.GatewayServer
    else:  # a Unix-socket listener's connection (NGINX asking the authz endpoint)
        accepted, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        addr, transport = "", _reactor.GatewayUnixServer
    accepted.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactorClock()
    server = transport(accepted, Protocol(), addr, None, 1, reactor)
    server.protocol.makeConnection(server)
    try:
        yield server, peer, reactor
    finally:
        peer.close()
        accepted.close()


@pytest.fixture(params=["tcp", "unix"])
def pair(request: Any) -> Iterator[tuple[Any, socket.socket, MemoryReactorClock]]:
    """A ``GatewayServer`` over a real loopback TCP connection, or a
    ``GatewayUnixServer`` over a Unix one (under a memory reactor, so nothing is sent
    unless the code under test sends it), and its peer's socket."""
    yield from _pair(request.param)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Any, socket.socket, MemoryReactorClock]]:
    yield from _pair("tcp")


def _received(peer: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = peer.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _nothing_waiting(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(1)
    except BlockingIOError:
        return True
    finally:
        peer.settimeout(5)
    return False


def test_a_write_with_nothing_queued_leaves_at_once(pair: Any) -> None:
    server, peer, reactor = pair
    server.write(b"hello")
    assert _received(peer, 5) == b"hello"
    assert server not in reactor.writers  # no registration, no doWrite to come


def test_a_write_behind_queued_bytes_waits_its_turn(pair: Any) -> None:
    server, peer, reactor = pair
    tcp.Server.write(server, b"first ")  # Twisted's own: queued
    server.write(b"second")
    assert _nothing_waiting(peer) and server in reactor.writers
    server.doWrite()
    assert _received(peer, 12) == b"first second"


def test_past_buffer_size_in_one_event_the_producer_is_paused_until_the_next_write_event(
    pair: Any,
) -> None:
    server, peer, reactor = pair
    producer = _Push()
    server.registerProducer(producer, True)
    block = b"x" * 16384
    for _ in range(server.bufferSize // len(block)):
        server.write(block)  # each goes out at once
    assert producer.events == ["pause"]
    assert server in reactor.writers  # the next doWrite resumes it
    assert not server.dataBuffer and not server._tempDataLen
    server.write(b"queued")  # over the bound in this event: Twisted's queue
    assert server._tempDataLen == 6
    assert _received(peer, server.bufferSize) == block * 4
    server.doWrite()
    assert producer.events == ["pause", "resume"]
    assert _received(peer, 6) == b"queued"
    server.write(b"again")  # a new event: sent at once
    assert _received(peer, 5) == b"again"


def test_a_read_event_gives_a_fresh_budget(pair: Any) -> None:
    server, peer, reactor = pair
    server.write(b"y" * (server.bufferSize - 1))
    _received(peer, server.bufferSize - 1)
    peer.sendall(b"ping")
    server.doRead()
    server.write(b"z" * 100)
    assert _received(peer, 100) == b"z" * 100
    assert server not in reactor.writers


def test_a_pull_producer_s_writes_are_queued(pair: Any) -> None:
    server, peer, _ = pair
    server.registerProducer(_Pull(), False)
    server.write(b"pulled")
    assert _nothing_waiting(peer) and server._tempDataLen == 6


def test_writes_after_lose_connection_are_queued(pair: Any) -> None:
    server, peer, _ = pair
    server.loseConnection()
    server.write(b"late")
    assert _nothing_waiting(peer) and server._tempDataLen == 4


def test_a_send_error_leaves_the_bytes_to_twisted(pair: Any) -> None:
    server, peer, reactor = pair
    if peer.family != socket.AF_UNIX:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset: the server's next send fails
    time.sleep(0.2)
    server.write(b"a" * 100)
    assert server._tempDataLen == 100 and server in reactor.writers  # queued, not lost
    assert isinstance(server.doWrite(), ConnectionLost)  # Twisted meets the error


def test_the_reactor_makes_gateway_transports() -> None:
    reactor = _reactor.GatewayReactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        assert isinstance(port, _reactor.GatewayPort)
        assert port.transport is _reactor.GatewayServer
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port,
                                       ClientFactory.forProtocol(Protocol))
        assert isinstance(connector, _reactor.GatewayConnector)
        assert isinstance(connector.transport, _reactor.GatewayClient)
        connector.disconnect()
    finally:
        port.stopListening()


def test_the_log_prefix_and_repr_are_made_when_asked_for(tcp_pair: Any) -> None:
    """Twisted's ``tcp.Server`` builds both strings per connection; ``GatewayServer``
    builds them when read (an idle connection holds neither), with Twisted's format."""
    server, _peer, _ = tcp_pair
    assert "logstr" not in vars(server) and "repstr" not in vars(server)
    assert server.logPrefix() == f"Protocol,1,{server.hostname}"
    assert repr(server) == "<Protocol #1 on ?>"  # no listening port in this test
    server.connectionLost(Failure(ConnectionLost()))
    assert server.logPrefix() == f"closed,1,{server.hostname}"
    assert repr(server) == "<closed #1 on ?>"


def test_an_idle_connection_keeps_no_write_queue_or_bound_fileno(tcp_pair: Any) -> None:
    """Twisted gives every connection an empty write queue and the socket's bound
    ``fileno`` (~130 bytes per idle connection, issue 27); ``GatewayServer`` makes the
    queue when a write waits and asks the socket for its number when called."""
    server, peer, reactor = tcp_pair
    kept = vars(server)
    assert "fileno" not in kept and "_tempDataBuffer" not in kept
    assert kept.get("_queued_writes") is None
    assert server.fileno() == server.socket.fileno() > 0
    server.write(b"hello")  # sent at once: nothing queued, no queue made
    assert kept.get("_queued_writes") is None
    tcp.Server.write(server, b"queued ")  # Twisted's own write: queued
    server.write(b"behind")
    assert server._tempDataBuffer == [b"queued ", b"behind"] and server in reactor.writers
    server.doWrite()
    assert _received(peer, 18) == b"helloqueued behind"
    assert kept.get("_queued_writes") is None  # the emptied queue is dropped
    server.connectionLost(Failure(ConnectionLost()))
    assert server.fileno() == -1  # as Twisted's once the socket is gone


def test_an_idle_connection_s_direct_count_is_a_shared_small_int(pair: Any) -> None:
    server, peer, _ = pair
    server.write(b"x" * 3000)
    assert _received(peer, 3000)
    assert server._sent_now == 12  # 256-byte units: one of CPython's shared small ints


# -- Unix-socket connections (GatewayUnixServer) -----------------------------------


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def test_a_unix_listener_makes_gateway_unix_servers(tmp_path: Path) -> None:
    """The Unix-socket listeners twistedgw makes (``_unixsockets.adopt``) accept
    ``GatewayUnixServer``s: send-first writes and plain reads for NGINX's questions."""
    made: list[_Recorder] = []

    def build(_addr: Any) -> _Recorder:
        made.append(_Recorder())
        return made[-1]

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    reactor = _reactor.GatewayReactor()
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "gw.sock"))
    listening.listen()
    listening.setblocking(False)
    port = unixsockets.adopt(reactor, listening.fileno(), factory, owns_file=False)
    listening.close()
    try:
        with socket.socket(socket.AF_UNIX) as peer:
            peer.connect(str(tmp_path / "gw.sock"))
            port.doRead()  # accept
            server = made[0].transport
            assert type(server) is _reactor.GatewayUnixServer
            assert type(server) in _reactor.QUIET_TYPES
            server.write(b"answer")
            assert _received(peer, 6) == b"answer"
            assert server not in reactor.getWriters()  # sent at once, no registration
            server.loseConnection()
    finally:
        port.stopListening()


def test_a_unix_read_is_a_plain_recv_and_a_descriptor_a_peer_sends_is_dropped() -> None:
    """The gateway never takes file descriptors: the bytes that carry one are read,
    the descriptor never lands in this process; end of stream is Twisted's."""
    from twisted.internet import main

    accepted, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    accepted.setblocking(False)
    protocol = _Recorder()
    server = _reactor.GatewayUnixServer(accepted, protocol, "", None, 1, MemoryReactorClock())
    protocol.makeConnection(server)
    before = len(list(Path("/proc/self/fd").iterdir()))
    with open("/dev/null", "rb") as passed:
        socket.send_fds(peer, [b"GET /"], [passed.fileno()])
    assert server.doRead() is None and protocol.data == b"GET /"
    assert len(list(Path("/proc/self/fd").iterdir())) == before
    assert server.doRead() is None  # nothing waiting: would block
    peer.close()
    assert server.doRead() is main.CONNECTION_DONE
    accepted.close()


def test_the_loop_skips_the_timed_calls_pass_only_when_none_is_due() -> None:
    """``GatewayReactor.mainLoop``: a turn with nothing due polls without
    ``runUntilCurrent``/``timeout`` (one decision behind NGINX is one turn), with the
    timeout ``timeout`` gives; timed calls, a thread's calls and a stop still run, and an
    exception a turn raises is logged as Twisted logs it and the loop goes on."""
    from twisted.logger import globalLogPublisher

    reactor = _reactor.GatewayReactor()
    seen: list[str] = []
    delays: list[float | None] = []
    passes = [0]
    turns = [0]
    run_until_current = reactor.runUntilCurrent
    poll = reactor.doIteration

    def counted() -> None:
        passes[0] += 1
        run_until_current()

    def turn(delay: float | None) -> None:
        turns[0] += 1
        delays.append(delay)
        if turns[0] == 3:
            raise RuntimeError("a turn's error")
        poll(0 if turns[0] < 40 else delay)  # (busy turns: nothing due in most of them)

    reactor.runUntilCurrent = counted  # type: ignore[method-assign]
    reactor.doIteration = turn  # type: ignore[method-assign]
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        reactor.callLater(0.05, seen.append, "timed")
        reactor.callLater(0.06, lambda: reactor.callFromThread(seen.append, "thread"))
        reactor.callLater(0.1, reactor.stop)
        reactor.run(installSignalHandlers=False)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert seen == ["timed", "thread"]
    assert any(e.get("log_failure") is not None and "main loop" in e.get("log_format", "")
               for e in logged), "the turn's exception was not logged"
    assert turns[0] > 40 and passes[0] < turns[0] / 2, (passes, turns)
    waits = [d for d in delays[1:40] if d is not None]
    assert waits and all(0 <= d <= 0.1 for d in waits)  # the next timed call's, not None
