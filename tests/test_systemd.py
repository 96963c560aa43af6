"""systemd: socket activation through an inherited socket, and the unit files."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import docpages
from tests.backend_fixture import BackendProcess
from tests.harness import REPO, GatewayProcess, env, free_port, gateway_config, request
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.mark.skipif(not Path(ACTIVATE).exists(), reason="systemd-socket-activate not installed")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("fdname", ["--fdname=https", None], ids=["named", "unnamed"])
def test_socket_activation_serves_mtls_on_the_inherited_socket(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path,
    workers: int, fdname: str | None,
) -> None:
    """With and without --fdname: sd_listen_fds(3) makes names optional (older systemd,
    other supervisors and systemd-socket-activate without --fdname pass none)."""
    port = free_port()
    apis = [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
             "mutual_ssl": "mandatory", "aliases": ["partner-root"]}]
    text = f"workers = {workers}\n" + gateway_config(
        pki, apis, port=port, listeners=[{"endpoint": "systemd:domain=INET:index=0"}])
    config = tmp_path / "gw0" / "gateway.toml"  # where the fixture writes it
    argv = [ACTIVATE, "-l", f"127.0.0.1:{port}", *([fdname] if fdname else []),
            "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED",
            sys.executable, "-m", "twistedgw", "run", "--config", str(config)]
    gw = gateway([], config_text=text, port=port, argv=argv)

    if workers == 2:
        wait_until(lambda: len(re.findall(r"Worker \d \(pid \d+\) serving", gw.output())) == 2,
                   what="both workers serving")
    ok = request(gw.port, "/echo/hello", pki, "partner-app")
    assert ok.status == 200 and ok.json()["path"] == "/hello"
    assert request(gw.port, "/echo/hello", pki, "other-app").status == 401
    assert f"twistedgw listening on https://127.0.0.1:{port}" in gw.output()
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0


def _installed_units(tmp_path: Path) -> list[Path]:
    """The units as shipped, with ExecStart pointing at this interpreter (verify checks it)."""
    out = []
    for name in ("twistedgw.service", "twistedgw.socket"):
        text = (REPO / "conf" / name).read_text()
        text = text.replace("/opt/twistedgw/bin/twistedgw", f"{sys.executable} -m twistedgw")
        path = tmp_path / name
        path.write_text(text)
        out.append(path)
    return out


def test_unit_files_are_sandboxed() -> None:
    service = (REPO / "conf" / "twistedgw.service").read_text()
    for directive in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                      "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed",
                      "Requires=twistedgw.socket", "PrivateTmp=yes", "CapabilityBoundingSet=\n"):
        assert directive in service, directive
    socket_unit = (REPO / "conf" / "twistedgw.socket").read_text()
    assert "ListenStream=" in socket_unit and 'endpoint = "systemd:domain=INET:index=0"' in (
        socket_unit)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_files_verify_and_score_well(tmp_path: Path) -> None:
    service, socket_unit = _installed_units(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(service), str(socket_unit)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(service)],
        capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for twistedgw.service: ([0-9.]+)",
                      security.stdout + security.stderr)
    if match is None:
        pytest.skip("this systemd-analyze cannot score units offline")
    assert float(match.group(1)) <= 2.0, security.stdout


def test_systemd_endpoint_without_a_socket_fails_clearly(
    pki: DevPki, backend: BackendProcess, tmp_path: Path
) -> None:
    apis = [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url}]
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config(pki, apis, port=0,
                                     listeners=[{"endpoint": "systemd:domain=INET:index=0"}]))
    done = subprocess.run([sys.executable, "-m", "twistedgw", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, env=env(), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot listen" in done.stderr and "systemd passed no such socket" in done.stderr


def test_units_run_the_install_the_docs_describe() -> None:
    """Issue 23 item 13: on a PEP 668 Debian nothing puts twistedgw in /usr/local/bin; the
    operations guide installs it into a venv, and every shipped unit runs that venv's
    twistedgw (the symlink the guide adds is for people, not for the units)."""
    install = docpages.section("how-to/operations.md", "## Installing on a server")
    recipe = "\n".join(docpages.code_blocks(install, "sh"))
    venv = re.search(r"python3 -m venv (/\S+)", recipe)
    assert venv is not None, recipe
    binary = f"{venv.group(1)}/bin/twistedgw"
    assert re.search(rf"pip install .*\n?.*ln -s\S* {re.escape(binary)} /usr/local/bin/", recipe)
    units = [REPO / "conf" / "twistedgw.service",
             REPO / "conf" / "nginx-fronted" / "twistedgw-authz.service"]
    for unit in units:
        commands = re.findall(r"^ExecStart(?:Pre)?=(\S+)", unit.read_text(), re.M)
        assert commands and set(commands) == {binary}, (unit, commands)
