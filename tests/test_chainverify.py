"""Header-certificate verification: the handshake's verdicts and words, and the cache."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cputime import least_cpu
from twistedgw.identity import ClientIdentity, Outcome, Source, fingerprint
from twistedgw.testing import devpki
from twistedgw.tls import (
    EXPIRED,
    FAILED_TTL,
    INVALID,
    NOT_YET_VALID,
    UNTRUSTED,
    WRONG_PURPOSE,
    ChainVerifier,
    TrustEntry,
    TrustStore,
    load_truststore,
)
from twistedgw.tls import _chains as chainverify

DAY = datetime.timedelta(days=1)


class Clock:
    """A settable clock, so cache lifetimes can be tested without waiting."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def truststore(pki: devpki.DevPki) -> TrustStore:
    return load_truststore(pki.truststore_dir)


def verify(truststore: TrustStore, certs: tuple[x509.Certificate, ...]) -> ClientIdentity:
    return ChainVerifier(truststore).verify(certs)


def store_of(**certs: x509.Certificate) -> TrustStore:
    return TrustStore(
        "test", tuple(TrustEntry(alias, c, fingerprint(c)) for alias, c in certs.items())
    )


def self_signed(
    cn: str,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    ca: bool = False,
    extra: x509.ExtensionType | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    return builder.sign(key, hashes.SHA256()), key


# --------------------------------------------------------------------------- verdicts


def test_chain_through_intermediate(pki: devpki.DevPki, truststore: TrustStore) -> None:
    issued = pki.issued["partner-app"]
    identity = verify(truststore, issued.full_chain)
    assert identity.source is Source.HEADER
    assert identity.outcome is Outcome.VERIFIED
    assert identity.chain == (*issued.full_chain, pki.authorities["partner-root"].cert)
    assert identity.trust_aliases == {"partner-root"}
    assert identity.reason is None


@pytest.mark.parametrize(
    ("name", "alias"),
    [
        ("partner-direct", "partner-root"),
        ("partner-rsa", "partner-root"),
        ("other-app", "other-root"),
        ("lb", "lb-ca"),
    ],
)
def test_verified(pki: devpki.DevPki, truststore: TrustStore, name: str, alias: str) -> None:
    identity = verify(truststore, pki.issued[name].full_chain)
    assert identity.verified, identity.reason
    assert identity.trust_aliases == {alias}
    assert identity.leaf == pki.issued[name].cert


def test_pinned_self_signed_passes_by_itself(pki: devpki.DevPki, truststore: TrustStore) -> None:
    cert = pki.issued["pinned"].cert
    identity = verify(truststore, (cert,))
    assert identity.verified
    assert identity.chain == (cert,)
    assert identity.trust_aliases == {"pinned-client"}


def test_pinned_leaf_of_an_untrusted_ca(pki: devpki.DevPki) -> None:
    """Pinning a leaf trusts it even though its issuer is not in the truststore."""
    cert = pki.issued["intruder"].cert
    partner_only = store_of(partner=pki.authorities["partner-root"].cert)
    assert verify(partner_only, (cert,)).reason == UNTRUSTED
    identity = verify(store_of(pinned=cert), (cert,))
    assert identity.verified
    assert identity.trust_aliases == {"pinned"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("expired", EXPIRED),
        ("not-yet-valid", NOT_YET_VALID),
        ("server-only", WRONG_PURPOSE),
        ("intruder", UNTRUSTED),
    ],
)
def test_failed_with_the_handshake_reason(
    pki: devpki.DevPki, truststore: TrustStore, name: str, reason: str
) -> None:
    issued = pki.issued[name]
    identity = verify(truststore, issued.full_chain)
    assert identity.outcome is Outcome.FAILED
    assert identity.source is Source.HEADER
    assert identity.reason == reason
    assert identity.chain == issued.full_chain
    assert identity.trust_aliases == frozenset()


def test_missing_intermediate_is_untrusted(pki: devpki.DevPki, truststore: TrustStore) -> None:
    assert verify(truststore, (pki.issued["partner-app"].cert,)).reason == UNTRUSTED


def test_foreign_chain_does_not_help(pki: devpki.DevPki, truststore: TrustStore) -> None:
    certs = (pki.issued["intruder"].cert, *pki.issued["partner-app"].chain)
    assert verify(truststore, certs).reason == UNTRUSTED


