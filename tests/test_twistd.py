"""``twistd -n twistedgw --config FILE``: the twistd plugin serves the same gateway.

twistd is run with the test interpreter, and the in-tree plugin folder goes on
PYTHONPATH so the plugin under test is the one in this checkout even when an
installed copy is stale.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import get, running_gateway
from tests.harness import REPO, GatewayProcess, env, free_port, gateway_config
from twistedgw.testing.devpki import DevPki

PLUGINS = REPO / "plugins"
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()"]


def twistd_argv(config: Path) -> list[str]:
    return [*TWISTD, "-n", "--pidfile=", "--logfile=-", "twistedgw", "--config", str(config)]


@pytest.fixture
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    current = env().get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{PLUGINS}:{current}" if current else str(PLUGINS))


@pytest.fixture
def twistd_gateway(
    plugin_path: None, pki: DevPki, backend: BackendProcess, tmp_path: Path
) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [
        {
            "name": "petstore",
            "version": "1.0.5",
            "context": "/petstore/1.0.5",
            "backend": f"{backend.url}/v2",
            "mutual_ssl": "mandatory",
            "aliases": ["partner-root"],
        }
    ]
    with running_gateway(tmp_path, pki, apis, port=port,
                         argv=twistd_argv(tmp_path / "gateway.toml")) as gw:
        yield gw


def test_twistd_serves_mtls(twistd_gateway: GatewayProcess, pki: DevPki) -> None:
    ok = get(twistd_gateway.port, "/petstore/1.0.5/pet/1?x=1", pki, "partner-app")
    assert ok.status == 200, ok.body
    assert ok.json()["path"] == "/v2/pet/1?x=1"
    refused = get(twistd_gateway.port, "/petstore/1.0.5/pet/1", pki, "expired")
    assert refused.status == 401
    assert refused.json()["description"] == "certificate has expired"
    missing = get(twistd_gateway.port, "/petstore/1.0.5/pet/1", pki)
    assert missing.status == 401 and missing.json()["code"] == "900902"
    # It stops cleanly: twistd re-raises the signal that stopped it, once shut down.
    twistd_gateway.signal(signal.SIGTERM)
    assert twistd_gateway.proc.wait(15) in (0, -signal.SIGTERM)
    output = twistd_gateway.output()
    assert "Server Shut Down." in output
    assert "twistedgw listening on https://" in output
    assert "Traceback" not in output


def test_twistd_refuses_a_bad_config(plugin_path: None, pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = gateway_config(
        pki,
        [{"name": "a", "context": "/a", "backend": "http://h:1", "mutual_ssl": "sometimes"}],
        port=0,
    )
    path.write_text(text)
    done = subprocess.run(twistd_argv(path), capture_output=True, text=True, env=env(), timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert f"{path}: apis[0].mutual_ssl: must be one of" in done.stderr


def test_twistd_needs_config(plugin_path: None) -> None:
    done = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "twistedgw"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
    )
    assert done.returncode != 0
    assert "--config is required" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
