"""Per-API mutual TLS end to end: mode x certificate x API key, over real TLS.

One gateway process serves one API per (mutual_ssl, api_key) combination, all
forwarding to the real echo backend; every cell of the matrix is one real TLS
connection presenting one dev-PKI certificate. The expected verdict comes from
the README's rules, written out here independently of ``pipeline/_run.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import context, echoed, echoed_headers, get, running_gateway, tls_connect
from tests.harness import GatewayProcess, Response, send
from twistedgw.testing import devpki
from twistedgw.testing.devpki import DevPki

MODES = ("mandatory", "optional", "disabled")
ALIASES = ["partner-root", "pinned-client"]
KEY = "k3y-for-app-one"

NONE_MSG = "no client certificate was presented"
EXPIRED = "certificate has expired"
NOT_YET_VALID = "certificate is not yet valid"
UNTRUSTED = "certificate is not issued by a trusted CA"
WRONG_PURPOSE = "certificate is not allowed for client authentication"
NOT_FOR_API = "certificate is not associated with this API"
KEY_INVALID = "API key is not valid"
KEY_MISSING = "no API key was presented"


@dataclass(frozen=True)
class Verdict:
    """What one scheme concludes: passed, presented, and the words when it did not pass."""

    passed: bool
    presented: bool
    reason: str | None = None


# The certificate cast (twistedgw/devpki.py), judged for an API whose aliases are ALIASES.
CERTIFICATES: dict[str | None, Verdict] = {
    "partner-app": Verdict(True, True),  # via the partner intermediate
    "partner-direct": Verdict(True, True),  # issued by the partner root itself
    "partner-rsa": Verdict(True, True),
    "pinned": Verdict(True, True),  # self-signed, pinned by itself
    "other-app": Verdict(False, True, NOT_FOR_API),  # trusted, but another alias
    "expired": Verdict(False, True, EXPIRED),
    "not-yet-valid": Verdict(False, True, NOT_YET_VALID),
    "intruder": Verdict(False, True, UNTRUSTED),
    "server-only": Verdict(False, True, WRONG_PURPOSE),
    None: Verdict(False, False, NONE_MSG),
}
KEYS: dict[str, Verdict] = {
    "valid": Verdict(True, True),
    "wrong": Verdict(False, True, KEY_INVALID),
    "absent": Verdict(False, False, KEY_MISSING),
}


@dataclass(frozen=True)
class Expected:
    status: int
    code: str | None = None
    message: str | None = None
    reasons: tuple[str, ...] = ()  # words the description must contain
    absent: tuple[str, ...] = ()  # words it must not contain


def expected(mtls: str, api_key: str, cert: str | None, key: str) -> Expected:
    """The README's combine rule, independently of the product code."""
    schemes = [(mtls, CERTIFICATES[cert]), (api_key, KEYS[key])]
    active = [(m, v) for m, v in schemes if m != "disabled"]
    if not active:
        return Expected(200)
    mandatory = [v for m, v in active if m == "mandatory"]
    optional = [v for m, v in active if m == "optional"]
    others = tuple(v.reason for _m, v in schemes if v.reason)
    if mandatory:
        failing = [v for v in mandatory if not v.passed]
        if not failing:
            return Expected(200)
        # The first failing mandatory scheme (mutual_ssl before api_key) is reported.
        first = failing[0]
        assert first.reason is not None
        if first.presented:
            code, message = "900901", "Invalid Credentials"
        else:
            code, message = "900902", "Missing Credentials"
        return Expected(
            401, code, message, (first.reason,), tuple(r for r in others if r != first.reason)
        )
    if any(v.passed for v in optional):
        return Expected(200)
    presented = [v for v in optional if v.presented]
    if presented:
        words = tuple(v.reason for v in presented if v.reason)
        return Expected(
            401, "900901", "Invalid Credentials", words, tuple(r for r in others if r not in words)
        )
    words = tuple(v.reason for v in optional if v.reason)
    return Expected(401, "900902", "Missing Credentials", words)


def context_path(mtls: str, api_key: str) -> str:
    return f"/m-{mtls}/k-{api_key}"


def matrix_apis(backend_url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"matrix-{mtls}-{api_key}",
            "version": "1.0",
            "context": context_path(mtls, api_key),
            "backend": f"{backend_url}/be/{mtls}/{api_key}",
            "mutual_ssl": mtls,
            "aliases": ALIASES,
            "api_key": api_key,
        }
        for mtls in MODES
        for api_key in MODES
    ]


