"""Verify certificates from a load balancer's header as strictly as the TLS handshake.

A header certificate was checked (if at all) by someone else's configuration, so
the gateway re-verifies it against its own truststore: validity period,
clientAuth purpose and a path to a trusted CA, or a pinned leaf. Path building is
``cryptography.x509.verification``'s, not ours. The failure reasons use the same
words as the handshake path, so operators see one vocabulary whichever path
judged.

Verdicts are cached by the fingerprints of the presented certificates, because
a load balancer sends the same few chains on every request.
"""

from __future__ import annotations

import datetime
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

# The handshake's words (tls/_server.py uses the same module), re-exported for callers.
from twistedgw.identity import EXPIRED as EXPIRED
from twistedgw.identity import INVALID as INVALID
from twistedgw.identity import NOT_YET_VALID as NOT_YET_VALID
from twistedgw.identity import UNTRUSTED as UNTRUSTED
from twistedgw.identity import WRONG_PURPOSE as WRONG_PURPOSE
from twistedgw.identity import ClientIdentity, Outcome, Source, failed, fingerprint, no_certificate
from twistedgw.tls._pki import TrustStore

FAILED_TTL = 60.0
"""Seconds a FAILED verdict is cached: long enough to absorb a retry storm, short
enough that fixing the truststore or the client takes effect promptly."""

CA_AS_CLIENT = f"{INVALID}: basicConstraints.cA must not be asserted in an EE certificate"
"""A CA certificate presented as a client's: the words cryptography's EE policy uses."""

_NOISE = "(encountered processing <Certificate("
_NOISE_END = ")>)"


def leaf_problem(leaf: x509.Certificate) -> str | None:
    """Why ``leaf`` may not be a client certificate whoever verified its chain, or None.

    The one place for the end-entity rules that OpenSSL's client verification
    leaves out (it accepts a CA certificate as a client's, and a trusted CA
    presented by itself under PARTIAL_CHAIN); the handshake path (tls/_server.py) and
    the header path (here) both ask it, so they refuse the same leaves with
    the same words.
    """
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except Exception as e:  # malformed extensions: fail closed
        return invalid(str(e))
    return CA_AS_CLIENT if constraints.ca else None


def pinned_problem(leaf: x509.Certificate, at: datetime.datetime) -> str | None:
    """Why a leaf byte-identical to a pinned truststore entry may not pass, or None.

    A pinned certificate is trusted as itself: no chain, no CA-leaf rule (a pinned
    entry may assert ``CA:TRUE``, as ``openssl req -x509`` makes them). What still
    applies: its validity period, no critical extension nobody understands, and a
    clientAuth purpose if it states purposes. The handshake path (tls/_server.py) and
    the header path (here) both ask this.
    """
    period = _period_reason(leaf, at)
    if period is not None:
        return period
    try:
        extensions = leaf.extensions
        for ext in extensions:
            if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
                return invalid(f"unsupported critical extension {ext.oid.dotted_string}")
        try:
            eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
    except Exception as e:
        return invalid(str(e))
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return WRONG_PURPOSE
    return None


def unreadable(certs: Sequence[x509.Certificate]) -> str | None:
    """Why the subject or issuer of one of ``certs`` cannot be read, or None.

    ``cryptography`` parses names lazily and more strictly than OpenSSL: a certificate
    whose subject is a TeletexString of control bytes, or an IA5String with a byte
    above 0x7F, loads and even verifies, then raises wherever its subject is read
    (the access log, the mutual_ssl principal, identity headers). Anyone can present
    one, so a verdict never carries such a certificate: it is refused as invalid,
    with no chain, before it is cached. Asked once per verdict (both paths cache)."""
    for cert in certs:
        try:
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
        except ValueError as e:
            return invalid(str(e))
    return None


MAX_CHAIN_DEPTH = 4
"""Intermediates a header chain may climb through to an issuer: client chains have one
or two; each level is signatures to check."""

MAX_RSA_BITS = 4096
"""RSA keys larger than this in a header chain are refused before any signature is
checked: one 16,384-bit verification costs milliseconds."""


def _heavy_key(certs: Sequence[x509.Certificate]) -> str | None:
    """Why a presented certificate's key is too costly to verify with, or None."""
    for cert in certs:
        try:
            key = cert.public_key()
        except Exception as e:  # an unreadable key: fail closed
            return invalid(str(e))
        if isinstance(key, rsa.RSAPublicKey) and key.key_size > MAX_RSA_BITS:
            return invalid(f"RSA key of {key.key_size} bits (at most {MAX_RSA_BITS})")
    return None


def through_pinned(truststore: TrustStore, chain: tuple[x509.Certificate, ...]) -> bool:
    """Whether a verified chain passes through a pinned entry above its leaf (one that a
    trusted CA also certified as a CA): it vouches for nothing it signed, on either path."""
    return any(truststore.pinned_entry(fingerprint(c)) is not None for c in chain[1:])


def _ee_policy() -> ExtensionPolicy:
    """The WebPKI end-entity policy, except that a SAN is optional.

    Client certificates often identify the caller by subject alone, and the
    handshake path (OpenSSL) does not require a SAN either.
    """
    return ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )


