"""The CPU of one cold decision: twistedgw's authz endpoint asked as NGINX asks it.

``python3 bench/authz_cost.py [--kind mtls|jwt|tiers] [--rounds 5] [--decisions 20000]
[--profile]`` starts one gateway on a Unix socket with bench/run.py's NGINX-fronted config
(``cache_seconds = 0``), then asks it as the rendered config does (the client certificate
in ``X-SSL-Client-Cert``, ``X-Twistedgw-Nginx``, the expected API), one question at a time
on a kept-alive connection, as NGINX asks, about an mTLS API (``--kind mtls``: the Lua
variant's question, row 8g), a JWT API with the token reused (``--kind jwt``:
``auth_request``'s, row 8c) or an API with tiers (``--kind tiers``: ``auth_request``'s,
row 8f, every decision counted here) (``--pipeline N`` sends N
at once, which costs the client less but the gateway's buffer handling more). It reports the
gateway's CPU time per decision (user + system, from /proc), median and range over the
rounds, and the median's split into user and system time. ``--syscalls`` also counts
the gateway's system calls per decision (``strace -f -c``, bench/syscalls.py's way)
during one more round. ``--callgrind N`` instead runs the gateway under callgrind and
reports its instructions per decision over N decisions (deterministic, for an A/B; the
dump is kept in ``--keep DIR`` for ``callgrind_annotate``). ``--profile`` also samples
the gateway with py-spy (``--rate`` per second) during one more round and prints the
hottest functions (bench/profile.py's summary). ``--cprofile N`` instead runs the
gateway under cProfile (bench/gap.py's wrapper) for N decisions and prints the functions'
own time and calls per decision, by component and costliest first (cProfile slows Python
more than C: for comparing, not absolute).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import callgrind
import run
import syscalls

#: What each ``--kind`` asks about: the judged path, the API NGINX names, what the
#: rendered config says it does with the answer (``X-Twistedgw-Nginx``), and whether the
#: client's request carries the bench token (NGINX's ``auth_request`` passes the
#: request's own headers on, ``Authorization`` with them).
KINDS = {
    # an mTLS API, as the Lua variant asks it with cache_seconds = 0 (row 8g)
    "mtls": ("/bench/small", "bench%3A1", "answer,token-key,tiers", False),
    # a JWT API in the auth_request variant: asked every request, the token reused (8c)
    "jwt": ("/jwt/small", "jwt%3A1", "answer", True),
    # an API with tiers in the auth_request variant: every request counted here (8f)
    "tiers": ("/metered/small", "metered%3A1", "answer", False),
}


def questions(
    pki: run.devpki.DevPki, n: int, kind: str = "mtls", token: str = "",
    content_length: bool = False,
) -> bytes:
    crt, _key = pki.clients[run.CLIENT]
    leaf = crt.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    uri, expected, asker, bearer = KINDS[kind]
    auth = f"Authorization: Bearer {token}\r\n" if bearer else ""
    # No Content-Length, as NGINX asks: the rendered auth_request location clears it
    # (``proxy_set_header Content-Length ""``) and the Lua ask sends none (since session
    # 10; before, ``Content-Length: 0``, which ``--content-length`` still asks with).
    length = "Content-Length: 0\r\n" if content_length else ""
    head = (
        "GET /_twistedgw/authz HTTP/1.1\r\nHost: localhost\r\n"
        f"X-Original-URI: {uri}\r\nX-Original-Method: GET\r\n"
        f"X-SSL-Client-Cert: {quote(leaf, safe='')}\r\nX-SSL-Client-Verify: SUCCESS\r\n"
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
        f"X-Twistedgw-Nginx: {asker}\r\nX-Twistedgw-Api-Expected: {expected}\r\n"
        f"{auth}{length}\r\n"
    ).encode()
    return head * n


def ask(s: socket.socket, batch: bytes, n: int) -> None:
    """Send ``batch`` (``n`` questions) on the kept-alive connection; read ``n`` answers."""
    s.sendall(batch)
    seen = 0
    tail = b""
    while seen < n:
        chunk = s.recv(1 << 16)
        if not chunk:
            raise RuntimeError(f"closed after {seen} answers")
        data = tail + chunk
        seen += data.count(b"HTTP/1.1 200 ")
        if b"HTTP/1.1 4" in data or b"HTTP/1.1 5" in data:
            raise RuntimeError(data[:400].decode("latin-1"))
        tail = data[-16:]


def user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / run.CLK_TCK, int(fields[12]) / run.CLK_TCK


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--callgrind", type=int, default=0, metavar="N",
                   help="instructions per decision over N decisions, under callgrind")
    p.add_argument("--content-length", action="store_true",
                   help="ask with Content-Length: 0 (the Lua ask's question before session 10)")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="own time per decision by function over N decisions, under cProfile")
    p.add_argument("--top", type=int, default=40, help="functions --cprofile shows")
    p.add_argument("--keep", type=Path, default=None, help="where the callgrind dump goes")
    p.add_argument("--syscalls", action="store_true",
                   help="count the gateway's system calls per decision (strace -f -c)")
    p.add_argument("--label", default="")
    p.add_argument("--pipeline", type=int, default=1)
    p.add_argument("--kind", choices=sorted(KINDS), default="mtls",
                   help="mtls: an mTLS API (row 8g); jwt: a JWT API, the token reused, "
                        "auth_request (8c); tiers: an API with tiers, auth_request (8f)")
    p.add_argument("--xfcc", action="store_true",
                   help="[identity] forward = xfcc (the answer carries the XFCC header)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twistedgw-authz-"))
    pki = run.devpki.generate(work / "pki", "ec")
    toml = work / "gw.toml"
    jwks, tokens = run.jwt_setup(work, pki) if args.kind == "jwt" else (None, {})
    text = run.fronted_gateway_conf(work, "authz", pki, 1, 1, 0, jwks=jwks)
    if args.xfcc:
        text = text.replace("[[apis]]", '[identity]\nforward = "xfcc"\n\n[[apis]]', 1)
    toml.write_text(text)
    env = {"PYTHONPATH": str(run.REPO), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "twistedgw", "run", "--config", str(toml)]
    out = work / "callgrind-authz.out"
    if args.callgrind:
        argv = [*callgrind.CALLGRIND, f"--callgrind-out-file={out}.%p", *argv]
    stats = work / "authz.pstats"
    if args.cprofile:
        gap_py = str(Path(__file__).with_name("gap.py"))
        argv = [sys.executable, gap_py, "--wrap", str(stats), *argv[1:]]
    gw = run.start("authz-gw", argv, run.CORE_PROXY, work, None, env)
    sock = work / "authz.sock"
    try:
        deadline = time.monotonic() + (300 if args.callgrind else 30)
        while not sock.exists():
            if time.monotonic() > deadline or gw.popen.poll() is not None:
                raise RuntimeError(gw.log.read_text())
            time.sleep(0.05)
        depth = args.pipeline
        batch = questions(pki, depth, args.kind, tokens.get("es256", ""), args.content_length)
        while True:  # the socket's file exists from bind, before listen (slow under valgrind)
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(30)
            try:
                conn.connect(str(sock))
                break
            except ConnectionRefusedError:
                conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ask(conn, batch, depth)  # warm
        if args.callgrind:
            counted = callgrind.System("authz", gw, 0, Path(f"{out}.{gw.popen.pid}"))
            counted.control("-i", "on")
            for _ in range(max(1, args.callgrind // 10) // depth):
                ask(conn, batch, depth)
            counted.control("-z")
            for _ in range(args.callgrind // depth):
                ask(conn, batch, depth)
            total = counted.dump_total(args.keep)
            print(f"authz endpoint instructions per decision"
                  f"{(' ' + args.label) if args.label else ''} (callgrind): "
                  f"{total / args.callgrind:,.0f} over {args.callgrind}")
            return 0
        if args.cprofile:
            gw.popen.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            for _ in range(args.cprofile // depth):
                ask(conn, batch, depth)
            gw.popen.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not stats.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            import gap  # (it takes this directory off sys.path: imported last)

            totals, functions = gap.by_component(stats, args.cprofile)
            calls = totals.pop("calls")
            print(f"cProfile own time per decision (µs, profiled), {args.cprofile} decisions, "
                  f"{calls:.0f} function calls per decision")
            for label, us in sorted(totals.items(), key=lambda kv: -kv[1]):
                print(f"  {label:<46} {us:8.1f}")
            print(f"  {'total':<46} {sum(totals.values()):8.1f}")
            for us, name in functions[:args.top]:
                print(f"  {us:7.2f} {name}")
            return 0
        per: list[tuple[float, float, float]] = []  # (total, user, system) us per decision
        for _ in range(args.rounds):
            user0, sys0 = user_system(gw.popen.pid)
            for _ in range(args.decisions // depth):
                ask(conn, batch, depth)
            user1, sys1 = user_system(gw.popen.pid)
            user, system = ((b - a) / args.decisions * 1e6 for a, b in
                            ((user0, user1), (sys0, sys1)))
            per.append((user + system, user, system))
        totals = [t for t, _u, _s in per]
        mid = sorted(per)[len(per) // 2]
        print(f"authz endpoint CPU per decision{(' ' + args.label) if args.label else ''}: "
              f"median {statistics.median(totals):.1f} us "
              f"(range {min(totals):.1f}..{max(totals):.1f}) over {args.rounds} rounds of "
              f"{args.decisions}; the median round {mid[1]:.1f} us user + {mid[2]:.1f} us "
              "system")
        if args.syscalls:
            out = work / "strace.txt"
            tracer = syscalls._strace(gw.popen.pid, out, count=True)
            for _ in range(args.decisions // depth):
                ask(conn, batch, depth)
            syscalls._detach(tracer)
            counts = syscalls.parse_counts(out.read_text())
            shown = ", ".join(f"{name} {n / args.decisions:.2f}" for name, n in
                              sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"system calls per decision (strace -f -c): "
                  f"{sum(counts.values()) / args.decisions:.2f}: {shown}")
        if args.profile:
            import profile as prof  # bench/profile.py

            folded = work / "authz.folded"
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([spy_bin, "record", "--format", "raw",
                                    "--rate", str(args.rate), "-o", str(folded),
                                    "--pid", str(gw.popen.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            for _ in range(args.decisions // depth):
                ask(conn, batch, depth)
            spy.send_signal(2)
            spy.wait(60)
            print(prof.summarise(folded, 40))
    finally:
        gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
