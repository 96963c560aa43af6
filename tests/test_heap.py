"""app/_heap.py: the long-lived heap frozen after start, unfrozen by a reload until the next
full collection has collected what the reload replaced (tests/test_reactor.py checks that
``twistedgw run`` settles)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twistedgw.app import _heap


class _Node:
    """Stands in for a runtime: objects in a cycle, freed only by the cyclic collector."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_settle_collects_then_freezes_what_is_alive() -> None:
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    _heap.settle()
    assert gone() is None and gc.get_freeze_count() > 0


def test_a_frozen_cycle_waits_for_the_reload_and_the_full_collection_after_it() -> None:
    old = _Node()  # the config a reload replaces
    gone = weakref.ref(old)
    _heap.settle()
    del old
    gc.collect()
    assert gone() is not None  # frozen: no collection sees it
    clock = Clock()

    def reload() -> bool:
        return True

    assert _heap.then_refreeze(reload, clock.callLater)() is True
    assert gc.get_freeze_count() == 0 and gone() is not None  # the reload collects nothing
    gc.collect(1)  # a young collection does not count
    assert gone() is not None and clock.getDelayedCalls() == []
    gc.collect()  # the next full collection, when CPython runs it
    assert gone() is None
    clock.advance(0)
    assert gc.get_freeze_count() > 0  # frozen again right after it


def test_a_reload_that_returns_a_deferred_unfreezes_when_it_is_applied() -> None:
    """``GatewayService.reload`` prepares the new config off the reactor."""
    _heap.settle()
    applied: Deferred[bool] = Deferred()
    clock = Clock()
    result: Any = _heap.then_refreeze(lambda: applied, clock.callLater)()
    assert result is applied and gc.get_freeze_count() > 0  # not yet
    applied.callback(True)
    assert gc.get_freeze_count() == 0
    assert applied.result is True  # the reload's result passes through
    gc.collect()
    clock.advance(0)
    assert gc.get_freeze_count() > 0


def test_reloads_before_a_full_collection_leave_one_watcher() -> None:
    clock = Clock()
    before = len(gc.callbacks)
    for _ in range(3):
        _heap.then_refreeze(lambda: False, clock.callLater)()
    assert len(gc.callbacks) == before + 1
    gc.collect()
    assert len(gc.callbacks) == before and len(clock.getDelayedCalls()) == 1


def test_a_failed_reload_unfreezes_too() -> None:
    _heap.settle()

    def broken() -> bool:
        raise RuntimeError("reload failed")

    with pytest.raises(RuntimeError):
        _heap.then_refreeze(broken, Clock().callLater)()
    assert gc.get_freeze_count() == 0
    gc.collect()
