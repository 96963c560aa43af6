"""Issue 26 through a real NGINX: what used to be handed to twistedgw whole now rides
NGINX's path (bearer tokens, hosts and SNI, several backends, tiers, header plugins,
HTTP/2), and every case gets the direct mode's status and error code.

One gateway (a direct TLS listener and the authz Unix socket) and one NGINX per variant
serve every test here, on a config that holds the example's APIs and one API per
feature; each behaviour is one test, asked both ways in the same run.
These tests FAIL (never skip) when nginx is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import jwtkit
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import Response
from tests.lbsupport import echoed_headers
from tests.test_nginx_fronted import Fronted, outcome, start_fronted
from twistedgw.testing.devpki import DevPki

TOKENS = "/tokens/items"
SHOP = "/shop/items"
KEY = "demo-key"
PET_PATH = "/petstore/1.0.5/pet/1"
PARTNERS = ("partners.example.com", "*.partners.example.com")

SNI = """
[[tls.sni]]
hosts = ["partners.example.com", "*.partners.example.com"]
certificate = "{crt}"
private_key = "{key}"
"""

BACKENDS_APIS = """
[[apis]]
name = "Pool"
version = "1"
context = "/pool"
backends = ["{echo}/pool", "{echo2}/pool"]

[[apis]]
name = "Pool down"
version = "1"
context = "/pooldown"
backends = ["{echo}/pool", "http://127.0.0.1:{dead}/pool"]

[[apis]]
name = "Failover"
version = "1"
context = "/failover"
backend_mode = "failover"
backends = ["http://127.0.0.1:{dead}/f", "{echo}/f", "{echo2}/f"]

[[apis]]
name = "All down"
version = "1"
context = "/alldown"
backends = ["http://127.0.0.1:{dead}/a", "http://127.0.0.1:{dead2}/a"]

[[apis]]
name = "Slow post"
version = "1"
context = "/slowpost"
backend_mode = "failover"
backend_timeout = 1
backends = ["http://127.0.0.1:{hang1}/s", "{echo}/s"]

[[apis]]
name = "Slow get"
version = "1"
context = "/slowget"
backend_mode = "failover"
backend_timeout = 1
backends = ["http://127.0.0.1:{hang2}/s", "{echo}/s"]

[[apis]]
name = "TLS pool"
version = "1"
context = "/tlspool"
backends = ["https://localhost:{tls1}/t", "https://localhost:{tls2}/t"]

[apis.backend_tls]
trusted_certificate = "{backend_ca}"
"""

TIERED_API = """
[[apis]]
name = "Metered"
version = "1"
context = "/metered"
backend = "{backend}/metered"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
tiers = [{{ alias = "partner-root", requests_per_minute = 4 }}]
"""

DECORATED_API = """
[[apis]]
name = "Decorated"
version = "1"
context = "/decorated"
backend = "{backend}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]

[[apis.plugins]]
name = "request-headers"
set = {{ "X-Team" = "blue", "X-Forwarded-Host" = "api.example.com" }}
remove = ["X-Drop"]

[[apis.plugins]]
name = "response-headers"
set = {{ "X-Served-By" = "twistedgw" }}
remove = ["X-Secret"]
"""

HOSTS_APIS = """
[[apis]]
name = "Shop"
version = "1"
context = "/shop"
backend = "{backend}/shop-public"

[[apis]]
name = "Shop partners"
version = "1"
context = "/shop"
hosts = ["partners.example.com", "*.partners.example.com"]
backend = "{backend}/shop-partners"
mutual_ssl = "mandatory"
aliases = ["partner-root"]

[[apis]]
name = "Shop other"
version = "1"
context = "/shop"
hosts = ["other.example.com"]
backend = "{backend}/shop-other"
api_key = "mandatory"
"""

NESTED_API = """
[[apis]]
name = "Inner"
version = "1"
context = "/decorated/inner"
backend = "{backend}/inner"
api_key = "mandatory"
"""

JWT_APIS = """
[[jwt_issuers]]
name = "idp"
issuer = "{issuer}"
jwks = "{jwks}"
audiences = ["{audience}"]
consumer_claim = "client_id"

