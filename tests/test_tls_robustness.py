"""Malformed TLS against the real gateway process: refused cleanly, nothing leaks.

The issue asks for fds and memory to return to baseline after 10,000 failed
handshakes: test_fds_and_memory_return_to_baseline_after_failed_handshakes runs
exactly that many against the gateway process, 16 in flight, plus 50 connections
that never send a byte (cut by handshake_timeout; test_limits.py times that cut on
its own). On the 2-core dev machine the 10,000 take about 4 s (5-6 s beside a
running soak), the whole test 8-11 s.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from OpenSSL import SSL

from tests.backend_fixture import BackendProcess
from tests.harness import (
    GatewayProcess,
    client_context,
    free_port,
    gateway_config,
    request,
    start_gateway,
)
from tests.tlsabuse import (
    KINDS,
    Attempt,
    bad_handshake,
    client_hello,
    open_fds,
    read_all,
    read_until_closed,
    rss_kb,
)
from twistedgw.testing.devpki import DevPki

FAILED_HANDSHAKES = 10_000
SILENT = 50  # plus this many connections that never send anything, held in parallel
HANDSHAKE_TIMEOUT = 2
LIMITS = f"[limits]\nhandshake_timeout = {HANDSHAKE_TIMEOUT}\n"
# No fd slack: nothing in the storm reaches a backend (the 401 is decided before
# forwarding), so every fd the gateway opens for it is a client connection, and
# settle() waits (10 s at most) for the last closes, which the event loop makes
# asynchronously. Measured: 10 -> 10 in every run (11 -> 11 when an earlier test
# left a keep-alive backend connection in the pool; its closing only lowers the count).
FD_SLACK = 0
# RSS growth over the 10,000 (+ 50 silent), after the warm-up, on 6 fresh gateways:
# +2.0 to +2.5 MiB (2300, 2592, 2532 kB alone; 2212, 2364, 2044 kB beside a
# running soak). That is the malloc high-water mark (OpenSSL buffers at the most
# connections at once), not a per-connection leak: in one process, further rounds
# of 10,000 added +0.6, +0.6, 0, +0.2, +0.1, 0, +0.1 MiB, and tracemalloc in the
# gateway saw its Python heap change by -4 KiB over 30,000 of them (+207 B over
# 2,200 silent ones). The bound is about twice the worst run. A gateway that kept
# 300 bytes per connection measured +5.8 MiB, one that kept each connection's
# protocol object +27.6 MiB: both fail.
RSS_SLACK_KB = 5 * 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
       backend: BackendProcess) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [{"name": "echo", "context": "/", "backend": backend.url},
            {"name": "mtls", "context": "/mtls", "backend": backend.url,
             "mutual_ssl": "mandatory"}]
    process = start_gateway(tmp_path_factory.mktemp("tlsrobust"),
                            gateway_config(pki, apis, port=port, extra=LIMITS), port)
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


def refused_without_certificate(port: int, ctx: ssl.SSLContext) -> Attempt:
    """A complete TLS handshake with no client certificate, then a request to an API with
    mandatory mTLS: refused by policy (401). We close once the answer is in."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /mtls/x HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
    return Attempt("no-cert-401", head[:12], True, time.monotonic() - start)


def refused_cleanly(attempt: Attempt) -> bool:
    """What the gateway must have done with each kind of attempt."""
    if not attempt.closed:
        return False  # still open after 5 s: handshake_timeout (2 s) should have cut it
    if attempt.kind in ("tls1.0", "tls1.1"):
        return attempt.reply[:1] == b"\x15" and attempt.reply[5:7] == b"\x02\x46"
    if attempt.kind == "hello-close":
        return attempt.reply[:1] == b"\x16"  # a ServerHello: it was a real handshake
    if attempt.kind == "no-cert-401":
        return attempt.reply == b"HTTP/1.1 401"
    return not attempt.reply.startswith(b"\x16")  # never a handshake for garbage