EXTRA_APIS = [
    # mTLS with no aliases: any certificate that verifies passes.
    {"name": "any-trusted", "context": "/any", "mutual_ssl": "mandatory"},
    {
        "name": "only-other",
        "context": "/only-other",
        "mutual_ssl": "mandatory",
        "aliases": ["other-root"],
    },
    {
        "name": "only-pinned",
        "context": "/only-pinned",
        "mutual_ssl": "mandatory",
        "aliases": ["pinned-client"],
    },
    {"name": "open", "context": "/open"},
]


@pytest.fixture(scope="module")
def matrix_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    apis = matrix_apis(backend.url) + [dict(a, backend=backend.url) for a in EXTRA_APIS]
    with running_gateway(
        tmp_path_factory.mktemp("matrix-gw"), pki, apis, api_keys={"app-one": KEY}
    ) as gw:
        yield gw


def key_headers(key: str) -> dict[str, str]:
    return {"valid": {"apikey": KEY}, "wrong": {"apikey": "not-" + KEY}, "absent": {}}[key]


def check(response: Response, want: Expected, backend_path: str | None = None) -> None:
    assert response.status == want.status, response.body
    if want.status == 200:
        echo = response.json()
        if backend_path is not None:
            assert echo["path"] == backend_path
        names = [n.lower() for n, _v in echoed_headers(response)]
        assert "apikey" not in names, "the apikey header reached the backend"
        return
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert body["code"] == want.code
    assert body["message"] == want.message
    for words in want.reasons:
        assert words in body["description"]
    for words in want.absent:
        assert words not in body["description"]


@pytest.mark.parametrize("key", list(KEYS))
@pytest.mark.parametrize("cert", list(CERTIFICATES), ids=lambda c: c or "no-cert")
@pytest.mark.parametrize("api_key", MODES, ids=lambda m: f"key-{m}")
@pytest.mark.parametrize("mtls", MODES, ids=lambda m: f"mtls-{m}")
def test_matrix(
    matrix_gateway: GatewayProcess,
    pki: DevPki,
    mtls: str,
    api_key: str,
    cert: str | None,
    key: str,
) -> None:
    response = get(
        matrix_gateway.port,
        f"{context_path(mtls, api_key)}/res/1?q=a%20b&r=2",
        pki,
        cert,
        headers=key_headers(key),
    )
    check(response, expected(mtls, api_key, cert, key), f"/be/{mtls}/{api_key}/res/1?q=a%20b&r=2")


def test_oracle_matches_readme_examples() -> None:
    """The oracle above says what the README says, in the README's own examples."""
    # mutual_ssl = "optional" alone behaves as mandatory
    assert expected("optional", "disabled", None, "absent").status == 401
    assert expected("optional", "disabled", "partner-app", "absent").status == 200
    # optional mTLS with a mandatory API key needs only the key
    assert expected("optional", "mandatory", None, "valid").status == 200
    assert expected("optional", "mandatory", "partner-app", "absent").status == 401
    # mandatory mTLS with an optional key needs only the certificate
    assert expected("mandatory", "optional", "partner-app", "absent").status == 200
    assert expected("mandatory", "optional", None, "valid").status == 401
    # an API with no scheme is open
    assert expected("disabled", "disabled", "expired", "wrong").status == 200


@pytest.mark.parametrize(
    ("path", "cert", "status", "words"),
    [
        ("/any", "partner-app", 200, None),
        ("/any", "other-app", 200, None),
        ("/any", "pinned", 200, None),
        ("/any", "lb", 200, None),
        ("/any", "intruder", 401, UNTRUSTED),
        ("/any", "expired", 401, EXPIRED),
        ("/any", None, 401, NONE_MSG),
        ("/only-other", "other-app", 200, None),
        ("/only-other", "partner-app", 401, NOT_FOR_API),
        ("/only-other", "pinned", 401, NOT_FOR_API),
        ("/only-pinned", "pinned", 200, None),
        ("/only-pinned", "partner-direct", 401, NOT_FOR_API),
        ("/only-pinned", "other-app", 401, NOT_FOR_API),
    ],
)
def test_aliases(
    matrix_gateway: GatewayProcess,
    pki: DevPki,
    path: str,
    cert: str | None,
    status: int,
    words: str | None,
) -> None:
    response = get(matrix_gateway.port, f"{path}/x", pki, cert)
    assert response.status == status, response.body
    if words is not None:
        assert words in response.json()["description"]


def test_two_api_keys_are_refused(matrix_gateway: GatewayProcess, pki: DevPki) -> None:
    response = get(
        matrix_gateway.port,
        f"{context_path('disabled', 'mandatory')}/x",
        pki,
        headers=[("apikey", KEY), ("apikey", KEY)],
    )
    assert response.status == 401
    assert response.json()["code"] == "900901"


