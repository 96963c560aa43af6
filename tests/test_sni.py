"""Hostnames and SNI through real gateway processes (issue 13).

Routing by ``Host`` (``[[apis]] hosts``), the server certificate chosen by the
client's SNI (``[[tls.sni]]``), whether a handshake asks for a client
certificate (``client_certificate`` auto/request/off, seen from the client with
``openssl s_client -msg``) and whether it names CAs (``advertise_ca_names``),
421 on every SNI/Host mismatch, reload, and ``check``.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, env, free_port, gateway_config, table
from tests.rawhttp import RawResponse, read_response
from twistedgw.testing.devpki import DevPki

Start = Callable[..., GatewayProcess]

PARTNERS = ("partners.example.com", "*.partners.example.com")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> dict[str, tuple[Path, Path]]:
    """Server certificates for the SNI entries, from the dev PKI's server root."""
    root = pki.authorities["server-root"]
    out = tmp_path_factory.mktemp("sni-certs")
    return {
        "partners": root.server(PARTNERS).write(out, "partners"),
        "open": root.server(("open.example.com",)).write(out, "open"),
        "closed": root.server(("closed.example.com",)).write(out, "closed"),
        "other": root.server(("other.example.com",)).write(out, "other"),
    }


def sni_table(hosts: tuple[str, ...] | list[str], cert: tuple[Path, Path], **more: Any) -> str:
    values: dict[str, Any] = {
        "hosts": list(hosts), "certificate": str(cert[0]), "private_key": str(cert[1])
    }
    values.update(more)
    return table("tls.sni", values, array=True)


def tls_connect(
    port: int, pki: DevPki, sni: str | None, client: str | None = None
) -> ssl.SSLSocket:
    """A TLS connection sending ``sni`` (None: no SNI at all), verifying the gateway's
    certificate against the dev server root (the name is checked by the tests)."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.check_hostname = False
    if client is not None:
        crt, key = pki.clients[client]
        ctx.load_cert_chain(str(crt), str(key))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname=sni)


def get(
    port: int,
    pki: DevPki,
    path: str,
    *,
    sni: str | None,
    host: str | None,
    client: str | None = None,
    version: str = "HTTP/1.1",
) -> RawResponse:
    with tls_connect(port, pki, sni, client) as sock:
        head = f"GET {path} {version}\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        return read_response(sock)


def plain_get(port: int, path: str, host: str | None, version: str = "HTTP/1.1") -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"GET {path} {version}\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        return read_response(sock)


def peer_dns_names(port: int, pki: DevPki, sni: str | None) -> list[str]:
    with tls_connect(port, pki, sni) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


def handshake_messages(port: int, pki: DevPki, sni: str | None, *extra: str) -> str:
    """What ``openssl s_client -msg`` saw of one handshake (no request sent)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-msg",
            "-CAfile", str(pki.server_ca), *extra]
    argv += ["-servername", sni] if sni is not None else ["-noservername"]
    done = subprocess.run(argv, input=b"", capture_output=True, timeout=20)
    return done.stdout.decode(errors="replace")


def certificate_request(output: str) -> bool:
    return ", CertificateRequest" in output


def ca_names(output: str) -> list[str]:
    """The CA names of a CertificateRequest, as s_client prints them."""
    if "Acceptable client certificate CA names" not in output:
        return []
    block = output.split("Acceptable client certificate CA names", 1)[1]
    names = []
    for line in block.splitlines()[1:]:
        stop = ("Requested", "Client Certificate", "Shared", "---")
        if not line.strip() or line.startswith(stop):
            break
        names.append(line.strip())
    return names


# ---------------------------------------------------------------- host routing


