"""WSO2 definitions in memory (issue 24): leniency, the extension table, WSO2's two-level
security rule, TOML security over a definition, and the error style.

Definitions are written here in the shapes WSO2 documents and its Microgateway and
Choreo Connect repositories use (``x-wso2-*`` extensions, API Manager exports with
``x-auth-type`` and ``x-throttling-tier``). The real-process tests are in
test_wso2_gateway.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_openapi import BASE, OK_PATHS, only_api, parse, problems_of
from twistedgw import config as configmod
from twistedgw import errors
from twistedgw.config import Mode, Security, route_rows, security_changes
from twistedgw.config import _wso2ext as ext
from twistedgw.config._yamlload import plain_load, safe_load
from twistedgw.pipeline import SchemeResult
from twistedgw.pipeline._run import Named, combine

# -- YAML: the fast loader reads what PyYAML's safe_load reads --------------------------

_KEYS = st.one_of(st.text(max_size=6), st.integers(-5, 300), st.booleans())
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["yes", "No", "on", "~", "null", "0x1F", "0o17", "1_000", "1:20", ".inf",
                     "-.Inf", "2002-12-14", "2001-12-14t21:59:43.10-05:00", "=", "<<", "",
                     "'quoted'", "#/x-wso2-endpoints/a", "{version}", "1e3", "+12"]),
)
_DOCS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)
_TRICKY = [
    "a: &x [1, 2]\nb: *x\n", "<<: {a: 1}\nb: 2\n", "a: {<<: [{x: 1}, {y: 2}], x: 3}\n",
    "? [1]\n: 2\n", "a: *undefined\n", "--- 1\n--- 2\n", "a: !custom 1\n", "a: !!str 12\n",
    "a: !!binary aGVsbG8=\n", "{a: 1, a: 2}\n", "x: [\n", "a: 'it''s'\nb: \"\\t\"\n",
    "- |\n  block\n  text\n- >\n  folded\n", "", "# only a comment\n", "[" * 80 + "]" * 80,
    "a: 2001-12-14\n2001-12-15: b\n", "a: ! 12\n", "? a\n? b\n", "a: =\n",
    # Repeated plain scalars (each text is resolved once), beside quoted and tagged ones.
    "a: [true, true, 'true', !!str true, 1, 1, '1', 2001-12-14, 2001-12-14, ~, ~]\n"
    "true: 1\n1: true\nb: {c: [1, [1, [1]]], d: 1}\n",
    "a: [true, true, 'true', 1, 1, '1', 2001-12-14, 2001-12-14, ~, ~, 0o17, 0o17]\n"
    "true: 1\n1: true\nb: {c: [1, [1, [1]]], d: 1}\n",
]


def _same(text: str) -> None:
    try:
        expected: Any = yaml.safe_load(text)
    except Exception as e:
        expected = ("error", type(e))
    try:
        found: Any = safe_load(text)
    except Exception as e:
        found = ("error", type(e))
    assert found == expected, text


@pytest.mark.parametrize("text", _TRICKY)
def test_fast_yaml_matches_safe_load_on_tricky_documents(text: str) -> None:
    _same(text)


@settings(max_examples=200, deadline=None)
@given(_DOCS, st.sampled_from([None, True, False]))
def test_fast_yaml_matches_safe_load(doc: Any, flow: bool | None) -> None:
    _same(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True))


def _same_shaped(text: str, max_nodes: int = 2_000_000, max_depth: int = 64) -> bool:
    """``plain_load`` gives what ``safe_load`` then ``_plain`` give, or leaves the document
    to them (ValueError); whether it read it."""
    from twistedgw.config._openapi import _plain

    try:
        expected: Any = _plain(yaml.safe_load(text))
    except Exception as e:
        expected = ("error", type(e))
    try:
        found = plain_load(text, max_nodes, max_depth)
    except ValueError:
        return False
    assert found == expected, text
    return True


_SHAPED = [
    "a: 2001-12-14\n2001-12-15: b\nc: [2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43]\n",
    "200: {description: ok}\n'200': {description: quoted}\n",  # the quoted one wins
    "true: a\n1: b\n",  # one key in YAML (True == 1): "True"
    "1: a\ntrue: b\nnull: c\n1.5: d\n",
    "2001-12-14\n",
    "[1, [2, [3, {a: [4, {5: 6}]}]]]\n",
]


@pytest.mark.parametrize("text", _SHAPED)
def test_one_pass_reads_documents_in_json_shape(text: str) -> None:
    assert _same_shaped(text)


@pytest.mark.parametrize("text", _TRICKY)
def test_one_pass_reads_tricky_documents_as_two_passes_do(text: str) -> None:
    _same_shaped(text)


def test_one_pass_leaves_aliases_and_limits_to_the_long_way() -> None:
    """Aliases (shared in YAML, copies in JSON) and the node and depth bounds are left to
    ``_plain``, which words the refusal."""
    assert not _same_shaped("a: &x [1, 2]\nb: *x\n")
    assert not _same_shaped("a: &x 1\n")
    from twistedgw.config._openapi import _plain

    # _plain's count: each container and each value in one, 3 + 3 + 2 here.
    assert _same_shaped("[[1, 2], [3]]\n", max_nodes=8, max_depth=1)
    _plain([[1, 2], [3]], budget=[8])
    assert not _same_shaped("[[1, 2], [3, 4]]\n", max_nodes=8, max_depth=1)
    with pytest.raises(ValueError, match="more than"):
        _plain([[1, 2], [3, 4]], budget=[8])
    assert not _same_shaped("[[[1]]]\n", max_depth=1)


@settings(max_examples=200, deadline=None)
@given(_DOCS, st.sampled_from([None, True, False]))
def test_one_pass_reads_any_document_as_two_passes_do(doc: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    assert _same_shaped(text) or "&" in text


# -- item 1: strict where routing and security read, lenient elsewhere --------------------


def test_problems_elsewhere_are_warnings_naming_their_pointer(tmp_path: Path) -> None:
    parsed = parse(tmp_path, BASE + """\
