"""Log lines a remote party can trigger, at most once per key (e.g. source address) per interval.

A direct client decides how often it sends, say, a forged certificate header;
logging every occurrence would let it flood the log and fill the disk. A
``RateLimitedLog`` logs the first occurrence for a key, counts the repeats for
``interval`` seconds, and appends that count to the next line it logs for the
key. There is no timer: a key that falls silent never reports its last count,
which keeps this free of reactor state and cheap on the request path.

Memory is bounded: at most ``max_keys`` keys are remembered, and the one whose
window opened longest ago is forgotten first (its pending count is lost, which
only ever under-reports). A client churning through more than ``max_keys``
addresses per interval still gets one line per address.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger, LogLevel

DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_KEYS = 4096


@dataclass
class _Window:
    opened: float  # when the last line for this key was logged
    repeats: int = 0  # occurrences since then that were not logged


class RateLimitedLog:
    """Emits to ``logger`` at most once per key per ``interval`` seconds of ``clock``."""

    def __init__(
        self,
        logger: Logger,
        *,
        level: LogLevel = LogLevel.warn,
        interval: float = DEFAULT_INTERVAL,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or max_keys < 1:
            raise ValueError("interval must be positive and max_keys at least 1")
        self.logger = logger
        self.level = level
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        # Ordered by when each key's window opened, oldest first: eviction pops the front.
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def emit(self, key: Hashable, format: str, **kwargs: Any) -> bool:
        """Log ``format`` with ``kwargs`` unless ``key`` was logged less than ``interval``
        ago (then only count it). Returns whether a line was logged.

        A logged line that follows suppressed repeats ends with ``(N more since the
        last one)``; ``repeats`` is reserved for that count in ``kwargs``.
        """
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and now - window.opened < self.interval:
            window.repeats += 1
            return False
        repeats = 0
        if window is not None:
            repeats = window.repeats
            del self._windows[key]
        elif len(self._windows) >= self.max_keys:
            self._windows.popitem(last=False)
        self._windows[key] = _Window(now)
        if repeats:
            format += " ({repeats} more since the last one)"
            kwargs["repeats"] = repeats
        self.logger.emit(self.level, format, **kwargs)
        return True
