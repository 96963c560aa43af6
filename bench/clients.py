"""Load clients that wrk cannot be: they present a client certificate themselves.

Run as a separate process (pinned by ``run.py`` to the load-generator core):

* ``latency``: an open-loop client. Requests are *scheduled* at a fixed rate and
  each latency is measured from its scheduled start, so a stalled server cannot
  hide its queueing delay (no coordinated omission). A fixed set of keep-alive
  TLS connections carries them; a request that finds no free connection waits,
  and that wait counts.
* ``idle``: open N TLS connections (each sends one request, so the server has a
  complete HTTP channel), print ``READY n``, then hold them until stdin closes.

Only 127.0.0.1 is ever contacted; both modes stop by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time


def _context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


async def latency(args: argparse.Namespace) -> dict[str, object]:
    ctx = _context(args.cert, args.key, args.ca)
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(args.conns):
        free.put_nowait(
            await asyncio.open_connection(
                "127.0.0.1", args.port, ssl=ctx, server_hostname="localhost"
            )
        )
    request = _request(args.path)
    latencies: list[float] = []
    failures = 0

    async def one(scheduled: float) -> None:
        nonlocal failures
        conn = await free.get()
        reader, writer = conn
        try:
            writer.write(request)
            status = await _read_response(reader)
            if status != 200:
                failures += 1
            latencies.append(loop.time() - scheduled)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failures += 1
            conn = await asyncio.open_connection(
                "127.0.0.1", args.port, ssl=ctx, server_hostname="localhost"
            )
        free.put_nowait(conn)

    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    start = loop.time() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    _done, pending = await asyncio.wait(tasks, timeout=args.duration + 30)
    for t in pending:
        t.cancel()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "rate": args.rate,
        "scheduled": total,
        "completed": len(latencies),
        "failures": failures + len(pending),
        "p50_ms": _pct(ms, 50),
        "p90_ms": _pct(ms, 90),
        "p99_ms": _pct(ms, 99),
        "p999_ms": _pct(ms, 99.9),
        "max_ms": ms[-1] if ms else float("nan"),
    }


async def idle(args: argparse.Namespace) -> None:
    ctx = _context(args.cert, args.key, args.ca)
    gate = asyncio.Semaphore(args.parallel)
    conns: list[asyncio.StreamWriter] = []
    failures = 0
    request = _request(args.path)

    async def open_one() -> None:
        nonlocal failures
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", args.port, ssl=ctx, server_hostname="localhost"
                )
                writer.write(request)
                if await _read_response(reader) != 200:
                    failures += 1
                conns.append(writer)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                failures += 1

    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(open_one() for _ in range(args.count))), timeout=args.hold
    )
    print(
        json.dumps(
            {"open": len(conns), "failures": failures, "seconds": time.monotonic() - started}
        ),
        flush=True,
    )
    print("READY", flush=True)
    # Hold until the orchestrator closes our stdin (or the hold time runs out).
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        await asyncio.wait_for(reader.read(), timeout=args.hold)
    except TimeoutError:
        pass
    for w in conns:
        w.transport.abort()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["latency", "idle"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/bench/")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--parallel", type=int, default=64)
    p.add_argument("--hold", type=float, default=300)
    args = p.parse_args()
    if args.mode == "latency":
        print(json.dumps(asyncio.run(latency(args))), flush=True)
    else:
        asyncio.run(idle(args))


if __name__ == "__main__":
    main()
