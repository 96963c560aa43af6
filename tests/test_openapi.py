"""OpenAPI definitions in memory: what each one becomes, what ``check`` says, routing.

The real-process tests are in test_openapi_gateway.py; these pin the mapping
rules (WSO2 extensions, security requirements, overrides) and every refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from twistedgw import config as configmod
from twistedgw.config import ApiConfig, Mode, Security, route_rows
from twistedgw.http import Router
from twistedgw.identity import no_certificate
from twistedgw.pipeline import Call, HeaderEdit, HeaderView, Refusal, RequestView, compile_pipelines
from twistedgw.upstream import Forwarder

BASE = """\
openapi: 3.0.3
info: {title: T, version: "1"}
x-wso2-basePath: /t
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:9/b"]}
"""
OK_PATHS = """\
paths:
  /a:
    get:
      responses: {'200': {description: ok}}
"""
SCHEMES_31 = """\
components:
  securitySchemes:
    mtls: {type: mutualTLS}
    key: {type: apiKey, in: header, name: X-Key}
    other: {type: apiKey, in: header, name: X-Other}
    query: {type: apiKey, in: query, name: k}
    basic: {type: http, scheme: basic}
    bearer: {type: http, scheme: bearer}
"""


def parse(
    tmp_path: Path, definition: str, file_name: str = "d.yaml", *, jwt_issuers: bool = False,
    **api: Any,
) -> configmod.Parsed:
    (tmp_path / "apis").mkdir(exist_ok=True)
    (tmp_path / "apis" / file_name).write_text(definition)
    table = {"openapi": f"apis/{file_name}", **api}
    raw: dict[str, Any] = {"listeners": [{"port": 1, "tls": False}], "apis": [table],
                           "api_keys": [{"name": "k", "key_sha256": "00" * 32}]}
    if jwt_issuers:
        (tmp_path / "jwks.json").write_text('{"keys": []}')
        raw["jwt_issuers"] = [{"name": "idp", "issuer": "https://idp.example",
                               "jwks": "jwks.json", "audiences": ["gw"]}]
    return configmod.parse_partial(raw, tmp_path / "gw.toml")


def problems_of(parsed: configmod.Parsed) -> list[str]:
    """The definition's problems, without the config file and key prefix."""
    out = []
    for line in parsed.problems:
        _file, _sep, rest = line.partition(": apis[0].openapi: ")
        if rest:
            out.append(rest.partition(": ")[2])  # drop the definition's file name
    return out


def only_api(parsed: configmod.Parsed) -> ApiConfig:
    assert not problems_of(parsed), parsed.problems
    (api,) = parsed.config.apis
    return api


def test_wso2_extensions(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, """\
swagger: "2.0"
info: {title: Swagger Petstore, version: 1.0.5}
x-wso2-basePath: /petstore/{version}
x-wso2-production-endpoints:
  type: failover
  urls: ["HTTP://a.example:8080/v2/", "https://b.example/v2"]
x-wso2-mutual-ssl: optional
x-wso2-application-security: {security-types: [api_key], optional: false}
paths:
  /pet:
    post:
      x-wso2-disable-security: true
      responses: {200: {description: ok}}
"""))
    assert (api.name, api.version, api.context) == ("Swagger Petstore", "1.0.5", "/petstore/1.0.5")
    assert api.backends == ("http://a.example:8080/v2", "https://b.example/v2")
    assert api.backend == "http://a.example:8080/v2" and api.backend_mode == "failover"
    assert (api.mutual_ssl, api.api_key, api.api_key_header) == (
        Mode.OPTIONAL, Mode.MANDATORY, "apikey")
    assert api.operations is not None
    (op,) = api.operations
    assert (op.method, op.template, op.security) == ("POST", "/pet", Security())
    assert api.openapi is not None and api.openapi.context_from == "#/x-wso2-basePath"


