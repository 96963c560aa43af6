"""Revocation end to end: CRLs and OCSP for handshake and header certificates alike.

Real gateway processes over real TLS; CRLs are written by the dev PKI's
``Authority.crl``; the OCSP responder is a small HTTP server in a thread that
signs answers with ``cryptography``'s OCSP builder.
"""

from __future__ import annotations

import datetime
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.backend_fixture import BackendProcess
from tests.e2e import running_gateway, tls_connect
from tests.harness import Response, free_port, send
from twistedgw.testing import devpki
from twistedgw.testing.devpki import Authority, DevPki, Issued

REVOKED = "certificate has been revoked"
UNAVAILABLE = "certificate revocation status is unavailable"
NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Cast:
    """Extra certificates for revocation, on top of the session's dev PKI."""

    directory: Path
    pki: DevPki
    good: Issued
    revoked: Issued
    revoked_ca: Authority
    under_revoked_ca: Issued
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def context(self, name: str) -> ssl.SSLContext:
        if name not in self.contexts:
            ctx = ssl.create_default_context(cafile=str(self.pki.server_ca))
            crt, key = self.files[name] if name in self.files else self.pki.clients[name]
            ctx.load_cert_chain(str(crt), str(key))
            self.contexts[name] = ctx
        return self.contexts[name]

    def crl(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def cast(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Cast:
    directory = tmp_path_factory.mktemp("revocation")
    issuing = pki.authorities["partner-issuing"]
    root = pki.authorities["partner-root"]
    revoked_ca = root.intermediate("twistedgw dev revoked issuing CA")
    c = Cast(
        directory,
        pki,
        good=issuing.issue("good-app"),
        revoked=issuing.issue("revoked-app"),
        revoked_ca=revoked_ca,
        under_revoked_ca=revoked_ca.issue("under-revoked-ca-app"),
    )
    for name in ("good", "revoked", "under_revoked_ca"):
        c.files[name] = getattr(c, name).write(directory / "clients", name)
    return c


def standard_crls(cast: Cast, *, scope: str = "chain", fail: str = "closed") -> dict[str, Any]:
    """Issuing CA (PEM) revokes ``revoked``; root (DER) revokes the ``revoked_ca`` intermediate."""
    issuing = cast.pki.authorities["partner-issuing"]
    root = cast.pki.authorities["partner-root"]
    return {
        "crl": [
            cast.crl("issuing.crl", issuing.crl([cast.revoked.cert])),
            cast.crl("root.crl", root.crl([cast.revoked_ca.cert], encoding="der")),
            cast.crl("revoked-ca.crl", cast.revoked_ca.crl()),
        ],
        "revocation": "crl",
        "revocation_scope": scope,
        "revocation_fail": fail,
    }


def api(backend: BackendProcess, context: str = "/api", **extra: Any) -> dict[str, Any]:
    return {
        "name": "Api",
        "version": "1",
        "context": context,
        "backend": backend.url,
        "mutual_ssl": "mandatory",
        **extra,
    }


def get(port: int, cast: Cast, client: str, path: str = "/api/x", **kw: Any) -> Response:
    conn = tls_connect(port, cast.context(client))
    try:
        return send(conn, path, **kw)
    finally:
        conn.close()


def assert_refused(response: Response, description: str) -> None:
    assert response.status == 401, response.body
    body = response.json()
    assert (body["code"], body["description"]) == ("900901", description)


# --------------------------------------------------------------------------- CRLs, handshake


def test_crl_chain_scope(tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess) -> None:
    with running_gateway(tmp_path, pki, [api(backend)], tls=standard_crls(cast)) as gw:
        assert get(gw.port, cast, "good").status == 200
        assert get(gw.port, cast, "partner-direct").status == 200  # issued by the root itself
        assert get(gw.port, cast, "pinned").status == 200  # a pinned leaf has no issuer to ask
        assert_refused(get(gw.port, cast, "revoked"), REVOKED)
        assert_refused(get(gw.port, cast, "under_revoked_ca"), REVOKED)
        # No CRL for other-root at all: no status, and revocation_fail is closed.
        assert_refused(get(gw.port, cast, "other-app"), UNAVAILABLE)
        # Verification failures keep their own words.
        assert_refused(get(gw.port, cast, "expired"), "certificate has expired")


def test_crl_leaf_scope_ignores_revoked_intermediate(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess
) -> None:
    with running_gateway(
        tmp_path, pki, [api(backend)], tls=standard_crls(cast, scope="leaf")
    ) as gw:
        assert get(gw.port, cast, "under_revoked_ca").status == 200
        assert_refused(get(gw.port, cast, "revoked"), REVOKED)


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_stale_crl(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess, fail: str
) -> None:
    issuing = pki.authorities["partner-issuing"]
    stale = issuing.crl(
        [cast.revoked.cert],
        last_update=NOW - datetime.timedelta(days=3),
        next_update=NOW - datetime.timedelta(days=1),
    )
    tls = {
        "crl": [cast.crl(f"stale-{fail}.crl", stale)],
        "revocation": "crl",
        "revocation_scope": "leaf",
        "revocation_fail": fail,
    }
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        good = get(gw.port, cast, "good")
        if fail == "open":
            assert good.status == 200
        else:
            assert_refused(good, UNAVAILABLE)
        # A revocation is never undone, even by a stale list.
        assert_refused(get(gw.port, cast, "revoked"), REVOKED)


def test_forged_crl_is_ignored(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess
) -> None:
    issuing = pki.authorities["partner-issuing"]
    forged = issuing.crl([cast.good.cert], signer=devpki.new_key())
    tls = {"crl": [cast.crl("forged.crl", forged)], "revocation": "crl", "revocation_scope": "leaf"}
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        # Not "revoked": the list is not the CA's, so there is no status at all.
        assert_refused(get(gw.port, cast, "good"), UNAVAILABLE)


def test_crl_reloaded_on_sighup(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess
) -> None:
    issuing = pki.authorities["partner-issuing"]
    path = cast.crl("rotating.crl", issuing.crl())
    tls = {"crl": [path], "revocation": "crl", "revocation_scope": "leaf"}
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        assert get(gw.port, cast, "good").status == 200
        Path(path).write_bytes(issuing.crl([cast.good.cert], encoding="der"))
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "Reloaded" not in gw.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert_refused(get(gw.port, cast, "good"), REVOKED)


def test_unreadable_crl_is_a_config_error(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess
) -> None:
    bad = cast.crl("garbage.crl", b"not a crl")
    tls = {"crl": [bad], "revocation": "crl"}
    with pytest.raises(RuntimeError, match="not a PEM or DER CRL"):
        with running_gateway(tmp_path, pki, [api(backend)], tls=tls):
            pass


# --------------------------------------------------------------------------- CRLs, header


def test_crl_applies_to_header_certificates(
    tmp_path: Path, pki: DevPki, cast: Cast, backend: BackendProcess
) -> None:
    extra = (
        "[mutual_ssl]\n"
        'certificate_header = "X-Amzn-Mtls-Clientcert"\n'
        'header_encoding = "aws-alb"\n'
        'load_balancer_aliases = ["lb-ca"]\n'
    )
    with running_gateway(tmp_path, pki, [api(backend)], tls=standard_crls(cast), extra=extra) as gw:

        def via_lb(who: Issued) -> Response:
            pem = devpki.cert_pem(*who.full_chain).decode()
            return get(gw.port, cast, "lb", headers={"X-Amzn-Mtls-Clientcert": quote(pem, safe="")})

        assert via_lb(cast.good).status == 200
        assert_refused(via_lb(cast.revoked), REVOKED)
        assert_refused(via_lb(cast.under_revoked_ca), REVOKED)


# --------------------------------------------------------------------------- OCSP


class Responder:
    """An OCSP responder for one CA: serial -> "good" | "revoked"; counts the queries."""

    def __init__(self, ca: Authority) -> None:
        self.ca = ca
        self.status: dict[int, str] = {}
        self.queries = 0
        self.nonces_echoed = 0
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = responder.answer(self.rfile.read(length))
                self.send_response(200)
                self.send_header("content-type", "application/ocsp-response")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ocsp"
        # The responder is on loopback: only fetched when its origin is allow-listed.
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.by_name = f"http://localhost:{self.server.server_address[1]}/ocsp"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, der: bytes) -> bytes:
        self.queries += 1
        request = ocsp.load_der_ocsp_request(der)
        serial = request.serial_number
        state = self.status.get(serial)
        if state is None:
            return ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED
            ).public_bytes(serialization.Encoding.DER)
        now = datetime.datetime.now(datetime.UTC)
        leaf = next(c for c in self.issued if c.serial_number == serial)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=leaf,
                issuer=self.ca.cert,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD
                if state == "good"
                else ocsp.OCSPCertStatus.REVOKED,
                this_update=now - datetime.timedelta(minutes=1),
                next_update=now + datetime.timedelta(hours=1),
                revocation_time=now - datetime.timedelta(minutes=1) if state == "revoked" else None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca.cert)
        )
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
            builder = builder.add_extension(nonce, critical=False)
            self.nonces_echoed += 1
        except x509.ExtensionNotFound:
            pass
        response = builder.sign(self.ca.key, hashes.SHA256())  # type: ignore[arg-type]
        return response.public_bytes(serialization.Encoding.DER)

    issued: list[x509.Certificate] = []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def responder(cast: Cast) -> Iterator[Responder]:
    r = Responder(cast.pki.authorities["partner-issuing"])
    r.issued = []
    issuing = cast.pki.authorities["partner-issuing"]
    dead = f"http://127.0.0.1:{free_port()}/ocsp"  # nothing listens there
    for name, url, state in (
        ("ocsp-good", r.url, "good"),
        ("ocsp-revoked", r.url, "revoked"),
        ("ocsp-unreachable", dead, None),
        ("ocsp-by-name", r.by_name, "good"),  # a name that resolves to loopback
    ):
        who = issuing.issue(name, ocsp_url=url)
        cast.files[name] = who.write(cast.directory / "clients", name)
        r.issued.append(who.cert)
        if state is not None:
            r.status[who.cert.serial_number] = state
    yield r
    r.close()


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_ocsp(
    tmp_path: Path,
    pki: DevPki,
    cast: Cast,
    backend: BackendProcess,
    responder: Responder,
    fail: str,
) -> None:
    tls = {
        "revocation": "ocsp",
        "revocation_scope": "leaf",
        "revocation_fail": fail,
        "ocsp_timeout": 1.0,
        "ocsp_cache_seconds": 60,
        "ocsp_responders": [responder.origin],
    }
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        before = responder.queries
        assert get(gw.port, cast, "ocsp-good").status == 200
        assert_refused(get(gw.port, cast, "ocsp-revoked"), REVOKED)
        assert responder.queries == before + 2
        assert responder.nonces_echoed >= 2
        # Cached: asking again does not reach the responder.
        assert get(gw.port, cast, "ocsp-good").status == 200
        assert_refused(get(gw.port, cast, "ocsp-revoked"), REVOKED)
        assert responder.queries == before + 2
        unreachable = get(gw.port, cast, "ocsp-unreachable")
        if fail == "open":
            assert unreachable.status == 200
        else:
            assert_refused(unreachable, UNAVAILABLE)
        # A certificate without an OCSP URL has no status either.
        no_aia = get(gw.port, cast, "good")
        assert no_aia.status == (200 if fail == "open" else 401)


