"""Embedding: conf/embed.tac adds the gateway to an application; ``twistd -ny`` runs it."""

from __future__ import annotations

import http.client
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import REPO, GatewayProcess, env, free_port, gateway_config, request
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_tac_embeds_the_gateway_beside_the_applications_own_service(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, status_port = free_port(), free_port()
    config = tmp_path / "gw0" / "gateway.toml"  # where the fixture writes it
    current = env().get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'plugins'}:{REPO}:{current}")
    monkeypatch.setenv("TWISTEDGW_CONFIG", str(config))
    monkeypatch.setenv("STATUS_PORT", str(status_port))

    def apis(alias: str) -> list[dict[str, object]]:
        return [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
                 "mutual_ssl": "mandatory", "aliases": [alias]}]

    argv = [*TWISTD, "-n", "--pidfile=", "--logfile=-", "-y", str(REPO / "conf" / "embed.tac")]
    gw = gateway([], config_text=gateway_config(pki, apis("partner-root"), port=port), port=port,
                 argv=argv, wait_for=(status_port,))

    assert request(gw.port, "/echo/embedded", pki, "partner-app").status == 200
    assert request(gw.port, "/echo/embedded", pki, "other-app").status == 401
    conn = http.client.HTTPConnection("127.0.0.1", status_port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"my application is up\n"
    conn.close()
    assert "twistedgw listening on" in gw.output()

    # The .tac wires SIGHUP to the gateway's reload.
    config.write_text(gateway_config(pki, apis("other-root"), port=port))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "Reloaded " in gw.output(), what="the reload")
    assert request(gw.port, "/echo/embedded", pki, "other-app").status == 200

    gw.signal(signal.SIGTERM)
    # twistd re-raises the signal that stopped it, to tell its own supervisor why.
    assert gw.proc.wait(15) in (0, -signal.SIGTERM)
    assert "Server Shut Down." in gw.output()