def test_openapi_20_security_definitions(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, """\
swagger: "2.0"
info: {title: T, version: "1"}
host: legacy.internal:8080
basePath: /v1
schemes: [https, http]
securityDefinitions:
  key: {type: apiKey, in: header, name: X-Legacy-Key}
security: [{key: []}]
paths:
  /a:
    get: {responses: {200: {description: ok}}}
"""))
    assert (api.context, api.backend) == ("/v1", "https://legacy.internal:8080/v1")
    assert (api.api_key, api.api_key_header) == (Mode.MANDATORY, "X-Legacy-Key")
    assert api.openapi is not None and api.openapi.context_from == "#/basePath"


def test_endpoints_by_reference(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, """\
openapi: 3.0.3
info: {title: T, version: "1"}
x-wso2-basePath: /t
x-wso2-endpoints:
  - primary:
      urls: ["http://a:1/x", "http://b:2/x"]
      type: load_balance
x-wso2-production-endpoints: "#/x-wso2-endpoints/primary"
security: []
""" + OK_PATHS))
    assert api.endpoints == ("http://a:1/x", "http://b:2/x")
    assert api.backend_mode == "load_balance"
    found = problems_of(parse(tmp_path, BASE.replace(
        "{urls: [\"http://127.0.0.1:9/b\"]}", "'#/x-wso2-endpoints/none'") + "security: []\n"
        + OK_PATHS))
    assert found == ["#/x-wso2-production-endpoints: x-wso2-endpoints has no endpoint named "
                     "'none'"]


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        ("[{mtls: []}]", Security(mutual_ssl=Mode.MANDATORY)),
        ("[{mtls: [], key: []}]", Security(Mode.MANDATORY, Mode.MANDATORY, "X-Key")),
        ("[{mtls: []}, {key: []}]", Security(Mode.OPTIONAL, Mode.OPTIONAL, "X-Key")),
        ("[{mtls: []}, {mtls: [], key: []}]", Security(mutual_ssl=Mode.MANDATORY)),
        ("[{}, {key: []}]", Security()),
        ("[]", Security()),
    ],
)
def test_security_requirements(tmp_path: Path, security: str, expected: Security) -> None:
    api = only_api(parse(tmp_path, f"""\
openapi: 3.1.0
info: {{title: T, version: "1"}}
servers: [{{url: "http://127.0.0.1:9/t"}}]
{SCHEMES_31}security: {security}
{OK_PATHS}"""))
    assert Security(api.mutual_ssl, api.api_key, api.api_key_header) == expected
    assert api.context == "/t" and api.backend == "http://127.0.0.1:9/t"


@pytest.mark.parametrize(
    ("security", "problem"),
    [
        ("[{mtls: [], key: []}, {bearer: []}]",
         "#/security: these alternatives cannot be expressed"),
        ("[{key: [], bearer: []}, {mtls: []}]",
         "#/security: these alternatives cannot be expressed"),
        ("[{nope: []}]", "#/security/0/nope: no security scheme is named 'nope' (defined: basic, "
                         "bearer, key, mtls, other, query)"),
        ("[{key: []}, {query: []}]", "#/security: API keys in different places (header "
                                     "X-Key, query k) for one operation are not supported; "
                                     "use one header or query parameter"),
        ("[{key: []}, {other: []}]", "#/security: API keys in different places (header X-Key, "
                                     "header X-Other) for one operation are not supported; use "
                                     "one header or query parameter"),
        ("[{bearer: []}]", "#/security/0/bearer: bearer security needs [[jwt_issuers]]"),
        ("[{bearer: [read:pets]}]", "#/security/0/bearer: token scopes [\"read:pets\"] cannot "
                                    "be enforced"),
    ],
)
def test_security_refused(tmp_path: Path, security: str, problem: str) -> None:
    found = problems_of(parse(tmp_path, f"""\
openapi: 3.1.0
info: {{title: T, version: "1"}}
servers: [{{url: "http://127.0.0.1:9/t"}}]
{SCHEMES_31}security: {security}
{OK_PATHS}"""))
    assert len(found) == 1 and found[0].startswith(problem), found