def test_verdict_is_per_api_on_one_connection(matrix_gateway: GatewayProcess, pki: DevPki) -> None:
    """One connection, one certificate, different APIs: each API judges it by its own rules."""
    conn = tls_connect(matrix_gateway.port, context(pki, "other-app"))
    try:
        assert send(conn, "/only-other/a").status == 200
        refused = send(conn, f"{context_path('mandatory', 'disabled')}/a")
        assert refused.status == 401
        assert refused.json()["description"] == NOT_FOR_API
        assert send(conn, "/any/a").status == 200
    finally:
        conn.close()


# --- a client-sent certificate header never authenticates -------------------------------


def _pem(pki: DevPki, name: str) -> str:
    return devpki.cert_pem(*pki.issued[name].full_chain).decode()


@pytest.mark.parametrize(
    "header",
    [
        "X-SSL-CERT",
        "X-SSL-Client-Cert",
        "X-Client-Cert",
        "SSL_CLIENT_CERT",
        "X-Amzn-Mtls-Clientcert",
        "X-Forwarded-Client-Cert",
        "X-Forwarded-Tls-Client-Cert",
        "Client-Cert",
    ],
)
def test_certificate_header_from_client_never_authenticates(
    matrix_gateway: GatewayProcess, pki: DevPki, header: str
) -> None:
    value = quote(_pem(pki, "partner-app"), safe="")
    path = f"{context_path('mandatory', 'disabled')}/x"
    without_cert = get(matrix_gateway.port, path, pki, None, headers={header: value})
    assert without_cert.status == 401
    assert without_cert.json()["code"] == "900902"
    assert without_cert.json()["description"] == NONE_MSG
    # Nor does it replace a bad certificate the client did present.
    with_expired = get(matrix_gateway.port, path, pki, "expired", headers={header: value})
    assert with_expired.status == 401
    assert with_expired.json()["description"] == EXPIRED
    # And a valid handshake certificate is not overridden by a header naming another one.
    other = quote(_pem(pki, "other-app"), safe="")
    ok = get(matrix_gateway.port, "/only-other/x", pki, "partner-app", headers={header: other})
    assert ok.status == 401
    assert ok.json()["description"] == NOT_FOR_API


# --- PKCS#12 keystore and truststore (alias = friendly name) -------------------------------


@pytest.fixture(scope="module")
def p12_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    tls = {
        "certificate": None,
        "private_key": None,
        "keystore": str(pki.keystore_p12),
        "keystore_password": DevPki.P12_PASSWORD,
        "truststore": str(pki.truststore_p12),
        "truststore_password": DevPki.P12_PASSWORD,
    }
    apis = [
        {
            "name": "p12",
            "context": "/p12",
            "backend": f"{backend.url}/p12",
            "mutual_ssl": "mandatory",
            "aliases": ALIASES,
        },
        {
            "name": "p12-other",
            "context": "/p12-other",
            "backend": backend.url,
            "mutual_ssl": "mandatory",
            "aliases": ["other-root"],
        },
    ]
    with running_gateway(tmp_path_factory.mktemp("p12-gw"), pki, apis, tls=tls) as gw:
        yield gw


def test_pem_stores_are_what_the_matrix_used(matrix_gateway: GatewayProcess, pki: DevPki) -> None:
    text = matrix_gateway.config.read_text()
    assert str(pki.truststore_dir) in text and str(pki.server_cert) in text
    assert "p12" not in text


@pytest.mark.parametrize("cert", list(CERTIFICATES), ids=lambda c: c or "no-cert")
def test_pkcs12_stores(p12_gateway: GatewayProcess, pki: DevPki, cert: str | None) -> None:
    want = expected("mandatory", "disabled", cert, "absent")
    check(get(p12_gateway.port, "/p12/a?b=c", pki, cert), want, "/p12/a?b=c")


@pytest.mark.parametrize(
    ("cert", "status"), [("other-app", 200), ("partner-app", 401), ("pinned", 401)]
)
def test_pkcs12_friendly_name_is_the_alias(
    p12_gateway: GatewayProcess, pki: DevPki, cert: str, status: int
) -> None:
    response = get(p12_gateway.port, "/p12-other/a", pki, cert)
    assert response.status == status, response.body
    if status == 401:
        assert response.json()["description"] == NOT_FOR_API


def test_pkcs12_keystore_serves_its_certificate(p12_gateway: GatewayProcess, pki: DevPki) -> None:
    conn = tls_connect(p12_gateway.port, context(pki, "partner-app"))
    try:
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    from cryptography import x509

    assert x509.load_der_x509_certificate(der) == pki.issued["server"].cert


# --- TLS sessions and protocol versions ---------------------------------------------------


