"""Backend TLS (``[backend_tls]`` and per-API ``backend_tls``) against real processes.

The echo backends serve the dev PKI's backend certificate (localhost, 127.0.0.1)
from their own CA; one also requires a client certificate from the gateway's
client CA. Several APIs share a backend host and port with different settings,
so a pooled connection made under one setting would be caught being reused
under another.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import GatewayProcess, connect, gateway_config, request, send, table
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki

GATEWAY_SUBJECT = "CN=twistedgw gateway,O=twistedgw dev"


@pytest.fixture(scope="module")
def tls_backend(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    be = start_backend(tmp_path_factory.mktemp("tls-be"), tls=(pki.backend_cert, pki.backend_key))
    yield be
    be.stop()


@pytest.fixture(scope="module")
def mtls_backend(
    pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    be = start_backend(
        tmp_path_factory.mktemp("mtls-be"),
        tls=(pki.backend_cert, pki.backend_key),
        client_ca=pki.gateway_client_ca,
    )
    yield be
    be.stop()


def _api(context: str, backend: str, **extra: Any) -> dict[str, Any]:
    return {"name": context.strip("/"), "version": "1", "context": context, "backend": backend,
            **extra}


def _with_client_cert(pki: DevPki, **extra: Any) -> dict[str, Any]:
    return {"trusted_certificate": str(pki.backend_ca), "certificate": str(pki.gateway_client_cert),
            "private_key": str(pki.gateway_client_key), **extra}


def _forwarded(gw: GatewayProcess, counter: str, pki: DevPki) -> int:
    """Requests the backend behind the API at ``counter`` has received so far."""
    r = request(gw.port, f"{counter}/requests", pki)
    assert r.status == 200, r.body
    return int(r.json()["requests"])


def _refused(gw: GatewayProcess, path: str, counter: str, pki: DevPki) -> dict[str, Any]:
    """GET ``path``: 503 101503, and the backend received nothing. Returns the JSON body."""
    before = _forwarded(gw, counter, pki)
    r = request(gw.port, path, pki)
    assert r.status == 503, r.body
    assert r.header("content-type") == "application/json"
    body: dict[str, Any] = r.json()
    assert body["code"] == "101503"
    assert _forwarded(gw, counter, pki) == before + 1  # +1: the first count itself
    return body


def test_backend_tls_trust_names_client_certificates_and_per_api_tables(
    gateway: Callable[..., GatewayProcess], pki: DevPki, tls_backend: BackendProcess,
    mtls_backend: BackendProcess,
) -> None:
    ip, mip = f"https://127.0.0.1:{tls_backend.port}", f"https://127.0.0.1:{mtls_backend.port}"
    apis = [
        # The global table (the backend's CA) applies to APIs without their own.
        _api("/count", f"https://localhost:{tls_backend.port}"),
        _api("/ok", f"{ip}/a"),
        # Per-API tables replace the global one, on the same host and port as /ok.
        _api("/named", f"{ip}/b", backend_tls={"trusted_certificate": str(pki.backend_ca),
                                              "server_name": "localhost"}),
        _api("/wrong-name", f"{ip}/c", backend_tls={"trusted_certificate": str(pki.backend_ca),
                                                    "server_name": "wrong.example"}),
        _api("/system", f"{ip}/d", backend_tls={}),  # empty: system trust
        _api("/wrong-ca", f"{ip}/e", backend_tls={"trusted_certificate": str(pki.server_ca)}),
        # A backend that requires the gateway's client certificate.
        _api("/mcount", f"https://localhost:{mtls_backend.port}",
             backend_tls=_with_client_cert(pki)),
        _api("/mtls", f"{mip}/m", backend_tls=_with_client_cert(pki)),
        _api("/nocert", f"{mip}/n"),  # the global table: right CA, no client certificate
    ]
    extra = table("backend_tls", {"trusted_certificate": str(pki.backend_ca)})
    gw = gateway(apis, extra=extra)

    # The configured CA verifies the backend; the request reaches it intact.
    r = request(gw.port, "/ok/x?q=1", pki)
    assert r.status == 200, r.body
    assert r.json()["path"] == "/a/x?q=1"
    assert r.json()["tls_client_subject"] is None
    assert request(gw.port, "/named/y", pki).json()["path"] == "/b/y"

    # A keep-alive connection to 127.0.0.1:port is pooled now; the other settings
    # for that host and port must make their own connections, and fail.
    wrong_name = _refused(gw, "/wrong-name/x", "/count", pki)
    assert wrong_name["description"] == "TLS with the backend failed"  # not "closed"
    _refused(gw, "/system/x", "/count", pki)
    untrusted = _refused(gw, "/wrong-ca/x", "/count", pki)
    assert untrusted["description"] == "TLS with the backend failed"
    assert request(gw.port, "/ok/again", pki).status == 200
    failures = [line for line in gw.output().splitlines() if "failed before responding" in line]
    assert any("wrong.example" in line for line in failures), failures  # the name checked

    # The gateway's client certificate reaches the backend that asks for it ...
    r = request(gw.port, "/mtls/x", pki)
    assert r.status == 200, r.body
    assert r.json()["path"] == "/m/x"
    assert r.json()["tls_client_subject"] == GATEWAY_SUBJECT
    # ... and without one (same host and port, pooled connection or not) nothing does.
    _refused(gw, "/nocert/x", "/mcount", pki)
    assert request(gw.port, "/mtls/y", pki).json()["tls_client_subject"] == GATEWAY_SUBJECT

    log = gw.output()
    assert "Backend TLS for API mtls:1: trusts CN=twistedgw dev backend root" in log
    assert f"client certificate {GATEWAY_SUBJECT}" in log
    assert "PRIVATE KEY" not in log and "BEGIN CERTIFICATE" not in log


def test_reload_switches_the_backend_ca_and_keeps_connections_when_unchanged(
    gateway: Callable[..., GatewayProcess], pki: DevPki, tmp_path: Path
) -> None:
    be = start_backend(tmp_path / "be", tls=(pki.backend_cert, pki.backend_key))
    try:
        apis = [_api("/echo", be.url)]

        def config(ca: Path) -> str:
            return gateway_config(pki, apis, port=gw.port,
                                  extra=table("backend_tls", {"trusted_certificate": str(ca)}))

        gw = gateway(apis, extra=table("backend_tls", {"trusted_certificate": str(pki.server_ca)}))
        reloads = 0

        def reload(ca: Path) -> None:
            nonlocal reloads
            gw.config.write_text(config(ca))
            gw.signal(signal.SIGHUP)
            reloads += 1
            wait_until(lambda: gw.output().count("Reloaded ") >= reloads, what="the reload")

        assert request(gw.port, "/echo/x", pki).status == 503  # the wrong CA

        reload(pki.backend_ca)
        client = connect(gw.port, pki)
        assert send(client, "/echo/x").status == 200
        accepted = send(client, "/echo/connections").json()["accepted"]

        reload(pki.backend_ca)  # nothing changed: the pooled connection is reused
        assert send(client, "/echo/connections").json()["accepted"] == accepted

        reload(pki.server_ca)  # the wrong CA again: no pooled connection may serve it
        refused = send(client, "/echo/x")
        assert refused.status == 503 and refused.json()["code"] == "101503"
        client.close()
    finally:
        be.stop()