# Attempt kinds by weight: tlsabuse.KINDS plus the policy refusal (index len(KINDS)).
# The two that do a full server-side handshake (ECDHE + ECDSA signature) are the
# costly ones; they are 2/10 of the mix.
WEIGHTS = [2, 1, 1, 1, 1, 2, 1, 1]
WORKERS = 16


def storm(gw: GatewayProcess, pki: DevPki, n: int, seed: int) -> list[Attempt]:
    no_cert = client_context(pki)
    rng = random.Random(seed)
    plan = [(k, rng.randrange(1 << 30))
            for k in rng.choices(range(len(WEIGHTS)), weights=WEIGHTS, k=n)]

    def one(item: tuple[int, int]) -> Attempt:
        kind, s = item
        if kind == len(KINDS):
            return refused_without_certificate(gw.port, no_cert)
        return bad_handshake(gw.port, kind, random.Random(s))

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, plan))


def settle(pid: int, fds0: int, seconds: float = 10.0) -> int:
    """The gateway's fds once the last closes went through (or ``seconds`` passed)."""
    deadline = time.monotonic() + seconds
    while open_fds(pid) > fds0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_fds(pid)


def silent_connections(port: int, n: int, cut_after: list[float]) -> None:
    """Open ``n`` connections (20 ms apart) that never send a byte; append how long
    each stayed open until the gateway closed it (inf if not within 5 s)."""
    opened = []
    for _ in range(n):
        opened.append((time.monotonic(), socket.create_connection(("127.0.0.1", port), 5)))
        time.sleep(0.02)
    for since, s in opened:
        with s:
            _, closed = read_until_closed(s, max(0.1, since + 5 - time.monotonic()))
            cut_after.append(time.monotonic() - since if closed else float("inf"))


def test_fds_and_memory_return_to_baseline_after_failed_handshakes(
    gw: GatewayProcess, pki: DevPki
) -> None:
    pid = gw.proc.pid
    # Warm up allocator pools, caches and the heap's high-water mark (SILENT idle TLS
    # connections at once take ~45 KiB each) with the same mix before the baseline.
    warm = threading.Thread(target=silent_connections, args=(gw.port, SILENT, []))
    warm.start()
    storm(gw, pki, 1000, seed=1)
    warm.join()
    fds0 = settle(pid, 0, 0.5)
    rss0 = rss_kb(pid)
    start = time.monotonic()
    cut_after: list[float] = []
    silent = threading.Thread(target=silent_connections, args=(gw.port, SILENT, cut_after))
    silent.start()
    attempts = storm(gw, pki, FAILED_HANDSHAKES, seed=6)
    silent.join()
    elapsed = time.monotonic() - start
    fds1 = settle(pid, fds0 + FD_SLACK)
    rss1 = rss_kb(pid)
    kinds = Counter(a.kind for a in attempts)
    unclean = [a for a in attempts if not refused_cleanly(a)]
    slowest = max(a.seconds for a in attempts)
    print(f"\n{len(attempts)} failed handshakes + {len(cut_after)} silent connections in "
          f"{elapsed:.1f}s ({dict(kinds)}); slowest {slowest:.2f}s, silent cut after "
          f"{min(cut_after):.2f}-{max(cut_after):.2f}s; fds {fds0} -> {fds1}; "
          f"RSS {rss0} -> {rss1} kB ({rss1 - rss0:+d} kB)")
    assert len(attempts) == FAILED_HANDSHAKES and len(kinds) == len(WEIGHTS)
    assert not unclean, unclean[:5]
    assert len(cut_after) == SILENT and max(cut_after) < HANDSHAKE_TIMEOUT + 2, max(cut_after)
    assert fds1 <= fds0 + FD_SLACK, f"open fds {fds0} -> {fds1}"
    assert rss1 - rss0 < RSS_SLACK_KB, f"RSS grew by {rss1 - rss0} kB"
    assert served(gw, pki)
