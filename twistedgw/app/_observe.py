"""What operators watch: the JSON access log and the Prometheus metrics.

The metrics count every finished request (``Gateway.counter``, without a record); the
access log gets one ``RequestRecord`` per finished request (``Gateway.observers``).

Metrics live in a ``CollectorRegistry`` owned by one ``Metrics`` object (never
prometheus-client's global registry), so two gateways in one process do not mix
their numbers. With ``workers > 1`` each worker turns its records into compact
``Sample`` tuples and sends them to the parent, which owns the only registry
(see ``app/_workers.py``): aggregation by the parent, no multiprocess directory to
manage or clean up.

Client-certificate verifications are counted once per *request* that reached the
identity step (a keep-alive connection making ten requests counts ten): that is
the same unit for handshake and header certificates, and it is the unit in which
the verdict is applied. A certificate that verified but was refused for the request
(not one of the API's aliases, identity rules, revoked, a load balancer's) counts
as ``failed`` with that reason, as the access log says: the verdict applied is the
refusal, whichever stage made it (``verdict_of``).
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.samples import Sample as PromSample
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger

from twistedgw._memo import remember
from twistedgw.app._runtime import Runtime
from twistedgw.config import ApiConfig
from twistedgw.errors import GatewayError
from twistedgw.http import CLIENT_ERROR_KINDS, RequestRecord
from twistedgw.identity import ClientIdentity, fingerprint, reasons
from twistedgw.pipeline import JwksCollector
from twistedgw.tls import UNAVAILABLE as REVOCATION_UNAVAILABLE
from twistedgw.upstream import TunnelStats

log = Logger()

# The api label for requests that matched no API (404, 400).
NO_API = "-"
# Backend error kinds from upstream/_forward.py; "client_gone" is the client's doing, not the
# backend's, and the HTTP front's refusals (http/_guard.py) are client errors.
_NOT_BACKEND_ERRORS = frozenset({"client_gone"}) | CLIENT_ERROR_KINDS
CLUSTER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FIRST_BOUND = DURATION_BUCKETS[0]

# The consumer label of requests whose caller mapped to no configured consumer.
NO_CONSUMER = "none"

# (api, status, duration seconds, cert source, cert result, reason label, backend error kind,
#  consumer, refusal code, refusal reason label, response cache result, WebSocket
#  event: None, "open" or why it closed)
Sample = tuple[
    str, int, float, str | None, str | None, str | None, str | None, str | None, str | None,
    str | None, str | None, str | None,
]

#: A WebSocket's 101 was sent (``websocket_event``); any other value says why one closed.
WEBSOCKET_OPEN = "open"


def websocket_event(record: RequestRecord) -> str | None:
    """None for a request; ``"open"`` for a WebSocket's 101; else why it closed."""
    return _websocket_event(record.websocket)


def _websocket_event(stats: TunnelStats | None) -> str | None:
    if stats is None:
        return None
    return stats.closed_by or WEBSOCKET_OPEN


def _reason_labels() -> list[tuple[str, str]]:
    """(text, label) for every plain-words reason, longest text first."""
    pairs = [
        (value, name.lower())
        for name, value in vars(reasons).items()
        if name.isupper() and isinstance(value, str)
    ]
    return sorted(pairs, key=lambda p: -len(p[0]))


_REASONS = _reason_labels()


def reason_label(reason: str | None) -> str | None:
    """A bounded label for a free-text reason: ``expired``, ``untrusted``, ... or ``other``.

    Reasons may carry details (OpenSSL's words, a decoder's message); a metric
    label must not, or every new detail becomes a new time series.
    """
    if reason is None:
        return None
    for text, label in _REASONS:
        if reason == text or reason.startswith(text + ":"):
            return label
    if "could not be decoded" in reason:
        return "undecodable"
    if reason == REVOCATION_UNAVAILABLE:
        return "revocation_unavailable"
    return "other"


# Labels of reasons that are not about a presented certificate failing.
_NOT_A_CERTIFICATE_FAILURE = frozenset({None, "other", "none"})


def verdict_of(record: RequestRecord) -> tuple[str | None, str | None, str | None]:
    """The client-certificate verdict applied to the request: (source, result, reason
    label), or Nones when it never reached authentication.

    A certificate that verified and was then refused for this request by a certificate
    rule (not one of the API's aliases, identity rules, revocation, a load balancer's)
    is ``failed`` with the refusal's reason: "verified" would hide why the caller got
    its 401.
    """
    return _verdict_labels(record.identity, record.refusal)


