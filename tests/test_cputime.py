"""The budget tests' reading of CPU time: the least of a few runs, stopping when within."""

from __future__ import annotations

import time

from tests.cputime import least_cpu


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_slow_first_run_is_not_the_reading() -> None:
    runs: list[float] = []

    def action() -> None:
        runs.append(0.02 if not runs else 0.0)
        _spin(runs[-1])

    assert least_cpu(action, 0.01) < 0.01
    assert len(runs) == 2  # stopped at the first run within the budget


def test_an_input_over_budget_every_run_stays_over() -> None:
    runs: list[None] = []

    def action() -> None:
        runs.append(None)
        _spin(0.004)

    assert least_cpu(action, 0.002, tries=3) >= 0.004
    assert len(runs) == 3