security: []
paths:
  /a:
    get:
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Missing'}
              examples:
                one: {$ref: 'https://example.com/ex.json'}
components:
  schemas:
    Pet: {properties: {owner: {$ref: '../outside.yaml'}, vet: {$ref: 'http://[::1'}}}
""")
    assert parsed.problems == ()
    warnings = [w.partition("apis[0].openapi: ")[2].partition(": ")[2]
                for w in parsed.config.warnings]
    assert sorted(warnings) == sorted([
        "#/paths/~1a/get/responses/200/content/application~1json/schema: $ref target "
        "#/components/schemas/Missing does not exist",
        "#/paths/~1a/get/responses/200/content/application~1json/examples/one: $ref "
        "'https://example.com/ex.json' names a URL; only files beside the definition are read",
        f"#/components/schemas/Pet/properties/owner: $ref '../outside.yaml' leaves the "
        f"definition's directory ({tmp_path / 'apis'})",
        # urlsplit raises on it (an unclosed '['): it was a traceback
        "#/components/schemas/Pet/properties/vet: $ref 'http://[::1' is not a usable reference",
    ])


def test_a_dangling_ref_where_routing_reads_is_an_error(tmp_path: Path) -> None:
    found = problems_of(parse(tmp_path, BASE + """\
security: []
paths:
  /a/{id}:
    parameters: [{$ref: '#/components/parameters/nope'}]
    get: {responses: {'200': {description: ok}}}
