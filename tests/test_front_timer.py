"""FrontChannel's one timer per connection (http/_front.py), in memory: the handshake,
header and idle deadlines it stands for, phase by phase, on a ``Clock``; and the one
heap of deadlines every channel of a clock shares (``_deadlines``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.frontkit import Front, Recorder, front
from twistedgw import _deadlines
from twistedgw.config import Limits, TlsConfig
from twistedgw.http._front import FrontChannel
from twistedgw.testing.devpki import DevPki
from twistedgw.tls import ServerTLS
from twistedgw.tls import _pki as pkimod

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def timers(clock: Clock, channel: FrontChannel) -> list[Any]:
    """The channel's armed deadlines (in the clock's one heap, ``_deadlines``) and
    DelayedCalls of its own (its close timers: none here)."""
    armed = [e for e in _deadlines.of(clock.callLater).entries() if e.owner is channel]
    own = [
        c for c in clock.getDelayedCalls()
        if c.active() and getattr(c.func, "__self__", None) is channel
    ]
    return armed + own


def one_timer(f: Front) -> None:
    assert len(timers(f.clock, f.channel)) == 1


def test_one_timer_through_every_phase_of_a_keep_alive_connection() -> None:
    f = front(Limits(idle_timeout=30.0, client_header_timeout=5.0), Recorder(hold=True))
    one_timer(f)  # header and idle deadlines, one DelayedCall
    f.send(b"GET /a HTTP/1.1\r\n")  # a head in pieces
    one_timer(f)
    f.send(b"Host: x\r\n\r\n")
    one_timer(f)
    f.resource.held.pop().responder.finish()  # idle between requests
    one_timer(f)
    f.clock.advance(6.0)  # past the first head's deadline: found early, re-armed
    one_timer(f)
    f.send(b"GET /b HTTP/1.1\r\n")  # the next head, in pieces: armed for its deadline
    one_timer(f)
    assert timers(f.clock, f.channel)[0].getTime() == 6.0 + 5.0
    f.send(b"Host: x\r\n\r\n")
    f.resource.held.pop().responder.finish()
    one_timer(f)
    assert f.output().count(b"HTTP/1.1 200 ") == 2 and not f.transport.disconnecting
    f.channel.connectionLost()
    assert timers(f.clock, f.channel) == []


def test_the_next_heads_deadline_runs_from_its_first_byte_not_the_last_read() -> None:
    f = front(Limits(idle_timeout=30.0, client_header_timeout=5.0))
    f.send(GET)
    f.clock.advance(20.0)  # idle, within idle_timeout
    f.send(b"GET /b HTTP/1.1\r\n")
    for _ in range(4):  # reads push the idle deadline, not the header one
        f.clock.advance(1.0)
        f.send(b"X: y\r\n")
    f.clock.advance(0.9)
    assert f.output().count(b"HTTP/1.1 ") == 1
    f.clock.advance(0.2)
    assert f.output().count(b"HTTP/1.1 408 ") == 1
    assert [r.error_kind for r in f.records] == ["header_timeout"]


def test_the_idle_deadline_follows_the_last_read_and_answer() -> None:
    f = front(Limits(idle_timeout=10.0, client_header_timeout=60.0))
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")  # answered at 0
    f.clock.advance(9.0)
    f.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # answered at 9
    f.clock.advance(9.9)  # the timer was armed for 10: found early, re-armed for 19
    assert not f.transport.disconnecting
    one_timer(f)
    f.clock.advance(0.2)
    assert f.transport.disconnecting and f.records == []  # closed, nothing answered


def test_a_connection_that_sends_nothing_is_dropped_at_the_header_deadline() -> None:
    f = front(Limits(idle_timeout=30.0, client_header_timeout=5.0))
    f.clock.advance(4.9)
    assert not f.transport.disconnecting
    f.clock.advance(0.2)
    assert f.transport.disconnecting and f.output() == b""
    assert timers(f.clock, f.channel) == []  # the idle deadline went with it


def test_deadlines_due_in_one_step_run_in_deadline_order() -> None:
    """A clock step past several deadlines runs them as separate timers would: the
    header deadline (4) answers 408 before the idle one (6) could close silently."""
    f = front(Limits(idle_timeout=6.0, client_header_timeout=4.0))
    f.send(b"GET /a HTTP/1.1\r\n")
    f.clock.advance(100.0)
    assert f.output().startswith(b"HTTP/1.1 408 ")
    assert [r.error_kind for r in f.records] == ["header_timeout"]


class TCPString(StringTransport):
    """Twisted's TLS declares its transport TCP: the front sets TCP_NODELAY."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def tls_front(pki: DevPki, limits: Limits) -> tuple[FrontChannel, StringTransport, Clock]:
    """A FrontChannel under the server's TLS in memory, no client: the handshake stays
    unfinished until the test says otherwise."""
    clock = Clock()
    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    server_tls = ServerTLS(TlsConfig(), keystore, pkimod.load_truststore(pki.truststore_dir))
    f = front(limits)  # for its guard, resource and records; its own channel is left unused
    channel = FrontChannel(f.channel.guard)
    channel.site = f.channel.site
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    tls = TLSMemoryBIOFactory(server_tls, False, Factory.forProtocol(lambda: channel), clock=clock)
    transport = TCPString()
    tls.buildProtocol(None).makeConnection(transport)
    assert channel.secure
    return channel, transport, clock


