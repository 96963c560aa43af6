"""WSO2 definitions through real processes (issue 24): ``twistedgw check`` as users run
it, and gateways serving definitions written here in WSO2's documented shapes (the
Microgateway's samples, its and Choreo Connect's integration definitions such as
``mutual_ssl_openAPI``, API Manager exports), with a real echo backend, TLS with
client certificates, API keys and JWTs.
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import jwtkit
from tests.backend_fixture import BackendProcess
from tests.bigdefinition import definition as big_definition
from tests.h2client import H2Client
from tests.harness import free_port, request, start_gateway, table
from tests.opskit import wait_until
from tests.rawhttp import exchange
from tests.test_openapi_gateway import KEY, Project
from twistedgw.testing.devpki import DevPki

IDP = jwtkit.ec("wso2-idp")


@pytest.fixture
def project(tmp_path: Path, pki: DevPki) -> Iterator[Project]:
    p = Project(tmp_path / "project", pki)
    yield p
    for gw in p.started:
        gw.stop()


def _issuer(where: Project) -> str:
    jwks = jwtkit.write_jwks(where.root / "idp.json", IDP)
    return table("jwt_issuers", {"name": "idp", "issuer": jwtkit.ISSUER, "jwks": str(jwks),
                                 "audiences": [jwtkit.AUDIENCE]}, array=True)


def _bearer() -> dict[str, str]:
    return {"Authorization": "Bearer " + jwtkit.token(IDP)}


def _check(where: Project, text: str) -> subprocess.CompletedProcess[str]:
    (where.root / "gateway.toml").write_text(text)
    return where.run_cli("check")


# -- item 1: check is strict where it must be, lenient elsewhere, and fast -----------------


def test_check_of_a_large_public_definition(project: Project, backend: BackendProcess) -> None:
    """A definition of GitHub's size and shape (10 MB of YAML, about 1,300 operations,
    everything by $ref, no security declared), with two problems outside routing and
    security (a dangling $ref in a schema, an example by URL): check passes, warns once
    each, names the JSON pointers, and stays within 5 s of CPU (42-58 s before)."""
    doc = big_definition(operations=1300, schemas=1100, examples=1100)
    schema = doc["components"]["schemas"]["item-3"]["properties"]
    schema["field_0_3"] = {"$ref": "#/components/schemas/gone"}
    doc["paths"]["/repos/{owner}/{repo}/area1/things/{thing_id}"]["get"]["responses"]["200"][
        "content"]["application/json"]["examples"]["default"] = {"$ref": "https://x/e.json"}
    text = yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                     sort_keys=False)
    assert len(text) > 9_000_000
    rel = project.definition("big.yaml", text)
    config = project.config([{"openapi": rel, "context": "/big", "api_key": "mandatory"}],
                            api_keys={"app": KEY})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _check(project, config)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0, out.stderr[-2000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 5.0, f"check took {cpu:.1f} s of CPU"
    where = f"twistedgw: warning: {project.root / 'gateway.toml'}: apis[0].openapi: " \
            f"{project.root / 'apis' / 'big.yaml'}: "
    assert sorted(out.stderr.splitlines()) == sorted([
        where + "#/components/schemas/item-3/properties/field_0_3: $ref target "
        "#/components/schemas/gone does not exist",
        where + "#/paths/~1repos~1{owner}~1{repo}~1area1~1things~1{thing_id}/get/responses/"
        "200/content/application~1json/examples/default: $ref 'https://x/e.json' names a URL; "
        "only files beside the definition are read",
    ])
    assert "OK (1 API, 1 listener)" in out.stdout


# -- item 2: nothing silent ---------------------------------------------------------------


def test_check_refuses_what_it_cannot_honour(project: Project, backend: BackendProcess) -> None:
    """The Microgateway's own samples use these; each is refused by name and pointer."""
    rel = project.definition("features.yaml", f"""\
openapi: 3.0.0
info: {{title: Swagger Petstore, version: 1.0.0}}
x-wso2-basePath: /petstore/v1
x-wso2-production-endpoints: "#/x-wso2-endpoints/myEndpoint"
x-wso2-cors:
  access-control-allow-origins: [test.com, example.com]
  access-control-allow-methods: [GET, PUT, POST]
x-wso2-response-cache: {{enabled: true, cacheTimeoutInSeconds: 60}}
x-wso2-mutual-sll: mandatory
x-wso2-disable-security: true
paths:
  /pet/findByStatus:
    get:
      x-wso2-request-interceptor: validateRequest
      x-wso2-sandbox-endpoints: {{urls: ["{backend.url}/sandbox"]}}
      responses: {{'200': {{description: ok}}}}
x-wso2-endpoints:
  - myEndpoint:
      urls: ["{backend.url}/v2"]
      securityConfig: {{type: basic, username: roshan}}
""")
    out = _check(project, project.config([{"openapi": rel}]))
    assert out.returncode == 2
    prefix = f"twistedgw: {project.root / 'gateway.toml'}: apis[0].openapi: " \
             f"{project.root / 'apis' / 'features.yaml'}: "
    lines = out.stderr.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    said = sorted(line[len(prefix):] for line in lines)
    assert said == sorted([
        "#/x-wso2-mutual-sll: unknown extension 'x-wso2-mutual-sll': did you mean "
        "'x-wso2-mutual-ssl'? (a misspelt security extension would be ignored; fix it or "
        "remove it)",
        "#/paths/~1pet~1findByStatus/get/x-wso2-request-interceptor: "
        "x-wso2-request-interceptor is not supported: interceptors are Ballerina or Java code "
        "that twistedgw cannot run; a twistedgw plugin does the same job ([[apis.plugins]], a "
        "request or response transform: see docs/tutorials/writing-a-plugin.md)",
    ])


