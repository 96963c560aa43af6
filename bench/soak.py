"""Soak: mixed hostile and valid traffic against a real gateway for N minutes.

    python3 bench/soak.py --minutes 10

Starts a dev PKI, the echo backend (tests/backend.py) and the gateway as users
do, then runs, all at once: valid mTLS requests (GET, uploads with a hash
check, downloads with a length check), invalid and absent certificates (must
get 401), aborted uploads and downloads, slow clients (dribbled headers,
stalled bodies), and failed TLS handshakes (random bytes, TLS 1.0/1.1 hellos,
plain HTTP, truncated hellos, a real TLS 1.2/1.3 hello then gone; ~50/s, so a
4-minute run passes the issue's 10,000). And the attacks of issue 17: a client
that pipelines GETs and never reads the answers, handshakes presenting a
self-signed leaf with ~85 kB of junk certificates (a different leaf each
time), and uploads of 200,000 one-byte chunks (must get 400).

Fails (exit 1) if any valid request fails, or if the gateway's open file
descriptors or RSS (from /proc/PID/status) grow: both are sampled after a
warm-up and again after the traffic stops and the gateway's timeouts have
closed everything. tests/test_soak.py runs a 60-second version in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backend_fixture import start_backend
from tests.harness import client_context, free_port, gateway_config, start_gateway
from tests.tlsabuse import KINDS, bad_handshake, open_fds, rss_kb
from twistedgw.testing import devpki


def huge_chains(directory: Path, leaves: int = 64, junk_bytes: int = 85_000) -> list[Path]:
    """``leaves`` PEM files, each a fresh self-signed client leaf, its key, and the
    same ~``junk_bytes`` of junk certificates after it (what a client may send)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = devpki.new_key("ec")
    now = datetime.datetime.now(datetime.UTC)
    junk: list[x509.Certificate] = []
    size = 0
    while size < junk_bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"junk {len(junk)}")])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), os.urandom(2000)), critical=False)
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        junk.append(cert)
        size += len(cert.tbs_certificate_bytes) + 100
    paths = []
    for i in range(leaves):
        leaf = devpki.self_signed_client(f"soak-huge-{i}")
        path = directory / f"huge-{i}.pem"
        path.write_bytes(devpki.cert_pem(leaf.cert, *junk) + devpki.key_pem(leaf.key))
        paths.append(path)
    return paths

LIMITS = """
[limits]
client_header_timeout = 2
idle_timeout = 3
handshake_timeout = 2
max_body_bytes = 67108864
"""


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def time(self, what: str, seconds: float) -> None:
        with self.lock:
            self.times.setdefault(what, []).append(seconds)

    def fail(self, what: str) -> None:
        with self.lock:
            self.counts["valid_failed"] = self.counts.get("valid_failed", 0) + 1
            if len(self.failures) < 20:
                self.failures.append(what)