def test_an_unfinished_handshake_is_aborted_at_its_deadline(pki: DevPki) -> None:
    channel, transport, clock = tls_front(
        pki, Limits(handshake_timeout=2.0, client_header_timeout=5.0, idle_timeout=30.0)
    )
    assert len(timers(clock, channel)) == 1  # handshake, header and idle deadlines
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_a_finished_handshake_leaves_the_header_deadline_from_the_start(pki: DevPki) -> None:
    channel, transport, clock = tls_front(
        pki, Limits(handshake_timeout=2.0, client_header_timeout=5.0, idle_timeout=30.0)
    )
    clock.advance(1.0)
    channel.handshakeCompleted()
    clock.advance(3.9)  # past the handshake deadline: nothing due, re-armed for 5
    assert not transport.disconnecting
    assert len(timers(clock, channel)) == 1
    clock.advance(0.2)
    assert transport.disconnecting  # nothing sent in client_header_timeout


def test_hand_over_leaves_no_timer(pki: DevPki) -> None:
    channel, transport, clock = tls_front(
        pki, Limits(handshake_timeout=2.0, client_header_timeout=5.0, idle_timeout=30.0)
    )
    channel.handshakeCompleted()
    channel.hand_over()
    assert timers(clock, channel) == []
    clock.advance(100.0)
    assert not transport.disconnecting


def test_the_channels_of_one_clock_share_one_reactor_call() -> None:
    """Idle memory (issue 27): no DelayedCall per connection, one per clock."""
    f = front(Limits(idle_timeout=30.0, client_header_timeout=5.0))
    other = FrontChannel(f.channel.guard)
    other.site = f.channel.site
    other.callLater = f.clock.callLater  # type: ignore[method-assign]
    other.makeConnection(StringTransport())
    assert len(f.clock.getDelayedCalls()) == 1
    assert len(timers(f.clock, f.channel)) == len(timers(f.clock, other)) == 1
    other.dataReceived(b"GET /a HTTP/1.1\r\n")  # in pieces: 408 at its header deadline
    f.clock.advance(5.1)
    assert f.transport.disconnecting and f.output() == b""  # nothing sent: closed
    assert f.records[-1].error_kind == "header_timeout"  # the other one's 408
    f.channel.connectionLost()
    other.connectionLost()
    assert f.clock.getDelayedCalls() == []  # nothing armed: no call left behind


class _Owner:
    def __init__(self, clock: Clock, name: str, ran: list[tuple[str, float]]) -> None:
        self.clock, self.name, self.ran = clock, name, ran

    def _timed_out(self) -> None:
        self.ran.append((self.name, self.clock.seconds()))


def test_deadlines_run_when_due_and_a_cancelled_one_holds_nothing() -> None:
    import gc
    import weakref

    clock = Clock()
    heap = _deadlines.of(clock.callLater)
    assert _deadlines.of(clock.callLater) is heap
    ran: list[tuple[str, float]] = []
    a, b, c, d = (_Owner(clock, n, ran) for n in "abcd")
    armed = {o.name: heap.arm(at, o) for o, at in ((a, 5.0), (b, 3.0), (c, 3.5), (d, 10.0))}
    assert len(clock.getDelayedCalls()) == 1 and len(heap) == 4
    armed["c"].cancel()
    gone = weakref.ref(c)
    del c
    gc.collect()
    assert gone() is None  # its entry waits in the heap without it
    clock.advance(3.0)
    assert ran == [("b", 3.0)]
    clock.advance(7.0)  # one step past two: each at least at its own time, in order
    assert ran == [("b", 3.0), ("a", 10.0), ("d", 10.0)]
    assert not armed["a"].active() and clock.getDelayedCalls() == [] and len(heap) == 0
    many = [heap.arm(1.0 + i, _Owner(clock, str(i), ran)) for i in range(200)]
    for entry in many[:150]:
        entry.cancel()
    assert len(heap._heap) < 200 and len(heap) == 50  # rebuilt once mostly cancelled


def test_a_deadline_that_fails_leaves_the_others_to_run() -> None:
    clock = Clock()
    heap = _deadlines.of(clock.callLater)
    ran: list[tuple[str, float]] = []

    class Failing(_Owner):
        def _timed_out(self) -> None:
            raise RuntimeError("boom")

    heap.arm(1.0, Failing(clock, "x", ran))
    heap.arm(1.0, _Owner(clock, "y", ran))
    heap.arm(2.0, _Owner(clock, "z", ran))
    clock.advance(1.0)
    clock.advance(1.0)
    assert ran == [("y", 1.0), ("z", 2.0)]
