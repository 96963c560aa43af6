"""JWT access tokens and RFC 8705 certificate binding, through real gateway processes.

Two long-lived gateways (module scope) in front of the real echo backend:

``direct``  a TLS listener; APIs with a JWKS file (``idp``), a file rewritten and
            reloaded for key rotation (``rot``), a JWKS URL served by a local HTTP
            server (``remote``, refetch on unknown kid), one that goes down and
            serves a refused document (``flaky``, refreshed every second), one
            whose URL was down from the start (``dead``), and an open API;
``header``  a plain listener taking the client certificate from a load balancer's
            header (trusted from 127.0.0.2 only), for binding with every encoding.

Tokens are minted here with keys generated per run; only public JWKS are written.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import docpages, jwtkit
from tests import headerenc as enc
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import GatewayProcess, Response, free_port, gateway_config, start_gateway, table
from tests.lbsupport import echoed_headers, error, get, mutual_ssl_table
from tests.opskit import scrape, value, wait_until
from twistedgw.pipeline import _jwks as jwks
from twistedgw.testing.devpki import DevPki

AUTHZ = "/_twistedgw/authz"
HEADER = "X-Client-Cert"
INVALID = 'Bearer error="invalid_token"'

IDP = jwtkit.ec("idp-1")
IDP_RSA = jwtkit.rsa("idp-rsa")
ROT_OLD = jwtkit.ec("rot-old")
ROT_NEW = jwtkit.ec("rot-new")
REMOTE_1 = jwtkit.ec("remote-1")
REMOTE_2 = jwtkit.ec("remote-2")
FLAKY = jwtkit.ec("flaky-1")
DEAD = jwtkit.ec("dead-1")

ISSUERS = {
    "idp": "https://idp.example",
    "rot": "https://rot.example",
    "remote": "https://remote.example",
    "flaky": "https://flaky.example",
    "dead": "https://dead.example",
    "silent": "https://silent.example",
}


def claims(issuer: str = "idp", **overrides: Any) -> dict[str, Any]:
    return jwtkit.claims(**{"iss": ISSUERS[issuer], **overrides})


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@dataclass
class Direct:
    process: GatewayProcess
    pki: DevPki
    admin: int
    rot_jwks: Path
    remote: jwtkit.JwksServer
    flaky: jwtkit.JwksServer

    def get(self, path: str, headers: Any = (), client: str | None = None) -> Response:
        return get(self.process.port, path, headers, pki=self.pki, client=client, tls=True)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


def _api(echo: BackendProcess, name: str, **keys: Any) -> dict[str, Any]:
    out = {"name": name, "version": "v1", "context": f"/{name}", "backend": f"{echo.url}/{name}"}
    out.update(keys)
    return out


def _issuer(name: str, **keys: Any) -> str:
    return table("jwt_issuers", {"name": name, "issuer": ISSUERS[name], "audiences": ["orders"],
                                 **keys}, array=True)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
           echo: BackendProcess) -> Iterator[Direct]:
    tmp = tmp_path_factory.mktemp("jwt-direct")
    idp = jwtkit.write_jwks(tmp / "idp.json", IDP, IDP_RSA)
    rot = jwtkit.write_jwks(tmp / "rot.json", ROT_OLD)
    dead_port = free_port()  # nothing listens there
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    with silent, jwtkit.jwks_server(REMOTE_1) as remote, jwtkit.jwks_server(FLAKY) as flaky:
        port, admin = free_port(), free_port()
        jwt = {"jwt": "mandatory", "mutual_ssl": "optional"}
        apis = [
            _api(echo, "orders", jwt_issuers=["idp"], **jwt),
            _api(echo, "bound", jwt_issuers=["idp"], certificate_bound="required", **jwt),
            _api(echo, "unbound", jwt_issuers=["idp"], certificate_bound="off", **jwt),
            _api(echo, "fwd", jwt_issuers=["idp"], forward_authorization=True, **jwt),
            _api(echo, "rot", jwt_issuers=["rot"], **jwt),
            _api(echo, "remote", jwt_issuers=["remote"], **jwt),
            _api(echo, "flaky", jwt_issuers=["flaky"], **jwt),
            _api(echo, "dead", jwt_issuers=["dead"], **jwt),
            _api(echo, "silent", jwt_issuers=["silent"], **jwt),
            _api(echo, "either", jwt="optional", mutual_ssl="optional", aliases=["partner-root"]),
            _api(echo, "open"),
        ]
        extra = (
            _issuer("idp", jwks=str(idp), algorithms=["ES256", "RS256"], consumer_claim="azp")
            + _issuer("rot", jwks=str(rot))
            + _issuer("remote", jwks_url=remote.url)
            + _issuer("flaky", jwks_url=flaky.url, jwks_refresh_seconds=1)
            + _issuer("dead", jwks_url=f"http://127.0.0.1:{dead_port}/jwks.json")
            + _issuer("silent",
                      jwks_url=f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json")
            + table("authz", {"path": AUTHZ})
            + table("admin", {"host": "127.0.0.1", "port": admin})
        )
        text = gateway_config(pki, apis, port=port, extra=extra)
        process = start_gateway(tmp / "gw", text, port, wait_for=(admin,))
        try:
            yield Direct(process, pki, admin, rot, remote, flaky)
        finally:
            process.stop()


def refused(r: Response, code: str, description: str, challenge: str = INVALID) -> None:
    assert error(r) == (401, code, description), r.body
    assert r.header_all("WWW-Authenticate") == [challenge]


# --------------------------------------------------------------------------- passing


def test_valid_token_is_forwarded_without_authorization(direct: Direct) -> None:
    r = direct.get("/orders/x", bearer(jwtkit.token(IDP, claims())))
    seen = echoed_headers(r)
    assert "authorization" not in seen
    rsa = direct.get("/orders/x", bearer(jwtkit.token(IDP_RSA, claims())))
    assert rsa.status == 200


def test_forward_authorization_true_keeps_it(direct: Direct) -> None:
    tok = jwtkit.token(IDP, claims())
    assert echoed_headers(direct.get("/fwd/x", bearer(tok)))["authorization"] == [f"Bearer {tok}"]


def test_authorization_is_kept_on_apis_without_jwt(direct: Direct) -> None:
    seen = echoed_headers(direct.get("/open/x", {"Authorization": "Basic YTpi"}))
    assert seen["authorization"] == ["Basic YTpi"]


def test_optional_jwt_or_certificate(direct: Direct) -> None:
    """The WSO2 rule: either optional scheme passing is enough."""
    assert direct.get("/either/x", client="partner-app").status == 200
    assert direct.get("/either/x", bearer(jwtkit.token(IDP, claims()))).status == 200
    r = direct.get("/either/x")
    assert error(r)[:2] == (401, "900902")
    assert "Bearer" in r.header_all("WWW-Authenticate")


# --------------------------------------------------------------------------- every error


ERRORS: list[tuple[str, Any, str]] = [
    ("expired", lambda: jwtkit.token(IDP, claims(exp=1_000_000)), "token has expired"),
    ("bad-signature", lambda: jwtkit.token(jwtkit.ec("idp-1"), claims()),
     "token signature is not valid"),
    ("unknown-kid", lambda: jwtkit.token(jwtkit.ec("nobody"), claims()),
     "token signature is not valid"),
    ("issuer", lambda: jwtkit.token(IDP, claims(iss="https://evil.example")),
     "token issuer is not accepted"),
    ("issuer-of-another-api", lambda: jwtkit.token(ROT_OLD, claims("rot")),
     "token issuer is not accepted"),
    ("audience", lambda: jwtkit.token(IDP, claims(aud=["billing"])),
     "token audience is not accepted"),
    ("algorithm-not-configured", lambda: jwtkit.token(jwtkit.ec("idp-1", "P-384"), claims()),
     "token algorithm is not allowed"),
    ("algorithm-key-mismatch", lambda: jwtkit.token(jwtkit.rsa("idp-1"), claims()),
     "token algorithm is not allowed"),
    ("alg-none", lambda: jwtkit.unsigned(claims(), kid="idp-1") + "c2ln",
     "token algorithm is not allowed"),
    ("unsigned", lambda: jwtkit.unsigned(claims()), "token is not a valid JWT"),
    ("no-exp", lambda: jwtkit.token(IDP, claims(exp=None)), "token is not a valid JWT"),
    ("crit", lambda: jwtkit.raw_token(IDP, {"alg": "ES256", "kid": "idp-1", "crit": ["x"],
                                            "x": 1}, claims()), "token is not a valid JWT"),
    ("nested", lambda: jwtkit.token(IDP, claims(), cty="JWT"), "token is not a valid JWT"),
    ("garbage", lambda: "not-a-token", "token is not a valid JWT"),
    ("truncated", lambda: jwtkit.token(IDP, claims())[:40], "token is not a valid JWT"),
    ("wrong-base64", lambda: "eyJ+.eyJ/.abc=", "token is not a valid JWT"),
    ("jwe", lambda: "a.b.c.d.e", "token is not a valid JWT"),
    ("huge", lambda: "a" * 9000 + ".b.c", "token is not a valid JWT"),
    ("not-yet-valid", lambda: jwtkit.token(IDP, claims(nbf=2**33)), "token is not yet valid"),
]


@pytest.mark.parametrize(("name", "make", "reason"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(direct: Direct, name: str, make: Any, reason: str) -> None:
    refused(direct.get("/orders/x", bearer(make())), "900901", reason)


def test_no_token(direct: Direct) -> None:
    refused(direct.get("/orders/x"), "900902", "no access token was presented", "Bearer")
    refused(direct.get("/orders/x", {"Authorization": "Basic YTpi"}), "900902",
            "no access token was presented", "Bearer")


def test_authz_endpoint_applies_the_same_rules(direct: Direct) -> None:
    ok = direct.get(AUTHZ, {"X-Original-URI": "/orders/x", **bearer(jwtkit.token(IDP, claims()))})
    assert ok.status == 200
    assert ok.header("x-twistedgw-principal") == "jwt:idp:alice"
    bad = direct.get(AUTHZ, {"X-Original-URI": "/orders/x",
                             **bearer(jwtkit.token(IDP, claims(aud="billing")))})
    refused(bad, "900901", "token audience is not accepted")
    cert = x509.load_pem_x509_certificate(direct.pki.clients["partner-app"][0].read_bytes())
    tok = jwtkit.token(IDP, jwtkit.bound(cert, iss=ISSUERS["idp"]))
    other = direct.get(AUTHZ, {"X-Original-URI": "/orders/x", **bearer(tok)}, client="partner-rsa")
    refused(other, "900901", "token is not bound to the presented certificate")
    assert direct.get(AUTHZ, {"X-Original-URI": "/orders/x", **bearer(tok)},
                      client="partner-app").status == 200


# --------------------------------------------------------------------------- binding (handshake)


def _cert(pki: DevPki, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.clients[name][0].read_bytes())


def test_binding_with_the_handshake_certificate(direct: Direct) -> None:
    tok = jwtkit.token(IDP, jwtkit.bound(_cert(direct.pki, "partner-app"), iss=ISSUERS["idp"]))
    assert direct.get("/orders/x", bearer(tok), client="partner-app").status == 200
    refused(direct.get("/orders/x", bearer(tok), client="partner-rsa"), "900901",
            "token is not bound to the presented certificate")
    refused(direct.get("/orders/x", bearer(tok)), "900901",
            "token is bound to a certificate but none was presented")
    # An untrusted certificate with the right thumbprint is not proof of possession.
    intruder = jwtkit.token(IDP, jwtkit.bound(_cert(direct.pki, "intruder"), iss=ISSUERS["idp"]))
    r = direct.get("/orders/x", bearer(intruder), client="intruder")
    assert error(r)[:2] == (401, "900901")
    assert error(r)[2].startswith("token is bound to a certificate but the presented one was "
                                  "refused: ")
    # "off" ignores the claim; "required" wants it.
    assert direct.get("/unbound/x", bearer(tok), client="partner-rsa").status == 200
    assert direct.get("/bound/x", bearer(tok), client="partner-app").status == 200
    refused(direct.get("/bound/x", bearer(jwtkit.token(IDP, claims())), client="partner-app"),
            "900901", "token is not bound to the presented certificate")


_TOKEN_SHAPES = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda head, body, sig: b".".join((head, body, sig)),
              st.sampled_from([b"eyJhbGciOiJub25lIn0", b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImlkcC0xIn0",
                               b"e30", b"", b"!!"]),
              st.binary(max_size=200).map(jwtkit.b64url).map(str.encode),
              st.binary(max_size=100).map(jwtkit.b64url).map(str.encode)),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(token=_TOKEN_SHAPES, api=st.sampled_from(["/orders/x", "/remote/x", "/dead/x",
                                                  AUTHZ]))
def test_arbitrary_tokens_never_get_a_5xx(direct: Direct, token: bytes, api: str) -> None:
    value = b"Bearer " + token.replace(b"\r", b"").replace(b"\n", b"")
    headers = [("Authorization", value.decode("latin-1"))]
    if api == AUTHZ:
        headers.append(("X-Original-URI", "/orders/x"))
    r = direct.get(api, headers)
    assert r.status < 500, (r.status, r.body[:200])
    if r.status == 401:
        assert error(r)[1] in ("900901", "900902")


# --------------------------------------------------------------------------- keys


def test_key_rotation_via_kid_and_reload(direct: Direct) -> None:
    old, new = jwtkit.token(ROT_OLD, claims("rot")), jwtkit.token(ROT_NEW, claims("rot"))
    assert direct.get("/rot/x", bearer(old)).status == 200
    refused(direct.get("/rot/x", bearer(new)), "900901", "token signature is not valid")
    reloads = direct.process.output().count("Reloaded ")
    jwtkit.write_jwks(direct.rot_jwks, ROT_OLD, ROT_NEW)  # publish the new key beside the old
    direct.process.signal(signal.SIGHUP)
    wait_until(lambda: direct.process.output().count("Reloaded ") > reloads, what="reload")
    assert direct.get("/rot/x", bearer(new)).status == 200
    assert direct.get("/rot/x", bearer(old)).status == 200
    jwtkit.write_jwks(direct.rot_jwks, ROT_NEW)  # retire the old one
    direct.process.signal(signal.SIGHUP)
    wait_until(lambda: direct.process.output().count("Reloaded ") > reloads + 1, what="reload")
    refused(direct.get("/rot/x", bearer(old)), "900901", "token signature is not valid")
    assert direct.get("/rot/x", bearer(new)).status == 200


def test_bad_jwks_file_on_reload_is_refused_and_old_keys_stay(direct: Direct) -> None:
    good = direct.rot_jwks.read_text()
    refusals = direct.process.output().count("Reload refused")
    direct.rot_jwks.write_text(json.dumps({"keys": [ROT_NEW.key.as_dict(private=True)]}))
    try:
        direct.process.signal(signal.SIGHUP)
        wait_until(lambda: direct.process.output().count("Reload refused") > refusals,
                   what="the refusal")
        assert "jwt_issuers[1].jwks:" in direct.process.output()
        assert "holds a private part" in direct.process.output()
    finally:
        direct.rot_jwks.write_text(good)
    assert direct.get("/rot/x", bearer(jwtkit.token(ROT_NEW, claims("rot")))).status == 200


def test_jwks_url_refetched_on_unknown_kid_once_per_30s(direct: Direct) -> None:
    remote = direct.remote
    assert direct.get("/remote/x", bearer(jwtkit.token(REMOTE_1, claims("remote")))).status == 200
    hits = remote.hits
    remote.set(REMOTE_1, REMOTE_2)  # the IdP rotates
    assert direct.get("/remote/x", bearer(jwtkit.token(REMOTE_2, claims("remote")))).status == 200
    assert remote.hits == hits + 1
    # Another unknown kid at once: no second fetch, refused.
    r = direct.get("/remote/x", bearer(jwtkit.token(jwtkit.ec("remote-3"), claims("remote"))))
    refused(r, "900901", "token signature is not valid")
    assert remote.hits == hits + 1


def test_jwks_url_outage_keeps_the_last_good_keys(direct: Direct) -> None:
    flaky, tok = direct.flaky, jwtkit.token(FLAKY, claims("flaky"))
    url = flaky.url
    wait_until(lambda: value(scrape(direct.admin), "twistedgw_jwks_keys", url=url) == 1,
               what="the first fetch")
    assert direct.get("/flaky/x", bearer(tok)).status == 200
    flaky.down = True
    try:
        wait_until(lambda: value(scrape(direct.admin), "twistedgw_jwks_stale", url=url) == 1,
                   what="the failed fetch in the metrics")
        assert "keeping the last good key set (1 keys)" in direct.process.output()
        assert direct.get("/flaky/x", bearer(tok)).status == 200
        # Back up but serving a refused document (a private key): still the old keys.
        flaky.down = False
        flaky.document = json.dumps({"keys": [FLAKY.key.as_dict(private=True)]}).encode()
        wait_until(lambda: "refused the key set" in direct.process.output(),
                   what="the refused document in the log")
        assert direct.get("/flaky/x", bearer(tok)).status == 200
        # An endless document is cut off at 1 MiB.
        flaky.document = b'{"keys": [' + b" " * (2 << 20) + b"]}"
        wait_until(lambda: "the response is larger than 1048576 bytes" in direct.process.output(),
                   what="the size bound in the log")
        assert direct.get("/flaky/x", bearer(tok)).status == 200
        metrics = scrape(direct.admin)
        assert value(metrics, "twistedgw_jwks_fetches_total", url=url, result="failure") >= 3
    finally:
        flaky.down = False
        flaky.set(FLAKY)
    wait_until(lambda: value(scrape(direct.admin), "twistedgw_jwks_stale", url=url) == 0,
               what="recovery")


def test_jwks_url_down_from_the_start(direct: Direct) -> None:
    """Other APIs serve; this issuer's tokens get 401 (never a 5xx), and the log says why."""
    assert direct.get("/open/x").status == 200
    r = direct.get("/dead/x", bearer(jwtkit.token(DEAD, claims("dead"))))
    refused(r, "900901", "token signature is not valid")
    assert "no key set yet" in direct.process.output()