"""))
    assert found[0] == ("#/paths/~1a~1{id}/parameters/0: $ref '#/components/parameters/nope': "
                        "$ref target #/components/parameters/nope does not exist")


def test_messages_quote_short_excerpts_once(tmp_path: Path) -> None:
    huge = {"k" + str(i): "v" * 50 for i in range(2000)}
    found = problems_of(parse(tmp_path, json.dumps({
        "openapi": "3.0.3", "info": {"title": "T", "version": "1"},
        "x-wso2-basePath": huge, "x-wso2-production-endpoints": {"urls": ["http://b"]},
        "security": [], "paths": {"/a": {"get": {"responses": {}}}, "/b": {"get": [huge]}},
    }), "d.json"))
    assert found and all(len(line) < 300 for line in found), found
    assert len(found) == len(set(found))
    assert found[0].startswith('#/x-wso2-basePath: expected a path such as \'/petstore/v1\', '
                               'got {"k0": "')


def test_wso2_enumerated_values_compare_case_insensitively(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, """\
openapi: 3.0.3
info: {title: T, version: "1"}
x-wso2-basePath: /t
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:9/b"], type: HTTP}
x-wso2-mutual-ssl: Optional
x-wso2-application-security: {security-types: [API_KEY], optional: false}
""" + OK_PATHS))
    assert (api.mutual_ssl, api.api_key, api.endpoints) == (
        Mode.OPTIONAL, Mode.MANDATORY, ("http://127.0.0.1:9/b",))
    api = only_api(parse(tmp_path, BASE.replace("{urls:", "{type: Failover, urls:")
                         + "security: []\n" + OK_PATHS))
    assert api.backend_mode == "failover"
    found = problems_of(parse(tmp_path, BASE.replace(
        "{urls: [", "{type: http, urls: [\"http://127.0.0.1:8/a\", ") + "security: []\n"
        + OK_PATHS))
    assert found == ["#/x-wso2-production-endpoints/type: type 'http' names one endpoint; use "
                     "'load_balance' or 'failover' for several urls"]


# -- item 2: nothing silent -----------------------------------------------------------------

#: A value for each extension that asks for something (not inert).
_ASKING: dict[str, Any] = {
    "x-wso2-basePath": "/t", "x-wso2-production-endpoints": {"urls": ["http://127.0.0.1:7"]},
    "x-wso2-sandbox-endpoints": {"urls": ["http://127.0.0.1:7"]},
    "x-wso2-endpoints": [{"e": {"urls": ["http://127.0.0.1:7"]}}],
    "x-wso2-request-interceptor": "validateRequest",
    "x-wso2-response-interceptor": "validateResponse",
    "x-wso2-throttling-tier": "10kPerMin", "x-throttling-tier": "50KPerMin",
    "x-wso2-cors": {"access-control-allow-origins": ["test.com"]},
    "x-wso2-response-cache": {"enabled": True, "cacheTimeoutInSeconds": 60},
    "x-wso2-disable-security": False,
    "x-wso2-application-security": {"security-types": ["api_key"]},
    "x-wso2-auth-header": "X-Token", "x-wso2-api-key-header": "X-Key",
    "x-wso2-transports": ["https"], "x-wso2-mutual-ssl": "optional",
    "x-auth-type": "Application", "x-scope": "read:pets",
    "x-wso2-security": {"apim": {"x-wso2-scopes": []}}, "x-wso2-owner": "admin",
    "x-wso2-label": ["default"], "x-wso2-pass-request-payload-to-enforcer": True,
    "x-wso2-http2-backend-enabled": True,
    "securityConfig": {"type": "basic", "username": "u"},
    "advanceEndpointConfig": {"timeoutInMillis": 3000},
}
#: A value that asks for nothing twistedgw does not do.
_INERT: dict[str, Any] = {
    "x-wso2-throttling-tier": "unlimited", "x-throttling-tier": "Unlimited",
    "x-wso2-cors": {"corsConfigurationEnabled": False},
    "x-wso2-response-cache": {"enabled": False, "cacheTimeoutInSeconds": 300},
    "x-wso2-auth-header": "authorization", "x-wso2-transports": ["HTTP", "https"],
    "x-wso2-http2-backend-enabled": False,
    "securityConfig": {"enabled": False, "type": "basic"},
}


def test_every_extension_is_honoured_or_refused_by_name() -> None:
    assert set(_ASKING) == set(ext.BY_NAME), "a value for every extension of the table"
    for known in ext.EXTENSIONS:
        for level, support in known.levels.items():
            findings = list(ext.judge(known.name, _ASKING[known.name], level, "#/p"))
            if support is ext.Support.HONOURED:
                assert findings == [], (known.name, level)
                continue
            (finding,) = findings
            assert finding.error and finding.where == "#/p"
            assert finding.message.startswith(known.name + " is not supported")
            if known.name in _INERT:
                assert all(not f.error for f in ext.judge(known.name, _INERT[known.name],
                                                          level, "#/p"))
    (interceptor,) = ext.judge("x-wso2-request-interceptor", "f", ext.RESOURCE, "#/p")
    assert "[[apis.plugins]]" in interceptor.message


def test_unknown_names_and_misplaced_extensions() -> None:
    def judged(name: str, level: str = ext.API) -> list[tuple[bool, str]]:
        return [(f.error, f.message) for f in ext.judge(name, "x", level, "#/p")]

    assert judged("x-wso2-mutual-sll") == [(True, "unknown extension 'x-wso2-mutual-sll': did "
                                            "you mean 'x-wso2-mutual-ssl'? (a misspelt security "
                                            "extension would be ignored; fix it or remove it)")]
    assert judged("x-wso2-Disable-Security")[0][0] is True  # case is no excuse
    assert judged("x-wso2-transport")[0][0] is True
    assert judged("x-wso2-basepath") == [(False, "unknown WSO2 extension 'x-wso2-basepath' is "
                                          "ignored; did you mean 'x-wso2-basePath'?")]
    assert judged("x-wso2-something-else") == [
        (False, "unknown WSO2 extension 'x-wso2-something-else' is ignored")]
    assert judged("x-github") == []  # another vendor's
    # WSO2 reads x-wso2-mutual-ssl on the API only: on an operation it would protect nothing
    ((error, message),) = judged("x-wso2-mutual-ssl", ext.RESOURCE)
    assert error and message.startswith("x-wso2-mutual-ssl is read at the api level only")
    ((error, _message),) = judged("x-wso2-cors", ext.RESOURCE)
    assert not error


def test_definitions_in_api_manager_export_shape_load(tmp_path: Path) -> None:
    """What API Manager and Choreo Connect export: disabled CORS and cache, both
    transports, Authorization, Unlimited tiers, x-auth-type per resource."""
    parsed = parse(tmp_path, """\
