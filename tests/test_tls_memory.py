"""ServerTLS in memory (twisted.test.iosim): per-connection verdicts without sockets.

Each client presents one dev-PKI certificate over an in-memory TLS connection;
the handshake always completes (application data flows), and the server
records verified / failed (with the reason) / none for that connection only.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test import iosim
from zope.interface import implementer

from twistedgw import _twisted
from twistedgw.config import TlsConfig
from twistedgw.identity import Outcome
from twistedgw.identity import _reasons as reasons
from twistedgw.testing import devpki
from twistedgw.testing.devpki import DevPki
from twistedgw.tls import CA_AS_CLIENT, ServerTLS
from twistedgw.tls import _pki as pkimod
from twistedgw.tls._server import ServerTLSFactory, ServerTLSProtocol, SniServer


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@pytest.fixture(scope="module")
def server_tls(pki: DevPki) -> ServerTLS:
    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    truststore = pkimod.load_truststore(pki.truststore_dir)
    return ServerTLS(TlsConfig(), keystore, truststore)


def client_options(pki: DevPki, client: str | None) -> Any:
    trust = [crypto.X509.from_cryptography(pki.authorities["server-root"].cert)]
    if client is None:
        return ssl.CertificateOptions(verify=True, caCerts=trust)
    issued = pki.issued[client]
    return ssl.CertificateOptions(
        privateKey=issued.key,
        certificate=issued.cert,
        extraCertChain=list(issued.chain),
        verify=True,
        caCerts=trust,
    )


def handshake(
    server_tls: ServerTLS, pki: DevPki, client: str | None
) -> tuple[TLSMemoryBIOProtocol, Collect]:
    """An in-memory TLS connection; returns the server's TLS protocol and its app protocol."""
    return connect(server_tls, client_options(pki, client))


def connect(server_tls: ServerTLS, options: Any) -> tuple[TLSMemoryBIOProtocol, Collect]:
    _client, server_proto, server_app = connect_pair(server_tls, options)
    return server_proto, server_app


def connect_pair(
    server_tls: ServerTLS, options: Any
) -> tuple[TLSMemoryBIOProtocol, TLSMemoryBIOProtocol, Collect]:
    """``connect``, with the client's TLS protocol too (first)."""
    server_app = Collect()
    client_app = Collect()
    # The clock drives TLSMemoryBIOFactory's write aggregation; the pump advances it.
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_tls, False, Factory.forProtocol(lambda: server_app), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        options, True, Factory.forProtocol(lambda: client_app), clock=clock
    )
    client_proto, server_proto, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    client_proto.write(b"hello")
    pump.flush()
    server_proto.write(b"hi")
    pump.flush()
    assert server_app.data == b"hello", "the handshake did not complete"
    assert client_app.data == b"hi"
    return client_proto, server_proto, server_app


@pytest.mark.parametrize(
    ("client", "outcome", "reason", "aliases"),
    [
        ("partner-app", Outcome.VERIFIED, None, {"partner-root"}),
        ("partner-direct", Outcome.VERIFIED, None, {"partner-root"}),
        ("partner-rsa", Outcome.VERIFIED, None, {"partner-root"}),
        ("other-app", Outcome.VERIFIED, None, {"other-root"}),
        ("pinned", Outcome.VERIFIED, None, {"pinned-client"}),
        ("expired", Outcome.FAILED, reasons.EXPIRED, set()),
        ("not-yet-valid", Outcome.FAILED, reasons.NOT_YET_VALID, set()),
        ("intruder", Outcome.FAILED, reasons.UNTRUSTED, set()),
        ("server-only", Outcome.FAILED, reasons.WRONG_PURPOSE, set()),
        ("ca-as-client", Outcome.FAILED, CA_AS_CLIENT, set()),
        (None, Outcome.NONE, reasons.NONE, set()),
    ],
)
def test_records_outcome(
    server_tls: ServerTLS,
    pki: DevPki,
    client: str | None,
    outcome: Outcome,
    reason: str | None,
    aliases: set[str],
) -> None:
    server_proto, _app = handshake(server_tls, pki, client)
    identity = server_tls.identity_for(server_proto)
    assert identity.outcome is outcome
    assert identity.reason == reason
    assert identity.trust_aliases == aliases
    if client is not None:
        assert identity.leaf == pki.issued[client].cert
    if outcome is Outcome.VERIFIED:
        # The aliases the handshake path finds from the chain's DER are the truststore's.
        assert identity.trust_aliases == server_tls.truststore.aliases_in_chain(  # type: ignore[union-attr]
            identity.chain
        )
        # The verified chain ends at the truststore entry.
        assert pkimod.fingerprint(identity.chain[-1]) in {
            pkimod.fingerprint(c)
            for c in server_tls.truststore.certificates  # type: ignore[union-attr]
        }
    # Asking again gives the same (computed once) answer.
    assert server_tls.identity_for(server_proto) is identity


