"""The CPU [tracing] adds to one request, in process: the hooks the request path calls
(server span, one backend attempt, the end with its verdict) and the export of what they
make (the SDK's batch thread encoding to OTLP protobuf and posting it to a sink collector
on loopback), measured as this process's CPU time (``time.process_time``: every thread),
so other load on a shared machine counts far less than in wall-clock figures.

    .venv/bin/python bench/tracing_cost.py [--requests 5000] [--rounds 5]

Ratios 0.0 and 1.0 are interleaved round by round; "off" needs no measurement (no hook
runs: the request path checks one attribute). bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import otlp_sink
from twistedgw.config import TracingConfig
from twistedgw.tracing import IncomingRequest, Verdict, start_tracer

REQUEST = IncomingRequest(
    method=b"GET",
    path=b"/bench/small",
    secure=True,
    version=b"HTTP/1.1",
    host=b"localhost:8443",
    client="127.0.0.1",
    trusted=False,
    traceparent=None,
    tracestate=None,
    user_agent=b"wrk",
)


class Reactor:
    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        raise NotImplementedError


class Quiet:
    def spans_dropped(self, count: int) -> None:
        pass

    def spans_exported(self, count: int, ok: bool) -> None:
        pass


def one_round(tracer: Any, n: int) -> float:
    """CPU microseconds per request, export included."""
    verdict = Verdict(None, None, ("CN=partner-app",), ("mutual_ssl",))
    began = time.process_time()
    for _ in range(n):
        trace = tracer.start(REQUEST)
        backend = trace.backend(b"GET", b"http://127.0.0.1:8080/small")
        backend.end(200, None)
        trace.end(200, None, api="bench:1", route="/bench/*", verdict=verdict)
    tracer.flush()  # the export thread's work belongs to these requests
    return (time.process_time() - began) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    url, stop = otlp_sink()
    try:
        tracers = {
            ratio: start_tracer(
                TracingConfig(url, sample_ratio=ratio, max_queue_size=args.requests * 4),
                Reactor(),
                Quiet(),
            )
            for ratio in (0.0, 1.0)
        }
        for tracer in tracers.values():
            one_round(tracer, 500)  # warm up
        results: dict[float, list[float]] = {0.0: [], 1.0: []}
        for i in range(args.rounds):
            for ratio in (0.0, 1.0) if i % 2 == 0 else (1.0, 0.0):
                results[ratio].append(one_round(tracers[ratio], args.requests))
    finally:
        stop()
    for ratio, values in results.items():
        print(
            f"sample_ratio {ratio}: {statistics.median(values):.1f} CPU us/request "
            f"({min(values):.1f}..{max(values):.1f}) over {args.rounds} rounds of "
            f"{args.requests}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
