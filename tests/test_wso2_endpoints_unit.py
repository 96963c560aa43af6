"""Issue 25 items 1 and 2 in memory: endpoints per API and per resource, sandbox keys,
and the backends' credentials, read from definitions in the Microgateway's documented
shapes (its "Defining Endpoints in an OpenAPI Definition" and "Defining a Backend
Security Scheme" pages) and run through the compiled pipelines and the router.

The real processes are in test_wso2_endpoints.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests import jwtkit
from tests.test_openapi import problems_of
from twistedgw import config as configmod
from twistedgw.config import ApiConfig
from twistedgw.http._routing import Router
from twistedgw.pipeline import HeaderEdit, Refusal, compile_pipelines
from twistedgw.testing import fake_call, run

IDP = jwtkit.ec("endpoints-idp")
SANDBOX_KEY = "sandbox-key"
PRODUCTION_KEY = "production-key"

#: The Microgateway's endpoint shapes: API-level production and sandbox, a path's own
#: production endpoint by value, an operation's by reference (it wins over its path's),
#: an operation's own sandbox endpoint, and named endpoints with securityConfig.
PETSTORE = """\
openapi: 3.0.0
info: {title: Swagger Petstore, version: 1.0.5}
x-wso2-basePath: /petstore/v1
x-wso2-production-endpoints:
  urls: [http://prod.example/v2]
x-wso2-sandbox-endpoints: "#/x-wso2-endpoints/sandboxEp"
security: [{api_key: []}]
components:
  securitySchemes:
    api_key: {type: apiKey, in: header, name: api_key}
paths:
  /pet/findByStatus:
    x-wso2-production-endpoints:
      urls: [http://path-a.example/v1, http://path-b.example/v1]
      type: failover
    get:
      operationId: findPetsByStatus
      x-wso2-production-endpoints: "#/x-wso2-endpoints/myEndpoint3"
      responses: {'200': {description: ok}}
    post:
      responses: {'200': {description: ok}}
  /pet/{petId}:
    parameters: [{name: petId, in: path, required: true, schema: {type: integer}}]
    get:
      operationId: getPetById
      x-wso2-sandbox-endpoints: {urls: [http://op-sandbox.example/v1]}
      responses: {'200': {description: ok}}
  /store/inventory:
    get:
      responses: {'200': {description: ok}}
x-wso2-endpoints:
  - myEndpoint3:
      urls: [http://ep3-a.example/v3, http://ep3-b.example/v4]
      securityConfig: {type: BASIC, username: kim}
  - sandboxEp:
      urls: [http://sandbox.example/v2]
"""


def parse(tmp_path: Path, definition: str, *, api: dict[str, Any] | None = None,
          extra: dict[str, Any] | None = None) -> configmod.Parsed:
    (tmp_path / "apis").mkdir(exist_ok=True)
    (tmp_path / "apis" / "d.yaml").write_text(definition)
    jwtkit.write_jwks(tmp_path / "jwks.json", IDP)
    import hashlib

    raw: dict[str, Any] = {
        "listeners": [{"port": 1, "tls": False}],
        "apis": [{"openapi": "apis/d.yaml", **(api or {})}],
        "api_keys": [
            {"name": "prod-app", "key_sha256": hashlib.sha256(PRODUCTION_KEY.encode()).hexdigest()},
            {"name": "sandbox-app", "key_sha256": hashlib.sha256(SANDBOX_KEY.encode()).hexdigest(),
             "keytype": "sandbox"},
        ],
        "jwt_issuers": [{"name": "idp", "issuer": jwtkit.ISSUER, "jwks": "jwks.json",
                         "audiences": [jwtkit.AUDIENCE]}],
        **(extra or {}),
    }
    return configmod.parse_partial(raw, tmp_path / "gw.toml")


def only(parsed: configmod.Parsed) -> ApiConfig:
    assert not parsed.problems, parsed.problems
    (api,) = parsed.config.apis
    return api


class Served:
    """A parsed config's router and pipelines: what one request would be sent to."""

    def __init__(self, parsed: configmod.Parsed) -> None:
        assert not parsed.problems, parsed.problems
        problems: list[str] = []
        self.pipelines = compile_pipelines(parsed.config, problems)
        assert not problems
        self.router = Router(parsed.config.apis, self.pipelines)

    def send(self, method: str, path: str, headers: dict[str, str]) -> tuple[Any, bytes]:
        """(the pipeline's outcome, the target the front would forward to)."""
        route = self.router.route(path.encode(), None, method.encode())
        assert route is not None and route.pipeline is not None and route.unmatched is None
        call = fake_call(method=method.encode(), path=path.encode(), headers=headers,
                         api=route.security_api)
        outcome = run(route.pipeline, call)
        if not isinstance(outcome, HeaderEdit):
            return outcome, b""
        if call.sandbox:
            return outcome, route.sandbox[0]
        return outcome, route.backend_target


@pytest.fixture(autouse=True)
def _passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Microgateway's variable for myEndpoint3's production password."""
    monkeypatch.setenv("myEndpoint3_prod_basic_password", "ep3-secret")


def test_endpoints_at_every_level_with_their_microgateway_names(tmp_path: Path) -> None:
    api = only(parse(tmp_path, PETSTORE))
    assert api.endpoints == ("http://prod.example/v2",)
    assert api.sandbox is not None and api.sandbox.name == "sandboxEp"
    assert api.sandbox.urls == ("http://sandbox.example/v2",)
    ops = {(op.method, op.template): op for op in api.operations or ()}
    find = ops[("GET", "/pet/findByStatus")]
    assert find.production is not None and find.production.name == "myEndpoint3"
    assert find.production.urls == ("http://ep3-a.example/v3", "http://ep3-b.example/v4")
    assert find.production.mode == "load_balance"
    assert find.production.auth is not None and find.production.auth.username == "kim"
    post = ops[("POST", "/pet/findByStatus")]  # its path's endpoint, named where written
    assert post.production is not None and post.production.mode == "failover"
    assert post.production.name == "#/paths/~1pet~1findByStatus/x-wso2-production-endpoints"
    by_id = ops[("GET", "/pet/{petId}")]
    assert by_id.production is None and by_id.sandbox is not None
    assert by_id.sandbox.name == "getPetById"  # the Microgateway names it by operationId
    assert ops[("GET", "/store/inventory")].production is None


def test_requests_go_where_their_key_type_says(tmp_path: Path) -> None:
    """Production keys (and tokens without keytype) to production endpoints, sandbox keys
    and tokens with keytype SANDBOX to sandbox ones: the operation's own, else the API's,
    each kind on its own (as the Microgateway's service template picks them)."""
    served = Served(parse(tmp_path, PETSTORE))
    prod = {"api_key": PRODUCTION_KEY}
    sand = {"api_key": SANDBOX_KEY}
    assert served.send("GET", "/petstore/v1/store/inventory", prod)[1] == \
        b"http://prod.example/v2/store/inventory"
    assert served.send("GET", "/petstore/v1/store/inventory", sand)[1] == \
        b"http://sandbox.example/v2/store/inventory"
    assert served.send("GET", "/petstore/v1/pet/7", sand)[1] == \
        b"http://op-sandbox.example/v1/pet/7"
    assert served.send("GET", "/petstore/v1/pet/7", prod)[1] == b"http://prod.example/v2/pet/7"
    firsts = {served.send("GET", "/petstore/v1/pet/findByStatus", prod)[1] for _ in range(4)}
    assert firsts == {b"http://ep3-a.example/v3/pet/findByStatus",
                      b"http://ep3-b.example/v4/pet/findByStatus"}  # load_balance
    assert {served.send("POST", "/petstore/v1/pet/findByStatus", prod)[1]
            for _ in range(3)} == {b"http://path-a.example/v1/pet/findByStatus"}  # failover
    assert served.send("POST", "/petstore/v1/pet/findByStatus", sand)[1] == \
        b"http://sandbox.example/v2/pet/findByStatus"


def test_backend_credentials_replace_the_clients_authorization(tmp_path: Path) -> None:
    served = Served(parse(tmp_path, PETSTORE))
    outcome, _target = served.send("GET", "/petstore/v1/pet/findByStatus",
                                   {"api_key": PRODUCTION_KEY, "Authorization": "Basic ZXZpbA=="})
    assert isinstance(outcome, HeaderEdit)
    _name, value = outcome.set_values[b"authorization"]
    assert value == b"Basic " + base64.b64encode(b"kim:ep3-secret")
    # the sandbox endpoint asks for no credentials: nothing is set for it
    outcome, _target = served.send("GET", "/petstore/v1/pet/findByStatus", {"api_key": SANDBOX_KEY})
    assert isinstance(outcome, HeaderEdit) and b"authorization" not in outcome.set_values


def _refusal(outcome: Any) -> tuple[int, str, str]:
    assert isinstance(outcome, Refusal), outcome
    return outcome.error.status, outcome.error.code, outcome.error.description


def test_a_key_type_without_its_endpoint_is_refused(tmp_path: Path) -> None:
    production_only = PETSTORE.replace(
        'x-wso2-sandbox-endpoints: "#/x-wso2-endpoints/sandboxEp"\n', "")
    served = Served(parse(tmp_path, production_only))
    assert _refusal(served.send("GET", "/petstore/v1/store/inventory",
                                {"api_key": SANDBOX_KEY})[0]) == (
        401, "900901", "sandbox key offered to an API with no sandbox endpoint")
    # the operation with its own sandbox endpoint takes the sandbox key
    assert isinstance(served.send("GET", "/petstore/v1/pet/1", {"api_key": SANDBOX_KEY})[0],
                      HeaderEdit)
    sandbox_only = PETSTORE.replace("x-wso2-production-endpoints:\n  urls: [http://prod.example/v2]\n",
                                    "")
    (tmp_path / "b").mkdir()
    served = Served(parse(tmp_path / "b", sandbox_only))
    assert served.router.route(b"/petstore/v1/store/inventory", None, b"GET") is not None
    assert _refusal(served.send("GET", "/petstore/v1/store/inventory",
                                {"api_key": PRODUCTION_KEY})[0]) == (
        401, "900901", "production key offered to an API with no production endpoint")
    bearer = {"Authorization": "Bearer " + jwtkit.token(IDP, jwtkit.claims(keytype="SANDBOX"))}
    (tmp_path / "c").mkdir()
    served = Served(parse(tmp_path / "c", sandbox_only.replace(
        "security: [{api_key: []}]", "security: [{api_key: []}, {oauth: []}]").replace(
        "    api_key: {type: apiKey", "    oauth: {type: http, scheme: bearer}\n"
        "    api_key: {type: apiKey")))
    assert served.send("GET", "/petstore/v1/store/inventory", bearer)[1] == \
        b"http://sandbox.example/v2/store/inventory"


def test_token_keytype(tmp_path: Path) -> None:
    """keytype SANDBOX (any case) is sandbox; PRODUCTION or none is production; any other
    value is refused; a sandbox and a production credential together are refused."""
    definition = PETSTORE.replace("security: [{api_key: []}]",
                                  "security: [{api_key: []}, {oauth: []}]").replace(
        "    api_key: {type: apiKey", "    oauth: {type: http, scheme: bearer}\n"
        "    api_key: {type: apiKey")
    served = Served(parse(tmp_path, definition))

    def bearer(**claims: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + jwtkit.token(IDP, jwtkit.claims(**claims))}

    path = "/petstore/v1/store/inventory"
    assert served.send("GET", path, bearer())[1] == b"http://prod.example/v2/store/inventory"
    assert served.send("GET", path, bearer(keytype="PRODUCTION"))[1] == \
        b"http://prod.example/v2/store/inventory"
    assert served.send("GET", path, bearer(keytype="sandbox"))[1] == \
        b"http://sandbox.example/v2/store/inventory"
    assert _refusal(served.send("GET", path, bearer(keytype="TEST"))[0]) == (
        401, "900901", "token keytype is neither PRODUCTION nor SANDBOX")
    both = {**bearer(keytype="SANDBOX"), "api_key": PRODUCTION_KEY}
    assert _refusal(served.send("GET", path, both)[0]) == (
        401, "900901", "a production and a sandbox credential were offered together")


def test_passwords_from_the_environment_toml_or_the_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_name = "api_8067dba5dcd9363833591aa61536ec02"  # MD5 of "Swagger Petstore:1.0.5"
    definition = PETSTORE.replace(
        "  urls: [http://prod.example/v2]\n",
        "  urls: [http://prod.example/v2]\n  securityConfig: {type: basic, username: admin}\n")
    found = problems_of(parse(tmp_path, definition))
    assert found == [
        "#/x-wso2-production-endpoints/securityConfig: the production endpoint "
        f"'{api_name}' asks for basic credentials but no password is given: set the "
        f"environment variable {api_name}_prod_basic_password (the Microgateway's name), or "
        f"[[apis.backend_credentials]] endpoint = '{api_name}' with username and password_file"]
    monkeypatch.setenv(f"{api_name}_prod_basic_password", "from-env")
    monkeypatch.setenv(f"{api_name}_prod_basic_username", "env-user")
    api = only(parse(tmp_path, definition))
    assert api.backend_auth is not None
    assert (api.backend_auth.username, api.backend_auth.password) == ("env-user", "from-env")
    assert "from-env" not in repr(api)  # never in a log line or a traceback
    (tmp_path / "secret.txt").write_text("from-file\n")
    api = only(parse(tmp_path, definition, api={"backend_credentials": [
        {"endpoint": "production", "username": "toml-user", "password_file": "secret.txt"},
        {"endpoint": "sandboxEp", "username": "s", "password_file": "secret.txt"}]}))
    assert api.backend_auth is not None and api.backend_auth.password == "from-file"
    assert api.sandbox is not None and api.sandbox.auth is not None
    assert api.sandbox.auth.username == "s"
    monkeypatch.delenv(f"{api_name}_prod_basic_password")
    parsed = parse(tmp_path, definition.replace("username: admin}",
                                                "username: admin, password: def-Secret-9}"))
    assert not parsed.problems
    (warning,) = [w for w in parsed.config.warnings if "securityConfig" in w]
    assert warning.endswith(
        f"#/x-wso2-production-endpoints/securityConfig: the production endpoint '{api_name}' "
        "has its password written in the definition; secrets belong outside definitions: set "
        f"the environment variable {api_name}_prod_basic_password, or "
        f"[[apis.backend_credentials]] endpoint = '{api_name}' with password_file, and remove "
        "it")
    assert "def-Secret-9" not in warning and "def-Secret-9" not in repr(parsed.config)


def test_credential_problems(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x")
    parsed = parse(tmp_path, PETSTORE, api={"backend_credentials": [
        {"endpoint": "nope", "username": "u", "password_file": "secret.txt"},
        {"endpoint": "production", "username": "u", "password": "inline"}]})
    lines = [line.split("gw.toml: ", 1)[1] for line in parsed.problems]
    assert lines == [
        "apis[0].backend_credentials[1].password: a password is never written in the config: "
        "put it in a file and name it with password_file",
        "apis[0].backend_credentials[0].endpoint: this API has no endpoint named 'nope'; its "
        "endpoints: 'production', 'api_8067dba5dcd9363833591aa61536ec02', 'sandbox', "
        "'sandboxEp', 'myEndpoint3', '#/paths/~1pet~1findByStatus/x-wso2-production-endpoints', "
        "'getPetById'"]
    for security, problem in [
        ("{type: digest, username: u}", "type: digest authentication to backends is not "
                                        "supported; use basic, got 'digest'"),
        ("{type: oauth, username: u}", "type: must be 'basic', got 'oauth'"),
        ("{type: basic, username: 7}", "username: expected a string, got a int"),
    ]:
        found = problems_of(parse(tmp_path, PETSTORE.replace("{type: BASIC, username: kim}",
                                                             security)))
        assert found == [f"#/x-wso2-endpoints/0/myEndpoint3/securityConfig/{problem}"]
    api = only(parse(tmp_path, PETSTORE.replace("{type: BASIC, username: kim}",
                                               "{enabled: false, type: basic}")))
    assert all(e.auth is None for e in api.every_endpoint())


def test_an_operation_without_any_endpoint(tmp_path: Path) -> None:
    """WSO2 asks each operation to have an endpoint to go to: its own or the API's."""
    no_api_level = PETSTORE.replace(
        "x-wso2-production-endpoints:\n  urls: [http://prod.example/v2]\n", "").replace(
        'x-wso2-sandbox-endpoints: "#/x-wso2-endpoints/sandboxEp"\n', "")
    assert problems_of(parse(tmp_path, no_api_level)) == [
        "#/paths/~1store~1inventory/get: has no endpoint to go to: neither it nor the API gives "
        "x-wso2-production-endpoints or x-wso2-sandbox-endpoints"]
    every_own = no_api_level.replace(
        "  /store/inventory:\n    get:\n",
        "  /store/inventory:\n    get:\n      x-wso2-production-endpoints: "
        "{urls: [http://inv.example]}\n")
    api = only(parse(tmp_path, every_own))
    assert api.backend == "" and api.endpoints == () and api.sandbox is None
    assert "http://inv.example" in api.all_urls


def test_api_key_keytype_values(tmp_path: Path) -> None:
    parsed = parse(tmp_path, PETSTORE, extra={"api_keys": [
        {"name": "a", "key_sha256": "00" * 32, "keytype": "SANDBOX"},
        {"name": "b", "key_sha256": "11" * 32, "keytype": "test"}]})
    assert [k.sandbox for k in parsed.config.api_keys] == [True, False]
    assert [p.split("gw.toml: ", 1)[1] for p in parsed.problems] == [
        "api_keys[1].keytype: must be 'production' or 'sandbox', got 'test'"]


def test_an_api_without_a_definition_names_its_backend_production(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("toml-secret\n")
    raw: dict[str, Any] = {
        "listeners": [{"port": 1, "tls": False}],
        "apis": [{"name": "plain", "context": "/plain", "backend": "http://127.0.0.1:1",
                  "backend_credentials": [
                      {"endpoint": "production", "username": "u", "password_file": "pw"},
                      {"endpoint": "other", "username": "u", "password_file": "pw"}]}],
    }
    parsed = configmod.parse_partial(raw, tmp_path / "gw.toml")
    assert [p.split("gw.toml: ", 1)[1] for p in parsed.problems] == [
        "apis[0].backend_credentials[1].endpoint: no endpoint is named 'other': an API without "
        "a definition has one, 'production'"]
    raw["apis"][0]["backend_credentials"].pop()
    served = Served(configmod.parse_partial(raw, tmp_path / "gw.toml"))
    outcome, target = served.send("GET", "/plain/x", {"Authorization": "Bearer client's"})
    assert target == b"http://127.0.0.1:1/x" and isinstance(outcome, HeaderEdit)
    assert outcome.set_values[b"authorization"] == (
        b"Authorization", b"Basic " + base64.b64encode(b"u:toml-secret"))
