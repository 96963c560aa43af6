"""Issue 25 items 4 and 7 through real processes: definitions written in WSO2's shapes
(an ``apiKey`` scheme ``in: query``, ``x-wso2-auth-header``, ``x-wso2-transports``), a
gateway with a TLS and a plain listener, a trusted proxy at 127.0.0.2 (clients pick their
loopback source address), and the echo backend that answers with what it received.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import jwtkit
from tests.backend_fixture import BackendProcess
from tests.harness import Response, free_port, request, send, start_gateway, table
from tests.test_openapi_gateway import Project
from twistedgw.testing.devpki import DevPki

IDP = jwtkit.ec("transport-idp")
KEY = "Query-Key-That-Must-Not-Leak"

KEYS = """\
openapi: 3.0.1
info: {{title: Keys, version: "1"}}
x-wso2-basePath: /keys
x-wso2-production-endpoints: {{urls: ["{backend}/v1"]}}
x-wso2-auth-header: X-Token
components:
  securitySchemes:
    key: {{type: apiKey, in: query, name: api_key}}
    bearer: {{type: http, scheme: bearer}}
paths:
  /pets:
    get:
      security: [{{key: []}}]
      responses: {{'200': {{description: ok}}}}
  /orders:
    get:
      security: [{{bearer: []}}]
      responses: {{'200': {{description: ok}}}}
"""

SERVED = """\
openapi: 3.0.1
info: {{title: {title}, version: "1"}}
x-wso2-basePath: /{title}
x-wso2-production-endpoints: {{urls: ["{backend}/{title}"]}}
x-wso2-transports: [{transports}]
security: []
paths:
  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
"""


@pytest.fixture
def project(tmp_path: Path, pki: DevPki) -> Iterator[Project]:
    p = Project(tmp_path / "project", pki)
    yield p
    for gw in p.started:
        gw.stop()


def _plain(port: int, path: str, source: str = "127.0.0.1",
           headers: dict[str, str] | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        return send(conn, path, headers=headers)
    finally:
        conn.close()


def test_api_key_in_the_query_and_the_bearer_tokens_header(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    log = project.root / "access.log"
    jwks = jwtkit.write_jwks(project.root / "idp.json", IDP)
    extra = (table("jwt_issuers", {"name": "idp", "issuer": jwtkit.ISSUER, "jwks": str(jwks),
                                   "audiences": [jwtkit.AUDIENCE]}, array=True)
             + table("api_keys", {"name": "app", "key_sha256": hashlib.sha256(
                 KEY.encode()).hexdigest()}, array=True)
             + table("access_log", {"path": str(log)}))
    gw = project.start([{"openapi": project.definition("keys.yaml",
                                                       KEYS.format(backend=backend.url))}],
                       extra=extra)
    ok = request(gw.port, f"/keys/pets?x=1&api_key={KEY}&y=%41", pki)
    assert ok.status == 200, ok.body
    assert ok.json()["path"] == "/v1/pets?x=1&y=%41"  # the key is the gateway's alone
    ok = request(gw.port, f"/keys/pets?api%5Fkey={KEY}", pki)  # any spelling of its name
    assert ok.status == 200 and ok.json()["path"] == "/v1/pets"
    missing = request(gw.port, "/keys/pets?x=1", pki, headers={"api_key": KEY})
    assert (missing.status, missing.json()["code"]) == (401, "900902")
    wrong = request(gw.port, "/keys/pets?api_key=guess", pki)
    assert (wrong.status, wrong.json()["code"]) == (401, "900901")
    # the bearer token in x-wso2-auth-header: read there, removed; Authorization is not
    # the gateway's here and passes
    token = "Bearer " + jwtkit.token(IDP)
    ok = request(gw.port, "/keys/orders", pki, headers={"X-Token": token,
                                                        "Authorization": "Basic dTpw"})
    assert ok.status == 200, ok.body
    seen = {n.lower(): v for n, v in ok.json()["headers"]}
    assert "x-token" not in seen and seen["authorization"] == "Basic dTpw"
    refused = request(gw.port, "/keys/orders", pki, headers={"Authorization": token})
    assert (refused.status, refused.json()["code"]) == (401, "900902")
    gw.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["path"] for r in lines[:2]] == ["/keys/pets", "/keys/pets"]
    for text in (log.read_text(), gw.output()):
        assert KEY not in text, "the API key reached a log"


def test_transports(project: Project, pki: DevPki, backend: BackendProcess) -> None:
    plain = free_port()
    listeners = [{"host": "127.0.0.1", "port": project.port},
                 {"host": "127.0.0.1", "port": plain, "tls": False}]
    extra = table("mutual_ssl", {"trusted_proxies": ["127.0.0.2/32"]})
    apis = [{"openapi": project.definition(f"{title}.yaml", SERVED.format(
        title=title, transports=transports, backend=backend.url))}
        for title, transports in (("secure", "https"), ("clear", "http"),
                                  ("both", "http, https"))]
    project.started.append(start_gateway(
        project.root, project.config(apis, listeners=listeners, extra=extra), project.port,
        wait_for=(plain,)))
    https = (403, {"code": "900908", "message": "Resource forbidden",
                   "description": "this API is served over https only"})

    def answer(r: Response) -> tuple[int, object]:
        return r.status, (r.json() if r.status != 200 else r.json()["path"])

    assert answer(request(project.port, "/secure/a", pki)) == (200, "/secure/a")
    assert answer(_plain(plain, "/secure/a")) == https
    # X-Forwarded-Proto counts from the trusted proxy only
    assert answer(_plain(plain, "/secure/a", headers={"X-Forwarded-Proto": "https"})) == https
    assert answer(_plain(plain, "/secure/a", "127.0.0.2",
                         {"X-Forwarded-Proto": "https"})) == (200, "/secure/a")
    assert answer(_plain(plain, "/secure/a", "127.0.0.2")) == https
    # an http-only API is not served over https (the Microgateway has it on its HTTP
    # listener only): 404
    status, body = answer(request(project.port, "/clear/a", pki))
    assert status == 404 and isinstance(body, dict) and body["description"] == (
        "No API is deployed for the path '/clear/a' over https: this API is served over http "
        "only")
    assert answer(_plain(plain, "/clear/a", "127.0.0.2",
                         {"X-Forwarded-Proto": "https"}))[0] == 404
    assert answer(_plain(plain, "/clear/a")) == (200, "/clear/a")
    assert answer(_plain(plain, "/both/a")) == (200, "/both/a")
    assert answer(request(project.port, "/both/a", pki)) == (200, "/both/a")