[[consumers]]
name = "app-one"

[[apis]]
name = "Tokens"
version = "1"
context = "/tokens"
backend = "{backend}/tokens"
jwt = "mandatory"
"""


@pytest.fixture(scope="module")
def signing() -> jwtkit.SigningKey:
    return jwtkit.ec()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def echo2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo2"))
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def tls_pool(pki: DevPki, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[BackendProcess]]:
    """Two HTTPS backends: a pool whose [backend_tls] names no server, so NGINX checks
    each backend's own name (the Lua variant sets $tgw_peer_name with the pick)."""
    backends = [start_backend(tmp_path_factory.mktemp(f"tls{n}"),
                              tls=(pki.backend_cert, pki.backend_key)) for n in (1, 2)]
    yield backends
    for backend in backends:
        backend.stop()


@pytest.fixture(scope="module")
def hanging() -> Iterator[list[int]]:
    """Two ports that accept connections (the kernel's backlog) and never answer."""
    import socket

    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


@pytest.fixture(scope="module", params=["auth_request", "lua"])
def full(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         pki: DevPki, echo: BackendProcess, echo2: BackendProcess, hanging: list[int],
         signing: jwtkit.SigningKey, tls_pool: list[BackendProcess]) -> Iterator[Fronted]:
    from tests.harness import free_port

    tmp = tmp_path_factory.mktemp(f"parity-{request.param}")
    jwks = jwtkit.write_jwks(tmp / "jwks.json", signing)
    extra = JWT_APIS.format(issuer=jwtkit.ISSUER, jwks=jwks, audience=jwtkit.AUDIENCE,
                            backend=echo.url)
    extra += HOSTS_APIS.format(backend=echo.url) + TIERED_API.format(backend=echo.url)
    extra += DECORATED_API.format(backend=echo.url) + NESTED_API.format(backend=echo.url)
    extra += BACKENDS_APIS.format(echo=echo.url, echo2=echo2.url, dead=free_port(),
                                  dead2=free_port(), hang1=hanging[0], hang2=hanging[1],
                                  tls1=tls_pool[0].port, tls2=tls_pool[1].port,
                                  backend_ca=pki.backend_ca)
    crt, key = pki.authorities["server-root"].server(PARTNERS).write(tmp, "partners")
    f = start_fronted(tmp, pki, echo, variant=request.param, extra=extra,
                      tls_extra="", sni=SNI.format(crt=crt, key=key), http2=True)
    yield f
    f.nginx.stop()
    f.gateway.stop()


def both(f: Fronted, path: str, client: str | None, headers: Any = ()
         ) -> tuple[Response, Response]:
    return f.direct(path, client, headers), f.via_nginx(path, client, headers)


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {value}"),)


def test_contexts_in_other_letters_take_twistedgws_route(full: Fronted) -> None:
    """NGINX's prefix locations are case-sensitive, twistedgw's contexts are not: with a
    verdict for /decorated warm, a path that names /decorated/inner in other letters
    still reaches the Inner API (its API key refusal), as in direct mode, and so does
    one that names /decorated itself in other letters; the cased paths are NGINX's."""
    assert full.via_nginx("/decorated/x", "partner-app").status == 200  # warm
    for path in ("/decorated/INNER/x", "/decorated/Inner", "/Decorated/inner/x",
                 "/DECORATED/x", "/decorated/inner/x", "/decorated/inner", "/decorated",
                 "/decorated/", "/decorated/x?y=1"):
        for _ in range(2):
            direct, through = both(full, path, "partner-app")
            assert outcome(direct) == outcome(through), path
    assert outcome(full.via_nginx("/decorated/INNER/x", "partner-app"))[0] == 401


