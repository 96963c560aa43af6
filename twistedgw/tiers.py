"""Per-certificate throttling: a token bucket per verified certificate, as WSO2 binds a tier.

An API with ``[[apis.tiers]]`` limits each certificate whose verified chain holds
a tier's alias (the first matching tier, in config order) to that tier's
``requests_per_minute``; certificates matching no tier, and callers without a
verified certificate, are not throttled here. Buckets are keyed by (API
context, leaf SHA-256), so one certificate cannot spend another's budget.

The buckets live in the ``Gateway``, not the ``Runtime``: they survive a reload
(SIGHUP), otherwise rotating a CRL would hand every caller a fresh minute. A
reload that changes a tier's rate applies the new rate to existing buckets.

Which tier applies and which bucket it spends is decided in one place,
``limit_for``; where the buckets are kept is a ``TierStore``: ``TierThrottle`` in
this process, or ``cluster.RedisTierStore`` shared by every worker and instance
(``[cluster]``), which answers with a Deferred.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from twistedgw.config import ApiConfig, Tier
from twistedgw.identity import ClientIdentity
from twistedgw.pki import fingerprint


@dataclass
class _Bucket:
    tokens: float
    updated: float


def tier_for(api: ApiConfig, identity: ClientIdentity) -> Tier | None:
    if not api.tiers or not identity.verified:
        return None
    for tier in api.tiers:
        if tier.alias in identity.trust_aliases:
            return tier
    return None


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket to spend from: its key (unique per API and caller) and its rate."""

    key: str
    requests_per_minute: int


def limit_for(api: ApiConfig, identity: ClientIdentity) -> Limit | None:
    """The tier that applies to this caller on this API and the bucket it spends; None
    when nothing limits it. The one place that decides; every store uses it."""
    tier = tier_for(api, identity)
    leaf = identity.leaf
    if tier is None or leaf is None:
        return None
    return Limit(f"{api.context}\x00cert:{fingerprint(leaf).hex()}", tier.requests_per_minute)


class StoreUnavailable(Exception):
    """The shared store cannot answer and ``[cluster] on_failure = "closed"``: refuse (503)."""


class TierStore(Protocol):
    """Where buckets live. ``take_limit`` spends one token: None if allowed, else the
    seconds until one is available (possibly through a Deferred); it raises (or its
    Deferred fails with) ``StoreUnavailable`` when the request must be refused."""

    def take_limit(self, limit: Limit) -> float | Deferred[float | None] | None: ...


class TierThrottle:
    """Token buckets: capacity = ``requests_per_minute``, refilled evenly over a minute.

    Bounded (least recently used buckets are dropped first); reactor thread only.
    """

    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, api: ApiConfig, identity: ClientIdentity) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is available."""
        limit = limit_for(api, identity)
        return None if limit is None else self.take_limit(limit)

    def take_limit(self, limit: Limit) -> float | None:
        """``TierStore.take_limit``, synchronously."""
        capacity = float(limit.requests_per_minute)
        rate = capacity / 60.0
        now = self._clock()
        key = limit.key
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate


def retry_after(seconds: float) -> bytes:
    """``Retry-After`` in whole seconds, never 0 (a client would retry at once)."""
    return str(max(1, math.ceil(seconds))).encode()
