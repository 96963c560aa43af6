"""The NGINX-fronted mode: a real NGINX on the config ``twistedgw nginx-config`` rendered
from conf/nginx-fronted/gateway.toml, asking a real twistedgw over a Unix socket.

The same gateway process also has a direct TLS listener, so every parity case is
asked both ways in the same run and must get the same status and error code.
These tests FAIL (never skip) when nginx is missing: CI must run them.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import REPO, GatewayProcess, Response, env, free_port, start_gateway
from tests.lbsupport import (
    EXAMPLE_PKI,
    ProxyProcess,
    echoed_headers,
    example,
    get,
    render,
    require,
    start_nginx,
)
from twistedgw import config as configmod
from twistedgw.app import nginx as nginxconf
from twistedgw.identity import _reasons as reasons
from twistedgw.testing.devpki import DevPki, Issued

PET = "/petstore/1.0.5/pet/1?x=1"
ORDERS = "/orders/v1/list"
STATUS = "/public/ping"
KEY = "demo-key"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


def fronted_toml(pki: DevPki, echo: BackendProcess, d: Path, direct_port: int,
                 nginx_port: int, cache_seconds: int = 10, http2: bool = False) -> str:
    """conf/nginx-fronted/gateway.toml with this run's paths, plus a direct TLS listener."""
    text = render(example("nginx-fronted/gateway.toml"), {
        EXAMPLE_PKI: str(pki.directory),
        "/run/twistedgw/authz.sock": str(d / "authz.sock"),
        '"/var/cache/nginx/twistedgw"': f'"{d / "cache"}"',
        'listen = "443"': f'listen = "127.0.0.1:{nginx_port}"',
        "http://127.0.0.1:8080": echo.url,
        "cache_seconds = 10": f"cache_seconds = {cache_seconds}",
    })
    direct = f'[[listeners]]\nhost = "127.0.0.1"\nport = {direct_port}\n'
    if http2:  # both ways speak HTTP/2 (ALPN h2)
        direct += "http2 = true\n"
        text = text.replace("\n[identity]", "http2 = true\n\n[identity]", 1)
    access = f'\n[access_log]\npath = "{d / "access.jsonl"}"\n'
    return direct + "\n" + text + access


@dataclass
class Fronted:
    variant: str
    pki: DevPki
    gateway: GatewayProcess
    nginx: ProxyProcess
    directory: Path
    direct_port: int

    def via_nginx(self, path: str, client: str | None, headers: Any = (),
                  method: str = "GET", timeout: float = 30.0) -> Response:
        return get(self.nginx.port, path, headers, pki=self.pki, client=client, tls=True,
                   timeout=timeout)

    def direct(self, path: str, client: str | None, headers: Any = ()) -> Response:
        return get(self.direct_port, path, headers, pki=self.pki, client=client, tls=True)

    def authz_asked(self) -> int:
        """How many times twistedgw's authz endpoint was asked (its access log)."""
        log = self.directory / "access.jsonl"
        if not log.exists():
            return 0
        return sum(
            1 for line in log.read_text().splitlines()
            if json.loads(line)["path"] == "/_twistedgw/authz"
        )

    def wait_logged(self) -> None:
        time.sleep(0.05)


def render_site(config_path: Path, output: Path, variant: str = "auth_request") -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twistedgw", "nginx-config", "--config", str(config_path),
         "--output", str(output), "--check", "--variant", variant],
        capture_output=True, text=True, env=env(), cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def start_nginx_with_lua(directory: Path, site: Path, port: int) -> ProxyProcess:
    """lbsupport.start_nginx, with Debian's Lua module (and the NDK) loaded."""
    from tests.lbsupport import _spawn

    nginx = require("nginx")
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    loads = "".join(f"load_module {m};\n" for m in nginxconf.LUA_MODULES)
    (directory / "nginx.conf").write_text(
        f"""{loads}daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
{temp}
    include {site};
}}
""")
    argv = [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf"),
            "-e", str(directory / "error.log")]
    return _spawn("nginx", argv, directory, port)


def start_fronted(tmp: Path, pki: DevPki, echo: BackendProcess, cache_seconds: int = 10,
                  tls_extra: str = "", variant: str = "auth_request", extra: str = "",
                  sni: str = "", http2: bool = False) -> Fronted:
    require("nginx")
    direct_port, nginx_port = free_port(), free_port()
    gw_dir = tmp / "gw"
    gw_dir.mkdir(parents=True, exist_ok=True)
    text = fronted_toml(pki, echo, gw_dir, direct_port, nginx_port, cache_seconds, http2)
    if tls_extra:
        text = text.replace("\ntruststore = ", f"\n{tls_extra}\ntruststore = ", 1)
    if sni:  # [[tls.sni]] tables go right after [tls]
        text = text.replace("\n[mutual_ssl]", f"\n{sni}\n[mutual_ssl]", 1)
    text += extra
    gateway = start_gateway(gw_dir, text, direct_port)
    try:
        deadline = time.monotonic() + 10
        while not (gw_dir / "authz.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        site = tmp / "nginx" / "twistedgw.conf"
        site.parent.mkdir(parents=True, exist_ok=True)
        render_site(gateway.config, site, variant)
        if variant == "lua":
            proxy = start_nginx_with_lua(tmp / "nginx", site, nginx_port)
        else:
            proxy = start_nginx(tmp / "nginx", site.read_text(), nginx_port)
    except Exception:
        gateway.stop()
        raise
    return Fronted(variant, pki, gateway, proxy, gw_dir, direct_port)


@pytest.fixture(scope="module", params=["auth_request", "lua"])
def fronted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            pki: DevPki, echo: BackendProcess) -> Iterator[Fronted]:
    """Both variants: auth_request + proxy_cache, and access_by_lua + lua_shared_dict
    (plugins/nginx/, Debian's libnginx-mod-http-lua)."""
    f = start_fronted(tmp_path_factory.mktemp(f"fronted-{request.param}"), pki, echo,
                      variant=request.param)
    yield f
    f.nginx.stop()
    f.gateway.stop()


def outcome(r: Response) -> tuple[int, str | None]:
    """Status and, for a JSON error, its code; for a 200 the path the backend saw."""
    if r.status == 200:
        return 200, json.loads(r.body)["path"]
    if r.header("content-type") != "application/json":
        return r.status, f"not JSON: {r.body[:80]!r}"
    return r.status, r.json().get("code")


CLIENTS = [None, "partner-app", "partner-rsa", "partner-direct", "other-app", "pinned",
           "expired", "not-yet-valid", "server-only", "intruder", "lb"]
PATHS = [
    PET, ORDERS, STATUS, "/public", "/public/",
    "/PETSTORE/1.0.5/pet/1",            # contexts match case-insensitively
    "/petstore;x/1.0.5/pet/1",           # ;params are dropped
    "/public/../petstore/1.0.5/pet/1",   # dot segments resolved before routing
    "/public/..;/petstore/1.0.5/pet/1",  # NGINX keeps ..; as a segment, twistedgw does not
    "/public/./x", "//petstore/1.0.5/pet/1", "/%70etstore/1.0.5/pet/1",
    "/petstore%2F1.0.5/pet/1", "/petstore/1.0.5%5Cpet", "/public/%2e%2e/petstore/1.0.5/pet/1",
    "/nothing/here", "/_twistedgw_nginx/gateway", "/_twistedgw_nginx/authz/0",
    "/public/a%3Fb?c=d", "/public/%41%42", "/../status",
]


