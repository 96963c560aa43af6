"""Instructions per request of the NGINX worker, under callgrind: scenario 8 without the noise.

``python3 bench/nginx_cost.py [--requests 400] [--rows a,b,...] [--variants lua,auth_request]
[--gateway] [--annotate N] [--keep]`` starts scenario 8's systems as bench/run.py does
(the bare NGINX mTLS proxy, and the fronted pairs: the include ``twistedgw nginx-config``
renders from ``fronted_gateway_conf``, twistedgw on its Unix socket), each NGINX with
``master_process off`` under ``valgrind --tool=callgrind``. For each row of issue 26's
table it opens one keep-alive TLS connection with the client certificate, sends a warm-up
(the verdict gets cached), zeroes callgrind's counters, sends ``--requests`` requests one
at a time, and dumps: user-space instructions per request of the NGINX worker, and its
system calls per request (counted by callgrind as calls into libc's syscall wrappers).
``--gateway`` runs twistedgw under callgrind too (``PYTHONHASHSEED=0``), for its
instructions per decision on the rows that decide per request. ``--annotate N`` prints
each dump's N costliest functions (inclusive). Wall-clock figures on a shared machine
move by +-30% between runs; instruction counts move by well under 1%, so one cut's effect
shows at once. CPU per request is not instructions per request (the kernel's share, ~55%
of the worker in perf, is not counted here: see the system call column), so bench/run.py's
scenario 8 still gives the figures the targets are held to.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

#: libc entry points counted as system calls (what the worker calls per request).
SYSCALLS = ("epoll_wait", "recv", "recvfrom", "read", "readv", "send", "sendto", "write",
            "writev", "sendfile", "openat", "open", "close", "fstat", "pread", "pread64",
            "pwrite", "pwrite64", "rename", "unlink", "accept4", "connect", "socket",
            "setsockopt", "getsockopt", "ioctl", "fcntl", "epoll_ctl", "gettimeofday",
            "clock_gettime", "getpid", "lseek", "mkdir", "statx", "stat", "fstatat",
            "newfstatat")

#: (letter, row, system, path, headers, SNI/Host) of issue 26's table (run.FRONTED_ROWS).
ROWS = (
    ("a", "mTLS only", "", "/bench/small", (), "localhost"),
    ("b", "API key", "", "/key/small", (f"apikey: {run.FRONTED_KEY}",), "localhost"),
    ("c", "JWT, a token reused", "", "/jwt/small", ("jwt",), "localhost"),
    ("d", "two backends, load_balance", "", "/pool/small", (), "localhost"),
    ("e", "hosts + an SNI entry", "", "/shop/small", (), run.PARTNERS),
    ("f", "tiers (every request counted)", "", "/metered/small", (), "localhost"),
    ("g", "cache_seconds = 0", "-cold", "/bench/small", (), "localhost"),
)


@dataclass
class Dump:
    instructions: int
    calls: dict[str, int]
    path: Path


def read_dump(path: Path) -> Dump:
    """Total Ir and the calls into each libc syscall wrapper (callgrind's cfn/calls lines)."""
    text = path.read_text(errors="replace")
    total = 0
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if m:
        total = int(m.group(1))
    names: dict[str, str] = {}
    calls: dict[str, int] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("cfn="):
            m2 = re.match(r"cfn=\((\d+)\)(?: (.*))?", line)
            if m2:
                if m2.group(2):
                    names[m2.group(1)] = m2.group(2)
                current = names.get(m2.group(1), "")
            else:
                current = line[4:]
        elif line.startswith("calls=") and current:
            base = current.split("'")[0]
            if base in SYSCALLS or base.lstrip("_") in SYSCALLS:
                calls[base.lstrip("_")] = calls.get(base.lstrip("_"), 0) + int(
                    line[6:].split()[0])
            current = ""
        elif line.startswith("fn="):
            m3 = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
            if m3 and m3.group(2):
                names[m3.group(1)] = m3.group(2)
    return Dump(total, calls, path)


class Client:
    """One keep-alive TLS connection with the bench's client certificate."""

    def __init__(self, port: int, pki: run.devpki.DevPki, sni: str) -> None:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        crt, key = pki.clients[run.CLIENT]
        ctx.load_cert_chain(str(crt), str(key))
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        self.buf = b""

    def get(self, path: str, headers: tuple[str, ...], host: str) -> int:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            h + "\r\n" for h in headers) + "\r\n"
        self.sock.sendall(head.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        top, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(top.split(b" ", 2)[1])
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", top).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return status

    def close(self) -> None:
        self.sock.close()


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=300)