def test_other_root_only_when_trusted(pki: devpki.DevPki, truststore: TrustStore) -> None:
    certs = pki.issued["other-app"].full_chain
    assert verify(truststore, certs).trust_aliases == {"other-root"}
    without = truststore.subset(truststore.aliases - {"other-root"})
    assert verify(without, certs).reason == UNTRUSTED
    without_pin = truststore.subset(truststore.aliases - {"pinned-client"})
    assert verify(without_pin, (pki.issued["pinned"].cert,)).reason == UNTRUSTED


def test_ca_presented_as_client_is_invalid(pki: devpki.DevPki, truststore: TrustStore) -> None:
    issuing = pki.authorities["partner-issuing"]
    identity = verify(truststore, (issuing.cert, pki.authorities["partner-root"].cert))
    assert identity.outcome is Outcome.FAILED
    assert identity.reason is not None and identity.reason.startswith(f"{INVALID}: ")
    assert "\n" not in identity.reason and "<Certificate" not in identity.reason


def test_no_san_and_no_eku_are_accepted(pki: devpki.DevPki, truststore: TrustStore) -> None:
    issuing = pki.authorities["partner-issuing"]
    for issued in (issuing.issue("no-san", sans=[]), issuing.issue("no-eku", eku=())):
        identity = verify(truststore, issued.full_chain)
        assert identity.verified, identity.reason


def test_expired_intermediate(pki: devpki.DevPki, truststore: TrustStore) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = pki.authorities["partner-root"].intermediate(
        "old CA", not_before=now - 400 * DAY, not_after=now - DAY
    )
    leaf = old.issue("under-old-ca")
    assert verify(truststore, leaf.full_chain).reason == EXPIRED


def test_future_intermediate(pki: devpki.DevPki, truststore: TrustStore) -> None:
    now = datetime.datetime.now(datetime.UTC)
    new = pki.authorities["partner-root"].intermediate(
        "new CA", not_before=now + DAY, not_after=now + 400 * DAY
    )
    leaf = new.issue("under-new-ca")
    assert verify(truststore, leaf.full_chain).reason == NOT_YET_VALID


@pytest.mark.parametrize(
    ("shift", "eku", "reason"),
    [
        ((-400, -30), (ExtendedKeyUsageOID.CLIENT_AUTH,), EXPIRED),
        ((30, 400), (ExtendedKeyUsageOID.CLIENT_AUTH,), NOT_YET_VALID),
        ((-1, 30), (ExtendedKeyUsageOID.SERVER_AUTH,), WRONG_PURPOSE),
        ((-1, 30), None, None),
        ((-1, 30), (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH), None),
    ],
)
def test_pinned_rules(
    shift: tuple[int, int], eku: tuple[x509.ObjectIdentifier, ...] | None, reason: str | None
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now + days * DAY for days in shift)
    cert, _ = self_signed("pin", not_before=start, not_after=end, eku=eku)
    identity = verify(store_of(pin=cert), (cert,))
    assert identity.reason == reason
    assert identity.verified == (reason is None)


def test_pinned_with_unknown_critical_extension_is_invalid() -> None:
    now = datetime.datetime.now(datetime.UTC)
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    cert, _ = self_signed("pin", not_before=now - DAY, not_after=now + DAY, extra=odd)
    reason = verify(store_of(pin=cert), (cert,)).reason
    assert reason is not None and reason.startswith(INVALID)


def test_empty_presentation_is_no_certificate(truststore: TrustStore) -> None:
    identity = verify(truststore, ())
    assert identity.outcome is Outcome.NONE
    assert identity.source is Source.HEADER


def test_empty_truststore_trusts_nothing(pki: devpki.DevPki) -> None:
    identity = verify(TrustStore("empty", ()), pki.issued["partner-app"].full_chain)
    assert identity.reason == UNTRUSTED


def test_validity_follows_the_injected_clock(pki: devpki.DevPki, truststore: TrustStore) -> None:
    issued = pki.issued["partner-app"]
    later = issued.cert.not_valid_after_utc.timestamp() + 1
    assert ChainVerifier(truststore, clock=Clock(later)).verify(issued.full_chain).reason == EXPIRED
    future = pki.issued["not-yet-valid"]
    soon = future.cert.not_valid_before_utc.timestamp() + 1
    assert ChainVerifier(truststore, clock=Clock(soon)).verify(future.full_chain).verified


def test_unreadable_reason_detail_is_trimmed() -> None:
    message = (
        "validation failed: basicConstraints.cA must not be asserted in an EE certificate "
        "(encountered processing <Certificate(subject=<Name(CN=x)>, ...)>)"
    )
    assert chainverify.invalid(message) == (
        f"{INVALID}: basicConstraints.cA must not be asserted in an EE certificate"
    )
    assert chainverify.invalid("") == INVALID


# --------------------------------------------------------------------------- cache


