"""A load balancer's certificate header, resolved in memory: what is kept between requests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.address import IPv4Address

from twistedgw.config import MutualSslConfig
from twistedgw.http import _callers as callers
from twistedgw.identity import Outcome
from twistedgw.testing import devpki
from twistedgw.tls import ChainVerifier, TrustStore, load_truststore
from twistedgw.wire import Connection, Fields

HEADER = "X-SSL-Client-Cert"


class Counting(ChainVerifier):
    """A verifier that counts the chains it is asked about."""

    asked = 0

    def verify(self, certs: tuple[x509.Certificate, ...]) -> Any:
        self.asked += 1
        return super().verify(certs)


@pytest.fixture(scope="module")
def truststore(pki: devpki.DevPki) -> TrustStore:
    return load_truststore(pki.truststore_dir)


def runtime(truststore: TrustStore) -> Any:
    """A config in force: header mode, any peer trusted (no trusted_proxies)."""
    settings = MutualSslConfig(certificate_header=HEADER, enable_client_validation=False)
    return SimpleNamespace(
        config=SimpleNamespace(mutual_ssl=settings), server_tls=None,
        header_verifier=Counting(truststore),
    )


def header(*certs: x509.Certificate) -> bytes:
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    return quote(pem, safe="").encode()


def ask(rt: Any, value: bytes) -> Any:
    conn = Connection(IPv4Address("TCP", "127.0.0.1", 40000), None, False, None)
    exchange = SimpleNamespace(
        conn=conn, fields=Fields([(HEADER.encode(), value)]), client_ip="127.0.0.1",
        secure=False,
    )
    return callers.resolve(exchange, rt)  # type: ignore[arg-type]


def test_a_verified_header_is_decoded_and_verified_once_per_config(
    pki: devpki.DevPki, truststore: TrustStore
) -> None:
    rt = runtime(truststore)
    value = header(pki.issued["partner-app"].cert, pki.authorities["partner-issuing"].cert)
    first = ask(rt, value)
    assert first.via_load_balancer and first.identity.outcome is Outcome.VERIFIED
    again = ask(rt, value)
    assert again.identity is first.identity and again is not first  # a Caller per request
    assert rt.header_verifier.asked == 1
    reloaded = runtime(truststore)  # a reload: its own verifier judges again
    assert ask(reloaded, value).identity.outcome is Outcome.VERIFIED
    assert reloaded.header_verifier.asked == 1


def test_a_kept_identity_ends_with_the_chain_s_first_expiry(
    pki: devpki.DevPki, truststore: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(truststore)
    chain = (pki.issued["partner-app"].cert, pki.authorities["partner-issuing"].cert)
    value = header(*chain)
    ask(rt, value)
    expiry = min(c.not_valid_after_utc.timestamp() for c in chain)
    monkeypatch.setattr(callers.time, "time", lambda: expiry + 1)
    ask(rt, value)  # past the expiry: asked again (the verifier says what it says then)
    assert rt.header_verifier.asked == 2


def test_a_refused_header_is_not_kept(pki: devpki.DevPki, truststore: TrustStore) -> None:
    rt = runtime(truststore)
    value = header(pki.issued["intruder"].cert)  # under a root the truststore lacks
    assert ask(rt, value).identity.outcome is Outcome.FAILED
    assert ask(rt, value).identity.outcome is Outcome.FAILED
    assert rt.header_verifier.asked == 2
    assert not callers.shared(rt).headers


def test_values_alike_in_their_first_bytes_keep_their_own_verdicts(
    pki: devpki.DevPki, truststore: TrustStore
) -> None:
    """The memo's key is a value's first bytes; a hit needs the whole value: the leaf
    alone (no intermediate to reach the root) never gets its full chain's verdict."""
    rt = runtime(truststore)
    leaf, issuing = pki.issued["partner-app"].cert, pki.authorities["partner-issuing"].cert
    chained, alone = header(leaf, issuing), header(leaf)
    assert alone[: callers._KEY_HEAD] == chained[: callers._KEY_HEAD]
    for _ in range(2):
        assert ask(rt, chained).identity.outcome is Outcome.VERIFIED
        assert ask(rt, alone).identity.outcome is Outcome.FAILED