# -- item 3: WSO2's whole security rule ---------------------------------------------------


def mutual_ssl_openapi(backend: str) -> str:
    """The shape of WSO2's mutual_ssl_openAPI (Choreo Connect's integration definition, as
    API Manager exports it): Swagger 2.0, mTLS mandatory and oauth2 or api_key."""
    return f"""\
swagger: "2.0"
info:
  title: MutualSSL
  version: 1.0.5
host: 127.0.0.1:1
basePath: /v2
schemes: [http]
paths:
  /pet/findByStatus:
    get:
      parameters:
        - {{name: status, in: query, required: true, type: string}}
      responses:
        "200": {{description: successful operation, schema: {{$ref: '#/definitions/Pets'}}}}
      x-auth-type: Application & Application User
      x-throttling-tier: Unlimited
      x-wso2-application-security:
        security-types: [oauth2, api_key]
        optional: false
definitions:
  Pets: {{type: array, items: {{$ref: '#/definitions/Pet'}}}}
  Pet: {{type: object, properties: {{name: {{type: string, example: doggie}}}}}}
x-wso2-auth-header: Authorization
x-wso2-cors:
  corsConfigurationEnabled: false
  accessControlAllowOrigins: ['*']
x-wso2-production-endpoints:
  urls: ["{backend}/v2"]
  type: http
x-wso2-basePath: /mtls/1.0.0
x-wso2-transports: [http, https]
x-wso2-mutual-ssl: Mandatory
x-wso2-application-security:
  security-types: [oauth2, api_key]
  optional: false
x-wso2-response-cache:
  enabled: false
  cacheTimeoutInSeconds: 300
"""


