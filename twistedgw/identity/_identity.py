"""Who is calling: the outcome of one client-certificate check.

Produced either by the TLS verification callback (source ``handshake``) or by
decoding and verifying a load balancer's header (source ``header``); consumed by
the policy. Everything here is immutable and free of I/O.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twistedgw._memo import remember
from twistedgw.identity import _reasons as reasons

#: Fingerprints by certificate object: a header's certificates are decoded once and the
#: same objects come back for every request that repeats the header (callers._decode),
#: and a handshake's verdict keeps its chain; an identity check per lookup, no hashing.
_FINGERPRINTS: dict[int, tuple[x509.Certificate, bytes]] = {}
_FINGERPRINTS_MAX = 4096


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding: the identity of a certificate."""
    known = _FINGERPRINTS.get(id(cert))
    if known is not None and known[0] is cert:
        return known[1]
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    # holds cert: its id is not reused meanwhile
    remember(_FINGERPRINTS, id(cert), (cert, digest), _FINGERPRINTS_MAX)
    return digest


class Outcome(enum.Enum):
    NONE = "none"
    VERIFIED = "verified"
    FAILED = "failed"


class Source(enum.Enum):
    HANDSHAKE = "handshake"
    HEADER = "header"


# An Enum member as a module constant for the per-request check: on Python 3.11 an
# attribute of an Enum class (``Outcome.VERIFIED``) goes through ``EnumType.__getattr__``'s
# slot, ~800 instructions a lookup (bench/authz_cost.py --callgrind); a global is a
# dict lookup.
_VERIFIED = Outcome.VERIFIED


@dataclass(frozen=True)
class ClientIdentity:
    """One client-certificate verdict.

    ``chain`` is leaf first; when ``outcome`` is VERIFIED it is the verified chain
    ending at a truststore entry, and ``trust_aliases`` names the truststore
    entries in it. When FAILED, ``reason`` says why in plain words and ``chain``
    holds what was presented (possibly empty).
    """

    source: Source
    outcome: Outcome
    chain: tuple[x509.Certificate, ...] = ()
    trust_aliases: frozenset[str] = frozenset()
    reason: str | None = None

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @functools.cached_property
    def subject(self) -> str | None:
        """The leaf's RFC 4514 subject, computed once per identity (not per request)."""
        leaf = self.leaf
        return leaf.subject.rfc4514_string() if leaf is not None else None

    @property
    def verified(self) -> bool:
        return self.outcome is _VERIFIED

    def leaf_sha256(self) -> str | None:
        leaf = self.leaf
        return fingerprint(leaf).hex() if leaf is not None else None



def no_certificate(source: Source = Source.HANDSHAKE) -> ClientIdentity:
    """The verdict on a caller that presented nothing: one immutable object per source,
    shared by every such connection (what is derived from it is shared too)."""
    return _NO_CERTIFICATE[source]


def failed(source: Source, reason: str, chain: tuple[x509.Certificate, ...] = ()) -> ClientIdentity:
    return ClientIdentity(source, Outcome.FAILED, chain, reason=reason)


_NO_CERTIFICATE = {
    source: ClientIdentity(source, Outcome.NONE, reason=reasons.NONE) for source in Source
}
