"""Limits and timeouts against the real gateway process, with short settings.

Slow clients (dribbled headers, stalled bodies, silent TLS connections) must be
cut at their timeout while everyone else keeps being served; bodies over the
limit are refused with 413 and never forwarded, even partially.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import (
    GatewayProcess,
    client_context,
    free_port,
    gateway_config,
    start_gateway,
)
from tests.rawhttp import exchange, open_socket, read_response, wait_closed
from tests.recorder import Recorder, recording_backend
from twistedgw.testing.devpki import DevPki

HEADER_LIMIT = 4096
BODY_LIMIT = 100_000
SMALL_LIMIT = 1000
HEADER_TIMEOUT = 1.5
IDLE_TIMEOUT = 2.5
HANDSHAKE_TIMEOUT = 0.5

LIMITS = f"""
[limits]
max_header_bytes = {HEADER_LIMIT}
max_body_bytes = {BODY_LIMIT}
client_header_timeout = {HEADER_TIMEOUT}
idle_timeout = {IDLE_TIMEOUT}
handshake_timeout = {HANDSHAKE_TIMEOUT}
backend_connect_timeout = 1
backend_timeout = 5
"""


@dataclass
class Env:
    gw: GatewayProcess
    port: int  # plain HTTP
    tls_port: int
    rec: Recorder


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[Env]:
    # A listener with a full accept queue: connecting to it hangs (SYNs are dropped).
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    filler = socket.create_connection(blackhole.getsockname(), timeout=2)
    void_url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    with recording_backend() as rec, blackhole, filler:
        port, tls_port = free_port(), free_port()
        apis = [
            {"name": "small", "context": "/small", "backend": rec.url + "/small",
             "max_body_bytes": SMALL_LIMIT},
            {"name": "quick", "context": "/quick", "backend": backend.url,
             "backend_timeout": 0.5},
            {"name": "echo", "context": "/echo", "backend": backend.url},
            {"name": "void", "context": "/void", "backend": void_url},
            {"name": "dead", "context": "/dead", "backend": f"http://127.0.0.1:{free_port()}"},
            {"name": "rec", "context": "/", "backend": rec.url + "/rec"},
        ]
        text = gateway_config(
            pki, apis, port=port, extra=LIMITS,
            listeners=[{"host": "127.0.0.1", "port": port, "tls": False},
                       {"host": "127.0.0.1", "port": tls_port}],
        )
        gw = start_gateway(tmp_path_factory.mktemp("limits"), text, port, wait_for=(tls_port,))
        try:
            yield Env(gw, port, tls_port, rec)
        finally:
            gw.stop()


def get(port: int, path: str = "/hello") -> int:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=5).status


# -- header size -------------------------------------------------------------


def test_one_huge_header_is_431(env: Env) -> None:
    r = exchange(env.port, b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert r.status == 431 and r.json()["code"] == "431"


def test_many_headers_adding_up_is_431(env: Env) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(50))
    r = exchange(env.port, b"GET /h HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert r.status == 431 and r.json()["code"] == "431"


def test_headers_just_under_the_limit_pass(env: Env) -> None:
    env.rec.clear()
    head = b"GET /under HTTP/1.1\r\nHost: x\r\nX-Pad: "
    pad = HEADER_LIMIT - len(head) - len(b"\r\n\r\n") - 10
    r = exchange(env.port, head + b"p" * pad + b"\r\n\r\n")
    assert r.status == 200
    assert env.rec.paths() == ["/rec/under"]


def test_huge_request_line_is_414(env: Env) -> None:
    r = exchange(env.port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 414 and r.json()["code"] == "414"


# -- body size ---------------------------------------------------------------


def test_content_length_over_the_limit_is_413_before_the_body_is_sent(env: Env) -> None:
    env.rec.clear()
    for extra in (b"", b"Expect: 100-continue\r\n"):
        with open_socket(env.port) as s:
            s.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"
                      % (BODY_LIMIT + 1, extra))
            r = read_response(s, timeout=5)
        assert r.status == 413, r.head
        assert r.json()["code"] == "413"
    assert env.rec.paths() == []


def _send_chunked(port: int, path: str, total: int, chunk: int = 8192) -> tuple[int, object]:
    """Send a chunked body of ``total`` bytes as far as the gateway lets us."""
    with open_socket(port) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  .encode())
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                s.sendall(b"%x\r\n%s\r\n" % (n, b"c" * n))
                sent += n
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        r = read_response(s, timeout=5)
        return r.status, (r.json() if r.body else None)


def test_chunked_body_over_the_limit_is_413_and_never_forwarded(env: Env) -> None:
    env.rec.clear()
    status, body = _send_chunked(env.port, "/chunky", 3 * BODY_LIMIT)
    assert status == 413
    assert isinstance(body, dict) and body["code"] == "413"
    assert env.rec.paths() == []


def test_chunked_body_under_the_limit_is_forwarded_whole(env: Env) -> None:
    env.rec.clear()
    status, body = _send_chunked(env.port, "/chunky", BODY_LIMIT - 10)
    assert status == 200
    assert isinstance(body, dict) and body["body_len"] == BODY_LIMIT - 10


def test_per_api_body_limit(env: Env) -> None:
    env.rec.clear()
    payload = b"x" * (SMALL_LIMIT + 1)
    r = exchange(env.port, b"POST /small/up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(payload), payload))
    assert r.status == 413
    status, _ = _send_chunked(env.port, "/SMALL/up", SMALL_LIMIT + 1, chunk=100)
    assert status == 413  # routed case-insensitively, so the API's limit applies
    r = exchange(env.port, b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(payload), payload))
    assert r.status == 200
    assert env.rec.paths() == ["/rec/other"]


# -- slow clients ------------------------------------------------------------


class Dribbler(threading.Thread):
    """Sends a request's headers one byte at a time and notes when it is cut."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.status = -1
        self.elapsed = 0.0

    def run(self) -> None:
        start = time.monotonic()
        s = open_socket(self.port)
        try:
            for byte in b"GET /dribble HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 10_000:
                s.sendall(bytes([byte]))
                time.sleep(self.interval)
                if time.monotonic() - start > 10:
                    break
        except OSError:
            pass
        r = read_response(s, timeout=2)
        self.status = r.status
        self.elapsed = time.monotonic() - start
        s.close()


