"""Instructions per request or per handshake, counted by callgrind: a deterministic A/B.

    python3 bench/callgrind.py --scenario keepalive --requests 2000 [--tree DIR ...] [--nginx]
    python3 bench/callgrind.py --scenario full --client rsa --fresh --requests 200

Wall-clock figures on a shared machine move by tens of percent between runs; the
instructions a process executes for a fixed amount of work move by well under one.
Each system under test (the gateway of this tree, of every ``--tree`` given, and with
``--nginx`` an NGINX mTLS proxy doing the same work, with ``--minimal``
bench/minimal_proxy.py, the stack's floor) runs under ``valgrind
--tool=callgrind`` with instrumentation off while it starts; then, per round and per
system in turn (A B, B A, ...), instrumentation is switched on, ``--warmup`` requests
are made, the counters are zeroed, ``--requests`` requests are made, and the counters
are dumped: total instructions (Ir) / requests. One client connection at a time, each
request waiting for its answer, so every system sees the same sequence of reads and
writes (and the figure does not depend on how the slowed-down process batches them).

Scenarios: ``keepalive`` (one TLS connection, GET of a small response per request),
``full`` (a new TLS connection per request, full handshake, then the GET),
``resume`` (a new TLS connection per request resuming the first one's session).
The client certificate: ``--client ec`` (partner-app: ECDSA P-256 leaf and intermediate,
the chain bench/run.py uses), ``--client rsa`` (an RSA-2048 root, intermediate and leaf);
``--fresh`` gives every handshake a certificate of its own (a new key and leaf from the
same intermediate), as a fleet of clients does, where ``bench/run.py``'s one HAProxy
client presents the same chain every time. ``--server-key rsa`` serves an RSA-2048 server
certificate. ``--tls12`` caps the client at TLS 1.2.

Only 127.0.0.1 is used; every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (bench/run.py: configs and process handling)

from twistedgw.testing import devpki  # noqa: E402

CALLGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
RSA_ROOT_ALIAS = "bench-rsa-root"


@dataclass
class System:
    name: str
    proc: run.Proc
    port: int
    out: Path  # callgrind's output file prefix
    dumps: int = 0
    target: bytes = b"/bench/small"  # the minimal proxy routes nothing: /small
    figures: list[float] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)  # the last dump's, by object

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.popen.pid)], check=True,
                       capture_output=True, timeout=120)

    def dump_total(self, keep: Path | None = None) -> int:
        """Dump the counters; the total instructions since they were last zeroed
        (``keep``: a copy of the dump goes there, as ``callgrind.<name>.out``)."""
        self.control("-d")
        self.dumps += 1
        path = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists():
                text = path.read_text(errors="replace")
                m = re.search(r"^totals:\s+(\d+)", text, re.M)
                if m:
                    total = int(m.group(1))
                    self.objects = by_object(text)
                    if keep is not None:
                        keep.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, keep / f"callgrind.{self.name}.out")
                    path.unlink()
                    return total
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no callgrind dump at {path}")


def by_object(text: str) -> dict[str, int]:
    """Self instructions per shared object (the interpreter, OpenSSL, libc, the kernel
    boundary...) from a callgrind dump: where the instructions went."""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    current = "?"
    skip = False  # the cost line after ``calls=`` is a call's inclusive cost
    for line in text.splitlines():
        if line.startswith("ob="):
            ident, _, name = line[3:].partition(" ")
            if name:
                names[ident] = name
            current = names.get(ident, ident)
        elif line.startswith("cob="):
            ident, _, name = line[4:].partition(" ")
            if name:
                names[ident] = name
        elif line.startswith("calls="):
            skip = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                totals[current] = totals.get(current, 0) + int(parts[1])
    return totals


@dataclass
class Clients:
    """The client side: TLS contexts, one per certificate (``--fresh``: one per handshake)."""

    contexts: list[ssl.SSLContext]
    tls12: bool
    used: int = 0
    session: Any = None

    def next_context(self) -> ssl.SSLContext:
        ctx = self.contexts[self.used % len(self.contexts)]
        self.used += 1
        return ctx


def _context(pki: devpki.DevPki, crt: Path, key: Path, tls12: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.load_cert_chain(str(crt), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def make_pki(work: Path, client: str, server_key: str) -> tuple[devpki.DevPki, devpki.Authority]:
    """The dev PKI, the issuing CA of the chosen client kind, and (rsa) its root in the
    truststore under ``RSA_ROOT_ALIAS``."""
    pki = run.generate_pki(work / "pki", "rsa" if server_key == "rsa" else "ec")
    if client == "ec":
        return pki, pki.authorities["partner-issuing"]
    root = devpki.Authority.root("bench rsa root", "rsa")
    (pki.truststore_dir / f"{RSA_ROOT_ALIAS}.pem").write_bytes(devpki.cert_pem(root.cert))
    return pki, root.intermediate("bench rsa issuing CA")


def make_clients(work: Path, pki: devpki.DevPki, issuing: devpki.Authority, count: int,
                 tls12: bool, key_type: str) -> Clients:
    directory = work / "clients"
    contexts = []
    # Keys are reused from a small pool (an RSA key takes ~0.1 s to make); each leaf is
    # new, which is what the gateway's verdict cache is keyed by.
    keys = [devpki.new_key(key_type) for _ in range(min(count, 8))]  # type: ignore[arg-type]
    for i in range(count):
        issued = issuing.issue(f"bench-client-{i}", key=keys[i % len(keys)])
        crt, key = issued.write(directory, f"client-{i}")
        contexts.append(_context(pki, crt, key, tls12))
    return Clients(contexts, tls12)


def _read_response(sock: ssl.SSLSocket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before a response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"not a 200: {head[:200]!r}")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed mid-body")
        body += chunk


REQUEST = b"GET /bench/small HTTP/1.1\r\nHost: localhost\r\n\r\n"
REQUEST_CLOSE = b"GET /bench/small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def keepalive(port: int, clients: Clients, count: int, target: bytes) -> None:
    ctx = clients.contexts[0]
    request = REQUEST.replace(b"/bench/small", target)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        for _ in range(count):
            sock.sendall(request)
            _read_response(sock)


def handshakes(port: int, clients: Clients, count: int, resume: bool, target: bytes) -> None:
    request = REQUEST_CLOSE.replace(b"/bench/small", target)
    for _ in range(count):
        ctx = clients.contexts[0] if resume else clients.next_context()
        with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost",
                                session=clients.session if resume else None) as sock:
            sock.sendall(request)
            _read_response(sock)
            if resume:
                if clients.session is not None and not sock.session_reused:
                    raise RuntimeError("the session was not resumed")
                clients.session = sock.session
            # close_notify both ways, as a client that closes cleanly does
            try:
                sock.unwrap()
            except (OSError, ssl.SSLError):
                pass


def work_once(scenario: str, s: System, clients: Clients, count: int) -> None:
    if scenario == "keepalive":
        keepalive(s.port, clients, count, s.target)
    else:
        handshakes(s.port, clients, count, scenario == "resume", s.target)


def start_system(name: str, work: Path, argv: list[str], port: int,
                 env: dict[str, str] | None = None) -> System:
    out = work / f"callgrind-{name}.out"
    full = [*CALLGRIND, f"--callgrind-out-file={out}.%p", *argv]
    proc = run.start(name, full, run.CORE_PROXY, work, None, env)
    deadline = time.monotonic() + 300
    while True:
        try:
            run.wait_port(port, proc.popen, proc.log, timeout=5)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                proc.stop()
                raise
    return System(name, proc, port, Path(f"{out}.{proc.popen.pid}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("keepalive", "full", "resume"), default="keepalive")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tree", type=Path, action="append", default=[],
                   help="another twistedgw source tree to measure beside this one")
    p.add_argument("--label", action="append", default=[],
                   help="a name per --tree, in order (default: the directory's name)")
    p.add_argument("--no-self", action="store_true", help="measure the --tree(s) only")
    p.add_argument("--nginx", action="store_true", help="also an NGINX mTLS proxy")
    p.add_argument("--minimal", action="store_true",
                   help="also bench/minimal_proxy.py (the stack's floor, with --reactor-changes)")
    p.add_argument("--keep", type=Path,
                   help="copy each system's last dump here (for callgrind_annotate)")
    p.add_argument("--client", choices=("ec", "rsa"), default="ec")
    p.add_argument("--fresh", action="store_true",
                   help="a certificate of its own (new key, new leaf) for every handshake")
    p.add_argument("--server-key", choices=("ec", "rsa"), default="ec")
    p.add_argument("--tls12", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--by-object", action="store_true",
                   help="also where the instructions went, by shared object")
    args = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="twistedgw-callgrind-"))
    systems: list[System] = []
    backend: run.Proc | None = None
    try:
        pki, issuing = make_pki(work, args.client, args.server_key)
        if args.scenario == "full" and args.fresh:
            per_system = args.warmup + (args.requests + 5) * args.rounds
            count = per_system * ((0 if args.no_self else 1) + len(args.tree) + args.nginx
                                  + args.minimal)
        else:
            count = 1
        if args.client == "ec" and not args.fresh:
            crt, key = pki.clients[run.CLIENT]
            clients = Clients([_context(pki, crt, key, args.tls12)], args.tls12)
        else:
            clients = make_clients(work, pki, issuing, count, args.tls12, args.client)
        (work / "www").mkdir()
        backend_port = run.free_port()
        conf = work / "backend.conf"
        conf.write_text(run.nginx_backend_conf(work, backend_port))
        backend = run.start("backend", ["nginx", "-c", str(conf), "-p", str(work), "-e",
                                        str(work / "backend-error.log"), "-g", "daemon off;"],
                            run.CORE_LOAD, work, backend_port)
        aliases = ("partner-root", RSA_ROOT_ALIAS) if args.client == "rsa" else ("partner-root",)
        trees = ([] if args.no_self else [("this", REPO)]) + [
            (args.label[i] if i < len(args.label) else t.resolve().name, t.resolve())
            for i, t in enumerate(args.tree)
        ]
        for name, tree in trees:
            port = run.free_port()
            conf = work / f"{name}.toml"
            conf.write_text(run.gateway_conf(pki, port, backend_port, header_mode=False,
                                             aliases=aliases))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            systems.append(start_system(name, work, [sys.executable, "-m", "twistedgw", "run",
                                                     "--config", str(conf)], port, env))
        if args.minimal:
            port = run.free_port()
            systems.append(start_system("minimal", work, [
                sys.executable, str(HERE / "minimal_proxy.py"), "--port", str(port),
                "--backend", f"127.0.0.1:{backend_port}", "--cert", str(pki.server_cert),
                "--key", str(pki.server_key), "--truststore", str(pki.truststore_dir),
                "--reactor-changes"], port, {**os.environ, "PYTHONPATH": str(REPO)}))
            systems[-1].target = b"/small"
        if args.nginx:
            port = run.free_port()
            conf = work / "nginx.conf"
            text = run.nginx_proxy_conf(work, "nginx", pki, port, backend_port)
            # one process: the worker is the one measured
            conf.write_text("master_process off;\n" + text)
            systems.append(start_system("nginx", work, [
                shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(work), "-e",
                str(work / "nginx-error.log"), "-g", "daemon off;"], port))
        for s in systems:
            s.control("-i", "on")
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else list(reversed(systems))
            for s in order:
                clients.session = None
                work_once(args.scenario, s, clients, args.warmup if r == 0 else 5)
                s.control("-z")
                work_once(args.scenario, s, clients, args.requests)
                per = s.dump_total(args.keep) / args.requests
                s.figures.append(per)
                print(f"round {r + 1} {s.name}: {per:,.0f} instructions per request",
                      file=sys.stderr, flush=True)
    finally:
        for s in systems:
            s.proc.stop()
        if backend is not None:
            backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "scenario": args.scenario, "client": args.client, "fresh": args.fresh,
        "server_key": args.server_key, "tls12": args.tls12, "requests": args.requests,
        "rounds": args.rounds,
        "systems": {s.name: {"median": statistics.median(s.figures), "min": min(s.figures),
                             "max": max(s.figures), "rounds": s.figures} for s in systems},
    }
    base = systems[0]
    lines = [f"{args.scenario}, client {args.client}{' fresh' if args.fresh else ''}, "
             f"server key {args.server_key}{', TLS 1.2' if args.tls12 else ''}: "
             f"instructions per request, median (min..max) of {args.rounds} rounds of "
             f"{args.requests}"]
    for s in systems:
        ratio = statistics.median(s.figures) / statistics.median(base.figures)
        lines.append(f"  {s.name:>12}: {statistics.median(s.figures):>12,.0f} "
                     f"({min(s.figures):,.0f}..{max(s.figures):,.0f})  x{ratio:.3f} of "
                     f"{base.name}")
    if args.by_object:
        for s in systems:
            total = sum(s.objects.values()) or 1
            lines.append(f"  {s.name}, self instructions by object (last round, per request):")
            for name, n in sorted(s.objects.items(), key=lambda kv: -kv[1])[:8]:
                lines.append(f"    {n / args.requests:>12,.0f}  {100 * n / total:5.1f}%  "
                             f"{Path(name).name}")
        result["objects"] = {s.name: s.objects for s in systems}
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