def _verdict_labels(
    identity: ClientIdentity | None, refusal: GatewayError | None
) -> tuple[str | None, str | None, str | None]:
    if identity is None:
        return None, None, None
    source, result = identity.source.value, identity.outcome.value
    if not identity.verified:
        return source, result, reason_label(identity.reason)
    if refusal is not None:
        label = reason_label(refusal.description)
        if label not in _NOT_A_CERTIFICATE_FAILURE:
            return source, "failed", label
    return source, result, None


def refusal_labels(record: RequestRecord) -> tuple[str | None, str | None]:
    """(error code, bounded reason label) of the refusal the request got, or Nones."""
    return _refusal_labels(record.refusal)


def _refusal_labels(refusal: GatewayError | None) -> tuple[str | None, str | None]:
    if refusal is None:
        return None, None
    return refusal.code, reason_label(refusal.description)


def sample_of(record: RequestRecord) -> Sample:
    return sample(
        record.api, record.status, record.duration, record.identity, record.consumer,
        record.error_kind, record.refusal, record.cache, record.websocket,
    )


def sample(
    api: ApiConfig | None,
    status: int,
    duration: float,
    identity: ClientIdentity | None,
    consumer: str | None,
    error_kind: str | None,
    refusal: GatewayError | None,
    cache: str | None = None,
    websocket: TunnelStats | None = None,
) -> Sample:
    """One request's ``Sample``, from the fields of its record (``http.RequestCounter``)."""
    source, result, reason = _verdict_labels(identity, refusal)
    code, refused = _refusal_labels(refusal)
    return (
        api.label if api is not None else NO_API,
        status,
        duration,
        source,
        result,
        reason,
        error_kind,
        consumer,
        code,
        refused,
        cache,
        _websocket_event(websocket),
    )


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The three series every request adds to are plain counters here, read at scrape
        # time (``RequestCounters``): prometheus_client's children took a lock and a
        # bucket search per request (~2.5 µs a keep-alive request, ~1%).
        self.counts = RequestCounters()
        r.register(self.counts)
        self.backend_errors = Counter(
            "twistedgw_backend_errors",
            "Forwarded requests the backend failed (refused, timeout, reset, other), by API.",
            ["api", "kind"],
            registry=r,
        )
        self.client_errors = Counter(
            "twistedgw_client_errors",
            "Requests the HTTP front refused before routing (malformed, too large, too slow),"
            " and responses aborted because the client read none of them (client_timeout),"
            " by kind.",
            ["kind"],
            registry=r,
        )
        for kind in sorted(CLIENT_ERROR_KINDS):
            self.client_errors.labels(kind=kind)
        self.reloads = Counter(
            "twistedgw_config_reloads",
            "Configuration reloads, by result (success|failure).",
            ["result"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "twistedgw_worker_restarts",
            "Worker processes that died and were started again.",
            registry=r,
        )
        self.workers = Gauge(
            "twistedgw_workers_ready", "Processes serving requests now.", registry=r
        )
        self.refusals = Counter(
            "twistedgw_refusals",
            "Requests the gateway answered with one of its JSON errors instead of forwarding "
            "them, whichever stage refused (front, routing, schemes, authorisers, plugins), "
            "by API, error code and reason (a bounded label; other when not a certificate's).",
            ["api", "code", "reason"],
            registry=r,
        )
        self.cluster_errors = Counter(
            "twistedgw_cluster_store_errors",
            "Tier checks the [cluster] Redis store could not answer (served per on_failure), "
            "by kind (down|timeout|error|garbage|overload).",
            ["kind"],
            registry=r,
        )
        self.cluster_round_trip_seconds = Histogram(
            "twistedgw_cluster_store_round_trip_seconds",
            "Time for one tier check in the [cluster] Redis store (answered ones).",
            buckets=CLUSTER_BUCKETS,
            registry=r,
        )
        self.response_cache = Counter(
            "twistedgw_response_cache_lookups",
            "Allowed GET/HEAD requests of APIs with a response cache, by API and result (hit: "
            "answered from the cache; miss: forwarded).",
            ["api", "result"],
            registry=r,
        )
        self.websockets_open = Gauge(
            "twistedgw_websockets_open",
            "WebSocket connections relayed now (their 101 sent, not closed yet).",
            registry=r,
        )
        self.websockets_closed = Counter(
            "twistedgw_websockets_closed",
            "WebSocket connections closed, by API and reason (client|backend: that side "
            "began the closing handshake, or closed first without one; idle_timeout; shutdown: "
            "a graceful stop closed it).",
            ["api", "reason"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        # [tracing]: what became of the finished spans (0 with tracing off).
        self.tracing_dropped = Counter(
            "twistedgw_tracing_spans_dropped",
            "Finished spans dropped because the export queue ([tracing] max_queue_size) "
            "was full: the collector is slow or unreachable.",
            registry=r,
        )
        self.tracing_exported = Counter(
            "twistedgw_tracing_spans_exported",
            "Spans sent to the OTLP collector, by result (success|failure: refused, "
            "unreachable or no answer within the export timeout).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.tracing_exported.labels(result=result)
        r.register(CertificateExpiryCollector(runtime))
        self._runtime = runtime
        r.register(JwksCollector())  # JWKS URLs fetched in this process
        self._cells: dict[tuple[object, ...], Cells] = {}
        # id(identity) -> (identity, its verdict labels when nothing refused the request)
        self._labels: dict[
            int, tuple[ClientIdentity, tuple[str | None, str | None, str | None]]
        ] = {}
        # (id(identity), API label, status) -> (identity, the cell of its usual request)
        self._usual: dict[tuple[int, str, int], tuple[ClientIdentity, list[float]]] = {}
        self._consumers: tuple[object, frozenset[str]] = (None, frozenset())

    def observe(self, record: RequestRecord) -> None:
        """A ``Gateway`` observer: ``count(sample_of(record))`` without the Sample tuple."""
        self.count_request(
            record.api, record.status, record.duration, record.identity, record.consumer,
            record.error_kind, record.refusal, record.cache, record.websocket,
        )

    def count_request(
        self,
        api: ApiConfig | None,
        status: int,
        duration: float,
        identity: ClientIdentity | None,
        consumer: str | None,
        error_kind: str | None,
        refusal: GatewayError | None,
        cache: str | None = None,
        websocket: TunnelStats | None = None,
    ) -> None:
        """``http.RequestCounter``: one finished request, without its record."""
        if (consumer is None and refusal is None and error_kind is None and cache is None
                and websocket is None and identity is not None):
            # The usual request (answered, by a known caller, no consumer): its cells, by
            # the caller, API and status, in one lookup (kept with the identity, so its id
            # cannot be reused while it is here); ``_count``'s common part written out.
            # One cell takes it (``RequestCounters.usual``: its duration's sum and
            # bucket; the request and verification counts are its buckets' total, added
            # to the three series when they are read).
            label = api.label if api is not None else NO_API
            usual = self._usual.get((id(identity), label, status))
            if usual is None or usual[0] is not identity:
                usual = self._usual_cells(identity, label, status)
            cell = usual[1]
            if duration <= _FIRST_BOUND:  # the first bucket's (most keep-alive requests'):
                if duration < 0.0:  # no search (a clock step back counts as 0)
                    duration = 0.0
                cell[1] += 1
            else:
                cell[1 + bisect_left(DURATION_BUCKETS, duration)] += 1
            cell[0] += duration
            return
        if refusal is None and identity is not None:
            # A keep-alive connection's caller is the same identity request after request:
            # its labels are looked up, not worked out again (kept with the identity, so
            # its id cannot be reused while it is here).
            source, result, reason = self._labels_of(identity)
            if websocket is None and cache is None and error_kind is None:
                # The usual request (answered, by a known caller): its cells counted here,
                # ``_count``'s common part written out.
                label = api.label if api is not None else NO_API
                key = (label, status, source, result, reason,
                       NO_CONSUMER if consumer is None else self._consumer_label(consumer))
                found = self._cells.get(key)
                if found is None:
                    found = self._cells_for(key)
                found[0][0] += 1
                duration_cell = found[1]
                if duration < 0.0:
                    duration = 0.0
                duration_cell[0] += duration
                duration_cell[2 + bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
                verdict = found[2]
                if verdict is not None:
                    verdict[0] += 1
                return
            code = refused = None
        else:
            source, result, reason = _verdict_labels(identity, refusal)
            code, refused = _refusal_labels(refusal) if refusal is not None else (None, None)
        self._count(
            api.label if api is not None else NO_API,
            status,
            duration,
            source,
            result,
            reason,
            error_kind,
            consumer,
            code,
            refused,
            cache,
            None if websocket is None else _websocket_event(websocket),
        )

    def _labels_of(
        self, identity: ClientIdentity
    ) -> tuple[str | None, str | None, str | None]:
        """A caller's verdict labels (source, result, reason), worked out the first time
        and then looked up (kept with the identity, so its id cannot be reused while it is
        here; bounded: emptied when full)."""
        known = self._labels.get(id(identity))
        if known is None or known[0] is not identity:
            known = remember(
                self._labels, id(identity), (identity, _verdict_labels(identity, None)), 4096
            )
        return known[1]

    def _usual_cells(
        self, identity: ClientIdentity, label: str, status: int
    ) -> tuple[ClientIdentity, list[float]]:
        """``count_request``'s usual request's cell (``RequestCounters.usual``), found the
        first time a caller gets a status of an API and then looked up in ``_usual``
        (bounded: emptied when full; the counts stay in the cell)."""
        source, result, reason = self._labels_of(identity)
        cell = self.counts.usual(label, status, source, result, reason)
        return remember(self._usual, (id(identity), label, status), (identity, cell), 4096)

    def _cells_for(self, key: tuple[Any, ...]) -> Cells:
        """The cells of a label set (api, status, source, result, reason, consumer), made
        the first time it is counted and then looked up in ``_cells``."""
        cells = self._cells
        if len(cells) > 10000:
            cells.clear()  # only this lookup cache: the counts stay in self.counts
        api, status, source, result, reason, consumer = key
        found = cells[key] = self.counts.cells(api, status, consumer, source, result, reason)
        return found

    def websocket_closed(self, api: str, reason: str) -> None:
        self.websockets_open.dec()
        self.websockets_closed.labels(api=api, reason=reason).inc()

    def _consumer_label(self, consumer: str | None) -> str:
        """The consumer, if the config in force defines it: a plugin that set
        ``call.consumer`` to anything else must not create time series."""
        if consumer is None:
            return NO_CONSUMER
        built = self._runtime()
        config = built.config if built is not None else None
        if self._consumers[0] is not config:
            names = frozenset(c.name for c in config.consumers) if config is not None else None
            self._consumers = (config, names or frozenset())
        return consumer if consumer in self._consumers[1] else NO_CONSUMER

    def count(self, sample: Sample) -> None:
        self._count(*sample)

    def _count(
        self,
        api: str,
        status: int,
        duration: float,
        source: str | None,
        result: str | None,
        reason: str | None,
        kind: str | None,
        consumer_name: str | None,
        code: str | None = None,
        refused: str | None = None,
        cache: str | None = None,
        websocket: str | None = None,
    ) -> None:
        if websocket is not None:
            if websocket != WEBSOCKET_OPEN:  # a WebSocket closed: not a request
                self.websocket_closed(api, websocket)
                return
            self.websockets_open.inc()  # its handshake is counted as a request below
        consumer = NO_CONSUMER if consumer_name is None else self._consumer_label(consumer_name)
        # The request's cells, looked up once per label set.
        key = (api, status, source, result, reason, consumer)
        found = self._cells.get(key)
        if found is None:
            found = self._cells_for(key)
        found[0][0] += 1
        duration_cell = found[1]
        duration = max(duration, 0.0)
        duration_cell[0] += duration
        duration_cell[2 + bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        verdict = found[2]
        if verdict is not None:
            verdict[0] += 1
        if code is not None:
            self.refusals.labels(api=api, code=code, reason=refused or "other").inc()
        if cache is not None:
            self.response_cache.labels(api=api, result=cache).inc()
        if kind is not None:
            if kind in CLIENT_ERROR_KINDS:
                self.client_errors.labels(kind=kind).inc()
            elif kind not in _NOT_BACKEND_ERRORS:
                self.backend_errors.labels(api=api, kind=kind).inc()

    # cluster.ClusterObserver: the single-process service's store reports here.
    def cluster_error(self, kind: str, count: int = 1) -> None:
        self.cluster_errors.labels(kind=kind).inc(count)

    def cluster_round_trip(self, seconds: float) -> None:
        self.cluster_round_trip_seconds.observe(max(seconds, 0.0))

    def cluster_state(self, problem: str | None) -> None:
        pass  # shown by /readyz from the store itself

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(result="success" if ok else "failure").inc()

    # tracing.TracingObserver: the tracer (or, with workers, the workers) report here.
    def spans_dropped(self, count: int) -> None:
        self.tracing_dropped.inc(count)

    def spans_exported(self, count: int, ok: bool) -> None:
        self.tracing_exported.labels(result="success" if ok else "failure").inc(count)


#: The cells one request adds to: its requests counter, its API's duration histogram, and
#: its verification counter (None when the request never reached authentication).
Cells = tuple[list[float], list[float], "list[float] | None"]


class RequestCounters:
    """``twistedgw_requests``, ``twistedgw_request_duration_seconds`` and
    ``twistedgw_client_cert_verifications``: plain counts kept by ``Metrics._count`` and
    turned into metric families when scraped (a prometheus_client collector).

    A cell is a list per label set: ``[count, created]`` for the counters,
    ``[sum, created, count in bucket 0, ..., count in +Inf]`` for the histogram (bucket
    counts kept apart, made cumulative at scrape). Counted on the reactor thread, as
    the admin endpoint scrapes them, so no lock. The families and samples are those
    prometheus_client's ``Counter``/``Histogram`` exposed (``_created`` included)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], list[float]] = {}
        self._durations: dict[str, list[float]] = {}
        self._verifications: dict[tuple[str, str, str], list[float]] = {}
        # The usual request's cells (``usual``) by label set, and each with the three
        # cells it is added to when read (``_fold``).
        self._usual: dict[tuple[str, int, str | None, str | None, str | None], list[float]] = {}
        self._folds: list[tuple[list[float], Cells]] = []

    def cells(
        self, api: str, status: int, consumer: str, source: str | None, result: str | None,
        reason: str | None,
    ) -> Cells:
        """The cells one request of these labels adds to (made at the first)."""
        now = time.time()
        key = (api, str(status), consumer)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = [0, now]
        durations = self._durations.get(api)
        if durations is None:
            durations = self._durations[api] = [0.0, now, *([0] * (len(DURATION_BUCKETS) + 1))]
        verifications = None
        if source is not None and result is not None:
            vkey = (source, result, reason or "")
            verifications = self._verifications.get(vkey)
            if verifications is None:
                verifications = self._verifications[vkey] = [0, now]
        return requests, durations, verifications

    def usual(
        self, api: str, status: int, source: str | None, result: str | None, reason: str | None
    ) -> list[float]:
        """The one cell a request of these labels (no consumer) adds to: ``[sum of
        durations, count in bucket 0, ..., count in +Inf]``. Its count (the buckets'
        total) is the requests' and the verifications' too, so a request bumps one list
        by index, not three, and the three series get it when read (``_fold``)."""
        key = (api, status, source, result, reason)
        cell = self._usual.get(key)
        if cell is None:
            cells = self.cells(api, status, NO_CONSUMER, source, result, reason)
            cell = self._usual[key] = [0.0, *([0] * (len(DURATION_BUCKETS) + 1))]
            self._folds.append((cell, cells))
        return cell

    def _fold(self) -> None:
        """Add what the usual cells counted since the last read to the three series'
        cells, and zero them (in place: ``Metrics`` holds them)."""
        width = len(DURATION_BUCKETS) + 1
        for cell, (requests, durations, verifications) in self._folds:
            count = sum(cell[1:])
            if not count:
                continue
            requests[0] += count
            if verifications is not None:
                verifications[0] += count
            durations[0] += cell[0]
            for i in range(width):
                durations[2 + i] += cell[1 + i]
            cell[:] = [0.0, *([0] * width)]

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterator[Any]:
        return self._families(samples=True)

    def _families(self, samples: bool = False) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "twistedgw_requests",
            "Requests answered, by API, status and consumer (a configured name or none).",
            labels=["api", "status", "consumer"],
        )
        durations = HistogramMetricFamily(
            "twistedgw_request_duration_seconds",
            "Time from the request's arrival to the end of the response, by API.",
            labels=["api"],
        )
        verifications = CounterMetricFamily(
            "twistedgw_client_cert_verifications",
            "Client-certificate verdicts applied to requests (once per request), by source "
            "(handshake|header), result (verified|failed|none) and reason.",
            labels=["source", "result", "reason"],
        )
        if samples:
            self._fold()
            for labels, (count, created) in self._requests.items():
                requests.add_metric(list(labels), count, created=created)
            bounds = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]
            for api, cell in self._durations.items():
                total, made, *counts = cell
                buckets: list[tuple[str, float]] = []
                running = 0.0
                for bound, n in zip(bounds, counts, strict=True):
                    running += n
                    buckets.append((bound, running))
                durations.add_metric([api], buckets, total)
                durations.samples.append(PromSample(
                    "twistedgw_request_duration_seconds_created", {"api": api}, made
                ))
            for labels, (count, created) in self._verifications.items():
                verifications.add_metric(list(labels), count, created=created)
        yield requests
        yield durations
        yield verifications


class CertificateExpiryCollector:
    """``twistedgw_certificate_expiry_timestamp_seconds`` for the certificates in force now.

    Read from the current runtime at scrape time, so a reload that rotates a
    certificate shows at once. The server certificate has role ``server`` and
    alias ``server``; truststore entries have role ``truststore`` and their alias.
    """

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def describe(self) -> list[Any]:
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "twistedgw_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of every truststore entry (Unix time).",
            labels=["role", "alias", "subject"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        built = self._runtime()
        if built is not None:
            if built.keystore is not None:
                cert = built.keystore.cert
                family.add_metric(["server", "server", _subject(cert)], _expiry(cert))
            if built.truststore is not None:
                for entry in built.truststore.entries:
                    family.add_metric(
                        ["truststore", entry.alias, _subject(entry.cert)], _expiry(entry.cert)
                    )
        yield family


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _expiry(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


# --------------------------------------------------------------------------- access log


def access_entry(record: RequestRecord) -> dict[str, Any]:
    """One access-log object. The path never carries the query string (it may hold
    secrets); API keys and certificates are never included, only fingerprints."""
    identity = record.identity
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.started, UTC).isoformat(timespec="milliseconds"),
        "client": record.client,
        "method": record.method,
        "path": record.path,
        "protocol": record.protocol,
        "api": record.api.label if record.api is not None else None,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "bytes": record.bytes_sent,
    }
    entry.update(_mtls_fields(identity))
    refusal = record.refusal
    if refusal is not None:
        # Whichever stage refused: its words and its code, as the client got them.
        entry["reason"] = refusal.description
        if identity is not None and identity.verified:
            entry["mtls"] = verdict_of(record)[1]
    entry["code"] = refusal.code if refusal is not None else None
    entry["consumer"] = record.consumer
    entry["error"] = record.error_kind
    if record.cache is not None:
        entry["cache"] = record.cache
    stats = record.websocket
    if stats is not None:  # a WebSocket, at its close: "bytes" went to the client
        entry["bytes_received"] = stats.received
        entry["close_code"] = stats.close_code
        entry["closed_by"] = stats.closed_by
    entry["pid"] = os.getpid()
    if record.trace_id is not None:  # [tracing]: the request's trace, sampled or not
        entry["trace_id"] = record.trace_id
    return entry


@functools.lru_cache(maxsize=4096)
def _leaf_fields(leaf: x509.Certificate) -> tuple[str, str, str, str]:
    """Subject, issuer, serial (hex), SHA-256 (hex): cached, as callers repeat."""
    return (
        leaf.subject.rfc4514_string(),
        leaf.issuer.rfc4514_string(),
        format(leaf.serial_number, "x"),
        fingerprint(leaf).hex(),
    )


def _mtls_fields(identity: ClientIdentity | None) -> dict[str, Any]:
    leaf = identity.leaf if identity is not None else None
    subject, issuer, serial, sha256 = _leaf_fields(leaf) if leaf is not None else (None,) * 4
    return {
        "mtls": identity.outcome.value if identity is not None else "none",
        "cert_source": identity.source.value if identity is not None else None,
        "cert_subject": subject,
        "cert_issuer": issuer,
        "cert_serial": serial,
        "cert_sha256": sha256,
        "reason": identity.reason if identity is not None and not identity.verified else None,
    }


class AccessLog:
    """JSON lines, one per request, to a file (appended) or to standard output (``-``).

    Each line goes out in one ``write(2)`` so several worker processes can share
    the file or stdout without interleaving. ``reopen()`` (called on SIGHUP)
    follows a log file that logrotate moved away.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._fd = 1
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old is not None and old != 1:
            os.close(old)

    def __call__(self, record: RequestRecord) -> None:
        stats = record.websocket
        if stats is not None and stats.closed_by is None:
            return  # a WebSocket's 101: its line is written when it closes
        self.write(access_entry(record))

    def write(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            return
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8", "replace"))
        except OSError as e:
            log.error("Cannot write the access log {path}: {error}", path=self.path, error=e)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd != 1:
            os.close(fd)