NO_SECURITY = """\
openapi: 3.0.1
info: {{title: Plain, version: "1"}}
x-wso2-basePath: /plain
x-wso2-production-endpoints: {{urls: ["{backend}/plain"]}}
paths:
  /items:
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


def test_wso2_two_level_security(project: Project, pki: DevPki, backend: BackendProcess) -> None:
    mtls = project.definition("mtls.yaml", mutual_ssl_openapi(backend.url))
    plain = project.definition("plain.yaml", NO_SECURITY.format(backend=backend.url))
    text = project.config([{"openapi": mtls, "aliases": ["partner-root"]}, {"openapi": plain}],
                          api_keys={"app": KEY}) + _issuer(project)
    gw = start_gateway(project.root, text, project.port)
    project.started.append(gw)
    path = "/mtls/1.0.0/pet/findByStatus?status=sold"

    def status(client: str | None, headers: dict[str, str]) -> int:
        return request(gw.port, path, pki, client, headers=headers).status

    # the transport level is mandatory, and one of the application level's types must pass
    assert status("partner-app", {"apikey": KEY}) == 200
    assert status("partner-app", _bearer()) == 200
    r = request(gw.port, path, pki, "partner-app")
    assert r.status == 401 and r.json()["code"] == "900902"
    assert status("partner-app", {"apikey": "wrong"}) == 401
    assert status(None, {"apikey": KEY}) == 401
    assert status(None, _bearer()) == 401
    assert status("other-app", {"apikey": KEY}) == 401  # an alias the API does not accept
    # a definition that declares no security is OAuth2: a bearer token is mandatory
    assert request(gw.port, "/plain/items", pki, headers=_bearer()).status == 200
    assert request(gw.port, "/plain/items", pki).status == 401
    out = project.run_cli("routes")
    assert "mutual_ssl[partner-root]:mandatory (api_key|jwt):mandatory" in out.stdout
    assert "/plain/items" in out.stdout and out.stdout.count(" jwt:mandatory") == 2

    # mTLS mandatory with an optional OAuth2 alternative never consults the token: no
    # [[jwt_issuers]] needed
    optional = mutual_ssl_openapi(backend.url).replace("optional: false", "optional: true")
    rel = project.definition("optional.yaml", optional)
    out = _check(project, project.config([{"openapi": rel}], api_keys={"app": KEY}))
    assert out.returncode == 0, out.stderr


# -- item 4: TOML security is never silently lost ------------------------------------------


def test_toml_security_closes_what_the_definition_opens(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    text = f"""\
openapi: 3.0.1
info: {{title: Store, version: "2"}}
x-wso2-basePath: /store
x-wso2-production-endpoints: {{urls: ["{backend.url}/store"]}}
x-wso2-disable-security: true
paths:
  /inventory:
    get: {{responses: {{'200': {{description: ok}}}}}}
  /orders:
    get:
      x-wso2-disable-security: true
      responses: {{'200': {{description: ok}}}}
