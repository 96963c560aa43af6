"""CORS in memory (#25 item 6): the settings as the readers take them ([apis.cors] and
x-wso2-cors in WSO2's spellings), and the decisions on preflights and answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.configtext import SHOP, problems
from tests.configtext import load as parse
from twistedgw import config as configmod
from twistedgw.config import ConfigError, CorsConfig, normal_origin
from twistedgw.http import _cors as cors
from twistedgw.wire import Fields

BASE = SHOP


def settings(**kw: Any) -> CorsConfig:
    values: dict[str, Any] = {"origins": frozenset({"https://app.example.com"})}
    values.update(kw)
    return CorsConfig(**values)


def fields(*pairs: tuple[str, str]) -> Fields:
    return Fields([(n.encode(), v.encode()) for n, v in pairs])


def test_toml_table_is_read_and_normalised(tmp_path: Path) -> None:
    api = parse(tmp_path, BASE + """\
[apis.cors]
allow_origins = ["HTTPS://App.Example.com:443/", "http://localhost:3000"]
allow_methods = ["GET", "DELETE"]
allow_headers = ["Authorization", "X-Trace"]
allow_credentials = true
expose_headers = ["WWW-Authenticate"]
max_age = 600
""").apis[0]
    assert api.cors == CorsConfig(
        origins=frozenset({"https://app.example.com", "http://localhost:3000"}),
        methods=("GET", "DELETE"), headers=frozenset({"authorization", "x-trace"}),
        credentials=True, expose_headers=("WWW-Authenticate",), max_age=600)
    # Absent lists take WSO2's gateway defaults; no table: no CORS at all.
    plain = parse(tmp_path, BASE + '[apis.cors]\nallow_origins = ["*"]\n').apis[0].cors
    assert plain is not None and plain.any_origin and plain.methods == (
        "GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")
    assert "content-type" in plain.headers and "soapaction" in plain.headers
    assert parse(tmp_path, BASE).apis[0].cors is None


def test_toml_table_problems_name_their_keys(tmp_path: Path) -> None:
    assert problems(tmp_path, BASE + '[apis.cors]\nallow_origins = ["*"]\n'
                    "allow_credentials = true\n") == [
        'apis[0].cors.allow_credentials: cannot be true with allow_origins = ["*"]: browsers '
        "refuse credentialed answers to any origin (and allowing every origin to read answers "
        "made with the user's credentials would hand them to any page); list the origins"]
    said = problems(tmp_path, BASE + """\
[apis.cors]
allow_origins = ["null", "https://*.example.com", "https://a.example/path", "*"]
allow_methods = ["GET", "BAD METHOD"]
allow_headers = ["X Bad"]
max_age = -1
colour = "red"
""")
    assert said == [
        "apis[0].cors.colour: unknown key",
        "apis[0].cors.allow_origins[0]: 'null' is the origin of sandboxed frames and file: "
        "pages, which any page can produce; list real origins",
        "apis[0].cors.allow_origins[1]: 'https://*.example.com': a wildcard inside an origin "
        'is not supported; list each origin, or allow any with "*"',
        "apis[0].cors.allow_origins[2]: 'https://a.example/path' is not an origin: write "
        "scheme://host[:port], as browsers send it",
        'apis[0].cors.allow_origins: "*" allows any origin: list it alone',
        "apis[0].cors.allow_methods[1]: not an HTTP method: 'BAD METHOD'",
        "apis[0].cors.allow_headers[0]: not a valid HTTP header name: 'X Bad'",
        "apis[0].cors.max_age: must not be negative, got -1",
    ]
    assert problems(tmp_path, BASE + "[apis.cors]\nmax_age = 1\n") == [
        'apis[0].cors.allow_origins: is required: the origins browsers may call the API '
        'from, such as ["https://app.example.com"] (or ["*"])']


def test_normal_origin() -> None:
    assert normal_origin("https://A.example:443") == "https://a.example"
    assert normal_origin("http://a.example:8080/") == "http://a.example:8080"
    assert normal_origin("http://[::1]:80") == "http://[::1]"
    for bad in ("a.example", "https://a.example/x", "https://u@a.example", "https://",
                "https://a.example:99999", "https://a example"):
        assert normal_origin(bad) is None, bad


DEFINITION = """\
openapi: 3.0.0
info: {{title: Shop, version: "1"}}
x-wso2-basePath: /shop
x-wso2-production-endpoints: {{urls: ["http://127.0.0.1:9/"]}}
security: []
{cors}
paths:
  /items:
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


