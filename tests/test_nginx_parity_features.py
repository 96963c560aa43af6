"""Issue 25's features through a real NGINX: each gives direct mode's answer.

Basic authentication, throttling policies (API and resource level), sandbox and
production endpoints, backend credentials, an API key in the query, a bearer token in
``x-wso2-auth-header``, ``x-wso2-transports``, CORS, the response cache and an
in-process ``resource:`` backend, in one config (definitions in WSO2's documented
shapes). One gateway answers directly; per variant (``auth_request``, ``lua``) a second
gateway on the same config sits behind NGINX. Each row sends the same requests both
ways and compares the status, the JSON error, the response headers that carry the
feature and what the backend saw, so a feature NGINX dropped (an API proxied without
twistedgw's part) fails its row. Stateful rows (throttling, the cache) run each way
against a gateway of its own, so the two never share a bucket or an entry.
These tests FAIL (never skip) when nginx is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import jwtkit
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import GatewayProcess, Response, free_port, start_gateway, table
from tests.lbsupport import connect, send
from tests.test_nginx_fronted import Fronted, fronted_toml, start_fronted
from tests.test_wso2_transport import KEYS, SERVED  # the same definitions, through NGINX
from twistedgw.testing.devpki import DevPki

APP = "https://app.example.com"
KEY = "demo-key"  # conf/nginx-fronted's [[api_keys]] demo-app: a production key
SANDBOX_KEY = "sandbox-key-25"
PASSWORD = "open sesame 25"
BACKEND_PASSWORD = "ep-Secret-25"
IDP = jwtkit.ec("parity25-idp")

ENDPOINTS = """\
openapi: 3.0.1
info: {{title: Endpoints, version: "1"}}
x-wso2-basePath: /endpoints
x-wso2-production-endpoints: {{urls: ["{backend}/prod"]}}
x-wso2-sandbox-endpoints: {{urls: ["{backend}/sand"]}}
security: [{{key: []}}]
components:
  securitySchemes:
    key: {{type: apiKey, in: header, name: api_key}}
paths:
  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
  /secured:
    get:
      x-wso2-production-endpoints: "#/x-wso2-endpoints/securedEp"
      responses: {{'200': {{description: ok}}}}
x-wso2-endpoints:
  - securedEp:
      urls: ["{backend}/secured"]
      securityConfig: {{type: basic, username: kim}}
"""

PRODUCTION_ONLY = """\
openapi: 3.0.1
info: {{title: Production only, version: "1"}}
x-wso2-basePath: /prodonly
x-wso2-production-endpoints: {{urls: ["{backend}/only"]}}
security: [{{key: []}}]
components:
  securitySchemes:
    key: {{type: apiKey, in: header, name: api_key}}
paths:
  /a: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
"""

# WSO2's petstore sample's key header (api_key): nothing else, so it may ride NGINX's path.
PETS = """\
openapi: 3.0.1
info: {{title: Pets, version: "1"}}
x-wso2-basePath: /pets
x-wso2-production-endpoints: {{urls: ["{backend}/pets"]}}
security: [{{key: []}}]
components:
  securitySchemes:
    key: {{type: apiKey, in: header, name: api_key}}
paths:
  /{{id}}:
    parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]
    get: {{responses: {{'200': {{description: ok}}}}}}
"""

# The Microgateway 3.x sample's shape (cors_sample.yaml), mutual TLS mandatory.
CORS = """\
openapi: 3.0.0
info: {{title: Cors, version: 1.0.0}}
x-wso2-basePath: /cors/v1
x-wso2-production-endpoints: {{urls: ["{backend}/cors"]}}
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

CACHE = """\
openapi: 3.0.1
info: {{title: Catalog, version: v1}}
x-wso2-basePath: /catalog
x-wso2-production-endpoints: {{urls: ["{backend}"]}}
x-wso2-mutual-ssl: mandatory
x-wso2-response-cache: {{enabled: true, cacheTimeoutInSeconds: 30}}
security: []
paths:
  /requests: {{get: {{responses: {{'200': {{description: ok}}}}}}}}
"""