openapi: 3.0.1
info: {title: Exported, version: 1.0.0}
x-wso2-basePath: /exported/1.0.0
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:9/v2"], type: http}
x-wso2-auth-header: Authorization
x-wso2-cors: {corsConfigurationEnabled: false, accessControlAllowOrigins: ['*']}
x-wso2-transports: [http, https]
x-wso2-response-cache: {enabled: false, cacheTimeoutInSeconds: 300}
x-throttling-tier: Unlimited
x-wso2-mutual-ssl: optional
x-wso2-application-security: {security-types: [api_key], optional: false}
paths:
  /pets:
    get:
      x-auth-type: Application & Application User
      x-throttling-tier: Unlimited
      responses: {'200': {description: ok}}
  /health:
    get:
      x-auth-type: None
      responses: {'200': {description: ok}}
""")
    assert problems_of(parsed) == []
    assert [w.rpartition(": #/")[2] for w in parsed.config.warnings] == [
        "x-wso2-cors: x-wso2-cors: CORS is disabled here (corsConfigurationEnabled: false), so "
        "no CORS headers are sent; WSO2's gateways then apply their gateway-wide CORS settings, "
        "which twistedgw does not have"]
    rows = {(m, p): s for _h, m, p, _a, s in route_rows(parsed.config.apis)}
    assert rows[("GET", "/exported/1.0.0/pets")] == "mutual_ssl:optional api_key:mandatory"
    assert rows[("GET", "/exported/1.0.0/health")] == "open"


def test_features_not_built_yet_are_refused(tmp_path: Path) -> None:
    found = problems_of(parse(tmp_path, BASE + """\
security: []
x-wso2-cors: {access-control-allow-origins: [test.com]}
x-wso2-mutual-sll: mandatory
paths:
  /a:
    get:
      x-wso2-request-interceptor: validateRequest
      responses: {'200': {description: ok}}
