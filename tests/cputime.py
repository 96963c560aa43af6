"""CPU-time budgets for the 10 ms rule's unit tests, read so noise cannot fail them.

A budget test asks whether an input's handling is bounded (linear, no backtracking),
not how fast this machine is this minute. On the 2 shared cores CI runs on, one run's
CPU time also holds what others cost it (caches evicted, a slower clock, a first call's
lazy set-up): CI failed on runs at 1.1-1.3x a budget that the same code meets with room
most of the time. Noise only ever adds time, so the least of a few runs is the input's
own cost; a quadratic or backtracking handling misses the budget on every run, by far.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TRIES = 5


def least_cpu(action: Callable[[], object], budget: float, tries: int = TRIES) -> float:
    """The least CPU time (this thread's, seconds) ``action`` took in up to ``tries``
    runs, stopping at the first within ``budget``. ``action`` must do the same work
    each time: give it fresh state where the code under test remembers results."""
    least = float("inf")
    for _ in range(tries):
        started = time.thread_time()
        action()
        least = min(least, time.thread_time() - started)
        if least < budget:
            break
    return least