def test_mutual_ssl_and_any_one_of_several_application_types(tmp_path: Path) -> None:
    """WSO2's own mutual_ssl_openAPI: mTLS mandatory AND (oauth2 OR api_key)."""
    definition = BASE + """\
x-wso2-mutual-ssl: Mandatory
x-wso2-application-security: {security-types: [OAuth2, API_KEY], optional: false}
""" + OK_PATHS
    found = problems_of(parse(tmp_path, definition))
    assert found == ["#/x-wso2-application-security/security-types/0: bearer security needs "
                     "[[jwt_issuers]]"]
    api = only_api(parse(tmp_path, definition, jwt_issuers=True))
    assert (api.mutual_ssl, api.api_key, api.jwt, api.any_of) == (
        Mode.MANDATORY, Mode.MANDATORY, Mode.MANDATORY, frozenset({"api_key", "jwt"}))
    assert route_rows([api])[0][-1] == "mutual_ssl:mandatory (api_key|jwt):mandatory"
    # optional application security beside mandatory mTLS never consults the token, so it
    # needs no [[jwt_issuers]]: the certificate decides
    api = only_api(parse(tmp_path, definition.replace("optional: false", "optional: true")))
    assert (api.mutual_ssl, api.api_key, api.jwt, api.any_of) == (
        Mode.MANDATORY, Mode.OPTIONAL, Mode.DISABLED, frozenset())


def test_no_security_declared_is_oauth2(tmp_path: Path) -> None:
    found = problems_of(parse(tmp_path, BASE + OK_PATHS))
    assert len(found) == 1 and found[0].startswith(
        "#/security: the definition declares no security, which WSO2 reads as OAuth2")
    # with [[jwt_issuers]], it is served as WSO2 serves it: a bearer token is mandatory
    api = only_api(parse(tmp_path, BASE + OK_PATHS, jwt_issuers=True))
    assert (api.jwt, api.mutual_ssl, api.api_key) == (Mode.MANDATORY, Mode.DISABLED,
                                                      Mode.DISABLED)
    api = only_api(parse(tmp_path, BASE + OK_PATHS, api_key="mandatory"))
    assert api.api_key is Mode.MANDATORY
    api = only_api(parse(tmp_path, BASE + "x-wso2-disable-security: true\n" + OK_PATHS))
    assert api.mutual_ssl is Mode.DISABLED and api.api_key is Mode.DISABLED


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ("- just a list\n", "#: not an OpenAPI document"),
        ("openapi: 4.0.0\ninfo: {}\n", "#: not an OpenAPI 2.0, 3.0 or 3.1 document"),
        ("openapi: [unclosed\n", "(file): invalid YAML:"),
        (BASE.replace("x-wso2-production-endpoints: {urls:", "x-wso2-production-endpoints: "
                      "{type: random, urls:") + "security: []\n" + OK_PATHS,
         "#/x-wso2-production-endpoints/type: must be 'load_balance', 'failover' or 'http' (one "
         "endpoint), got 'random'"),
        (BASE.replace("/t\n", "/t/../x\n", 1) + "security: []\n" + OK_PATHS,
         "#/x-wso2-basePath: the context must be a clean absolute path"),
        (BASE.replace("x-wso2-production-endpoints", "x-other") + "security: []\n" + OK_PATHS,
         "#: names no backend: add x-wso2-production-endpoints"),
        (BASE + "security: []\n" + OK_PATHS.replace(
            "    get:\n", "    x-wso2-sandbox-endpoints: '#/x-wso2-endpoints/gone'\n    get:\n"),
         "#/paths/~1a/x-wso2-sandbox-endpoints: x-wso2-endpoints has no endpoint named "
         "'gone'"),
        (BASE + "security: []\npaths: {}\n", "#/paths: defines no operations"),
        ("".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [x]\n"
                 for i in range(8)), "(file): more than 2000000 values (YAML aliases expanding?)"),
        ("[" * 100 + "]" * 100, "(file): nested too deeply"),
    ],
)
def test_definition_refused(tmp_path: Path, definition: str, problem: str) -> None:
    found = problems_of(parse(tmp_path, definition))
    assert found and found[0].startswith(problem), found