def test_verdicts_are_per_connection(server_tls: ServerTLS, pki: DevPki) -> None:
    """Interleaved connections with different certificates never see each other's verdict."""
    good, _ = handshake(server_tls, pki, "partner-app")
    bad, _ = handshake(server_tls, pki, "expired")
    none, _ = handshake(server_tls, pki, None)
    good2, _ = handshake(server_tls, pki, "pinned")
    assert server_tls.identity_for(bad).reason == reasons.EXPIRED
    assert server_tls.identity_for(none).outcome is Outcome.NONE
    assert server_tls.identity_for(good).trust_aliases == {"partner-root"}
    assert server_tls.identity_for(good2).trust_aliases == {"pinned-client"}
    assert server_tls.identity_for(bad).leaf == pki.issued["expired"].cert


def test_without_intermediate_the_chain_fails(server_tls: ServerTLS, pki: DevPki) -> None:
    """partner-app verifies only through the intermediate the client sends."""
    issued = pki.issued["partner-app"]
    trust = [crypto.X509.from_cryptography(pki.authorities["server-root"].cert)]
    options = ssl.CertificateOptions(
        privateKey=issued.key, certificate=issued.cert, verify=True, caCerts=trust
    )
    server_proto, _app = connect(server_tls, options)
    identity = server_tls.identity_for(server_proto)
    assert identity.outcome is Outcome.FAILED
    assert identity.reason == reasons.UNTRUSTED


def test_unknown_connection_has_no_certificate(server_tls: ServerTLS) -> None:
    assert server_tls.identity_for(Protocol()).outcome is Outcome.NONE


def test_leaf_is_a_cryptography_certificate(server_tls: ServerTLS, pki: DevPki) -> None:
    server_proto, _ = handshake(server_tls, pki, "partner-rsa")
    assert isinstance(server_tls.identity_for(server_proto).leaf, x509.Certificate)


def fresh_server_tls(pki: DevPki, **kwargs: Any) -> ServerTLS:
    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    truststore = pkimod.load_truststore(pki.truststore_dir)
    return ServerTLS(TlsConfig(), keystore, truststore, **kwargs)


def test_every_context_releases_buffers_and_verifies_from_the_context(pki: DevPki) -> None:
    """Idle connections hold no record buffers (MODE_RELEASE_BUFFERS), and the verify
    mode and callback are the Context's (SNI entries' included), not set per connection."""
    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    tls = fresh_server_tls(
        pki, sni=[SniServer(("quiet.example",), keystore, ask=False),
                  SniServer(("asks.example",), keystore, ask=True)]
    )
    asks = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    contexts = [tls._context, *(served.context for served in tls._entries)]
    assert [c.get_verify_mode() for c in contexts] == [asks, SSL.VERIFY_NONE, asks]
    for context in contexts:  # unused yet, so set_mode(0) may read the mode
        assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