def test_jwks_url_that_never_answers_holds_a_request_at_most_the_wait_limit(
    direct: Direct,
) -> None:
    started = time.monotonic()
    r = direct.get("/silent/x", bearer(jwtkit.token(jwtkit.ec("s-1"), claims("silent"))))
    took = time.monotonic() - started
    refused(r, "900901", "token signature is not valid")
    assert took < jwks.WAIT_LIMIT + 2.0, took
    wait_until(lambda: "no complete answer within 5 s" in direct.process.output(),
               timeout=jwks.FETCH_TIMEOUT + 5, what="the timeout in the log")
    assert direct.get("/open/x").status == 200


# --------------------------------------------------------------------------- binding (header)


@pytest.fixture(scope="module")
def header_gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
              echo: BackendProcess) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("jwt-header")
    idp = jwtkit.write_jwks(tmp / "idp.json", IDP)
    port = free_port()
    text = gateway_config(
        pki,
        [_api(echo, "orders", jwt="mandatory", mutual_ssl="optional", jwt_issuers=["idp"])],
        port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
        tls={"certificate": None, "private_key": None},
        extra=mutual_ssl_table(certificate_header=HEADER, chain_header="Client-Cert-Chain",
                               enable_client_validation=False, trusted_proxies=["127.0.0.2/32"])
        + _issuer("idp", jwks=str(idp)),
    )
    process = start_gateway(tmp / "gw", text, port)
    yield process
    process.stop()