def test_host_routing(gateway: Start, pki: DevPki, backend: BackendProcess) -> None:
    """Exact, wildcard (one label), port ignored, case-insensitive, no Host over HTTP/1.0;
    a host that none of a context's APIs serves gets 404."""
    port = free_port()
    apis = [
        {"name": "exact", "context": "/svc", "backend": backend.url + "/exact",
         "hosts": ["api.example.com"]},
        {"name": "wild", "context": "/svc", "backend": backend.url + "/wild",
         "hosts": ["*.partner.example"]},
        {"name": "any", "context": "/svc", "backend": backend.url + "/any"},
        {"name": "only", "context": "/only", "backend": backend.url + "/only",
         "hosts": ["api.example.com"]},
    ]
    gateway(apis, port=port, listeners=[{"host": "127.0.0.1", "port": port, "tls": False}])

    def served(host: str | None, path: str = "/svc/x", version: str = "HTTP/1.1") -> str:
        r = plain_get(port, path, host, version)
        assert r.status == 200, (host, r.status, r.body)
        return str(r.json()["path"])

    assert served("api.example.com") == "/exact/x"
    assert served("API.Example.COM:9095") == "/exact/x"  # case, port
    assert served("api.example.com.") == "/exact/x"  # trailing dot
    assert served("a.partner.example") == "/wild/x"
    assert served("B.PARTNER.example:443") == "/wild/x"
    assert served("partner.example") == "/any/x"  # the wildcard needs one label
    assert served("a.b.partner.example") == "/any/x"  # ... exactly one
    assert served("elsewhere.example") == "/any/x"
    assert served("127.0.0.1:8443") == "/any/x"
    assert served(None, version="HTTP/1.0") == "/any/x"  # no Host: APIs without hosts
    assert served("api.example.com", "/only/y") == "/only/y"
    for host in ("other.example", "a.api.example.com"):
        r = plain_get(port, "/only/y", host)
        assert r.status == 404, (host, r.body)
        assert r.json()["code"] == "404"
    r = plain_get(port, "/only/y", None, "HTTP/1.0")
    assert r.status == 404
    r = plain_get(port, "/svc/x", "bad host!")
    assert r.status == 400 and "Host" in r.json()["description"]


def test_authz_judges_the_original_host(
    gateway: Start, pki: DevPki, backend: BackendProcess
) -> None:
    port = free_port()
    apis = [
        {"name": "open", "context": "/svc", "backend": backend.url, "hosts": ["open.example"]},
        {"name": "locked", "context": "/svc", "backend": backend.url,
         "hosts": ["locked.example"], "api_key": "mandatory"},
    ]
    gateway(apis, port=port, listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
            api_keys={"k": "secret-key"}, extra=table("authz", {"original_host_header": "X-Host"}))

    def judge(*headers: str) -> RawResponse:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = "GET /_twistedgw/authz HTTP/1.1\r\nX-Original-URI: /svc/a\r\n"
            sock.sendall((head + "".join(h + "\r\n" for h in headers) + "\r\n").encode())
            return read_response(sock)

    assert judge("Host: open.example").status == 200  # falls back to Host
    assert judge("Host: open.example", "X-Host: locked.example").status == 401
    assert judge("Host: locked.example", "X-Host: open.example").status == 200
    assert judge("Host: gw", "X-Host: nowhere.example").status == 403


# ---------------------------------------------------------------- SNI


@pytest.fixture(scope="module")
def sni_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    pki: DevPki,
    certs: dict[str, tuple[Path, Path]],
    backend: BackendProcess,
) -> Any:
    """Four certificates: the default (localhost), partners (auto, an mTLS API),
    open (request, no CA names), closed (off, an mTLS API)."""
    from tests.harness import start_gateway

    port = free_port()
    apis = [
        {"name": "public", "context": "/public", "backend": backend.url + "/public"},
        {"name": "partner", "context": "/partner", "backend": backend.url + "/partner",
         "hosts": list(PARTNERS), "mutual_ssl": "mandatory"},
        {"name": "closed", "context": "/closed", "backend": backend.url + "/closed",
         "hosts": ["closed.example.com"], "mutual_ssl": "mandatory"},
        {"name": "optional", "context": "/optional", "backend": backend.url + "/optional",
         "hosts": ["open.example.com", "closed.example.com"], "mutual_ssl": "optional",
         "api_key": "optional"},
    ]
    text = gateway_config(pki, apis, port=port, api_keys={"k": "secret-key"},
                          extra=sni_table(PARTNERS, certs["partners"])
                          + sni_table(["open.example.com"], certs["open"],
                                      client_certificate="request", advertise_ca_names=False)
                          + sni_table(["closed.example.com"], certs["closed"],
                                      client_certificate="off"))
    gw = start_gateway(tmp_path_factory.mktemp("sni-gw"), text, port)
    yield gw
    gw.stop()


def test_certificate_chosen_by_sni(sni_gateway: GatewayProcess, pki: DevPki) -> None:
    port = sni_gateway.port
    assert "partners.example.com" in peer_dns_names(port, pki, "partners.example.com")
    assert "partners.example.com" in peer_dns_names(port, pki, "EU.Partners.Example.com")
    assert peer_dns_names(port, pki, "open.example.com") == ["open.example.com"]
    assert peer_dns_names(port, pki, "localhost") == ["localhost"]
    assert peer_dns_names(port, pki, "unknown.example") == ["localhost"]  # the default
    assert peer_dns_names(port, pki, None) == ["localhost"]  # no SNI: the default