def test_parity_matrix(fronted: Fronted) -> None:
    """Every certificate kind x every path trick x API keys: same status and code."""
    mismatches = []
    cases = [(p, c, ()) for p in PATHS for c in CLIENTS]
    cases += [(ORDERS, c, (("apikey", k),)) for c in (None, "other-app", "expired", "intruder")
              for k in (KEY, "wrong-key")]
    cases += [(PET, "partner-direct", (("apikey", KEY),)), (PET, None, (("apikey", KEY),))]
    for path, client, headers in cases:
        direct = outcome(fronted.direct(path, client, headers))
        through = outcome(fronted.via_nginx(path, client, headers))
        if direct != through:
            mismatches.append((path, client, headers, direct, through))
    assert not mismatches, "\n".join(map(repr, mismatches))


def test_refusals_carry_twistedgws_json(fronted: Fronted) -> None:
    r = fronted.via_nginx(PET, "expired")
    assert r.status == 401 and r.json()["description"] == reasons.EXPIRED
    r = fronted.via_nginx(PET, "other-app")
    assert r.status == 401 and r.json()["description"] == reasons.NOT_FOR_API
    r = fronted.via_nginx(PET, None)
    assert (r.status, r.json()["code"]) == (401, "900902")
    # An open API serves a caller whose certificate NGINX itself refuses (expired).
    assert fronted.via_nginx(STATUS, "expired").status == 200


def test_headers_the_backend_sees(fronted: Fronted) -> None:
    forged = {
        "X-Forwarded-Client-Cert": "Hash=forged", "X-SSL-Client-Cert": "forged",
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http", "Client-Cert": ":AA==:",
        "X-Twistedgw-Set-X-Forwarded-Client-Cert": "forged",
        "X-Twistedgw-Principal": "CN=admin", "X-Twistedgw-Api": "Admin:1",
    }
    caller_only = ("x-twistedgw-principal", "x-twistedgw-api")
    seen = echoed_headers(fronted.via_nginx(PET, "partner-direct", {**forged, "apikey": KEY}))
    direct = echoed_headers(fronted.direct(PET, "partner-direct", {**forged, "apikey": KEY}))
    for name in ("x-forwarded-client-cert", "x-forwarded-proto", "x-forwarded-for", "host"):
        assert seen[name] == direct[name], name
    # The Host each client sent (they reach different ports).
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{fronted.nginx.port}"]
    assert direct["x-forwarded-host"] == [f"127.0.0.1:{fronted.direct_port}"]
    assert seen["x-forwarded-client-cert"][0].startswith("Hash=")
    assert "forged" not in seen["x-forwarded-client-cert"][0]
    for name in ("apikey", "x-ssl-client-cert", "client-cert", "x-ssl-client-verify",
                 *caller_only):
        assert name not in seen and name not in direct, name
    # Requests NGINX hands to twistedgw whole (an odd path, a certificate NGINX refuses
    # itself, on an open API): the backend still sees the caller's address and scheme.
    for path, client in (("/public/./x", "partner-direct"), ("/public/x", "expired")):
        seen = echoed_headers(fronted.via_nginx(path, client, forged))
        direct = echoed_headers(fronted.direct(path, client, forged))
        for name in ("x-forwarded-proto", "x-forwarded-for", "host"):
            assert seen[name] == direct[name], (path, name)
        for name in caller_only:  # the gateway path strips them as direct mode does
            assert name not in seen and name not in direct, (path, name)
        assert seen["x-forwarded-host"] == [f"127.0.0.1:{fronted.nginx.port}"]
    # Key-only access: no identity header, the forged one is gone.
    seen = echoed_headers(fronted.via_nginx(ORDERS, None, {**forged, "apikey": KEY}))
    assert "x-forwarded-client-cert" not in seen and "apikey" not in seen


def test_server_header_names_no_version(fronted: Fronted) -> None:
    """#23 item 7: server_tokens off (stock NGINX still says "nginx": accepted)."""
    for r in (fronted.via_nginx(STATUS, None), fronted.via_nginx(PET, None),
              fronted.via_nginx("/nothing/here", None)):
        assert r.header("server") == "nginx", (r.status, r.headers)


def test_more_headers_than_lua_reads_are_never_cached(fronted: Fronted) -> None:
    """#22 item 6: ngx.req.get_headers() stops at 100, so a valid apikey after the 100th
    header was cached as "no key": the next caller with no key and no certificate got 200
    and the key's consumer. A request whose headers could not all be read goes to
    twistedgw whole (the same answer as direct mode), and nothing is cached for it."""
    filler = [(f"X-Filler-{n}", "x") for n in range(120)]
    many = (*filler, ("apikey", KEY))
    assert outcome(fronted.via_nginx(ORDERS + "?many", None, many)) == outcome(
        fronted.direct(ORDERS + "?many", None, many))
    for _ in range(2):
        r = fronted.via_nginx(ORDERS, None)
        assert (r.status, r.json()["code"]) == (401, "900902")
    wrong = (*filler, ("apikey", "wrong-key"))
    r = fronted.via_nginx(ORDERS, None, wrong)
    assert (r.status, r.json()["code"]) == (401, "900901")


def _raw_tls(port: int, pki: DevPki, cert: str | None, data: bytes,
             until: bytes | None = None) -> bytes:
    """Send data on one TLS connection (client certificate `cert`) and return what the
    server sends back within 5 s: until it closes, or until `until` arrives."""
    import socket

    from tests.harness import client_context

    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with client_context(pki, cert).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and (until is None or until not in got):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, OSError):
            pass
    return got


def _head_only(port: int, pki: DevPki, target: str, extra: str = "") -> bytes:
    """Send a POST head announcing 9 MiB with Expect: 100-continue and no body byte;
    everything the server sends back within 5 s (the refusal needs no body)."""
    return _raw_tls(port, pki, None,
                    (f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                     f"{9 << 20}\r\nExpect: 100-continue\r\n{extra}\r\n").encode(),
                    until=b"900902")


def test_refusal_at_head_time_reads_no_body(fronted: Fronted) -> None:
    """#22 item 4 through NGINX: a client with no certificate POSTs 9 MiB with
    Expect: 100-continue to an mTLS-mandatory API and gets 401 900902 at once, before it
    sends a byte of the body: NGINX answers the refusal twistedgw's authz endpoint gave
    (its JSON) without reading the body, and nothing reaches twistedgw or the backend.
    The Lua variant also sends no "100 Continue" (it writes the refusal on the raw
    connection and closes it); stock NGINX writes "100 Continue" before discarding the
    body of any answer it sends itself, so the auth_request variant does (README)."""
    data = _head_only(fronted.nginx.port, fronted.pki, PET)
    head, _, body = data.partition(b"\r\n\r\n")
    if fronted.variant == "lua":
        assert head.startswith(b"HTTP/1.1 401 "), data[:300]
    else:
        assert head == b"HTTP/1.1 100 Continue", data[:300]
        head, _, body = body.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), data[:300]
    assert json.loads(body)["code"] == "900902"