@pytest.mark.parametrize("encoding", enc.CONCRETE_ENCODINGS)
def test_binding_with_each_load_balancer_encoding(header_gw: GatewayProcess, pki: DevPki,
                                                  encoding: str) -> None:
    # Leaf-only encodings need a certificate issued by the root itself.
    name = "partner-direct" if encoding in enc.LEAF_ONLY else "partner-app"
    chain = pki.issued[name].full_chain
    tok = jwtkit.token(IDP, jwtkit.bound(chain[0], iss=ISSUERS["idp"]))

    def headers(certs: tuple[x509.Certificate, ...]) -> dict[str, str]:
        out = {HEADER: enc.encode(certs, encoding), **bearer(tok)}
        chain_value = enc.chain_value_for(certs, encoding)
        if chain_value is not None:
            out["Client-Cert-Chain"] = chain_value
        return out

    ok = get(header_gw.port, "/orders/x", headers(chain), source="127.0.0.2")
    assert ok.status == 200, ok.body
    other_name = "other-app" if encoding in enc.LEAF_ONLY else "partner-rsa"
    other = get(header_gw.port, "/orders/x", headers(pki.issued[other_name].full_chain),
                source="127.0.0.2")
    refused(other, "900901", "token is not bound to the presented certificate")
    # The same header from a caller that is not the load balancer is ignored.
    forged = get(header_gw.port, "/orders/x", headers(chain), source="127.0.0.1")
    refused(forged, "900901", "token is bound to a certificate but none was presented")


