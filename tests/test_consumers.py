"""Identity rules and consumers end to end: a real gateway process, real TLS on loopback.

One gateway serves every case: an API per identity key, consumer ACLs, a
consumer tier, a load balancer's header certificates and the authz endpoint.
The echo backend reports the headers it received, so the tests see exactly
what a backend would trust.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests import headerenc
from tests.backend_fixture import BackendProcess
from tests.e2e import echoed, get
from tests.harness import (
    GatewayProcess,
    Response,
    free_port,
    gateway_config,
    start_gateway,
    table,
)
from tests.opskit import scrape, value, wait_until
from twistedgw.testing.devpki import IDENTITY_POLICY_OID, DevPki

HEADER = "X-SSL-Client-Cert"
AUTHZ = "/_twistedgw/authz"
ACME_KEY = "acme-secret-key"
LOOSE_KEY = "a-key-no-consumer-owns"
MISMATCH = "certificate does not match this API's identity rules"


def leaf(pki: DevPki, name: str) -> x509.Certificate:
    return pki.issued[name].cert


def sha256_colons(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def spki(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


# (context, entry, a certificate that matches, one that does not)
IDENTITY_CASES: list[tuple[str, Any, str, str]] = [
    ("sha256", lambda p: {"sha256": sha256_colons(leaf(p, "identity-app"))},
     "identity-app", "identity-renewed"),
    ("spki", lambda p: {"spki_sha256": spki(leaf(p, "identity-app"))},
     "identity-renewed", "partner-app"),
    ("subject", lambda p: {"subject": "cn=Identity-App, o=twistedgw dev"},
     "identity-app", "partner-app"),
    ("cn", lambda p: {"common_name": "identity-app"}, "identity-app", "partner-app"),
    ("issuer", lambda p: {"issuer": "CN=twistedgw dev partner issuing CA,O=twistedgw dev"},
     "identity-app", "partner-direct"),
    ("dns", lambda p: {"san_dns": "*.partner.example"}, "identity-app", "partner-app"),
    ("uri", lambda p: {"san_uri": "spiffe://partner.example/ns/prod/*"},
     "identity-app", "acme-app"),
    ("uri-exact", lambda p: {"san_uri": "spiffe://partner.example/ns/prod/sa/billing"},
     "identity-app", "acme-app"),
    ("email", lambda p: {"san_email": "billing@partner.example"}, "identity-app", "partner-app"),
    ("policy", lambda p: {"policy_oid": IDENTITY_POLICY_OID}, "identity-app", "identity-renewed"),
]


def consumers_toml() -> str:
    return (
        table("consumers", {"name": "acme", "api_keys": ["acme-key"],
                            "certificates": [{"san_uri": "spiffe://acme.example/*"}]}, array=True)
        + table("consumers", {"name": "globex",
                              "certificates": [{"san_uri": "spiffe://globex.example/*"}]},
                array=True)
    )


def apis(pki: DevPki, backend: BackendProcess) -> list[dict[str, Any]]:
    base = {"version": "1", "backend": backend.url}
    out = [
        {**base, "name": f"id-{name}", "context": f"/id-{name}", "mutual_ssl": "mandatory",
         "aliases": ["partner-root"], "identities": [entry(pki)]}
        for name, entry, _good, _bad in IDENTITY_CASES
    ]
    either = {"mutual_ssl": "optional", "api_key": "optional"}
    out += [
        {**base, "name": "acl", "context": "/acl", **either, "consumers": ["acme"]},
        {**base, "name": "open", "context": "/open", **either},
        {**base, "name": "tiered", "context": "/tiered", **either,
         "tiers": [{"consumer": "acme", "requests_per_minute": 3}]},
    ]
    return out


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[tuple[GatewayProcess, int, Path]]:
    port, admin = free_port(), free_port()
    directory = tmp_path_factory.mktemp("consumers")
    log = directory / "access.jsonl"
    text = gateway_config(
        pki, apis(pki, backend), port=port,
        api_keys={"acme-key": ACME_KEY, "loose-key": LOOSE_KEY},
        extra=consumers_toml()
        + table("mutual_ssl", {"certificate_header": HEADER, "load_balancer_aliases": ["lb-ca"]})
        + table("authz", {"path": AUTHZ})
        + table("admin", {"host": "127.0.0.1", "port": admin})
        + table("access_log", {"path": str(log)}),
    )
    process = start_gateway(directory, text, port, wait_for=(admin,))
    try:
        yield process, admin, log
    except BaseException:
        print(process.output())
        raise
    finally:
        process.stop()


def error(r: Response) -> tuple[int, str, str, str]:
    body = r.json()
    return r.status, body["code"], body["message"], body["description"]


@pytest.mark.parametrize(("name", "good", "bad"), [(c[0], c[2], c[3]) for c in IDENTITY_CASES])
def test_each_identity_key_matches_and_mismatches(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki, name: str, good: str, bad: str
) -> None:
    port = gw[0].port
    r = get(port, f"/id-{name}/x", pki, good)
    assert r.status == 200, r.body
    r = get(port, f"/id-{name}/x", pki, bad)
    assert error(r) == (401, "900901", "Invalid Credentials", MISMATCH)
    # The same certificates from a load balancer's header are judged alike.
    for client, status in ((good, 200), (bad, 401)):
        r = get(port, f"/id-{name}/x", pki, "lb",
                headers={HEADER: headerenc.url_pem(pki.issued[client].full_chain)})
        assert r.status == status, (client, r.body)
        if status == 401:
            assert r.json()["description"] == MISMATCH


def test_rules_come_after_chain_and_alias_checks(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki
) -> None:
    port = gw[0].port
    assert error(get(port, "/id-cn/x", pki, "expired"))[3] == "certificate has expired"
    assert error(get(port, "/id-cn/x", pki, "globex-app"))[3] == (
        "certificate is not associated with this API"
    )
    assert error(get(port, "/id-cn/x", pki))[:2] == (401, "900902")


def test_consumer_by_certificate_and_by_key(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki
) -> None:
    port = gw[0].port
    forged = [("X-Consumer-Name", "globex"), ("x-consumer-name", "root")]
    r = get(port, "/acl/x", pki, "acme-app", headers=forged)
    assert r.status == 200, r.body
    assert echoed(r, "x-consumer-name") == ["acme"]
    r = get(port, "/acl/x", pki, headers=[("apikey", ACME_KEY), *forged])
    assert r.status == 200, r.body
    assert echoed(r, "x-consumer-name") == ["acme"]
    assert echoed(r, "apikey") == []
    # No consumer: a forged name never reaches the backend.
    r = get(port, "/open/x", pki, "partner-app", headers=forged)
    assert r.status == 200
    assert echoed(r, "x-consumer-name") == []
    r = get(port, "/open/x", pki, "globex-app", headers=forged)
    assert echoed(r, "x-consumer-name") == ["globex"]


def test_consumer_acl_is_403(gw: tuple[GatewayProcess, int, Path], pki: DevPki) -> None:
    port = gw[0].port
    r = get(port, "/acl/x", pki, "globex-app")
    assert error(r) == (
        403, "900908", "Resource Forbidden", "consumer 'globex' is not allowed on this API"
    )
    assert r.header("content-type") == "application/json"
    for client, headers in (("partner-app", {}), (None, {"apikey": LOOSE_KEY})):
        r = get(port, "/acl/x", pki, client, headers=headers)
        assert error(r) == (
            403, "900908", "Resource Forbidden", "the caller is not a known consumer"
        )
    # Unauthenticated is still 401, and a load balancer's header maps like a handshake.
    assert error(get(port, "/acl/x", pki))[:2] == (401, "900902")
    r = get(port, "/acl/x", pki, "lb",
            headers={HEADER: headerenc.url_pem(pki.issued["acme-app"].full_chain)})
    assert r.status == 200 and echoed(r, "x-consumer-name") == ["acme"]
    r = get(port, "/acl/x", pki, "lb",
            headers={HEADER: headerenc.url_pem(pki.issued["globex-app"].full_chain)})
    assert error(r)[:2] == (403, "900908")


def test_authz_endpoint_applies_the_consumer_rules(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki
) -> None:
    port = gw[0].port
    r = get(port, AUTHZ, pki, "acme-app", headers={"X-Original-URI": "/acl/x"})
    assert r.status == 200 and r.header("x-consumer-name") == "acme"
    r = get(port, AUTHZ, pki, "partner-app", headers={"X-Original-URI": "/open/x"})
    assert r.status == 200 and r.header("x-consumer-name") is None
    r = get(port, AUTHZ, pki, "globex-app", headers={"X-Original-URI": "/acl/x"})
    assert error(r)[:2] == (403, "900908")
    r = get(port, AUTHZ, pki, "partner-app", headers={"X-Original-URI": "/id-dns/x"})
    assert error(r) == (401, "900901", "Invalid Credentials", MISMATCH)


def test_consumer_tier_counts_every_credential(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki
) -> None:
    port = gw[0].port
    assert get(port, "/tiered/x", pki, "acme-app").status == 200
    assert get(port, "/tiered/x", pki, headers={"apikey": ACME_KEY}).status == 200
    assert get(port, "/tiered/x", pki, "acme-app").status == 200
    r = get(port, "/tiered/x", pki, headers={"apikey": ACME_KEY})
    assert error(r) == (
        429, "900800", "Message throttled out", "the consumer's tier limit was exceeded"
    )
    assert 1 <= int(r.header("retry-after") or "0") <= 20
    # Others are not in acme's tier.
    for _ in range(4):
        assert get(port, "/tiered/x", pki, "globex-app").status == 200


def test_access_log_and_metrics_name_the_consumer(
    gw: tuple[GatewayProcess, int, Path], pki: DevPki
) -> None:
    process, admin, log = gw
    before = scrape(admin)
    assert get(process.port, "/open/logged", pki, "globex-app").status == 200
    assert get(process.port, "/open/logged", pki, "partner-app").status == 200
    assert get(process.port, "/acl/logged", pki, "globex-app").status == 403

    def lines() -> list[dict[str, Any]]:
        found = [json.loads(line) for line in log.read_text().splitlines() if line]
        return [x for x in found if x["path"].endswith("/logged")]

    entries = wait_until(lambda: len(lines()) == 3 and lines(), what="3 access-log lines")
    assert [(x["path"], x["status"], x["consumer"]) for x in entries] == [
        ("/open/logged", 200, "globex"),
        ("/open/logged", 200, None),
        ("/acl/logged", 403, "globex"),
    ]
    after = scrape(admin)

    def delta(**labels: str) -> float:
        name = "twistedgw_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(api="open:1", status="200", consumer="globex") == 1
    assert delta(api="open:1", status="200", consumer="none") == 1
    assert delta(api="acl:1", status="403", consumer="globex") == 1


# --------------------------------------------------------------------------- pinned aliases
# #22 item 7: a truststore entry is an issuer or a pinned client, never both.


def _like_openssl_req_x509(cn: str) -> tuple[x509.Certificate, Any]:
    """A self-signed certificate as ``openssl req -x509`` makes one: CA:TRUE, key ids."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _signed_by(issuer: x509.Certificate, issuer_key: Any, cn: str,
               uri: str) -> tuple[x509.Certificate, Any]:
    """A client certificate ``issuer``'s key signed, naming ``uri`` as its SAN."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_a_pinned_alias_passes_itself_and_nothing_it_signed(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    """The pinned certificate asserts CA:TRUE (``openssl req -x509``'s default) and its
    holder signs a leaf naming the acme consumer's SAN: through the handshake and
    through a load balancer's header alike, that leaf is not trusted, while the pinned
    certificate itself passes (the CA-leaf rule does not apply to it)."""
    import shutil
    import ssl

    from tests.e2e import send, tls_connect

    pinned, pinned_key = _like_openssl_req_x509("pinned partner")
    forged, forged_key = _signed_by(pinned, pinned_key, "mallory",
                                    "spiffe://acme.example/ns/prod/sa/orders")
    trust = tmp_path / "truststore"
    shutil.copytree(pki.truststore_dir, trust)
    (trust / "pinned-ca.pem").write_bytes(_pem(pinned))
    files = {}
    for stem, chain, key in (("pinned", (pinned,), pinned_key),
                             ("forged", (forged, pinned), forged_key)):
        (tmp_path / f"{stem}.crt").write_bytes(_pem(*chain))
        (tmp_path / f"{stem}.key").write_bytes(_key_pem(key))
        files[stem] = (tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key")
    port = free_port()
    base = {"version": "1", "backend": backend.url, "mutual_ssl": "mandatory"}
    text = gateway_config(
        pki,
        [{**base, "name": "acme-only", "context": "/acme", "consumers": ["acme"]},
         {**base, "name": "pinned-only", "context": "/pinned", "aliases": ["pinned-ca"]}],
        port=port,
        tls={"truststore": str(trust), "pinned_aliases": ["pinned-ca"]},
        extra=table("consumers", {"name": "acme", "certificates": [
            {"san_uri": "spiffe://acme.example/*"}]}, array=True)
        + table("mutual_ssl", {"certificate_header": HEADER, "load_balancer_aliases": ["lb-ca"]}),
    )
    gw = start_gateway(tmp_path / "gw", text, port)
    try:
        def direct(path: str, who: str) -> Response:
            if who in files:
                ctx = ssl.create_default_context(cafile=str(pki.server_ca))
                ctx.load_cert_chain(*(str(p) for p in files[who]))
                conn = tls_connect(port, ctx)
                try:
                    return send(conn, path)
                finally:
                    conn.close()
            return get(port, path, pki, who)

        def via_header(path: str, chain: tuple[x509.Certificate, ...]) -> Response:
            return get(port, path, pki, "lb", headers={HEADER: headerenc.url_pem(chain)})

        untrusted = (401, "900901", "Invalid Credentials", "certificate is not issued by a "
                     "trusted CA")
        for path in ("/acme/x", "/pinned/x"):
            assert error(direct(path, "forged")) == untrusted, path
            assert error(via_header(path, (forged, pinned))) == untrusted, path
            assert error(via_header(path, (forged,))) == untrusted, path
        # The pinned certificate itself passes, as itself; it is no acme.
        assert direct("/pinned/x", "pinned").status == 200
        assert via_header("/pinned/x", (pinned,)).status == 200
        assert error(direct("/acme/x", "pinned"))[:2] == (403, "900908")
        # The real acme still is.
        assert direct("/acme/x", "acme-app").status == 200
        assert via_header("/acme/x", pki.issued["acme-app"].full_chain).status == 200
        # check's warning: acme is named by a SAN alone while several issuers are trusted.
        assert "consumer 'acme' is identified by names alone" in gw.output()
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