"""))
    # (x-wso2-cors is honoured; WSO2's host names as origins match no browser: a warning,
    # tests/test_cors_unit.py.)
    assert [f.split(":")[0] for f in found] == [
        "#/x-wso2-mutual-sll", "#/paths/~1a/get/x-wso2-request-interceptor"]


# -- item 3: WSO2's whole security rule -----------------------------------------------------


class _Scheme:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode


def _run(levels: list[tuple[str, Mode, str | None, bool, bool]]) -> Any:
    """``combine`` over schemes given as (name, mode, group, passed, presented)."""
    from twistedgw.pipeline import Call

    schemes = [Named(name, _Scheme(mode), group=group) for name, mode, group, _p, _r in levels]
    results = [SchemeResult(passed=p, presented=r, reason=f"{name} said no")
               for name, _m, _g, p, r in levels]
    call = Call.__new__(Call)
    return combine(schemes, results, call)


M, OPT = Mode.MANDATORY, Mode.OPTIONAL


@pytest.mark.parametrize(("levels", "allowed"), [
    # mTLS mandatory AND (jwt OR api_key), WSO2's mutual_ssl_openAPI
    ([("mutual_ssl", M, None, True, True), ("jwt", M, "app", False, False),
      ("api_key", M, "app", True, True)], True),
    ([("mutual_ssl", M, None, True, True), ("jwt", M, "app", False, False),
      ("api_key", M, "app", False, False)], False),
    ([("mutual_ssl", M, None, False, False), ("jwt", M, "app", True, True),
      ("api_key", M, "app", True, True)], False),
    # nothing mandatory: one optional level passes
    ([("mutual_ssl", OPT, None, False, False), ("jwt", OPT, "app", False, True),
      ("api_key", OPT, "app", True, True)], True),
    ([("mutual_ssl", OPT, None, False, False), ("jwt", OPT, "app", False, True),
      ("api_key", OPT, "app", False, False)], False),
    # flat (no group): every mandatory scheme must pass
    ([("mutual_ssl", M, None, True, True), ("jwt", M, None, False, False),
      ("api_key", M, None, True, True)], False),
])
def test_the_two_level_rule(levels: list[Any], allowed: bool) -> None:
    refusal = _run(levels)
    assert (refusal is None) == allowed, refusal


def test_security_requirements_in_wso2_levels(tmp_path: Path) -> None:
    from tests.test_openapi import SCHEMES_31

    def security(requirement: str) -> Security:
        api = only_api(parse(tmp_path, f"""\
openapi: 3.1.0
info: {{title: T, version: "1"}}
servers: [{{url: "http://127.0.0.1:9/t"}}]
{SCHEMES_31}security: {requirement}
{OK_PATHS}""", jwt_issuers=True))
        return Security(api.mutual_ssl, api.api_key, api.api_key_header, api.jwt,
                        any_of=api.any_of)

    # mTLS in every alternative beside one application scheme each: mTLS AND any one
    assert security("[{mtls: [], key: []}, {mtls: [], bearer: []}]") == Security(
        M, M, "X-Key", M, any_of=frozenset({"api_key", "jwt"}))
    # alternatives of one scheme each: any one (flat optional, the same rule)
    assert security("[{key: []}, {bearer: []}]") == Security(Mode.DISABLED, OPT, "X-Key", OPT)


def test_x_wso2_mutual_ssl_stays_on_every_operation_unless_disabled(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, BASE + """\
x-wso2-mutual-ssl: mandatory
x-wso2-application-security: {security-types: [api_key], optional: true}
paths:
  /a:
    get: {security: [], responses: {'200': {description: ok}}}
  /b:
    get: {x-wso2-disable-security: true, responses: {'200': {description: ok}}}
  /c:
    get:
      x-wso2-application-security: {security-types: [api_key], optional: false}
      responses: {'200': {description: ok}}
"""))
    rows = {p: s for _h, m, p, _a, s in route_rows([api]) if m == "GET"}
    assert rows == {"/t/a": "mutual_ssl:mandatory", "/t/b": "open",
                    "/t/c": "mutual_ssl:mandatory api_key:mandatory"}
    assert api.api_key is OPT  # the API level: the key is optional beside mandatory mTLS


def test_disable_security_most_specific_wins_both_ways(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, BASE + """\
x-wso2-mutual-ssl: mandatory
x-wso2-disable-security: true
paths:
  /open:
    get: {responses: {'200': {description: ok}}}
  /closed:
    get: {x-wso2-disable-security: false, responses: {'200': {description: ok}}}
  /path:
    x-wso2-disable-security: false
    get: {responses: {'200': {description: ok}}}
    put: {x-wso2-disable-security: true, responses: {'200': {description: ok}}}
