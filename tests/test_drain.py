"""app/_drain.ConnectionTracker: open connections, tracked without a wrapper per connection
(tests/test_shutdown.py drains real gateways)."""

from __future__ import annotations

import gc
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


def test_a_closed_connection_is_not_open_and_a_collected_one_leaves() -> None:
    tracker = ConnectionTracker()
    a, b = _Channel(), _Channel()
    tracker.track(a)
    tracker.track(b)
    b.requests.append(object())
    assert "connectionLost" not in vars(a)  # no per-connection wrapper
    assert set(tracker.open()) == {a, b} and tracker.busy() == 1
    b.transport.transport.disconnected = 1  # closed (its channel still referenced)
    assert tracker.open() == [a] and tracker.busy() == 0
    del b
    gc.collect()
    assert list(tracker.connections) == [a]