def test_dribbled_headers_are_cut_at_client_header_timeout_without_holding_others(
    env: Env,
) -> None:
    env.rec.clear()
    dribblers = [Dribbler(env.port) for _ in range(20)]
    for d in dribblers:
        d.start()
    time.sleep(0.3)
    # Everyone else is served promptly meanwhile.
    for _ in range(10):
        start = time.monotonic()
        assert get(env.port, "/meanwhile") == 200
        assert time.monotonic() - start < 0.5
    for d in dribblers:
        d.join(15)
        assert d.status == 408, d.status
        assert HEADER_TIMEOUT - 0.2 <= d.elapsed < HEADER_TIMEOUT + 1.5, d.elapsed
    assert "/rec/dribble" not in env.rec.paths()


def test_stalled_body_is_cut_at_idle_timeout_and_not_forwarded(env: Env) -> None:
    env.rec.clear()
    start = time.monotonic()
    with open_socket(env.port) as s:
        s.sendall(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10)
        time.sleep(0.2)
        assert get(env.port, "/meanwhile") == 200
        r = read_response(s, timeout=IDLE_TIMEOUT + 3)
        elapsed = time.monotonic() - start
        assert wait_closed(s, 2) is not None, "not closed after the 408"
    assert r.status == 408 and r.json()["code"] == "408"
    assert IDLE_TIMEOUT - 0.2 <= elapsed < IDLE_TIMEOUT + 1.5
    assert "/rec/stall" not in env.rec.paths()


