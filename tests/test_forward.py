"""Forwarder against a real echo backend, through a real twisted.web server.

Both sides are separate processes (tests/backend.py, tests/forward_harness.py);
the tests speak plain HTTP/1.1 to the harness with http.client and raw sockets.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.backend import pattern
from tests.backend_fixture import (  # noqa: F401  (backend is a fixture)
    TESTS,
    BackendProcess,
    backend,
    spawn_with_port_file,
    start_backend,
)

MB = 1024 * 1024
BACKEND_TIMEOUT = 1.0


@dataclass
class Harness:
    port: int
    process: Any
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def results(self) -> list[dict[str, Any]]:
        reply = call(self.port, "GET", "/__harness/results")
        results: list[dict[str, Any]] = reply.json()
        return results

    def result_for(self, path: str, timeout: float = 5.0) -> dict[str, Any]:
        """The ForwardResult of the last request to `path`, waiting for it to be reported."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.results() if r["path"] == path]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no ForwardResult for {path}")
            time.sleep(0.05)


def start_harness(tmp_path: Path, backend_url: str, *extra: str) -> Harness:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port_file = tmp_path / "harness.port"
    log = tmp_path / "harness.log"
    argv = [
        sys.executable,
        str(TESTS / "forward_harness.py"),
        "--backend",
        backend_url,
        "--port-file",
        str(port_file),
        *extra,
    ]
    proc, port = spawn_with_port_file(argv, port_file, log)
    return Harness(port, proc, log)


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Unhandled" not in text, text
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def gw(backend: BackendProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:  # noqa: F811
    """The shared harness: 1 s backend timeout, strips apikey, adds X-Gw-Added."""
    harness = start_harness(
        tmp_path_factory.mktemp("harness"),
        backend.url,
        "--backend-timeout",
        str(BACKEND_TIMEOUT),
        "--remove-header",
        "apikey",
        "--add-header",
        "X-Gw-Added: gateway",
    )
    yield harness
    harness.stop()
    assert_clean_log(harness.log)


# -- a small client ------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    *,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request with repeated headers allowed; reuses `conn` when given."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        has_host = any(n.lower() == "host" for n, _ in headers)
        c.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        for name, value in headers:
            c.putheader(name, value)
        chunked = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            c.putheader("Content-Length", str(len(body)))
        elif chunked:
            c.putheader("Transfer-Encoding", "chunked")
        c.endheaders(body, encode_chunked=chunked)
        resp = c.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.reason, resp.getheaders(), data)
    finally:
        if conn is None:
            c.close()


