"""The revocation checker without processes: OCSP dedupe, cache, nonce and signature checks."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from twisted.internet import defer

from twistedgw.identity import _reasons as reasons
from twistedgw.testing import devpki
from twistedgw.tls import UNAVAILABLE, CrlStore, OcspClient, RevocationChecker, Status, load_crls


@pytest.fixture(scope="module")
def ca() -> devpki.Authority:
    return devpki.Authority.root("unit root")


def respond(
    ca: devpki.Authority,
    leaf: x509.Certificate,
    request_der: bytes,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    nonce: bytes | None = None,
    signer: devpki.PrivateKey | None = None,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    request = ocsp.load_der_ocsp_request(request_der)
    sent = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=ca.cert,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=now,
            next_update=now + datetime.timedelta(hours=1),
            revocation_time=now if status is ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, ca.cert)
        .add_extension(x509.OCSPNonce(nonce if nonce is not None else sent), critical=False)
    )
    signed = builder.sign(signer or ca.key, hashes.SHA256())  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.DER)


def checker(client: OcspClient, fail_open: bool = False) -> RevocationChecker:
    return RevocationChecker(scope="leaf", fail_open=fail_open, crls=None, ocsp_client=client)


def test_concurrent_queries_share_one_and_are_cached(ca: devpki.Authority) -> None:
    leaf = ca.issue("a", ocsp_url="http://ocsp.invalid/").cert
    calls: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def fetch(url: str, body: bytes, timeout: float) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        calls.append((body, d))
        return d

    c = checker(OcspClient(1.0, 60, fetch=fetch))
    first, second = c.check((leaf, ca.cert)), c.check((leaf, ca.cert))
    assert isinstance(first, defer.Deferred) and isinstance(second, defer.Deferred)
    assert len(calls) == 1
    body, d = calls[0]
    d.callback(respond(ca, leaf, body, status=ocsp.OCSPCertStatus.REVOKED))
    assert first.result == second.result == reasons.REVOKED
    assert c.check((leaf, ca.cert)) == reasons.REVOKED  # from the cache, synchronously


@pytest.mark.parametrize("forgery", ["nonce", "signer"])
def test_bad_responses_give_no_status(ca: devpki.Authority, forgery: str) -> None:
    leaf = ca.issue("b", ocsp_url="http://ocsp.invalid/").cert

    def fetch(url: str, body: bytes, timeout: float) -> defer.Deferred[bytes]:
        if forgery == "nonce":
            return defer.succeed(respond(ca, leaf, body, nonce=b"\x00" * 16))
        return defer.succeed(respond(ca, leaf, body, signer=devpki.new_key()))

    verdict = checker(OcspClient(1.0, 60, fetch=fetch)).check((leaf, ca.cert))
    assert isinstance(verdict, defer.Deferred)
    assert verdict.result == UNAVAILABLE


def test_crl_files_pem_bundle_and_der(ca: devpki.Authority, tmp_path: Path) -> None:
    d = tmp_path
    a, b = ca.issue("x"), ca.issue("y")
    other = devpki.Authority.root("other")
    (d / "bundle.pem").write_bytes(ca.crl([a.cert]) + other.crl())
    (d / "one.der").write_bytes(ca.crl([b.cert], encoding="der"))
    crls = load_crls([d / "bundle.pem", d / "one.der"])
    assert len(crls) == 3
    store = CrlStore(crls)
    now = datetime.datetime.now(datetime.UTC)
    assert store.status(a.cert, ca.cert, now) is Status.REVOKED
    assert store.status(b.cert, ca.cert, now) is Status.REVOKED
    assert store.status(ca.issue("z").cert, ca.cert, now) is Status.GOOD
