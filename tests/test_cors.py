"""CORS through a real gateway (#25 item 6): definitions written in WSO2's shapes (the
Microgateway 3.x sample ``cors_sample.yaml``'s kebab-case keys, API Manager's camelCase
export) and a TOML ``[apis.cors]`` table, a browser's preflight sent by curl over
HTTP/1.1 and HTTP/2, real TLS with client certificates, the echo backend."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import get
from tests.harness import GatewayProcess
from tests.test_openapi_gateway import Project
from twistedgw.testing.devpki import DevPki

APP = "https://app.example.com"

# The Microgateway 3.x sample's shape (samples/cors_sample.yaml), mutual TLS mandatory and
# an options operation nowhere: without the gateway's own answer a preflight gets 401.
MGW_DEFINITION = """\
openapi: 3.0.0
info: {{title: Orders, version: 1.0.0}}
x-wso2-basePath: /orders/v1
x-wso2-production-endpoints:
  urls: ["{backend}/orders"]
x-wso2-mutual-ssl: mandatory
x-wso2-cors:
  access-control-allow-origins: ["https://app.example.com"]
  access-control-allow-headers: [Authorization, Content-Type]
  access-control-allow-methods: [GET, PUT, POST]
  access-control-allow-credentials: true
security: []
paths:
  /items/{{id}}:
    parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]
    get: {{responses: {{'200': {{description: ok}}}}}}
    put: {{responses: {{'200': {{description: ok}}}}}}
"""

# API Manager's export (camelCase keys, corsConfigurationEnabled), open, any origin.
APIM_DEFINITION = """\
openapi: 3.0.1
info: {{title: Catalog, version: v2}}
x-wso2-basePath: /catalog/v2
x-wso2-production-endpoints: {{urls: ["{backend}/catalog"], type: http}}
x-wso2-cors:
  corsConfigurationEnabled: true
  accessControlAllowOrigins: ["*"]
  accessControlAllowCredentials: false
  accessControlAllowHeaders: [authorization, Content-Type, apikey]
  accessControlAllowMethods: [GET, POST]
x-wso2-disable-security: true
paths:
  /books:
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


