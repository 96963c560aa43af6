"""What one idle TLS connection costs the gateway, and where: RSS and tracemalloc.

``python3 bench/idle_memory.py [--count 2000] [--tracemalloc]`` starts a backend
(tests/backend.py) and the gateway (a real process, ``twistedgw run``), opens
``--count`` mTLS connections that each make one request and then stay idle
(bench/clients.py idle), and prints the gateway's RSS growth per connection.
``--frames N`` keeps N frames per allocation and lists whole tracebacks (who made it).
With ``--tracemalloc`` the gateway runs under ``-X tracemalloc`` (which itself
costs RSS, so the RSS figure of that run is not the one to quote) and the
Python allocations that stayed per connection are listed by source line; what
RSS grew beyond them is native (OpenSSL, cffi). Everything is on 127.0.0.1,
bounded in time, and every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (bench/run.py: the gateway config the benchmark uses)


def _serve(config: str, snapshots: str) -> int:
    """The gateway in this process, with SIGUSR1 writing a tracemalloc snapshot."""
    from twistedgw.app import main

    count = [0]

    def dump(_sig: int, _frame: object) -> None:
        if tracemalloc.is_tracing():
            # A full collection first: it frees unreachable cycles and empties CPython's
            # free lists (a freed tuple or float kept for reuse is still a block at its
            # first allocation site to tracemalloc: up to 2,000 3-tuples looked like
            # ~54 B per connection at a routing line). Neither is what a connection holds.
            if not os.environ.get("IDLE_MEMORY_NO_COLLECT"):
                gc.collect()
            tracemalloc.take_snapshot().dump(f"{snapshots}.{count[0]}")
        count[0] += 1

    signal.signal(signal.SIGUSR1, dump)
    return main(["run", "--config", config])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the gateway did not listen")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshot(proc: subprocess.Popen[bytes], path: str) -> tracemalloc.Snapshot:
    if os.path.exists(path):
        os.unlink(path)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            return tracemalloc.Snapshot.load(path)
        except (OSError, EOFError, ValueError):
            continue
    raise RuntimeError("no tracemalloc snapshot")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-collect", action="store_true",
                   help="with --tracemalloc: no gc.collect() before each snapshot (as before "
                   "2026-12-06 evening: free lists and uncollected cycles count too)")
    p.add_argument("--frames", type=int, default=1,
                   help="with --tracemalloc: frames kept per allocation; above 1 the list is "
                   "grouped by whole traceback (where each allocation was made from)")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return _serve(*args.serve)

    from twistedgw.testing import devpki

    work = Path(tempfile.mkdtemp(prefix="twistedgw-idle-"))
    pki = devpki.generate(work / "pki")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    if args.no_collect:
        env["IDLE_MEMORY_NO_COLLECT"] = "1"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port_file = work / "backend.port"
        with (work / "backend.log").open("wb") as out:
            backend = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "backend.py"), "--port-file",
                 str(port_file)], stdout=out, stderr=subprocess.STDOUT, env=env)
        procs.append(backend)
        _wait_file(port_file, backend)
        port = _free_port()
        config = work / "gateway.toml"
        config.write_text(run.gateway_conf(pki, port, int(port_file.read_text().strip()),
                                           header_mode=False))
        snaps = str(work / "snap")
        argv = [sys.executable]
        if args.tracemalloc:
            argv += ["-X", f"tracemalloc={max(1, args.frames)}"]
        argv += [str(Path(__file__).resolve()), "--serve", str(config), snaps]
        with (work / "gateway.log").open("wb") as out:
            gateway = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        procs.append(gateway)
        _wait_port(port, gateway)
        crt, key = pki.clients["partner-app"]
        client_argv = [sys.executable, str(HERE / "clients.py"), "idle", "--port", str(port),
                       "--path", "/bench/small", "--cert", str(crt), "--key", str(key),
                       "--ca", str(pki.server_ca), "--hold", "300"]
        # Warm up (imports, first-use caches, the verdict cache) with a few connections.
        warm = subprocess.run([*client_argv, "--count", "20"], input="", text=True,
                              capture_output=True, timeout=120, check=False)
        if warm.returncode != 0:
            raise RuntimeError(warm.stderr)
        time.sleep(1.0)
        before_snap = _snapshot(gateway, snaps + ".0") if args.tracemalloc else None
        before = _rss_kib(gateway.pid)
        client = subprocess.Popen([*client_argv, "--count", str(args.count)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(client)  # type: ignore[arg-type]
        assert client.stdout is not None and client.stdin is not None
        summary: dict[str, int] = {}
        for line in client.stdout:
            if line.startswith("{"):
                summary = json.loads(line)
            if line.strip() == "READY":
                break
        time.sleep(1.0)
        after = _rss_kib(gateway.pid)
        opened = max(1, int(summary.get("open", 0)))
        result = {"open": opened, "failures": summary.get("failures"),
                  "rss_before_kib": before, "rss_after_kib": after,
                  "kib_per_conn": round((after - before) / opened, 2)}
        if before_snap is not None:
            after_snap = _snapshot(gateway, snaps + ".1")
            group = "traceback" if args.frames > 1 else "lineno"
            stats = after_snap.compare_to(before_snap, group)
            python = sum(s.size_diff for s in stats)
            result["python_kib_per_conn"] = round(python / opened / 1024, 2)
            print(json.dumps(result))
            for s in stats[: args.top]:
                frame, *callers = reversed(s.traceback)  # the allocating frame first
                print(f"{s.size_diff / opened:8.0f} B/conn {s.count_diff / opened:6.2f} "
                      f"blocks/conn  {frame.filename}:{frame.lineno}")
                for caller in callers:
                    print(f"{'':40}<- {caller.filename}:{caller.lineno}")
        else:
            print(json.dumps(result))
        client.stdin.close()
        client.wait(60)
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