RESOURCE_TIER = """\
openapi: 3.0.0
info: {{title: Resource tier, version: 1.0.0}}
x-wso2-basePath: /restier/v1
x-wso2-production-endpoints: {{urls: ["{backend}/restier"]}}
x-wso2-disable-security: true
paths:
  /limited:
    get:
      x-wso2-throttling-tier: 3PerMin
      responses: {{'200': {{description: ok}}}}
  /open:
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


def basic(user: str, password: str) -> tuple[str, str]:
    return "Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def config_extra(directory: Path, backend: str) -> str:
    """The #25 APIs (and what they need), appended to conf/nginx-fronted's config."""
    from twistedgw.pipeline import hash_password

    directory.mkdir(parents=True, exist_ok=True)
    definitions = {"endpoints": ENDPOINTS, "prodonly": PRODUCTION_ONLY, "keys": KEYS,
                   "pets": PETS,
                   "cors": CORS, "catalog": CACHE, "restier": RESOURCE_TIER,
                   "secure": SERVED.replace("{title}", "secure").replace("{transports}",
                                                                        "https"),
                   "clear": SERVED.replace("{title}", "clear").replace("{transports}",
                                                                      "http")}
    paths = {}
    for name, text in definitions.items():
        paths[name] = directory / f"{name}.yaml"
        paths[name].write_text(text.format(backend=backend))
    (directory / "backend.password").write_text(BACKEND_PASSWORD + "\n")
    jwks = jwtkit.write_jwks(directory / "idp.json", IDP)

    def api(values: dict[str, Any]) -> str:
        return table("apis", values, array=True)

    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    return (
        table("throttling_policies", {"name": "3PerMin", "count": 3, "unit_time": 1,
                                      "time_unit": "min"}, array=True)
        + table("basic_users", {"name": "alice", "password_hash": hash_password(PASSWORD)},
                array=True)
        + table("consumers", {"name": "acme", "basic_users": ["alice"]}, array=True)
        + table("api_keys", {"name": "sandbox-app", "keytype": "sandbox",
                             "key_sha256": sha(SANDBOX_KEY)}, array=True)
        + table("jwt_issuers", {"name": "idp", "issuer": jwtkit.ISSUER, "jwks": str(jwks),
                                "audiences": [jwtkit.AUDIENCE]}, array=True)
        + api({"name": "Basic", "version": "1", "context": "/basic",
               "backend": f"{backend}/basic", "basic_auth": "mandatory"})
        + api({"name": "Api tier", "version": "1", "context": "/apitier",
               "backend": f"{backend}/apitier", "throttling_tier": "3PerMin"})
        + api({"name": "In process", "version": "1", "context": "/app",
               "backend": "resource:tests.embedapp:root", "mutual_ssl": "mandatory",
               "aliases": ["partner-root"]})
        + api({"openapi": str(paths["endpoints"])})
        + table("apis.backend_credentials", {
            "endpoint": "securedEp", "username": "kim",
            "password_file": str(directory / "backend.password")}, array=True)
        + "".join(api({"openapi": str(paths[name])})
                  for name in ("prodonly", "keys", "secure", "clear", "restier", "pets"))
        + "".join(api({"openapi": str(paths[name]), "aliases": ["partner-root"]})
                  for name in ("cors", "catalog"))
    )


# ----------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Req:
    path: str
    client: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"


#: Response headers that carry a feature (compared by value; Retry-After by form, Age
#: by presence: both count seconds).
SHOWN = ("www-authenticate", "vary", "allow", "content-type")
#: Request headers the backend saw that carry a feature.
SEEN = ("authorization", "x-consumer-name", "x-token", "api_key", "apikey",
        "x-forwarded-proto", "x-forwarded-for", "x-forwarded-client-cert")