"""))
    rows = {(m, p): s for _h, m, p, _a, s in route_rows([api])}
    assert rows[("GET", "/t/open")] == "open"
    assert rows[("GET", "/t/closed")] == "mutual_ssl:mandatory"
    assert rows[("GET", "/t/path")] == "mutual_ssl:mandatory"
    assert rows[("PUT", "/t/path")] == "open"


# -- item 4: TOML security is never silently lost ---------------------------------------

_MIXED = BASE + """\
x-wso2-disable-security: true
paths:
  /inherits:
    get: {responses: {'200': {description: ok}}}
  /own:
    get:
      x-wso2-disable-security: false
      x-wso2-application-security: {security-types: [api_key]}
      responses: {'200': {description: ok}}
  /public:
    get: {security: [], x-wso2-disable-security: false, responses: {'200': {description: ok}}}
"""


def test_toml_security_applies_to_every_operation_by_default(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, _MIXED, mutual_ssl="mandatory"))
    rows = {p: s for _h, m, p, _a, s in route_rows([api]) if m == "GET"}
    assert rows == {"/t/inherits": "mutual_ssl:mandatory",
                    "/t/own": "mutual_ssl:mandatory api_key:mandatory",
                    "/t/public": "mutual_ssl:mandatory"}
    assert security_changes(api) == [
        "GET /t/inherits: open in the definition (x-wso2-disable-security at "
        "#/x-wso2-disable-security), closed by the [[apis]] table's security keys: "
        "mutual_ssl:mandatory",
        "GET /t/public: open in the definition (security: [] at "
        "#/paths/~1public/get/security), closed by the [[apis]] table's security keys: "
        "mutual_ssl:mandatory",
    ]
    # the reverse: the TOML opens what the definition closes
    api = only_api(parse(tmp_path, _MIXED, api_key="disabled"))
    assert security_changes(api) == ["GET /t/own: secured in the definition "
                                     "(api_key:mandatory), opened by the [[apis]] table's "
                                     "security keys"]


def test_toml_security_api_level(tmp_path: Path) -> None:
    api = only_api(parse(tmp_path, _MIXED, mutual_ssl="mandatory", toml_security="api_level"))
    rows = {p: s for _h, m, p, _a, s in route_rows([api]) if m == "GET"}
    assert rows == {"/t/inherits": "mutual_ssl:mandatory", "/t/own": "api_key:mandatory",
                    "/t/public": "open"}
    assert [line.split(":")[0] for line in security_changes(api)] == ["GET /t/inherits"]
    parsed = configmod.parse_partial(
        {"listeners": [{"port": 1, "tls": False}],
         "apis": [{"name": "a", "context": "/a", "backend": "http://b",
                   "toml_security": "api_level"}]}, tmp_path / "gw.toml")
    assert [p.split(": ", 1)[1] for p in parsed.problems] == [
        "apis[0].toml_security: applies to [[apis]] tables with openapi only"]


def test_application_security_in_toml(tmp_path: Path) -> None:
    def read(**api: Any) -> configmod.Parsed:
        (tmp_path / "jwks.json").write_text('{"keys": []}')
        return configmod.parse_partial(
            {"listeners": [{"port": 1, "tls": False}],
             "apis": [{"name": "a", "context": "/a", "backend": "http://b", **api}],
             "api_keys": [{"name": "k", "key_sha256": "00" * 32}],
             "jwt_issuers": [{"name": "idp", "issuer": "https://idp", "jwks": "jwks.json",
                              "audiences": ["a"]}]}, tmp_path / "gw.toml")

    (api,) = read(application_security={"types": ["jwt", "api_key"]}).config.apis
    assert (api.jwt, api.api_key, api.any_of) == (M, M, frozenset({"jwt", "api_key"}))
    (api,) = read(mutual_ssl="mandatory",
                  application_security={"types": ["jwt"], "optional": True}).config.apis
    assert (api.mutual_ssl, api.jwt, api.any_of) == (M, OPT, frozenset())
    problems = [p.split(": ", 1)[1] for p in read(
        api_key="mandatory", application_security={"types": ["oauth2"]}).problems]
    assert problems == [
        "apis[0].api_key: give either application_security or api_key / jwt / basic_auth, not "
        "both",
        "apis[0].application_security.types: must list one or more of 'jwt', 'api_key', "
        "'basic_auth', got ['oauth2']"]


# -- item 5: error style ------------------------------------------------------------------


def test_error_bodies_in_either_style() -> None:
    error = errors.invalid_credentials("no")
    assert json.loads(error.body()) == {"code": "900901", "message": "Invalid Credentials",
                                        "description": "no"}
    assert json.loads(error.body("mgw")) == {"fault": {"code": 900901, "message":
                                                       "Invalid Credentials",
                                                       "description": "no"}}
    with errors.styled("mgw"):
        assert json.loads(errors.not_found("/x").body())["fault"]["code"] == 404
    assert errors.current_style() == "apim"
    with pytest.raises(ValueError):
        errors.use_style("xml")


# -- item 6 -----------------------------------------------------------------------------


def test_same_name_and_version_is_a_warning(tmp_path: Path) -> None:
    parsed = configmod.parse_partial(
        {"listeners": [{"port": 1, "tls": False}],
         "apis": [{"name": "a", "version": "1", "context": "/a", "backend": "http://b"},
                  {"name": "a", "version": "1", "context": "/b", "backend": "http://b"}]},
        tmp_path / "gw.toml")
    assert parsed.problems == ()
    assert [w.split(": ", 1)[1] for w in parsed.config.warnings] == [
        "apis[1]: the same name and version as apis[0] ('a:1'): logs and metrics cannot tell "
        "them apart"]


@settings(max_examples=100, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from([*sorted(ext.BY_NAME), "x-wso2-mutual-sll", "x-foo"]),
                       st.one_of(st.none(), st.booleans(), st.text(max_size=5),
                                 st.lists(st.text(max_size=5), max_size=2),
                                 st.dictionaries(st.text(max_size=5), st.booleans(),
                                                 max_size=2)), max_size=4))
def test_any_extension_value_is_a_config_error_at_worst(tmp_path: Path,
                                                        extensions: dict[str, Any]) -> None:
    doc = yaml.safe_load(BASE + "security: []\n" + OK_PATHS)
    doc.update(extensions)
    doc["paths"]["/a"]["get"].update(extensions)
    parsed = parse(tmp_path, json.dumps(doc), "e.json")
    assert all(isinstance(p, str) and p for p in parsed.problems)


def _documented_extensions() -> dict[str, str]:
    """The user documentation's table of WSO2 extensions: name -> its status column."""
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    rows: dict[str, str] = {}
    for page in pages:
        if not page.exists():
            continue
        inside = False
        for line in page.read_text().splitlines():
            if line.startswith("| extension | what it means in WSO2 |"):
                inside = True
                continue
            if inside and not line.startswith("|"):
                inside = False
            if inside and line.startswith("| `"):
                cells = [c.strip() for c in line.strip("|").split(" | ")]
                rows[cells[0].strip("`")] = cells[2]
    return rows