def test_bearer_tokens_ride_nginxs_path(full: Fronted, signing: jwtkit.SigningKey) -> None:
    """Valid, expired, wrong audience, bound to this or another certificate, none: the
    direct mode's status, code and WWW-Authenticate, twice each (the second from the
    Lua variant's verdict cache). NGINX proxies the allowed ones itself: the backend
    sees no Authorization and the token's consumer. The Lua variant keeps a verdict
    under the token's SHA-256 (one question for a reused token, never past its exp);
    the auth_request variant asks on every request (its cache file would hold the key)."""
    partner = full.pki.clients["partner-direct"][0]
    now = int(time.time())
    tokens = {
        "valid": jwtkit.token(signing, jwtkit.claims(client_id="app-one")),
        "expired": jwtkit.token(signing, jwtkit.claims(exp=now - 3600, iat=now - 7200)),
        "audience": jwtkit.token(signing, jwtkit.claims(aud="someone-else")),
        "bound": jwtkit.token(signing, jwtkit.bound(partner)),
    }
    cases = [(None, ()), (None, bearer(tokens["valid"])), (None, bearer(tokens["expired"])),
             (None, bearer(tokens["audience"])), ("partner-direct", bearer(tokens["bound"])),
             ("other-app", bearer(tokens["bound"])), (None, bearer(tokens["bound"])),
             ("partner-direct", bearer(tokens["valid"])), (None, bearer("not.a.token"))]
    mismatches = []
    for _round in range(2):
        for client, headers in cases:
            direct, through = both(full, TOKENS, client, headers)
            got = (outcome(through), through.header("www-authenticate"))
            want = (outcome(direct), direct.header("www-authenticate"))
            if got != want:
                mismatches.append((client, headers, want, got))
    assert not mismatches, "\n".join(map(repr, mismatches))
    seen = echoed_headers(full.via_nginx(TOKENS, None, bearer(tokens["valid"])))
    assert "authorization" not in seen and seen["x-consumer-name"] == ["app-one"]
    # Caching: a reused token is judged once by the Lua variant, every time otherwise.
    fresh = jwtkit.token(signing, jwtkit.claims(exp=int(time.time()) + 3))
    full.wait_logged()
    before = full.authz_asked()
    for _ in range(3):
        assert full.via_nginx(TOKENS, None, bearer(fresh)).status == 200
    full.wait_logged()
    asked = full.authz_asked() - before
    assert asked == (1 if full.variant == "lua" else 3)
    # Never past the token's exp (3 s, under cache_seconds = 10): asked again after it.
    time.sleep(4)
    full.via_nginx(TOKENS, None, bearer(fresh))
    full.wait_logged()
    assert full.authz_asked() - before == asked + 1


def sni_request(port: int, pki: DevPki, sni: str | None, host: str, path: str,
                client: str | None = None, headers: Any = ()) -> tuple[Response, bytes]:
    """A request on a connection opened with server name ``sni`` (None: no SNI) naming
    ``host``; the answer and the certificate the server presented (DER)."""
    import http.client
    import socket

    from tests.harness import client_context

    ctx = client_context(pki, client)
    ctx.check_hostname = False  # which certificate came is compared, not verified here
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=sni)
    cert = sock.getpeercert(True) or b""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.sock = sock
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read()), cert
    finally:
        conn.close()


def test_a_refusals_challenge_is_sent_as_often_as_direct_mode_sends_it(full: Fronted) -> None:
    """A 401 with a challenge (a bearer token that is no token) carries the direct mode's
    WWW-Authenticate lines, once each: auth_request passes a 401's challenge on by itself,
    so the refusal's location adds it only for the other statuses."""
    direct, through = both(full, TOKENS, None, bearer("not.a.token"))
    assert direct.status == 401 and direct.header_all("www-authenticate"), direct
    assert (through.status, through.header_all("www-authenticate")) == (
        direct.status, direct.header_all("www-authenticate"))


