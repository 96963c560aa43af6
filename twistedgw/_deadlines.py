"""One reactor call for many connections' deadlines (issue 27: memory per idle connection).

Every open HTTP/1.1 connection has a deadline (handshake, header or idle: http/_front.py
keeps the earliest). A Twisted ``DelayedCall`` per connection cost ~0.4 KiB each: the
call and its attribute dict, two bound methods of the reactor, the callback's bound
method and an empty keyword dict. Here a deadline is a three-slot ``Deadline`` in one
heap per clock, and one ``DelayedCall`` waits for the earliest. Deadlines fire exactly
when they are due (not rounded to a tick), earliest first, as separate ``DelayedCall``s
would.

A cancelled deadline leaves its entry in the heap, owner-less, until it comes up or
until cancelled entries are more than half of the heap (then it is rebuilt, as Twisted
does with its own heap): a closed connection is never held by its deadline.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger()


class Timed(Protocol):
    """What a deadline's owner runs when it passes."""

    def _timed_out(self) -> None: ...


class Deadline:
    """One armed deadline: ``at`` (the clock's seconds) for ``owner`` (None once it
    passed or was cancelled). ``active``, ``cancel`` and ``getTime`` as a DelayedCall's."""

    __slots__ = ("at", "home", "owner")

    def __init__(self, at: float, owner: Timed, home: Deadlines) -> None:
        self.at = at
        self.owner: Timed | None = owner
        self.home: Deadlines | None = home  # None once out of the heap

    def __lt__(self, other: Deadline) -> bool:
        return self.at < other.at

    def active(self) -> bool:
        return self.owner is not None

    def getTime(self) -> float:
        return self.at

    def cancel(self) -> None:
        if self.owner is not None:
            self.owner = None
            home = self.home
            if home is not None:
                home.cancelled()


class Deadlines:
    """The deadlines of one clock (``of(callLater)``): a heap and one ``DelayedCall``."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.seconds: Callable[[], float] = clock.seconds
        self._heap: list[Deadline] = []
        self._cancelled = 0  # owner-less entries still in the heap
        self._call: IDelayedCall | None = None
        self._at = 0.0  # when _call fires

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def entries(self) -> list[Deadline]:
        """The armed deadlines, earliest first (for tests and introspection)."""
        return sorted(e for e in self._heap if e.owner is not None)

    def arm(self, at: float, owner: Timed) -> Deadline:
        """Run ``owner._timed_out()`` at ``at`` (the clock's seconds) unless cancelled."""
        entry = Deadline(at, owner, self)
        heapq.heappush(self._heap, entry)
        if self._call is None or at < self._at:
            self._schedule(at)
        return entry

    def cancelled(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap):  # nothing armed: no entry, no call left behind
            for entry in heap:
                entry.home = None
            heap.clear()
            self._cancelled = 0
            if self._call is not None:
                if self._call.active():
                    self._call.cancel()
                self._call = None
        elif self._cancelled > 50 and self._cancelled * 2 > len(heap):
            self._heap = [e for e in heap if e.owner is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _schedule(self, at: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._at = at
        self._call = self._clock.callLater(max(at - self.seconds(), 0.0), self._fire)

    def _fire(self) -> None:
        self._call = None
        # At least the deadline it was armed for: the clock may round below it.
        now = max(self.seconds(), self._at)
        heap = self._heap
        due: list[Deadline] = []
        while heap and heap[0].at <= now:
            entry = heapq.heappop(heap)
            entry.home = None
            if entry.owner is None:
                self._cancelled -= 1
            else:
                due.append(entry)
        for entry in due:  # an earlier one's owner may cancel a later one's
            owner = entry.owner
            if owner is not None:
                entry.owner = None
                try:
                    owner._timed_out()
                except Exception:  # as one DelayedCall's failure: the others still run
                    log.failure("a connection's deadline failed")
        while heap and heap[0].owner is None:
            heapq.heappop(heap).home = None
            self._cancelled -= 1
        if heap and (self._call is None or heap[0].at < self._at):
            self._schedule(heap[0].at)


_ATTRIBUTE = "_twistedgw_deadlines"  # kept on the clock: they live and go together


def of(call_later: Callable[..., Any]) -> Deadlines:
    """The ``Deadlines`` of the clock whose ``callLater`` this is (a reactor's, a
    ``Clock``'s): one per clock."""
    clock = getattr(call_later, "__self__", None)
    if clock is None or not hasattr(clock, "seconds"):
        raise TypeError(f"{call_later!r} is not a clock's callLater")
    deadlines: Deadlines | None = getattr(clock, _ATTRIBUTE, None)
    if deadlines is None:
        deadlines = Deadlines(clock)
        setattr(clock, _ATTRIBUTE, deadlines)
    return deadlines