def test_crl_and_ocsp_together(
    tmp_path: Path,
    pki: DevPki,
    cast: Cast,
    backend: BackendProcess,
    responder: Responder,
) -> None:
    """``crl+ocsp``: revoked if either says so; a fresh CRL answers when OCSP cannot."""
    tls = {**standard_crls(cast, scope="leaf"), "revocation": "crl+ocsp", "ocsp_timeout": 1.0,
           "ocsp_responders": [responder.origin]}
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        assert get(gw.port, cast, "ocsp-good").status == 200
        assert_refused(get(gw.port, cast, "ocsp-revoked"), REVOKED)  # OCSP says so, CRL not
        assert_refused(get(gw.port, cast, "revoked"), REVOKED)  # CRL says so, no OCSP URL
        assert get(gw.port, cast, "ocsp-unreachable").status == 200  # the CRL is fresh


def test_ocsp_responders_in_the_gateways_own_network_are_not_fetched(
    tmp_path: Path,
    pki: DevPki,
    cast: Cast,
    backend: BackendProcess,
    responder: Responder,
) -> None:
    """Issue 22 item 10: the AIA of any certificate the truststore accepts chose where
    the gateway connected (a blind SSRF: loopback services, cloud metadata). Without
    [tls] ocsp_responders naming it, a responder at a loopback address, by IP or by a
    name that resolves there, is never contacted: no status (revocation_fail decides)."""
    tls = {"revocation": "ocsp", "revocation_scope": "leaf", "ocsp_timeout": 1.0}
    with running_gateway(tmp_path, pki, [api(backend)], tls=tls) as gw:
        before = responder.queries
        assert_refused(get(gw.port, cast, "ocsp-good"), UNAVAILABLE)
        assert_refused(get(gw.port, cast, "ocsp-by-name"), UNAVAILABLE)
        assert responder.queries == before
        assert "a private, loopback or link-local address: not fetched" in gw.output()
    # Listed by its origin (not the name's): the IP is fetched, the name still is not.
    tls["ocsp_responders"] = [responder.origin]
    with running_gateway(tmp_path / "listed", pki, [api(backend)], tls=tls) as gw:
        assert get(gw.port, cast, "ocsp-good").status == 200
        assert responder.queries == before + 1
        assert_refused(get(gw.port, cast, "ocsp-by-name"), UNAVAILABLE)
        assert responder.queries == before + 1