class Traffic:
    def __init__(self, port: int, pki: devpki.DevPki, stats: Stats, stop: threading.Event,
                 huge: list[Path] | None = None):
        self.port, self.pki, self.stats, self.stop = port, pki, stats, stop
        self.contexts = {
            name: client_context(pki, name) for name in ("partner-app", "expired", "intruder")
        }
        self.contexts["none"] = client_context(pki)
        self.huge: list[ssl.SSLContext] = []
        for path in huge or []:
            ctx = ssl.create_default_context(cafile=str(pki.server_ca))
            ctx.load_cert_chain(str(path))
            self.huge.append(ctx)

    def conn(self, who: str) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", self.port, context=self.contexts[who],
                                           timeout=30)

    # -- valid traffic: every failure counts ------------------------------

    def valid(self, rng: random.Random) -> None:
        conn = self.conn("partner-app")
        try:
            for _ in range(rng.randint(1, 5)):  # keep-alive reuse
                kind = rng.random()
                if kind < 0.5:
                    conn.request("GET", f"/mtls/get?i={rng.random()}")
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        self.stats.fail(f"GET {r.status} {body[:200]!r}")
                        return
                elif kind < 0.8:
                    data = rng.randbytes(rng.randint(0, 4 << 20))
                    conn.request("POST", "/mtls/up", body=data)
                    r = conn.getresponse()
                    reply = r.read()
                    if r.status != 200 or json.loads(reply)["body_sha256"] != hashlib.sha256(
                        data
                    ).hexdigest():
                        self.stats.fail(f"upload {r.status} {reply[:200]!r}")
                        return
                else:
                    n = rng.randint(0, 8 << 20)
                    conn.request("GET", f"/open/bytes/{n}")
                    r = conn.getresponse()
                    got = len(r.read())
                    if r.status != 200 or got != n:
                        self.stats.fail(f"download {r.status} {got}/{n}")
                        return
                self.stats.count("valid_ok")
        except Exception as e:
            self.stats.fail(f"valid request raised {e!r}")
        finally:
            conn.close()

    # -- refused callers: must get 401 -------------------------------------

    def refused(self, rng: random.Random) -> None:
        who = rng.choice(["expired", "intruder", "none"])
        conn = self.conn(who)
        try:
            conn.request("GET", "/mtls/x")
            r = conn.getresponse()
            r.read()
            if r.status != 401:
                self.stats.fail(f"{who} certificate got {r.status}, not 401")
            else:
                self.stats.count("refused_401")
        except Exception as e:
            self.stats.fail(f"{who} certificate request raised {e!r}")
        finally:
            conn.close()

    # -- clients that misbehave: anything goes, the gateway must survive -----

    def aborted(self, rng: random.Random) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            tls = self.contexts["partner-app"].wrap_socket(sock, server_hostname="localhost")
            if rng.random() < 0.5:
                tls.sendall(b"POST /mtls/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
                tls.sendall(rng.randbytes(rng.randint(0, 2_000_000)))
            else:
                tls.sendall(b"GET /open/bytes/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
                tls.recv(rng.randint(1, 500_000))
            self.stats.count("aborted")
        except OSError:
            pass
        finally:
            sock.close()

    def slow(self, rng: random.Random) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                tls = self.contexts["partner-app"].wrap_socket(sock, server_hostname="localhost")
                if rng.random() < 0.5:
                    for byte in b"GET /mtls/slow HTTP/1.1\r\nHost: x\r\nX-Slow: zzzzzzzzzzzzzzz":
                        tls.sendall(bytes([byte]))
                        time.sleep(0.15)
                else:
                    tls.sendall(b"POST /mtls/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
                    tls.sendall(b"x" * 10)
                tls.settimeout(10)
                while tls.recv(65536):
                    pass
            self.stats.count("slow")
        except (OSError, ssl.SSLError):
            self.stats.count("slow")

    # -- issue 17: pipelined and never read, huge chains, one-byte chunks -------

    def pipelined_unread(self, rng: random.Random) -> None:
        """GETs answered at once (401), pipelined, never read: up to 4 MB, until the
        gateway stops reading (no progress for 2 s), then gone."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                tls = self.contexts["none"].wrap_socket(sock, server_hostname="localhost")
                tls.settimeout(2.0)
                block = b"GET /mtls/p HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
                sent = 0
                while sent < 4 << 20 and not self.stop.is_set():
                    tls.sendall(block)
                    sent += len(block)
                self.stats.count("pipelined_unread_never_stalled")
        except (OSError, ssl.SSLError):
            self.stats.count("pipelined_unread")

    def huge_chain(self, rng: random.Random) -> None:
        """A self-signed leaf and ~85 kB of junk certificates: 401, whatever the chain."""
        if not self.huge:
            return
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                tls = rng.choice(self.huge).wrap_socket(sock, server_hostname="localhost")
                tls.sendall(b"GET /mtls/h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = tls.recv(65536)
            if reply.startswith(b"HTTP/1.1 401 "):
                self.stats.count("huge_chain_401")
            else:
                self.stats.fail(f"huge chain got {reply[:40]!r}, not 401")
        except (OSError, ssl.SSLError) as e:
            self.stats.fail(f"huge chain raised {e!r}")

    def one_byte_chunks(self, rng: random.Random) -> None:
        """200,000 one-byte chunks: refused with 400 long before the end."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                tls = self.contexts["partner-app"].wrap_socket(sock, server_hostname="localhost")
                tls.sendall(b"POST /mtls/up HTTP/1.1\r\nHost: x\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
                block = b"1\r\nx\r\n" * 10_000
                reply = b""
                tls.settimeout(0.05)
                for _ in range(20):
                    tls.sendall(block)
                    try:
                        reply = tls.recv(65536)
                        break
                    except (TimeoutError, ssl.SSLWantReadError):
                        pass
                tls.settimeout(10)
                if not reply:
                    tls.sendall(b"0\r\n\r\n")
                    reply = tls.recv(65536)
            if reply.startswith(b"HTTP/1.1 400 "):
                self.stats.count("one_byte_chunks_400")
            else:
                self.stats.fail(f"one-byte chunks got {reply[:40]!r}, not 400")
        except (OSError, ssl.SSLError):
            self.stats.count("one_byte_chunks_400")  # refused and closed while sending

    def probe(self, rng: random.Random) -> None:
        """A new connection, a full handshake with the client certificate and one GET,
        timed from connect to the answer's status line: how long a caller waits while
        the attacks run (a reactor held by one connection shows here first)."""
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                tls = self.contexts["partner-app"].wrap_socket(sock, server_hostname="localhost")
                tls.sendall(b"GET /mtls/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = tls.recv(65536)
            if reply.startswith(b"HTTP/1.1 200 "):
                self.stats.count("probe_ok")
                self.stats.time("probe", time.monotonic() - started)
            else:
                self.stats.fail(f"handshake probe got {reply[:40]!r}")
        except (OSError, ssl.SSLError) as e:
            self.stats.fail(f"handshake probe raised {e!r}")

    def handshake(self, rng: random.Random) -> None:
        try:
            if not bad_handshake(self.port, rng.randrange(len(KINDS)), rng).closed:
                # Not closed within 5 s (handshake_timeout is 2 s): counted, not failed,
                # since a loaded gateway may be late; a leak shows in the fd check.
                self.stats.count("failed_handshakes_left_open")
        except OSError:
            pass
        self.stats.count("failed_handshakes")


def _loop(stop: threading.Event, rate: float | None, action: Callable[[random.Random], None],
          seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        started = time.monotonic()
        action(rng)
        if rate:
            stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - started)))


def soak(minutes: float, *, rss_slack_mb: float = 24.0, handshake_rate: float = 50.0,
         attack_rate: float = 1.0, pipelined: int = 0, workdir: Path | None = None,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak; return a summary whose ``ok`` says whether it passed.

    ``pipelined`` adds that many clients that pipeline requests and never read, each
    starting again as soon as the last one is done, beside the handshake probe (a new
    connection, a full handshake and a GET, back to back): the load that showed an
    earlier send-at-once write holding the reactor for seconds (tests/test_soak.py)."""
    base = Path(workdir or tempfile.mkdtemp(prefix="twistedgw-soak-"))
    pki = devpki.generate(base / "pki")
    backend = start_backend(base / "backend")
    port = free_port()
    apis = [
        {"name": "mtls", "context": "/mtls", "backend": backend.url, "mutual_ssl": "mandatory"},
        {"name": "open", "context": "/open", "backend": backend.url},
    ]
    gw = start_gateway(base / "gateway", gateway_config(pki, apis, port=port, extra=LIMITS), port)
    pid = gw.proc.pid
    stats, stop = Stats(), threading.Event()
    huge = huge_chains(base / "huge") if attack_rate else []
    traffic = Traffic(port, pki, stats, stop, huge)
    plan: list[tuple[Callable[[random.Random], None], float | None, int]] = [
        (traffic.valid, None, 3),
        (traffic.refused, 20.0, 1),
        (traffic.aborted, 5.0, 1),
        (traffic.slow, None, 4),
        (traffic.handshake, handshake_rate, 1),
    ]
    plan.append((traffic.probe, None, 1))
    if pipelined:
        plan.append((traffic.pipelined_unread, None, pipelined))
    if attack_rate:
        plan += [
            (traffic.pipelined_unread, attack_rate / 4, 1),
            (traffic.huge_chain, attack_rate * 2, 1),
            (traffic.one_byte_chunks, attack_rate, 1),
        ]
    threads = [
        threading.Thread(target=_loop, args=(stop, rate, action, i * 100 + n), daemon=True)
        for i, (action, rate, copies) in enumerate(plan)
        for n in range(copies)
    ]
    samples: list[tuple[float, int, int]] = []
    try:
        start = time.monotonic()
        for t in threads:
            t.start()
        warmup = min(20.0, minutes * 60 / 4)
        baseline: tuple[int, int] | None = None
        while time.monotonic() - start < minutes * 60:
            time.sleep(1)
            now = time.monotonic() - start
            samples.append((now, open_fds(pid), rss_kb(pid)))
            if baseline is None and now >= warmup:
                baseline = (samples[-1][1], samples[-1][2])
                log(f"[{now:5.0f}s] baseline after warm-up: RSS {baseline[1]} kB")
            if int(now) % 15 == 0:
                log(f"[{now:5.0f}s] fds {samples[-1][1]} RSS {samples[-1][2]} kB "
                    f"{json.dumps(stats.counts, sort_keys=True)}")
        stop.set()
        for t in threads:
            t.join(30)
        # Idle clients are gone; give the gateway's own timeouts time to close the rest.
        time.sleep(4)
        final = (open_fds(pid), rss_kb(pid))
    finally:
        stop.set()
        gw.stop()
        backend.stop()
    assert baseline is not None
    rss_growth_kb = final[1] - baseline[1]
    problems = []
    if stats.counts.get("valid_failed"):
        problems.append(f"{stats.counts['valid_failed']} valid requests failed")
    # The baseline was taken with traffic in flight, so a gateway that closed
    # everything it should have ends below it; a leak grows with the traffic.
    if final[0] > baseline[0]:
        problems.append(f"open fds {final[0]} after the traffic stopped (baseline {baseline[0]})")
    if rss_growth_kb > rss_slack_mb * 1024:
        problems.append(f"RSS grew by {rss_growth_kb} kB (allowed {rss_slack_mb:g} MB)")
    probe = sorted(stats.times.get("probe", [])) or [0.0]
    summary = {
        "ok": not problems,
        "problems": problems,
        "minutes": minutes,
        "counts": stats.counts,
        "failures": stats.failures,
        "fds": {"baseline": baseline[0], "peak": max(s[1] for s in samples), "final": final[0]},
        "rss_kb": {"baseline": baseline[1], "peak": max(s[2] for s in samples),
                   "final": final[1], "growth": rss_growth_kb},
        # connect -> handshake -> answer of the probe, seconds
        "probe_s": {"median": round(probe[len(probe) // 2], 3),
                    "p99": round(probe[min(len(probe) - 1, int(len(probe) * 0.99))], 3),
                    "max": round(probe[-1], 3)},
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rss-slack-mb", type=float, default=24.0,
                        help="allowed RSS growth from the post-warm-up baseline")
    parser.add_argument("--handshake-rate", type=float, default=50.0,
                        help="failed TLS handshakes per second")
    parser.add_argument("--attack-rate", type=float, default=1.0,
                        help="one-byte-chunk uploads per second (huge-chain handshakes at twice"
                             " that, pipelined-unread clients at a quarter); 0 turns them off")
    parser.add_argument("--pipelined", type=int, default=0,
                        help="clients that pipeline requests and never read, back to back")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args(argv)
    summary = soak(args.minutes, rss_slack_mb=args.rss_slack_mb,
                   handshake_rate=args.handshake_rate, attack_rate=args.attack_rate,
                   pipelined=args.pipelined, log=(lambda _: None) if args.json else print)
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
