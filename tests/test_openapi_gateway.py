"""APIs from OpenAPI definitions, through real gateway processes and a real echo backend.

Definitions are written by the tests in WSO2 Microgateway's style (``x-wso2-*``),
as OpenAPI 3.1 (``mutualTLS`` and per-operation security) and as OpenAPI 2.0
(``basePath``); the gateway is started as users start it and reads them relative
to its config file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import (
    GatewayProcess,
    env,
    free_port,
    gateway_config,
    request,
    start_gateway,
)
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki

KEY = "s3cret-key"


def petstore(backend: str, *, mtls: str = "mandatory", app: str = "optional: true") -> str:
    """WSO2's petstore as a Microgateway project defines it."""
    return f"""\
openapi: 3.0.1
info:
  title: Swagger Petstore
  version: 1.0.5
x-wso2-basePath: /petstore/{{version}}
x-wso2-production-endpoints:
  urls:
    - {backend}/v2
x-wso2-mutual-ssl: {mtls}
x-wso2-application-security:
  security-types:
    - api_key
  {app}
paths:
  /pet/{{petId}}:
    parameters:
      - name: petId
        in: path
        required: true
        schema:
          type: integer
    get:
      responses:
        200:
          description: a pet
    delete:
      responses:
        200:
          description: deleted
  /pet/findByStatus:
    get:
      responses:
        200:
          description: pets
  /store/inventory:
    get:
      x-wso2-disable-security: true
      responses:
        200:
          description: open to all
"""


def accounts_31(backend: str, *, bearer: bool = False) -> str:
    """OpenAPI 3.1: mutualTLS at the top, operations that replace it."""
    extra = ""
    if bearer:
        extra = """\
  /tokens:
    get:
      security:
        - bearer: []
      responses:
        '200':
          description: needs a JWT
"""
    return f"""\
openapi: 3.1.0
info:
  title: Accounts
  version: v1
servers:
  - url: {backend}/accounts
components:
  securitySchemes:
    mtls:
      type: mutualTLS
    key:
      type: apiKey
      in: header
      name: X-Api-Key
    bearer:
      type: http
      scheme: bearer
security:
  - mtls: []
paths:
  /balance:
    get:
      responses:
        '200':
          description: mTLS (the API's)
  /public:
    get:
      security: []
      responses:
        '200':
          description: open
  /transfer:
    post:
      security:
        - mtls: []
          key: []
      responses:
        '200':
          description: certificate and key
  /status:
    get:
      security:
        - mtls: []
        - key: []
      responses:
        '200':
          description: certificate or key
{extra}"""


def legacy_20(host: str) -> str:
    return f"""\
swagger: "2.0"
info:
  title: Legacy
  version: "2"
host: {host}
basePath: /legacy/v2
schemes:
  - http
security: []
paths:
  /items/{{id}}.json:
    get:
      parameters:
        - name: id
          in: path
          required: true
          type: string
      responses:
        200:
          description: an item
"""


def endpoints_def(urls: list[str], kind: str) -> str:
    listed = "".join(f"    - {u}\n" for u in urls)
    return f"""\
openapi: 3.0.3
info:
  title: Spread
  version: "1"
x-wso2-basePath: /spread
x-wso2-production-endpoints:
  type: {kind}
  urls:
{listed}security: []
paths:
  /who:
    get:
      responses:
        '200':
          description: ok
    post:
      responses:
        '200':
          description: ok
"""


