"""The keep-alive request path in process (``bench/own_cost.py``'s harness): it keeps
working, and a forwarded request leaves nothing for the cyclic GC.

A reference cycle per request (the forwarder's relay pointing back at its forwarding
kept every request's exchange, stream, call and route alive until a collection) made
the collector run every ~45 requests, ~4% of a keep-alive request's CPU. Refcounting
frees an acyclic request's objects as soon as it is answered. Not a performance test:
nothing here is timed.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from tests.frontkit import own_cost

REPO = Path(__file__).resolve().parent.parent


def test_a_forwarded_request_leaves_no_reference_cycle(tmp_path: Path) -> None:
    harness = own_cost().Harness(tmp_path)
    harness.check()
    for _ in range(50):
        harness.one()
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            harness.check()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_own_cost_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "own_cost.py"), "--requests", "200",
         "--rounds", "1", "--gc"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "µs per request" in proc.stdout
    assert "objects the collector freed per request: 0.00" in proc.stdout


def test_requests_are_counted_without_records_unless_an_observer_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics count each request from its fields (``Gateway.counter``): no
    ``RequestRecord`` is built while nothing else reads one; an observer (the access log,
    an embedding's) gets one per request, and the counts are the same."""
    from twistedgw.http import _resource

    built: list[object] = []

    class Counted(_resource.RequestRecord):  # type: ignore[misc]
        def __new__(cls, *args: object, **kwargs: object) -> Counted:
            built.append(1)
            return super().__new__(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(_resource, "RequestRecord", Counted)
    harness = own_cost().Harness(tmp_path)
    for _ in range(5):
        harness.check()
    assert built == []
    seen: list[object] = []
    harness.gateway.observers.append(seen.append)
    for _ in range(3):
        harness.check()
    assert len(seen) == len(built) == 3
    registry = harness.metrics.registry
    labels = {"api": "bench:1", "status": "200", "consumer": "none"}
    assert registry.get_sample_value("twistedgw_requests_total", labels) == 8
    assert registry.get_sample_value(
        "twistedgw_request_duration_seconds_count", {"api": "bench:1"}
    ) == 8
    assert registry.get_sample_value(
        "twistedgw_client_cert_verifications_total",
        {"source": "handshake", "result": "verified", "reason": ""},
    ) == 8


def test_a_gateway_exchange_sets_every_field_of_a_wire_exchange() -> None:
    """``GatewayExchange.__init__`` sets ``wire.Exchange``'s fields itself (one call fewer
    per request): none may be left unset when the exchange gains one."""
    from twistedgw.http import GatewayExchange
    from twistedgw.wire import Connection, Exchange, Fields

    conn = Connection(None, None, True, None)
    exchange = GatewayExchange(b"GET", b"/", b"HTTP/1.1", Fields([]), None, conn, None, None)  # type: ignore[arg-type]
    for name in Exchange.__slots__:
        getattr(exchange, name)  # AttributeError when unset
    assert exchange.secure and exchange.client_ip == ""
