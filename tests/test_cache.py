"""The response cache through a real gateway (#25 item 8): a definition with API
Manager's ``x-wso2-response-cache`` in front of the echo backend, whose ``/requests``
counter shows whether a request reached it; real TLS with client certificates, the
metrics on the admin listener."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import context, get, tls_connect
from tests.harness import GatewayProcess, Response, free_port, send, table
from tests.opskit import scrape, value
from tests.test_openapi_gateway import Project
from twistedgw.testing.devpki import DevPki

# API Manager's documented shape; mutual TLS mandatory; every path of the backend.
DEFINITION = """\
openapi: 3.0.1
info: {{title: Catalog, version: v1}}
x-wso2-basePath: /catalog
x-wso2-production-endpoints: {{urls: ["{backend}"], type: http}}
x-wso2-mutual-ssl: mandatory
x-wso2-response-cache:
  enabled: true
  cacheTimeoutInSeconds: 30
security: []
paths:
  /requests:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /headers:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /bytes/{{n}}:
    parameters: [{{name: n, in: path, required: true, schema: {{type: integer}}}}]
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


@pytest.fixture
def gw(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> Iterator[GatewayProcess]:
    project = Project(tmp_path / "project", pki)
    admin = free_port()
    apis = [
        {"openapi": project.definition("catalog.yaml", DEFINITION.format(backend=backend.url))},
        # The same backend without a cache: its /requests says how many reached it.
        {"name": "count", "context": "/count", "backend": backend.url},
    ]
    extra = (table("response_cache", {"max_entry_bytes": 2000})
             + table("admin", {"port": admin}))
    started = project.start(apis, extra=extra)
    started.extra_ports["admin"] = admin
    try:
        yield started
    except BaseException:
        print(started.output())
        raise
    finally:
        started.stop()


def reached(gw: GatewayProcess, pki: DevPki) -> int:
    """Requests the backend has received so far."""
    return int(get(gw.port, "/count/requests", pki).json()["requests"])


def call(gw: GatewayProcess, pki: DevPki, path: str, client: str | None = "partner-app",
         **headers: str) -> Response:
    return get(gw.port, path, pki, client, headers=headers)


def test_cached_per_caller_after_authentication(gw: GatewayProcess, pki: DevPki) -> None:
    """A second GET is answered from the cache (same body, an Age header, the backend not
    asked); another certificate, or another query, is another entry; a request without
    a certificate is refused before the cache is looked at; HEAD is served from it."""
    first = call(gw, pki, "/catalog/requests")
    assert first.status == 200 and first.header("Age") is None
    before = reached(gw, pki)
    again = call(gw, pki, "/catalog/requests")
    assert again.status == 200 and again.body == first.body
    assert again.header("Age") is not None and int(again.header("Age") or "-1") >= 0
    assert reached(gw, pki) == before + 1  # only the counting request itself
    other = call(gw, pki, "/catalog/requests", "other-app")
    assert other.status == 200 and other.body != first.body  # its own entry
    assert call(gw, pki, "/catalog/requests?page=2").body != first.body
    refused = call(gw, pki, "/catalog/requests", None)
    assert refused.status == 401 and refused.json()["code"] == "900902"
    head = get(gw.port, "/catalog/requests", pki, "partner-app", method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("Age") is not None
    assert head.header("Content-Length") == str(len(first.body))
    metrics = scrape(gw.extra_ports["admin"])
    hits = value(metrics, "twistedgw_response_cache_lookups_total", api="Catalog:v1",
                 result="hit")
    misses = value(metrics, "twistedgw_response_cache_lookups_total", api="Catalog:v1",
                   result="miss")
    assert (hits, misses) == (2, 3)


def test_kept_alive_callers_keep_their_own_entries(gw: GatewayProcess, pki: DevPki) -> None:
    """A connection's second request is judged by the verdict its first one left (no
    Call): it still finds its caller's entry, and never another caller's."""
    answers: dict[str, list[bytes]] = {}
    for client in ("partner-app", "other-app"):
        conn = tls_connect(gw.port, context(pki, client))
        try:
            got = [send(conn, "/catalog/requests") for _ in range(3)]
        finally:
            conn.close()
        assert [r.status for r in got] == [200, 200, 200]
        assert got[0].header("Age") is None
        assert all(r.header("Age") is not None for r in got[1:])
        answers[client] = [r.body for r in got]
    for client, bodies in answers.items():
        assert len(set(bodies)) == 1, client  # the first answer, served again
    assert answers["partner-app"][0] != answers["other-app"][0]  # each caller its own
    # A new connection of the first caller's (its verdict shared with the old one's).
    assert call(gw, pki, "/catalog/requests").body == answers["partner-app"][0]


def test_cache_control_vary_and_size(gw: GatewayProcess, pki: DevPki) -> None:
    """no-store is never kept; max-age caps the timeout (and expires); Vary keeps one
    answer per value; an answer over max_entry_bytes streams whole and is not kept."""
    def twice(path: str, **headers: str) -> int:
        start = reached(gw, pki)
        for _ in range(2):
            assert call(gw, pki, path, **headers).status == 200
        return reached(gw, pki) - start - 1  # requests that reached the backend

    assert twice("/catalog/headers?set=Cache-Control:no-store") == 2
    assert twice("/catalog/headers?set=Cache-Control:max-age%3D1") == 1
    time.sleep(1.2)
    assert twice("/catalog/headers?set=Cache-Control:max-age%3D1") == 1  # expired: fetched
    assert twice("/catalog/headers?set=Vary:Accept", Accept="text/a") == 1
    assert twice("/catalog/headers?set=Vary:Accept", Accept="text/b") == 1
    assert twice("/catalog/headers?set=Vary:Accept", Accept="text/a") == 0
    big = call(gw, pki, "/catalog/bytes/5000")
    assert big.status == 200 and len(big.body) == 5000
    assert twice("/catalog/bytes/5000") == 2
    assert twice("/catalog/bytes/500") == 1