def test_idle_keep_alive_connection_is_closed_at_idle_timeout(env: Env) -> None:
    with open_socket(env.port) as s:
        s.sendall(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s).status == 200
        s.sendall(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")  # still open: keep-alive works
        assert read_response(s).status == 200
        closed_after = wait_closed(s, IDLE_TIMEOUT + 3)
    assert closed_after is not None and IDLE_TIMEOUT - 0.3 <= closed_after < IDLE_TIMEOUT + 1.5


def test_connection_that_sends_nothing_is_cut(env: Env) -> None:
    with open_socket(env.port) as s:
        closed_after = wait_closed(s, HEADER_TIMEOUT + 3)
    assert closed_after is not None and closed_after < HEADER_TIMEOUT + 1


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
def test_tls_connection_without_a_full_client_hello_is_cut_at_handshake_timeout(
    env: Env, first_bytes: bytes
) -> None:
    with open_socket(env.tls_port) as s:
        s.sendall(first_bytes)
        closed_after = wait_closed(s, 5)
    assert closed_after is not None
    assert closed_after < HANDSHAKE_TIMEOUT + 0.7, closed_after
    assert get(env.port) == 200


def test_slow_tls_client_gets_408_and_is_closed(env: Env, pki: DevPki) -> None:
    """Over TLS too: the close must not wait for the HTTP channel's producer."""
    start = time.monotonic()
    with open_socket(env.tls_port) as raw:
        s = client_context(pki).wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"GET /slow-tls HTTP/1.1\r\nHost: x\r\nX-A: b")
        r = read_response(s, timeout=HEADER_TIMEOUT + 3)
        assert r.status == 408
        closed_after = wait_closed(s, 3)
    assert closed_after is not None and time.monotonic() - start < HEADER_TIMEOUT + 2


# -- backends ----------------------------------------------------------------


def test_api_backend_timeout_overrides_the_global_one(env: Env) -> None:
    start = time.monotonic()
    r = exchange(env.port, b"GET /quick/slow/3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 504 and r.json()["code"] == "101504"
    assert time.monotonic() - start < 2
    r = exchange(env.port, b"GET /echo/slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 200  # the global backend_timeout (5 s) applies here


def test_backend_refused_and_unreachable_are_503(env: Env) -> None:
    r = exchange(env.port, b"GET /dead/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 503 and r.json()["code"] == "101503"
    start = time.monotonic()
    r = exchange(env.port, b"GET /void/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 503 and r.json()["code"] == "101503"
    assert "within 1 seconds" in r.json()["description"]
    assert 0.9 < time.monotonic() - start < 3  # backend_connect_timeout = 1


# -- max_connections ---------------------------------------------------------


def test_max_connections(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
                         backend: BackendProcess) -> None:
    port = free_port()
    text = gateway_config(
        pki, [{"name": "echo", "context": "/", "backend": backend.url}], port=port,
        extra="[limits]\nmax_connections = 4\nclient_header_timeout = 30\n",
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
    )
    gw = start_gateway(tmp_path_factory.mktemp("maxconn"), text, port)
    held: list[socket.socket] = []
    try:
        time.sleep(0.3)  # the harness's own readiness probe must be gone
        held = [open_socket(port) for _ in range(4)]
        time.sleep(0.3)
        try:
            with open_socket(port) as extra:
                closed_after = wait_closed(extra, 3)
        except ConnectionResetError:
            # The refusal's reset can beat connect()'s own check of the socket (a
            # timeout makes it a non-blocking connect and a poll): closed at once.
            closed_after = 0.0
        assert closed_after is not None and closed_after < 1, "5th connection was kept"
        held.pop().close()
        time.sleep(0.3)
        assert get(port, "/ok") == 200
    finally:
        for s in held:
            s.close()
        gw.stop()