class ChainVerifier:
    """Verifies presented chains (leaf first) against one truststore, with a verdict cache.

    Not thread-safe: it is used from the reactor thread only.
    """

    def __init__(
        self,
        truststore: TrustStore,
        *,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.time,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        self._truststore = truststore
        # Untrusted: offered to path building after what the header itself carried.
        self._intermediates = list(intermediates)
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[bytes, ...], tuple[float, ClientIdentity]] = OrderedDict()
        # Pinned entries are never anchors: each passes itself and nothing it signed.
        issuers = truststore.issuers
        self._store = Store(issuers) if issuers else None
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()
        self._ee_policy = _ee_policy()
        self.hits = 0
        self.misses = 0

    @property
    def cached(self) -> int:
        """How many verdicts the cache holds (expired ones included until touched)."""
        return len(self._cache)

    def verify(self, certs: tuple[x509.Certificate, ...]) -> ClientIdentity:
        """The verdict on ``certs`` (leaf first) as a ``Source.HEADER`` identity."""
        if not certs:
            return no_certificate(Source.HEADER)
        now = self._clock()
        key = tuple(fingerprint(c) for c in certs)
        entry = self._cache.get(key)
        if entry is not None:
            expires, identity = entry
            if now < expires:
                self._cache.move_to_end(key)
                self.hits += 1
                return identity
            del self._cache[key]
        self.misses += 1
        identity = self._verify(certs, now)
        if self._cache_size > 0:
            self._cache[key] = (self._expiry(identity, certs[0], now), identity)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    def _expiry(self, identity: ClientIdentity, leaf: x509.Certificate, now: float) -> float:
        if identity.outcome is Outcome.VERIFIED:
            return min(c.not_valid_after_utc.timestamp() for c in identity.chain)
        expires = now + FAILED_TTL
        if identity.reason == NOT_YET_VALID:  # it may become valid sooner
            expires = min(expires, leaf.not_valid_before_utc.timestamp())
        return expires

    def _verify(self, certs: tuple[x509.Certificate, ...], now: float) -> ClientIdentity:
        problem = unreadable(certs)
        if problem is not None:
            return failed(Source.HEADER, problem)
        leaf = certs[0]
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        pinned = self._truststore.pinned_entry(fingerprint(leaf))
        if pinned is not None:  # itself, whatever else came with it
            problem = pinned_problem(leaf, at)
            if problem is not None:
                return failed(Source.HEADER, problem, certs)
            return ClientIdentity(
                Source.HEADER, Outcome.VERIFIED, (leaf,), frozenset({pinned.alias})
            )
        # Checked first and by hand so that the reason is precise, as OpenSSL's is.
        period = _period_reason(leaf, at)
        if period is not None:
            return failed(Source.HEADER, period, certs)
        problem = leaf_problem(leaf)
        if problem is not None:
            return failed(Source.HEADER, problem, certs)
        if self._store is None:
            return failed(Source.HEADER, UNTRUSTED, certs)
        heavy = _heavy_key(certs)
        if heavy is not None:
            return failed(Source.HEADER, heavy, certs)
        # A pinned certificate validates no chain, not even as an intermediate; and one
        # certificate per subject: same-named intermediates (free to make) made path
        # building try every order of them, ~100 signature checks for nine (#22, 10 ms).
        offered: list[x509.Certificate] = []
        subjects: set[x509.Name] = set()
        for c in certs[1:]:
            if c.subject in subjects or self._truststore.pinned_entry(fingerprint(c)):
                continue
            subjects.add(c.subject)
            offered.append(c)
        try:
            verifier = self._verifier(at)
            chain = tuple(verifier.verify(leaf, [*offered, *self._intermediates]).chain)
        except VerificationError as e:
            return failed(Source.HEADER, self._reason(str(e), certs, at), certs)
        except Exception as e:  # malformed extensions etc.: fail closed, never crash
            return failed(Source.HEADER, invalid(str(e)), certs)
        if through_pinned(self._truststore, chain):
            return failed(Source.HEADER, UNTRUSTED, certs)
        return ClientIdentity(
            Source.HEADER, Outcome.VERIFIED, chain, self._truststore.aliases_in_chain(chain)
        )

    def _verifier(self, at: datetime.datetime) -> ClientVerifier:
        assert self._store is not None
        return (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )

    def _reason(
        self, message: str, certs: tuple[x509.Certificate, ...], at: datetime.datetime
    ) -> str:
        """Map cryptography's message onto the handshake's words."""
        lowered = message.lower()
        if "required eku not found" in lowered:
            return WRONG_PURPOSE
        if "not valid at validation time" in lowered:
            # The leaf was valid, so an intermediate or an anchor is not.
            for cert in (*certs[1:], *self._truststore.issuers):
                period = _period_reason(cert, at)
                if period is not None:
                    return period
        if "all candidates exhausted with no interior errors" in lowered:
            return UNTRUSTED
        return invalid(message)


def _period_reason(cert: x509.Certificate, at: datetime.datetime) -> str | None:
    if at > cert.not_valid_after_utc:
        return EXPIRED
    if at < cert.not_valid_before_utc:
        return NOT_YET_VALID
    return None


def invalid(detail: str) -> str:
    """``INVALID`` with cryptography's detail, trimmed to one readable line."""
    detail = _without_noise(detail)
    for prefix in ("validation failed: ", "candidates exhausted: "):
        if detail.startswith(prefix):
            detail = detail[len(prefix) :]
    detail = " ".join(detail.split())[:200]
    return f"{INVALID}: {detail}" if detail else INVALID


def _without_noise(detail: str) -> str:
    """``detail`` without cryptography's ``(encountered processing <Certificate(...)>)``
    asides (and the spaces before them).

    By ``str.find``, not a regex: the certificate's subject is the caller's text, and
    ``\\s*\\(...`` searched at every position of a long run of spaces was quadratic.
    """
    out = []
    pos = 0
    while (start := detail.find(_NOISE, pos)) >= 0:
        end = detail.find(_NOISE_END, start + len(_NOISE))
        if end < 0:
            break
        out.append(detail[pos:start].rstrip())
        pos = end + len(_NOISE_END)
    out.append(detail[pos:])
    return "".join(out)
