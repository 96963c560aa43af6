"""Per-certificate and per-consumer throttling: token buckets, as WSO2 binds a tier.

An API with ``[[apis.tiers]]`` applies the first tier (in config order) that
names either a truststore alias in the caller's verified chain (when the
certificate passed the API's mTLS check) or the caller's consumer; its
``requests_per_minute`` bounds that caller. Callers matching no tier are not
throttled here. Alias tiers key buckets by (API, leaf SHA-256), so one
certificate cannot spend another's budget; consumer tiers by (API, consumer
name), so a consumer has one budget whatever credential it used. The API is its
``name:version``, not its context: two APIs sharing a context through ``hosts``
have a budget each (``tier_bucket_key`` spells every key).

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
from twistedgw.identity import ClientIdentity, fingerprint


@dataclass
class _Bucket:
    tokens: float
    updated: float


def tier_for(
    api: ApiConfig, identity: ClientIdentity | None, consumer: str | None = None
) -> Tier | None:
    """The first tier naming the certificate's alias or the consumer; ``identity`` only
    counts when it passed the API's mTLS check (pass None otherwise)."""
    if not api.tiers:
        return None
    aliases = identity.trust_aliases if identity is not None and identity.verified else frozenset()
    for tier in api.tiers:
        if tier.consumer is not None:
            if tier.consumer == consumer:
                return tier
        elif tier.alias in aliases:
            return tier
    return None


def bucket_key(tier: Tier, identity: ClientIdentity | None) -> bytes | None:
    """What a tier counts: the consumer, or the leaf certificate (None: nothing to count)."""
    if tier.consumer is not None:
        return b"consumer:" + tier.consumer.encode()
    leaf = identity.leaf if identity is not None else None
    return b"leaf:" + fingerprint(leaf) if leaf is not None else None


def tier_bucket_key(api_label: str, caller: bytes, prefix: bytes = b"") -> bytes:
    """The one spelling of a tier bucket's key, in this process, in Redis and in NGINX.

    ``prefix + api_label + b"\\x00" + caller``, where ``prefix`` is ``[cluster]
    key_prefix`` in Redis (UTF-8; empty in process), ``api_label`` the API's
    ``name:version`` (UTF-8) and ``caller`` what the tier counts (``bucket_key``):
    ``b"leaf:"`` + the 32-byte SHA-256 of the leaf certificate's DER (binary, not hex)
    for an alias tier, ``b"consumer:"`` + the consumer's name for a consumer tier.
    For example ``twistedgw:Orders:v2\\x00consumer:acme``.

    Keyed by the API, not its context: two APIs sharing a context through ``hosts``
    must not spend each other's budget (issue 23 item 9). APIs with the same name
    and version share buckets, being the same API.
    """
    return prefix + api_label.encode() + b"\x00" + caller


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket to spend from: its key (``tier_bucket_key`` without a prefix: a store
    that has one prepends it) and its rate."""

    key: bytes
    requests_per_minute: int  # the bucket's capacity; it refills evenly over period_seconds
    consumer: bool = False  # counts a consumer (else a certificate); for the refusal's words
    period_seconds: int = 60  # a minute for tiers; a throttling policy's own period


def limit_for(
    api: ApiConfig, identity: ClientIdentity | None, consumer: str | None = None
) -> Limit | None:
    """The tier that applies to this caller on this API and the bucket it spends; None
    when nothing limits it. The one place that decides; every store uses it."""
    tier = tier_for(api, identity, consumer)
    which = bucket_key(tier, identity) if tier is not None else None
    if tier is None or which is None:
        return None
    return Limit(
        tier_bucket_key(api.label, which),
        tier.requests_per_minute,
        consumer=tier.consumer is not None,
    )


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
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self, api: ApiConfig, identity: ClientIdentity | None, consumer: str | None = None
    ) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is available."""
        limit = limit_for(api, identity, consumer)
        return None if limit is None else self.take_limit(limit)

    def take_limit(self, limit: Limit) -> float | None:
        """``TierStore.take_limit``, synchronously."""
        capacity = float(limit.requests_per_minute)
        rate = capacity / limit.period_seconds
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