class Counting:
    """Counts real verifications by wrapping the verifier's uncached path."""

    def __init__(self, verifier: ChainVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        inner: Callable[..., ClientIdentity] = verifier._verify

        def counted(*args: Any) -> ClientIdentity:
            self.calls += 1
            return inner(*args)

        monkeypatch.setattr(verifier, "_verify", counted)


def test_cache_hit(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = ChainVerifier(truststore, clock=Clock())
    counter = Counting(verifier, monkeypatch)
    certs = pki.issued["partner-app"].full_chain
    first = verifier.verify(certs)
    second = verifier.verify(certs)
    assert first.verified and second is first
    assert counter.calls == 1
    assert (verifier.hits, verifier.misses) == (1, 1)


def test_cache_keys_on_every_presented_certificate(
    pki: devpki.DevPki, truststore: TrustStore
) -> None:
    verifier = ChainVerifier(truststore, clock=Clock())
    issued = pki.issued["partner-app"]
    assert verifier.verify(issued.full_chain).verified
    assert verifier.verify((issued.cert,)).reason == UNTRUSTED
    assert verifier.verify(issued.full_chain).verified
    assert verifier.cached == 2


def test_verified_entry_expires_with_the_earliest_certificate(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sub-CA expiring before its leaf bounds how long the verdict may be reused."""
    now = datetime.datetime.now(datetime.UTC)
    root = pki.authorities["partner-root"]
    short = root.intermediate("short CA", not_before=now - DAY, not_after=now + 10 * DAY)
    issued = short.issue("outlives-its-ca")
    assert issued.cert.not_valid_after_utc > short.cert.not_valid_after_utc
    clock = Clock(now.timestamp())
    verifier = ChainVerifier(truststore, clock=clock)
    counter = Counting(verifier, monkeypatch)

    assert verifier.verify(issued.full_chain).verified
    clock.now = short.cert.not_valid_after_utc.timestamp() - 1
    assert verifier.verify(issued.full_chain).verified
    assert counter.calls == 1
    clock.now = short.cert.not_valid_after_utc.timestamp() + 1
    assert verifier.verify(issued.full_chain).reason == EXPIRED
    assert counter.calls == 2


def test_verified_entry_expires_with_the_leaf(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = pki.issued["partner-app"]
    clock = Clock()
    verifier = ChainVerifier(truststore, clock=clock)
    counter = Counting(verifier, monkeypatch)
    assert verifier.verify(issued.full_chain).verified
    clock.now = issued.cert.not_valid_after_utc.timestamp() - 1
    assert verifier.verify(issued.full_chain).verified
    clock.now = issued.cert.not_valid_after_utc.timestamp() + 1
    assert verifier.verify(issued.full_chain).reason == EXPIRED
    assert counter.calls == 2


def test_failed_entry_lives_at_most_a_minute(
    pki: devpki.DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAILED verdict is reused for FAILED_TTL seconds and then judged afresh."""
    assert FAILED_TTL == 60
    clock = Clock()
    verifier = ChainVerifier(store_of(other=pki.authorities["other-root"].cert), clock=clock)
    counter = Counting(verifier, monkeypatch)
    intruder = pki.issued["intruder"].full_chain
    assert verifier.verify(intruder).reason == UNTRUSTED
    clock.now += 59
    assert verifier.verify(intruder).reason == UNTRUSTED
    assert counter.calls == 1
    clock.now += 2
    assert verifier.verify(intruder).reason == UNTRUSTED
    assert counter.calls == 2


def test_not_yet_valid_entry_ends_when_the_certificate_starts(
    pki: devpki.DevPki, truststore: TrustStore
) -> None:
    issued = pki.issued["not-yet-valid"]
    start = issued.cert.not_valid_before_utc.timestamp()
    clock = Clock(start - 10)
    verifier = ChainVerifier(truststore, clock=clock)
    assert verifier.verify(issued.full_chain).reason == NOT_YET_VALID
    clock.now = start + 1
    assert verifier.verify(issued.full_chain).verified


def test_lru_bound(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = ChainVerifier(truststore, cache_size=2, clock=Clock())
    counter = Counting(verifier, monkeypatch)
    a, b, c = (pki.issued[n].full_chain for n in ("partner-app", "partner-direct", "other-app"))
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recently used
    verifier.verify(c)  # evicts b
    assert verifier.cached == 2
    assert counter.calls == 3
    verifier.verify(a)
    verifier.verify(c)
    assert counter.calls == 3
    verifier.verify(b)
    assert counter.calls == 4


def test_cache_can_be_disabled(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = ChainVerifier(truststore, cache_size=0)
    counter = Counting(verifier, monkeypatch)
    for _ in range(3):
        assert verifier.verify(pki.issued["partner-app"].full_chain).verified
    assert counter.calls == 3
    assert verifier.cached == 0


@pytest.mark.parametrize(
    "message",
    [
        "validation failed: x" + " " * 20000 + "y",
        "validation failed: " + "(encountered processing <Certificate(" * 500 + " " * 5000,
        " " * 20000 + "(encountered processing <Certificate(subject=x)>)",
    ],
    ids=["spaces", "unclosed-asides", "spaces-before-an-aside"],
)
def test_failure_detail_is_trimmed_in_linear_time(message: str) -> None:
    """cryptography's message quotes the certificate's subject, the caller's own text: a
    long run of spaces in it made the trimming regex quadratic (0.7 s at 20,000)."""
    reasons: list[str] = []
    spent = least_cpu(lambda: reasons.append(chainverify.invalid(message)), 0.005)
    assert spent < 0.005, f"{spent * 1000:.2f} ms"
    assert reasons[0].startswith(INVALID) and len(reasons[0]) < 260


# --------------------------------------------------------------------------- issuers and pinned
# #22 item 7: a truststore entry is an issuer or a pinned client, never both.


def _leaf_of(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    other = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minted")]))
        .issuer_name(issuer.subject)
        .public_key(other.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _ca_like_openssl_req(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed with CA:TRUE, as ``openssl req -x509`` makes them (plus keyCertSign,
    which cryptography's CA policy wants of an issuer)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=False, encipher_only=False,
                          decipher_only=False)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY).not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def test_entries_are_issuers_or_pinned(pki: devpki.DevPki) -> None:
    store = load_truststore(pki.truststore_dir)
    roles = {e.alias: e.is_pinned for e in store.entries}
    assert roles == {"partner-root": False, "other-root": False, "lb-ca": False,
                     "pinned-client": True}
    assert {e.alias: e.is_pinned for e in store.classified(["lb-ca"]).entries}["lb-ca"]
    assert [c.subject for c in store.issuers] == [
        e.cert.subject for e in store.entries if not e.is_pinned
    ]


def test_a_pinned_ca_passes_itself_and_nothing_it_signed() -> None:
    pinned, key = _ca_like_openssl_req("pinned partner")
    minted = _leaf_of(pinned, key)
    by_default = store_of(pin=pinned)  # CA:TRUE: an issuer unless pinned
    assert verify(by_default, (minted, pinned)).trust_aliases == {"pin"}
    assert verify(by_default, (pinned,)).reason == chainverify.CA_AS_CLIENT
    pinned_store = by_default.classified(["pin"])
    for presented in ((minted, pinned), (minted,)):
        identity = verify(pinned_store, presented)
        assert (identity.outcome, identity.reason) == (Outcome.FAILED, UNTRUSTED)
    itself = verify(pinned_store, (pinned,))
    assert itself.verified and itself.trust_aliases == {"pin"}  # CA:TRUE, yet a client
    assert verify(pinned_store, (pinned, minted)).chain == (pinned,)  # never a chain


def test_a_pinned_ca_certified_by_an_issuer_validates_no_chain(pki: devpki.DevPki) -> None:
    """A pinned entry that a trusted root also certified as a CA: a leaf it signed does
    not pass through it to that root, nor does the root's alias reach the leaf."""
    root = pki.authorities["partner-root"]
    sub = root.intermediate("pinned sub-CA")
    minted = sub.issue("minted-app").cert
    plain = store_of(**{"partner-root": root.cert})
    assert verify(plain, (minted, sub.cert)).trust_aliases == {"partner-root"}
    pinned = store_of(**{"partner-root": root.cert, "sub": sub.cert}).classified(["sub"])
    assert verify(pinned, (minted, sub.cert)).reason == UNTRUSTED
    # Its alias is no chain's either.
    assert pinned.aliases_in_chain((minted, sub.cert, root.cert)) == {"partner-root"}
    assert pinned.aliases_in_chain((sub.cert,)) == {"sub"}


# --------------------------------------------------------------------------- the 10 ms rule


def _ca_named(name: x509.Name, key: Any, signer: Any, public: Any = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(public or key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY).not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier(b"k" * 20), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(b"k" * 20, None, None), critical=False)
        .sign(signer, hashes.SHA256())
    )


def test_same_named_intermediates_do_not_multiply_the_work(truststore: TrustStore) -> None:
    """Nine intermediates with one name and one key id, each signed by the next: path
    building tried their orders (112 ms of P-521 checks). One per name is offered."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")])
    keys = [ec.generate_private_key(ec.SECP521R1()) for _ in range(9)]
    cas = [_ca_named(name, keys[i], keys[(i + 1) % 9]) for i in range(9)]
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(name).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(1).not_valid_before(now - DAY).not_valid_after(now + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(b"k" * 20, None, None), critical=False)
        .sign(keys[0], hashes.SHA256())
    )
    # A fresh verifier each run: a verifier caches its verdicts.
    outcomes: list[Outcome] = []
    spent = least_cpu(
        lambda: outcomes.append(ChainVerifier(truststore).verify((leaf, *cas)).outcome), 0.010
    )
    assert spent < 0.010, f"{spent * 1000:.2f} ms"
    assert set(outcomes) == {Outcome.FAILED}


def test_oversized_rsa_keys_are_refused_before_any_signature(truststore: TrustStore) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    huge = rsa.RSAPublicNumbers(65537, (1 << 16383) | 1).public_key()
    signer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "heavy")])
    heavy = _ca_named(name, signer, signer, public=huge)
    leaf, _ = self_signed("leaf", not_before=datetime.datetime.now(datetime.UTC) - DAY,
                          not_after=datetime.datetime.now(datetime.UTC) + DAY)
    identity = ChainVerifier(truststore).verify((leaf, heavy))
    assert identity.reason == f"{INVALID}: RSA key of 16384 bits (at most 4096)"


def test_a_certificate_whose_names_cannot_be_read_is_invalid_and_dropped(
    pki: devpki.DevPki, truststore: TrustStore
) -> None:
    """A presented certificate whose subject is a TeletexString of control bytes loads,
    and raises wherever its subject is read: as an intermediate it made verification
    raise (a 500 on the header path), as the leaf the access log's record. Refused as
    invalid, with no chain left in the verdict for anything to read."""
    from tests import derkit

    authority = pki.authorities["partner-root"]
    unreadable = x509.load_der_x509_certificate(
        derkit.resigned(authority.issue("unreadable").cert, authority.key,
                        derkit.teletex_subject)
    )
    leaf = pki.issued["partner-app"].cert
    for certs in ((unreadable,), (leaf, unreadable)):
        identity = verify(truststore, certs)
        assert identity.outcome is Outcome.FAILED
        assert identity.reason is not None and identity.reason.startswith(INVALID + ": ")
        assert identity.chain == () and identity.subject is None


def test_a_duplicated_extension_reads_as_absent(pki: devpki.DevPki) -> None:
    """A certificate with an extension written twice (RFC 5280 forbids it; OpenSSL's
    verification refuses it, so no verified chain holds one today): the SANs forwarded,
    the facts identity rules match and the OCSP responder read from it are those of a
    certificate without that extension, never a DuplicateExtension raised to the caller."""
    from cryptography.x509.oid import ExtensionOID

    from tests import derkit
    from twistedgw.config import _rules as rules
    from twistedgw.identity import _forwarding as forwarding
    from twistedgw.tls import _revocation as revocation

    authority = pki.authorities["partner-root"]
    sans = [x509.DNSName("a.example"), x509.UniformResourceIdentifier("spiffe://x/y")]
    issued = authority.issue("twice", sans=sans, ocsp_url="http://ocsp.invalid/")
    assert forwarding.san_field(issued.cert) != ""  # the edit below is what changes it

    def twice(oid: x509.ObjectIdentifier) -> x509.Certificate:
        der = derkit.resigned(issued.cert, authority.key, derkit.duplicated(oid))
        cert = x509.load_der_x509_certificate(der)
        with pytest.raises(x509.DuplicateExtension):
            cert.extensions  # noqa: B018 (what the code under test must not raise)
        return cert

    san_twice = twice(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert forwarding.san_field(san_twice) == ""
    assert "URI=" not in forwarding.xfcc([san_twice]) and "DNS=" not in forwarding.xfcc(
        [san_twice])
    facts = rules.facts(san_twice)
    assert facts.san_dns == () and facts.san_uri == () and facts.policy_oids == frozenset()
    assert revocation.ocsp_url(twice(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)) is None
    # Key material the config names: an [[tls.sni]] certificate's names (none: check warns
    # that it covers no host), a truststore entry's CA flag (none: a pinned entry).
    from twistedgw.app import _runtime as runtime
    from twistedgw.tls import _pki

    assert runtime._dns_names(san_twice) == []
    constraints = twice(ExtensionOID.BASIC_CONSTRAINTS)
    assert _pki.TrustEntry("twice", constraints, b"").is_pinned