def test_client_certificate_modes_seen_from_the_client(
    sni_gateway: GatewayProcess, pki: DevPki
) -> None:
    port = sni_gateway.port
    # auto, an mTLS API under the entry's hosts: asks, naming the truststore's CAs.
    partners = handshake_messages(port, pki, "partners.example.com")
    assert certificate_request(partners), partners
    assert any("twistedgw dev partner root" in n for n in ca_names(partners)), partners
    # auto on the default: no API reachable there needs a certificate, so no prompt.
    for sni in ("localhost", None):
        public = handshake_messages(port, pki, sni)
        assert "Server certificate" in public  # the handshake did happen
        assert not certificate_request(public), public
    # request with advertise_ca_names = false: asks, naming no CA.
    opened = handshake_messages(port, pki, "open.example.com")
    assert certificate_request(opened), opened
    assert ca_names(opened) == [] and "No client certificate CA names sent" in opened
    # off: never asks, although an API there needs a certificate.
    closed = handshake_messages(port, pki, "closed.example.com")
    assert "Server certificate" in closed
    assert not certificate_request(closed), closed
    # The start-up log says what auto decided.
    log = sni_gateway.output()
    assert "TLS default: client_certificate=auto (never asks)" in log, log
    assert "TLS partners.example.com, *.partners.example.com: client_certificate=auto " \
        "(asks for a client certificate)" in log
    assert "TLS closed.example.com: client_certificate=off (never asks)" in log
    # The same over TLS 1.2.
    assert certificate_request(handshake_messages(port, pki, "partners.example.com", "-tls1_2"))
    assert not certificate_request(handshake_messages(port, pki, "localhost", "-tls1_2"))


def test_mtls_under_each_entry(sni_gateway: GatewayProcess, pki: DevPki) -> None:
    port = sni_gateway.port
    host = "partners.example.com"
    r = get(port, pki, "/partner/a", sni=host, host=host, client="partner-app")
    assert r.status == 200, r.body
    assert r.json()["path"] == "/partner/a"
    r = get(port, pki, "/partner/a", sni=host, host=host)
    assert r.status == 401 and r.json()["code"] == "900902"
    # off: the client has a certificate but is never asked for it.
    host = "closed.example.com"
    r = get(port, pki, "/closed/a", sni=host, host=host, client="partner-app")
    assert r.status == 401 and r.json()["code"] == "900902", r.body
    # request: a certificate arrives (and verifies) although the API only takes it optionally.
    host = "open.example.com"
    r = get(port, pki, "/optional/a", sni=host, host=host, client="partner-app")
    assert r.status == 200, r.body
    # the public API on the default: no certificate involved.
    r = get(port, pki, "/public/a", sni="localhost", host="localhost")
    assert r.status == 200
    r = get(port, pki, "/public/a", sni=None, host="127.0.0.1")
    assert r.status == 200


@pytest.mark.parametrize(
    ("sni", "host"),
    [
        ("partners.example.com", "localhost"),  # SNI A + Host of the default
        ("partners.example.com", "open.example.com"),  # SNI A + Host B
        ("open.example.com", "partners.example.com"),
        ("a.partners.example.com", "closed.example.com:443"),
        (None, "partners.example.com"),  # no SNI + Host of an SNI-only entry
        (None, "x.partners.example.com"),
        ("localhost", "OPEN.example.com"),  # the default's SNI + Host of an entry
        ("unknown.example", "closed.example.com"),  # an SNI no entry matches = the default
    ],
)
def test_421_on_every_mismatch(
    sni_gateway: GatewayProcess, pki: DevPki, sni: str | None, host: str
) -> None:
    for path in ("/public/a", "/partner/a", "/nowhere", "/_twistedgw/authz"):
        r = get(sni_gateway.port, pki, path, sni=sni, host=host, client="partner-app")
        assert r.status == 421, (sni, host, path, r.status, r.body)
        assert r.head.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
        body = r.json()
        assert body["code"] == "421" and body["message"] == "Misdirected Request"
        assert host.split(":")[0].lower() in body["description"]


def test_no_421_when_sni_and_host_agree(sni_gateway: GatewayProcess, pki: DevPki) -> None:
    port = sni_gateway.port
    for sni, host, path in [
        ("partners.example.com", "b.partners.example.com", "/partner/x"),
        (None, "localhost", "/public/x"),  # no SNI may name any host the default serves
        (None, "anything.example", "/public/x"),
        ("unknown.example", "localhost", "/public/x"),
        ("localhost", "other.example:8443", "/public/x"),
    ]:
        r = get(port, pki, path, sni=sni, host=host, client="partner-app")
        assert r.status == 200, (sni, host, r.status, r.body)
    # No Host at all (HTTP/1.0): nothing to compare; only APIs without hosts serve it.
    r = get(port, pki, "/public/x", sni="partners.example.com", host=None, version="HTTP/1.0")
    assert r.status == 200
    r = get(port, pki, "/partner/x", sni="partners.example.com", host=None, version="HTTP/1.0")
    assert r.status == 404


