"""The revocation checker without processes: OCSP dedupe, cache, nonce and signature checks."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

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


# -- the responder fetch: no SSRF from a certificate's AIA (issue 22 item 10) -----------------


def _fetch(resolved: dict[str, list[str]], allowed: tuple[str, ...] = ()) -> tuple[Any, Any]:
    from twisted.internet.testing import MemoryReactorClock

    from twistedgw.tls._revocation import ResponderFetch

    reactor = MemoryReactorClock()
    return reactor, ResponderFetch(
        allowed, reactor, resolve=lambda host: defer.succeed(resolved[host]))


def _failure(d: defer.Deferred[bytes]) -> str:
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures, "the fetch should have been refused"
    return str(failures[0].getErrorMessage())


@pytest.mark.parametrize(("url", "addresses", "words"), [
    ("http://127.0.0.1:8080/ocsp", [], "is at 127.0.0.1, a private, loopback or link-local"),
    ("http://169.254.169.254/latest", [], "is at 169.254.169.254"),
    ("http://[::1]/ocsp", [], "is at ::1"),
    ("http://[::ffff:10.0.0.1]/ocsp", [], "is at ::ffff:10.0.0.1"),
    ("http://ocsp.example/ocsp", ["10.1.2.3"], "is at 10.1.2.3"),
    ("http://ocsp.example/ocsp", ["100.64.0.1"], "is at 100.64.0.1"),
    # Every address is checked, not only the first.
    ("http://ocsp.example/ocsp", ["93.184.216.34", "192.168.1.1"], "is at 192.168.1.1"),
    ("http://ocsp.example/ocsp", [], "resolves to no address"),
    ("ldap://ocsp.example/ocsp", [], "only http:// and https:// responders are fetched"),
    ("file:///etc/passwd", [], "only http:// and https://"),
])
def test_responders_in_the_gateways_network_are_refused(
    url: str, addresses: list[str], words: str
) -> None:
    reactor, fetch = _fetch({"ocsp.example": addresses})
    assert words in _failure(fetch(url, b"request", 2.0))
    assert reactor.tcpClients == []  # nothing was connected


def test_a_global_responder_is_reached_at_the_address_checked() -> None:
    """The connection goes to the address that was checked, never to a second
    resolution (DNS rebinding); the Host header and TLS name stay the URL's."""
    reactor, fetch = _fetch({"ocsp.example": ["93.184.216.34"], "tls.example": ["2606:4700::1"]})
    fetch("http://ocsp.example/ocsp", b"request", 2.0)
    fetch("https://tls.example:8443/ocsp", b"request", 2.0)
    assert [c[:2] for c in reactor.tcpClients] == [("93.184.216.34", 80), ("2606:4700::1", 8443)]


def test_an_allow_listed_origin_may_be_private() -> None:
    reactor, fetch = _fetch({"ocsp.corp": ["10.0.0.7"]}, allowed=("http://ocsp.corp:80",))
    fetch("http://OCSP.corp/ocsp", b"request", 2.0)
    assert [c[:2] for c in reactor.tcpClients] == [("10.0.0.7", 80)]
    # Another port of the same host is another origin: refused.
    assert "is at 10.0.0.7" in _failure(fetch("http://ocsp.corp:8080/ocsp", b"r", 2.0))


def test_ocsp_responders_config(tmp_path: Path) -> None:
    import tomllib

    from twistedgw import config as configmod

    def read(values: str) -> Any:
        text = ('[[listeners]]\ntls = false\n[[apis]]\nname = "a"\ncontext = "/a"\n'
                f'backend = "http://127.0.0.1:1"\n[tls]\nocsp_responders = {values}\n')
        return configmod.parse_partial(tomllib.loads(text), tmp_path / "gw.toml")

    good = read('["http://OCSP.corp.example", "https://10.0.0.7:8443/", "http://[fd00::1]:81"]')
    assert good.config.tls.ocsp_responders == (
        "http://ocsp.corp.example:80", "https://10.0.0.7:8443", "http://[fd00::1]:81")
    assert not good.problems
    bad = read('["ldap://x", "http://x/ocsp", "ocsp.corp.example"]').problems
    assert bad[0].startswith(f"{tmp_path / 'gw.toml'}: tls.ocsp_responders[0]: only http://")
    assert bad[1].startswith(f"{tmp_path / 'gw.toml'}: tls.ocsp_responders[1]: give the "
                             "responder's origin only")
    assert bad[2].startswith(f"{tmp_path / 'gw.toml'}: tls.ocsp_responders[2]:")
    # urlsplit raises on an unclosed '[': a problem, not a traceback (found by
    # test_properties' fuzzing of every key).
    assert read('["http://[::1"]').problems == (
        f"{tmp_path / 'gw.toml'}: tls.ocsp_responders[0]: not a URL: Invalid IPv6 URL: "
        "'http://[::1'",
    )