def test_nginxs_own_400_after_the_checks_is_twistedgws_json(fronted: Fronted) -> None:
    """A request that passed the server block's checks (and, on an API's path, its
    verdict), whose chunked body NGINX then finds malformed: NGINX's 400 goes through
    ``error_page 400`` (an internal redirect that keeps the request's variables, as an
    auth_request subrequest shares them) and is answered with twistedgw's JSON 400: on
    the gateway path (no API there: the server's error_page) and on an API's path (the
    API location's own), as direct mode answers there. The checks a subrequest skips once its
    main request passed them (``$tgw_checked``) never include that one."""
    def send(port: int, target: str) -> bytes:
        return _raw_tls(port, fronted.pki, "pinned",
                        f"POST {target} HTTP/1.1\r\nHost: localhost\r\n".encode()
                        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nbad\r\n0\r\n\r\n")

    # The gateway path: twistedgw's 404 would come at head time, but NGINX streams the
    # body on and meets the bad chunk first; an API's path twice (after its verdict).
    for target in ("/nothing/here", STATUS, STATUS):
        data = send(fronted.nginx.port, target)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), data[:300]
        assert b"application/json" in head.lower(), data[:300]
        assert json.loads(body)["code"] == "400", data[:300]
    direct = send(fronted.direct_port, STATUS)
    assert direct.startswith(b"HTTP/1.1 400 "), direct[:300]
    assert json.loads(direct.partition(b"\r\n\r\n")[2])["code"] == "400"


def test_warm_cache_does_not_ask_twistedgw(fronted: Fronted) -> None:
    fronted.via_nginx(PET + "&warm=1", "pinned")
    fronted.wait_logged()
    before = fronted.authz_asked()
    for _ in range(5):
        assert fronted.via_nginx(PET, "pinned").status == 200
    fronted.wait_logged()
    assert fronted.authz_asked() == before
    # A different API, key or certificate is a different verdict: asked again.
    fresh = f"wrong-{time.monotonic_ns()}"  # never asked before: a miss
    assert fronted.via_nginx(ORDERS, "pinned", {"apikey": fresh}).status == 200
    fronted.wait_logged()
    assert fronted.authz_asked() == before + 1
    r = fronted.via_nginx(PET, "other-app")
    assert r.status == 401


def test_a_closed_connections_memo_never_reaches_the_next(fronted: Fronted) -> None:
    """The Lua variant keeps a connection's certificate and last verdicts by a number it
    writes into the connection's TLS object; a new connection's TLS object often takes a
    closed one's memory, and must still start with nothing kept: an allowed client and a
    refused one, each on a connection of its own, in turn, each get their own answer."""
    for _ in range(8):
        assert fronted.via_nginx(PET, "pinned").status == 200
        assert fronted.via_nginx(PET, "other-app").status == 401


def test_cached_allow_is_per_key(fronted: Fronted) -> None:
    assert fronted.via_nginx(ORDERS, None, {"apikey": KEY}).status == 200
    r = fronted.via_nginx(ORDERS, None, {"apikey": "wrong-key"})
    assert (r.status, r.json()["code"]) == (401, "900901")
    r = fronted.via_nginx(ORDERS, None)
    assert (r.status, r.json()["code"]) == (401, "900902")


def test_authz_answer_says_how_long(fronted: Fronted) -> None:
    """A hand-written NGINX config that honours these headers is correct too."""
    header = nginxconf_header_value(fronted, "partner-direct")
    r = get(fronted.direct_port, "/_twistedgw/authz",
            {"X-Original-URI": PET, "X-Original-Method": "GET"},
            pki=fronted.pki, client="partner-direct", tls=True)
    assert r.status == 200
    assert r.header("x-accel-expires") == "10" and r.header("cache-control") == "max-age=10"
    assert header  # sanity
    r = get(fronted.direct_port, "/_twistedgw/authz", {"X-Original-URI": PET},
            pki=fronted.pki, client="other-app", tls=True)
    assert r.status == 401
    assert r.header("x-accel-expires") == "0" and r.header("cache-control") == "no-store"
    # The caller's headers are for hand-written configs (auth_request_set); the rendered
    # one says it answers refusals itself and gets none: NGINX parses a cached answer's
    # every header again on each hit.
    asked = {"X-Original-URI": PET, "X-Original-Method": "GET"}
    plain = get(fronted.direct_port, "/_twistedgw/authz", asked, pki=fronted.pki,
                client="partner-direct", tls=True)
    rendered = get(fronted.direct_port, "/_twistedgw/authz",
                   {**asked, "X-Twistedgw-Nginx": "answer"}, pki=fronted.pki,
                   client="partner-direct", tls=True)
    assert plain.status == rendered.status == 200
    for name in ("x-twistedgw-api", "x-client-cert-subject", "x-client-cert-sha256"):
        assert plain.header(name) and rendered.header(name) is None, name
    # Nor Server, Date, Cache-Control: X-Accel-Expires alone says how long (0: never kept).
    assert rendered.header("x-accel-expires") == "10"
    for name in ("server", "date", "cache-control"):
        assert plain.header(name) and rendered.header(name) is None, name
    refused = get(fronted.direct_port, "/_twistedgw/authz",
                  {"X-Original-URI": PET, "X-Twistedgw-Nginx": "answer"},
                  pki=fronted.pki, client="other-app", tls=True)
    assert (refused.status, refused.header("x-twistedgw-status")) == (401, "401")
    assert refused.header("x-accel-expires") == "0"
    assert refused.header("x-twistedgw-error") == refused.body.decode()
    for name in ("server", "date", "cache-control"):
        assert refused.header(name) is None, name


def nginxconf_header_value(fronted: Fronted, client: str) -> str:
    crt = fronted.pki.clients[client][0]
    return crt.read_text()


@pytest.mark.parametrize("variant", ["auth_request", "lua"])
def test_reload_takes_effect_on_cached_verdicts(
    tmp_path: Path, pki: DevPki, echo: BackendProcess, variant: str
) -> None:
    """A reload that removes the alias refuses within cache_seconds, never later."""
    f = start_fronted(tmp_path, pki, echo, cache_seconds=2, variant=variant)
    try:
        assert f.via_nginx(PET, "pinned").status == 200
        text = f.gateway.config.read_text().replace(
            'aliases = ["partner-root", "pinned-client"]', 'aliases = ["partner-root"]')
        f.gateway.config.write_text(text)
        f.gateway.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert f.direct(PET, "pinned").status == 401  # the reload is in force
        deadline = time.monotonic() + 2 + 1.5
        while time.monotonic() < deadline:
            if f.via_nginx(PET, "pinned").status == 401:
                break
            time.sleep(0.2)
        r = f.via_nginx(PET, "pinned")
        assert (r.status, r.json()["description"]) == (401, reasons.NOT_FOR_API)
    finally:
        f.nginx.stop()
        f.gateway.stop()


@pytest.mark.parametrize("variant", ["auth_request", "lua"])
def test_revocation_after_a_crl_reload_reaches_cached_verdicts(
    tmp_path: Path, pki: DevPki, echo: BackendProcess, variant: str
) -> None:
    root = pki.authorities["partner-root"]
    crl = tmp_path / "partner-root.crl"
    crl.write_bytes(root.crl())
    f = start_fronted(tmp_path, pki, echo, cache_seconds=2, variant=variant, tls_extra=(
        f'crl = ["{crl}"]\nrevocation = "crl"\nrevocation_scope = "leaf"'))
    try:
        assert f.via_nginx(PET, "partner-direct").status == 200
        assert f.via_nginx(PET, "partner-direct").status == 200  # cached
        crl.write_bytes(root.crl([pki.issued["partner-direct"].cert]))
        f.gateway.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert f.direct(PET, "partner-direct").status == 401
        deadline = time.monotonic() + 2 + 1.5
        r = f.via_nginx(PET, "partner-direct")
        while r.status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            r = f.via_nginx(PET, "partner-direct")
        assert (r.status, r.json()["code"]) == (401, "900901")
        assert r.json() == f.direct(PET, "partner-direct").json()
    finally:
        f.nginx.stop()
        f.gateway.stop()