def view(r: Response) -> dict[str, Any]:
    """What a feature shows in one answer: status, the JSON error whole, the headers
    that carry it, and (from the echo backend) the target and headers it received."""
    out: dict[str, Any] = {"status": r.status}
    names = {n.lower() for n, _ in r.headers}
    for name in sorted(names):
        values = r.header_all(name)
        if name in SHOWN or name.startswith("access-control-"):
            out[name] = values
        elif name == "retry-after":
            out[name] = [v.isdigit() and 0 < int(v) <= 60 for v in values]
        elif name == "age":
            out[name] = "present"
    if r.header("content-type") == "application/json" and r.body:
        body = json.loads(r.body)
        if r.status != 200:
            out["error"] = body
        elif "headers" in body and "path" in body:  # the echo backend
            out["backend"] = body["method"], body["path"]
            seen: dict[str, list[str]] = {}
            for name, value in body["headers"]:
                if name.lower() in SEEN or "_" in name:
                    seen.setdefault(name.lower(), []).append(value)
            out["seen"] = seen
        elif "prepath" in body:  # tests/embedapp.py: what the in-process resource saw
            out["resource"] = {k: body[k] for k in ("method", "uri", "prepath", "postpath",
                                                    "secure", "client", "hostname")}
            out["seen"] = {n.lower(): v for n, v in body["headers"]
                           if n.lower() in SEEN or "_" in n}
    return out


def cached_view(rs: Sequence[Response]) -> list[Any]:
    """The cache row: the first of a caller missed, its second is the same answer from
    the cache (Age), another caller's is an entry of its own."""
    first, again, other = rs
    return [view(first), view(again), again.body == first.body, view(other),
            other.body == first.body]


@dataclass(frozen=True)
class Row:
    requests: tuple[Req, ...]
    statuses: tuple[int, ...]  # direct mode's, as the feature's own tests show
    stateful: bool = False  # spends a bucket or fills a cache: run once per gateway
    project: Callable[[Sequence[Response]], Any] = field(
        default=lambda rs: [view(r) for r in rs])


def _token() -> str:
    return "Bearer " + jwtkit.token(IDP, jwtkit.claims(exp=2**31 - 1))


PREFLIGHT = (("Origin", APP), ("Access-Control-Request-Method", "PUT"),
             ("Access-Control-Request-Headers", "content-type, authorization"))

