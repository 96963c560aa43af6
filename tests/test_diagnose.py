"""``decode-header`` report: what an operator sees, and the exit codes scripts rely on."""

from __future__ import annotations

import pytest
from cryptography import x509

from tests import headerenc
from twistedgw.app import decode_header_report
from twistedgw.identity import fingerprint
from twistedgw.testing import devpki
from twistedgw.tls import TrustStore, load_truststore


@pytest.fixture(scope="module")
def truststore(pki: devpki.DevPki) -> TrustStore:
    return load_truststore(pki.truststore_dir)


def cert_block(cert: x509.Certificate) -> list[str]:
    serial = f"{cert.serial_number:X}"
    serial = ("0" * (len(serial) % 2)) + serial
    return [
        f"  subject: {cert.subject.rfc4514_string()}",
        f"  issuer: {cert.issuer.rfc4514_string()}",
        "  serial: " + ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)),
        f"  not before: {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"  not after: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        "  sha256: " + ":".join(f"{b:02X}" for b in fingerprint(cert)),
    ]


def test_report_without_truststore(pki: devpki.DevPki) -> None:
    issued = pki.issued["partner-app"]
    lines, code = decode_header_report(headerenc.aws_alb(issued.full_chain))
    leaf, issuing = issued.full_chain
    assert lines == [
        "encoding: aws-alb",
        "certificate 1 of 2 (leaf)",
        *cert_block(leaf),
        "certificate 2 of 2 (chain)",
        *cert_block(issuing),
    ]
    assert code == 0


def test_subject_and_fingerprint_readable(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-direct"].cert
    lines, _ = decode_header_report(headerenc.base64_der(cert, quoted=True))
    assert lines[0] == "encoding: base64-der"
    assert "  subject: CN=partner-direct,O=twistedgw dev" in lines
    assert "  issuer: CN=twistedgw dev partner root,O=twistedgw dev" in lines
    sha = next(line for line in lines if line.startswith("  sha256: "))
    assert sha.removeprefix("  sha256: ").replace(":", "").lower() == fingerprint(cert).hex()


def test_verified(pki: devpki.DevPki, truststore: TrustStore) -> None:
    value = headerenc.encode(pki.issued["partner-app"].full_chain, "xfcc")
    lines, code = decode_header_report(value, "xfcc", truststore)
    assert lines[0] == "encoding: xfcc"
    assert lines[-1] == "verification: verified (aliases: partner-root)"
    assert code == 0


def test_verified_pinned(pki: devpki.DevPki, truststore: TrustStore) -> None:
    value = headerenc.url_pem([pki.issued["pinned"].cert])
    lines, code = decode_header_report(value, truststore=truststore)
    assert lines[-1] == "verification: verified (aliases: pinned-client)"
    assert code == 0


def test_rfc9440_chain_value(pki: devpki.DevPki, truststore: TrustStore) -> None:
    issued = pki.issued["partner-app"]
    lines, code = decode_header_report(
        headerenc.rfc9440(issued.cert),
        truststore=truststore,
        chain_value=headerenc.rfc9440_chain(issued.chain),
    )
    assert lines[0] == "encoding: rfc9440"
    assert "certificate 2 of 2 (chain)" in lines
    assert code == 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("expired", "certificate has expired"),
        ("not-yet-valid", "certificate is not yet valid"),
        ("server-only", "certificate is not allowed for client authentication"),
        ("intruder", "certificate is not issued by a trusted CA"),
    ],
)
def test_verification_failed(
    pki: devpki.DevPki, truststore: TrustStore, name: str, reason: str
) -> None:
    value = headerenc.traefik(pki.issued[name].full_chain, escaped=True)
    lines, code = decode_header_report(value, "traefik", truststore)
    assert lines[-1] == f"verification: failed: {reason}"
    assert code == 1


def test_missing_intermediate_fails(pki: devpki.DevPki, truststore: TrustStore) -> None:
    value = headerenc.pem_folded([pki.issued["partner-app"].cert])
    lines, code = decode_header_report(value, "pem", truststore)
    assert lines[-1] == "verification: failed: certificate is not issued by a trusted CA"
    assert code == 1


@pytest.mark.parametrize(
    ("value", "encoding"),
    [("", "auto"), ("not a certificate", "auto"), ("MIIB", "base64-der")],
)
def test_cannot_decode(truststore: TrustStore, value: str, encoding: str) -> None:
    lines, code = decode_header_report(value, encoding, truststore)
    assert len(lines) == 1 and lines[0].startswith("cannot decode header: ")
    assert code == 2


def test_alb_value_read_as_url_pem_explains(pki: devpki.DevPki) -> None:
    value = headerenc.aws_alb(pki.issued["partner-app"].full_chain)
    lines, code = decode_header_report(value, "url-pem")
    assert code == 2
    assert "aws-alb" in lines[0]
