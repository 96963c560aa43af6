"""Issue 25 items 1 and 2 through real processes: a gateway serving a definition written in
the Microgateway's documented endpoint shapes (API and resource level, by value and by
``#/x-wso2-endpoints/NAME``, production and sandbox, ``securityConfig`` type basic), a
real echo backend that answers with what it received, API keys and JWTs of both key
types, and ``twistedgw check`` as users run it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import jwtkit
from tests.backend_fixture import BackendProcess
from tests.harness import request, table
from tests.test_openapi_gateway import Project
from twistedgw.testing.devpki import DevPki

IDP = jwtkit.ec("endpoints-idp")
PROD_KEY, SANDBOX_KEY = "prod-key-1", "sandbox-key-1"
EP_PASSWORD = "ep-Secret-42"
SANDBOX_PASSWORD = "sand-Secret-43"


def definition(backend: str) -> str:
    return f"""\
openapi: 3.0.0
info: {{title: Swagger Petstore, version: 1.0.5}}
x-wso2-basePath: /petstore/v1
x-wso2-production-endpoints: {{urls: ["{backend}/prod"]}}
x-wso2-sandbox-endpoints: "#/x-wso2-endpoints/sandboxEp"
security: [{{api_key: []}}, {{oauth: []}}]
components:
  securitySchemes:
    api_key: {{type: apiKey, in: header, name: api_key}}
    oauth: {{type: http, scheme: bearer}}
paths:
  /pet/findByStatus:
    get:
      operationId: findPetsByStatus
      x-wso2-production-endpoints: "#/x-wso2-endpoints/myEndpoint3"
      responses: {{'200': {{description: ok}}}}
  /pet/{{petId}}:
    parameters: [{{name: petId, in: path, required: true, schema: {{type: integer}}}}]
    x-wso2-sandbox-endpoints: {{urls: ["{backend}/path-sandbox"]}}
    get:
      responses: {{'200': {{description: ok}}}}
  /store/inventory:
    get:
      security: []
      responses: {{'200': {{description: ok}}}}
x-wso2-endpoints:
  - myEndpoint3:
      urls: ["{backend}/ep3"]
      securityConfig: {{type: basic, username: kim}}
  - sandboxEp:
      urls: ["{backend}/sand"]
      securityConfig: {{type: basic, username: sandy}}
"""


PRODUCTION_ONLY = """\
openapi: 3.0.0
info: {{title: Production only, version: "1"}}
x-wso2-basePath: /prodonly
x-wso2-production-endpoints: {{urls: ["{backend}/only"]}}
security: [{{api_key: []}}]
components:
  securitySchemes:
    api_key: {{type: apiKey, in: header, name: api_key}}
paths:
  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