def annotate(path: Path, top: int) -> str:
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99",
                          str(path)], capture_output=True, text=True, check=False).stdout
    lines = [ln for ln in out.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
    return "\n".join(lines[:top])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--rows", default="a,b,c,d,e,f,g")
    p.add_argument("--variants", default="lua,auth_request")
    p.add_argument("--gateway", action="store_true", help="twistedgw under callgrind too")
    p.add_argument("--annotate", type=int, default=0)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--edit", help="a Python file whose edit(text, variant) rewrites the "
                   "rendered include first (to try a change before making it in the renderer)")
    args = p.parse_args()
    rows = [r for r in ROWS if r[0] in args.rows.split(",")]
    variants = args.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="twistedgw-ngxcost-"))
    bench = run.Bench(work, run.PROFILES["smoke"], 0)
    procs: list[run.Proc] = []
    try:
        www = work / "www"
        www.mkdir()
        pki = bench.pkis["ec"] = run.generate_pki(work / "pki-ec", "ec")
        backend, backend2 = run.free_port(), run.free_port()
        bench.ports.update(backend=backend, backend2=backend2)
        conf = work / "backend.conf"
        conf.write_text(run.nginx_backend_conf(work, backend, backend2))
        procs.append(run.start("backend", ["nginx", "-c", str(conf), "-p", str(work), "-e",
                                           str(work / "backend-error.log"), "-g", "daemon off;"],
                               run.CORE_LOAD, work, backend))
        bench.jwks, bench.tokens = run.jwt_setup(work, pki)
        bench.partners = pki.authorities["server-root"].server((run.PARTNERS,)).write(
            work, "partners")
        env = dict(os.environ, PYTHONPATH=str(run.REPO), PYTHONHASHSEED="0")
        systems: list[tuple[str, str, int]] = [("bare", "", 0)]
        cold = any(r[2] for r in rows)
        warm = any(not r[2] for r in rows)
        for variant in variants:
            short = "lua" if variant == "lua" else "auth"
            if warm:
                systems.append((f"fr-{short}", variant, 10))
            if cold:
                systems.append((f"fr-{short}-cold", variant, 0))
        results: list[tuple[str, str, Dump, Dump | None]] = []
        for name, variant, cache_seconds in systems:
            port = run.free_port()
            log = work / f"{name}-callgrind.out"
            gw_out = work / f"{name}-gw-callgrind.out"
            gw: run.Proc | None = None
            if name == "bare":
                conf = work / "bare.conf"
                conf.write_text(run.nginx_proxy_conf(work, "bare", pki, port, backend))
            else:
                toml = work / f"{name}.toml"
                toml.write_text(run.fronted_gateway_conf(
                    work, name, pki, port, backend, cache_seconds, backend2=backend2,
                    jwks=bench.jwks, sni=bench.partners))
                argv = [sys.executable, "-m", "twistedgw", "run", "--config", str(toml)]
                if args.gateway:
                    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                            f"--callgrind-out-file={gw_out}", *argv]
                gw = run.start(f"{name}-gw", argv, run.CORE_PROXY, work, None, env)
                procs.append(gw)
                sock = work / f"{name}.sock"
                deadline = time.monotonic() + 300
                while not sock.exists():
                    if time.monotonic() > deadline or gw.popen.poll() is not None:
                        raise RuntimeError(gw.log.read_text())
                    time.sleep(0.1)
                from twistedgw import config as configmod
                from twistedgw.app import nginx as nginxconf

                include = work / f"{name}-site.conf"
                bundle = work / f"{name}-truststore.pem"
                rendered = nginxconf.render(configmod.load(toml), str(bundle), variant=variant)
                text = rendered.text
                if args.edit:
                    scope: dict[str, object] = {}
                    exec(Path(args.edit).read_text(), scope)
                    text = scope["edit"](text, variant)  # type: ignore[operator]
                include.write_text(text)
                bundle.write_bytes(rendered.truststore_pem or b"")
                conf = work / f"{name}-nginx.conf"
                modules = nginxconf.LUA_MODULES if variant == "lua" else ()
                conf.write_text(run.fronted_nginx_conf(work, name, include, modules))
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={log}", "nginx", "-c", str(conf), "-p", str(work),
                    "-e", str(work / f"{name}-error.log"), "-g",
                    "daemon off; master_process off;"]
            ngx = run.start(name, argv, run.CORE_PROXY, work, port)
            procs.append(ngx)
            for letter, label, suffix, path, headers, sni in rows:
                if name == "bare":
                    if letter != "a":
                        continue
                elif bool(suffix) != name.endswith("-cold"):
                    continue
                hdrs = tuple(f"Authorization: Bearer {bench.tokens['es256']}" if h == "jwt"
                             else h for h in headers)
                target = "/bench/small" if name == "bare" else path
                client = Client(port, pki, sni if name != "bare" else "localhost")
                callgrind_control("-i", "on", str(ngx.popen.pid))
                if gw is not None and args.gateway:
                    callgrind_control("-i", "on", str(gw.popen.pid))
                for _ in range(args.warmup):
                    status = client.get(target, hdrs, sni)
                    if status != 200:
                        raise RuntimeError(f"{name} {target}: {status}")
                callgrind_control("-z", str(ngx.popen.pid))
                if gw is not None and args.gateway:
                    callgrind_control("-z", str(gw.popen.pid))
                for _ in range(args.requests):
                    client.get(target, hdrs, sni)
                callgrind_control("-d", f"{name}-{letter}", str(ngx.popen.pid))
                callgrind_control("-i", "off", str(ngx.popen.pid))
                gdump = None
                if gw is not None and args.gateway:
                    callgrind_control("-d", f"{name}-{letter}", str(gw.popen.pid))
                    callgrind_control("-i", "off", str(gw.popen.pid))
                    gdump = read_dump(_latest(gw_out))
                client.close()
                dump = read_dump(_latest(log))
                results.append((name if name == "bare" else f"{name} 8{letter}", label,
                                dump, gdump))
                _print(results[-1], args.requests, results[0][2], args.annotate)
            ngx.stop()
            if gw is not None:
                gw.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep:
            print(f"work directory: {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def _latest(base: Path) -> Path:
    dumps = sorted(base.parent.glob(base.name + ".*"), key=lambda q: q.stat().st_mtime)
    return dumps[-1]


def _print(result: tuple[str, str, Dump, Dump | None], n: int, bare: Dump, top: int) -> None:
    name, label, dump, gdump = result
    per = dump.instructions / n
    ratio = bare.instructions / dump.instructions if dump.instructions else 0
    calls = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(dump.calls.items()) if v / n >= 0.01)
    line = (f"{name:<22} {label:<32} {per:>10,.0f} instr/request  bare/this {ratio:.3f}  "
            f"syscalls/request: {sum(dump.calls.values()) / n:.2f} ({calls})")
    if gdump is not None:
        line += f"  twistedgw {gdump.instructions / n:,.0f} instr/request"
    print(line, flush=True)
    if top:
        print(annotate(dump.path, top))
        if gdump is not None:
            print(annotate(gdump.path, top))


if __name__ == "__main__":
    sys.exit(main())
