"""Forwarding through the real gateway process to the real echo backend, over real TLS.

Bodies of several MB both ways, keep-alive on both sides, header hygiene, the
X-Forwarded-* headers, and every error the gateway answers itself (404, 400,
413, 503, 504) as JSON.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.backend import pattern
from tests.backend_fixture import BackendProcess
from tests.e2e import context, echoed, echoed_headers, get, running_gateway, tls_connect
from tests.harness import GatewayProcess, Response, free_port, send
from twistedgw.testing.devpki import DevPki

MB = 1024 * 1024


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    apis: list[dict[str, Any]] = [
        {
            "name": "echo",
            "version": "v1",
            "context": "/echo",
            "backend": backend.url,
            "mutual_ssl": "mandatory",
            "aliases": ["partner-root"],
        },
        {"name": "open", "context": "/open", "backend": backend.url},
        {"name": "prefixed", "context": "/svc/v2", "backend": f"{backend.url}/base/path"},
        {"name": "down", "context": "/down", "backend": f"http://127.0.0.1:{free_port()}/x"},
    ]
    with running_gateway(tmp_path_factory.mktemp("http-gw"), pki, apis) as g:
        yield g


def valid(gw: GatewayProcess, pki: DevPki, path: str, **kwargs: Any) -> Response:
    return get(gw.port, path, pki, "partner-app", **kwargs)


def assert_json_error(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.body
    assert response.header("Content-Type") == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert set(body) == {"code", "message", "description"}
    assert body["message"] and body["description"]
    return body


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5 * MB + 17, 0, 1])
def test_upload(gw: GatewayProcess, pki: DevPki, size: int) -> None:
    body = os.urandom(size)
    response = valid(gw, pki, "/echo/upload?x=1", method="POST", body=body)
    assert response.status == 200
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/upload?x=1"
    assert echo["body_len"] == size
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def send_chunked(port: int, pki: DevPki, path: str, body: bytes) -> Response:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length)."""
    conn = tls_connect(port, context(pki, "partner-app"))
    try:
        pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        conn.request("POST", path, body=iter(pieces), encode_chunked=True)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def test_chunked_upload(gw: GatewayProcess, pki: DevPki) -> None:
    body = os.urandom(4 * MB + 3)
    response = send_chunked(gw.port, pki, "/echo/chunked", body)
    assert response.status == 200
    echo = response.json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_download(gw: GatewayProcess, pki: DevPki, query: str) -> None:
    size = 6 * MB + 5
    response = valid(gw, pki, f"/echo/bytes/{size}{query}")
    assert response.status == 200
    assert len(response.body) == size
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(pattern(0, size)).digest()


def test_upload_and_download_on_one_connection(gw: GatewayProcess, pki: DevPki) -> None:
    conn = tls_connect(gw.port, context(pki, "partner-app"))
    try:
        body = os.urandom(3 * MB)
        up = send(conn, "/echo/u", method="PUT", body=body)
        assert up.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        down = send(conn, f"/echo/bytes/{4 * MB}")
        assert down.body == pattern(0, 4 * MB)
    finally:
        conn.close()


# --- keep-alive ------------------------------------------------------------------------


def test_client_keep_alive(gw: GatewayProcess, pki: DevPki) -> None:
    """One socket, several requests, errors in between do not close it."""
    conn = tls_connect(gw.port, context(pki, "partner-app"))
    sock = conn.sock
    try:
        statuses = []
        for path in ["/echo/1", "/nowhere", "/echo/2", "/down/x", "/echo/3", "/open/4"]:
            statuses.append(send(conn, path).status)
            assert conn.sock is sock, "the gateway closed the client connection"
        assert statuses == [200, 404, 200, 503, 200, 200]
    finally:
        conn.close()


def _connections(gw: GatewayProcess, pki: DevPki) -> dict[str, int]:
    response = get(gw.port, "/open/connections", pki)
    assert response.status == 200
    counts: dict[str, int] = response.json()
    return counts


