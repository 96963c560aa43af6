"""The authz endpoint judges the method ``[authz] original_method_header`` names (issue 17)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, request, table
from tests.opskit import read_json_lines, wait_until
from twistedgw.testing.devpki import DevPki


def test_authz_judges_the_named_method(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, tmp_path: Path
) -> None:
    log = tmp_path / "access.jsonl"
    extra = table("authz", {"path": "/_authz", "original_method_header": "X-Judged-Method"})
    extra += table("access_log", {"path": str(log)})
    apis = [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
             "mutual_ssl": "mandatory", "aliases": ["partner-root"]}]
    gw = gateway(apis, extra=extra)
    uri = {"X-Original-URI": "/echo/x"}
    # The configured header names the method; the default header name means nothing here.
    named = {**uri, "X-Judged-Method": "DELETE", "X-Original-Method": "PATCH"}
    assert request(gw.port, "/_authz", pki, "partner-app", headers=named).status == 200
    # Without it, the authz request's own method is judged.
    assert request(gw.port, "/_authz", pki, "partner-app", headers=uri).status == 200
    # A value that is no method is refused with 403, which auth_request understands.
    bad = request(gw.port, "/_authz", pki, "partner-app",
                  headers={**uri, "X-Judged-Method": "DEL ETE"})
    assert bad.status == 403
    assert bad.json()["code"] == "900908"
    assert "X-Judged-Method" in bad.json()["description"]
    lines = wait_until(lambda: len(read_json_lines(log)) >= 3 and read_json_lines(log),
                       what="3 access-log lines")
    assert [(line["method"], line["api"]) for line in lines[:2]] == [
        ("DELETE", "echo:1"), ("GET", "echo:1")]