def test_refs_inside_the_directory_are_followed(tmp_path: Path) -> None:
    (tmp_path / "apis").mkdir()
    (tmp_path / "apis" / "schemes.yaml").write_text("mtls: {type: mutualTLS}\n")
    api = only_api(parse(tmp_path, """\
openapi: 3.1.0
info: {title: T, version: "1"}
servers: [{url: "http://127.0.0.1:9/t"}]
components:
  securitySchemes:
    mtls: {$ref: 'schemes.yaml#/mtls'}
security: [{mtls: []}]
""" + OK_PATHS))
    assert api.mutual_ssl is Mode.MANDATORY


def test_a_path_item_in_another_file_resolves_its_own_refs(tmp_path: Path) -> None:
    (tmp_path / "apis" / "parts").mkdir(parents=True)
    (tmp_path / "apis" / "parts" / "pets.yaml").write_text("""\
item:
  get: {$ref: '#/open'}
open:
  x-wso2-disable-security: true
  responses: {'200': {description: ok}}
""")
    api = only_api(parse(tmp_path, BASE + """\
x-wso2-mutual-ssl: mandatory
paths:
  /pets: {$ref: 'parts/pets.yaml#/item'}
"""))
    assert api.operations is not None
    (op,) = api.operations
    assert (op.method, op.template, op.security) == ("GET", "/pets", Security())


def test_json_definition_and_toml_overrides(tmp_path: Path) -> None:
    import json

    import yaml

    doc = yaml.safe_load(BASE + "security: [{k: []}]\ncomponents: {securitySchemes: "
                         "{k: {type: apiKey, in: header, name: X-K}}}\n" + OK_PATHS)
    api = only_api(parse(tmp_path, json.dumps(doc), "d.json", name="n", version="9",
                         context="/o", backends=["http://x/1", "http://y/2"],
                         backend_mode="failover", mutual_ssl="optional"))
    assert (api.name, api.version, api.context) == ("n", "9", "/o")
    assert api.endpoints == ("http://x/1", "http://y/2") and api.backend_mode == "failover"
    assert (api.mutual_ssl, api.api_key, api.api_key_header) == (
        Mode.OPTIONAL, Mode.MANDATORY, "X-K")
    assert api.openapi is not None and api.openapi.context_from is None


def test_toml_backends(tmp_path: Path) -> None:
    def problems(**api: Any) -> list[str]:
        raw = {"listeners": [{"port": 1, "tls": False}],
               "apis": [{"name": "a", "context": "/a", **api}]}
        return [p.split(": ", 1)[1] for p in
                configmod.parse_partial(raw, tmp_path / "gw.toml").problems]

    assert problems(backends=["http://a", "http://b"]) == []
    assert problems(backend="http://a", backends=["http://b"]) == [
        "apis[0].backends: give either backend or backends, not both"]
    assert problems(backends=["http://a", "ws://b"]) == [
        "apis[0].backends[1]: must be an http:// or https:// URL, got 'ws://b'"]
    assert problems(backends=[]) == ["apis[0].backends: must name at least one backend URL"]
    assert problems(backends=["http://a"], backend_mode="random")[0].startswith(
        "apis[0].backend_mode: must be one of 'load_balance', 'failover'")


# -- routing and pipelines -------------------------------------------------------------