"""
    every = project.definition("every.yaml", text)
    level = project.definition("level.yaml", text.replace("/store", "/level"))
    apis = [{"openapi": every, "mutual_ssl": "mandatory"},
            {"openapi": level, "mutual_ssl": "mandatory", "toml_security": "api_level"}]
    out = _check(project, project.config(apis))
    assert out.returncode == 0, out.stderr
    changed = [line.strip() for line in out.stdout.splitlines() if "closed by" in line]
    assert changed == [
        "Store:2: GET /store/inventory: open in the definition (x-wso2-disable-security at "
        "#/x-wso2-disable-security), closed by the [[apis]] table's security keys: "
        "mutual_ssl:mandatory",
        "Store:2: GET /store/orders: open in the definition (x-wso2-disable-security at "
        "#/paths/~1orders/get/x-wso2-disable-security), closed by the [[apis]] table's "
        "security keys: mutual_ssl:mandatory",
        "Store:2: GET /level/inventory: open in the definition (x-wso2-disable-security at "
        "#/x-wso2-disable-security), closed by the [[apis]] table's security keys: "
        "mutual_ssl:mandatory",
    ]
    gw = start_gateway(project.root, project.config(apis), project.port)
    project.started.append(gw)
    for path in ("/store/inventory", "/store/orders", "/level/inventory"):
        assert request(gw.port, path, pki).status == 401, path
        assert request(gw.port, path, pki, "partner-app").status == 200, path
    # api_level: the operation's own x-wso2-disable-security keeps it open
    assert request(gw.port, "/level/orders", pki).status == 200
    # the startup log shows the effective security of every operation
    log = gw.output()
    assert "  GET /store/orders: mutual_ssl:mandatory" in log
    assert "  GET /level/orders: open" in log


# -- item 5: errors in the Microgateway's shape ----------------------------------------------


def test_error_bodies_in_the_microgateways_shape(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    plain_port, h2_port = free_port(), free_port()
    apis = [
        {"name": "m", "context": "/m", "backend": backend.url, "mutual_ssl": "mandatory",
         "max_body_bytes": 10},
        {"name": "down", "context": "/down", "backend": f"http://127.0.0.1:{free_port()}"},
        {"openapi": project.definition("p.yaml", NO_SECURITY.format(backend=backend.url)
                                       .replace("paths:", "security: []\npaths:"))},
    ]
    listeners = [{"host": "127.0.0.1", "port": project.port},
                 {"host": "127.0.0.1", "port": plain_port, "tls": False},
                 {"host": "127.0.0.1", "port": h2_port, "http2": True}]
    extra = table("errors", {"style": "mgw"}) + table("authz", {"path": "/_authz"}) + \
        table("limits", {"max_header_bytes": 4096})
    text = project.config(apis, listeners=listeners, extra=extra)
    gw = start_gateway(project.root, text, project.port, wait_for=[plain_port, h2_port])
    project.started.append(gw)

    def fault(status: int, body: bytes, code: int) -> None:
        parsed = json.loads(body)
        assert set(parsed) == {"fault"} and parsed["fault"]["code"] == code, (status, parsed)
        assert set(parsed["fault"]) == {"code", "message", "description"}

    for path, kwargs, status, code in [
        ("/m/x", {}, 401, 900902),  # a scheme refuses
        ("/nowhere", {}, 404, 404),  # no API
        ("/plain/nothing", {}, 404, 900906),  # no operation
        ("/plain/items", {"method": "DELETE"}, 405, 405),
        ("/down/x", {}, 503, 101503),  # the backend is down
        ("/_authz", {"headers": {"X-Original-URI": "/m/x"}}, 401, 900902),  # authz endpoint
    ]:
        r = request(gw.port, path, pki, **kwargs)
        assert r.status == status, (path, r.status, r.body)
        fault(r.status, r.body, code)
    r = request(gw.port, "/m/x", pki, "partner-app", method="POST", body=b"x" * 100)
    assert r.status == 413
    fault(r.status, r.body, 413)
    # refused by the front before dispatch
    r = exchange(plain_port, b"GET /m/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 +
                 b"\r\n\r\n")
    assert r.status == 431
    fault(r.status, r.body, 431)
    # HTTP/2
    client = H2Client(h2_port, pki)
    try:
        answer = client.get("/m/x")
    finally:
        client.close()
    assert answer.status == 401
    fault(answer.status, answer.body, 900902)


# -- item 6 -------------------------------------------------------------------------------


def test_same_name_and_version_and_the_startup_log(
    project: Project, backend: BackendProcess
) -> None:
    second = free_port()
    apis = [{"name": "orders", "version": "v1", "context": "/a", "backend": backend.url},
            {"name": "orders", "version": "v1", "context": "/b", "backend_mode": "failover",
             "backends": [backend.url, f"http://127.0.0.1:{second}"]}]
    out = _check(project, project.config(apis))
    assert out.returncode == 0
    assert out.stderr.splitlines() == [
        f"twistedgw: warning: {project.root / 'gateway.toml'}: apis[1]: the same name and "
        "version as apis[0] ('orders:v1'): logs and metrics cannot tell them apart"]
    gw = start_gateway(project.root, project.config(apis), project.port)
    project.started.append(gw)
    # The startup summary is written after the port opens (it names the bound ports):
    # wait for its last line.
    wait_until(lambda: "the same name and version as apis[0]" in gw.output(),
               what="the startup summary's warning")
    log = gw.output()
    assert f"API orders:v1 at /a -> {backend.url}: open" in log
    assert (f"API orders:v1 at /b -> {backend.url}, http://127.0.0.1:{second} (failover): "
            "open") in log
    assert "the same name and version as apis[0]" in log