# --------------------------------------------------------------------------- https JWKS URL


def test_https_jwks_url_is_verified_with_backend_tls(
    tmp_path: Path, pki: DevPki, echo: BackendProcess
) -> None:
    """The JWKS URL's certificate is checked against [backend_tls] trusted_certificate: the
    backend CA signs the JWKS server, so one issuer works; a second server whose
    certificate that CA did not sign gets nothing, and its tokens 401."""
    good_key, bad_key = jwtkit.ec("https-1"), jwtkit.ec("https-2")
    wrong = (pki.server_cert, pki.server_key)  # a "localhost" certificate of another CA
    with jwtkit.jwks_server(good_key, tls=(pki.backend_cert, pki.backend_key)) as good, \
            jwtkit.jwks_server(bad_key, tls=wrong) as bad:
        port = free_port()
        extra = (
            table("jwt_issuers", {"name": "good", "issuer": "https://good.example",
                                  "audiences": ["orders"], "jwks_url": good.url}, array=True)
            + table("jwt_issuers", {"name": "bad", "issuer": "https://bad.example",
                                    "audiences": ["orders"], "jwks_url": bad.url}, array=True)
            + table("backend_tls", {"trusted_certificate": str(pki.backend_ca)})
        )
        apis = [_api(echo, "good", jwt="mandatory", jwt_issuers=["good"]),
                _api(echo, "bad", jwt="mandatory", jwt_issuers=["bad"])]
        gw = start_gateway(tmp_path / "gw", gateway_config(pki, apis, port=port, extra=extra),
                           port)
        try:
            wait_until(lambda: good.hits >= 1, what="the first fetch")
            tok = jwtkit.token(good_key, jwtkit.claims(iss="https://good.example"))
            assert get(port, "/good/x", bearer(tok), pki=pki, tls=True).status == 200
            wait_until(lambda: "could not be fetched" in gw.output(), what="the refused TLS")
            assert bad.hits == 0  # the handshake failed: no request was ever made
            r = get(port, "/bad/x", bearer(jwtkit.token(bad_key, jwtkit.claims(
                iss="https://bad.example"))), pki=pki, tls=True)
            refused(r, "900901", "token signature is not valid")
        finally:
            gw.stop()