ROUTED = BASE + """\
x-wso2-mutual-ssl: mandatory
paths:
  /pets/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    get: {responses: {'200': {description: ok}}}
    put: {responses: {'200': {description: ok}}, x-wso2-disable-security: true}
  /pets/mine:
    get: {responses: {'200': {description: ok}}, x-wso2-disable-security: true}
  /files/{name}.txt:
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    head: {responses: {'200': {description: ok}}}
  /:
    get: {responses: {'200': {description: ok}}}
"""


def test_router_matches_operations(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, ROUTED))
    router = Router([api])

    def route(method: bytes, path: bytes) -> Any:
        found = router.route(path, None, method)
        assert found is not None
        return found

    r = route(b"GET", b"/t/pets/7")
    assert r.operation.template == "/pets/{id}" and r.security_api is api
    assert r.backend_target == b"http://127.0.0.1:9/b/pets/7"
    assert route(b"HEAD", b"/t/pets/7").operation.method == "GET"
    assert route(b"PUT", b"/t/pets/7").security_api.mutual_ssl is Mode.DISABLED
    mine = route(b"GET", b"/t/pets/mine")
    assert mine.operation.template == "/pets/mine"  # literal beats templated
    assert mine.security_api.mutual_ssl is Mode.DISABLED
    assert route(b"GET", b"/t/pets/mine/").operation.template == "/pets/mine"
    assert route(b"GET", b"/t/Pets/mine").unmatched.code == "900906"  # case-ambiguous
    assert route(b"GET", b"/t/pets/Mine").unmatched.code == "900906"
    r = route(b"DELETE", b"/t/pets/7")
    assert (r.unmatched.status, r.allow) == (405, b"GET, HEAD, PUT")
    assert route(b"HEAD", b"/t/files/a.txt").operation.method == "HEAD"
    assert route(b"GET", b"/t/files/a.txt").allow == b"HEAD"
    assert route(b"GET", b"/t/files/a.md").unmatched.status == 404
    assert route(b"GET", b"/t").operation.template == "/"
    assert route(b"GET", b"/t/").operation.template == "/"
    # without a method (an API without operations, or a caller that does not say)
    assert router.route(b"/t/anything", None).operation is None


def test_router_orders_backends() -> None:
    api = ApiConfig("a", "1", "/a", "http://one/x", backends=("http://one/x", "http://two"),
                    backend_mode="load_balance")
    router = Router([api, ApiConfig("f", "1", "/f", "http://one", backend_mode="failover",
                                    backends=("http://one", "http://two"))])
    seen = []
    for _ in range(4):
        r = router.route(b"/a/p", b"q=1", b"GET")
        assert r is not None
        seen.append((r.backend_target, r.alternatives))
    assert seen[0] == (b"http://one/x/p?q=1", (b"http://two/p?q=1",))
    assert seen[1] == (b"http://two/p?q=1", (b"http://one/x/p?q=1",))
    assert seen[2] == seen[0] and seen[3] == seen[1]
    for _ in range(2):
        r = router.route(b"/f", None, b"GET")
        assert r is not None and r.backend_target == b"http://one/"


def test_one_pipeline_per_distinct_operation_security(tmp_path: Path) -> None:
    parsed = parse(tmp_path, ROUTED)
    api = parsed.config.apis[0]
    problems: list[str] = []
    pipelines = compile_pipelines(parsed.config, problems)
    assert not problems
    # the API (mTLS mandatory) and one open variant shared by PUT and /pets/mine
    assert len(pipelines) == 2
    router = Router([api])

    def run(method: bytes, path: bytes) -> Any:
        route = router.route(path, None, method)
        assert route is not None
        view = RequestView(method, path, None, HeaderView(Headers()), "127.0.0.1", True)
        return pipelines[route.security_api].run(Call(view, route.security_api, no_certificate()))

    refused = run(b"GET", b"/t/pets/7")
    assert isinstance(refused, Refusal) and refused.error.code == "900902"
    assert isinstance(run(b"PUT", b"/t/pets/7"), HeaderEdit)
    assert isinstance(run(b"GET", b"/t/pets/mine"), HeaderEdit)


