"""Helpers for the operations tests: admin endpoints, metrics, access-log lines, waiting."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

Labels = frozenset[tuple[str, str]]


def admin_get(port: int, path: str) -> tuple[int, str, str]:
    """GET on the admin listener: (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read().decode()
    finally:
        conn.close()


def scrape(port: int) -> dict[str, dict[Labels, float]]:
    """Every sample of /metrics: sample name -> {frozenset(labels): value}."""
    status, _, text = admin_get(port, "/metrics")
    assert status == 200, text
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(metrics: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels, 0 when absent."""
    return metrics.get(name, {}).get(frozenset(labels.items()), 0.0)


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (and return that)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as e:
            last = e
        else:
            if last:
                return last  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among mixed log output (access-log lines start with '{')."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return json_lines(path.read_text()) if path.exists() else []