def test_reload_picks_up_new_and_changed_entries(
    gateway: Start, pki: DevPki, certs: dict[str, tuple[Path, Path]], backend: BackendProcess
) -> None:
    port = free_port()
    apis = [{"name": "public", "context": "/public", "backend": backend.url}]
    gw = gateway(apis, port=port, extra=sni_table(["open.example.com"], certs["open"],
                                                  client_certificate="off"))
    assert peer_dns_names(port, pki, "other.example.com") == ["localhost"]
    assert not certificate_request(handshake_messages(port, pki, "open.example.com"))
    gw.config.write_text(gateway_config(
        pki, apis, port=port,
        extra=sni_table(["open.example.com"], certs["open"], client_certificate="request")
        + sni_table(["other.example.com"], certs["other"]),
    ))
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while peer_dns_names(port, pki, "other.example.com") != ["other.example.com"]:
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.1)
    assert certificate_request(handshake_messages(port, pki, "open.example.com"))


def test_resumption_never_carries_a_verdict_across_entries(
    sni_gateway: GatewayProcess, pki: DevPki, tmp_path: Path
) -> None:
    """A TLS 1.2 session from the partners entry (certificate verified), offered under
    the closed entry (off): refused, or treated as a full handshake there would be."""
    port = sni_gateway.port
    session = tmp_path / "session.pem"
    crt, key = pki.clients["partner-app"]
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-quiet",
            "-CAfile", str(pki.server_ca), "-cert", str(crt), "-key", str(key),
            "-cert_chain", str(crt)]
    first = subprocess.run(
        [*base, "-servername", "partners.example.com", "-sess_out", str(session)],
        input=b"GET /partner/a HTTP/1.1\r\nHost: partners.example.com\r\n"
        b"Connection: close\r\n\r\n",
        capture_output=True, timeout=20,
    )
    assert b" 200 " in first.stdout.split(b"\r\n", 1)[0], first.stdout
    again = subprocess.run(
        [*base, "-servername", "closed.example.com", "-sess_in", str(session)],
        input=b"GET /optional/a HTTP/1.1\r\nHost: closed.example.com\r\napikey: nope\r\n"
        b"Connection: close\r\n\r\n",
        capture_output=True, timeout=20,
    )
    # The optional API takes a certificate in place of the (wrong) API key: had the
    # partners verdict come along to the closed entry, this would pass with 200. OpenSSL
    # resumes a TLS 1.2 session under the server name it was made with, so the
    # connection stays a partners one and the Host check refuses it (421); a full
    # handshake under "off" would carry no certificate (401).
    status = again.stdout.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 421 Misdirected Request", b"HTTP/1.1 401 Unauthorized"), (
        again.stdout
    )


# ---------------------------------------------------------------- check


def run_check(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = directory / "gateway.toml"
    config.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "twistedgw", "check", "--config", str(config)],
        capture_output=True, text=True, env=env(), timeout=60,
    )


def test_check_reports_overlaps_and_warns_about_uncovered_hosts(
    tmp_path: Path, pki: DevPki, certs: dict[str, tuple[Path, Path]]
) -> None:
    apis = [{"name": "a", "context": "/a", "backend": "http://127.0.0.1:1"}]
    ok = run_check(tmp_path, gateway_config(
        pki, apis, port=1,
        extra=sni_table(PARTNERS, certs["partners"])
        + sni_table(["open.example.com", "private.internal"], certs["open"]),
    ))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    warnings = [line for line in ok.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, ok.stderr
    assert "tls.sni[1].hosts[1]" in warnings[0] and "private.internal" in warnings[0]
    bad = run_check(tmp_path, gateway_config(
        pki, apis, port=1,
        extra=sni_table(["*.partners.example.com"], certs["partners"])
        + sni_table(["eu.partners.example.com"], certs["open"])
        + sni_table(["x.example"], certs["open"], client_certificate="sometimes"),
    ))
    assert bad.returncode == 2
    assert "tls.sni[1].hosts[0]: 'eu.partners.example.com' overlaps '*.partners.example.com'" \
        in bad.stderr, bad.stderr
    assert "tls.sni[2].client_certificate: must be one of 'auto', 'request', 'off'" in bad.stderr
