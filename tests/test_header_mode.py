"""The client certificate in a load balancer's header, end to end against real gateways.

Three long-lived gateway processes (module scope, so the ~60 cases below cost one
start-up each) in front of the real echo backend:

``plain``   plain HTTP listener, ``enable_client_validation = false``, the header
            trusted only from ``trusted_proxies = 127.0.0.2/32`` (loopback is all of
            127/8, so one host plays both the load balancer and a direct client),
            ``load_balancer_aliases`` naming certificates that are never callers;
``tls``     TLS listener, ``enable_client_validation = true``: the header counts only
            on connections presenting the ``lb`` certificate (alias ``lb-ca``);
``strict``  both conditions, an explicit ``url-pem`` encoding, and
            ``forward_client_certificate_header = true``.

Every dev certificate's base64 holds ``+``, ``/`` and ``=`` (devpki guarantees it),
so the AWS ALB encodings below would break a decoder that reads ``+`` as a space.
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import headerenc as enc
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import GatewayProcess, Response, free_port, gateway_config, start_gateway, table
from tests.lbsupport import connect, echoed_headers, error, get, mutual_ssl_table, send
from twistedgw.identity import _reasons as reasons
from twistedgw.testing.devpki import DevPki

HEADER = "X-Client-Cert"
CHAIN = "Client-Cert-Chain"
AUTHZ = "/_twistedgw/authz"
PET = "/petstore/1.0.5/pet/1?x=1"


def apis(backend: BackendProcess) -> list[dict[str, Any]]:
    return [
        {
            "name": "Swagger Petstore",
            "version": "1.0.5",
            "context": "/petstore/1.0.5",
            "backend": f"{backend.url}/v2",
            "mutual_ssl": "mandatory",
            "aliases": ["partner-root", "pinned-client"],
        },
        {
            "name": "Other",
            "version": "v1",
            "context": "/other/v1",
            "backend": f"{backend.url}/other",
            "mutual_ssl": "mandatory",
            "aliases": ["other-root"],
        },
        # Any trusted certificate: the case where a load balancer's own certificate
        # would pass if it were ever taken for a caller's.
        {
            "name": "Any",
            "version": "v1",
            "context": "/any/v1",
            "backend": f"{backend.url}/any",
            "mutual_ssl": "mandatory",
        },
        {"name": "Open", "version": "v1", "context": "/open/v1", "backend": f"{backend.url}/open"},
    ]


@dataclass
class Gw:
    """A running gateway and how the load balancer and a direct client reach it."""

    process: GatewayProcess
    pki: DevPki
    tls: bool
    lb_source: str
    lb_client: str | None  # the certificate the load balancer presents (TLS only)

    def lb(self, path: str, headers: Any = ()) -> Response:
        return get(self.process.port, path, headers, pki=self.pki, client=self.lb_client,
                   tls=self.tls, source=self.lb_source)

    def direct(self, path: str, headers: Any = (), client: str | None = None,
               source: str = "127.0.0.1") -> Response:
        return get(self.process.port, path, headers, pki=self.pki, client=client,
                   tls=self.tls, source=source)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


def _start(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo: BackendProcess,
           name: str, *, tls: bool, mutual_ssl: dict[str, Any]) -> GatewayProcess:
    port = free_port()
    text = gateway_config(
        pki,
        apis(echo),
        port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": tls}],
        tls=None if tls else {"certificate": None, "private_key": None},
        extra=mutual_ssl_table(certificate_header=HEADER, chain_header=CHAIN, **mutual_ssl)
        + table("authz", {"path": AUTHZ}),
    )
    return start_gateway(tmp_path_factory.mktemp(name), text, port)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
          echo: BackendProcess) -> Iterator[Gw]:
    process = _start(tmp_path_factory, pki, echo, "plain", tls=False, mutual_ssl={
        "enable_client_validation": False, "trusted_proxies": ["127.0.0.2/32"],
        # Not needed for trust here, but names certificates that never identify a caller.
        "load_balancer_aliases": ["lb-ca"]})
    yield Gw(process, pki, tls=False, lb_source="127.0.0.2", lb_client=None)
    process.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
        echo: BackendProcess) -> Iterator[Gw]:
    process = _start(tmp_path_factory, pki, echo, "tls", tls=True, mutual_ssl={
        "enable_client_validation": True, "load_balancer_aliases": ["lb-ca"]})
    yield Gw(process, pki, tls=True, lb_source="127.0.0.1", lb_client="lb")
    process.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
           echo: BackendProcess) -> Iterator[Gw]:
    process = _start(tmp_path_factory, pki, echo, "strict", tls=True, mutual_ssl={
        "header_encoding": "url-pem",
        "enable_client_validation": True,
        "load_balancer_aliases": ["lb-ca"],
        "trusted_proxies": ["127.0.0.2/32"],
        "forward_client_certificate_header": True,
    })
    yield Gw(process, pki, tls=True, lb_source="127.0.0.2", lb_client="lb")
    process.stop()


@pytest.fixture(params=["plain", "tls"])
def gw(request: pytest.FixtureRequest) -> Gw:
    """Each load-balancer case once over a plain listener and once over TLS."""
    value: Gw = request.getfixturevalue(request.param)
    return value


def certs(pki: DevPki, name: str) -> tuple[x509.Certificate, ...]:
    return pki.issued[name].full_chain


def leaf(pki: DevPki, name: str) -> x509.Certificate:
    return pki.issued[name].cert


# --------------------------------------------------------------------------- every format

Headers = dict[str, str]
FORMATS: dict[str, Callable[[DevPki], tuple[Headers, str]]] = {
    # NGINX $ssl_client_escaped_cert (leaf + intermediate, as a chain-sending proxy would)
    "url-pem": lambda p: ({HEADER: enc.url_pem(certs(p, "partner-app"))}, "partner-app"),
    "url-pem-leaf-only": lambda p: (
        {HEADER: enc.url_pem([leaf(p, "partner-direct")])}, "partner-direct"),
    # AWS ALB: '+', '/', '=' raw; and AWS's own documented example with %3D
    "aws-alb-raw": lambda p: ({HEADER: enc.aws_alb(certs(p, "partner-app"))}, "partner-app"),
    "aws-alb-escaped-equals": lambda p: (
        {HEADER: enc.aws_alb(certs(p, "partner-app"), raw="+/")}, "partner-app"),
    "aws-alb-rsa": lambda p: ({HEADER: enc.aws_alb(certs(p, "partner-rsa"))}, "partner-rsa"),
    # NGINX $ssl_client_cert: PEM folded onto one line
    "pem-tab-folded": lambda p: (
        {HEADER: enc.pem_folded(certs(p, "partner-app"), sep="\t")}, "partner-app"),
    "pem-space-folded": lambda p: (
        {HEADER: enc.pem_folded(certs(p, "partner-app"), sep=" ")}, "partner-app"),
    # HAProxy %[ssl_c_der,base64], with %{+Q} quotes, Cloudflare
    "base64-der": lambda p: ({HEADER: enc.base64_der(leaf(p, "partner-direct"))}, "partner-direct"),
    "base64-der-quoted": lambda p: (
        {HEADER: enc.base64_der(leaf(p, "partner-direct"), quoted=True)}, "partner-direct"),
    # RFC 9440, the intermediate in Client-Cert-Chain
    "rfc9440-with-chain": lambda p: (
        {HEADER: enc.rfc9440(leaf(p, "partner-app")),
         CHAIN: enc.rfc9440_chain(certs(p, "partner-app")[1:])},
        "partner-app",
    ),
    # Envoy XFCC: Cert + Chain; and two hops, where only the nearest (last) counts
    "xfcc": lambda p: (
        {HEADER: enc.xfcc(leaf(p, "partner-app"), certs(p, "partner-app"))}, "partner-app"),
    "xfcc-two-hops": lambda p: (
        {HEADER: enc.xfcc(leaf(p, "partner-app"), certs(p, "partner-app"),
                          previous=[enc.xfcc_element(leaf(p, "other-app"))])},
        "partner-app",
    ),
    # Traefik: comma-separated base64 DER, and URL-escaped as before v2.9.2
    "traefik": lambda p: ({HEADER: enc.traefik(certs(p, "partner-app"))}, "partner-app"),
    "traefik-escaped": lambda p: (
        {HEADER: enc.traefik(certs(p, "partner-app"), escaped=True)}, "partner-app"),
    # A pinned self-signed client certificate
    "pinned": lambda p: ({HEADER: enc.url_pem([leaf(p, "pinned")])}, "pinned-app"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_from_a_load_balancer(gw: Gw, pki: DevPki, fmt: str) -> None:
    headers, cn = FORMATS[fmt](pki)
    seen = echoed_headers(gw.lb(PET, headers))
    # Stripped before forwarding (forward_client_certificate_header = false).
    assert HEADER.lower() not in seen and CHAIN.lower() not in seen
    verdict = gw.lb(AUTHZ, {**headers, "X-Original-URI": PET})
    assert verdict.status == 200, verdict.body
    assert f"CN={cn}," in (verdict.header("x-client-cert-subject") or "")


# --------------------------------------------------------------------------- bad certificates


def test_header_certificates_are_checked_as_strictly_as_the_handshake(gw: Gw, pki: DevPki) -> None:
    cases = {
        "expired": (enc.url_pem(certs(pki, "expired")), PET, reasons.EXPIRED),
        "not-yet-valid": (enc.url_pem(certs(pki, "not-yet-valid")), PET, reasons.NOT_YET_VALID),
        "untrusted": (enc.aws_alb(certs(pki, "intruder")), PET, reasons.UNTRUSTED),
        "serverAuth-only": (enc.url_pem(certs(pki, "server-only")), PET, reasons.WRONG_PURPOSE),
        "wrong-alias": (enc.url_pem(certs(pki, "other-app")), PET, reasons.NOT_FOR_API),
        # Leaf only, issued by an intermediate that is neither sent nor trusted.
        "missing-intermediate": (enc.base64_der(leaf(pki, "partner-app")), PET,
                                 reasons.UNTRUSTED),
        # The load balancer's own certificate, even for an API that takes any trusted one.
        "lb-certificate": (enc.url_pem([leaf(pki, "lb")]), "/any/v1/x", reasons.LOAD_BALANCER),
    }
    for name, (value, path, reason) in cases.items():
        assert error(gw.lb(path, {HEADER: value})) == (401, "900901", reason), name
        # The auth-only endpoint judges the same way.
        refused = gw.lb(AUTHZ, {HEADER: value, "X-Original-URI": path})
        assert error(refused) == (401, "900901", reason), name


def test_the_right_alias_passes_where_the_wrong_one_fails(gw: Gw, pki: DevPki) -> None:
    value = enc.url_pem(certs(pki, "other-app"))
    assert echoed_headers(gw.lb("/other/v1/x", {HEADER: value}))
    assert echoed_headers(gw.lb("/any/v1/x", {HEADER: value}))


@pytest.mark.parametrize(
    "value, words",
    [
        ("<not a certificate>", "not a recognised certificate header format"),
        ("not a certificate", "base64-der value has an unexpected character"),
        ("-----BEGIN%20CERTIFICATE-----%0AMIIB+/=%0A", "certificate header could not be decoded"),
        ('"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"', "not a valid X.509 certificate"),
        (":AAAA", "certificate header could not be decoded"),
    ],
)
def test_undecodable_values_are_401_with_a_reason(gw: Gw, value: str, words: str) -> None:
    status, code, description = error(gw.lb(PET, {HEADER: value}))
    assert (status, code) == (401, "900901")
    assert description.startswith("certificate header could not be decoded: ")
    assert words in description
    assert value not in description


def test_truncated_alb_chain(gw: Gw, pki: DevPki) -> None:
    value = enc.aws_alb(certs(pki, "partner-app"))
    status, code, description = error(gw.lb(PET, {HEADER: value[: len(value) // 2]}))
    assert (status, code) == (401, "900901")
    assert "truncated" in description


def test_no_header_from_the_load_balancer_is_missing_credentials(gw: Gw) -> None:
    # The load balancer's own certificate (TLS gateway) never stands in for a caller.
    assert error(gw.lb(PET)) == (401, "900902", reasons.NONE)


def test_two_certificate_headers_are_refused(gw: Gw, pki: DevPki) -> None:
    one = enc.url_pem([leaf(pki, "partner-direct")])
    two = enc.url_pem([leaf(pki, "other-app")])
    status, code, description = error(gw.lb(PET, [(HEADER, one), (HEADER, two)]))
    assert (status, code) == (401, "900901") and "more than one" in description


def test_header_mode_leaves_open_apis_open(gw: Gw) -> None:
    seen = echoed_headers(gw.lb("/open/v1/x", {HEADER: "garbage"}))
    assert HEADER.lower() not in seen


# --------------------------------------------------------------------------- untrusted sources


def test_plain_direct_client_header_is_ignored_logged_and_not_forwarded(
    plain: Gw, pki: DevPki
) -> None:
    value = enc.url_pem(certs(pki, "partner-app"))
    # Not from trusted_proxies: no certificate at all on a plain connection.
    assert error(plain.direct(PET, {HEADER: value})) == (401, "900902", reasons.NONE)
    assert error(plain.direct(PET, {HEADER: value}, source="127.0.0.3"))[1] == "900902"
    seen = echoed_headers(plain.direct("/open/v1/x", {HEADER: value, CHAIN: ":AAAA:"}))
    assert HEADER.lower() not in seen and CHAIN.lower() not in seen
    log = plain.process.output()
    assert f"Ignored the {HEADER} header from 127.0.0.1: not a trusted load balancer" in log
    assert "127.0.0.3" in log
    # Never the value: not even a fragment of the certificate's base64.
    assert enc.b64der(leaf(pki, "partner-app"))[40:80] not in log
    assert "BEGIN%20CERTIFICATE" not in log


def test_a_flood_of_forged_headers_is_logged_once_per_address(plain: Gw, pki: DevPki) -> None:
    """A direct client cannot fill the log by repeating the header: one line a minute."""
    value = enc.url_pem(certs(pki, "partner-app"))
    source = "127.0.0.9"  # no other test here sends from it
    conn = connect(plain.process.port, source=source)
    try:
        for _ in range(45):  # keep-alive...
            assert send(conn, PET, {HEADER: value}).status == 401
    finally:
        conn.close()
    for _ in range(5):  # ...and new connections
        assert error(plain.direct(PET, {HEADER: value}, source=source))[1] == "900902"
    warnings = [
        line for line in plain.process.output().splitlines()
        if f"Ignored the {HEADER} header from {source}:" in line
    ]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("not a trusted load balancer")


def test_partner_with_trusted_certificate_cannot_claim_another_identity(
    tls: Gw, pki: DevPki
) -> None:
    """WSO2 trusts the header on any connection with a trusted certificate; we must not."""
    claim = {HEADER: enc.url_pem(certs(pki, "other-app"))}
    # partner-direct is trusted (partner-root) but is not a load balancer: its own
    # certificate is judged, so the API that only other-root may call refuses it...
    assert error(tls.direct("/other/v1/x", claim, client="partner-direct")) == (
        401, "900901", reasons.NOT_FOR_API)
    # ...and where it may call, it is itself, and the forged header is not passed on.
    seen = echoed_headers(tls.direct(PET, claim, client="partner-direct"))
    assert HEADER.lower() not in seen
    verdict = tls.direct(AUTHZ, {**claim, "X-Original-URI": PET}, client="partner-direct")
    assert "CN=partner-direct," in (verdict.header("x-client-cert-subject") or "")
    # A client with a pinned, trusted certificate cannot either.
    assert error(tls.direct("/other/v1/x", claim, client="pinned"))[2] == reasons.NOT_FOR_API


def test_direct_clients_without_or_with_bad_certificates(tls: Gw, pki: DevPki) -> None:
    claim = {HEADER: enc.url_pem([leaf(pki, "partner-direct")])}
    assert error(tls.direct(PET, claim)) == (401, "900902", reasons.NONE)
    assert error(tls.direct(PET, claim, client="intruder")) == (401, "900901", reasons.UNTRUSTED)
    assert error(tls.direct(PET, claim, client="expired")) == (401, "900901", reasons.EXPIRED)
    assert "Ignored the X-Client-Cert header from 127.0.0.1" in tls.process.output()


def test_direct_and_load_balanced_callers_share_one_gateway(tls: Gw, pki: DevPki) -> None:
    assert echoed_headers(tls.direct(PET, client="partner-app"))
    assert echoed_headers(tls.lb(PET, {HEADER: enc.url_pem([leaf(pki, "partner-direct")])}))


def test_load_balancer_certificate_from_outside_trusted_proxies(strict: Gw, pki: DevPki) -> None:
    value = enc.url_pem([leaf(pki, "partner-direct")])
    # From 127.0.0.1 (not trusted_proxies) the lb certificate makes a direct client,
    # and a load balancer's certificate is never a caller's identity.
    assert error(strict.direct("/any/v1/x", {HEADER: value}, client="lb")) == (
        401, "900901", reasons.LOAD_BALANCER)
    # From 127.0.0.2 without the lb certificate: also not a load balancer.
    assert error(strict.direct(PET, {HEADER: value}, client=None, source="127.0.0.2"))[1] == (
        "900902")
    assert error(strict.direct(PET, {HEADER: value}, client="other-app", source="127.0.0.2"))[
        2] == reasons.NOT_FOR_API
    # Both conditions met: the header counts.
    assert echoed_headers(strict.lb(PET, {HEADER: value}))


def test_forward_client_certificate_header(strict: Gw, pki: DevPki) -> None:
    value = enc.url_pem([leaf(pki, "partner-direct")])
    seen = echoed_headers(strict.lb(PET, {HEADER: value}))
    assert seen[HEADER.lower()] == [value]
    # A direct client's copy is never forwarded, whatever the setting.
    seen = echoed_headers(strict.direct(PET, {HEADER: value}, client="partner-direct"))
    assert HEADER.lower() not in seen


def test_explicit_encoding_accepts_only_its_own_format(strict: Gw, pki: DevPki) -> None:
    alb = enc.aws_alb([leaf(pki, "partner-direct")])
    status, code, description = error(strict.lb(PET, {HEADER: alb}))
    assert (status, code) == (401, "900901")
    assert "aws-alb" in description
    b64 = enc.base64_der(leaf(pki, "partner-direct"))
    assert error(strict.lb(PET, {HEADER: b64}))[1] == "900901"


# --------------------------------------------------------------------------- authz endpoint


def test_authz_allows_with_identity_headers(tls: Gw, pki: DevPki) -> None:
    cert = leaf(pki, "partner-app")
    r = tls.lb(AUTHZ, {HEADER: enc.aws_alb(certs(pki, "partner-app")),
                       "X-Original-URI": "/petstore/1.0.5/pet/1?status=sold",
                       "X-Original-Method": "DELETE"})
    assert r.status == 200 and r.body == b""
    assert r.header("x-twistedgw-api") == "Swagger Petstore:1.0.5"
    assert r.header("x-client-cert-subject") == cert.subject.rfc4514_string()
    assert r.header("x-client-cert-sha256") == hashlib.sha256(enc.der(cert)).hexdigest()
    assert r.header("x-twistedgw-principal") == cert.subject.rfc4514_string()


def test_authz_refusals_are_the_gateway_json(tls: Gw, pki: DevPki) -> None:
    other = {HEADER: enc.url_pem(certs(pki, "other-app"))}
    assert error(tls.lb(AUTHZ, {**other, "X-Original-URI": PET})) == (
        401, "900901", reasons.NOT_FOR_API)
    assert error(tls.lb(AUTHZ, {"X-Original-URI": PET})) == (401, "900902", reasons.NONE)
    # The API named by X-Original-URI decides: the same certificate passes elsewhere.
    assert tls.lb(AUTHZ, {**other, "X-Original-URI": "/other/v1/x"}).status == 200
    assert tls.lb(AUTHZ, {"X-Original-URI": "/open/v1/x"}).status == 200
    # auth_request understands only 2xx/401/403: an unknown or unsafe path is a 403.
    status, code, description = error(tls.lb(AUTHZ, {**other, "X-Original-URI": "/nowhere"}))
    assert (status, code) == (403, "900908") and "/nowhere" in description
    status, code, _ = error(tls.lb(AUTHZ, {**other, "X-Original-URI": "/other/v1/a%2Fb"}))
    assert (status, code) == (403, "900908")
    assert error(tls.lb(AUTHZ, other))[:2] == (400, "400")


def test_authz_for_direct_clients(tls: Gw) -> None:
    r = tls.direct(AUTHZ, {"X-Original-URI": PET}, client="partner-direct")
    assert r.status == 200
    assert "CN=partner-direct," in (r.header("x-client-cert-subject") or "")
    assert error(tls.direct(AUTHZ, {"X-Original-URI": "/other/v1/x"}, client="partner-direct"))[
        :2] == (401, "900901")


# --------------------------------------------------------------------------- property


# Everything a header value can carry on the wire except CR and LF (which would end it).
_WIRE = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
_B64ISH = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=%-:,;\"\\ \t"
)


def _mutate(data: st.DataObject, value: str) -> str:
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        if not value:
            break
        i = data.draw(st.integers(0, len(value) - 1), label="at")
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "cut", "double"]))
        junk = data.draw(st.text(_WIRE, max_size=8), label="junk")
        if op == "delete":
            value = value[:i] + value[i + data.draw(st.integers(1, 64)):]
        elif op == "insert":
            value = value[:i] + junk + value[i:]
        elif op == "replace":
            value = value[:i] + junk + value[i + len(junk):]
        elif op == "cut":
            value = value[:i]
        else:
            value = value[:i] + value[i:] + value[i:]
    return value


class KeepAlive:
    """One persistent connection to the gateway, reopened whenever it is closed."""

    def __init__(self, gw: Gw) -> None:
        self.gw = gw
        self.conn: http.client.HTTPConnection | None = None

    def send(self, path: str, headers: list[tuple[str, str]]) -> Response:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = connect(self.gw.process.port, source=self.gw.lb_source)
            try:
                r = send(self.conn, path, headers)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if r.header("connection") == "close":
                self.conn.close()
                self.conn = None
            return r
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def keepalive(plain: Gw) -> Iterator[KeepAlive]:
    k = KeepAlive(plain)
    yield k
    if k.conn is not None:
        k.conn.close()


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_no_header_value_makes_the_gateway_answer_5xx(
    keepalive: KeepAlive, pki: DevPki, data: st.DataObject
) -> None:
    """Against one long-lived real gateway process, over keep-alive, from a trusted source.

    A real process rather than the resource in-process, so that twisted.web's own
    header parsing, the decoders, the verifier and the policy are exercised exactly
    as deployed, and so that a crash would show as a 5xx or a dropped connection.
    One process and one connection keep each example at a few milliseconds.
    """
    chain = certs(pki, data.draw(st.sampled_from(["partner-app", "expired", "intruder", "lb"])))
    encoding = data.draw(st.sampled_from(enc.CONCRETE_ENCODINGS))
    value = data.draw(
        st.one_of(
            st.text(_WIRE, max_size=300),
            st.text(_B64ISH, max_size=4000),
            st.just(_mutate(data, enc.encode(chain, encoding))),
        ),
        label="value",
    )
    headers = [(HEADER, value)]
    if data.draw(st.booleans(), label="chain header"):
        chain_value = enc.rfc9440_chain(chain[1:]) or ":AAAA:"
        headers.append((CHAIN, data.draw(st.one_of(st.text(_WIRE, max_size=200),
                                                   st.just(_mutate(data, chain_value))))))
    if data.draw(st.booleans(), label="twice"):
        headers.append((HEADER, value))
    path = data.draw(st.sampled_from([PET, AUTHZ, "/any/v1/x", "/open/v1/x"]))
    if path == AUTHZ:
        headers.append(("X-Original-URI", data.draw(st.sampled_from([PET, "/other/v1/y"]))))
    r = keepalive.send(path, headers)
    assert r.status < 500, (r.status, r.body[:300])
    event(f"status {r.status}")
    if r.status == 401:
        assert r.json()["code"] in ("900901", "900902")