def _resume(port: int, ctx: ssl.SSLContext, path: str) -> tuple[Response, Response, bool]:
    """A request on a full handshake, then one on a connection resuming its session."""
    first = tls_connect(port, ctx)
    try:
        r1 = send(first, path)  # reading a response also reads the TLS 1.3 session ticket
        session = first.sock.session
    finally:
        first.close()
    assert session is not None
    second = tls_connect(port, ctx, session=session)
    try:
        r2 = send(second, path)
        reused = second.sock.session_reused
    finally:
        second.close()
    return r1, r2, reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize(
    ("cert", "status", "words"),
    [
        ("partner-app", 200, None),
        ("pinned", 200, None),
        ("expired", 401, EXPIRED),
        ("intruder", 401, UNTRUSTED),
        ("server-only", 401, WRONG_PURPOSE),
        ("other-app", 401, NOT_FOR_API),
        (None, 401, NONE_MSG),
    ],
    ids=lambda v: str(v),
)
def test_resumed_session_keeps_the_verdict(
    matrix_gateway: GatewayProcess,
    pki: DevPki,
    cert: str | None,
    status: int,
    words: str | None,
    version: ssl.TLSVersion,
) -> None:
    ctx = context(pki, cert, max_version=version)
    path = f"{context_path('mandatory', 'disabled')}/resume"
    r1, r2, reused = _resume(matrix_gateway.port, ctx, path)
    assert reused, "the gateway did not resume the TLS session (tickets are on by default)"
    for r in (r1, r2):
        assert r.status == status, r.body
        if words is not None:
            assert r.json()["description"] == words


def test_resumed_session_judged_per_api(matrix_gateway: GatewayProcess, pki: DevPki) -> None:
    """A session resumed with a valid certificate still carries its aliases."""
    ctx = context(pki, "other-app")
    r1, r2, reused = _resume(matrix_gateway.port, ctx, "/only-other/x")
    assert reused and r1.status == r2.status == 200
    r1, r2, reused = _resume(matrix_gateway.port, ctx, f"{context_path('mandatory', 'disabled')}/x")
    assert reused and r1.status == r2.status == 401
    assert r2.json()["description"] == NOT_FOR_API


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(
    matrix_gateway: GatewayProcess, pki: DevPki, version: ssl.TLSVersion
) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what the gateway must refuse
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = version
    # The gateway itself refuses (a protocol_version alert), not the client's OpenSSL.
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        conn = tls_connect(matrix_gateway.port, ctx)
        conn.close()
    # The gateway keeps serving.
    assert get(matrix_gateway.port, "/open/x", pki).status == 200


def test_tls12_and_13_are_served(matrix_gateway: GatewayProcess, pki: DevPki) -> None:
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        conn = tls_connect(matrix_gateway.port, context(pki, "partner-app", max_version=version))
        try:
            assert conn.sock.version() == name
            assert conn.sock.selected_alpn_protocol() in (None, "http/1.1")
            response = send(conn, f"{context_path('mandatory', 'disabled')}/v")
            assert response.status == 200
        finally:
            conn.close()


def test_matrix_request_reaches_backend_with_forwarding_headers(
    matrix_gateway: GatewayProcess, pki: DevPki
) -> None:
    response = get(
        matrix_gateway.port,
        f"{context_path('mandatory', 'mandatory')}/h",
        pki,
        "partner-app",
        headers={"apikey": KEY},
    )
    assert response.status == 200
    assert echoed(response, "X-Forwarded-Proto") == ["https"]
    assert echoed(response, "apikey") == []


def test_apikey_header_removed_whatever_its_case(
    matrix_gateway: GatewayProcess, pki: DevPki
) -> None:
    for name in ("APIKEY", "ApiKey", "apikey"):
        response = get(
            matrix_gateway.port,
            f"{context_path('disabled', 'mandatory')}/case",
            pki,
            headers={name: KEY},
        )
        assert response.status == 200, (name, response.body)
        assert echoed(response, "apikey") == []


def test_no_resumption_without_tickets(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> None:
    """With session_tickets = false every connection is a full handshake, judged afresh."""
    apis = [
        {
            "name": "no-tickets",
            "context": "/nt",
            "backend": backend.url,
            "mutual_ssl": "mandatory",
            "aliases": ALIASES,
        }
    ]
    with running_gateway(
        tmp_path_factory.mktemp("no-tickets-gw"), pki, apis, tls={"session_tickets": False}
    ) as gw:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for cert, status in (("partner-app", 200), ("expired", 401)):
                r1, r2, reused = _resume(gw.port, context(pki, cert, max_version=version), "/nt/x")
                assert not reused
                assert r1.status == r2.status == status
