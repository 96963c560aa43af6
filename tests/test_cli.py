"""``twistedgw check`` and ``twistedgw run`` as users run them: real processes.

A bad config makes both exit with status 2 and print one line per problem on
stderr, each naming the file and key, and never a traceback. The processes of
all cases run a few at a time in one module fixture, so the module stays fast.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.config_cases import CASES, Case, api, good, line_says
from tests.harness import env, free_port, gateway_config, start_gateway, wait_port
from twistedgw.testing.devpki import DevPki

COMMANDS = ("check", "run")


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def twistedgw(*args: str, timeout: float = 30.0) -> Outcome:
    done = subprocess.run(
        [sys.executable, "-m", "twistedgw", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def outcomes(
    pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], tuple[Path, Outcome]]]:
    jobs: dict[tuple[str, str], Path] = {}
    for case in CASES:
        directory = tmp_path_factory.mktemp(case.name)
        path = directory / "gateway.toml"
        text = case.text(pki)
        if text is not None:
            path.write_text(text)
        for command in COMMANDS:
            jobs[(case.name, command)] = path
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            key: pool.submit(twistedgw, key[1], "--config", str(path)) for key, path in jobs.items()
        }
        yield {key: (jobs[key], future.result()) for key, future in futures.items()}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_config_exits_2(
    outcomes: dict[tuple[str, str], tuple[Path, Outcome]], case: Case, command: str
) -> None:
    path, out = outcomes[(case.name, command)]
    assert out.code == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == len(case.expect), lines
    unmatched = list(lines)
    for words in case.expect:
        hits = [line for line in unmatched if line_says(line, words)]
        assert hits, f"no line says {words!r}: {lines}"
        unmatched.remove(hits[0])
    for line in lines:
        assert str(path) in line, f"the line does not name the file: {line}"
    if command == "run":
        assert "listening" not in out.stdout


def test_check_good_config(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(good(pki))
    out = twistedgw("check", "--config", str(path))
    assert out.code == 0, out.stderr
    assert out.stderr == ""
    assert str(path) in out.stdout and "OK" in out.stdout


def test_run_good_config_serves_and_stops_cleanly(pki: DevPki, tmp_path: Path) -> None:
    port = free_port()
    text = gateway_config(pki, [api()], port=port)
    gw = start_gateway(tmp_path, text, port)
    try:
        wait_port(port, gw.proc, log=gw.log)
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0
        output = gw.output()
        assert "Traceback" not in output
        assert f"listening on https://127.0.0.1:{port}" in output
        assert ("API petstore:1.0.5 at /petstore/1.0.5 -> http://127.0.0.1:8080/v2: "
                "mutual_ssl[partner-root]:mandatory") in output
    finally:
        gw.stop()


def test_run_reports_a_busy_port(pki: DevPki, tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "gateway.toml"
        path.write_text(gateway_config(pki, [api()], port=port))
        out = twistedgw("run", "--config", str(path))
    assert out.code != 0
    assert "Traceback" not in out.stdout + out.stderr
    assert "cannot listen" in out.stderr


@pytest.mark.parametrize("args", [[], ["check"], ["run", "--config"], ["frobnicate"]])
def test_usage_errors(args: list[str]) -> None:
    out = twistedgw(*args)
    assert out.code == 2
    assert "usage:" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