class Project:
    """A directory holding a gateway config and its definitions under apis/."""

    def __init__(self, root: Path, pki: DevPki) -> None:
        self.root = root
        self.pki = pki
        (root / "apis").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.started: list[GatewayProcess] = []

    def definition(self, name: str, text: str) -> str:
        (self.root / "apis" / name).write_text(text)
        return f"apis/{name}"

    def config(self, apis: list[dict[str, Any]], **kwargs: Any) -> str:
        return gateway_config(self.pki, apis, port=self.port, **kwargs)

    def start(self, apis: list[dict[str, Any]], **kwargs: Any) -> GatewayProcess:
        gw = start_gateway(self.root, self.config(apis, **kwargs), self.port)
        self.started.append(gw)
        return gw

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "twistedgw", *args, "--config",
             str(self.root / "gateway.toml")],
            capture_output=True, text=True, env=env(), timeout=60,
        )

    def check(self, apis: list[dict[str, Any]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        (self.root / "gateway.toml").write_text(self.config(apis, **kwargs))
        return self.run_cli("check")


@pytest.fixture
def project(tmp_path: Path, pki: DevPki) -> Iterator[Project]:
    p = Project(tmp_path / "project", pki)
    yield p
    for gw in p.started:
        gw.stop()


def _get(gw: GatewayProcess, pki: DevPki, path: str, client: str | None = None,
         **kwargs: Any) -> Any:
    return request(gw.port, path, pki, client, **kwargs)


def _backend_path(response: Any) -> str:
    assert response.status == 200, (response.status, response.body)
    return str(response.json()["path"])


# -- WSO2 petstore: x-wso2-* at API level ------------------------------------------


def test_wso2_petstore_mandatory_mtls_with_optional_api_key(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    gw = project.start(
        [{"openapi": project.definition("petstore.yaml", petstore(backend.url)),
          "aliases": ["partner-root"]}],
        api_keys={"app": KEY},
    )
    # name/version/context/backend from the definition; the template matched.
    r = _get(gw, pki, "/petstore/1.0.5/pet/7?x=1", "partner-app")
    assert _backend_path(r) == "/v2/pet/7?x=1"
    assert _get(gw, pki, "/petstore/1.0.5/pet/findByStatus", "partner-app").status == 200
    # mTLS is mandatory: an API key alone (application security optional) is not enough.
    r = _get(gw, pki, "/petstore/1.0.5/pet/7", headers={"apikey": KEY})
    assert r.status == 401 and r.json()["code"] == "900902"
    # a certificate under an alias the API does not accept
    assert _get(gw, pki, "/petstore/1.0.5/pet/7", "other-app").status == 401
    # x-wso2-disable-security on the operation: open, mTLS included
    assert _backend_path(_get(gw, pki, "/petstore/1.0.5/store/inventory")) == "/v2/store/inventory"
    # HEAD matches the get operation
    assert _get(gw, pki, "/petstore/1.0.5/pet/7", "partner-app", method="HEAD").status == 200
    # only defined operations are served: 405 with Allow, 404 900906
    r = _get(gw, pki, "/petstore/1.0.5/pet/7", "partner-app", method="POST", body=b"{}")
    assert r.status == 405
    assert r.header("Allow") == "DELETE, GET, HEAD"
    for path in ("/petstore/1.0.5/pet", "/petstore/1.0.5/pet/7/owner", "/petstore/1.0.5/"):
        r = _get(gw, pki, path, "partner-app")
        assert r.status == 404, path
        body = r.json()
        assert body["code"] == "900906"
        assert body["message"] == "No matching resource found for given API Request"
        assert path.rstrip("/") in body["description"]
    # case: OpenAPI paths are case-sensitive, and an ambiguous spelling matches nothing
    assert _get(gw, pki, "/petstore/1.0.5/PET/findByStatus", "partner-app").status == 404


def test_wso2_optional_mtls_with_mandatory_api_key(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    gw = project.start(
        [{"openapi": project.definition(
            "orders.yaml", petstore(backend.url, mtls="optional", app="optional: false")),
          "aliases": ["partner-root"]}],
        api_keys={"app": KEY},
    )
    path = "/petstore/1.0.5/pet/1"
    assert _get(gw, pki, path, headers={"apikey": KEY}).status == 200
    r = _get(gw, pki, path, "partner-app")
    assert r.status == 401 and r.json()["code"] == "900902"  # the key is mandatory
    assert _get(gw, pki, path, "partner-app", headers={"apikey": KEY}).status == 200
    r = _get(gw, pki, path, headers={"apikey": "wrong"})
    assert r.status == 401 and r.json()["code"] == "900901"
    # the key never reaches the backend
    r = _get(gw, pki, path, headers={"apikey": KEY})
    assert all(name.lower() != "apikey" for name, _v in r.json()["headers"])


# -- OpenAPI 3.1: mutualTLS, apiKey and per-operation security -----------------------


def test_openapi_31_per_operation_security(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    gw = project.start(
        [{"openapi": project.definition("accounts.yaml", accounts_31(backend.url)),
          "aliases": ["partner-root"]}],
        api_keys={"app": KEY},
    )
    key = {"X-Api-Key": KEY}
    # context and backend from servers[0].url
    assert _backend_path(_get(gw, pki, "/accounts/balance", "partner-app")) == "/accounts/balance"
    assert _get(gw, pki, "/accounts/balance").status == 401  # the API's mTLS
    # security: [] opens the operation, mTLS included
    assert _get(gw, pki, "/accounts/public").status == 200
    # both schemes in one requirement: both mandatory
    assert _get(gw, pki, "/accounts/transfer", "partner-app", method="POST",
                body=b"{}").status == 401
    assert _get(gw, pki, "/accounts/transfer", method="POST", body=b"{}",
                headers=key).status == 401
    r = _get(gw, pki, "/accounts/transfer", "partner-app", method="POST", body=b"{}",
             headers=key)
    assert r.status == 200
    # the apiKey scheme's header is the one read, and it is not forwarded
    assert all(name.lower() != "x-api-key" for name, _v in r.json()["headers"])
    assert _get(gw, pki, "/accounts/transfer", "partner-app", method="POST", body=b"{}",
                headers={"apikey": KEY}).status == 401
    # two alternatives: either passes
    assert _get(gw, pki, "/accounts/status", "partner-app").status == 200
    assert _get(gw, pki, "/accounts/status", headers=key).status == 200
    assert _get(gw, pki, "/accounts/status").status == 401

    out = project.run_cli("routes")
    assert out.returncode == 0, out.stderr
    lines = {tuple(line.split()[:3]): line for line in out.stdout.splitlines()[1:]}
    assert lines[("*", "GET", "/accounts/balance")].endswith("mutual_ssl[partner-root]:mandatory")
    assert lines[("*", "GET", "/accounts/public")].endswith("open")
    assert lines[("*", "HEAD", "/accounts/public")].endswith("open")
    assert lines[("*", "POST", "/accounts/transfer")].endswith(
        "mutual_ssl[partner-root]:mandatory api_key(X-Api-Key):mandatory")
    assert lines[("*", "GET", "/accounts/status")].endswith(
        "mutual_ssl[partner-root]:optional api_key(X-Api-Key):optional")
    assert "Accounts:v1" in lines[("*", "GET", "/accounts/status")]


# -- OpenAPI 2.0 ---------------------------------------------------------------------


def test_openapi_20_base_path_and_templates(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    gw = project.start(
        [{"openapi": project.definition("legacy.json", json.dumps(
            __import__("yaml").safe_load(legacy_20(f"127.0.0.1:{backend.port}"))))}],
    )
    # host + basePath is the backend; basePath the context; "{id}.json" one segment
    r = _get(gw, pki, "/legacy/v2/items/42.json")
    assert _backend_path(r) == "/legacy/v2/items/42.json"
    assert _get(gw, pki, "/legacy/v2/items/42").json()["code"] == "900906"
    assert _get(gw, pki, "/legacy/v2/items/a/b.json").status == 404


# -- TOML overrides --------------------------------------------------------------------


def test_toml_keys_override_the_definition(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    gw = project.start(
        [{"openapi": project.definition("petstore.yaml", petstore("http://127.0.0.1:1")),
          "name": "zoo", "context": "/zoo", "backend": backend.url + "/real",
          "mutual_ssl": "disabled"}],
        api_keys={"app": KEY},
    )
    # context and backend from TOML; mTLS disabled leaves the (optional) key alone
    r = _get(gw, pki, "/zoo/pet/3", headers={"apikey": KEY})
    assert _backend_path(r) == "/real/pet/3"
    assert _get(gw, pki, "/zoo/pet/3").status == 401
    assert _get(gw, pki, "/petstore/1.0.5/pet/3", headers={"apikey": KEY}).status == 404
    out = project.run_cli("routes")
    assert "zoo:1.0.5" in out.stdout and "/zoo/pet/{petId}" in out.stdout


# -- several endpoints ---------------------------------------------------------------


@pytest.fixture
def two_backends(tmp_path: Path) -> Iterator[tuple[BackendProcess, BackendProcess]]:
    a = start_backend(tmp_path / "b1")
    b = start_backend(tmp_path / "b2")
    yield a, b
    a.stop()
    b.stop()


def _served(backend: BackendProcess) -> int:
    """Requests the backend served before this question (each question counts too)."""
    r = request(backend.port, "/requests")
    return int(r.json()["requests"])


def _since(backend: BackendProcess, before: int) -> int:
    return _served(backend) - before - 1  # less the question that gave ``before``


def test_failover_skips_a_backend_that_is_down(
    project: Project, pki: DevPki, two_backends: tuple[BackendProcess, BackendProcess]
) -> None:
    first, second = two_backends
    down = f"http://127.0.0.1:{free_port()}"
    gw = project.start([{"openapi": project.definition(
        "spread.yaml", endpoints_def([down, first.url, second.url], "failover"))}])
    before = (_served(first), _served(second))
    for _ in range(4):
        assert _get(gw, pki, "/spread/who").status == 200
    # a POST with a body too: the connection was refused, so nothing was sent
    assert _get(gw, pki, "/spread/who", method="POST", body=b"payload").status == 200
    assert (_since(first, before[0]), _since(second, before[1])) == (5, 0)
    assert "is skipped for 30 seconds" in gw.output()


def test_load_balance_round_robin_with_one_down(
    project: Project, pki: DevPki, two_backends: tuple[BackendProcess, BackendProcess]
) -> None:
    first, second = two_backends
    down = f"http://127.0.0.1:{free_port()}"
    gw = project.start([{"name": "lb", "context": "/lb", "backend_mode": "load_balance",
                         "backends": [first.url, down, second.url]}])
    before = (_served(first), _served(second))
    for _ in range(12):
        assert _get(gw, pki, "/lb/x").status == 200
    spread = (_since(first, before[0]), _since(second, before[1]))
    assert sum(spread) == 12 and min(spread) >= 4, spread


def test_every_backend_down_is_503(project: Project, pki: DevPki) -> None:
    gw = project.start([{"name": "gone", "context": "/gone", "backend_mode": "failover",
                         "backends": [f"http://127.0.0.1:{free_port()}",
                                      f"http://127.0.0.1:{free_port()}"]}])
    for _ in range(2):
        r = _get(gw, pki, "/gone/x")
        assert r.status == 503 and r.json()["code"] == "101503"


# -- check -----------------------------------------------------------------------------


def _bad(project: Project, name: str, text: str, **api: Any) -> list[str]:
    rel = project.definition(name, text)
    out = project.check([{"openapi": rel, "aliases": ["partner-root"], **api}],
                        api_keys={"app": KEY})
    assert out.returncode == 2, out.stdout
    return out.stderr.splitlines()


def test_check_reports_definition_problems(project: Project, backend: BackendProcess) -> None:
    config = project.root / "gateway.toml"
    apis = project.root / "apis"
    ok = petstore(backend.url)

    def prefix(name: str) -> str:
        return f"twistedgw: {config}: apis[0].openapi: {apis / name}: "

    lines = _bad(project, "a.yaml", ok.replace("x-wso2-mutual-ssl: mandatory",
                                               "x-wso2-mutual-ssl: required"))
    assert lines == [
        prefix("a.yaml") + "#/x-wso2-mutual-ssl: must be 'mandatory' or 'optional', got "
        "'required'"
    ]

    # path parameters are what routing reads: each {name} must be declared
    start = ok.index("    parameters:\n")
    lines = _bad(project, "b.yaml", ok[:start] + ok[ok.index("    get:\n", start):])
    assert lines == [
        prefix("b.yaml") + f"#/paths/~1pet~1{{petId}}/{method}: path parameter {{petId}} is "
        "not declared (add a parameter with in: path)"
        for method in ("get", "delete")
    ]

    text = accounts_31(backend.url).replace("        - key: []\n", "        - keys: []\n")
    lines = _bad(project, "c.yaml", text)
    assert lines == [
        prefix("c.yaml") + "#/paths/~1status/get/security/1/keys: no security scheme is named "
        "'keys' (defined: bearer, key, mtls)"
    ]

    lines = _bad(project, "d.yaml", petstore("ftp://127.0.0.1:21"))
    assert len(lines) == 1 and "#/x-wso2-production-endpoints/urls/0: unsupported backend " \
        "URL scheme 'ftp'" in lines[0]

    lines = _bad(project, "f.yaml", accounts_31(backend.url, bearer=True))
    assert lines == [
        prefix("f.yaml") + "#/paths/~1tokens/get/security/0/bearer: bearer security needs "
        "[[jwt_issuers]]"
    ]

    # two APIs resolving to the same context (the second is named)
    rel = project.definition("g.yaml", ok)
    out = project.check([{"openapi": rel, "aliases": ["partner-root"]},
                         {"openapi": rel, "aliases": ["partner-root"]}],
                        api_keys={"app": KEY})
    assert out.stderr.splitlines() == [
        f"twistedgw: {config}: apis[1].openapi: {apis / 'g.yaml'}: #/x-wso2-basePath: "
        "duplicate context '/petstore/1.0.5' (also used by apis[0])"
    ]

    # everything in one pass, beside an ordinary config problem
    out = project.check([{"openapi": "apis/a.yaml"}, {"openapi": "apis/d.yaml"},
                         {"openapi": "apis/missing.yaml"},
                         {"name": "x", "context": "/x", "backend": backend.url,
                          "mutual_ssl": "sometimes"}])
    lines = out.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "apis[0].openapi", "apis[1].openapi", "apis[2].openapi", "apis[3].mutual_ssl"]
    assert lines[2].endswith(f"{apis / 'missing.yaml'}: (file): file not found")


def test_check_accepts_good_definitions(project: Project, backend: BackendProcess) -> None:
    out = project.check(
        [{"openapi": project.definition("p.yaml", petstore(backend.url)),
          "aliases": ["partner-root"]},
         {"openapi": project.definition("a.yaml", accounts_31(backend.url))},
         {"openapi": project.definition("l.yaml", legacy_20("127.0.0.1:9"))}],
        api_keys={"app": KEY},
    )
    assert out.returncode == 0, out.stderr
    assert "OK (3 APIs" in out.stdout


# -- reload ----------------------------------------------------------------------------


def test_sighup_rereads_definitions_and_refuses_a_bad_one(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    text = endpoints_def([backend.url], "failover")
    rel = project.definition("spread.yaml", text)
    gw = project.start([{"openapi": rel}])
    assert _get(gw, pki, "/spread/who").status == 200
    assert _get(gw, pki, "/spread/where").status == 404

    (project.root / rel).write_text(text.replace("x-wso2-basePath: /spread",
                                                 "x-wso2-basePath: 42"))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "Reload refused" in gw.output(), timeout=10, what="a refused reload")
    assert "x-wso2-basePath: expected a path" in gw.output()
    assert _get(gw, pki, "/spread/who").status == 200  # still the previous definition

    (project.root / rel).write_text(text.replace("/who:", "/where:"))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "Reloaded " in gw.output(), timeout=10, what="a reload")
    assert _get(gw, pki, "/spread/where").status == 200
    assert _get(gw, pki, "/spread/who").json()["code"] == "900906"


def test_a_silent_backend_times_out_and_only_safe_requests_move_on(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    import socket

    with socket.socket() as silent, socket.socket() as other:
        mutes = []
        for sock in (silent, other):  # accept connections (backlog), never answer
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            mutes.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        gw = project.start([
            {"name": "slow", "context": "/slow", "backend_mode": "failover",
             "backend_timeout": 1, "backends": [mutes[0], backend.url]},
            {"name": "get", "context": "/get", "backend_mode": "failover",
             "backend_timeout": 1, "backends": [mutes[1], backend.url]},
        ])
        # a body was sent to the silent backend: not safe to send again
        r = _get(gw, pki, "/slow/x", method="POST", body=b"once")
        assert r.status == 504 and r.json()["code"] == "101504"
        # the silent backend is now skipped for a while
        assert _backend_path(_get(gw, pki, "/slow/y")) == "/y"
        # a GET without a body is sent again, to the next backend, after the timeout
        assert _backend_path(_get(gw, pki, "/get/z")) == "/z"
        assert "GET goes to" in gw.output()
    assert "(timeout) is skipped for 30 seconds" in gw.output()


def test_authz_judges_the_operation_named(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    from tests.harness import table

    rel = project.definition("accounts.yaml", accounts_31(backend.url))
    text = project.config([{"openapi": rel, "aliases": ["partner-root"]}],
                          api_keys={"app": KEY}) + table("authz", {"path": "/_authz"})
    gw = start_gateway(project.root, text, project.port)
    project.started.append(gw)

    def judge(uri: str, method: str | None, client: str | None = None) -> Any:
        headers = {"X-Original-URI": uri}
        if method is not None:
            headers["X-Original-Method"] = method
        return _get(gw, pki, "/_authz", client, headers=headers)

    assert judge("/accounts/public", "GET").status == 200
    assert judge("/accounts/balance", "GET").status == 401
    assert judge("/accounts/balance", "GET", "partner-app").status == 200
    assert judge("/accounts/transfer", "POST", "partner-app").status == 401  # key missing
    r = judge("/accounts/public", "DELETE")
    assert r.status == 403 and "DELETE is not allowed" in r.json()["description"]
    assert judge("/accounts/nowhere", "GET").status == 403
    assert judge("/accounts/public", None).status == 403


def test_method_override_headers_never_reach_apis_whose_operations_differ_in_security(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    """Issue 22 item 13: the petstore's GET /store/inventory is open, DELETE /pet/{petId}
    needs mTLS; a backend that honours X-HTTP-Method-Override (or its two siblings)
    would run the secured DELETE through the open GET. An API with one security for
    every request keeps them (the gateway judged it whatever the method)."""
    overrides = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                 "X-Method-Override": "DELETE"}
    gw = project.start(
        [{"openapi": project.definition("petstore.yaml", petstore(backend.url)),
          "aliases": ["partner-root"]},
         {"name": "Plain", "version": "1", "context": "/plain", "backend": backend.url,
          "mutual_ssl": "mandatory"}],
        api_keys={"app": KEY},
    )
    r = _get(gw, pki, "/petstore/1.0.5/store/inventory", headers=overrides)
    assert r.status == 200, r.body
    seen = {name.lower() for name, _ in r.json()["headers"]}
    assert not seen & {name.lower() for name in overrides}, seen
    # Also on the secured operations of that API, whoever calls.
    r = _get(gw, pki, "/petstore/1.0.5/pet/7", "partner-app", headers=overrides)
    assert r.status == 200
    assert not {name.lower() for name, _ in r.json()["headers"]} & {
        name.lower() for name in overrides}
    r = _get(gw, pki, "/plain/x", "partner-app", headers=overrides)
    assert r.status == 200
    assert {name.lower() for name, _ in r.json()["headers"]} >= {
        name.lower() for name in overrides}


# -- trims (#23 item 10) -----------------------------------------------------------------


PETS_31 = """\
openapi: 3.1.0
info: {{title: Pets, version: v1}}
servers: [{{url: {backend}/pets}}]
components:
  securitySchemes:
    mtls: {{type: mutualTLS}}
security: []
paths:
  /pets/admin:
    get:
      security: [{{mtls: []}}]
      responses: {{'200': {{description: the secured one}}}}
  /pets/{{name}}:
    parameters: [{{name: name, in: path, required: true, schema: {{type: string}}}}]
    get:
      responses: {{'200': {{description: open}}}}
"""


def test_trimmed_spellings_of_a_secured_literal_are_refused(
    project: Project, pki: DevPki, backend: BackendProcess
) -> None:
    """A backend that trims a suffix, a trailing dot or encoded whitespace would serve
    these as the secured /pets/admin; they matched the open /pets/{name}."""
    gw = project.start(
        [{"openapi": project.definition("pets.yaml", PETS_31.format(backend=backend.url))}]
    )
    for path in ("/pets/pets/admin.", "/pets/pets/admin.json", "/pets/pets/admin%20",
                 "/pets/pets/admin%09", "/pets/pets/admin~"):
        r = _get(gw, pki, path)
        assert (r.status, r.json()["code"], r.json()["description"]) == (
            404, "900906", "ambiguous path"), path
    for path in ("/pets/pets/ad%20min", "/pets/pets/ad%09min", "/pets/pets/admin%7F"):
        r = _get(gw, pki, path)
        assert (r.status, r.json()["code"]) == (400, "400"), path
    assert _backend_path(_get(gw, pki, "/pets/pets/fido.json")) == "/pets/pets/fido.json"
    assert _get(gw, pki, "/pets/pets/admin").status == 401  # the secured one, as ever
    assert _get(gw, pki, "/pets/pets/admin", "partner-app").status == 200
