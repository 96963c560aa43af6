"""The per-request series are plain counters read at scrape time (issue 27 item 5): they
expose exactly what prometheus_client's ``Counter`` and ``Histogram`` exposed for the same
requests (names, help, types, labels, buckets, sums, ``_created`` series), in memory."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from twistedgw.app._observe import DURATION_BUCKETS, Metrics

SAMPLES = [
    ("a:1", 200, 0.003, "handshake", "verified", None, None, None),
    ("a:1", 200, 0.3, "handshake", "verified", None, None, None),
    ("a:1", 200, 0.005, "handshake", "verified", None, None, None),  # on a bucket's bound
    ("a:1", 401, 0.01, "handshake", "failed", "expired", None, None, "900901", "expired"),
    ("-", 404, 7.0, None, None, None, None, None, "404", "other"),
    ("a:1", 503, 61.0, "handshake", "verified", None, "refused", None, "101503", "other"),
    ("b:2", 200, -1.0, "header", "none", "none", None, None),  # a clock step back: 0
]


def _reference() -> str:
    """The same requests counted by prometheus_client's own metric classes."""
    r = CollectorRegistry()
    requests = Counter(
        "twistedgw_requests",
        "Requests answered, by API, status and consumer (a configured name or none).",
        ["api", "status", "consumer"], registry=r,
    )
    duration = Histogram(
        "twistedgw_request_duration_seconds",
        "Time from the request's arrival to the end of the response, by API.",
        ["api"], buckets=DURATION_BUCKETS, registry=r,
    )
    verifications = Counter(
        "twistedgw_client_cert_verifications",
        "Client-certificate verdicts applied to requests (once per request), by source "
        "(handshake|header), result (verified|failed|none) and reason.",
        ["source", "result", "reason"], registry=r,
    )
    for api, status, seconds, source, result, reason, *_rest in SAMPLES:
        requests.labels(api=api, status=str(status), consumer="none").inc()
        duration.labels(api=api).observe(max(seconds, 0.0))
        if source is not None and result is not None:
            verifications.labels(source=source, result=result, reason=reason or "").inc()
    return generate_latest(r).decode()


def _per_request_series(text: str) -> str:
    names = ("twistedgw_requests", "twistedgw_request_duration", "twistedgw_client_cert_verif")
    lines = [line for line in text.splitlines() if any(n in line for n in names)]
    # Creation times differ between the two registries; their presence must not.
    return "\n".join(re.sub(r"(_created\{[^}]*\}) \S+$", r"\1 T", line) for line in lines)


def test_the_plain_counters_expose_what_prometheus_client_did() -> None:
    metrics = Metrics(lambda: None)
    for s in SAMPLES:
        metrics.count(s)  # type: ignore[arg-type]
    ours = _per_request_series(generate_latest(metrics.registry).decode())
    assert ours == _per_request_series(_reference())
    assert "twistedgw_request_duration_seconds_created" in ours
    assert metrics.registry.get_sample_value(
        "twistedgw_requests_total", {"api": "a:1", "status": "200", "consumer": "none"}
    ) == 3


def test_a_usual_request_is_counted_as_the_general_count_counts_it() -> None:
    """``count_request`` counts an answered request of a known caller without a consumer
    from cells it looks up by the caller, API and status: the same series as ``_count``
    with the verdict's labels worked out each time."""
    from types import SimpleNamespace
    from typing import Any

    from twistedgw.app._observe import _verdict_labels
    from twistedgw.identity import ClientIdentity, Outcome, Source

    verified = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED)
    failed = ClientIdentity(Source.HEADER, Outcome.FAILED, reason="the certificate has expired")
    a: Any = SimpleNamespace(label="a:1")
    b: Any = SimpleNamespace(label="b:2")
    requests = [(a, 200, 0.003, verified), (a, 200, 0.3, verified), (a, 404, 0.005, verified),
                (b, 200, -1.0, verified), (a, 200, 0.01, failed), (a, 200, 0.02, failed),
                (None, 200, 7.0, verified), (a, 200, 0.2, verified)]
    fast, general = Metrics(lambda: None), Metrics(lambda: None)
    for api, status, seconds, identity in requests:
        fast.count_request(api, status, seconds, identity, None, None, None)
        general._count(api.label if api is not None else "-", status, seconds,
                       *_verdict_labels(identity, None), None, None)
    counted = _per_request_series(generate_latest(fast.registry).decode())
    assert counted == _per_request_series(generate_latest(general.registry).decode())
    assert 'twistedgw_requests_total{api="a:1",consumer="none",status="200"} 5.0' in counted


def test_usual_requests_counted_between_reads_are_neither_lost_nor_counted_twice() -> None:
    """The usual request bumps one cell, added to the three series when they are read: a
    read, more requests (some counted the general way into the same series), a second
    read, the caller-to-cell lookup emptied, a third: each read shows what ``_count``
    counting every request the general way shows."""
    from types import SimpleNamespace
    from typing import Any

    from twistedgw.app._observe import _verdict_labels
    from twistedgw.identity import ClientIdentity, Outcome, Source

    verified = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED)
    none = ClientIdentity(Source.HANDSHAKE, Outcome.NONE)
    a: Any = SimpleNamespace(label="a:1")
    fast, general = Metrics(lambda: None), Metrics(lambda: None)

    def both(status: int, seconds: float, identity: ClientIdentity, usual: bool = True) -> None:
        labels = _verdict_labels(identity, None)
        if usual:
            fast.count_request(a, status, seconds, identity, None, None, None)
        else:
            fast._count("a:1", status, seconds, *labels, None, None)
        general._count("a:1", status, seconds, *labels, None, None)

    def same() -> str:
        counted = _per_request_series(generate_latest(fast.registry).decode())
        assert counted == _per_request_series(generate_latest(general.registry).decode())
        return counted

    both(200, 0.003, verified)
    both(200, 0.3, none)
    assert 'twistedgw_requests_total{api="a:1",consumer="none",status="200"} 2.0' in same()
    both(200, 0.02, verified)
    both(200, 0.04, verified, usual=False)
    both(500, 2.0, verified)
    counted = same()
    assert 'twistedgw_requests_total{api="a:1",consumer="none",status="200"} 4.0' in counted
    assert ('twistedgw_client_cert_verifications_total{reason="",result="verified",'
            'source="handshake"} 4.0') in counted
    assert 'twistedgw_request_duration_seconds_count{api="a:1"} 5.0' in counted
    fast._usual.clear()
    both(200, 0.001, verified)
    assert 'twistedgw_requests_total{api="a:1",consumer="none",status="200"} 5.0' in same()
    same()  # a read with nothing new changes nothing