def test_no_verify_callback_is_made_per_connection(
    pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyOpenSSL makes a cffi callback per ``set_verify``: a connection that stays on
    its Context's verify settings must not pay for one; its verdict is still its own."""
    tls = fresh_server_tls(pki)
    calls: list[int] = []
    original = SSL.Connection.set_verify

    def counting(self: SSL.Connection, mode: int, callback: Any = None) -> None:
        calls.append(mode)
        original(self, mode, callback)

    monkeypatch.setattr(SSL.Connection, "set_verify", counting)
    good, _ = handshake(tls, pki, "partner-app")
    bad, _ = handshake(tls, pki, "intruder")
    none, _ = handshake(tls, pki, None)
    assert calls == []
    assert tls.identity_for(good).outcome is Outcome.VERIFIED
    assert tls.identity_for(bad).reason == reasons.UNTRUSTED
    assert tls.identity_for(none).outcome is Outcome.NONE


def test_full_handshakes_of_one_verified_chain_share_its_verdict(pki: DevPki) -> None:
    """The second full handshake of a verified chain gets the first one's verdict object
    (no parsing or copy of the chain per connection); other chains, and the same leaf
    whose chain does not verify, get their own."""
    tls = fresh_server_tls(pki)
    first, _ = handshake(tls, pki, "partner-app")
    second, _ = handshake(tls, pki, "partner-app")
    other, _ = handshake(tls, pki, "partner-direct")
    shared = tls.identity_for(first)
    assert shared.verified
    assert tls.identity_for(second) is shared
    assert tls.identity_for(other) is not shared
    assert tls.identity_for(other).leaf == pki.issued["partner-direct"].cert
    # The same leaf without its intermediate does not verify: not the cached verdict.
    issued = pki.issued["partner-app"]
    trust = [crypto.X509.from_cryptography(pki.authorities["server-root"].cert)]
    lone, _ = connect(tls, ssl.CertificateOptions(
        privateKey=issued.key, certificate=issued.cert, verify=True, caCerts=trust))
    assert tls.identity_for(lone).reason == reasons.UNTRUSTED
    assert tls.identity_for(lone).leaf == issued.cert


def test_server_tls_protocol_declares_the_transports_interfaces_once(
    server_tls: ServerTLS, pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listeners' TLS protocol connects, handshakes and judges like Twisted's, and
    provides what its transport provides, without Twisted's per-interface declarations
    (each a zope ``Provides`` built and thrown away, per connection)."""
    import twisted.protocols.tls as twisted_tls
    from zope.interface import providedBy

    per_interface: list[object] = []
    original = twisted_tls.directlyProvides

    def counting(ob: object, *interfaces: Any) -> None:
        per_interface.append(interfaces)
        original(ob, *interfaces)

    monkeypatch.setattr(twisted_tls, "directlyProvides", counting)
    server_app = Collect()
    client_app = Collect()
    clock = Clock()
    server_factory = ServerTLSFactory(
        server_tls, False, Factory.forProtocol(lambda: server_app), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_options(pki, "partner-app"), True, Factory.forProtocol(lambda: client_app),
        clock=clock,
    )
    client_proto, server_proto, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    assert isinstance(server_proto, ServerTLSProtocol)
    client_proto.write(b"hello")
    pump.flush()
    server_proto.write(b"hi")
    # Encrypted at once: no zero-delay timer aggregating small writes (Twisted's
    # BufferingTLSTransport would have scheduled one on this clock).
    assert clock.getDelayedCalls() == []
    pump.flush()
    assert (server_app.data, client_app.data) == (b"hello", b"hi")
    assert server_app.transport is server_proto
    assert set(providedBy(server_proto.transport)) <= set(providedBy(server_proto))
    assert server_tls.identity_for(server_proto).verified
    # Twisted's own client side declared per interface; the server side did not.
    assert len(per_interface) == len(list(providedBy(client_proto.transport)))


def test_a_cached_verdict_ends_when_a_certificate_of_its_chain_expires(pki: DevPki) -> None:
    """A resumed session's verdict stands only while its verified chain is valid."""
    from twistedgw.identity import ClientIdentity, Source
    from twistedgw.tls._server import _VerdictCache

    cache = _VerdictCache()
    live = pki.issued["partner-app"]
    expired = pki.issued["expired"].cert
    good = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, live.full_chain)
    stale = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, (live.cert, expired))
    cache.put(good)
    assert cache.get(live.cert) is good
    cache.put(stale)  # the same leaf, now with a chain that holds an expired certificate
    assert cache.get(live.cert) is None
    assert len(cache) == 0 and cache.bytes == 0


# -- certificates cryptography cannot read ------------------------------------------


class _RawClientOptions(ssl.CertificateOptions):  # type: ignore[misc]
    """Client options presenting a certificate as DER bytes that cryptography refuses
    (CertificateOptions takes cryptography objects)."""

    def __init__(self, pki: DevPki, der: bytes, key: Any) -> None:
        trust = [crypto.X509.from_cryptography(pki.authorities["server-root"].cert)]
        super().__init__(verify=True, caCerts=trust)
        self._der, self._key = der, key

    def getContext(self) -> SSL.Context:
        import tempfile

        context: SSL.Context = super().getContext()
        with tempfile.NamedTemporaryFile(suffix=".der") as file:
            file.write(self._der)
            file.flush()
            context.use_certificate_file(file.name, crypto.FILETYPE_ASN1)
        context.use_privatekey(self._key)
        return context


