"""Malformed TLS against the real gateway process: refused cleanly, nothing leaks.

The issue asks for fds and memory to return to baseline after 10,000 failed
handshakes; this test runs 2,000 (about ten seconds) and the soak
(bench/soak.py) runs 10,000 and more.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from OpenSSL import SSL

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, free_port, gateway_config, request, start_gateway
from tests.tlsabuse import bad_handshake, client_hello, open_fds, read_all, rss_kb
from twistedgw.devpki import DevPki

FAILED_HANDSHAKES = 2000


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
       backend: BackendProcess) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [{"name": "echo", "context": "/", "backend": backend.url}]
    process = start_gateway(tmp_path_factory.mktemp("tlsrobust"),
                            gateway_config(pki, apis, port=port,
                                           extra="[limits]\nhandshake_timeout = 2\n"), port)
    try:
        yield process
    finally:
        process.stop()


def served(gw: GatewayProcess, pki: DevPki) -> bool:
    return request(gw.port, "/alive", pki=pki).status == 200


@pytest.mark.parametrize("version", [0x0301, 0x0302], ids=["TLS1.0", "TLS1.1"])
def test_old_protocol_hello_gets_a_protocol_version_alert(
    gw: GatewayProcess, pki: DevPki, version: int
) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(client_hello(version))
        reply = read_all(s)
    # One fatal alert record (type 21, level 2) saying protocol_version (70), then close.
    assert reply[:1] == b"\x15" and reply[5:7] == b"\x02\x46", reply.hex()
    assert served(gw, pki)


@pytest.mark.parametrize("size", [1, 5, 100, 5000])
def test_random_bytes_are_dropped(gw: GatewayProcess, pki: DevPki, size: int) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(random.Random(size).randbytes(size))
        start = time.monotonic()
        reply = read_all(s, 15)
    assert time.monotonic() - start < 4  # cut by handshake_timeout at the latest
    assert not reply.startswith(b"\x16"), "answered random bytes with a handshake"
    assert served(gw, pki)


def test_client_initiated_renegotiation_is_refused(gw: GatewayProcess, pki: DevPki) -> None:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)  # TLS 1.3 has no renegotiation at all
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        # Blocking (pyOpenSSL needs it), but never forever.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
        conn = SSL.Connection(ctx, s)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"localhost")
        conn.do_handshake()
        conn.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += conn.recv(65536)
        assert conn.renegotiate()
        # OpenSSL 3+ servers refuse client-initiated renegotiation (a CPU-exhaustion
        # vector) with a no_renegotiation alert; the client's handshake fails.
        with pytest.raises(SSL.Error) as refused:
            conn.do_handshake()
            conn.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.recv(65536)
        print("renegotiation attempt:", refused.value)
    assert served(gw, pki)


def test_fds_and_memory_return_to_baseline_after_failed_handshakes(
    gw: GatewayProcess, pki: DevPki
) -> None:
    pid = gw.proc.pid
    rng = random.Random(6)

    def storm(n: int) -> None:
        seeds = [rng.randrange(1 << 30) for _ in range(n)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: bad_handshake(gw.port, s % 6, random.Random(s)), seeds))

    storm(300)  # warm up allocator pools and caches before taking the baseline
    time.sleep(0.5)
    fds0, rss0 = open_fds(pid), rss_kb(pid)
    start = time.monotonic()
    storm(FAILED_HANDSHAKES)
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 10
    while open_fds(pid) > fds0 and time.monotonic() < deadline:
        time.sleep(0.2)
    fds1, rss1 = open_fds(pid), rss_kb(pid)
    print(f"{FAILED_HANDSHAKES} failed handshakes in {elapsed:.1f}s; "
          f"fds {fds0} -> {fds1}; RSS {rss0} -> {rss1} kB")
    assert fds1 <= fds0
    assert rss1 - rss0 < 8 * 1024, f"RSS grew by {rss1 - rss0} kB"
    assert served(gw, pki)
