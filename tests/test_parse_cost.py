"""``bench/parse_cost.py`` keeps working: every head it times is taken by the front
(the script asserts the request was parsed, and that llhttp split each head into the
front's fields) and the table has a row per head, each column timed. Not a
performance test: nothing is asserted about speed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_parse_cost_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "parse_cost.py"), "--rounds", "1", "--number", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and " B |" in line]
    assert len(rows) == 3, proc.stdout
    assert all("µs" in row for row in rows)
    # head, front, httptools, split (Python), split (llhttp): five cells a row, each timed,
    # the httptools ones where it is installed (the bench extra, not the test extra).
    cells = [row.strip("|").split("|") for row in rows]
    llhttp = importlib.util.find_spec("httptools") is not None
    for c in cells:
        assert len(c) == 5, proc.stdout
        assert "µs" in c[1] and "µs" in c[3], proc.stdout
        assert all(("µs" if llhttp else "not installed") in c[i] for i in (2, 4)), proc.stdout