def test_route_rows(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, ROUTED, aliases=["partner-root"]))
    rows = {(m, p): s for _h, m, p, _a, s in route_rows([api])}
    assert rows[("GET", "/t/pets/{id}")] == "mutual_ssl[partner-root]:mandatory"
    assert rows[("HEAD", "/t/pets/{id}")] == "mutual_ssl[partner-root]:mandatory"
    assert rows[("PUT", "/t/pets/{id}")] == "open"
    assert rows[("HEAD", "/t/files/{name}.txt")] == "mutual_ssl[partner-root]:mandatory"
    assert ("GET", "/t/files/{name}.txt") not in rows
    plain = ApiConfig("p", "1", "/p", "http://x", api_key=Mode.OPTIONAL)
    assert route_rows([plain]) == [("*", "*", "/p/*", "p:1", "api_key:optional")]


def test_forwarder_skips_a_suspended_endpoint_for_a_while() -> None:
    clock = Clock()
    fw = Forwarder(clock)
    targets = [b"http://one:1/x", b"http://two:2/x", b"http://three:3/x"]
    assert fw._ordered(targets) == targets
    fw._suspend(b"http://ONE:1/other?q")
    assert fw._ordered(targets) == [targets[1], targets[2], targets[0]]
    clock.advance(29)
    assert fw._ordered(targets)[0] == targets[1]
    clock.advance(2)
    assert fw._ordered(targets) == targets
    fw._suspend(targets[1])
    fw._answered(targets[1])  # it answered after all
    assert fw._ordered(targets) == targets


# -- any document: a config error at worst ---------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.text(max_size=8),
                     st.sampled_from(["mandatory", "optional", "http://h/x", "ftp://h", "/p",
                                      "{id}", "#/components", "mutualTLS", "apiKey", "header",
                                      "bearer", "api_key", "oauth2", "failover"]))
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["type", "in", "name", "scheme", "urls", "url",
                                         "security", "get", "post", "responses", "$ref",
                                         "security-types", "optional", "mtls", "key",
                                         "/a", "/b/{id}", "200", "description"]),
                        inner, max_size=4),
    ),
    max_leaves=10,
)
_TOP = st.fixed_dictionaries(
    {"info": st.just({"title": "T", "version": "1"})},
    optional={
        "openapi": st.sampled_from(["3.0.3", "3.1.0", "2.0", 3]),
        "swagger": st.just("2.0"),
        "x-wso2-basePath": _ANY,
        "x-wso2-production-endpoints": _ANY,
        "x-wso2-mutual-ssl": _ANY,
        "x-wso2-application-security": _ANY,
        "x-wso2-disable-security": _ANY,
        "servers": _ANY,
        "security": _ANY,
        "securityDefinitions": _ANY,
        "components": st.fixed_dictionaries({"securitySchemes": _ANY}),
        "paths": _ANY,
        "host": _ANY,
        "basePath": _ANY,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_TOP)
def test_any_definition_is_a_config_error_at_worst(tmp_path: Path, doc: dict[str, Any]) -> None:
    import json

    try:
        parsed = parse(tmp_path, json.dumps(doc), "h.json")
    except Exception as e:  # pragma: no cover - the failure is the report
        raise AssertionError(f"{type(e).__name__}: {e} for {doc!r}") from e
    assert all(isinstance(p, str) and p for p in parsed.problems)


# A definition that uses what routing and security read, at every level: servers, WSO2's
# base path and endpoints (by value and by reference), both security levels, each scheme
# type, path parameters by reference, templates with two parameters in a segment,
# per-operation security, throttling tiers, disable-security and $refs in schemas.
_RICH: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Pets", "version": "1.0.5"},
    "servers": [{"url": "http://127.0.0.1:8080/v2"}],
    "x-wso2-basePath": "/petstore/{version}",
    "x-wso2-production-endpoints": {
        "urls": ["http://127.0.0.1:8080/v2", "http://127.0.0.1:8081/v2"], "type": "failover"},
    "x-wso2-endpoints": [{"other": {"urls": ["http://127.0.0.1:9090/x"]}}],
    "x-wso2-mutual-ssl": "optional",
    "x-wso2-application-security": {"security-types": ["api_key", "oauth2"], "optional": False},
    "x-wso2-throttling-tier": "10kPerMin",
    "security": [{"mtls": []}, {"key": []}],
    "components": {
        "securitySchemes": {
            "mtls": {"type": "mutualTLS"},
            "key": {"type": "apiKey", "in": "header", "name": "X-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        },
        "schemas": {"Pet": {"properties": {"id": {"$ref": "#/components/schemas/Id"}}},
                    "Id": {"type": "integer"}},
        "parameters": {"petId": {"name": "petId", "in": "path", "required": True}},
    },
    "paths": {
        "/pets": {
            "get": {"x-wso2-throttling-tier": "Unlimited", "responses": {"200": {
                "description": "ok",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}},
            }}},
            "post": {"security": [{"bearer": []}],
                     "x-wso2-production-endpoints": "#/x-wso2-endpoints/other",
                     "responses": {"201": {"description": "made"}}},
        },
        "/pets/{petId}": {
            "parameters": [{"$ref": "#/components/parameters/petId"}],
            "get": {"x-wso2-disable-security": True, "responses": {"200": {"description": "ok"}}},
            "delete": {"security": [], "x-auth-type": "None", "responses": {}},
        },
        "/daily/{year}-{month}": {"get": {
            "parameters": [{"name": "year", "in": "path", "required": True},
                           {"name": "month", "in": "path", "required": True}],
            "x-wso2-application-security": {"security-types": ["basic_auth"], "optional": True},
            "responses": {"200": {"description": "ok"}},
        }},
    },
}