def from_definition(tmp_path: Path, cors_yaml: str) -> tuple[configmod.GatewayConfig | None,
                                                                list[str]]:
    (tmp_path / "shop.yaml").write_text(DEFINITION.format(cors=cors_yaml))
    text = BASE.split("[[apis]]")[0] + '[[apis]]\nopenapi = "shop.yaml"\n'
    try:
        cfg = parse(tmp_path, text)
    except ConfigError as e:
        return None, [line.split(": ", 1)[1] for line in e.problems]
    return cfg, [w.split(": ", 1)[1] for w in cfg.warnings]


@pytest.mark.parametrize("spelling", [
    # Microgateway 3.x definitions (its sample cors_sample.yaml), API Manager exports, and
    # the snake case the Microgateway toolkit also reads.
    ("access-control-allow-origins", "access-control-allow-methods",
     "access-control-allow-headers", "access-control-allow-credentials"),
    ("accessControlAllowOrigins", "accessControlAllowMethods", "accessControlAllowHeaders",
     "accessControlAllowCredentials"),
    ("access_control_allow_origins", "access_control_allow_methods",
     "access_control_allow_headers", "access_control_allow_credentials"),
])
def test_x_wso2_cors_in_each_spelling(tmp_path: Path, spelling: tuple[str, ...]) -> None:
    origins, methods, headers, credentials = spelling
    cfg, _warnings = from_definition(tmp_path, f"""\
x-wso2-cors:
  {origins}: ["https://app.example.com"]
  {methods}: [GET, PUT]
  {headers}: [Authorization, Content-Type]
  {credentials}: true
""")
    assert cfg is not None
    assert cfg.apis[0].cors == CorsConfig(
        origins=frozenset({"https://app.example.com"}), methods=("GET", "PUT"),
        headers=frozenset({"authorization", "content-type"}), credentials=True)


def test_x_wso2_cors_problems_name_the_definition_pointer(tmp_path: Path) -> None:
    cfg, said = from_definition(tmp_path, """\
x-wso2-cors:
  accessControlAllowOrigins: ["*"]
  accessControlAllowCredentials: true
  corsConfigurationEnabled: true
""")
    assert cfg is None
    assert said == [f"apis[0].openapi: {tmp_path / 'shop.yaml'}: "
                    "#/x-wso2-cors/accessControlAllowCredentials: cannot be true with "
                    'allow_origins = ["*"]: browsers refuse credentialed answers to any origin '
                    "(and allowing every origin to read answers made with the user's "
                    "credentials would hand them to any page); list the origins"]
    cfg, said = from_definition(tmp_path, """\
x-wso2-cors:
  access-control-allow-origins: ["https://a.example", "https://b example"]
  accessControlAllowOrigins: ["https://a.example"]
""")
    assert cfg is None and said[0].endswith(
        "#/x-wso2-cors/accessControlAllowOrigins: allow origins is given twice (in two "
        "spellings); keep one")


def test_x_wso2_cors_host_names_warn_and_disabled_is_no_cors(tmp_path: Path) -> None:
    # WSO2's own sample lists host names; neither gateway ever matches them.
    cfg, warnings = from_definition(tmp_path, """\
x-wso2-cors:
  access-control-allow-origins: [test.com, "https://example.com"]
""")
    assert cfg is not None and cfg.apis[0].cors is not None
    assert cfg.apis[0].cors.origins == {"https://example.com"}
    assert any("#/x-wso2-cors/access-control-allow-origins/0: 'test.com' is not an origin"
               in w and "did you mean 'https://test.com'?" in w for w in warnings), warnings
    # Only host names: WSO2 loads the definition and no browser origin matches; so does
    # twistedgw, serving the API without CORS, and says so.
    cfg, warnings = from_definition(tmp_path, "x-wso2-cors:\n  access-control-allow-origins: "
                                              "[test.com]\n")
    assert cfg is not None and cfg.apis[0].cors is None
    assert any("#/x-wso2-cors/access-control-allow-origins: no entry is an origin "
                            "(scheme://host[:port]), so no browser could call the API: it is "
                            "served without CORS" in w for w in warnings), warnings
    # API Manager exports write corsConfigurationEnabled: false: no CORS, and a warning.
    cfg, warnings = from_definition(tmp_path, """\
x-wso2-cors:
  corsConfigurationEnabled: false
  accessControlAllowOrigins: ["*"]
""")
    assert cfg is not None and cfg.apis[0].cors is None
    assert any("corsConfigurationEnabled: false" in w for w in warnings)


