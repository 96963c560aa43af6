"""Start the echo backend (tests/backend.py) as a real process, for any test module.

``start_backend(tmp_path)`` starts one you own; the session-scoped ``backend``
fixture shares one per run. Register it in conftest.py (``from
tests.backend_fixture import backend``) or import it into a test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@dataclass
class BackendProcess:
    port: int
    url: str  # "http://127.0.0.1:PORT", no trailing slash
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Kill the process (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def spawn_with_port_file(
    argv: Sequence[str], port_file: Path, log: Path, timeout: float = 10.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Run `argv`, wait until it writes its listening port to `port_file`, return both.

    The child's stdout and stderr go to `log`, quoted in the error if it dies or
    never reports a port.
    """
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            text = port_file.read_text().strip()
            if text:
                return proc, int(text)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(
        f"{argv[1] if len(argv) > 1 else argv[0]} did not report a port within {timeout}s "
        f"(exit {proc.returncode}):\n{log.read_text(errors='replace')}"
    )


def start_backend(
    tmp_path: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    client_ca: Path | None = None,
    timeout: float = 10.0,
) -> BackendProcess:
    """Start tests/backend.py on a free port; call `.stop()` when done.

    `tls` = (certificate PEM, key PEM) serves HTTPS; `url` then says https.
    `client_ca` (with `tls`) requires a client certificate that CA issued.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    port_file = tmp_path / "backend.port"
    log = tmp_path / "backend.log"
    argv = [sys.executable, str(TESTS / "backend.py"), "--port", "0", "--port-file", str(port_file)]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if client_ca is not None:
            argv += ["--tls-client-ca", str(client_ca)]
    proc, port = spawn_with_port_file(argv, port_file, log, timeout)
    scheme = "https" if tls is not None else "http"
    return BackendProcess(port, f"{scheme}://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    """One echo backend shared by the whole test session."""
    proc = start_backend(tmp_path_factory.mktemp("backend"))
    try:
        yield proc
    finally:
        proc.stop()