def _places(node: Any, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [at] if at else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else ()
    for key, value in items:
        out += _places(value, (*at, key))
    return out


_WRONG = st.sampled_from([
    None, True, 0, -1, 2**70, 1.5, "", "x", "{id}", "/", "http://[::1", "MANDATORY",
    "#/components/schemas/Nope", "#/x-wso2-endpoints/nope", [], [None], [{}], {},
    {"$ref": "#/nope"}, {"$ref": 5}, {"urls": ["http://[::1"]}, ["x", "x"], "__delete__",
])


@settings(max_examples=200, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_places(_RICH)), _WRONG), min_size=1, max_size=2))
def test_a_wrong_value_anywhere_in_a_definition_is_a_problem_naming_its_pointer(
    tmp_path: Path, changes: list[tuple[tuple[str | int, ...], Any]]
) -> None:
    """A value of the wrong type (or none) at any place of a definition that uses every
    part routing and security read: reading it never raises, and each problem is one
    line naming the file and the key (a definition's problems: its JSON pointer), short.
    (Swept whole, 3,600 definitions, the one traceback was a $ref urlsplit refused.)"""
    import copy
    import json

    doc = copy.deepcopy(_RICH)
    for place, value in changes:
        node: Any = doc
        try:
            for key in place[:-1]:
                node = node[key]
            if value == "__delete__":
                del node[place[-1]]
            else:
                node[place[-1]] = value
        except (KeyError, IndexError, TypeError):  # the first change removed this place
            continue
    parsed = parse(tmp_path, json.dumps(doc), "d.json", jwt_issuers=True)
    for line in (*parsed.problems, *parsed.config.warnings):
        # The definition's own problems name apis[0].openapi and a JSON pointer; what it
        # changes elsewhere (a truststore now needed) names that key.
        assert line.startswith(f"{tmp_path / 'gw.toml'}: "), line
        assert "\n" not in line and len(line) < 600, line