def test_a_certificate_cryptography_cannot_load_is_invalid_not_a_500(
    server_tls: ServerTLS, pki: DevPki
) -> None:
    """A self-signed certificate whose extension writes out ``critical`` FALSE: OpenSSL
    takes it, cryptography refuses to load it. Anyone can present one; it made every
    request of the connection a 500 with a traceback."""
    from tests import derkit

    issued = devpki.self_signed_client("quirky")
    der = derkit.resigned(issued.cert, issued.key, derkit.explicit_critical_false)
    with pytest.raises(ValueError, match="EncodedDefault"):
        x509.load_der_x509_certificate(der)
    server_proto, _app = connect(server_tls, _RawClientOptions(pki, der, issued.key))
    identity = server_tls.identity_for(server_proto)
    assert identity.outcome is Outcome.FAILED
    assert identity.reason is not None and identity.reason.startswith(reasons.INVALID + ": ")
    assert identity.chain == ()


def test_a_verified_certificate_whose_subject_cannot_be_read_is_invalid(
    server_tls: ServerTLS, pki: DevPki
) -> None:
    """A trusted CA's leaf whose subject is a TeletexString of control bytes: OpenSSL
    verifies it, cryptography loads it and raises when the subject is read (the
    mutual_ssl principal, the access log: a 500, a lost log line). Refused as invalid,
    and the verdict carries no certificate anything could try to read."""
    from tests import derkit

    authority = pki.authorities["partner-root"]
    issued = authority.issue("unreadable")
    der = derkit.resigned(issued.cert, authority.key, derkit.teletex_subject)
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(der).subject.rfc4514_string()
    server_proto, _app = connect(server_tls, _RawClientOptions(pki, der, issued.key))
    identity = server_tls.identity_for(server_proto)
    assert identity.outcome is Outcome.FAILED
    assert identity.reason is not None and identity.reason.startswith(reasons.INVALID + ": ")
    assert identity.chain == () and identity.subject is None


def test_an_open_connection_keeps_no_handshake_only_state(
    pki: DevPki,
) -> None:
    """What each open connection holds, trimmed (bench/idle_memory.py): pyOpenSSL's copy
    of the ALPN answer is dropped once the handshake is done, the handshake record lives
    on the TLS protocol (no weak-dictionary entry), and a clean handshake has no list of
    verification errors."""
    from twistedgw.tls._server import HandshakeRecords

    tls = fresh_server_tls(pki)
    server_app, client_app, clock = Collect(), Collect(), Clock()
    server_factory = ServerTLSFactory(tls, False, Factory.forProtocol(lambda: server_app),
                                      clock=clock)
    options = client_options(pki, "partner-app")
    options._acceptableProtocols = [b"http/1.1"]  # the client offers ALPN, as curl does
    client_factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: client_app),
                                         clock=clock)
    client_proto, server_proto, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    client_proto.write(b"hello")
    pump.flush()
    assert server_app.data == b"hello"
    connection = server_proto.getHandle()
    assert connection.get_alpn_proto_negotiated() == b"http/1.1"
    assert getattr(connection, "_alpn_select_callback_args", None) is None
    record = HandshakeRecords.get(server_proto)
    assert record is not None and record.callback_ran and record.errors is None
    assert not hasattr(HandshakeRecords(), "data")  # not a weak dictionary
    identity = tls.identity_for(server_proto)
    assert identity.verified
    # Once judged, the connection keeps the (shared) verdict, not the handshake's record;
    # pyOpenSSL's map entry for callbacks and Twisted's pre-handshake write buffer are gone.
    assert HandshakeRecords.get(server_proto) is None
    assert tls.identity_for(server_proto) is identity
    assert connection._ssl not in SSL.Connection._reverse_mapping
    assert server_proto._appSendBuffer == ()
    ssl_ctx = tls._context._context  # no callback after the handshake: no renegotiation
    assert SSL._lib.SSL_CTX_get_options(ssl_ctx) & SSL.OP_NO_RENEGOTIATION
    client_proto.write(b" again")  # and the connection still carries data both ways
    server_proto.write(b"back")
    pump.flush()
    assert server_app.data == b"hello again" and client_app.data == b"back"