def test_a_new_token_on_a_kept_connection_gets_its_own_verdict(
        full: Fronted, signing: jwtkit.SigningKey) -> None:
    """The Lua variant keeps a bearer API's cache key per connection with the token it
    was built from: on one kept-alive connection a valid token (twice: the second from
    the kept key), then an expired one, then none, then the valid one again each get
    direct mode's answer, never the previous token's verdict."""
    import http.client

    from tests.harness import client_context

    now = int(time.time())
    valid = jwtkit.token(signing, jwtkit.claims(client_id="app-one"))
    expired = jwtkit.token(signing, jwtkit.claims(exp=now - 3600, iat=now - 7200))
    sequence = [bearer(valid), bearer(valid), bearer(expired), (), bearer(valid)]
    want = [outcome(full.direct(TOKENS, "partner-app", h)) for h in sequence]
    assert want[0][0] == 200 and want[2][0] == 401 and want[3][0] == 401, want
    ctx = client_context(full.pki, "partner-app")
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", full.nginx.port, context=ctx, timeout=10)
    try:
        got = []
        for headers in sequence:
            conn.request("GET", TOKENS, headers=dict(headers))
            r = conn.getresponse()
            got.append(outcome(Response(r.status, r.getheaders(), r.read())))
    finally:
        conn.close()
    assert got == want


def test_hosts_and_sni_ride_nginxs_path(full: Fronted) -> None:
    """Three APIs share /shop by hosts, one [[tls.sni]] entry has its own certificate:
    the same API (status, code, backend path), the same certificate, and the same 421
    for a host of another entry than the SNI, or 400 for a Host that is no host name."""
    key = (("apikey", KEY),)
    cases = [
        (None, "localhost", None, ()), ("localhost", "localhost", "partner-direct", ()),
        ("partners.example.com", "partners.example.com", None, ()),
        ("partners.example.com", "partners.example.com", "partner-direct", ()),
        ("a.partners.example.com", "a.partners.example.com", "partner-direct", ()),
        ("partners.example.com", "PARTNERS.example.com:443", "partner-direct", ()),
        ("partners.example.com", "other.example.com", None, key),
        ("localhost", "partners.example.com", "partner-direct", ()),
        (None, "partners.example.com", "partner-direct", ()),
        (None, "other.example.com", None, ()), (None, "other.example.com", None, key),
        (None, "x.y.partners.example.com", None, ()), (None, "a b", None, ()),
        (None, "evil.example/x", None, ()),
    ]
    mismatches = []
    for sni, host, client, headers in cases:
        for path in (SHOP, "/public/x", PET_PATH):
            direct, direct_cert = sni_request(full.direct_port, full.pki, sni, host, path,
                                              client, headers)
            through, nginx_cert = sni_request(full.nginx.port, full.pki, sni, host, path,
                                              client, headers)
            if (outcome(direct), direct_cert) != (outcome(through), nginx_cert):
                mismatches.append((sni, host, client, path, outcome(direct), outcome(through),
                                   direct_cert == nginx_cert))
    assert not mismatches, "\n".join(map(repr, mismatches))
    # Each API keeps its own verdicts (the key names the API chosen by host).
    seen = echoed_headers(sni_request(full.nginx.port, full.pki, "partners.example.com",
                                      "partners.example.com", SHOP, "partner-direct")[0])
    assert seen["x-forwarded-client-cert"][0].startswith("Hash=")
    r, _cert = sni_request(full.nginx.port, full.pki, None, "localhost", SHOP, "partner-direct")
    assert json.loads(r.body)["path"] == "/shop-public/items"


