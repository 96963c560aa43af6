"""The long-lived heap, frozen out of the cyclic garbage collector's way.

A running gateway holds a large heap that lives as long as the process: imported
modules, the config, the runtime (pipelines, TLS contexts, the truststore, parsed
certificates), the listeners. CPython's cyclic collector walks every object it tracks
in a full (oldest-generation) collection, and a keep-alive request allocates ~30
containers, so those collections come round regularly (about one per 20,000 requests)
and walk that whole heap each time, holding the reactor for tens of milliseconds.
``gc.freeze()`` moves everything alive at that moment into a permanent generation the
collector never walks.

``settle`` runs once the service is built and listening (``twistedgw run`` and its
workers; app/_cli.py, app/_workers.py): one full collection, then the freeze.

Freezing does not stop reference counting: a frozen object whose last reference goes is
freed at once. What it stops is the collection of frozen *cycles*, such as a replaced
config's runtime. So after each reload (``then_refreeze``) the heap is unfrozen, and
frozen again right after the next full collection, which CPython runs when it would have
without the freeze: that one collects the replaced config's cycles (those that requests
in flight kept alive wait for the reload after). The reload itself collects nothing:
its time on the reactor stays within the 50 ms the reload path allows.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def settle() -> None:
    """Collect what is garbage now, then freeze everything left (at start)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class _Refreeze:
    """Freeze again once the next full collection has run (at most one pending)."""

    def __init__(self) -> None:
        self.call_later: Callable[..., Any] | None = None

    def arm(self, call_later: Callable[..., Any]) -> None:
        gc.unfreeze()
        if self.call_later is None:
            gc.callbacks.append(self.watch)
        self.call_later = call_later

    def watch(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info.get("generation") != 2 or self.call_later is None:
            return
        call_later, self.call_later = self.call_later, None
        gc.callbacks.remove(self.watch)
        # Right after the collection, outside it: the young generations are empty.
        call_later(0, gc.freeze)


_refreeze = _Refreeze()


def unfreeze_until_collected(call_later: Callable[..., Any]) -> None:
    """Unfreeze now; freeze again (through ``call_later(0, ...)``) after the next full
    collection."""
    _refreeze.arm(call_later)


def then_refreeze(action: Callable[[], T], call_later: Callable[..., Any]) -> Callable[[], T]:
    """``action`` (a reload), then ``unfreeze_until_collected``: once it returns, or, if
    it returns a Deferred (``GatewayService.reload`` prepares the new config off the
    reactor), once that fires, whatever its result."""

    def run() -> T:
        try:
            result = action()
        except BaseException:
            unfreeze_until_collected(call_later)
            raise
        if isinstance(result, Deferred):
            result.addBoth(_then_unfreeze, call_later)
        else:
            unfreeze_until_collected(call_later)
        return result

    return run


def _then_unfreeze(result: object, call_later: Callable[..., Any]) -> object:
    unfreeze_until_collected(call_later)
    return result
