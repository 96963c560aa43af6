"""Wall A/B of two renderings of scenario 8's fronted include, per proxy CPU.

``python3 bench/nginx_ab.py --edit EDIT.py [--rows a,b] [--rounds 6] [--duration 5]
[--variant auth_request]`` starts two fronted pairs as bench/run.py's scenario 8 does
(NGINX on the include ``twistedgw nginx-config`` renders, twistedgw on its Unix socket),
A on this tree's rendering and B on ``edit(text, variant)`` of it (EDIT.py defines it, as
bench/nginx_cost.py's ``--edit``), and drives each through the same HAProxy front with
wrk, interleaved (A B, B A, ...). It prints each pair's CPU per request (NGINX's worker
and twistedgw, from /proc) and A/B per proxy CPU with the per-round spread.

``--against X`` (a row's letter) compares rows instead of renderings: each row of
``--rows`` (A) against row X (B) on the same pair, interleaved, so whether one row costs
more than another is read without the bare NGINX's spread between rows (bench/run.py
compares each row with its own rounds of the bare NGINX).

``--strace`` then runs each row once more on pair A (and, with ``--against``, row X)
with ``strace -c -f`` attached to the pair's processes (NGINX's and twistedgw's) and
prints their system calls per request under wrk's load: a backend or authz connection
made and closed per request (``connect``, ``close``, ``socket``) shows there, where
bench/nginx_cost.py's one sequential connection cannot make it happen.

Why: bench/nginx_cost.py counts user-space instructions, which is deterministic but
blind to the kernel (half of an NGINX worker's CPU); bench/run.py compares each pair
with a bare NGINX, whose own spread between rounds hides a few percent. Comparing the
two renderings with each other in the same minutes resolves a change of ~5% in three
minutes. Run it under ``flock /work/team/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edit", help="a Python file whose edit(text, variant) "
                   "rewrites the rendered include for B")
    p.add_argument("--against", help="a row's letter: compare each row with it on one pair")
    p.add_argument("--strace", action="store_true",
                   help="system calls per request under load (strace -c -f), pair A")
    p.add_argument("--rows", default="a", help="scenario 8's rows (letters), e.g. a,b")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--variant", default="auth_request", choices=("auth_request", "lua"))
    args = p.parse_args()
    if (args.edit is None) == (args.against is None):
        p.error("give --edit or --against")
    scope: dict[str, Any] = {"edit": lambda text, variant: text}
    if args.edit is not None:
        exec(Path(args.edit).read_text(), scope)
    edit = scope["edit"]

    from twistedgw.app import nginx as nginxconf

    real_render = nginxconf.render

    def render(config: Any, bundle: str | None = None, **kw: Any) -> nginxconf.Rendered:
        rendered = real_render(config, bundle, **kw)
        if bundle is not None and Path(bundle).name.startswith("fr-b-"):
            text = edit(rendered.text, kw.get("variant"))
            if text == rendered.text:
                raise SystemExit("the edit changed nothing")
            return nginxconf.Rendered(text, rendered.truststore_pem)
        return rendered

    nginxconf.render = render  # type: ignore[assignment]
    run.FRONTED = ((("fr-a", 10, args.variant),) if args.against else
                   (("fr-a", 10, args.variant), ("fr-b", 10, args.variant)))
    work = Path(tempfile.mkdtemp(prefix="twistedgw-ngxab-"))
    profile = run.Profile(args.rounds, args.duration, 1, (), 0, 0, 0, 0, ("nginx-fronted",))
    bench = run.Bench(work, profile, 0)
    try:
        bench.setup()
        rows = {letter: row for letter, row in zip("abcdefg", run.FRONTED_ROWS, strict=True)}

        def load(letter: str, pair: str) -> Any:
            _, front, path, headers, *_ = rows[letter]
            hdrs = tuple(f"Authorization: Bearer {bench.tokens['es256']}" if h == "jwt"
                         else h for h in headers)
            return lambda: bench.wrk(f"{pair}-{front}", path, 32, args.duration, hdrs)

        for letter, (label, front, *_) in rows.items():
            if letter not in args.rows or front == "cold":
                continue
            if args.against:
                label = f"against 8{args.against}"
                s = bench.compare(load(letter, "fr-a"), load(args.against, "fr-a"))
            else:
                s = bench.compare(load(letter, "fr-a"), load(letter, "fr-b"))
            a = [r["rps_per_cpu"] for r in s["a"]["runs"]]
            b = [r["rps_per_cpu"] for r in s["b"]["runs"]]
            ratios = [x / y for x, y in zip(a, b, strict=True)]
            print(f"8{letter} {label}: A {1e6 / statistics.median(a):.1f} µs/request, "
                  f"B {1e6 / statistics.median(b):.1f}; A/B per proxy CPU "
                  f"{statistics.median(a) / statistics.median(b):.3f} "
                  f"({min(ratios):.3f}..{max(ratios):.3f}); proxy CPU A "
                  f"{[r['proxy_cpu'] for r in s['a']['runs']]} B "
                  f"{[r['proxy_cpu'] for r in s['b']['runs']]}; errors {s['errors']}",
                  flush=True)
            if args.strace:
                for row in (letter, args.against) if args.against else (letter,):
                    if row:
                        print(f"  8{row} system calls per request under load: "
                              f"{strace_row(bench, load(row, 'fr-a'), args.duration)}",
                              flush=True)
    finally:
        bench.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def strace_row(bench: Any, load: Any, duration: float) -> str:
    """One wrk run of ``load`` with ``strace -c -f`` on pair A's processes: the calls
    per request by name (those at 0.01 or more), strace's own slowdown aside."""
    pids = [pid for member in bench.procs["fr-a"].members for pid in member.pids()]
    out = Path(tempfile.mkstemp(prefix="ngxab-strace-")[1])
    argv = ["strace", "-c", "-f", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached
        requests = load()["requests"]
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            count = int(fields[3])
            calls[fields[-1]] = calls.get(fields[-1], 0) + count
    out.unlink()
    per = {k: v / max(requests, 1) for k, v in calls.items()}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])
                      if v >= 0.01)
    return f"{sum(per.values()):.2f} ({shown}; {requests} requests)"


if __name__ == "__main__":
    sys.exit(main())