ROWS: dict[str, Row] = {
    # Basic authentication ([[basic_users]], http basic): Authorization removed, the
    # consumer named; refusals 401 with WWW-Authenticate: Basic.
    "basic valid": Row((Req("/basic/x", headers=(basic("alice", PASSWORD),)),), (200,)),
    "basic wrong password": Row((Req("/basic/x", headers=(basic("alice", "guess"),)),), (401,)),
    "basic none": Row((Req("/basic/x"),), (401,)),
    # Throttling policies: API level 900800, resource level 900802, with Retry-After.
    "policy api level": Row((Req("/apitier/x"),) * 4, (200, 200, 200, 429), stateful=True),
    "policy resource level": Row((Req("/restier/v1/limited"),) * 4 + (Req("/restier/v1/open"),),
                                 (200, 200, 200, 429, 200), stateful=True),
    # Sandbox and production endpoints, by the key's type.
    "sandbox key": Row((Req("/endpoints/a", headers=(("api_key", SANDBOX_KEY),)),), (200,)),
    "production key": Row((Req("/endpoints/a", headers=(("api_key", KEY),)),), (200,)),
    "sandbox key without sandbox endpoint": Row(
        (Req("/prodonly/a", headers=(("api_key", SANDBOX_KEY),)),), (401,)),
    # api_key (WSO2's sample header, "_" in its name): NGINX must accept it
    # (underscores_in_headers on), and no header with "_" reaches a backend (direct mode
    # drops them: WSGI reads X_Forwarded_For as X-Forwarded-For), on either path. A
    # cached allow for api_key never covers Api-Key (another header to twistedgw).
    "api_key header": Row((Req("/pets/k", headers=(("api_key", KEY),)),
                           Req("/pets/k", headers=(("Api-Key", KEY),)),
                           Req("/pets/k", headers=(("api_key", "guess"),))), (200, 401, 401)),
    "underscored headers dropped": Row((Req("/pets/1", headers=(
        ("api_key", KEY), ("X_Forwarded_For", "6.6.6.6"), ("X_Team", "a"), ("X_Team", "b"),
        ("X_Forwarded_Client_Cert", "Hash=forged"))),
        Req("/public/x", headers=(("X_Forwarded_Proto", "http"), ("My_Header", "1"))),
        Req("/basic/x", headers=(basic("alice", PASSWORD), ("X_Consumer_Name", "evil")))),
        (200, 200, 200)),
    # Backend credentials: the endpoint's Basic, never the client's Authorization.
    "backend credentials": Row((Req("/endpoints/secured", headers=(
        ("api_key", KEY), basic("mallory", "client-secret"))),), (200,)),
    # An API key in the query: removed from the forwarded query.
    "query key": Row((Req(f"/keys/pets?x=1&api_key={KEY}&y=%41"),), (200,)),
    "query key wrong": Row((Req("/keys/pets?api_key=guess"),), (401,)),
    "query key missing": Row((Req("/keys/pets?x=1", headers=(("api_key", KEY),)),), (401,)),
    # x-wso2-auth-header: the token read there and removed; Authorization passes.
    "auth header": Row((Req("/keys/orders", headers=(
        ("X-Token", "TOKEN"), basic("u", "p"))),), (200,)),
    "auth header not in authorization": Row((Req("/keys/orders", headers=(
        ("Authorization", "TOKEN"),)),), (401,)),
    # x-wso2-transports: NGINX's X-Forwarded-Proto from its trusted socket counts.
    "https only": Row((Req("/secure/a"),), (200,)),
    "http only": Row((Req("/clear/a"),), (404,)),
    # CORS: the preflight before authentication, the headers on answers and refusals.
    "cors preflight": Row((Req("/cors/v1/items/7", headers=PREFLIGHT, method="OPTIONS"),),
                          (200,)),
    "cors preflight other origin": Row((Req("/cors/v1/items/7", headers=(
        ("Origin", "https://evil.example"), *PREFLIGHT[1:]), method="OPTIONS"),), (403,)),
    "cors actual": Row((Req("/cors/v1/items/7", "partner-direct", (("Origin", APP),)),),
                       (200,)),
    "cors refused": Row((Req("/cors/v1/items/7", None, (("Origin", APP),)),), (401,)),
    "cors other origin": Row((Req("/cors/v1/items/7", "partner-direct", (
        ("Origin", "https://evil.example"),)),), (200,)),
    "cors options not a preflight": Row((Req("/cors/v1/items/7", "partner-direct",
                                             method="OPTIONS"),), (405,)),
    # The response cache, per caller.
    "response cache": Row((Req("/catalog/requests", "partner-direct"),
                           Req("/catalog/requests", "partner-direct"),
                           Req("/catalog/requests", "partner-rsa")), (200, 200, 200),
                          stateful=True, project=cached_view),
    # An in-process resource: what it saw.
    "resource backend": Row((Req("/app/info/a%20b?x=1", "partner-direct"),), (200,)),
    "resource backend refused": Row((Req("/app/info"),), (401,)),
}


def _expand(req: Req) -> Req:
    """A request with its token made now (rows are built at import)."""
    headers = tuple((n, _token() if v == "TOKEN" else v) for n, v in req.headers)
    return Req(req.path, req.client, headers, req.method)


def ask(port: int, pki: DevPki, req: Req) -> Response:
    conn = connect(port, pki=pki, client=req.client, tls=True)
    try:
        return send(conn, req.path, _expand(req).headers, method=req.method)
    finally:
        conn.close()


def run(port: int, pki: DevPki, row: Row) -> Any:
    responses = [ask(port, pki, req) for req in row.requests]
    assert tuple(r.status for r in responses) == row.statuses, [
        (r.status, r.body[:200]) for r in responses]
    return row.project(responses)


# ----------------------------------------------------------------- the processes


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo25"))
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory, echo: BackendProcess) -> str:
    return config_extra(tmp_path_factory.mktemp("defs25"), echo.url)


@dataclass
class Direct:
    """The gateway that answers directly, and its answers to stateful rows (each such
    row is asked once, then compared with each variant's)."""

    gateway: GatewayProcess
    answers: dict[str, Any] = field(default_factory=dict)

    def answer(self, pki: DevPki, name: str) -> Any:
        row = ROWS[name]
        if not row.stateful:
            return run(self.gateway.port, pki, row)
        if name not in self.answers:
            self.answers[name] = run(self.gateway.port, pki, row)
        return self.answers[name]


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo: BackendProcess,
           extra: str) -> Iterator[Direct]:
    """The same config (conf/nginx-fronted's, with a direct TLS listener) in a gateway
    of its own, so the fronted ones start with fresh buckets and caches."""
    d = tmp_path_factory.mktemp("direct25")
    port = free_port()
    gateway = start_gateway(d, fronted_toml(pki, echo, d, port, free_port(), http2=True)
                            + extra, port)
    try:
        yield Direct(gateway)
    except BaseException:
        print(gateway.output())
        raise
    finally:
        gateway.stop()