def test_preflight_allowed_echoes_method_and_headers() -> None:
    policy = settings(credentials=True, max_age=300,
                      headers=frozenset({"authorization", "content-type"}))
    got = cors.preflight(policy, fields(
        ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "Content-Type, authorization")))
    assert got == [
        (b"Access-Control-Allow-Origin", b"https://app.example.com"),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"Access-Control-Allow-Methods", b"PUT"),
        (b"Access-Control-Allow-Headers", b"Content-Type, authorization"),
        (b"Access-Control-Max-Age", b"300"),
        (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ]


def test_preflight_refusals_say_why() -> None:
    policy = settings(methods=("GET", "PUT"))
    asked = [("Access-Control-Request-Method", "PUT")]
    cases = {
        "https://evil.example": "the origin 'https://evil.example' is not allowed",
        "https://app.example.com https://b.example": "not one origin",
    }
    for origin, why in cases.items():
        result = cors.preflight(policy, fields(("Origin", origin), *asked))
        assert isinstance(result, str) and why in result, result
    deleting = cors.preflight(policy, fields(("Origin", "https://app.example.com"),
                                             ("Access-Control-Request-Method", "DELETE")))
    assert deleting == ("the method 'DELETE' is not allowed by this API's CORS settings "
                        "(allowed: GET, PUT)")
    lower = cors.preflight(policy, fields(("Origin", "https://app.example.com"),
                                          ("Access-Control-Request-Method", "put")))
    assert isinstance(lower, str)  # methods compare exactly
    header = cors.preflight(policy, fields(("Origin", "https://app.example.com"), *asked,
                                           ("Access-Control-Request-Headers", "X-Secret")))
    assert header == "the header 'X-Secret' is not allowed by this API's CORS settings"
    # Any origin, method and header: the origin is not echoed (no credentials).
    anything = CorsConfig(origins=frozenset(), any_origin=True, methods=("*",),
                          headers=frozenset({"*"}))
    got = cors.preflight(anything, fields(("Origin", "https://x.example"),
                                          ("Access-Control-Request-Method", "PURGE"),
                                          ("Access-Control-Request-Headers", "X-A")))
    assert not isinstance(got, str)
    assert got[0] == (b"Access-Control-Allow-Origin", b"*")


def test_actual_answers_carry_cors_headers_only_for_allowed_origins() -> None:
    policy = settings(expose_headers=("WWW-Authenticate", "X-Request-Id"))
    assert cors.actual(policy, fields(("Origin", "https://app.example.com"))) == [
        (b"Access-Control-Allow-Origin", b"https://app.example.com"),
        (b"Access-Control-Expose-Headers", b"WWW-Authenticate, X-Request-Id"),
        (b"Vary", b"Origin"),
    ]
    # Not allowed, absent, or two origins: nothing but Vary (the answer depends on it).
    for origin in (("Origin", "https://evil.example"),):
        assert cors.actual(policy, fields(origin)) == [(b"Vary", b"Origin")]
    assert cors.actual(policy, fields()) == [(b"Vary", b"Origin")]
    assert cors.actual(policy, fields(("Origin", "https://app.example.com"),
                                      ("Origin", "https://app.example.com"))) == [
        (b"Vary", b"Origin")]
    # "*" without credentials does not depend on the origin: no Vary.
    star = CorsConfig(origins=frozenset(), any_origin=True)
    assert cors.actual(star, fields(("Origin", "https://x.example"))) == [
        (b"Access-Control-Allow-Origin", b"*")]
    assert cors.actual(star, fields()) == []
    assert cors.is_preflight(b"OPTIONS", fields(("Origin", "https://x.example"),
                                                ("Access-Control-Request-Method", "GET")))
    assert not cors.is_preflight(b"OPTIONS", fields(("Origin", "https://x.example")))
    assert not cors.is_preflight(b"GET", fields(("Origin", "https://x.example"),
                                                ("Access-Control-Request-Method", "GET")))


def test_the_responder_replaces_the_backends_cors_headers() -> None:
    seen: list[Any] = []

    class Inner:
        started = finished = gone = False

        def start_response(self, status: int, headers: list[tuple[bytes, bytes]],
                           length: int | None, reason: bytes | None = None) -> None:
            seen.append((status, headers, length))

    wrapped = cors.CorsResponder(Inner(), [(b"Access-Control-Allow-Origin", b"https://a")])  # type: ignore[arg-type]
    wrapped.start_response(200, [(b"access-control-allow-origin", b"*"), (b"X-A", b"1"),
                                 (b"Access-Control-Allow-Credentials", b"true")], 3)
    assert seen == [(200, [(b"X-A", b"1"), (b"Access-Control-Allow-Origin", b"https://a")], 3)]