def test_the_documentation_table_is_the_code_table() -> None:
    documented = _documented_extensions()
    assert set(documented) == set(ext.BY_NAME)
    for name, status in documented.items():
        known = ext.BY_NAME[name]
        assert status == "; ".join(f"{level}: {support.value}"
                                   for level, support in known.levels.items()), name
        for level, support in known.levels.items():
            findings = list(ext.judge(name, _ASKING[name], level, "#/p"))
            if support is ext.Support.HONOURED:
                assert not findings, name
            else:
                assert findings[0].error and name in findings[0].message


def test_api_key_header_and_optional_only_application_security(tmp_path: Path) -> None:
    """API Manager 4's x-wso2-api-key-header names the key's header; an operation's
    x-wso2-application-security with only optional changes the optionality of the
    application level it inherits."""
    api = only_api(parse(tmp_path, BASE + """\
x-wso2-api-key-header: X-Partner-Key
x-wso2-mutual-ssl: mandatory
x-wso2-application-security: {security-types: [api_key]}
paths:
  /a:
    get: {responses: {'200': {description: ok}}}
  /b:
    get:
      x-wso2-application-security: {optional: true}
      responses: {'200': {description: ok}}
"""))
    rows = {p: s for _h, m, p, _a, s in route_rows([api]) if m == "GET"}
    assert rows == {"/t/a": "mutual_ssl:mandatory api_key(X-Partner-Key):mandatory",
                    "/t/b": "mutual_ssl:mandatory api_key(X-Partner-Key):optional"}
