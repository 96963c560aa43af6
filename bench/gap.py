"""Where twistedgw's keep-alive CPU goes above the minimal proxy's, by component.

    python3 bench/gap.py [--requests 5000] [--top 0]

bench/callgrind.py ``--minimal`` gives the totals (instructions per request, both
processes, the same one-connection keep-alive work); the interpreter's share of them
cannot be split by Python function there. This runs the gateway (``twistedgw run``,
bench/run.py's config) and bench/minimal_proxy.py (``--reactor-changes``) each under
cProfile, makes ``--warmup`` keep-alive requests on one TLS connection, switches the
profiler on (SIGUSR1), makes ``--requests`` more, switches it off and dumps it
(SIGUSR2), and sums each function's own time per request by component (its module:
the front, the wire parsers, routing and pipeline, the forwarder and backend client,
metrics, Twisted's reactor, TCP and TLS layers, pyOpenSSL, ...). cProfile slows
Python code more than C, so the figures are for comparing the two columns, not
absolute; the exact totals are callgrind's.

Only 127.0.0.1 is used; every process started here is stopped by its pid.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds a profile.py, which would shadow the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (component, what a function's file name contains), first match wins
COMPONENTS = (
    ("front: HTTP/1.1 connection (http/_front)", "twistedgw/http/_front"),
    ("wire: request/response head parsing", "twistedgw/wire/"),
    ("handle: routing, callers, pipeline", "twistedgw/http/"),
    ("handle: routing, callers, pipeline", "twistedgw/pipeline/"),
    ("handle: routing, callers, pipeline", "twistedgw/identity/"),
    ("forwarder + backend client (upstream/)", "twistedgw/upstream/"),
    ("metrics and access record (app/_observe)", "twistedgw/app/"),
    ("reactor changes (twistedgw/_reactor)", "twistedgw/_reactor"),
    ("other twistedgw", "twistedgw/"),
    ("minimal proxy's own code", "minimal_proxy.py"),
    ("Twisted TLS (protocols/tls)", "twisted/protocols/tls"),
    ("Twisted reactor, TCP, timers", "twisted/internet/"),
    ("Twisted logger / other", "twisted/"),
    ("pyOpenSSL (OpenSSL/SSL.py)", "OpenSSL/"),
    ("cffi calls into OpenSSL", "_cffi"),
    ("cffi calls into OpenSSL", "_openssl"),
    ("zope.interface", "zope/"),
)


def component(filename: str, name: str) -> str:
    for label, part in COMPONENTS:
        if part in filename:
            return label
    if filename == "~":  # a built-in: method of bytes, dict, socket...
        if "epoll" in name and "poll" in name:
            return "epoll.poll (mostly waiting: not CPU)"
        if "socket" in name or "epoll" in name or "send" in name or "recv" in name:
            return "socket and epoll calls"
        if "_openssl" in name or "lib." in name or "SSL_" in name:
            return "cffi calls into OpenSSL"
        return "built-ins (bytes, dict, list, len...)"
    return "other Python"


def wrap(out: str, target: list[str]) -> None:
    """In the child: run ``target`` (``-m MODULE ...`` or a script) under a profiler that
    SIGUSR1 switches on (cleared) and SIGUSR2 off, dumping to ``out``."""
    profiler = cProfile.Profile()

    def on(*_: Any) -> None:
        profiler.clear()
        profiler.enable()

    def off(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.argv = target[1:] if target[0] == "-m" else target
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target[0], run_name="__main__")


def by_component(path: Path, requests: int) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Own µs per request by component (and ``calls``: Python and built-in function calls
    per request); the functions, costliest first."""
    stats: Any = pstats.Stats(str(path)).stats
    totals: dict[str, float] = {"calls": 0.0}
    functions = []
    for (filename, line, name), (_cc, nc, tottime, _ct, _callers) in stats.items():
        label = component(filename, name)
        totals["calls"] += nc / requests
        us = tottime / requests * 1e6
        totals[label] = totals.get(label, 0.0) + us
        functions.append((us, f"{nc / requests:5.2f}x {Path(filename).name}:{line}({name})"))
    return totals, sorted(functions, reverse=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--wrap"]:
        wrap(argv[1], argv[2:])
        return 0
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    import callgrind  # bench/callgrind.py: PKI, clients, the request
    import run  # bench/run.py: configs and process handling

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--top", type=int, default=0, help="also the N costliest functions")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="twistedgw-gap-"))
    procs: list[run.Proc] = []
    results: dict[str, dict[str, float]] = {}
    tops: dict[str, list[tuple[float, str]]] = {}
    try:
        pki, _issuing = callgrind.make_pki(work, "ec", "ec")
        crt, key = pki.clients[run.CLIENT]
        ctx = callgrind._context(pki, crt, key, False)
        (work / "www").mkdir()
        backend_port = run.free_port()
        conf = work / "backend.conf"
        conf.write_text(run.nginx_backend_conf(work, backend_port))
        procs.append(run.start("backend", ["nginx", "-c", str(conf), "-p", str(work), "-e",
                                           str(work / "backend-error.log"), "-g",
                                           "daemon off;"], run.CORE_LOAD, work, backend_port))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        gw_port, min_port = run.free_port(), run.free_port()
        gw_conf = work / "gw.toml"
        gw_conf.write_text(run.gateway_conf(pki, gw_port, backend_port, header_mode=False,
                                            aliases=("partner-root",)))
        systems = [
            ("twistedgw", gw_port, b"/bench/small",
             ["-m", "twistedgw", "run", "--config", str(gw_conf)]),
            ("minimal", min_port, b"/small",
             [str(HERE / "minimal_proxy.py"), "--port", str(min_port), "--backend",
              f"127.0.0.1:{backend_port}", "--cert", str(pki.server_cert), "--key",
              str(pki.server_key), "--truststore", str(pki.truststore_dir),
              "--reactor-changes"]),
        ]
        for name, port, target, child in systems:
            out = work / f"{name}.prof"
            proc = run.start(name, [sys.executable, str(Path(__file__).resolve()), "--wrap",
                                    str(out), *child], run.CORE_PROXY, work, port, env)
            procs.append(proc)
            request = callgrind.REQUEST.replace(b"/bench/small", target)
            with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                for _ in range(args.warmup):
                    sock.sendall(request)
                    callgrind._read_response(sock)
                proc.popen.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
                for _ in range(args.requests):
                    sock.sendall(request)
                    callgrind._read_response(sock)
                proc.popen.send_signal(signal.SIGUSR2)
                deadline = time.monotonic() + 30
                while not out.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)
            results[name], tops[name] = by_component(out, args.requests)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    calls = {name: r.pop("calls") for name, r in results.items()}
    labels = sorted({k for r in results.values() for k in r},
                    key=lambda k: -results["twistedgw"].get(k, 0.0))
    print(f"cProfile own time per keep-alive request (µs, profiled), {args.requests} requests")
    print(f"{'component':<46} {'twistedgw':>10} {'minimal':>10} {'gap':>8}")
    for label in labels:
        a, b = results["twistedgw"].get(label, 0.0), results["minimal"].get(label, 0.0)
        print(f"{label:<46} {a:>10.1f} {b:>10.1f} {a - b:>8.1f}")
    ta, tb = sum(results["twistedgw"].values()), sum(results["minimal"].values())
    print(f"{'total':<46} {ta:>10.1f} {tb:>10.1f} {ta - tb:>8.1f}")
    print(f"{'function calls per request':<46} {calls['twistedgw']:>10.0f} "
          f"{calls['minimal']:>10.0f} {calls['twistedgw'] - calls['minimal']:>8.0f}")
    for name in tops if args.top else ():
        print(f"\n{name}: the {args.top} costliest functions (own µs per request)")
        for us, fn in tops[name][:args.top]:
            print(f"  {us:8.2f}  {fn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