# ----------------------------------------------------------- the how-to guide (docs/)


def test_docs_worked_example_as_written(tmp_path: Path, pki: DevPki,
                                        echo: BackendProcess) -> None:
    """docs/how-to/jwt.md: its key, JWKS, thumbprint and token commands, its TOML, its curl."""
    import os
    import shutil
    import subprocess

    # A stock Debian shell's PATH (its python3 has no joserfc), not the test run's: the
    # guide's commands must name the Python they need.
    path = "/usr/local/bin:/usr/bin:/bin"

    def sh(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                              env={**os.environ, "PATH": path}, timeout=60, capture_output=True,
                              text=True, check=False)

    section = docpages.page("how-to/jwt.md")
    toml_block = docpages.code_blocks(section, "toml")[0]
    make_key, make_token = docpages.code_blocks(section, "sh")[:2]
    (tmp_path / "pki").mkdir()
    # The guide runs its Python with the venv's interpreter, `.venv/bin/python` (issue 23
    # item 11: Debian's python3 has no joserfc); here, the one running the tests.
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    venv_python.chmod(0o755)
    crt, key = pki.clients["partner-app"]
    shutil.copy(crt, tmp_path / "client.crt")
    shutil.copy(key, tmp_path / "client.key")
    shutil.copy(pki.server_ca, tmp_path / "server-ca.crt")
    done = sh(make_key)
    assert done.returncode == 0, done.stderr
    assert "\"d\"" not in (tmp_path / "pki" / "idp-jwks.json").read_text()
    port = free_port()
    text = gateway_config(pki, [], port=port) + toml_block.replace(
        "http://127.0.0.1:8080/orders", f"{echo.url}/orders")
    (tmp_path / "gateway.toml").write_text(text)
    gw = start_gateway(tmp_path, text, port)
    try:
        script = make_token.replace("https://localhost:9095/", f"https://localhost:{port}/")
        script = script.replace("curl ", "curl -sS --fail-with-body -o out.json ")
        done = sh(script)
        assert done.returncode == 0, (done.stdout, done.stderr, gw.output()[-2000:])
        seen = json.loads((tmp_path / "out.json").read_text())
        assert seen["path"].startswith("/orders/status")
        # The same token from another certificate: refused, as the guide says.
        token = (tmp_path / "token").read_text().strip()
        r = get(port, "/orders/status", bearer(token), pki=pki, client="partner-rsa", tls=True)
        refused(r, "900901", "token is not bound to the presented certificate")
        r = get(port, "/orders/status", bearer(token), pki=pki, tls=True)
        refused(r, "900901", "token is bound to a certificate but none was presented")
    finally:
        gw.stop()


