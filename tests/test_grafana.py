"""conf/grafana/twistedgw.json: every query names metrics, and labels, that the gateway
exports. The names come from the gateway's own metrics registry, built in memory and fed
one sample of each kind, never from a list written here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, gateway_config
from twistedgw.app import _runtime as runtime
from twistedgw.app._observe import Metrics
from twistedgw.testing.devpki import DevPki

DASHBOARD = REPO / "conf" / "grafana" / "twistedgw.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
            "_created"), "gauge": ("",)}


@pytest.fixture
def exported(pki: DevPki, tmp_path: Path) -> dict[str, set[str] | None]:
    """Each exported series name, with its label names (None when no sample showed them)."""
    config = tmp_path / "gateway.toml"
    api = {"name": "a", "version": "1", "context": "/a", "backend": "http://127.0.0.1:1"}
    config.write_text(gateway_config(pki, [api], port=0))
    built = runtime.load(config)  # the server certificate and truststore in force
    metrics = Metrics(lambda: built)
    metrics.count(("a:1", 401, 0.01, "handshake", "failed", "certificate has expired",
                   "refused", None))
    metrics.cluster_error("down")
    metrics.cluster_round_trip(0.001)
    metrics.reloaded(True)
    series: dict[str, set[str] | None] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES[family.type]:
            series.setdefault(family.name + suffix, None)
        for sample in family.samples:
            labels = series.get(sample.name) or set()
            series[sample.name] = labels | set(sample.labels)
    return series


def _queries(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for target in p.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield query["query"] if isinstance(query, dict) else query


def test_every_query_names_exported_metrics_and_labels(
    exported: dict[str, set[str] | None],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    queries = list(_queries(dashboard))
    assert len(queries) >= 10
    problems = []
    for expr in queries:
        names = set(re.findall(r"\btwistedgw_\w+", expr))
        if not names:
            problems.append(f"names no metric: {expr}")
        unknown = names - set(exported)
        problems += [f"{n} is not exported: {expr}" for n in sorted(unknown)]
        known = [exported[n] for n in names - unknown]
        if any(labels is None for labels in known):
            continue  # a family no sample showed the labels of (JWKS: no URL here)
        allowed = set().union(*known) if known else set()
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr))
        problems += [f"label {label} is not on {sorted(names)}: {expr}"
                     for label in sorted(used - allowed)]
    assert not problems


def test_the_dashboard_covers_what_operators_watch() -> None:
    """Verdicts and refusals by reason and API, latency, backend errors, certificate expiry."""
    queries = "\n".join(_queries(json.loads(DASHBOARD.read_text())))
    for needle in ("twistedgw_client_cert_verifications_total{result=\"failed\"}",
                   "by (reason)", "status=~\"4..\"", "by (api",
                   "twistedgw_request_duration_seconds_bucket", "twistedgw_backend_errors_total",
                   "twistedgw_certificate_expiry_timestamp_seconds"):
        assert needle in queries, needle


def test_metrics_reference_lists_every_exported_metric(
    exported: dict[str, set[str] | None],
) -> None:
    """docs/reference/metrics.md names every metric the registry exports."""
    page = (REPO / "docs" / "reference" / "metrics.md").read_text()
    families = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in exported}
    missing = [f for f in sorted(families)
               if f"`{f}`" not in page and f"`{f}_total`" not in page]
    assert not missing