def test_cached_allow_never_outlives_the_certificate(
    tmp_path: Path, pki: DevPki, echo: BackendProcess
) -> None:
    """A certificate that expires within cache_seconds (60): allowed, cached, then
    refused as expired (twistedgw's JSON) at its expiry. NGINX's own check (495) and the
    verdict's X-Accel-Expires (``test_lifetime_*``) both end it; this is the whole path."""
    f = start_fronted(tmp_path, pki, echo, cache_seconds=60)
    try:
        now = datetime.datetime.now(datetime.UTC)
        expires = now + datetime.timedelta(seconds=4)
        short: Issued = pki.authorities["partner-root"].issue(
            "short-lived", not_before=now - datetime.timedelta(days=1), not_after=expires)
        pki.clients["short"] = short.write(pki.directory / "clients", "short")
        assert f.via_nginx(PET, "short").status == 200
        assert f.via_nginx(PET, "short").status == 200  # from the cache
        r = f.via_nginx(PET, "short")
        while r.status == 200 and datetime.datetime.now(datetime.UTC) < expires + (
            datetime.timedelta(seconds=10)
        ):
            time.sleep(0.2)
            r = f.via_nginx(PET, "short")
        assert datetime.datetime.now(datetime.UTC) < expires + datetime.timedelta(seconds=2)
        assert (r.status, r.json()["description"]) == (401, reasons.EXPIRED)
    finally:
        f.nginx.stop()
        f.gateway.stop()


