"""app/_drain.ConnectionTracker: open connections, tracked without a wrapper per connection
(tests/test_shutdown.py drains real gateways)."""

from __future__ import annotations

from typing import Any

from twistedgw.app._drain import ConnectionTracker


class _Tcp:
    disconnected = 0


class _Tls:
    def __init__(self) -> None:
        self.transport = _Tcp()


class _Channel:
    def __init__(self) -> None:
        self.transport: Any = _Tls()
        self.requests: list[object] = []

    def connectionLost(self, reason: object) -> None:
        pass


def test_a_closed_connection_is_not_open_and_leaves_a_lost_one_is_forgotten() -> None:
    tracker = ConnectionTracker()
    a, b, c = _Channel(), _Channel(), _Channel()
    for channel in (a, b, c):
        tracker.track(channel)
    b.requests.append(object())
    assert "connectionLost" not in vars(a)  # no per-connection wrapper
    assert type(tracker.connections) is set  # nor a weak reference each (issue 27)
    assert set(tracker.open()) == {a, b, c} and tracker.busy() == 1
    b.transport.transport.disconnected = 1  # closed, its loss not (yet) reported
    assert set(tracker.open()) == {a, c} and tracker.busy() == 0
    assert b not in tracker.connections  # not held: it leaves at the first look
    tracker.forget(c)  # its connectionLost
    assert tracker.connections == {a} and tracker.open() == [a]


def test_the_front_leaves_the_sites_tracker_when_its_connection_is_lost() -> None:
    from tests.frontkit import front

    f = front()
    tracker = ConnectionTracker()
    f.channel.site.tracker = tracker  # type: ignore[attr-defined]
    tracker.track(f.channel)
    f.channel.connectionLost()
    assert tracker.connections == set()