"""


@pytest.fixture
def project(tmp_path: Path, pki: DevPki) -> Iterator[Project]:
    p = Project(tmp_path / "project", pki)
    yield p
    for gw in p.started:
        gw.stop()


def _extra(where: Project) -> str:
    import hashlib

    jwks = jwtkit.write_jwks(where.root / "idp.json", IDP)
    text = table("authz", {"path": "/_twistedgw/authz", "original_uri_header": "X-Original-URI",
                           "original_method_header": "X-Original-Method"})
    text += table("jwt_issuers", {"name": "idp", "issuer": jwtkit.ISSUER, "jwks": str(jwks),
                                 "audiences": [jwtkit.AUDIENCE]}, array=True)
    for name, key, keytype in (("prod-app", PROD_KEY, "production"),
                               ("sandbox-app", SANDBOX_KEY, "sandbox")):
        text += table("api_keys", {"name": name, "key_sha256": hashlib.sha256(
            key.encode()).hexdigest(), "keytype": keytype}, array=True)
    return text


def _seen(response: object) -> tuple[str, list[str]]:
    """(the path the echo backend got, its Authorization values)."""
    assert response.status == 200, (response.status, response.body)  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    return body["path"], [v for n, v in body["headers"] if n.lower() == "authorization"]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_endpoints_by_key_type_with_backend_credentials(
    project: Project, pki: DevPki, backend: BackendProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.root / "sandbox.password").write_text(SANDBOX_PASSWORD + "\n")
    apis = [
        {"openapi": project.definition("petstore.yaml", definition(backend.url)),
         "backend_credentials": [{"endpoint": "sandboxEp", "username": "sandy",
                                  "password_file": "sandbox.password"}]},
        {"openapi": project.definition("prodonly.yaml",
                                       PRODUCTION_ONLY.format(backend=backend.url))},
    ]
    # item 2: a missing password is a check error naming the endpoint
    monkeypatch.delenv("myEndpoint3_prod_basic_password", raising=False)
    out = project.check(apis, extra=_extra(project))
    assert out.returncode == 2
    assert ("#/x-wso2-endpoints/0/myEndpoint3/securityConfig: the production endpoint "
            "'myEndpoint3' asks for basic credentials but no password is given: set the "
            "environment variable myEndpoint3_prod_basic_password") in out.stderr
    # the Microgateway's variable, in the gateway's environment as it was in its runtime's
    monkeypatch.setenv("myEndpoint3_prod_basic_password", EP_PASSWORD)
    gw = project.start(apis, extra=_extra(project))

    def get(path: str, headers: dict[str, str]) -> object:
        return request(gw.port, path, pki, headers=headers)

    prod = {"api_key": PROD_KEY}
    sand = {"api_key": SANDBOX_KEY}
    token = {"Authorization": "Bearer " + jwtkit.token(IDP)}
    sand_token = {"Authorization": "Bearer " + jwtkit.token(
        IDP, jwtkit.claims(keytype="SANDBOX"))}
    # the operation's own endpoint, by reference, with its credentials; the client's
    # bearer token never reaches it, the backend's Basic credentials do
    assert _seen(get("/petstore/v1/pet/findByStatus", token)) == (
        "/ep3/pet/findByStatus", [_basic("kim", EP_PASSWORD)])
    assert _seen(get("/petstore/v1/pet/findByStatus", prod)) == (
        "/ep3/pet/findByStatus", [_basic("kim", EP_PASSWORD)])
    # sandbox credentials: the API's sandbox endpoint (with its own credentials)...
    assert _seen(get("/petstore/v1/pet/findByStatus", sand)) == (
        "/sand/pet/findByStatus", [_basic("sandy", SANDBOX_PASSWORD)])
    assert _seen(get("/petstore/v1/pet/findByStatus", sand_token)) == (
        "/sand/pet/findByStatus", [_basic("sandy", SANDBOX_PASSWORD)])
    # ... or the path's own sandbox endpoint; production goes to the API's
    assert _seen(get("/petstore/v1/pet/7", sand)) == ("/path-sandbox/pet/7", [])
    assert _seen(get("/petstore/v1/pet/7", token)) == ("/prod/pet/7", [])
    # an open operation's callers are production; a client's Basic header passes where the
    # endpoint has no credentials of its own, and is replaced where it has
    evil = {"Authorization": _basic("evil", "guess")}
    assert _seen(get("/petstore/v1/store/inventory", evil)) == (
        "/prod/store/inventory", [_basic("evil", "guess")])
    # a sandbox key where there is no sandbox endpoint
    refused = get("/prodonly/a", sand)
    assert refused.status == 401  # type: ignore[attr-defined]
    assert refused.json() == {  # type: ignore[attr-defined]
        "code": "900901", "message": "Invalid Credentials",
        "description": "sandbox key offered to an API with no sandbox endpoint"}
    assert _seen(get("/prodonly/a", prod))[0] == "/only/a"
    # the authz endpoint: the proxy that asks forwards to its own backend, so a sandbox
    # caller is refused there, a production one allowed
    judged = {"X-Original-URI": "/petstore/v1/pet/7", "X-Original-Method": "GET"}
    assert get("/_twistedgw/authz", {**judged, **prod}).status == 200  # type: ignore[attr-defined]
    refused = get("/_twistedgw/authz", {**judged, **sand})
    assert refused.status == 403  # type: ignore[attr-defined]
    assert refused.json()["description"].startswith(  # type: ignore[attr-defined]
        "a sandbox credential goes to the API's sandbox endpoint, which only the gateway")
    log = gw.output()
    assert "myEndpoint3" in log and "basic auth as 'kim'" in log
    for secret in (EP_PASSWORD, SANDBOX_PASSWORD, base64.b64encode(
            f"kim:{EP_PASSWORD}".encode()).decode()):
        assert secret not in log, "a backend password reached the log"
    assert os.environ["myEndpoint3_prod_basic_password"] == EP_PASSWORD


FRONTED_API = """\
openapi: 3.0.1
info: {{title: Sandboxed, version: "1"}}
x-wso2-basePath: /sandboxed
x-wso2-production-endpoints: {{urls: ["{backend}/prod"]}}
x-wso2-sandbox-endpoints: {{urls: ["{backend}/sand"]}}
x-wso2-transports: [https]
security: [{{key: []}}]
components:
  securitySchemes:
    key: {{type: apiKey, in: query, name: api_key}}
paths:
  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
"""


def test_the_features_through_nginx(tmp_path: Path, pki: DevPki,
                                    backend: BackendProcess) -> None:
    """Issue 25 items 1, 2, 4 and 7 in the NGINX-fronted mode (conf/nginx-fronted/ with a
    real NGINX): the API takes the gateway path (nginx-config says why), where twistedgw
    picks the endpoint by key type, sets the backend's credentials, removes the query key
    and judges the scheme (NGINX's X-Forwarded-Proto, from its trusted socket)."""
    import hashlib

    from tests.test_nginx_fronted import start_fronted

    (tmp_path / "defs").mkdir()
    definition = tmp_path / "defs" / "sandboxed.yaml"
    definition.write_text(FRONTED_API.format(backend=backend.url))
    (tmp_path / "defs" / "pw").write_text(EP_PASSWORD)
    extra = (table("api_keys", {"name": "sandbox-app", "keytype": "sandbox", "key_sha256":
                                hashlib.sha256(SANDBOX_KEY.encode()).hexdigest()}, array=True)
             + table("apis", {"openapi": str(definition)}, array=True)
             + table("apis.backend_credentials", {"endpoint": "production", "username": "kim",
                                                  "password_file": str(tmp_path / "defs" / "pw")},
                     array=True))
    fronted = start_fronted(tmp_path, pki, backend, extra=extra)
    try:
        site = (tmp_path / "nginx" / "twistedgw.conf").read_text()
        assert "# Sandbox or per-operation endpoints" in site and EP_PASSWORD not in site
        production = fronted.via_nginx("/sandboxed/a?x=1&api_key=demo-key", None)
        assert _seen(production) == ("/prod/a?x=1", [_basic("kim", EP_PASSWORD)])
        sandbox = fronted.via_nginx(f"/sandboxed/a?api_key={SANDBOX_KEY}", None)
        assert _seen(sandbox) == ("/sand/a", [])
        missing = fronted.via_nginx("/sandboxed/a", None)
        assert (missing.status, missing.json()["code"]) == (401, "900902")
    finally:
        fronted.nginx.stop()
        fronted.gateway.stop()