def test_host_is_checked_on_every_request_of_a_connection(full: Fronted) -> None:
    """The Lua variant checks a Host only when it is not its connection's last good one:
    a Host NGINX accepts but direct mode refuses (a label ending in '-'), sent after a
    good one on the same connection, still gets direct mode's 400."""
    import http.client

    from tests.harness import client_context

    bad = "bad-.example.com"
    direct, _ = sni_request(full.direct_port, full.pki, "localhost", bad, PET_PATH,
                            "partner-direct")
    assert outcome(direct) == (400, "400")
    ctx = client_context(full.pki, "partner-direct")
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", full.nginx.port, context=ctx, timeout=10)
    try:
        seen = []
        for host in ("localhost", bad):
            conn.putrequest("GET", PET_PATH, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            conn.endheaders()
            r = conn.getresponse()
            seen.append(outcome(Response(r.status, r.getheaders(), r.read())))
    finally:
        conn.close()
    assert seen[0][0] == 200 and seen[1] == outcome(direct)


def test_nginx_answers_421_for_another_name_of_the_same_entry(full: Fronted) -> None:
    """An accepted difference (README): NGINX itself answers 421 when the Host differs
    from the SNI on a server that asks for certificates, even within one [[tls.sni]]
    entry, where the direct mode serves the request; the body is twistedgw's JSON."""
    sni, host = "a.partners.example.com", "b.partners.example.com"
    direct, _ = sni_request(full.direct_port, full.pki, sni, host, SHOP, "partner-direct")
    through, _ = sni_request(full.nginx.port, full.pki, sni, host, SHOP, "partner-direct")
    assert direct.status == 200
    assert (through.status, through.json()["code"]) == (421, "421")


def _send(port: int, pki: DevPki, method: str, path: str, body: bytes | None = None
          ) -> Response:
    from tests.lbsupport import connect

    conn = connect(port, pki=pki, client=None, tls=True)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def test_several_backends_ride_nginxs_path(full: Fronted, echo: BackendProcess,
                                          echo2: BackendProcess) -> None:
    """load_balance over two, with one down (every method gets through: a backend that
    refused the connection got nothing, so the next one is tried), failover past a dead
    first, all down (503 101503), and a backend that takes the request and never answers
    (backend_timeout 1 s): a GET goes to the next, a POST with a body is not retried
    (504 101504), in both modes; two HTTPS backends whose TLS name NGINX takes from
    Lua's pick. The Lua variant also sends each backend its own Host."""
    cases = [("GET", "/pool/x", None), ("GET", "/pool/y", None),
             ("GET", "/pooldown/x", None), ("GET", "/pooldown/y", None),
             ("POST", "/pooldown/p", b"hello"), ("PUT", "/pooldown/q", b"hello"),
             ("DELETE", "/pooldown/d", None), ("GET", "/failover/x", None),
             ("POST", "/failover/p", b"x"), ("GET", "/alldown/x", None),
             ("POST", "/alldown/x", b"x"), ("POST", "/slowpost/p", b"data"),
             ("GET", "/slowget/g", None), ("GET", "/tlspool/a", None),
             ("GET", "/tlspool/b", None), ("POST", "/tlspool/c", b"x")]
    mismatches = []
    for method, path, body in cases:
        direct = outcome(_send(full.direct_port, full.pki, method, path, body))
        through = outcome(_send(full.nginx.port, full.pki, method, path, body))
        if direct != through:
            mismatches.append((method, path, direct, through))
    assert not mismatches, "\n".join(map(repr, mismatches))
    assert outcome(_send(full.nginx.port, full.pki, "GET", "/alldown/x")) == (503, "101503")
    assert outcome(_send(full.nginx.port, full.pki, "POST", "/slowpost/p2", b"d"))[0] == 200
    hosts = set()
    for _ in range(4):
        r = _send(full.nginx.port, full.pki, "GET", "/pool/h")
        hosts.add(echoed_headers(r)["host"][0])
    ports = {echo.url.rsplit("/", 1)[1], echo2.url.rsplit("/", 1)[1]}
    if full.variant == "lua":
        assert hosts == ports  # each backend its own Host, as in direct mode
    else:
        assert len(hosts) == 1  # stock NGINX: the first backend's Host (README)


def test_idempotent_requests_with_a_body_take_the_gateway_path(full: Fronted) -> None:
    """``auth_request`` with several backends: stock NGINX would retry an idempotent
    request that has a body on the next backend (direct mode does not), so such a request
    goes to twistedgw whole; one without a body (no Content-Length and no
    Transfer-Encoding: one hash lookup, ``$tgw_body_retry``; or Content-Length 0) stays on
    NGINX's path. The Lua variant applies direct mode's retry rule itself: all stay."""
    from tests.lbsupport import connect

    def gateway_paths() -> list[str]:
        log = full.directory / "access.jsonl"
        return [json.loads(line)["path"] for line in log.read_text().splitlines()]

    if full.variant == "auth_request":
        text = (full.nginx.directory / "site.conf").read_text()
        assert 'map "$http_content_length$http_transfer_encoding" $tgw_body_retry {\n' \
               '    "" 0;\n    default $tgw_body_retry_method;\n}' in text
    tag = str(time.monotonic_ns())
    cases = [("GET", f"/pool/get-{tag}", None, {}), ("PUT", f"/pool/put-{tag}", b"data", {}),
             ("PUT", f"/pool/empty-{tag}", b"", {}),
             ("DELETE", f"/pool/chunked-{tag}", iter([b"da", b"ta"]),
              {"Transfer-Encoding": "chunked"})]
    for method, path, body, headers in cases:
        conn = connect(full.nginx.port, pki=full.pki, client=None, tls=True)
        try:
            conn.request(method, path, body=body, headers=headers,
                         encode_chunked=bool(headers))
            r = conn.getresponse()
            assert r.status == 200, (method, path, r.status, r.read())
            r.read()
        finally:
            conn.close()
    full.wait_logged()
    seen = {p.rsplit("-", 1)[0] for p in gateway_paths() if p.endswith(tag)}
    expected = {"/pool/put", "/pool/chunked"} if full.variant == "auth_request" else set()
    assert seen == expected


def _tier_run(send: Any, n: int = 6) -> list[tuple[int, str | None, str | None]]:
    out = []
    for _ in range(n):
        r = send()
        out.append((*outcome(r), r.header("retry-after") and "Retry-After"))
    return out


def test_tiers_count_every_request_on_nginxs_path(full: Fronted) -> None:
    """A tier of 4 a minute per certificate: 4 answers then 429 900800 with Retry-After,
    the same sequence directly and through NGINX (another certificate of the same tier,
    so each has a bucket of its own), verdicts cached or not (Lua: cached, NGINX spends
    the bucket twistedgw names; auth_request: twistedgw decides every request)."""
    path = "/metered/x"
    direct = _tier_run(lambda: full.direct(path, "partner-direct"))
    through = _tier_run(lambda: full.via_nginx(path, "partner-rsa"))
    assert direct == through
    assert [o[0] for o in through] == [200] * 4 + [429] * 2
    assert through[-1] == (429, "900800", "Retry-After")
    if full.variant == "lua":  # the verdict was cached: NGINX alone counted
        full.wait_logged()
        before = full.authz_asked()
        assert full.via_nginx(path, "partner-rsa").status == 429
        full.wait_logged()
        assert full.authz_asked() == before


def test_cluster_tiers_one_bucket_for_both_paths(tmp_path: Path, pki: DevPki,
                                                 echo: BackendProcess) -> None:
    """With [cluster], NGINX's Lua spends the same Redis bucket (same key, same script)
    as twistedgw: requests on NGINX's path and on the gateway path (an unclean path) of
    one caller share one limit."""
    from tests.redissupport import start_redis

    redis = start_redis(tmp_path / "redis")
    cluster = f'\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\n'
    try:
        f = start_fronted(tmp_path, pki, echo, variant="lua",
                          extra=TIERED_API.format(backend=echo.url) + cluster)
        try:
            got = [full_status(f, "/metered/a"), full_status(f, "/metered/./b"),
                   full_status(f, "/metered/c"), full_status(f, "/metered//d"),
                   full_status(f, "/metered/e"), full_status(f, "/metered/./f")]
            assert got == [200, 200, 200, 200, 429, 429]
            keys = redis.command("KEYS", "*")
            assert len(keys) == 1 and keys[0].startswith(b"twistedgw:")  # one bucket
        finally:
            f.nginx.stop()
            f.gateway.stop()
    finally:
        redis.kill()


def full_status(f: Fronted, path: str) -> int:
    return f.via_nginx(path, "partner-direct").status


def test_header_plugins_ride_nginxs_path(full: Fronted) -> None:
    """request-headers and response-headers as NGINX directives: the backend sees the same
    request headers, the client the same response headers as in direct mode, refusals
    and errors included; the verdict is cached (the plugins decide nothing)."""
    path = "/decorated/headers?set=X-Secret:1&set=X-Keep:2"
    sent = (("X-Drop", "1"), ("X-Team", "red"))
    direct, through = both(full, path, "partner-direct", sent)
    assert (direct.status, through.status) == (200, 200)
    assert echoed_headers(direct)["x-forwarded-host"][1:] == ["api.example.com"]
    assert echoed_headers(through)["x-forwarded-host"][1:] == ["api.example.com"]
    for r in (direct, through):
        seen = echoed_headers(r)
        assert seen["x-team"] == ["blue"] and "x-drop" not in seen
        assert r.header("x-served-by") == "twistedgw" and r.header("x-secret") is None
        assert r.header("x-keep") == "2"
    direct, through = both(full, path, None, sent)
    assert outcome(direct) == outcome(through) == (401, "900902")
    assert direct.header("x-served-by") == through.header("x-served-by") == "twistedgw"
    if full.variant == "lua":
        full.wait_logged()
        before = full.authz_asked()
        assert full.via_nginx(path, "partner-direct", sent).status == 200
        full.wait_logged()
        assert full.authz_asked() == before  # cached


def _h2(port: int, pki: DevPki, client: str | None, requests: list[Any],
        authority: str | None = None, server_name: str = "localhost") -> list[Any]:
    """Each request in turn on one HTTP/2 connection: their outcomes (and Retry-After)."""
    from tests.h2client import H2Client

    c = H2Client(port, pki, client, authority=authority, server_name=server_name)
    try:
        out = []
        for method, path, headers, body in requests:
            stream = c.start(path, method, headers, body)
            c.wait([stream])
            r = c.response(stream)
            out.append((path, *outcome(r), r.header("retry-after") is not None))
        return out
    finally:
        c.close()


def test_parity_over_http2(full: Fronted, signing: jwtkit.SigningKey) -> None:
    """#26 item 6 ([nginx] http2 = true): the example's matrix (certificate kinds x path
    tricks x keys), bearer tokens, hosts and SNI, several backends with one down, tiers
    and header plugins give the direct mode's status and code over HTTP/2 too."""
    import datetime

    from tests.test_nginx_fronted import PATHS

    now = datetime.datetime.now(datetime.UTC)
    root = full.pki.authorities["partner-root"]
    for name in (f"h2-direct-{full.variant}", f"h2-nginx-{full.variant}"):
        issued = root.issue(name, not_before=now - datetime.timedelta(days=1),
                            not_after=now + datetime.timedelta(days=1))
        full.pki.clients[name] = issued.write(full.pki.directory / "clients", name)
    valid = jwtkit.token(signing, jwtkit.claims())
    expired = jwtkit.token(signing, jwtkit.claims(exp=int(time.time()) - 3600))
    audience = jwtkit.token(signing, jwtkit.claims(aud="else"))
    bound = jwtkit.token(signing, jwtkit.bound(full.pki.clients["partner-direct"][0]))
    common = [("GET", p, [], None) for p in PATHS]
    common += [("GET", "/orders/v1/list", [("apikey", k)], None) for k in ("demo-key", "no")]
    common += [("GET", TOKENS, [("authorization", f"Bearer {t}")], None)
               for t in (valid, expired, audience, bound)]
    common += [("GET", "/pool/x", [], None), ("GET", "/pooldown/x", [], None),
               ("POST", "/pooldown/p", [], b"hello"), ("GET", "/alldown/x", [], None),
               ("GET", "/decorated/headers?set=X-Secret:1", [], None)]
    mismatches = []
    for client in (None, "partner-direct", "other-app", "expired", "pinned"):
        direct = _h2(full.direct_port, full.pki, client, common)
        through = _h2(full.nginx.port, full.pki, client, common)
        mismatches += [(client, d, t) for d, t in zip(direct, through, strict=True) if d != t]
    hosts = [("localhost", "localhost"), ("partners.example.com", "partners.example.com"),
             ("a.partners.example.com", "a.partners.example.com"),
             ("partners.example.com", "other.example.com"),
             ("localhost", "partners.example.com"), ("localhost", "other.example.com"),
             ("localhost", "bad-.example.com")]  # no host name for direct mode, for NGINX one
    shop = [("GET", SHOP, [], None), ("GET", SHOP, [("apikey", "demo-key")], None)]
    for sni, authority in hosts:
        direct = _h2(full.direct_port, full.pki, "partner-direct", shop, authority, sni)
        through = _h2(full.nginx.port, full.pki, "partner-direct", shop, authority, sni)
        mismatches += [(sni, authority, d, t) for d, t in zip(direct, through, strict=True)
                       if d != t]
    metered = [("GET", "/metered/x", [], None)] * 6
    direct = _h2(full.direct_port, full.pki, f"h2-direct-{full.variant}", metered)
    through = _h2(full.nginx.port, full.pki, f"h2-nginx-{full.variant}", metered)
    assert [d[1] for d in through] == [200] * 4 + [429] * 2
    mismatches += [("tiers", d, t) for d, t in zip(direct, through, strict=True) if d != t]
    assert not mismatches, "\n".join(map(repr, mismatches))


def test_nginx_alone_serves_warm_requests_while_twistedgw_is_paused(
    full: Fronted, signing: jwtkit.SigningKey
) -> None:
    """NGINX's path is really taken: with the verdicts warm and twistedgw stopped
    (SIGSTOP), a cached bearer token (Lua), an API with several backends, an API chosen
    by host under its SNI entry and an mTLS API are still served by NGINX alone. (The
    auth_request variant asks twistedgw about every bearer token: those wait.)"""
    import signal

    token = jwtkit.token(signing, jwtkit.claims(exp=int(time.time()) + 600))
    shop = ("partners.example.com", "partners.example.com", SHOP, "partner-direct")

    def served() -> dict[str, int]:
        out = {
            "pet": full.via_nginx(PET_PATH, "partner-direct", timeout=3).status,
            "pool": full.via_nginx("/pool/x", None, timeout=3).status,
            "hosts": sni_request(full.nginx.port, full.pki, *shop)[0].status,
        }
        try:
            out["jwt"] = full.via_nginx(TOKENS, None, bearer(token), timeout=3).status
        except TimeoutError:
            out["jwt"] = 0
        return out

    assert set(served().values()) == {200}  # warm
    full.gateway.signal(signal.SIGSTOP)
    try:
        got = served()
    finally:
        full.gateway.signal(signal.SIGCONT)
    want = {"pet": 200, "pool": 200, "hosts": 200}
    want["jwt"] = 200 if full.variant == "lua" else 0
    assert got == want