@pytest.fixture(scope="module", params=["auth_request", "lua"])
def fronted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            pki: DevPki, echo: BackendProcess, extra: str) -> Iterator[Fronted]:
    f = start_fronted(tmp_path_factory.mktemp(f"fronted25-{request.param}"), pki, echo,
                      variant=request.param, extra=extra, http2=True)
    try:
        yield f
    except BaseException:
        print(f.gateway.output(), f.nginx.output())
        raise
    finally:
        f.nginx.stop()
        f.gateway.stop()


@pytest.mark.parametrize("name", list(ROWS))
def test_feature_gives_direct_modes_answer_through_nginx(
    fronted: Fronted, direct: Direct, pki: DevPki, name: str
) -> None:
    """The row's requests directly and through NGINX: the same statuses, JSON errors,
    feature headers, and the same target and headers at the backend."""
    want = direct.answer(pki, name)
    got = run(fronted.nginx.port, pki, ROWS[name])
    assert got == want


def ask_h2(port: int, pki: DevPki, req: Req) -> Response:
    from tests.h2client import H2Client

    client = H2Client(port, pki, req.client)
    try:
        headers = [(n.lower(), v) for n, v in _expand(req).headers]
        return client.get(req.path, method=req.method, headers=headers)
    finally:
        client.close()


def test_features_over_http2(fronted: Fronted, direct: Direct, pki: DevPki) -> None:
    """#26 item 6 for these features: every row that spends nothing, over HTTP/2 both
    ways ([nginx] http2 = true, a direct listener with http2 = true)."""
    mismatches = []
    for name, row in ROWS.items():
        if row.stateful:
            continue
        answers = [[ask_h2(port, pki, req) for req in row.requests]
                   for port in (direct.gateway.port, fronted.nginx.port)]
        want, got = (row.project(rs) for rs in answers)
        statuses = [tuple(r.status for r in rs) for rs in answers]
        if want != got or statuses != [row.statuses] * 2:
            mismatches.append((name, statuses, want, got))
    assert not mismatches, "\n".join(map(repr, mismatches))


def test_underscored_credential_headers_are_rendered(tmp_path: Path, pki: DevPki) -> None:
    """An API key header with "_" (WSO2's api_key): every server accepts such headers
    (NGINX drops them by default, before twistedgw could read the key); the Lua variant
    removes them on NGINX's path, and the auth_request variant, which cannot, hands every
    API to twistedgw, saying why. Without one, nothing changes."""
    from tests.test_nginx_fronted import _config
    from twistedgw import config as configmod
    from twistedgw.app import nginx as nginxconf

    plain = configmod.load(_config(tmp_path, pki, ""))
    assert "underscores_in_headers" not in nginxconf.render(plain, variant="lua").text
    assert all(p.nginx_path and not p.drop_underscored
               for p in nginxconf.plan(plain, "auth_request"))
    (tmp_path / "pets.yaml").write_text(PETS.format(backend="http://127.0.0.1:8080"))
    cfg = configmod.load(_config(tmp_path, pki, table(
        "apis", {"openapi": str(tmp_path / "pets.yaml")}, array=True)))
    for variant in nginxconf.VARIANTS:
        text = nginxconf.render(cfg, variant=variant).text
        assert text.count("underscores_in_headers on;  # api_key") == 1  # one server
        plans = nginxconf.plan(cfg, variant)
        if variant == "lua":
            assert all(p.nginx_path and p.drop_underscored for p in plans)
            # every API's locations (= /ctx and ^~ /ctx/: two per context) remove them
            assert "drop_underscored = false" not in text
            assert text.count("drop_underscored = true,") == text.count("return v.access(")
            assert text.count("return v.access(") >= len(plans)
        else:
            assert not any(p.nginx_path for p in plans)
            assert all("A credential header whose name holds '_' (api_key)" in (p.gateway or "")
                       for p in plans)