def _open_verdict_files(f: Fronted) -> dict[str, int]:
    """The cache files NGINX's worker (``master_process off``: the process itself) holds
    open, by path, with the inode each descriptor reads."""
    held: dict[str, int] = {}
    cache = str(f.directory / "cache")
    for fd in Path(f"/proc/{f.nginx.proc.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            inode = os.stat(fd).st_ino  # the open file's, even when it was replaced
        except OSError:
            continue
        if target.startswith(cache):
            held[target] = inode
    return held


def test_a_verdict_file_stays_open_between_hits_and_a_new_answer_is_read(
    tmp_path: Path, pki: DevPki, echo: BackendProcess
) -> None:
    """``auth_request``: ``open_file_cache`` in the authz location keeps a cached
    verdict's file open between hits (no open, stat and close per hit); an expired
    verdict is still asked again, never served from the kept descriptor, and the answer
    stored anew (a new file) is the one read after it."""
    f = start_fronted(tmp_path, pki, echo, cache_seconds=2)
    try:
        site = (tmp_path / "nginx" / "twistedgw.conf").read_text()
        authz = site[site.index("location = /_twistedgw_nginx/authz/0 {"):]
        authz = authz[:authz.index("\n    }\n")]
        assert "proxy_cache twistedgw_verdicts;" in authz
        assert "open_file_cache max=1000 inactive=30s;" in authz
        assert f.via_nginx(PET, "pinned").status == 200  # asked, stored
        f.wait_logged()
        asked = f.authz_asked()
        assert f.via_nginx(PET, "pinned").status == 200  # a hit: the file opened, kept
        first = _open_verdict_files(f)
        assert len(first) == 1, first
        for _ in range(3):
            assert f.via_nginx(PET, "pinned").status == 200
        f.wait_logged()
        assert f.authz_asked() == asked and _open_verdict_files(f) == first
        (path, inode), = first.items()
        assert os.stat(path).st_ino == inode
        # Past X-Accel-Expires (cache_seconds; NGINX counts whole seconds): asked again,
        # not read from the kept descriptor.
        deadline = time.monotonic() + 4.5
        while f.authz_asked() == asked and time.monotonic() < deadline:
            time.sleep(0.2)
            assert f.via_nginx(PET, "pinned").status == 200
            f.wait_logged()
        assert f.authz_asked() == asked + 1
        assert os.stat(path).st_ino != inode  # the answer stored again: a new file
        assert f.via_nginx(PET, "pinned").status == 200
        f.wait_logged()
        assert f.authz_asked() == asked + 1  # a hit on the new file
        assert _open_verdict_files(f) == {path: os.stat(path).st_ino}
    finally:
        f.nginx.stop()
        f.gateway.stop()


# ----------------------------------------------------------------- the generator


def _config(tmp_path: Path, pki: DevPki, extra: str, *, nginx: bool = True) -> Path:
    text = render(example("nginx-fronted/gateway.toml"), {EXAMPLE_PKI: str(pki.directory)})
    if not nginx:
        start = text.index("[nginx]")
        end = text.index("[identity]")
        text = text[:start] + text[end:]
    path = tmp_path / "gateway.toml"
    path.write_text(text + extra)
    return path


def test_generator_names_what_the_config_lacks(tmp_path: Path, pki: DevPki) -> None:
    cfg = configmod.load(_config(tmp_path, pki, "", nginx=False))
    with pytest.raises(nginxconf.NginxConfigError) as e:
        nginxconf.render(cfg)
    assert e.value.problems == [f"{cfg.source}: nginx: the [nginx] section is required "
                                "for nginx-config"]
    text = _config(tmp_path, pki, "").read_text().replace(
        'trusted_proxies = ["unix"]', 'trusted_proxies = ["10.0.0.0/8"]')
    (tmp_path / "gateway.toml").write_text(text)
    cfg = configmod.load(tmp_path / "gateway.toml")
    with pytest.raises(nginxconf.NginxConfigError) as e:
        nginxconf.render(cfg)
    assert any("mutual_ssl.trusted_proxies" in p for p in e.value.problems)
    # A backend path NGINX would read as a variable (proxy_pass takes it as written).
    odd = '\n[[apis]]\nname = "odd"\nversion = "1"\ncontext = "/odd"\n' \
          'backend = "http://127.0.0.1:9/a$b"\n'
    cfg = configmod.load(_config(tmp_path, pki, odd))
    with pytest.raises(nginxconf.NginxConfigError) as e:
        nginxconf.render(cfg)
    assert [p.split(": ")[1] for p in e.value.problems] == [f"apis[{len(cfg.apis) - 1}].backend"]


def test_nginx_section_is_checked(tmp_path: Path, pki: DevPki) -> None:
    path = _config(tmp_path, pki, "", nginx=True)
    text = path.read_text().replace('listen = "443"', 'listen = "443; evil"').replace(
        'server_name = "_"', 'server_name = "a;b"').replace(
        'cache_path = "/var/cache/nginx/twistedgw"', 'cache_path = "relative"').replace(
        'authz = "unix:/run/twistedgw/authz.sock"', 'authz = "tcp:x"')
    path.write_text(text.replace("cache_seconds = 10", "cache_seconds = -1"))
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(path)
    keys = {line.split(": ")[1] for line in e.value.problems}
    assert {"nginx.listen", "nginx.server_name", "nginx.cache_path", "nginx.authz",
            "authz.cache_seconds"} <= keys, e.value.problems


def test_example_renders_and_nginx_accepts_it(tmp_path: Path, pki: DevPki) -> None:
    require("nginx")
    path = _config(tmp_path, pki, "")
    out = tmp_path / "site.conf"
    result = subprocess.run(
        [sys.executable, "-m", "twistedgw", "nginx-config", "--config", str(path),
         "--variant", "auth_request"],
        capture_output=True, text=True, env=env(), cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "auth_request /_twistedgw_nginx/authz/0;" in result.stdout
    checked = subprocess.run(
        [sys.executable, "-m", "twistedgw", "nginx-config", "--config", str(path), "--check",
         "--variant", "auth_request"],
        capture_output=True, text=True, env=env(), cwd=REPO,
    )
    assert checked.returncode == 0 and checked.stdout == result.stdout, checked.stderr
    render_site(path, out)
    assert (tmp_path / "site-truststore.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 4


# ----------------------------------------------------------------- verdict lifetimes


def _lifetime_config(tmp_path: Path, pki: DevPki, extra_tls: str = "", api_extra: str = ""
                     ) -> configmod.GatewayConfig:
    text = render(example("nginx-fronted/gateway.toml"), {
        EXAMPLE_PKI: str(pki.directory),
        'truststore = "': extra_tls + 'truststore = "',
        'aliases = ["partner-root", "pinned-client"]':
            'aliases = ["partner-root", "pinned-client"]' + api_extra,
    })
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return configmod.load(path)


def _identity(pki: DevPki, client: str) -> Any:
    from twistedgw.identity import ClientIdentity, Outcome, Source

    issued = pki.issued[client]
    return ClientIdentity(Source.HEADER, Outcome.VERIFIED, issued.full_chain,
                          frozenset({"partner-root"}))


def test_lifetime_is_capped_by_cache_seconds_and_certificate_expiry(
    tmp_path: Path, pki: DevPki
) -> None:
    from twistedgw.http import _verdicts as verdicts

    cfg = _lifetime_config(tmp_path, pki)
    pet = cfg.apis[0]
    identity = _identity(pki, "partner-direct")
    expiry = min(c.not_valid_after_utc.timestamp() for c in identity.chain)
    assert verdicts.allow_lifetime(cfg, pet, identity, now=expiry - 3600) == 10
    assert verdicts.allow_lifetime(cfg, pet, identity, now=expiry - 3.5) == 3
    assert verdicts.allow_lifetime(cfg, pet, identity, now=expiry - 0.5) == 0
    assert verdicts.cache_headers(0) == ((b"X-Accel-Expires", b"0"),
                                         (b"Cache-Control", b"no-store"))
    assert verdicts.cache_headers(7) == ((b"X-Accel-Expires", b"7"),
                                         (b"Cache-Control", b"max-age=7"))
    assert verdicts.nginx_cache_headers(0) == ((b"X-Accel-Expires", b"0"),)
    assert verdicts.nginx_cache_headers(7) == ((b"X-Accel-Expires", b"7"),)
    # What keeps X-Accel-Expires: 0 out of the rendered cache: NGINX honours it (not in
    # proxy_ignore_headers) and no proxy_cache_valid caches an answer regardless.
    text = nginxconf.render(cfg).text
    cached = text[text.index(f"location = {nginxconf.INTERNAL}/authz/0 "):]
    cached = cached[:cached.index("\n    }\n")]
    assert "proxy_cache twistedgw_verdicts;" in cached
    ignored = next(line for line in cached.splitlines() if "proxy_ignore_headers" in line)
    assert "X-Accel-Expires" not in ignored and "proxy_cache_valid" not in text


def test_uncacheable_apis(tmp_path: Path, pki: DevPki) -> None:
    from twistedgw.http import _verdicts as verdicts

    identity = _identity(pki, "partner-direct")
    ocsp = _lifetime_config(tmp_path, pki, 'revocation = "ocsp"\nocsp_cache_seconds = 5\n')
    assert verdicts.allow_lifetime(ocsp, ocsp.apis[0], identity) == 0
    assert verdicts.allow_lifetime(ocsp, ocsp.apis[2], identity) == 10  # no mTLS: no OCSP
    tiers = _lifetime_config(
        tmp_path, pki, api_extra='\ntiers = [{ alias = "partner-root", requests_per_minute = 5 }]')
    assert verdicts.allow_lifetime(tiers, tiers.apis[0], identity) == 0
    plugin = _lifetime_config(
        tmp_path, pki, api_extra='\nplugins = [{ name = "acme-tenant" }]')
    assert verdicts.allow_lifetime(plugin, plugin.apis[0], identity) == 0  # may read anything
    headers = _lifetime_config(
        tmp_path, pki, api_extra='\nplugins = [{ name = "request-headers" }]')
    assert verdicts.allow_lifetime(headers, headers.apis[0], identity) == 10  # decides nothing


def test_intermediates_must_be_cas(tmp_path: Path, pki: DevPki) -> None:
    from twistedgw.app import _runtime as runtime

    path = _config(tmp_path, pki, "")
    path.write_text(path.read_text().replace(
        str(pki.directory / "intermediates.pem"), str(pki.clients["partner-direct"][0])))
    with pytest.raises(configmod.ConfigError) as e:
        runtime.load(path)
    assert any(": mutual_ssl.intermediates: " in p and "not a CA" in p
               for p in e.value.problems), e.value.problems


def test_repeated_api_key_header(fronted: Fronted) -> None:
    """Direct mode refuses two apikey headers. Uncached, NGINX asks and refuses too; a
    cached allow for the first value covers the repeat on NGINX 1.22 (README says so)."""
    twice = (("apikey", "wrong-key"), ("apikey", KEY))
    assert fronted.direct(ORDERS + "?twice", None, twice).status == 401
    assert fronted.via_nginx(ORDERS + "?twice", None, twice).status == 401
    if fronted.variant == "lua":  # Lua sees every value: the repeat is never cached
        assert fronted.via_nginx(ORDERS, None, (("apikey", KEY),)).status == 200
        r = fronted.via_nginx(ORDERS, None, (("apikey", KEY), ("apikey", KEY)))
        assert (r.status, r.json()["code"]) == (401, "900901")


# ----------------------------------------------------------------- systemd layout

ACTIVATE = "/usr/bin/systemd-socket-activate"


@pytest.mark.skipif(not Path(ACTIVATE).exists(), reason="systemd-socket-activate not installed")
def test_authz_on_a_socket_activated_unix_socket(
    tmp_path: Path, pki: DevPki, echo: BackendProcess
) -> None:
    """conf/nginx-fronted/twistedgw-authz.socket's way: systemd owns the Unix socket and
    twistedgw takes it with endpoint = "systemd:domain=UNIX:index=0"."""
    from tests.harness import wait_port

    sock = tmp_path / "authz.sock"
    direct_port = free_port()
    text = fronted_toml(pki, echo, tmp_path, direct_port, free_port()).replace(
        f'endpoint = "unix:{sock}"', 'endpoint = "systemd:domain=UNIX:index=0"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [ACTIVATE, "-l", str(sock), "--fdname=authz", "-E", "PYTHONPATH",
             "-E", "PYTHONUNBUFFERED", sys.executable, "-m", "twistedgw", "run", "--config",
             str(config)], stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        import grp
        import os

        os.chown(sock, -1, grp.getgrnam("www-data").gr_gid)  # the unit's SocketGroup=
        import socket as socketmod

        # The first connection makes systemd-socket-activate start twistedgw.
        with socketmod.socket(socketmod.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(sock))
            s.sendall(b"GET /_twistedgw/authz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"X-Original-URI: /public/x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), (data, log.read_text())
        wait_port(direct_port, proc, log=log)
        assert b"X-Accel-Expires: 10" in data
        assert nginxconf.check(configmod.load(config)) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_unit_files_match_the_example() -> None:
    unit = (REPO / "conf" / "nginx-fronted" / "twistedgw-authz.socket").read_text()
    service = (REPO / "conf" / "nginx-fronted" / "twistedgw-authz.service").read_text()
    toml = (REPO / "conf" / "nginx-fronted" / "gateway.toml").read_text()
    assert "ListenStream=/run/twistedgw/authz.sock" in unit
    assert 'authz = "unix:/run/twistedgw/authz.sock"' in toml
    assert "SocketMode=0660" in unit and "Requires=twistedgw-authz.socket" in service
    for directive in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                      "ExecReload=/bin/kill -HUP $MAINPID"):
        assert directive in service, directive
    if Path("/usr/bin/systemd-analyze").exists():
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, text in (("twistedgw-authz.service", service),
                               ("twistedgw-authz.socket", unit)):
                p = Path(d) / name
                p.write_text(text.replace("/opt/twistedgw/bin/twistedgw",
                                          f"{sys.executable} -m twistedgw"))
                paths.append(str(p))
            verify = subprocess.run(["systemd-analyze", "verify", *paths],
                                    capture_output=True, text=True, timeout=60)
            assert verify.returncode == 0, verify.stdout + verify.stderr


# ----------------------------------------------------------------- every example config


def _dump(doc: dict[str, Any]) -> str:
    from tests.harness import toml_value

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
        elif is_tables(v):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("example_dir", sorted(
    p.parent.name for p in (REPO / "conf").glob("*/gateway.toml")))
def test_every_example_renders_and_passes_nginx_t(
    example_dir: str, tmp_path: Path, pki: DevPki
) -> None:
    """Each example's APIs, made NGINX-fronted (Unix socket, [nginx], header trust), render
    to an include that `nginx -t` accepts under a minimal nginx.conf."""
    import shutil
    import tomllib

    require("nginx")
    shutil.copytree(pki.directory, tmp_path / "pki")
    text = (REPO / "conf" / example_dir / "gateway.toml").read_text()
    doc = tomllib.loads(text.replace(EXAMPLE_PKI, str(tmp_path / "pki")))
    sock = tmp_path / "authz.sock"
    doc["listeners"] = [{"endpoint": f"unix:{sock}", "tls": False, "group": "www-data"}]
    doc["tls"] = {k: v for k, v in doc.get("tls", {}).items()
                  if k not in ("keystore", "keystore_password")}
    doc["tls"].setdefault("certificate", str(tmp_path / "pki" / "server.crt"))
    doc["tls"].setdefault("private_key", str(tmp_path / "pki" / "server.key"))
    doc["tls"].setdefault("truststore", str(tmp_path / "pki" / "truststore"))
    doc["mutual_ssl"] = {"certificate_header": "X-SSL-Client-Cert",
                         "header_encoding": "url-pem", "enable_client_validation": False,
                         "trusted_proxies": ["unix"]}
    doc.setdefault("authz", {})
    doc["nginx"] = {"listen": f"127.0.0.1:{free_port()}", "authz": f"unix:{sock}",
                    "cache_path": str(tmp_path / "cache")}
    config = tmp_path / "gateway.toml"
    config.write_text(_dump(doc))
    for variant in nginxconf.VARIANTS:  # both, each checked by nginx -t (Lua's with the module)
        render_site(config, tmp_path / f"site-{variant}.conf", variant)
        site = (tmp_path / f"site-{variant}.conf").read_text()
        for plan in nginxconf.plan(configmod.load(config), variant):
            assert plan.nginx_path == (f"twistedgw_backend_{plan.index}" in site), plan


def test_tiers_ride_nginxs_path_and_uncacheable_apis_are_asked_every_time(
    tmp_path: Path, pki: DevPki
) -> None:
    """#26 item 4: a tiered API rides NGINX's path: auth_request asks twistedgw every
    time (it counts), Lua caches the verdict and spends the bucket it names; an mTLS API
    with OCSP answers kept shorter than cache_seconds is never cached."""
    cfg = _lifetime_config(
        tmp_path, pki, api_extra='\ntiers = [{ alias = "partner-root", requests_per_minute = 5 }]')
    text = nginxconf.render(cfg).text
    pet = text[text.index("# Swagger Petstore:1.0.5: /petstore"):]
    pet = pet[:pet.index("\n    }\n")]
    assert "auth_request /_twistedgw_nginx/authz/0;" in pet
    authz0 = text[text.index(f"location = {nginxconf.INTERNAL}/authz/0 "):]
    authz0 = authz0[:authz0.index("\n    }\n")]
    assert "proxy_cache " not in authz0 and "Not cached: tiers count every request" in authz0
    lua = nginxconf.render(cfg, variant="lua").text
    pet = lua[lua.index("# Swagger Petstore:1.0.5: /petstore"):]
    assert 'tiers = {store = "dict"' in pet[:pet.index("\n    }\n")]
    assert 'asker = "answer,token-key,tiers"' in lua
    assert "lua_shared_dict twistedgw_tiers 10m;" in lua
    ocsp = _lifetime_config(tmp_path, pki, 'revocation = "ocsp"\nocsp_cache_seconds = 5\n')
    text = nginxconf.render(ocsp).text
    authz0 = text[text.index(f"location = {nginxconf.INTERNAL}/authz/0 "):]
    authz0 = authz0[:authz0.index("\n    }\n")]
    assert "proxy_cache " not in authz0
    assert "Not cached: OCSP answers are kept for less than cache_seconds" in authz0
    authz2 = text[text.index(f"location = {nginxconf.INTERNAL}/authz/2 "):]
    assert "proxy_cache twistedgw_verdicts;" in authz2[:authz2.index("\n    }\n")]


CONSUMERS = """
[[api_keys]]
name = "globex-app"
key_sha256 = "{globex}"

[[consumers]]
name = "acme"
api_keys = ["demo-app"]

[[consumers]]
name = "globex"
api_keys = ["globex-app"]

[[apis]]
name = "Acme only"
version = "1"
context = "/acme"
backend = "{backend}/acme"
api_key = "mandatory"
consumers = ["acme"]
"""


@pytest.mark.parametrize("variant", ["auth_request", "lua"])
def test_keys_of_another_consumer_never_ride_a_cached_allow(
    tmp_path: Path, pki: DevPki, echo: BackendProcess, variant: str
) -> None:
    """An API open only to acme: acme's key passes (X-Consumer-Name reaches the backend),
    globex's key is 403 900908 through NGINX as directly, before and after acme's allow
    is cached."""
    import hashlib

    extra = CONSUMERS.format(globex=hashlib.sha256(b"globex-key").hexdigest(),
                             backend=echo.url)
    f = start_fronted(tmp_path, pki, echo, variant=variant, extra=extra)
    try:
        for _ in range(2):  # the second time from the cache
            seen = echoed_headers(f.via_nginx("/acme/x", None, {"apikey": KEY}))
            assert seen["x-consumer-name"] == ["acme"]
            assert echoed_headers(f.direct("/acme/x", None, {"apikey": KEY}))[
                "x-consumer-name"] == ["acme"]
            for client in (None, "partner-direct"):
                direct = f.direct("/acme/x", client, {"apikey": "globex-key"})
                through = f.via_nginx("/acme/x", client, {"apikey": "globex-key"})
                assert (through.status, through.json()) == (direct.status, direct.json())
                assert (through.status, through.json()["code"]) == (403, "900908")
        forged = echoed_headers(f.via_nginx("/public/x", None, {"X-Consumer-Name": "acme"}))
        assert "x-consumer-name" not in forged
    finally:
        f.nginx.stop()
        f.gateway.stop()


def _unix_get(sock: Path, target: str, headers: dict[str, str]) -> bytes:
    import socket as socketmod

    head = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socketmod.socket(socketmod.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def _accepts(sock: Path) -> bool:
    import socket as socketmod

    with socketmod.socket(socketmod.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("trusted", [True, False])
def test_unix_socket_is_trusted_only_when_listed(
    tmp_path: Path, pki: DevPki, echo: BackendProcess, trusted: bool
) -> None:
    """trusted_proxies = ["unix"] is what makes the certificate header count on a Unix
    socket; with only an IP network listed, the header from a Unix peer is ignored."""
    from urllib.parse import quote

    direct_port = free_port()
    text = fronted_toml(pki, echo, tmp_path, direct_port, free_port())
    if not trusted:
        text = text.replace('trusted_proxies = ["unix"]', 'trusted_proxies = ["127.0.0.1/32"]')
    gw = start_gateway(tmp_path / "gw", text, direct_port)
    try:
        # The TCP listener may be up before the socket, and the socket's file exists
        # before it listens: wait until a connection is taken.
        deadline = time.monotonic() + 10
        while not _accepts(tmp_path / "authz.sock") and time.monotonic() < deadline:
            time.sleep(0.05)
        cert = quote(pki.clients["partner-direct"][0].read_text(), safe="")
        data = _unix_get(tmp_path / "authz.sock", "/_twistedgw/authz",
                         {"X-Original-URI": PET, "X-SSL-Client-Cert": cert})
        status = int(data.split(b" ", 2)[1])
        assert status == (200 if trusted else 401), data
    finally:
        gw.stop()


def test_cli_reports_problems_by_file_and_key(tmp_path: Path, pki: DevPki) -> None:
    path = _config(tmp_path, pki, "", nginx=False)
    result = subprocess.run(
        [sys.executable, "-m", "twistedgw", "nginx-config", "--config", str(path)],
        capture_output=True, text=True, env=env(), cwd=REPO,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"twistedgw: {path.resolve()}: nginx: the [nginx] section is "
                             "required for nginx-config\n")
    assert "Traceback" not in result.stderr


def _ask(port: int, pki: DevPki, method: str, path: str, client: str | None) -> tuple[int, Any]:
    from tests.lbsupport import connect, send

    conn = connect(port, pki=pki, client=client, tls=True)
    try:
        return outcome(send(conn, path, {"Content-Length": "0"} if method == "POST" else {},
                            method=method))
    finally:
        conn.close()


@pytest.mark.parametrize("variant", ["auth_request", "lua"])
def test_openapi_operations_keep_their_own_security_through_the_cache(
    tmp_path: Path, pki: DevPki, echo: BackendProcess, variant: str
) -> None:
    """An API from an OpenAPI definition whose GET /items is open and whose other operations
    need mTLS: a cached allow for the open GET never lets a POST without a certificate
    through (the key holds method and path), and undefined operations get 404/405 JSON."""
    definition = {
        "openapi": "3.0.1", "info": {"title": "Shop", "version": "1"},
        "x-wso2-basePath": "/shop",
        "x-wso2-production-endpoints": {"urls": [f"{echo.url}/shop"]},
        "x-wso2-mutual-ssl": "mandatory",
        "paths": {
            "/items": {
                "get": {"x-wso2-disable-security": True,
                        "responses": {"200": {"description": "open"}}},
                "post": {"responses": {"200": {"description": "mTLS"}}},
            },
            "/items/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {"responses": {"200": {"description": "mTLS"}}},
            },
        },
    }
    (tmp_path / "gw").mkdir(parents=True, exist_ok=True)
    (tmp_path / "gw" / "shop.json").write_text(json.dumps(definition))
    extra = '\n[[apis]]\nopenapi = "shop.json"\naliases = ["partner-root"]\n'
    f = start_fronted(tmp_path, pki, echo, variant=variant, extra=extra)
    try:
        cases = [("GET", "/shop/items", None), ("GET", "/shop/items", None),
                 ("POST", "/shop/items", None), ("POST", "/shop/items", "partner-direct"),
                 ("POST", "/shop/items", None), ("GET", "/shop/items/7", None),
                 ("GET", "/shop/items/7", "partner-direct"), ("GET", "/shop/items/7", None),
                 ("DELETE", "/shop/items", "partner-direct"), ("GET", "/shop/nothing", None),
                 ("GET", "/shop/items?x=1", "expired")]
        got = [(m, p, c, _ask(f.direct_port, pki, m, p, c), _ask(f.nginx.port, pki, m, p, c))
               for m, p, c in cases]
        assert [g for g in got if g[3] != g[4]] == []
        assert [g[4][0] for g in got] == [200, 200, 401, 200, 401, 401, 200, 401, 405, 404, 200]
        # Its operations differ in security: no method override reaches the backend, on
        # NGINX's fast path (the cached open GET) as in direct mode (issue 22 item 13).
        overrides = {"X-HTTP-Method-Override": "POST", "X-HTTP-Method": "POST",
                     "X-Method-Override": "POST"}
        for port in (f.nginx.port, f.direct_port):
            seen = echoed_headers(get(port, "/shop/items", overrides, pki=pki, tls=True))
            assert not set(seen) & {name.lower() for name in overrides}, (port, seen)
    finally:
        f.nginx.stop()
        f.gateway.stop()


def test_several_backends_go_to_twistedgw(tmp_path: Path, pki: DevPki) -> None:
    """twistedgw picks the backend (load_balance/failover) and its Host header."""
    path = _config(tmp_path, pki, "")
    path.write_text(path.read_text().replace(
        'backend = "http://127.0.0.1:8080/v2"',
        'backends = ["http://127.0.0.1:8080/v2", "http://127.0.0.2:8080/v2"]\n'
        'backend_mode = "failover"'))
    text = nginxconf.render(configmod.load(path)).text
    pet = text[text.index("# Swagger Petstore:1.0.5: /petstore"):]
    pet = pet[:pet.index("\n    }\n")]
    assert "proxy_pass http://twistedgw_authz$request_uri;" in pet and "auth_request" not in pet


def test_bearer_apis_ride_nginxs_path_uncached_with_auth_request(
    tmp_path: Path, pki: DevPki
) -> None:
    """#26 item 1: a bearer-token API rides NGINX's path; with auth_request its verdicts
    are never cached (NGINX's cache files hold keys in clear) and NGINX removes
    Authorization (forward_authorization = false), where the operation's pipeline does."""
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    path = _config(tmp_path, pki, f"""
[[jwt_issuers]]
name = "idp"
issuer = "https://idp.example"
jwks = "{tmp_path / 'jwks.json'}"
audiences = ["orders"]
""")
    path.write_text(path.read_text().replace(
        'api_key = "optional"                 # optional mTLS + optional key: either one passes',
        'api_key = "optional"\njwt = "optional"'))
    cfg = configmod.load(path)
    text = nginxconf.render(cfg).text
    orders = text[text.index("# Orders:v1: /orders/v1"):]
    orders = orders[:orders.index("\n    }\n")]
    assert "auth_request /_twistedgw_nginx/authz/1;" in orders
    assert 'proxy_set_header Authorization "";' in orders
    authz = text[text.index(f"location = {nginxconf.INTERNAL}/authz/1 "):]
    authz = authz[:authz.index("\n    }\n")]
    assert "proxy_cache " not in authz and "Not cached: bearer tokens" in authz
    lua = nginxconf.render(cfg, variant="lua").text
    orders = lua[lua.index("# Orders:v1: /orders/v1"):]
    assert "bearer = true," in orders[:orders.index("\n    }\n")]


def test_hosts_and_sni_entries_render_as_servers(tmp_path: Path, pki: DevPki) -> None:
    """#26 item 3: two APIs share /public by hosts: one location picks the API by $host
    (twistedgw's rule) and each API has its own internal location and authz location;
    each [[tls.sni]] entry is a server with its certificate, asking for a client
    certificate only where direct mode would, naming CAs only with advertise_ca_names."""
    crt, key = pki.authorities["server-root"].server(("partners.example.com",)).write(
        tmp_path, "partners")
    extra = (
        '\n[[apis]]\nname = "Partner public"\nversion = "1"\ncontext = "/public"\n'
        'backend = "http://127.0.0.1:8080/partner"\nhosts = ["partners.example.com"]\n'
        'mutual_ssl = "mandatory"\n'
    )
    path = _config(tmp_path, pki, extra)
    sni = (f'[[tls.sni]]\nhosts = ["partners.example.com"]\ncertificate = "{crt}"\n'
           f'private_key = "{key}"\nclient_certificate = "off"\n\n'
           f'[[tls.sni]]\nhosts = ["*.internal.example"]\ncertificate = "{crt}"\n'
           f'private_key = "{key}"\nclient_certificate = "request"\n'
           'advertise_ca_names = false\n\n')
    path.write_text(path.read_text().replace("[mutual_ssl]", sni + "[mutual_ssl]", 1))
    cfg = configmod.load(path)
    text = nginxconf.render(cfg, "/x/truststore.pem").text
    public = [i for i, api in enumerate(cfg.apis) if api.context == "/public"]
    assert len(public) == 2
    servers = text.split("\nserver {\n")[1:]
    assert len(servers) == 3
    for server in servers:
        assert "rewrite ^ /_twistedgw_nginx/api/$tgw_ctx_0 last;" in server
        for i in public:
            assert f"location = {nginxconf.INTERNAL}/api/{i} {{" in server
            assert f"location = {nginxconf.INTERNAL}/authz/{i} {{" in server
    # An exact host is hashed (no regex per request), and the context's location serves
    # the first API with hosts itself: only another host's request goes on.
    assert '    "partners.example.com" 3;' in text and "~(?:^partners" not in text
    assert 'if ($tgw_ctx_0 != "3") {' in text
    # The Host check hashes the names the config and its certificates give (with the
    # listen port) before its regex.
    bad_host = text[text.index("map $http_host $tgw_bad_host {"):]
    bad_host = bad_host[:bad_host.index("}")]
    assert '    "partners.example.com:' in bad_host and bad_host.index(
        '    "partners.example.com" 0;') < bad_host.index('"~*^')
    default, partners, internal = servers
    assert "default_server" in default and "ssl_verify_client optional_no_ca;" in default
    assert "ssl_client_certificate" in default
    assert "server_name partners.example.com;" in partners
    assert "ssl_verify_client off;" in partners and "set $tgw_client_cert \"\";" in partners
    assert r'server_name "~^[^.]+\\.internal\\.example$";' in internal
    assert "ssl_verify_client optional_no_ca;" in internal
    assert "ssl_client_certificate" not in internal  # advertise_ca_names = false
    assert "if ($tgw_bad_host)" in partners
    # Each server is its Host's entry: the 421 compares the SNI's entry with its own.
    for k, server in enumerate(servers):
        assert f'if ($tgw_sni_entry != "{k - 1}")' in server
    # The Lua variant checks the Host and SNI in each location instead: an API's Lua per
    # connection (v.access gets the server's entry), the other locations per request.
    lua = nginxconf.render(cfg, "/x/truststore.pem", variant="lua").text
    for k, server in enumerate(lua.split("\nserver {\n")[1:]):
        head = server[:server.index("    location ")]
        assert "$tgw_sni_entry" not in head and "$tgw_bad_host" not in head
        assert f'}}), "{k - 1}")' in server and "location @twistedgw_bad_host {" in server
        gateway = server[server.index(f"location = {nginxconf.INTERNAL}/gateway {{"):]
        gateway = gateway[:gateway.index("proxy_pass")]
        assert "if ($tgw_bad_host)" in gateway
        assert gateway.index("$tgw_bad_host") < gateway.index(f'$tgw_sni_entry != "{k - 1}"')
    assert '    "partners.example.com" 0;' in text  # an exact name: hashed, no regex
    assert r'"~^[^.]+\\.internal\\.example$" 1;' in text
    # A default server name that is an entry's host: the maps check both names.
    path.write_text(path.read_text().replace('server_name = "_"',
                                             'server_name = "partners.example.com"'))
    text = nginxconf.render(configmod.load(path), "/x/truststore.pem").text
    assert "if ($tgw_misdirected)" in text and "$tgw_host_entry" in text


def test_third_party_plugins_ride_nginxs_path_only_when_nginx_can_apply_them(
    tmp_path: Path, pki: DevPki
) -> None:
    """#26 item 5: a request transform that declares the headers it sets runs on the authz
    endpoint and NGINX sets what it set; a response transform, an undeclared request
    transform, or a plugin whose stages nginx-config cannot see keep the gateway path."""
    from types import SimpleNamespace

    from twistedgw.http import _verdicts as verdicts
    from twistedgw.pipeline import HeaderEdit, Named

    class Tenant:
        sets_headers = ("X-Tenant",)

        def transform_request(self, call: Any, edit: HeaderEdit) -> None:
            edit.set(b"X-Tenant", b"acme")
            edit.set(b"X-Other", b"not declared")

    class Broken(Tenant):
        def transform_request(self, call: Any, edit: HeaderEdit) -> None:
            raise RuntimeError("boom")

    cfg = _lifetime_config(tmp_path, pki, api_extra='\nplugins = [{ name = "acme-tenant" }]')
    pet = cfg.apis[0]

    def rendered(pipeline: Any) -> str:
        text = nginxconf.render(cfg, pipelines={pet: pipeline}).text
        block = text[text.index("# Swagger Petstore:1.0.5: /petstore"):]
        return block[:block.index("\n    }\n")]

    declared = SimpleNamespace(request_transforms=(Named("acme-tenant", Tenant()),),
                               response_transforms=())
    block = rendered(declared)
    assert "auth_request_set $tgw_ph_0 $upstream_http_x_twistedgw_set_x_tenant;" in block
    assert "proxy_set_header X-Tenant $tgw_ph_0;" in block
    undeclared = SimpleNamespace(request_transforms=(Named("acme-tenant", object()),),
                                 response_transforms=())
    assert "without declaring the headers it sets" in rendered(undeclared)
    responses = SimpleNamespace(request_transforms=(),
                                response_transforms=(Named("acme-tenant", object()),))
    assert "transforms responses: NGINX cannot apply it" in rendered(responses)
    assert "what it does is known only to twistedgw" in rendered(None)
    # The authz endpoint's side: only the declared header, and a failure is the 500.
    assert verdicts.declared_headers(declared, None) == [
        (b"x-twistedgw-set-x-tenant", b"acme")]
    broken = SimpleNamespace(request_transforms=(Named("acme-tenant", Broken()),))
    failed = verdicts.declared_headers(broken, None)
    assert not isinstance(failed, list) and (failed.status, failed.code) == (500, "500")


def test_http2_is_rendered_for_the_nginx_version(tmp_path: Path, pki: DevPki) -> None:
    """#26 item 6: [nginx] http2 = true is a listen parameter before NGINX 1.25.1 (and
    when the version is unknown), the http2 directive from 1.25.1 on."""
    path = _config(tmp_path, pki, "")
    path.write_text(path.read_text().replace(
        'cache_path = "/var/cache/nginx/twistedgw"',
        'cache_path = "/var/cache/nginx/twistedgw"\nhttp2 = true'))
    cfg = configmod.load(path)
    for version, listen, directive in (((1, 22, 1), "listen 443 ssl http2;", False),
                                       (None, "listen 443 ssl http2;", False),
                                       ((1, 25, 1), "listen 443 ssl;", True)):
        text = nginxconf.render(cfg, nginx_version=version).text
        assert listen in text and ("http2 on;" in text) == directive, version
    plain = nginxconf.render(configmod.load(_config(tmp_path, pki, ""))).text
    assert "ssl http2" not in plain and "http2 on;" not in plain
