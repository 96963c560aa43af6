"""``twistedgw._sendnow``: a write with nothing queued goes to the kernel at once, and
everything else (order, back-pressure, losing the connection) stays Twisted's.

A real ``twisted.internet.tcp.Connection`` on one end of a real socket pair, driven by a
``MemoryReactorClock`` (it records which descriptors are registered for writing and
never runs a reactor turn by itself), so each test says exactly when Twisted sends.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedgw._sendnow import send_now


class _Recorder(Protocol):
    lost: Failure | None = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


Pair = tuple[tcp.Connection, socket.socket, MemoryReactorClock, _Recorder]


@pytest.fixture
def pair() -> Iterator[Pair]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    reactor = MemoryReactorClock()
    protocol = _Recorder()
    conn = tcp.Connection(ours, protocol, reactor)
    conn.connected = 1
    protocol.makeConnection(conn)
    assert send_now(conn)
    yield conn, peer, reactor, protocol
    ours.close()
    peer.close()


def _drain(peer: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def test_a_write_with_nothing_queued_is_sent_at_once(pair: Pair) -> None:
    conn, peer, reactor, _ = pair
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert _drain(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert conn not in reactor.writers  # no registration for writability
    conn.write(b"second")
    assert _drain(peer) == b"second"
    assert conn not in reactor.writers


def test_what_the_kernel_does_not_take_is_queued_in_order(pair: Pair) -> None:
    conn, peer, reactor, _ = pair
    big = bytes(range(256)) * 16_384  # 4 MiB: more than the socket buffers hold
    conn.write(big)
    assert conn in reactor.writers  # the rest waits for Twisted's doWrite
    conn.write(b"after")  # queued behind the rest, never sent ahead of it
    got = _drain(peer)
    assert 0 < len(got) < len(big)
    while conn in reactor.writers:
        conn.doWrite()
        got += _drain(peer)
    assert got == big + b"after"
    conn.write(b"again")  # the queue is empty again: straight out
    assert _drain(peer) == b"again"
    assert conn not in reactor.writers


def test_a_full_queue_still_pauses_and_resumes_the_producer(pair: Pair) -> None:
    conn, peer, reactor, _ = pair
    producer = _Producer()
    conn.registerProducer(producer, True)
    conn.write(b"x" * (8 << 20))  # far over the kernel's buffers and Twisted's bufferSize
    assert producer.events == ["pause"]
    while conn in reactor.writers:
        _drain(peer)
        conn.doWrite()
    assert producer.events == ["pause", "resume"]


def test_an_error_is_left_to_twisted_which_loses_the_connection(pair: Pair) -> None:
    conn, peer, reactor, protocol = pair
    peer.close()
    conn.write(b"to nobody")  # EPIPE/ECONNRESET on send: queued, not raised
    assert conn in reactor.writers
    result = conn.doWrite()
    assert result is not None  # Twisted's doWrite reports the connection lost
    conn.connectionLost(Failure(result))
    assert protocol.lost is not None
    conn.write(b"after the loss")  # dropped quietly, as Twisted does
    assert conn not in reactor.writers


def test_after_lose_connection_writes_are_twisteds(pair: Pair) -> None:
    conn, peer, _, _ = pair
    conn.loseConnection()
    conn.write(b"late")  # queued (not sent ahead of Twisted's close), as without send_now
    assert _drain(peer) == b""
    assert conn._tempDataLen == 4


def test_only_tcp_connections_and_only_once(pair: Pair) -> None:
    conn, _, _, _ = pair
    assert not send_now(conn)  # already installed: not wrapped twice
    assert not send_now(object())


@implementer(IPushProducer)
class _Pull:
    """A pull producer writing a few chunks, one per ``resumeProducing``."""

    def __init__(self, conn: tcp.Connection, chunks: list[bytes]) -> None:
        self.conn = conn
        self.chunks = chunks

    def resumeProducing(self) -> None:
        if self.chunks:
            self.conn.write(self.chunks.pop(0))
        else:
            self.conn.unregisterProducer()

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_a_pull_producer_is_still_asked_for_more(pair: Pair) -> None:
    """Twisted asks a pull producer for more when its queue drains; a write sent at
    once would never drain it, and the upload would stall (the backend client's)."""
    conn, peer, reactor, _ = pair
    producer = _Pull(conn, [b"one,", b"two,", b"three"])
    conn.registerProducer(producer, False)  # asks for the first chunk
    got = b""
    for _ in range(10):
        if conn not in reactor.writers:
            break
        conn.doWrite()
        got += _drain(peer)
    assert got + _drain(peer) == b"one,two,three"
    assert conn.producer is None