# --------------------------------------------------------------------------- consumers


def test_consumer_claim_names_the_consumer(tmp_path: Path, pki: DevPki,
                                           echo: BackendProcess) -> None:
    """``consumer_claim = "azp"``: the claim names a configured consumer, which the API's
    ``consumers`` ACL, the forwarded X-Consumer-Name and the access log then use."""
    idp = jwtkit.write_jwks(tmp_path / "idp.json", IDP)
    port = free_port()
    extra = (
        _issuer("idp", jwks=str(idp), consumer_claim="azp")
        + table("consumers", {"name": "acme"}, array=True)
        + table("consumers", {"name": "globex"}, array=True)
    )
    apis = [_api(echo, "orders", jwt="mandatory", consumers=["acme"]),
            _api(echo, "any", jwt="mandatory")]
    gw = start_gateway(tmp_path / "gw", gateway_config(pki, apis, port=port, extra=extra), port)
    try:
        def call(path: str, azp: str | None, forged: str | None = None) -> Response:
            headers = bearer(jwtkit.token(IDP, claims(azp=azp)))
            if forged is not None:
                headers["X-Consumer-Name"] = forged
            return get(port, path, headers, pki=pki, tls=True)

        seen = echoed_headers(call("/orders/x", "acme", forged="globex"))
        assert seen["x-consumer-name"] == ["acme"]
        assert error(call("/orders/x", "globex")) == (
            403, "900908", "consumer 'globex' is not allowed on this API")
        assert error(call("/orders/x", "nobody")) == (
            403, "900908", "the caller is not a known consumer")
        assert error(call("/orders/x", None)) == (
            403, "900908", "the caller is not a known consumer")
        # Without an ACL the consumer is still named; an unknown name is not forwarded.
        assert echoed_headers(call("/any/x", "globex"))["x-consumer-name"] == ["globex"]
        assert "x-consumer-name" not in echoed_headers(call("/any/x", "nobody", forged="acme"))
    finally:
        gw.stop()


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_bearer_security_is_the_jwt_scheme(tmp_path: Path, pki: DevPki,
                                                   echo: BackendProcess) -> None:
    """An operation whose definition asks for bearer (or OAuth2) security runs the jwt scheme
    with the [[jwt_issuers]]; the API's other operations keep their own schemes."""
    from tests.test_openapi_gateway import accounts_31

    (tmp_path / "apis").mkdir()
    (tmp_path / "apis" / "accounts.yaml").write_text(accounts_31(echo.url, bearer=True))
    idp = jwtkit.write_jwks(tmp_path / "idp.json", IDP)
    port = free_port()
    text = gateway_config(pki, [{"openapi": "apis/accounts.yaml", "aliases": ["partner-root"]}],
                          port=port, api_keys={"app": "k"}, extra=_issuer("idp", jwks=str(idp)))
    gw = start_gateway(tmp_path, text, port)
    try:
        tok = jwtkit.token(IDP, claims())
        assert get(port, "/accounts/tokens", bearer(tok), pki=pki, tls=True).status == 200
        refused(get(port, "/accounts/tokens", pki=pki, client="partner-app", tls=True),
                "900902", "no access token was presented", "Bearer")
        expired = jwtkit.token(IDP, claims(exp=1_000_000))
        refused(get(port, "/accounts/tokens", bearer(expired), pki=pki, tls=True),
                "900901", "token has expired")
        # The API's own mTLS elsewhere: a token is not a certificate.
        assert get(port, "/accounts/balance", bearer(tok), pki=pki, tls=True).status == 401
        assert get(port, "/accounts/balance", pki=pki, client="partner-app",
                   tls=True).status == 200
    finally:
        gw.stop()