def sent(echo: dict[str, Any], name: str) -> list[str]:
    """Values of request header `name` as the backend received them, in order."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def sent_names(echo: dict[str, Any]) -> set[str]:
    return {n.lower() for n, _ in echo["headers"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what goes through unchanged -----------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_path_query_and_body_preserved(gw: Harness, method: str) -> None:
    body = b"" if method in ("GET", "DELETE", "OPTIONS") else b"hello \x00\xff body"
    path = "/some/p%20ath;m=1/x?q=1&q=2&enc=%2F%3D&empty="
    reply = call(gw.port, method, path, body=body or None)
    assert reply.status == 200
    echo = reply.json()
    assert echo["method"] == method
    assert echo["path"] == path
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_empty_post_carries_content_length_zero(gw: Harness) -> None:
    echo = call(gw.port, "POST", "/empty", body=b"").json()
    assert sent(echo, "content-length") == ["0"]
    assert echo["body_len"] == 0


def test_repeated_request_headers_kept_in_order(gw: Harness) -> None:
    headers = [("X-Multi", "one"), ("X-Other", "x"), ("X-Multi", "two"), ("Cookie", "a=1")]
    echo = call(gw.port, "GET", "/echo", headers).json()
    assert sent(echo, "x-multi") == ["one", "two"]
    assert sent(echo, "x-other") == ["x"]
    assert sent(echo, "cookie") == ["a=1"]


def test_multiple_set_cookie_headers_relayed(gw: Harness) -> None:
    reply = call(gw.port, "GET", "/cookies")
    assert reply.status == 200
    assert reply.header("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


def test_status_code_and_phrase_relayed(gw: Harness) -> None:
    reply = call(gw.port, "GET", "/status/418?phrase=Short%20and%20Stout")
    assert (reply.status, reply.reason) == (418, "Short and Stout")
    reply = call(gw.port, "GET", "/status/503")
    assert reply.status == 503
    assert reply.json()["path"] == "/status/503"  # the backend's body, not a gateway error


# -- header hygiene ------------------------------------------------------------


def test_hop_by_hop_request_headers_dropped(gw: Harness) -> None:
    headers = [
        ("Connection", "keep-alive, X-Named-Hop"),
        ("X-Named-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "foo/1"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("X-Keep", "yes"),
    ]
    echo = call(gw.port, "POST", "/echo", headers, body=[b"chunked ", b"upload"]).json()
    dropped = {
        "connection",
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    }
    assert not (sent_names(echo) & dropped), echo["headers"]
    assert sent(echo, "x-keep") == ["yes"]
    assert sent(echo, "content-length") == [str(len(b"chunked upload"))]
    assert echo["body_sha256"] == hashlib.sha256(b"chunked upload").hexdigest()


def test_hop_by_hop_response_headers_dropped(gw: Harness) -> None:
    sets = [
        "Connection:X-Resp-Named",
        "X-Resp-Named:secret",
        "Keep-Alive:timeout=5",
        "Proxy-Connection:keep-alive",
        "Proxy-Authenticate:Basic",
        "Trailer:X-T",
        "Upgrade:foo",
        "X-Resp-Keep:yes",
    ]
    path = "/headers?" + "&".join(f"set={s}" for s in sets)
    reply = call(gw.port, "GET", path)
    assert reply.status == 200
    names = {n.lower() for n, _ in reply.headers}
    for name in ("x-resp-named", "keep-alive", "proxy-connection", "proxy-authenticate"):
        assert name not in names, reply.headers
    assert "trailer" not in names and "upgrade" not in names
    assert reply.header("connection") == []  # twisted.web adds none for a keep-alive 1.1 client
    assert reply.header("x-resp-keep") == ["yes"]


def test_forwarded_headers_replaced_not_appended(gw: Harness, backend: BackendProcess) -> None:  # noqa: F811
    headers = [
        ("Host", "client.example:8443"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7, 8.8.8.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
    ]
    echo = call(gw.port, "GET", "/echo", headers).json()
    assert sent(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert sent(echo, "x-forwarded-proto") == ["http"]
    assert sent(echo, "x-forwarded-host") == ["client.example:8443"]
    assert sent(echo, "host") == [f"127.0.0.1:{backend.port}"]
    assert sent(echo, "forwarded") == []


def test_remove_headers_and_add_headers(gw: Harness) -> None:
    headers = [
        ("apikey", "secret-1"),
        ("ApiKey", "secret-2"),
        ("X-Gw-Added", "spoofed-by-client"),
        ("Authorization", "Bearer stays"),
    ]
    echo = call(gw.port, "GET", "/echo", headers).json()
    assert "apikey" not in sent_names(echo)
    assert sent(echo, "x-gw-added") == ["gateway"]
    assert sent(echo, "authorization") == ["Bearer stays"]


# -- streaming -----------------------------------------------------------------


def test_5mb_upload_streams_and_hashes(gw: Harness) -> None:
    body = os.urandom(5 * MB)
    echo = call(gw.port, "PUT", "/upload", body=body).json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert sent(echo, "content-length") == [str(len(body))]


def test_5mb_chunked_upload_reaches_backend_with_length(gw: Harness) -> None:
    body = os.urandom(5 * MB)
    pieces = (body[i : i + 100_000] for i in range(0, len(body), 100_000))
    echo = call(gw.port, "POST", "/upload", body=pieces).json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "transfer-encoding" not in sent_names(echo)


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_5mb_download(gw: Harness, query: str) -> None:
    n = 5 * MB
    reply = call(gw.port, "GET", f"/bytes/{n}{query}")
    assert reply.status == 200
    assert len(reply.body) == n
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(pattern(0, n)).hexdigest()
    if query:
        assert reply.header("transfer-encoding") == ["chunked"]
    else:
        assert reply.header("content-length") == [str(n)]
    assert gw.result_for(f"/bytes/{n}{query}")["bytes_sent"] == n


def _recv_headers(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside the headers: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def test_slow_client_applies_back_pressure(gw: Harness) -> None:
    """A client that stops reading pauses the backend; the gateway does not buffer it all.

    The pause also outlasts backend_timeout: the idle timer must not blame the backend.
    """
    n = 128 * MB
    before = call(gw.port, "GET", "/__harness/rss").json()["maxrss_kb"]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /bytes/{n} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        head, got = _recv_headers(sock)
        assert head.startswith(b"HTTP/1.1 200")
        time.sleep(BACKEND_TIMEOUT * 2)
        after = call(gw.port, "GET", "/__harness/rss").json()["maxrss_kb"]
        assert (after - before) * 1024 < 48 * MB, (before, after)
        received = len(got)
        while received < n:
            chunk = sock.recv(4 * MB)
            assert chunk, f"connection closed after {received} of {n} bytes"
            received += len(chunk)
        assert received == n
    result = gw.result_for(f"/bytes/{n}")
    assert result == {"path": f"/bytes/{n}", "status": 200, "bytes_sent": n, "error_kind": None}


# -- keep-alive ----------------------------------------------------------------


def test_backend_connection_is_reused(tmp_path: Path) -> None:
    be = start_backend(tmp_path / "be")
    try:
        harness = start_harness(tmp_path / "gw", be.url)
        try:
            for i in range(5):
                body = b"x" * i
                assert call(harness.port, "POST", f"/n/{i}", body=body).status == 200
                assert call(harness.port, "GET", f"/g/{i}").status == 200
            counts = call(harness.port, "GET", "/connections").json()
            assert counts == {"accepted": 1, "open": 1}
        finally:
            harness.stop()
        assert_clean_log(harness.log)
    finally:
        be.stop()


def test_client_connection_is_kept_alive(gw: Harness) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        first = call(gw.port, "GET", "/a", conn=conn)
        sock = conn.sock
        assert sock is not None
        for path in ("/b", "/status/204", "/cookies", "/bytes/100000", "/status/404"):
            reply = call(gw.port, "GET", path, conn=conn)
            assert reply.status in (200, 204, 404)
            assert conn.sock is sock, f"reconnected before {path}"
        reply = call(gw.port, "HEAD", "/bytes/5000", conn=conn)
        assert conn.sock is sock
        assert first.status == 200 and reply.status == 200
    finally:
        conn.close()


# -- bodiless responses --------------------------------------------------------


def test_head_has_headers_but_no_body(gw: Harness) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        reply = call(gw.port, "HEAD", "/bytes/1000", conn=conn)
        assert reply.status == 200
        assert reply.body == b""
        assert reply.header("content-length") == ["1000"]
        echo = call(gw.port, "GET", "/after-head", conn=conn).json()  # no stray bytes
        assert echo["path"] == "/after-head"
    finally:
        conn.close()


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(gw: Harness, code: int) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(
            f"GET /status/{code} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
            + b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        head, rest = _recv_headers(sock)
        assert head.startswith(f"HTTP/1.1 {code}".encode())
        lower = head.lower()
        assert b"transfer-encoding" not in lower
        assert b"content-length: 0" in lower or b"content-length" not in lower
        # The next bytes on the connection are the next response, not a body.
        while b"\r\n\r\n" not in rest:
            rest += sock.recv(65536)
        assert rest.startswith(b"HTTP/1.1 200"), rest[:100]


# -- errors --------------------------------------------------------------------


def test_backend_refused_gives_503_json(tmp_path: Path) -> None:
    harness = start_harness(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        reply = call(harness.port, "POST", "/anything?x=1", body=b"data")
        assert reply.status == 503
        assert reply.header("content-type") == ["application/json"]
        error = reply.json()
        assert error["code"] == "101503"
        assert error["message"] == "Runtime Error"
        result = harness.result_for("/anything?x=1")
        assert (result["status"], result["error_kind"]) == (503, "refused")
        head = call(harness.port, "HEAD", "/h")
        assert head.status == 503 and head.body == b""
    finally:
        harness.stop()
    assert_clean_log(harness.log)


def test_slow_backend_gives_504_json(gw: Harness) -> None:
    started = time.monotonic()
    reply = call(gw.port, "GET", "/slow/5")
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert reply.header("content-type") == ["application/json"]
    assert reply.json()["code"] == "101504"
    assert BACKEND_TIMEOUT * 0.9 <= elapsed < BACKEND_TIMEOUT + 2
    result = gw.result_for("/slow/5")
    assert (result["status"], result["error_kind"]) == (504, "timeout")


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_backend_reset_mid_body_aborts_client(gw: Harness, query: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", f"/reset{query}")
        resp = conn.getresponse()
        assert resp.status == 200  # the headers were already on their way
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()
    result = gw.result_for(f"/reset{query}")
    assert result["error_kind"] == "reset"
    assert result["bytes_sent"] == 1000


def test_backend_idle_mid_body_times_out_and_aborts_client(gw: Harness) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", "/stall/1000")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()
    result = gw.result_for("/stall/1000")
    assert (result["error_kind"], result["bytes_sent"]) == ("timeout", 1000)


def _backend_open_connections(be: BackendProcess, expected: int, timeout: float = 5.0) -> int:
    """The backend's open-connection count (besides this query), once it equals `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        count = int(call(be.port, "GET", "/connections").json()["open"]) - 1
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_client_gone_before_response_cancels_backend(tmp_path: Path) -> None:
    be = start_backend(tmp_path / "be")
    harness = start_harness(tmp_path / "gw", be.url, "--backend-timeout", "30")
    try:
        with socket.create_connection(("127.0.0.1", harness.port), timeout=30) as sock:
            sock.sendall(b"GET /slow/20 HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert _backend_open_connections(be, 1) == 1
        result = harness.result_for("/slow/20")
        assert (result["status"], result["error_kind"]) == (499, "client_gone")
        assert _backend_open_connections(be, 0) == 0  # the backend request was cancelled
    finally:
        harness.stop()
        be.stop()
    assert_clean_log(harness.log)


def test_client_gone_mid_body_stops_backend(gw: Harness) -> None:
    n = 256 * MB
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(f"GET /bytes/{n}?gone HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        _recv_headers(sock)
        sock.recv(65536)
    result = gw.result_for(f"/bytes/{n}?gone")
    assert result["error_kind"] == "client_gone"
    assert 0 < result["bytes_sent"] < n


# -- https backends ------------------------------------------------------------


def _write_tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a 127.0.0.1/localhost server certificate it issued: (ca, cert, key) PEMs."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forward-test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_https_backend_with_trusted_ca(tmp_path: Path) -> None:
    ca, cert, key = _write_tls_files(tmp_path)
    be = start_backend(tmp_path / "be", tls=(cert, key))
    try:
        for url in (be.url, f"https://localhost:{be.port}"):
            harness = start_harness(
                tmp_path / url.split("//")[1].split(":")[0], url, "--backend-ca", str(ca)
            )
            try:
                for _ in range(3):
                    echo = call(harness.port, "POST", "/tls?x=1", body=b"over tls").json()
                    assert echo["path"] == "/tls?x=1"
                    assert echo["body_sha256"] == hashlib.sha256(b"over tls").hexdigest()
                n = 3 * MB
                reply = call(harness.port, "GET", f"/bytes/{n}")
                assert reply.body == pattern(0, n)
            finally:
                harness.stop()
            assert_clean_log(harness.log)
    finally:
        be.stop()


def test_https_backend_with_untrusted_certificate_gives_503(tmp_path: Path) -> None:
    _, cert, key = _write_tls_files(tmp_path)
    be = start_backend(tmp_path / "be", tls=(cert, key))
    try:
        harness = start_harness(tmp_path / "gw", be.url)  # default policy: system roots
        try:
            reply = call(harness.port, "GET", "/untrusted")
            assert reply.status == 503
            assert reply.json()["code"] == "101503"
            assert harness.result_for("/untrusted")["error_kind"] == "other"
            assert "TLS with the backend failed" in reply.json()["description"]
        finally:
            harness.stop()
    finally:
        be.stop()


# -- client behaviours ---------------------------------------------------------


def _read_response(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes, bytes]:
    """(head, body, rest) of one Content-Length-framed response read from `sock`."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1 * MB)
        assert chunk, buf[:200]
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(buf) < length:
        chunk = sock.recv(4 * MB)
        assert chunk, f"closed after {len(buf)} of {length} body bytes"
        buf += chunk
    return head, buf[:length], buf[length:]


def test_pipelined_large_responses(gw: Harness) -> None:
    n = 16 * MB
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        request = f"GET /bytes/{n}?pipe HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
        sock.sendall(request * 3)
        time.sleep(0.5)
        rest = b""
        for _ in range(3):
            head, body, rest = _read_response(sock, rest)
            assert head.startswith(b"HTTP/1.1 200")
            assert len(body) == n and body[:512] == pattern(0, 512)
            assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(0, n)).digest()
        assert rest == b""


def test_expect_100_continue_is_answered_by_the_gateway(gw: Harness) -> None:
    body = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /expect HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        head, data, _ = _read_response(sock, interim.partition(b"\r\n\r\n")[2])
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(data)
    assert "expect" not in sent_names(echo)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_connect_timeout_gives_503(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops SYNs, so connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        harness = start_harness(
            tmp_path,
            f"http://127.0.0.1:{port}",
            "--connect-timeout",
            "0.5",
            "--backend-timeout",
            "5",
        )
        try:
            started = time.monotonic()
            reply = call(harness.port, "GET", "/connect")
            elapsed = time.monotonic() - started
            assert reply.status == 503
            assert reply.json()["code"] == "101503"
            assert "within 0.5 seconds" in reply.json()["description"]
            assert elapsed < 3
            assert harness.result_for("/connect")["error_kind"] == "timeout"
        finally:
            harness.stop()
            for s in fillers:
                s.close()
    assert_clean_log(harness.log)
