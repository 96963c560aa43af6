"""System calls per keep-alive request, counted by ``strace -c``: what callgrind does not see.

    python3 bench/syscalls.py --requests 2000 [--tree DIR ...] [--nginx] [--trace 3]

callgrind counts user-space instructions; the kernel work behind each ``send``,
``recv`` and ``epoll_*`` call is outside it. Each system under test (this tree's
gateway, every ``--tree``, and with ``--nginx`` a one-process NGINX mTLS proxy) is
started as bench/callgrind.py starts it; per system, one TLS connection makes
``--warmup`` requests, ``strace -f -c`` is attached to the process (all its threads),
the same connection makes ``--requests`` requests (each waiting for its answer), and
the counts by call name are divided by the number of requests. ``--trace N`` also
prints the calls of N requests in order (which writes leave as separate calls).
``--load`` counts the calls with ``--procs`` x ``--conns`` connections for ``--seconds``
(one request outstanding on each) and times ``--load-rounds`` such runs without strace.
``--cpu N`` then times N requests per round without strace (``--rounds``, the systems
in turn, A B, B A, ...): the process's CPU from ``/proc`` (user and system from its
``stat`` in clock ticks, the total from each thread's ``schedstat`` in ns) per request,
the kernel time that callgrind's instruction counts leave out.

Only 127.0.0.1 is used; every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402  (the same PKI, clients and configs)
import run  # noqa: E402

SHOWN = ("sendmsg", "sendto", "write", "writev", "recvfrom", "recvmsg", "read",
         "epoll_wait", "epoll_ctl", "getpid", "clock_gettime")


def _strace(pid: int, out: Path, count: bool) -> subprocess.Popen[bytes]:
    argv = ["strace", "-f", "-qq", "-o", str(out), "-p", str(pid)]
    argv += ["-c"] if count else ["-e", "trace=!futex", "-s", "0"]
    tracer = subprocess.Popen(argv, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached to every thread before the first request
    return tracer


def _detach(tracer: subprocess.Popen[bytes]) -> None:
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)


def parse_counts(text: str) -> dict[str, int]:
    """The ``calls`` column of ``strace -c``'s table, by call name."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
            calls = parts[3]
            if calls.isdigit():
                counts[parts[-1]] = int(calls)
    return counts


def cpu_ns(pid: int) -> tuple[int, int, int]:
    """(user, system, total) CPU nanoseconds of the process, all its threads."""
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(t.read_text().split()[0])
                for t in Path(f"/proc/{pid}/task").glob("*/schedstat"))
    return int(fields[11]) * tick, int(fields[12]) * tick, total


def measure(pid: int, port: int, clients: callgrind.Clients, args: argparse.Namespace,
            work: Path, name: str) -> tuple[dict[str, int], str]:
    ctx = clients.contexts[0]
    with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:

        def requests(n: int) -> None:
            for _ in range(n):
                sock.sendall(callgrind.REQUEST)
                callgrind._read_response(sock)

        requests(args.warmup)
        out = work / f"strace-{name}.txt"
        tracer = _strace(pid, out, count=True)
        requests(args.requests)
        _detach(tracer)
        counts = parse_counts(out.read_text())
        trace = ""
        if args.trace:
            out = work / f"trace-{name}.txt"
            tracer = _strace(pid, out, count=False)
            requests(args.trace)
            _detach(tracer)
            trace = out.read_text()
    return counts, trace


def timed(pid: int, port: int, clients: callgrind.Clients, count: int) -> tuple[float, ...]:
    """µs of (user, system, total) CPU per request over ``count`` requests."""
    ctx = clients.contexts[0]
    with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        for _ in range(20):
            sock.sendall(callgrind.REQUEST)
            callgrind._read_response(sock)
        before = cpu_ns(pid)
        for _ in range(count):
            sock.sendall(callgrind.REQUEST)
            callgrind._read_response(sock)
        after = cpu_ns(pid)
    return tuple((a - b) / count / 1000 for a, b in zip(after, before, strict=True))


def _client(port: int, ctx_args: tuple[str, str, str], conns: int, seconds: float,
            counter: Any) -> None:
    """One load process: ``conns`` connections, one request outstanding on each."""
    ca, crt, key = ctx_args
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["http/1.1"])
    socks = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60),
                             server_hostname="localhost") for _ in range(conns)]
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in socks:
            sock.sendall(callgrind.REQUEST)
        for sock in socks:
            callgrind._read_response(sock)
        done += conns
    for sock in socks:
        sock.close()
    with counter.get_lock():
        counter.value += done


