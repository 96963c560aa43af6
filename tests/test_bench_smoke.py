"""The benchmark harness must keep working: one 1-second round of scenario 1.

Not a performance test (nothing is asserted about speed); it only proves that
``bench/run.py`` can still build its configs, start NGINX, HAProxy, wrk and the
gateway, measure, and write its report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("nginx", "haproxy", "wrk")),
    reason="the benchmark needs nginx, haproxy and wrk",
)


def test_bench_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = tmp_path.glob("*-smoke.json")
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    summary = row["summary"]
    assert summary["errors"] == 0
    assert summary["a"]["median"] > 0 and summary["b"]["median"] > 0
    assert list(tmp_path.glob("*-smoke.md"))
