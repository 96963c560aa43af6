"""The server side of TLS: options, and the per-connection client-certificate record.

The handshake never fails because of a client certificate. OpenSSL's verify
callback records what it found and lets the handshake finish; the verdict is
given per API in HTTP, where the gateway can answer with a JSON error instead of
a TLS alert the caller cannot read.

A ``ServerTLS`` is immutable once built: reload builds a new one and swaps the
reference (pyOpenSSL forbids mutating a Context that a connection used).

With ``[[tls.sni]]`` entries it holds one Context per entry beside the default
one; the default Context's server-name callback switches a connection to its
entry's Context (server certificate, CA names) and sets whether that
connection's handshake asks for a client certificate at all.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import directlyProvides, implementer, providedBy

from twistedgw import _hosts, _twisted
from twistedgw.config import TlsConfig
from twistedgw.identity import (
    ClientIdentity,
    Outcome,
    Source,
    failed,
    fingerprint,
    no_certificate,
    reasons,
)
from twistedgw.tls._chains import (
    invalid,
    leaf_problem,
    pinned_problem,
    through_pinned,
    unreadable,
)
from twistedgw.tls._pki import KeyStore, TrustStore

log = Logger()

# OpenSSL X509_V_ERR_* codes, mapped onto the words the header path uses too.
_REASONS: dict[int, str] = {
    2: reasons.UNTRUSTED,  # unable to get issuer certificate
    9: reasons.NOT_YET_VALID,
    10: reasons.EXPIRED,
    18: reasons.UNTRUSTED,  # self-signed leaf not in the truststore
    19: reasons.UNTRUSTED,  # self-signed certificate in chain
    20: reasons.UNTRUSTED,  # unable to get local issuer certificate
    21: reasons.UNTRUSTED,  # unable to verify the first certificate
    23: reasons.REVOKED,
    24: reasons.INVALID,  # invalid CA certificate
    26: reasons.WRONG_PURPOSE,
    28: reasons.INVALID,  # certificate rejected
}


TLS_GROUPS = b"X25519:P-256:P-384"
"""Key exchange groups offered, as in Mozilla's intermediate and modern configurations
(OpenSSL's default adds X448 and P-521, which those configurations leave out)."""


def _set_groups(context: SSL.Context, groups: bytes) -> None:
    """Restrict the key exchange groups; pyOpenSSL has no public call for it."""
    _ffi, lib = _twisted.openssl()
    if lib.SSL_CTX_set1_curves_list(_twisted.ssl_ctx(context), groups) != 1:
        raise SSL.Error(f"OpenSSL refused the key exchange groups {groups.decode()}")


def _openssl_reason(errno: int) -> str:
    known = _REASONS.get(errno)
    if known is not None:
        return known
    try:
        ffi, lib = _twisted.openssl()  # the only way to OpenSSL's own words
        text = ffi.string(lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")
    except Exception:
        text = f"verification error {errno}"
    return f"{reasons.INVALID}: {text}"


@dataclass(slots=True)
class HandshakeRecord:
    """What the verify callback saw on one connection; mutated only during the handshake.

    One per connection for its whole life, hence slots (no per-instance dict), and no
    list of errors unless there is one."""

    owner: ServerTLS
    callback_ran: bool = False
    errors: list[tuple[int, int]] | None = None  # (errno, depth), in the order seen
    identity: ClientIdentity | None = None
    asked: bool = True  # whether this connection's handshake asked for a certificate


_RECORD = "_twistedgw_handshake"  # the attribute a TLS protocol keeps its record in


class HandshakeRecords:
    """TLS protocol -> its record, kept on the protocol itself (an attribute), so that it
    lives and goes with its connection: no weak-dictionary entry (a weak reference and a
    slot, ~0.1 KiB) per open connection. Shared across reloads: a connection made before a
    reload is judged by the ``ServerTLS`` that handshook it (the record's ``owner``).

    Once the verdict is computed (``ServerTLS.identity_for``) the attribute holds the
    verdict itself (shared by the connections of one verified chain) and the record, the
    handshake's alone, is gone: ``get`` then answers None."""

    @staticmethod
    def get(protocol: Any) -> HandshakeRecord | None:
        record = getattr(protocol, _RECORD, None)
        return record if type(record) is HandshakeRecord else None

    @staticmethod
    def put(protocol: Any, record: HandshakeRecord | ClientIdentity) -> None:
        setattr(protocol, _RECORD, record)


VERDICT_CACHE_BYTES = 8 * 1024 * 1024
"""What the verified verdicts kept for resumed sessions may cost, at most."""

FAILED_REASONS = 4096
"""How many failed handshakes' reasons are kept for resumed sessions, at most."""

FAILED_TTL = 60.0
"""Seconds a failed handshake's reason is kept for a session resumed from it."""

ISSUERS_KEPT = 256
"""How many CA certificates of verified chains are kept for judging resumed sessions."""

_CERT_OVERHEAD = 1024  # bytes a parsed certificate costs beyond its DER, estimated


class _VerdictCache:
    """Leaf fingerprint -> verdict from a full handshake, for resumed sessions.

    OpenSSL does not run the verify callback when a session is resumed, and a
    resumed session carries only the leaf. The leaf in a session ticket is
    authentic (the ticket is sealed with this context's key), so the verdict
    of the handshake that issued it stands until the certificate expires.

    Anyone can handshake, so nothing a failed handshake presented is kept: a
    verified verdict keeps the *verified* chain (leaf to truststore entry, not
    what the client sent besides), its cost is bounded in bytes, least
    recently used first out; a failed one leaves only its reason, keyed by the
    leaf's fingerprint, in a separate map bounded by count and time, so failed
    handshakes can neither grow memory nor evict a verified verdict.

    An evicted (or expired-from-the-failed-map) verdict is not a refusal: the
    session is judged again from its leaf (``ServerTLS._reverify``), with the CA
    certificates of chains verified earlier, kept here apart (``issuers``): a
    ticket lives longer than any bound this cache can keep.
    """

    def __init__(
        self,
        max_bytes: int = VERDICT_CACHE_BYTES,
        max_failed: int = FAILED_REASONS,
        failed_ttl: float = FAILED_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        # leaf fingerprint -> (cost, verdict, its verified chain's DER (leaf first), when
        # the first certificate of that chain expires)
        self._items: OrderedDict[
            bytes, tuple[int, ClientIdentity, tuple[bytes, ...], datetime]
        ] = OrderedDict()
        self._max_failed = max_failed
        self._failed_ttl = failed_ttl
        self._clock = clock
        self._failed: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        # DER -> the certificate: every CA certificate of a verified chain (the leaf's
        # intermediates and its anchor), for judging a resumed session's leaf again.
        # Only verified chains add to it, so a client cannot fill it; CAs are few.
        self._issuers: OrderedDict[bytes, crypto.X509] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items) + len(self._failed)

    @staticmethod
    def _cost(chain_der: tuple[bytes, ...]) -> int:
        return sum(len(der) + _CERT_OVERHEAD for der in chain_der)

    def put(
        self,
        identity: ClientIdentity,
        key: bytes | None = None,
        chain_der: tuple[bytes, ...] | None = None,
    ) -> None:
        """Keep ``identity``; ``key`` (the leaf's fingerprint) and ``chain_der`` (its
        chain's DER, leaf first) when the caller has them already."""
        leaf = identity.leaf
        if leaf is None:
            return
        if key is None:
            key = fingerprint(leaf)
        if not identity.verified:
            self._failed.pop(key, None)
            self._failed[key] = (self._clock() + self._failed_ttl, identity.reason or "")
            while len(self._failed) > self._max_failed:
                self._failed.popitem(last=False)
            return
        self._failed.pop(key, None)
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[0]
        if chain_der is None:
            chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in identity.chain)
        cost = self._cost(chain_der)
        if cost > self.max_bytes:
            return
        expires = min(c.not_valid_after_utc for c in identity.chain)
        self._items[key] = (cost, identity, chain_der, expires)
        for der in chain_der[1:]:
            if der in self._issuers:
                self._issuers.move_to_end(der)
            else:
                self._issuers[der] = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
                while len(self._issuers) > ISSUERS_KEPT:
                    self._issuers.popitem(last=False)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            _key, (evicted, _identity, _der, _expires) = self._items.popitem(last=False)
            self.bytes -= evicted

    def get(self, leaf: x509.Certificate) -> ClientIdentity | None:
        return self.get_by_key(fingerprint(leaf), leaf)

    def issuers(self) -> list[crypto.X509]:
        """The CA certificates of the chains verified so far, most recent last."""
        return list(self._issuers.values())

    def get_by_key(
        self, key: bytes, leaf: x509.Certificate | Callable[[], x509.Certificate]
    ) -> ClientIdentity | None:
        """``get`` by the leaf's fingerprint; ``leaf`` may be a function that parses it,
        called only when a failed verdict must name it."""
        entry = self._items.get(key)
        if entry is None:
            return self._failed_verdict(key, leaf)
        cost, identity, _der, expires = entry
        if expires < datetime.now(UTC):
            del self._items[key]
            self.bytes -= cost
            return None
        self._items.move_to_end(key)
        return identity

    def same_chain(self, key: bytes, chain_der: tuple[bytes, ...]) -> ClientIdentity | None:
        """The verified verdict for leaf ``key`` if its verified chain is ``chain_der``
        (DER, leaf first), else None.

        A full handshake whose chain OpenSSL just verified to this same chain would
        compute this very verdict again (the chain, the truststore and the leaf rules
        decide it); sharing it saves the parsing per connection, and each open
        connection's copy of the chain."""
        entry = self._items.get(key)
        if entry is None:
            return None
        _cost, identity, cached_der, _expires = entry
        if cached_der != chain_der:
            return None
        self._items.move_to_end(key)
        return identity

    def _failed_verdict(
        self, key: bytes, leaf: x509.Certificate | Callable[[], x509.Certificate]
    ) -> ClientIdentity | None:
        entry = self._failed.get(key)
        if entry is None:
            return None
        expires, reason = entry
        if self._clock() >= expires:
            del self._failed[key]
            return None
        if not isinstance(leaf, x509.Certificate):
            leaf = leaf()
        return failed(Source.HANDSHAKE, reason, (leaf,))


@dataclass(frozen=True)
class SniServer:
    """What one ``[[tls.sni]]`` entry needs here: its hosts, its certificate and key
    (loaded), whether its handshakes ask for a client certificate (``auto`` already
    decided by the caller) and whether the request names the truststore's CAs."""

    hosts: tuple[str, ...]
    keystore: KeyStore
    ask: bool = True
    advertise_ca_names: bool = True


@dataclass(frozen=True)
class _Served:
    """One Context and how its connections ask for a client certificate."""

    context: SSL.Context
    ask: bool
    hosts: tuple[str, ...] = ()


def sni_entry(entries: Sequence[tuple[str, ...]], host: str | None) -> int:
    """The index of the entry whose hosts match ``host`` (_hosts.py spelling), else -1:
    the default. Entries' hosts never overlap (config.py), so the first match is the one."""
    if host is not None:
        for i, patterns in enumerate(entries):
            if _hosts.any_matches(patterns, host):
                return i
    return -1


def server_name(connection: Any) -> str | None:
    """The SNI a TLS connection's client sent, in _hosts.py's spelling; None if none
    (or one that is not a host name, which no entry can match either)."""
    try:
        raw = connection.get_servername()
    except Exception:
        return None
    if not raw:
        return None
    try:
        return _hosts.name(raw.decode("ascii"))
    except (UnicodeDecodeError, _hosts.BadHost):
        return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server TLS connections that record each client certificate's outcome."""

    def __init__(
        self,
        settings: TlsConfig,
        keystore: KeyStore,
        truststore: TrustStore | None,
        records: HandshakeRecords | None = None,
        *,
        ask: bool = True,
        sni: Sequence[SniServer] = (),
    ) -> None:
        self.keystore = keystore
        self.truststore = truststore
        # Shared across reloads: a connection made before a reload is judged by
        # the ServerTLS that handshook it.
        self._records = records if records is not None else HandshakeRecords()
        self._verdicts = _VerdictCache()
        self._resume_store: crypto.X509Store | None = None  # made by _reverify, once
        self._context = self._make_context(
            settings, keystore, truststore, settings.advertise_ca_names
        )
        self._default = _Served(self._context, ask and truststore is not None)
        self._entries = tuple(
            _Served(
                self._make_context(settings, e.keystore, truststore, e.advertise_ca_names),
                e.ask and truststore is not None,
                e.hosts,
            )
            for e in sni
        )
        self.sni_hosts = tuple(e.hosts for e in self._entries)
        if truststore is not None:
            # One verify callback per Context, not one per connection: pyOpenSSL makes a
            # cffi callback (an executable trampoline) for every set_verify, which cost
            # each handshake its allocation and each open connection its memory. The
            # callback finds the connection's record through the connection's app data.
            self._context.set_verify(_mode(self._default.ask), self._verify)
            for served in self._entries:
                served.context.set_verify(_mode(served.ask), self._verify)
        if self._entries:
            self._context.set_tlsext_servername_callback(self._switch)

    def _switch(self, connection: SSL.Connection) -> None:
        """The server-name callback: move ``connection`` to its SNI's entry. A client
        without SNI, or naming no entry's host, stays on the default."""
        try:
            index = sni_entry(self.sni_hosts, server_name(connection))
            if index < 0:
                return
            served = self._entries[index]
            connection.set_context(served.context)
            record = self._records.get(connection.get_app_data())
            if record is not None and record.asked != served.ask:
                # OpenSSL keeps the verify mode the connection got from the default
                # Context (SSL_set_SSL_CTX does not copy it): set this entry's.
                record.asked = served.ask
                connection.set_verify(_mode(served.ask), self._verify)
        except Exception:  # an exception here would abort the handshake with no trace
            log.failure("choosing the TLS server certificate by SNI failed")

    @staticmethod
    def _make_context(
        settings: TlsConfig,
        keystore: KeyStore,
        truststore: TrustStore | None,
        advertise_ca_names: bool = True,
    ) -> SSL.Context:
        versions = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
        lowest = min(settings.protocols)
        highest = max(settings.protocols)
        # The trust anchors are the issuers only: a pinned entry is never one, so
        # nothing it signed verifies (it passes as itself, in _evaluate). The verify
        # mode and callback are set by ServerTLS, per Context.
        options = ssl.CertificateOptions(
            privateKey=keystore.key,  # type: ignore[arg-type]
            certificate=keystore.cert,  # type: ignore[arg-type]
            extraCertChain=list(keystore.chain),  # type: ignore[arg-type]
            verify=False,
            requireCertificate=False,
            raiseMinimumTo=versions[lowest],
            lowerMaximumSecurityTo=versions[highest] if highest != "TLSv1.3" else None,
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(settings.ciphers),
            enableSessions=settings.session_tickets,
            enableSessionTickets=settings.session_tickets,
        )
        context: SSL.Context = options.getContext()
        # OpenSSL frees a connection's record buffers (~34 KiB) while it has nothing
        # to read or write: an idle connection holds none. Twisted's options set it
        # today; said here so the gateway does not depend on that default.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        # No renegotiation, client-initiated or other (OpenSSL 3 refuses a client's by
        # default; said here): a connection's callbacks all run in its one handshake,
        # which lets each drop what only they use (ServerTLSProtocol).
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        context.set_alpn_select_callback(choose_alpn)
        _set_groups(context, TLS_GROUPS)
        if settings.session_tickets:
            # Resume by ticket only: OpenSSL's internal session cache (20,480 sessions
            # by default, each with the chain the client presented) is what a client
            # that refuses tickets would otherwise fill.
            context.set_session_cache_mode(SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL)
        if truststore is not None:
            store = context.get_cert_store()
            assert store is not None
            _trust_issuers(store, truststore)
            context.set_verify_depth(9)  # what CertificateOptions(verify=True) sets
            # Name acceptable CAs in the CertificateRequest so clients pick the right
            # cert (advertise_ca_names = false sends an empty list).
            if advertise_ca_names:
                for cert in truststore.certificates:
                    context.add_client_ca(cert)  # pyOpenSSL X509 here is deprecated
        return context

    # IOpenSSLServerConnectionCreator
    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self.truststore is not None:
            # The verify mode and callback come from the Context (see __init__).
            self._records.put(tlsProtocol, HandshakeRecord(self, asked=self._default.ask))
        return connection

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """The Contexts' verify callback: record into the connection's record, never
        fail the handshake (the verdict is given per API, in HTTP)."""
        record = self._records.get(conn.get_app_data())
        if record is not None:
            # Record now: once we return True OpenSSL clears the error.
            record.callback_ran = True
            if not ok:
                if record.errors is None:
                    record.errors = []
                record.errors.append((errno, depth))
        return True

    def identity_for(self, tls_transport: Any) -> ClientIdentity:
        """The client-certificate verdict of the connection behind ``tls_transport``.

        ``tls_transport`` is the ``TLSMemoryBIOProtocol`` (``request.channel.transport``).
        Computed once per connection, after the handshake.
        """
        kept = getattr(tls_transport, _RECORD, None)
        if type(kept) is ClientIdentity:
            return kept
        record = self._records.get(tls_transport)
        if record is None:
            return no_certificate()
        if record.identity is None:
            try:
                record.identity = record.owner._evaluate(tls_transport.getHandle(), record)
            except ValueError as e:
                # OpenSSL took a certificate that cryptography refuses to load (an
                # explicitly encoded critical FALSE, a BOOLEAN TRUE of 0x01, a '@' in a
                # PrintableString): anyone can present one, so it is a verdict, not a 500.
                record.identity = failed(Source.HANDSHAKE, invalid(str(e)))
        identity = record.identity
        if getattr(tls_transport, "_handshakeDone", False):
            # The record was the handshake's: the connection keeps the verdict only.
            HandshakeRecords.put(tls_transport, identity)
        return identity

    def _evaluate(self, conn: SSL.Connection, record: HandshakeRecord) -> ClientIdentity:
        if not record.asked:
            # A session resumed from an entry that asked carries that certificate; a
            # full handshake here would have none (resumption never carries a verdict
            # to an entry that does not ask).
            return no_certificate()
        # The leaf as pyOpenSSL has it: its DER and fingerprint find a cached verdict
        # without parsing it into a cryptography certificate first.
        peer_x509 = conn.get_peer_certificate()
        if peer_x509 is None:
            return no_certificate()
        peer_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer_x509)
        key = hashlib.sha256(peer_der).digest()

        def parse_peer() -> x509.Certificate:
            return x509.load_der_x509_certificate(peer_der)

        if not record.callback_ran:
            # Resumed: OpenSSL ran no verification. The verdict of the handshake that
            # issued the ticket, while this cache has it; else judged again below.
            cached = self._verdicts.get_by_key(key, parse_peer)
            if cached is not None:
                return cached
        assert self.truststore is not None
        pinned = self.truststore.pinned_entry(key)
        if pinned is not None:
            # Byte-identical to a pinned entry: trusted as itself, whatever OpenSSL made
            # of it (no anchor signed it) and whatever chain came with it.
            peer = parse_peer()
            problem = pinned_problem(peer, datetime.now(UTC))
            if problem is not None:
                identity = failed(Source.HANDSHAKE, problem, (peer,))
            else:
                identity = ClientIdentity(
                    Source.HANDSHAKE, Outcome.VERIFIED, (peer,), frozenset({pinned.alias})
                )
            identity = _readable(identity)
            self._verdicts.put(identity)
            return identity
        errno: int | None
        if not record.callback_ran:
            verified_der, errno = self._reverify(conn, peer_x509)
        elif not record.errors:
            verified_der = tuple(
                crypto.dump_certificate(crypto.FILETYPE_ASN1, c)
                for c in conn.get_verified_chain() or ()
            )
            errno = None
            shared = self._verdicts.same_chain(key, verified_der)
            if shared is not None:
                return shared
        else:
            verified_der = ()
            errno, _depth = record.errors[0]
        if errno is None:
            # A chain this cache has not seen (a new client, or one evicted): each
            # certificate parsed once from the DER just dumped, which is also the key and
            # the cache's copy; what the client sent is parsed only for a refusal.
            chain = tuple(x509.load_der_x509_certificate(der) for der in verified_der)
            problem = leaf_problem(chain[0]) if chain else reasons.UNTRUSTED
            if problem is None and through_pinned(self.truststore, chain):
                problem = reasons.UNTRUSTED
            if problem is None:
                identity = ClientIdentity(
                    Source.HANDSHAKE,
                    Outcome.VERIFIED,
                    chain,
                    self.truststore.aliases_in_chain(chain),
                )
                identity = _readable(identity)
                self._verdicts.put(identity, key, verified_der)
                return identity
        else:
            problem = _openssl_reason(errno)
        # Refused: the verdict names what the client presented (its chain as sent).
        peer = parse_peer()
        sent = conn.get_peer_cert_chain(as_cryptography=True) or []
        identity = _readable(
            failed(Source.HANDSHAKE, problem, (peer, *(c for c in sent if c != peer)))
        )
        self._verdicts.put(identity, key)
        return identity

    def _reverify(
        self, conn: SSL.Connection, peer: crypto.X509
    ) -> tuple[tuple[bytes, ...], int | None]:
        """Verify a resumed session's leaf again, as its full handshake did: (the verified
        chain's DER, leaf first; None) or ((), the first OpenSSL error).

        A ticket carries the leaf, not the chain the client sent: the intermediates
        come from the chains verified before (a ticket is only issued after one).
        The store is the truststore's issuers with the handshake's flags and the TLS
        client purpose, so the same chains pass and fail for the same reasons."""
        store = self._resume_store
        if store is None:
            assert self.truststore is not None
            store = crypto.X509Store()
            _trust_issuers(store, self.truststore)
            _ffi, lib = _twisted.openssl()
            lib.X509_STORE_set_purpose(_twisted.x509_store(store), lib.X509_PURPOSE_SSL_CLIENT)
            self._resume_store = store
        untrusted = [*(conn.get_peer_cert_chain() or ()), *self._verdicts.issuers()]
        try:
            verified = crypto.X509StoreContext(store, peer, untrusted).get_verified_chain()
        except crypto.X509StoreContextError as e:
            return (), int(e.errors[0])
        return tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in verified), None