def test_backend_keep_alive(gw: GatewayProcess, pki: DevPki) -> None:
    """The gateway reuses pooled backend connections, whatever client connection asks."""
    before = _connections(gw, pki)
    conn = tls_connect(gw.port, context(pki, "partner-app"))
    try:
        for i in range(10):
            assert send(conn, f"/echo/ka/{i}").status == 200
    finally:
        conn.close()
    for i in range(5):  # a new client connection each time
        assert valid(gw, pki, f"/echo/ka-new/{i}").status == 200
    after = _connections(gw, pki)
    # 15 forwarded requests, made one after the other: at most one new backend connection.
    assert after["accepted"] - before["accepted"] <= 1, (before, after)


# --- headers ---------------------------------------------------------------------------


def test_method_path_query_status_kept(gw: GatewayProcess, pki: DevPki) -> None:
    for method in ("GET", "DELETE", "PATCH", "OPTIONS", "PUT"):
        echo = valid(gw, pki, "/echo/a/b%20c/?x=1&x=2&y=%2F", method=method).json()
        assert echo["method"] == method
        assert echo["path"] == "/a/b%20c/?x=1&x=2&y=%2F"
    teapot = valid(gw, pki, "/echo/status/418?phrase=Teapot")
    assert teapot.status == 418
    assert teapot.json()["method"] == "GET"
    assert valid(gw, pki, "/echo/status/204").status == 204
    assert valid(gw, pki, "/echo/status/201").status == 201
    # HEAD keeps its empty body and the backend sees a HEAD.
    assert valid(gw, pki, "/echo/x", method="HEAD").body == b""


def test_context_replaced_by_backend_path(gw: GatewayProcess, pki: DevPki) -> None:
    assert get(gw.port, "/svc/v2/pet/1?x=1", pki).json()["path"] == "/base/path/pet/1?x=1"
    assert get(gw.port, "/svc/v2", pki).json()["path"] == "/base/path"
    assert get(gw.port, "/SVC/V2/Pet", pki).json()["path"] == "/base/path/Pet"


def test_repeated_request_headers(gw: GatewayProcess, pki: DevPki) -> None:
    headers = [("X-Multi", "a"), ("X-Other", "o"), ("X-Multi", "b, c"), ("X-Multi", "d")]
    response = valid(gw, pki, "/echo/h", headers=headers)
    assert echoed(response, "X-Multi") == ["a", "b, c", "d"]
    assert echoed(response, "X-Other") == ["o"]


def test_several_set_cookie(gw: GatewayProcess, pki: DevPki) -> None:
    response = valid(gw, pki, "/echo/cookies")
    assert response.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    more = valid(gw, pki, "/echo/headers?set=X-R:1&set=X-R:2&set=Set-Cookie:c=3")
    assert more.header_all("X-R") == ["1", "2"]
    assert more.header_all("Set-Cookie") == ["c=3"]