@pytest.fixture
def gw(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> Iterator[GatewayProcess]:
    project = Project(tmp_path / "project", pki)
    apis = [
        {"openapi": project.definition("orders.yaml",
                                       MGW_DEFINITION.format(backend=backend.url))},
        {"openapi": project.definition("catalog.yaml",
                                       APIM_DEFINITION.format(backend=backend.url))},
        {"name": "reports", "context": "/reports", "backend": backend.url,
         "api_key": "mandatory",
         "cors": {"allow_origins": [APP, "http://localhost:3000"],
                  "allow_headers": ["apikey"], "expose_headers": ["WWW-Authenticate"],
                  "max_age": 600}},
    ]
    listeners = [{"host": "127.0.0.1", "port": project.port, "http2": True}]
    started = project.start(apis, api_keys={"app": "k-123"}, listeners=listeners)
    try:
        yield started
    except BaseException:
        print(started.output())
        raise
    finally:
        started.stop()


def curl_preflight(gw: GatewayProcess, pki: DevPki, path: str, origin: str, method: str,
                   headers: str | None = None, *, http2: bool = False) -> tuple[int, dict[
                       str, list[str]]]:
    """A browser's preflight as curl sends it (no credentials: no client certificate)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-D", "-", "--cacert", str(pki.server_ca),
            "-X", "OPTIONS", "-H", f"Origin: {origin}",
            "-H", f"Access-Control-Request-Method: {method}",
            "--http2" if http2 else "--http1.1", f"https://localhost:{gw.port}{path}"]
    if headers is not None:
        argv[-1:-1] = ["-H", f"Access-Control-Request-Headers: {headers}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    lines = out.strip().splitlines()
    status = int(lines[0].split()[1])
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return status, found


def test_preflight_is_answered_before_operation_matching_and_authentication(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """The mTLS-mandatory API of the Microgateway sample's shape, which has no options
    operation: curl's preflight (no certificate) gets 200 and the CORS headers, over
    HTTP/1.1 and HTTP/2; the same preflight from another origin, or for a method or a
    header not allowed, gets 403 without any; an OPTIONS that is not a preflight is
    still the API's (405: the definition has no options operation)."""
    for http2 in (False, True):
        status, headers = curl_preflight(gw, pki, "/orders/v1/items/7", APP, "PUT",
                                         "content-type, authorization", http2=http2)
        assert status == 200, headers
        assert headers["access-control-allow-origin"] == [APP]
        assert headers["access-control-allow-credentials"] == ["true"]
        assert headers["access-control-allow-methods"] == ["PUT"]
        assert headers["access-control-allow-headers"] == ["content-type, authorization"]
        assert "Origin" in headers["vary"][0]
    for origin, method, asked in (("https://evil.example", "PUT", None),
                                  (APP, "DELETE", None), (APP, "PUT", "X-Secret")):
        status, headers = curl_preflight(gw, pki, "/orders/v1/items/7", origin, method, asked)
        assert status == 403, (origin, method, headers)
        assert not [h for h in headers if h.startswith("access-control-")], headers
    plain = get(gw.port, "/orders/v1/items/7", pki, "partner-app", method="OPTIONS")
    assert plain.status == 405 and plain.header("Access-Control-Allow-Origin") is None


def test_answers_and_refusals_carry_the_cors_headers(gw: GatewayProcess, pki: DevPki) -> None:
    """The actual request: allowed with a certificate (forwarded) and refused without one
    (401): both readable by the page (Access-Control-Allow-Origin, -Credentials, Vary);
    a page of another origin gets no CORS headers; the backend's own are replaced."""
    ok = get(gw.port, "/orders/v1/items/7", pki, "partner-app", headers={"Origin": APP})
    assert ok.status == 200 and ok.json()["path"] == "/orders/items/7"
    assert ok.header("Access-Control-Allow-Origin") == APP
    assert ok.header("Access-Control-Allow-Credentials") == "true"
    assert "Origin" in ok.header_all("Vary")
    refused = get(gw.port, "/orders/v1/items/7", pki, headers={"Origin": APP})
    assert refused.status == 401 and refused.json()["code"] == "900902"
    assert refused.header("Access-Control-Allow-Origin") == APP
    other = get(gw.port, "/orders/v1/items/7", pki, "partner-app",
                headers={"Origin": "https://evil.example"})
    assert other.status == 200
    assert not [n for n, _ in other.headers if n.lower().startswith("access-control-")]
    assert "Origin" in other.header_all("Vary")
    # The backend says Access-Control-Allow-Origin: * itself: the API's answer replaces it.
    set_by_backend = get(
        gw.port, "/reports/headers?set=Access-Control-Allow-Origin:*", pki,
        headers={"Origin": APP, "apikey": "k-123"})
    assert set_by_backend.status == 200
    assert set_by_backend.header_all("Access-Control-Allow-Origin") == [APP]


def test_api_manager_export_and_toml_table(gw: GatewayProcess, pki: DevPki) -> None:
    """API Manager's camelCase export with "*": the preflight answers "*" (no credentials,
    no Vary on actual answers); the TOML table's max_age and exposed headers, and its
    401 readable by the page with WWW-Authenticate exposed."""
    status, headers = curl_preflight(gw, pki, "/catalog/v2/books", "https://any.example",
                                     "POST", "apikey")
    assert status == 200
    assert headers["access-control-allow-origin"] == ["*"]
    assert "access-control-allow-credentials" not in headers
    books = get(gw.port, "/catalog/v2/books", pki, headers={"Origin": "https://x.example"})
    assert books.status == 200 and books.header("Access-Control-Allow-Origin") == "*"
    status, headers = curl_preflight(gw, pki, "/reports/daily", "http://localhost:3000",
                                     "GET", "apikey")
    assert status == 200 and headers["access-control-max-age"] == ["600"]
    refused = get(gw.port, "/reports/daily", pki, headers={"Origin": "http://localhost:3000"})
    assert refused.status == 401
    assert refused.header("Access-Control-Allow-Origin") == "http://localhost:3000"
    assert refused.header("Access-Control-Expose-Headers") == "WWW-Authenticate"
