"""Issue 25 items 4 and 7 in memory: API keys in the query, the bearer token's header
(``x-wso2-auth-header``) and ``x-wso2-transports``, read from definitions in WSO2's
documented shapes and run through the compiled pipelines and the router. The real
processes are in test_wso2_transport.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests import jwtkit
from tests.test_openapi import problems_of
from twistedgw import _query
from twistedgw import config as configmod
from twistedgw.config import MutualSslConfig
from twistedgw.http._routing import Router
from twistedgw.pipeline import HeaderEdit, Refusal, compile_pipelines
from twistedgw.pipeline._transports import Transports
from twistedgw.testing import fake_api, fake_call, run

IDP = jwtkit.ec("transport-idp")
KEY = "query-key-1"

DEFINITION = """\
openapi: 3.0.1
info: {title: Keys, version: "1"}
x-wso2-basePath: /keys
x-wso2-production-endpoints: {urls: ["http://backend.example/v1"]}
x-wso2-auth-header: X-Token
x-wso2-transports: [HTTPS]
components:
  securitySchemes:
    key: {type: apiKey, in: query, name: api_key}
    bearer: {type: http, scheme: bearer}
paths:
  /pets:
    get:
      security: [{key: []}]
      responses: {'200': {description: ok}}
  /orders:
    get:
      security: [{bearer: []}]
      responses: {'200': {description: ok}}
