"""RateLimitedLog: once per key per interval, repeats counted, bounded memory (fake clock)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import Logger, LogLevel, formatEvent

from twistedgw._ratelimitlog import RateLimitedLog
from twistedgw.http import _callers as callers

FORMAT = "Ignored the {header} header from {address}: not a trusted load balancer"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**kwargs: Any) -> tuple[RateLimitedLog, list[dict[str, Any]], Clock]:
    events: list[dict[str, Any]] = []
    clock = Clock()
    logger = Logger(namespace="test", observer=events.append)
    return RateLimitedLog(logger, clock=clock, **kwargs), events, clock


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


def warn(log: RateLimitedLog, address: str) -> bool:
    return log.emit(address, FORMAT, header="X-Client-Cert", address=address)


def test_once_per_key_per_interval_then_the_count_of_repeats() -> None:
    log, events, clock = limiter(interval=60.0)
    assert warn(log, "10.0.0.1")
    for _ in range(49):
        clock.now += 1.0
        assert not warn(log, "10.0.0.1")
    assert lines(events) == [
        "Ignored the X-Client-Cert header from 10.0.0.1: not a trusted load balancer"
    ]
    assert events[0]["log_level"] is LogLevel.warn and events[0]["log_namespace"] == "test"
    clock.now += 11.0  # 60 s after the first line: a new window
    assert warn(log, "10.0.0.1")
    assert lines(events)[1] == (
        "Ignored the X-Client-Cert header from 10.0.0.1: not a trusted load balancer "
        "(49 more since the last one)"
    )
    assert events[1]["repeats"] == 49
    # A quiet window reports nothing extra.
    clock.now += 60.0
    assert warn(log, "10.0.0.1")
    assert lines(events)[2].endswith("not a trusted load balancer")


def test_keys_are_independent() -> None:
    log, events, clock = limiter()
    assert warn(log, "10.0.0.1")
    assert warn(log, "10.0.0.2")
    assert not warn(log, "10.0.0.1")
    clock.now += 30.0
    assert warn(log, "10.0.0.3")
    assert not warn(log, "10.0.0.2")
    assert [e["address"] for e in events] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_memory_is_bounded_and_the_oldest_window_is_forgotten_first() -> None:
    log, events, clock = limiter(max_keys=3)
    for i in range(3):
        assert warn(log, f"10.0.0.{i}")
        clock.now += 1.0
    assert not warn(log, "10.0.0.0")  # counted, still remembered
    assert warn(log, "10.0.0.9")  # evicts 10.0.0.0, the oldest window
    assert len(log) == 3
    assert warn(log, "10.0.0.0")  # forgotten: logged again, its count lost
    assert lines(events)[-1].endswith("not a trusted load balancer")
    assert not warn(log, "10.0.0.9")
    for i in range(10_000):
        warn(log, f"192.0.2.{i}")
    assert len(log) == 3


def test_a_logged_key_moves_to_the_back_of_the_eviction_queue() -> None:
    log, _events, clock = limiter(max_keys=2, interval=10.0)
    warn(log, "a")
    clock.now += 5.0
    warn(log, "b")
    clock.now += 6.0
    assert warn(log, "a")  # new window for "a": now newer than "b"
    assert warn(log, "c")  # evicts "b"
    assert not warn(log, "a")


@pytest.mark.parametrize("kwargs", [{"interval": 0.0}, {"interval": -1.0}, {"max_keys": 0}])
def test_nonsense_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(Logger(), **kwargs)


def test_the_gateway_limits_its_ignored_header_warning() -> None:
    warnings = callers.ignored_header_warnings
    assert warnings.logger is callers.log and warnings.level is LogLevel.warn
    assert warnings.interval == 60.0 and 1000 <= warnings.max_keys <= 10_000