def concurrent(pid: int, port: int, ctx_args: tuple[str, str, str], args: argparse.Namespace,
               work: Path, name: str, traced: bool) -> tuple[int, tuple[int, int, int], str]:
    """``--procs`` x ``--conns`` connections for ``--seconds``: requests made, the
    gateway's CPU ns over them, and (``traced``) strace's table."""
    counter = multiprocessing.Value("q", 0)
    workers = [multiprocessing.Process(target=_client, args=(port, ctx_args, args.conns,
                                                             args.seconds, counter))
               for _ in range(args.procs)]
    out = work / f"strace-load-{name}.txt"
    tracer = _strace(pid, out, count=True) if traced else None
    before = cpu_ns(pid)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    after = cpu_ns(pid)
    if tracer is not None:
        _detach(tracer)
    return (counter.value, tuple(a - b for a, b in zip(after, before, strict=True)),
            out.read_text() if traced else "")  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--tree", type=Path, action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--no-self", action="store_true")
    p.add_argument("--nginx", action="store_true")
    p.add_argument("--trace", type=int, default=0, help="print the calls of N requests")
    p.add_argument("--cpu", type=int, default=0, help="time N requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--load", action="store_true",
                   help="also --procs x --conns concurrent connections for --seconds")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--load-rounds", type=int, default=3)
    args = p.parse_args(argv)
    for tool in ("strace", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="twistedgw-syscalls-"))
    procs: list[tuple[str, run.Proc, int]] = []
    backend: run.Proc | None = None
    results: list[tuple[str, dict[str, int], str]] = []
    cpu: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    load_counts: dict[str, dict[str, float]] = {}
    load_cpu: dict[str, list[tuple[int, list[float]]]] = defaultdict(list)
    try:
        pki, _issuing = callgrind.make_pki(work, "ec", "ec")
        crt, key = pki.clients[run.CLIENT]
        clients = callgrind.Clients([callgrind._context(pki, crt, key, False)], False)
        (work / "www").mkdir()
        backend_port = run.free_port()
        conf = work / "backend.conf"
        conf.write_text(run.nginx_backend_conf(work, backend_port))
        backend = run.start("backend", ["nginx", "-c", str(conf), "-p", str(work), "-e",
                                        str(work / "backend-error.log"), "-g", "daemon off;"],
                            run.CORE_LOAD, work, backend_port)
        trees = ([] if args.no_self else [("this", REPO)]) + [
            (args.label[i] if i < len(args.label) else t.resolve().name, t.resolve())
            for i, t in enumerate(args.tree)
        ]
        for name, tree in trees:
            port = run.free_port()
            conf = work / f"{name}.toml"
            conf.write_text(run.gateway_conf(pki, port, backend_port, header_mode=False))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            procs.append((name, run.start(name, [sys.executable, "-m", "twistedgw", "run",
                                                 "--config", str(conf)], run.CORE_PROXY,
                                          work, port, env), port))
        if args.nginx:
            port = run.free_port()
            conf = work / "nginx.conf"
            text = run.nginx_proxy_conf(work, "nginx", pki, port, backend_port)
            conf.write_text("master_process off;\n" + text)
            procs.append(("nginx", run.start("nginx", [
                shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(work), "-e",
                str(work / "nginx-error.log"), "-g", "daemon off;"], run.CORE_PROXY, work,
                port), port))
        for name, proc, port in procs:
            counts, trace = measure(proc.popen.pid, port, clients, args, work, name)
            results.append((name, counts, trace))
        for r in range(args.rounds if args.cpu else 0):
            order = procs if r % 2 == 0 else list(reversed(procs))
            for name, proc, port in order:
                cpu[name].append(timed(proc.popen.pid, port, clients, args.cpu))
        ctx_args = (str(pki.server_ca), str(crt), str(key))
        for name, proc, port in procs if args.load else []:
            n, ns, table = concurrent(proc.popen.pid, port, ctx_args, args, work, name, True)
            load_counts[name] = {k: v / n for k, v in parse_counts(table).items()}
        for r in range(args.load_rounds if args.load else 0):
            order = procs if r % 2 == 0 else list(reversed(procs))
            for name, proc, port in order:
                n, ns, _ = concurrent(proc.popen.pid, port, ctx_args, args, work, name, False)
                load_cpu[name].append((n, [v / n / 1000 for v in ns]))
    finally:
        for _name, proc, _port in procs:
            proc.stop()
        if backend is not None:
            backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    names = sorted({c for _n, counts, _t in results for c in counts},
                   key=lambda c: (c not in SHOWN, SHOWN.index(c) if c in SHOWN else 0, c))
    print(f"system calls per keep-alive request ({args.requests} requests on one TLS "
          f"connection, strace -f -c)")
    print(f"{'call':>16} " + " ".join(f"{n:>10}" for n, _c, _t in results))
    for call in names:
        print(f"{call:>16} " + " ".join(f"{c.get(call, 0) / args.requests:>10.2f}"
                                        for _n, c, _t in results))
    print(f"{'total':>16} " + " ".join(f"{sum(c.values()) / args.requests:>10.2f}"
                                       for _n, c, _t in results))
    if cpu:
        print(f"\nCPU µs per request, median (min..max) of {args.rounds} rounds of {args.cpu} "
              f"(user and system in clock ticks, total from schedstat)")
        for name, rounds in cpu.items():
            cols = []
            for i, label in enumerate(("user", "system", "total")):
                v = [r[i] for r in rounds]
                cols.append(f"{label} {statistics.median(v):6.1f} ({min(v):.1f}..{max(v):.1f})")
            print(f"{name:>16}  " + "  ".join(cols))
    if load_counts:
        print(f"\nunder load: {args.procs} x {args.conns} connections, {args.seconds:g} s; "
              "system calls per request (strace -f -c)")
        names = sorted({c for counts in load_counts.values() for c in counts})
        print(f"{'call':>16} " + " ".join(f"{n:>10}" for n in load_counts))
        for call in names:
            print(f"{call:>16} " + " ".join(f"{c.get(call, 0):>10.2f}"
                                            for c in load_counts.values()))
        print(f"CPU µs per request without strace, median (min..max) of "
              f"{args.load_rounds} rounds (user and system in clock ticks):")
        for name, rounds in load_cpu.items():
            cols = [f"{sum(n for n, _v in rounds) / len(rounds):.0f} requests"]
            for i, label in enumerate(("user", "system", "total")):
                v = [r[1][i] for r in rounds]
                cols.append(f"{label} {statistics.median(v):6.1f} ({min(v):.1f}..{max(v):.1f})")
            print(f"{name:>16}  " + "  ".join(cols))
    for name, _c, trace in results:
        if trace:
            print(f"\n--- {name}: the calls of {args.trace} requests ---\n{trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