"""


def parse(tmp_path: Path, definition: str = DEFINITION, **api: Any) -> configmod.Parsed:
    (tmp_path / "apis").mkdir(exist_ok=True)
    (tmp_path / "apis" / "d.yaml").write_text(definition)
    jwtkit.write_jwks(tmp_path / "jwks.json", IDP)
    raw: dict[str, Any] = {
        "listeners": [{"port": 1, "tls": False}],
        "apis": [{"openapi": "apis/d.yaml", **api}],
        "api_keys": [{"name": "app", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
        "jwt_issuers": [{"name": "idp", "issuer": jwtkit.ISSUER, "jwks": "jwks.json",
                         "audiences": [jwtkit.AUDIENCE]}],
    }
    return configmod.parse_partial(raw, tmp_path / "gw.toml")


def send(parsed: configmod.Parsed, path: str, query: str | None,
         headers: dict[str, str]) -> tuple[Any, bytes]:
    assert not parsed.problems, parsed.problems
    problems: list[str] = []
    router = Router(parsed.config.apis, compile_pipelines(parsed.config, problems))
    q = query.encode() if query is not None else None
    route = router.route(path.encode(), q, b"GET")
    assert route is not None and route.pipeline is not None
    call = fake_call(path=path.encode(), query=q, headers=headers, api=route.security_api)
    return run(route.pipeline, call), route.backend_target


def test_query_parameter_values_and_removal() -> None:
    q = b"a=1&api_key=k1&b=x%20y&api%5Fkey=k2&api_key&c=api_key%3D3"
    assert _query.values(q, b"api_key") == [b"k1", b"k2", b""]
    assert _query.without(q, b"api_key") == b"a=1&b=x%20y&c=api_key%3D3"
    assert _query.without(b"api_key=1", b"api_key") is None
    assert _query.values(b"api+key=a+b&x=%41", b"api key") == [b"a b"]
    assert _query.without(None, b"k") is None and _query.values(None, b"k") == []


@given(st.lists(st.tuples(st.sampled_from(["api_key", "api%5Fkey", "api%5fkey", "x", "y%20z",
                                           "", "apikey", "api_key%00"]),
                          st.text("ab=%&+", max_size=4)), max_size=8))
def test_removal_leaves_no_key_and_keeps_every_other_pair(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v.replace('&', '').replace('=', '')}" for k, v in pairs).encode()
    left = _query.without(query, b"api_key")
    assert _query.values(left, b"api_key") == []
    kept = [p for p in query.split(b"&") if not _query.values(p, b"api_key")]
    assert (left or b"").split(b"&") == (kept or [b""])


def test_api_key_in_the_query(tmp_path: Path) -> None:
    parsed = parse(tmp_path)
    api = parsed.config.apis[0]
    (pets,) = [op for op in api.operations or () if op.template == "/pets"]
    assert pets.security is not None and pets.security.api_key_query == "api_key"
    outcome, target = send(parsed, "/keys/pets", f"x=1&api_key={KEY}&y=2", {})
    assert isinstance(outcome, HeaderEdit)
    assert target == b"http://backend.example/v1/pets?x=1&y=2"
    outcome, target = send(parsed, "/keys/pets", "api%5Fkey=" + KEY, {})
    assert isinstance(outcome, HeaderEdit) and target == b"http://backend.example/v1/pets"
    refused, _ = send(parsed, "/keys/pets", None, {"api_key": KEY})  # not a header here
    assert isinstance(refused, Refusal) and refused.error.code == "900902"
    refused, _ = send(parsed, "/keys/pets", f"api_key={KEY}&api_key={KEY}", {})
    assert isinstance(refused, Refusal)
    assert refused.error.description == "more than one API key was presented"
    rows = {(m, p): s for _h, m, p, _a, s in configmod.route_rows(parsed.config.apis)}
    assert rows[("GET", "/keys/pets")] == "api_key(query api_key):mandatory"
    assert rows[("GET", "/keys/orders")] == "jwt(X-Token):mandatory"


def test_the_bearer_tokens_header(tmp_path: Path) -> None:
    parsed = parse(tmp_path)
    token = "Bearer " + jwtkit.token(IDP)
    outcome, _ = send(parsed, "/keys/orders", None, {"X-Token": token,
                                                     "Authorization": "Basic dTpw"})
    assert isinstance(outcome, HeaderEdit)
    assert b"x-token" in outcome.removed and b"authorization" not in outcome.removed
    refused, _ = send(parsed, "/keys/orders", None, {"Authorization": token})
    assert isinstance(refused, Refusal) and refused.error.code == "900902"
    forwarded = parse(tmp_path, forward_authorization=True)
    outcome, _ = send(forwarded, "/keys/orders", None, {"X-Token": token})
    assert isinstance(outcome, HeaderEdit) and b"x-token" not in outcome.removed
    found = problems_of(parse(tmp_path, DEFINITION.replace("X-Token", "'X Token'")))
    assert found == ["#/x-wso2-auth-header: not a valid HTTP header name: 'X Token'"]


def _transports(api_transports: set[str], trusted: tuple[str, ...] = ("10.1.0.0/16",),
                unix: bool = False) -> Transports:
    trust = MutualSslConfig(trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted),
                            trust_unix_socket=unix)
    return Transports(fake_api(transports=frozenset(api_transports)), trust)


def _verdict(stage: Transports, *, secure: bool, client: str = "10.1.2.3",
             proto: str | list[str] | None = None) -> tuple[int, str, str] | None:
    headers = {} if proto is None else {"X-Forwarded-Proto": proto}
    refusal = stage.authorise(fake_call(secure=secure, client=client, headers=headers))
    return None if refusal is None else (refusal.error.status, refusal.error.code,
                                         refusal.error.description)


def test_https_only_and_http_only() -> None:
    https_only = _transports({"https"})
    assert _verdict(https_only, secure=True) is None
    assert _verdict(https_only, secure=False, proto="https") is None  # a trusted proxy's word
    assert _verdict(https_only, secure=False, proto="HTTPS") is None
    forbidden = (403, "900908", "this API is served over https only")
    assert _verdict(https_only, secure=False) == forbidden
    assert _verdict(https_only, secure=False, client="192.0.2.9", proto="https") == forbidden
    assert _verdict(https_only, secure=False, proto=["https", "https"]) == forbidden
    assert _verdict(https_only, secure=False, proto="http") == forbidden
    assert _verdict(https_only, secure=False, client="", proto="https") == forbidden
    assert _verdict(_transports({"https"}, unix=True), secure=False, client="",
                    proto="https") is None
    assert _verdict(_transports({"https"}), secure=False, client="::ffff:10.1.0.1",
                    proto="https") is None
    http_only = _transports({"http"})
    assert _verdict(http_only, secure=False) is None
    status, code, description = _verdict(http_only, secure=True) or (0, "", "")
    assert (status, code) == (404, "404")
    assert description == ("No API is deployed for the path '/t' over https: this API is "
                           "served over http only")
    assert not Transports.needed(fake_api())


def test_transports_in_definitions_and_toml(tmp_path: Path) -> None:
    api = parse(tmp_path).config.apis[0]
    assert api.transports == frozenset({"https"})
    found = problems_of(parse(tmp_path, DEFINITION.replace("[HTTPS]", "[https, ftp]")))
    assert found == ["#/x-wso2-transports: must list http, https or both, got "
                     "[\"https\", \"ftp\"]"]
    mtls = parse(tmp_path, DEFINITION.replace("[HTTPS]", "[http]") +
                 "x-wso2-mutual-ssl: mandatory\n", aliases=["a"],
                 transports=["http"])
    assert mtls.config.apis[0].transports == frozenset({"http", "https"})
    assert any(w.endswith("apis[0].transports: mutual_ssl is mandatory, so https is served too "
                          "(as the Microgateway adds it)") for w in mtls.config.warnings)


def test_nginx_gives_each_feature_the_gateway_path(tmp_path: Path, pki: Any) -> None:
    """Issue 25 items 1, 2, 4 and 7 in the NGINX-fronted mode: each API that needs
    twistedgw to choose the endpoint, set backend credentials, judge the scheme or read and
    remove a credential from where NGINX would forward it takes the gateway path, and the
    rendered file says why; a plain API keeps NGINX's path."""
    from tests.test_basic_auth_unit import NGINX_FRONTED, nginx_block
    from twistedgw.app import nginx as nginxconf

    (tmp_path / "pw").write_text("secret")
    base = ('openapi: 3.0.1\ninfo: {{title: {t}, version: "1"}}\nx-wso2-basePath: /{t}\n'
            'x-wso2-production-endpoints: {{urls: ["http://127.0.0.1:9/{t}"]}}\n{extra}\n'
            "paths:\n  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}\n")
    cases = {
        "sandbox": ("security: []\nx-wso2-sandbox-endpoints: {urls: [http://127.0.0.1:9/s]}",
                    "Sandbox or per-operation endpoints"),
        "credentials": ("security: []", "Backend credentials (securityConfig, "
                                        "backend_credentials)"),
        "https": ("security: []\nx-wso2-transports: [https]", "Transports (x-wso2-transports)"),
        "query": ("security: [{k: []}]\ncomponents: {securitySchemes: {k: {type: apiKey, "
                  "in: query, name: k}}}", "An API key in the query or a bearer token"),
        "token": ("security: [{b: []}]\nx-wso2-auth-header: X-Token\ncomponents: "
                  "{securitySchemes: {b: {type: http, scheme: bearer}}}",
                  "An API key in the query or a bearer token"),
    }
    text = NGINX_FRONTED + f"""
[tls]
truststore = "{pki.truststore_dir}"
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
[[api_keys]]
name = "k"
key_sha256 = "{'00' * 32}"
[[jwt_issuers]]
name = "idp"
issuer = "{jwtkit.ISSUER}"
jwks = "jwks.json"
audiences = ["{jwtkit.AUDIENCE}"]
"""
    jwtkit.write_jwks(tmp_path / "jwks.json", IDP)
    for title, (extra, _reason) in cases.items():
        (tmp_path / f"{title}.yaml").write_text(base.format(t=title, extra=extra))
        text += f'[[apis]]\nopenapi = "{title}.yaml"\n'
        if title == "credentials":
            text += ('[[apis.backend_credentials]]\nendpoint = "production"\n'
                     'username = "u"\npassword_file = "pw"\n')
    path = tmp_path / "gw.toml"
    path.write_text(text)
    rendered = nginxconf.render(configmod.load(path)).text
    for title, (_extra, reason) in cases.items():
        block = nginx_block(rendered, f"{title}:1")
        assert f"# {reason}" in block and "auth_request" not in block, title
        assert "secret" not in block
    assert "auth_request" in nginx_block(rendered, "Public:1")