def test_request_hop_by_hop_stripped(gw: GatewayProcess, pki: DevPki) -> None:
    headers = [
        ("Connection", "keep-alive, X-Hop-Named"),
        ("X-Hop-Named", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-T"),
        ("X-End-To-End", "kept"),
    ]
    response = valid(gw, pki, "/echo/hop", headers=headers)
    seen = {n.lower() for n, _v in echoed_headers(response)}
    for name in (
        "connection",
        "x-hop-named",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ):
        assert name not in seen, f"{name} reached the backend"
    assert echoed(response, "X-End-To-End") == ["kept"]


def test_response_hop_by_hop_stripped(gw: GatewayProcess, pki: DevPki) -> None:
    sets = [
        "X-Resp-Named:1",
        "Connection:X-Resp-Named",
        "Keep-Alive:timeout=99",
        "Proxy-Authenticate:Basic",
        "Upgrade:h2c",
        "X-Kept:yes",
    ]
    query = "&".join(f"set={s}" for s in sets)
    response = valid(gw, pki, f"/echo/headers?{query}")
    assert response.status == 200
    names = {n.lower() for n, _v in response.headers}
    for name in ("x-resp-named", "keep-alive", "proxy-authenticate", "upgrade"):
        assert name not in names, f"{name} reached the client"
    assert response.header("X-Kept") == "yes"


def test_forwarded_headers_set_by_gateway(gw: GatewayProcess, pki: DevPki) -> None:
    spoofed = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    response = valid(gw, pki, "/echo/xff", headers=spoofed)
    assert echoed(response, "X-Forwarded-For") == ["127.0.0.1"]
    assert echoed(response, "X-Forwarded-Proto") == ["https"]
    assert echoed(response, "X-Forwarded-Host") == [f"localhost:{gw.port}"]
    # The backend's Host is the backend's, not the client's.
    assert echoed(response, "Host") != [f"localhost:{gw.port}"]


@pytest.mark.parametrize("path", ["/echo/certs", "/open/certs"])
def test_certificate_headers_from_callers_never_reach_the_backend(
    gw: GatewayProcess, pki: DevPki, path: str
) -> None:
    """A backend that still trusts a load balancer's header must not be fooled either."""
    forged = [
        ("X-SSL-CERT", "forged"),
        ("X-Amzn-Mtls-Clientcert", "forged"),
        ("X-Forwarded-Tls-Client-Cert", "forged"),
        ("Ssl-Client-Verify", "SUCCESS"),
        ("X-Forwarded-Client-Cert", "Hash=00"),
        ("X-Kept", "yes"),
    ]
    response = valid(gw, pki, path, headers=forged)
    assert response.status == 200
    names = {n.lower() for n, _v in echoed_headers(response)}
    assert names.isdisjoint({n.lower() for n, _v in forged[:-1]}), names
    assert echoed(response, "X-Kept") == ["yes"]


# --- errors the gateway answers itself ---------------------------------------------------


def test_unknown_path_is_json_404(gw: GatewayProcess, pki: DevPki) -> None:
    for path in ("/nowhere", "/", "/echoes", "/open2/x"):
        body = assert_json_error(get(gw.port, path, pki, "partner-app"), 404, "404")
        assert path in body["description"]


@pytest.mark.parametrize("path", ["/open/a%2Fb", "/open/../../etc", "/open/%zz", "/open/a%00"])
def test_unsafe_path_is_json_400(gw: GatewayProcess, pki: DevPki, path: str) -> None:
    assert_json_error(get(gw.port, path, pki), 400, "400")


def test_auth_errors_are_json(gw: GatewayProcess, pki: DevPki) -> None:
    body = assert_json_error(get(gw.port, "/echo/x", pki), 401, "900902")
    assert body["description"] == "no client certificate was presented"
    body = assert_json_error(get(gw.port, "/echo/x", pki, "expired"), 401, "900901")
    assert body["description"] == "certificate has expired"


def test_backend_down_is_503(gw: GatewayProcess, pki: DevPki) -> None:
    assert_json_error(get(gw.port, "/down/x", pki), 503, "101503")
    assert_json_error(get(gw.port, "/down/x", pki, method="POST", body=b"x" * 1000), 503, "101503")


@pytest.fixture(scope="module")
def slow_gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    apis = [{"name": "slow", "context": "/slow-api", "backend": backend.url}]
    extra = "[limits]\nbackend_timeout = 0.5\nmax_body_bytes = 100000\n"
    with running_gateway(tmp_path_factory.mktemp("slow-gw"), pki, apis, extra=extra) as g:
        yield g


def test_backend_timeout_is_504(slow_gw: GatewayProcess, pki: DevPki) -> None:
    started = time.monotonic()
    body = assert_json_error(get(slow_gw.port, "/slow-api/slow/5", pki), 504, "101504")
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    assert "0.5" in body["description"]
    # Fast requests on the same gateway still pass.
    assert get(slow_gw.port, "/slow-api/slow/0", pki).status == 200


def test_body_over_limit_is_413(slow_gw: GatewayProcess, pki: DevPki) -> None:
    response = get(slow_gw.port, "/slow-api/x", pki, method="POST", body=b"x" * 100001)
    assert_json_error(response, 413, "413")
    ok = get(slow_gw.port, "/slow-api/x", pki, method="POST", body=b"x" * 100000)
    assert ok.status == 200
    assert ok.json()["body_len"] == 100000
    # Without a Content-Length (chunked), the limit holds all the same.
    assert_json_error(send_chunked(slow_gw.port, pki, "/slow-api/x", b"y" * 300000), 413, "413")
    assert send_chunked(slow_gw.port, pki, "/slow-api/x", b"y" * 100000).status == 200