def _trust_issuers(store: crypto.X509Store, truststore: TrustStore) -> None:
    """Make ``store`` trust the truststore's issuers, as every handshake and every
    resumed session's second judgement (``ServerTLS._reverify``) verify against them."""
    for issuer in truststore.issuers:
        store.add_cert(crypto.X509.from_cryptography(issuer))
    # An issuer may be an intermediate CA, trusted without its root.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)


def _readable(identity: ClientIdentity) -> ClientIdentity:
    """``identity``, or a failed one without certificates when some name in its chain
    cannot be read (``_chains.unreadable``)."""
    problem = unreadable(identity.chain)
    return identity if problem is None else failed(identity.source, problem)


def offers_h2(tls_protocol: Any) -> bool:
    """Whether the listener that accepted ``tls_protocol`` has ``http2 = true``.

    Every listener shares the TLS contexts (one per ``[[tls.sni]]`` entry), so the
    choice is made per connection, from the factory the listener wraps."""
    factory = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    return bool(getattr(factory, "http2", False))


def choose_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    """The ALPN callback: h2 where the listener offers it and the client does, else
    http/1.1; a client offering neither negotiates nothing (and speaks HTTP/1.1)."""
    if b"h2" in offered and offers_h2(conn.get_app_data()):
        return b"h2"
    if b"http/1.1" in offered:
        return b"http/1.1"
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def _mode(ask: bool) -> int:
    """The verify mode: a CertificateRequest (never failing the handshake) or none."""
    return SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE if ask else SSL.VERIFY_NONE


class ServerTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, minus a per-connection cost that leaves nothing behind.

    ``TLSMemoryBIOProtocol.makeConnection`` declares the transport's interfaces on
    the protocol one at a time (each ``directlyProvides`` replacing the one before,
    nine for a TCP server transport), then ``ProtocolWrapper.makeConnection`` declares
    them all at once: the first pass was ~5% of a resumed connection's CPU (py-spy,
    CHANGELOG.md 0.4.0). This does what Twisted's does with one declaration.

    Once the handshake is done it drops pyOpenSSL's copy of the ALPN answer (memory per
    open connection).

    It is a ``TLSMemoryBIOProtocol``, not Twisted's default ``BufferingTLSTransport``:
    every write is encrypted at once, without the zero-delay timer that aggregates
    small writes (5.4% of keep-alive CPU), since the HTTP front's writes are already
    whole (a response head with its first body bytes, a chunk, an end).
    """

    def makeConnection(self, transport: Any) -> None:
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)  # declares, then the app's
        else:
            directlyProvides(self, providedBy(transport))
        self._checkHandshakeStatus()

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()
        if self._handshakeDone:
            # pyOpenSSL keeps the ALPN callback's answer (a list and two C buffers) on
            # the connection for its whole life; OpenSSL copied the chosen protocol
            # when the callback returned, so once the handshake is done it is dead
            # weight on every open connection.
            connection = self._tlsConnection
            if getattr(connection, "_alpn_select_callback_args", None) is not None:
                connection._alpn_select_callback_args = None
            # pyOpenSSL's SSL* -> Connection map (a weak dictionary: a weak reference
            # and a slot per connection) serves its callbacks only; every one of ours
            # (verify, server name, ALPN) runs during the handshake, and there is no
            # other: the contexts refuse renegotiation (SSL.OP_NO_RENEGOTIATION).
            ssl_object = getattr(connection, "_ssl", None)
            if ssl_object is not None:
                SSL.Connection._reverse_mapping.pop(ssl_object, None)
            # Twisted's buffer of writes made before the handshake finished, emptied
            # now: an empty list per open connection; one is made again if needed.
            if not self._appSendBuffer:
                self._appSendBuffer = ()  # type: ignore[assignment]

    def _bufferedWrite(self, octets: bytes) -> None:
        if not isinstance(self._appSendBuffer, list):  # () once the handshake is done
            self._appSendBuffer = []
        super()._bufferedWrite(octets)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building ``ServerTLSProtocol``: the listeners' TLS."""

    protocol = ServerTLSProtocol
