"""Identity forwarding (spoof-proof) and per-certificate tiers, end to end.

The echo backend reports the headers it received, so these tests see exactly
what a backend behind the gateway would trust.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.backend_fixture import BackendProcess
from tests.e2e import context, echoed, get, running_gateway, tls_connect
from twistedgw.testing.devpki import DevPki

FORGED = [
    ("X-Forwarded-Client-Cert", 'Hash=00;Subject="CN=admin"'),
    ("Client-Cert", ":AAAA:"),
    ("Client-Cert-Chain", ":AAAA:"),
    ("X-Client-Cert-Subject", "CN=admin"),
    ("X-Client-Cert-Sha256", "00"),
    # What the authz endpoint answers NGINX with: never from a caller (issue 22 item 9).
    ("X-Twistedgw-Principal", "CN=admin"),
    ("X-Twistedgw-Api", "Admin:1"),
]
IDENTITY_HEADERS = (
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-client-cert-subject",
    "x-client-cert-sha256",
    "x-twistedgw-principal",
    "x-twistedgw-api",
)


def apis(backend: BackendProcess, **extra: Any) -> list[dict[str, Any]]:
    base = {"version": "1", "backend": backend.url}
    return [
        {**base, "name": "Mtls", "context": "/mtls", "mutual_ssl": "mandatory", **extra},
        {**base, "name": "Open", "context": "/open"},
    ]


def identity(forward: str) -> str:
    return (
        "[identity]\n"
        f'forward = "{forward}"\n'
        'headers = { subject = "X-Client-Cert-Subject", sha256 = "X-Client-Cert-Sha256" }\n'
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_xfcc_set_from_verified_certificate_and_forgeries_dropped(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    leaf = pki.issued["partner-app"].cert
    with running_gateway(tmp_path, pki, apis(backend), extra=identity("xfcc")) as gw:
        r = get(gw.port, "/mtls/x", pki, "partner-app", headers=FORGED)
        assert r.status == 200, r.body
        (xfcc,) = echoed(r, "x-forwarded-client-cert")
        for name in IDENTITY_HEADERS[1:]:
            assert echoed(r, name) == [], name
        fields = dict(part.split("=", 1) for part in xfcc.split(";"))
        assert fields["Hash"] == hashlib.sha256(der(leaf)).hexdigest()
        assert x509.load_pem_x509_certificate(unquote(fields["Cert"]).encode()) == leaf
        assert fields["Subject"] == f'"{leaf.subject.rfc4514_string()}"'
        assert fields["URI"] == "urn:twistedgw:client:partner-app"

        # No mTLS on this API: nothing is asserted about the caller, forgeries still go.
        r = get(gw.port, "/open/x", pki, "partner-app", headers=FORGED)
        assert r.status == 200
        for name in IDENTITY_HEADERS:
            assert echoed(r, name) == [], name


def test_rfc9440_and_named_headers(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> None:
    app = pki.issued["partner-app"]
    with running_gateway(tmp_path / "a", pki, apis(backend), extra=identity("rfc9440")) as gw:
        r = get(gw.port, "/mtls/x", pki, "partner-app", headers=FORGED)
        assert r.status == 200
        assert echoed(r, "client-cert") == [f":{base64.b64encode(der(app.cert)).decode()}:"]
        # Intermediates only: no leaf, no trust anchor.
        intermediate = app.chain[0]
        assert echoed(r, "client-cert-chain") == [
            f":{base64.b64encode(der(intermediate)).decode()}:"
        ]
        assert echoed(r, "x-forwarded-client-cert") == []
        assert echoed(r, "x-client-cert-subject") == []

    with running_gateway(tmp_path / "b", pki, apis(backend), extra=identity("headers")) as gw:
        r = get(gw.port, "/mtls/x", pki, "pinned", headers=FORGED)
        assert r.status == 200
        pinned = pki.issued["pinned"].cert
        assert echoed(r, "x-client-cert-subject") == [pinned.subject.rfc4514_string()]
        assert echoed(r, "x-client-cert-sha256") == [hashlib.sha256(der(pinned)).hexdigest()]
        for name in IDENTITY_HEADERS[:3]:
            assert echoed(r, name) == [], name


def test_tiers_per_certificate(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> None:
    tiers = [{"alias": "partner-root", "requests_per_minute": 3}]
    with running_gateway(tmp_path, pki, apis(backend, tiers=tiers)) as gw:
        for _ in range(3):
            assert get(gw.port, "/mtls/x", pki, "partner-app").status == 200
        r = get(gw.port, "/mtls/x", pki, "partner-app")
        assert r.status == 429
        assert r.json()["code"] == "900800"
        assert r.json()["message"] == "Message throttled out"
        assert r.header("content-type") == "application/json"
        assert 1 <= int(r.header("retry-after") or "0") <= 20
        # Another certificate of the same tier has its own bucket.
        for _ in range(3):
            assert get(gw.port, "/mtls/x", pki, "partner-direct").status == 200
        # A certificate that matches no tier is not throttled here.
        for _ in range(5):
            assert get(gw.port, "/mtls/x", pki, "pinned").status == 200
        # Buckets survive a reload: SIGHUP is not a way to a fresh minute.
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "Reloaded" not in gw.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Reloaded" in gw.output()
        assert get(gw.port, "/mtls/x", pki, "partner-app").status == 429


def test_apis_sharing_a_context_through_hosts_have_a_bucket_each(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    """Issue 23 item 9: calls to a 1000/min API must not spend a 3/min API's budget
    when both share a context (told apart by ``hosts``)."""
    base = {"version": "1", "backend": backend.url, "context": "/mtls",
            "mutual_ssl": "mandatory"}
    shared = [
        {**base, "name": "Big", "hosts": ["big.example"],
         "tiers": [{"alias": "partner-root", "requests_per_minute": 1000}]},
        {**base, "name": "Small", "hosts": ["small.example"],
         "tiers": [{"alias": "partner-root", "requests_per_minute": 3}]},
    ]

    def call(host: str) -> int:
        conn = tls_connect(gw.port, context(pki, "partner-app"))
        try:
            conn.putrequest("GET", "/mtls/x", skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    with running_gateway(tmp_path, pki, shared) as gw:
        assert [call("big.example") for _ in range(5)] == [200] * 5
        assert [call("small.example") for _ in range(4)] == [200, 200, 200, 429]
        assert call("big.example") == 200


def test_san_header_types_and_quotes_each_value(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    """#22 item 12: one URI SAN holding a comma reaches the backend as one value. It was
    ``urn:x,spiffe://bank.example/sa/admin``: two identities to a backend splitting on ','."""
    import ssl

    from tests.e2e import send

    issued = pki.authorities["partner-issuing"].issue("bank-app", sans=[
        x509.UniformResourceIdentifier("urn:x,spiffe://bank.example/sa/admin"),
        x509.UniformResourceIdentifier('spiffe://partner.example/"q"\\x'),
        x509.UniformResourceIdentifier("spiffe://partner.example/sa/app"),
        x509.DNSName("api.partner.example"),
    ])
    crt, key = issued.write(tmp_path / "client", "bank-app")
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.load_cert_chain(str(crt), str(key))
    extra = '[identity]\nforward = "headers"\nheaders = { san = "X-Client-Cert-San" }\n'
    with running_gateway(tmp_path / "gw", pki, apis(backend), extra=extra) as gw:
        conn = tls_connect(gw.port, ctx)
        try:
            r = send(conn, "/mtls/x", headers=[("X-Client-Cert-San", "URI=spiffe://evil")])
        finally:
            conn.close()
        assert r.status == 200, r.body
        assert echoed(r, "x-client-cert-san") == [
            'URI="urn:x,spiffe://bank.example/sa/admin",'
            'URI="spiffe://partner.example/\\"q\\"\\\\x",'
            "URI=spiffe://partner.example/sa/app,DNS=api.partner.example"
        ]


def test_san_field_encoding() -> None:
    """Every value typed; quoted where it could be misread; control characters never sent."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from twistedgw.identity._forwarding import san_field

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.UTC)

    def with_sans(*sans: x509.GeneralName) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        return builder.sign(key, hashes.SHA256())

    uri, dns = x509.UniformResourceIdentifier, x509.DNSName
    assert san_field(with_sans()) == ""
    assert san_field(with_sans(uri("a;b=c"), uri("a b"), uri("plain:x"), dns("h.example"))) == (
        'URI="a;b=c",URI="a b",URI=plain:x,DNS=h.example'
    )
    assert san_field(with_sans(uri("x\r\nX-Admin: 1"), uri("ok:1"))) == "URI=ok:1"
