"""Profile twistedgw under scenario 1 (keep-alive, small responses, 32 connections),
or under a handshake scenario (``--scenario full``: 2a, a full ECDSA handshake per
request; ``--scenario resume``: 2c, a resumed session per request; ``--scenario fleet``:
2d, a full handshake per request from a fleet of distinct RSA client certificates), or
under scenario 9 (``--scenario h2``: h2load, 8 connections x 32 streams).

``python3 bench/profile.py [--seconds 15] [--scenario keepalive] [--out DIR]`` starts
the same setup as ``run.py`` (backend, gateway, HAProxy), samples the gateway with py-spy while
wrk loads it, and writes py-spy's collapsed stacks (``*.folded``, for
flamegraph tools or speedscope) plus a summary of the hottest functions by
self time and by inclusive time, and the split of issue 27 (``bench/split.py``: kernel,
GC, TLS, reactor, front, request path, upstream) in µs of proxy CPU per request, measured
by a second load run of the same length without the sampler. ``--native`` adds C frames
(needed to see the cyclic GC and to tell system calls apart).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
import split


def summarise(folded: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    out = [f"{total} samples", "", "self time:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--scenario", choices=["keepalive", "full", "resume", "fleet", "fleet12",
                                          "h2"],
                   default="keepalive")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "twistedgw-prof")
    p.add_argument("--native", action="store_true",
                   help="py-spy --native: C frames too (OpenSSL, the cyclic GC, the kernel calls)")
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install '.[bench]')", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="twistedgw-prof-"))
    profile = run.PROFILES["smoke"]
    h2 = args.scenario == "h2"
    if h2:
        profile.scenarios = ("h2",)
    elif args.scenario != "keepalive":
        profile.scenarios = ("keepalive", "handshake")  # the handshake front ends
    bench = run.Bench(work, profile, 400.0)
    folded = args.out / f"{args.scenario}.folded"
    us_per_request: float | None = None
    try:
        bench.setup()
        if h2:
            gateway = "gw-h2"
            load = threading.Thread(
                target=bench.h2load, args=(gateway, "/bench/small", 8, 32, args.seconds + 3)
            )
        else:
            gateway = "gw-ec"
            load = threading.Thread(
                target=bench.wrk,
                args=(f"gw-ec-{args.scenario}", "/bench/small", 32, args.seconds + 3),
            )
        load.start()
        subprocess.run(
            run.pinned(run.CORE_LOAD, [
                "py-spy", "record", "--format", "raw", "--rate", "250", "-d",
                str(args.seconds), "-o", str(folded), "-p", str(bench.procs[gateway].popen.pid),
                *(["--native"] if args.native else []),
            ]),
            check=True, timeout=args.seconds + 60, capture_output=True,
        )
        load.join()
        # The CPU per request, measured without the sampler (py-spy pauses the process
        # to read each stack): the split's shares are of this.
        if h2:
            measured = bench.h2load(gateway, "/bench/small", 8, 32, args.seconds)
        else:
            measured = bench.wrk(f"gw-ec-{args.scenario}", "/bench/small", 32, args.seconds)
        if measured.get("rps"):
            us_per_request = 1e6 * measured["proxy_cpu"] / measured["rps"]
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    shares, samples = split.split(folded)
    text = summarise(folded) + "\n\nsplit (bench/split.py):\n" + split.report(
        shares, samples, us_per_request)
    (args.out / f"{args.scenario}-summary.txt").write_text(text)
    print(text)
    print(f"\nstacks: {folded}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
