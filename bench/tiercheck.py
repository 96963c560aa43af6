"""The cost of one tier check: in process (TierThrottle) against Redis ([cluster]), same run.

    python3 bench/tiercheck.py [--checks 20000] [--in-flight 64] [--json out.json]

Starts its own redis-server on loopback (no persistence), then measures in this one
process, with the real reactor:

- in process: ``TierThrottle.take_limit`` per call (CPU, no I/O);
- Redis, one at a time: the round-trip latency of ``RedisTierStore.take_limit``
  (median, p99), i.e. what a request with a tier waits;
- Redis, ``--in-flight`` at once: checks per second and the gateway process's CPU
  per check (what the Redis client costs the gateway when many requests wait at once).

Every check spends from one of 1,000 buckets with a limit no check reaches, so all
are answered "allowed" and the script does the same work each time.

With ``--e2e N`` it also starts two gateway processes on the same echo backend, one
counting in process and one with ``[cluster]``, and sends N keep-alive requests over
TLS with a client certificate to each, interleaved, one at a time: the difference of
the medians is what a request with a tier pays for Redis.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

from twistedgw.config import ClusterConfig
from twistedgw.pipeline import RedisTierStore
from twistedgw.pipeline import _tiers as tiers

reactor: Any = _reactor
BUCKETS = 1000
RATE = 10_000_000  # requests a minute: never reached, every check is allowed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def limits() -> list[tiers.Limit]:
    return [tiers.Limit(f"/bench\x00leaf:{i:064x}".encode(), RATE) for i in range(BUCKETS)]


def in_process(checks: int) -> dict[str, Any]:
    throttle = tiers.TierThrottle()
    keys = limits()
    started = time.process_time()
    for i in range(checks):
        assert throttle.take_limit(keys[i % BUCKETS]) is None
    cpu = time.process_time() - started
    return {"checks": checks, "cpu_us_per_check": cpu / checks * 1e6}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@defer.inlineCallbacks
def in_redis(port: int, checks: int, in_flight: int) -> Any:
    store = RedisTierStore(
        ClusterConfig(redis=f"redis://127.0.0.1:{port}/0", scheme="redis", port=port,
                      key_prefix="bench:", timeout=1.0),
        reactor,
    )
    store.start()
    while store.problem is not None:
        yield task.deferLater(reactor, 0.05, lambda: None)
    keys = limits()
    # One at a time: what a request waits.
    waits = []
    for i in range(min(checks, 5000)):
        t0 = time.perf_counter()
        result = yield store.take_limit(keys[i % BUCKETS])
        waits.append(time.perf_counter() - t0)
        assert result is None
    # Many at once: throughput and the gateway's CPU per check.
    done = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def one(i: int) -> Any:
        d = store.take_limit(keys[i % BUCKETS])
        assert isinstance(d, defer.Deferred)
        return d

    def worker(start: int) -> Any:
        nonlocal done
        i = start
        while i < checks:
            result = yield one(i)
            assert result is None
            done += 1
            i += in_flight

    yield defer.gatherResults(
        [defer.inlineCallbacks(worker)(s) for s in range(in_flight)], consumeErrors=True
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    yield store.stop()
    return {
        "sequential_checks": len(waits),
        "round_trip_median_us": percentile(waits, 0.5) * 1e6,
        "round_trip_p99_us": percentile(waits, 0.99) * 1e6,
        "concurrent_checks": done,
        "in_flight": in_flight,
        "checks_per_second": done / wall,
        "gateway_cpu_us_per_check": cpu / done * 1e6,
        "script_reloads": store.script_reloads,
    }


def end_to_end(work: Path, redis_port: int, requests: int) -> dict[str, Any]:
    from tests.backend_fixture import start_backend
    from tests.e2e import context, tls_connect
    from tests.harness import free_port as harness_port
    from tests.harness import gateway_config, send, start_gateway, table
    from twistedgw.testing import devpki

    pki = devpki.generate(work / "pki")
    backend = start_backend(work / "backend")
    api = {"name": "Tiered", "version": "1", "context": "/t", "backend": backend.url,
           "mutual_ssl": "mandatory", "tiers": [{"alias": "partner-root",
                                                 "requests_per_minute": RATE}]}
    gateways = {}
    try:
        for name, extra in (("in process", ""), ("redis", table("cluster", {
                "redis": f"redis://127.0.0.1:{redis_port}/0", "key_prefix": "e2e:"}))):
            port = harness_port()
            gateways[name] = start_gateway(
                work / name.replace(" ", "-"), gateway_config(pki, [api], port=port, extra=extra),
                port)
        time.sleep(1.0)  # the Redis connection
        conns = {n: tls_connect(g.port, context(pki, "partner-app")) for n, g in gateways.items()}
        times: dict[str, list[float]] = {n: [] for n in gateways}
        for i in range(requests + 200):
            for name, conn in conns.items():
                t0 = time.perf_counter()
                r = send(conn, "/t/x")
                if i >= 200:  # warm-up
                    times[name].append(time.perf_counter() - t0)
                assert r.status == 200, (name, r.status, r.body)
        for conn in conns.values():
            conn.close()
        return {
            name: {"requests": len(t), "median_us": percentile(t, 0.5) * 1e6,
                   "p99_us": percentile(t, 0.99) * 1e6}
            for name, t in times.items()
        }
    finally:
        for gw in gateways.values():
            gw.stop()
        backend.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--e2e", type=int, default=0, metavar="N",
                        help="also N requests through a gateway each way")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        proc, port = start_redis(Path(work))
        try:
            out["in_process"] = in_process(args.checks * 10)

            def run() -> Any:
                d = in_redis(port, args.checks, args.in_flight)
                d.addCallback(lambda r: out.__setitem__("redis", r))
                d.addErrback(lambda f: out.__setitem__("error", f.getTraceback()))
                d.addBoth(lambda _: reactor.stop())

            reactor.callWhenRunning(run)
            reactor.run()
            if args.e2e:
                out["end_to_end"] = end_to_end(Path(work), port, args.e2e)
        finally:
            proc.kill()
            proc.wait()
    if "error" in out:
        print(out["error"], file=sys.stderr)
        return 1
    local, redis = out["in_process"], out["redis"]
    print(f"in process: {local['cpu_us_per_check']:.2f} us CPU per check "
          f"({local['checks']} checks)")
    print(f"Redis, one at a time: round trip median {redis['round_trip_median_us']:.0f} us, "
          f"p99 {redis['round_trip_p99_us']:.0f} us ({redis['sequential_checks']} checks)")
    print(f"Redis, {redis['in_flight']} in flight: {redis['checks_per_second']:.0f} checks/s, "
          f"{redis['gateway_cpu_us_per_check']:.1f} us gateway CPU per check "
          f"({redis['concurrent_checks']} checks)")
    for name, figures in out.get("end_to_end", {}).items():
        print(f"through a gateway, tier {name}: median {figures['median_us']:.0f} us, "
              f"p99 {figures['p99_us']:.0f} us per request ({figures['requests']} requests)")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