def test_verification_errors_are_still_recorded_in_order(pki: DevPki) -> None:
    from twistedgw.tls._server import HandshakeRecords

    tls = fresh_server_tls(pki)
    proto, _ = handshake(tls, pki, "expired")
    record = HandshakeRecords.get(proto)
    assert record is not None and record.errors and record.errors[0][0] == 10
    assert tls.identity_for(proto).reason == reasons.EXPIRED


# -- a resumed session whose verdict the cache no longer holds ------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _ResumingClient:
    """A client that offers the session of its previous connection (one Context, as a
    client that resumes keeps)."""

    def __init__(self, options: Any) -> None:
        self.context = options.getContext()
        self.session: SSL.Session | None = None

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        if self.session is not None:
            connection.set_session(self.session)
        return connection


def _resumed_verdict(tls: ServerTLS, client: _ResumingClient) -> tuple[bool, Any]:
    """One in-memory connection of ``client``: (whether it resumed, the server's verdict).
    ``connect_pair``'s answer from the server reads TLS 1.3's ticket on the client."""
    client_proto, server_proto, _app = connect_pair(tls, client)
    client.session = client_proto.getHandle().get_session()
    _ffi, lib = _twisted.openssl()  # pyOpenSSL has no call for SSL_session_reused
    reused = bool(lib.SSL_session_reused(server_proto.getHandle()._ssl))
    return reused, tls.identity_for(server_proto)


def _resumed(tls: ServerTLS, client: _ResumingClient) -> Any:
    """The server's verdict on a connection of ``client`` that resumed its session.

    OpenSSL declines an offered session now and then over this in-memory pair (seen
    with TLS 1.2, about one offer in ten), so up to five offers, each of the latest
    session; what is tested is the verdict of a resumed connection."""
    for _ in range(5):
        reused, identity = _resumed_verdict(tls, client)
        if reused:
            return identity
    raise AssertionError("the session was never resumed: nothing here is tested")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize(
    ("cert", "reason", "aliases"),
    [
        ("partner-app", None, {"partner-root"}),  # its intermediate is not in the ticket
        ("partner-rsa", None, {"partner-root"}),
        ("pinned", None, {"pinned-client"}),
        ("expired", reasons.EXPIRED, set()),
        ("intruder", reasons.UNTRUSTED, set()),
        ("server-only", reasons.WRONG_PURPOSE, set()),
        ("ca-as-client", CA_AS_CLIENT, set()),
    ],
)
def test_a_resumed_session_whose_verdict_was_evicted_is_judged_again(
    pki: DevPki,
    cert: str,
    reason: str | None,
    aliases: set[str],
    version: ssl.TLSVersion,
) -> None:
    """The verdict cache is bounded and a session ticket outlives any bound: a valid
    client resuming after its verdict was evicted (a fleet of other clients filled the
    cache) keeps its verdict, and an invalid one keeps its refusal, for the same reason.
    Before, every request of such a connection got 401 'resumed TLS session has no
    verification record' (bench row 1n, session 10)."""
    tls = fresh_server_tls(pki)
    issued = pki.issued[cert]
    trust = [crypto.X509.from_cryptography(pki.authorities["server-root"].cert)]
    client = _ResumingClient(ssl.CertificateOptions(
        privateKey=issued.key, certificate=issued.cert, extraCertChain=list(issued.chain),
        verify=True, caCerts=trust, raiseMinimumTo=version, lowerMaximumSecurityTo=version,
        enableSessionTickets=True,
    ))
    # A client verified through the partner intermediate before: what a gateway that
    # has served for a while knows. A failed chain teaches it nothing (anyone can send
    # one), so a refused leaf is judged with the CAs of verified chains only.
    assert tls.identity_for(handshake(tls, pki, "partner-app")[0]).verified
    reused, first = _resumed_verdict(tls, client)
    assert not reused
    assert first.reason == reason and set(first.trust_aliases) == aliases
    kept = _resumed(tls, client)
    assert kept.reason == reason
    # Every verdict evicted (a fleet of other clients filled the cache, and a failed
    # reason's minute passed); the CA certificates of verified chains stay known.
    tls._verdicts._items.clear()
    tls._verdicts._failed.clear()
    tls._verdicts.bytes = 0
    again = _resumed(tls, client)
    assert again.outcome == first.outcome
    assert again.reason == reason
    assert set(again.trust_aliases) == aliases
    assert again.leaf == issued.cert

