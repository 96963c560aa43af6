"""A bounded memo: a dict that is emptied when full, then stored into.

Many modules remember an answer worked out from something a client can vary (a header
name, a path, a certificate, a layout of names). Such a memo must stay bounded whatever a
client sends, and it is read on the request path, so it is emptied rather than kept in
least-recently-used order: emptying is O(1) amortised, a hit stays a plain ``dict.get``
with no per-hit bookkeeping, and a client cycling through new keys costs at most one
refill, never unbounded memory. Callers look up with ``dict.get`` themselves and call
``remember`` only on a miss, so a hit pays no function call.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(store: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store ``value`` under ``key`` in ``store`` (emptied first when it holds ``limit``
    entries) and return ``value``, so a miss reads ``x = remember(memo, key, make(), N)``."""
    if len(store) >= limit:
        store.clear()
    store[key] = value
    return value
