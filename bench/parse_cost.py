"""What a request head costs to parse: the front's pure-Python parser vs httptools (llhttp).

``python3 bench/parse_cost.py [--rounds 5] [--number 20000]`` times, for three typical
request heads (about 140, 250 and 400 bytes), per head:

* ``front``: ``FrontChannel`` taking the head from its buffer (``twistedgw.wire``'s parse and
  the exchange): the split, every line's
  checks, the framing decision, the exchange with its ``Fields`` (routing and
  the resource left out: a stub answers nothing);
* ``httptools``: ``HttpRequestParser.feed_data`` with callbacks collecting the method,
  URL and header list: the C parse alone, none of the front's rules (duplicate
  Content-Length, Transfer-Encoding lists, Host count, target grammar, limits) and no
  request object: the floor a C parser could reach before those are added back;
* ``split (Python)`` vs ``split (llhttp)``: the only part of the front's take llhttp can
  replace while every rule still holds (CHANGELOG.md 0.4.0, "Fourth round"):
  finding the lines, the obs-fold, colon and token-name checks and the value strip in
  Python, against a fresh ``HttpRequestParser`` per head (llhttp keeps state across
  requests) with ``on_header`` collecting the fields, plus what the front must still do
  on its output: the CTL scan, the request-line split, the trailing-OWS strip (llhttp
  keeps it) and the lower-cased names the framing rules read.

Best of the rounds, in microseconds per head (the machine is shared: the minimum is the
figure least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twistedgw.config import Limits
from twistedgw.http._front import FrontChannel, Phase
from twistedgw.http._guard import Guard

HEADS = {
    "curl-like GET": (
        b"GET /bench/small HTTP/1.1\r\nHost: gw.example:8443\r\nUser-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\nX-Request-Id: 4b2a9c1e-6f0d-4e57-9a51-0c3f2d7e8b14\r\n\r\n"
    ),
    "API client GET": (
        b"GET /api/v1/orders/12345?expand=items&currency=EUR HTTP/1.1\r\n"
        b"Host: api.example.com\r\nUser-Agent: okhttp/4.12.0\r\nAccept: application/json\r\n"
        b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n"
        b"X-Request-Id: 4b2a9c1e-6f0d-4e57-9a51-0c3f2d7e8b14\r\nX-Tenant: acme\r\n\r\n"
    ),
    "browser-like GET": (
        b"GET /api/v1/orders?page=2&size=50 HTTP/1.1\r\nHost: api.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: application/json, text/plain, */*\r\nAccept-Language: en-GB,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\nReferer: https://app.example.com/orders\r\n"
        b"Origin: https://app.example.com\r\nConnection: keep-alive\r\n"
        b"Sec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\n\r\n"
    ),
}


class _Stub:
    """A resource that answers nothing (the exchange stays in flight; reset per head)."""

    isLeaf = True

    def handle(self, exchange: Any) -> None:
        pass


class _NoRoutes(Guard):
    def route(self, target: bytes | None, method: bytes | None = None,
              host: bytes | None = None) -> Any:
        return None


def _front() -> FrontChannel:
    runtime: Any = SimpleNamespace(config=SimpleNamespace(limits=Limits()))
    guard = _NoRoutes(SimpleNamespace(runtime=runtime, notify=lambda record: None))  # type: ignore[arg-type]
    channel = FrontChannel(guard)
    channel.site = SimpleNamespace(resource=_Stub())  # type: ignore[assignment]
    channel.callLater = Clock().callLater
    channel.makeConnection(StringTransport())
    return channel


def front_cost(head: bytes, number: int) -> float:
    channel = _front()

    def one() -> None:
        channel._phase = Phase.HEAD  # ready for the next head, as after a response
        channel._stream = None
        channel._buf = head
        channel._head()

    one()
    assert channel._stream is not None and channel._stream.target.startswith(b"/")
    return timeit.timeit(one, number=number) / number


def httptools_cost(head: bytes, number: int) -> float | None:
    try:
        import httptools
    except ImportError:
        return None

    class Collect:
        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            self.done = True

    def one() -> None:
        c = Collect()
        parser = httptools.HttpRequestParser(c)
        parser.feed_data(head)
        parser.get_method()

    one()
    return timeit.timeit(one, number=number) / number


def split_costs(head: bytes, number: int) -> tuple[float, float | None]:
    """The front's split and per-line checks, and llhttp's split with what must follow it."""
    from twistedgw.wire._abnf import CTL_IN_HEAD as _CTL_IN_HEAD
    from twistedgw.wire._abnf import TOKEN as _TOKEN

    text = head[:-4]

    def python() -> None:
        lines = text.split(b"\r\n")
        _CTL_IN_HEAD.search(text, len(lines[0]))
        lines[0].split(b" ")
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise ValueError(line)
            colon = line.find(b":")
            if colon <= 0 or not _TOKEN.match(line[:colon]):
                raise ValueError(line)
            line[colon + 1 :].strip(b" \t")
            line[:colon].lower()

    assert timeit.timeit(python, number=1) >= 0
    py = timeit.timeit(python, number=number) / number
    try:
        import httptools
    except ImportError:
        return py, None

    class Fields:
        __slots__ = ("fields",)

        def __init__(self) -> None:
            self.fields: list[tuple[bytes, bytes]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name, value))

    def llhttp() -> None:
        collect = Fields()
        httptools.HttpRequestParser(collect).feed_data(head)
        first = text.find(b"\r\n")
        _CTL_IN_HEAD.search(text, first)
        text[:first].split(b" ")
        for name, value in collect.fields:
            value.rstrip(b" \t")
            name.lower()

    # Both loops must do the same work: llhttp split the head into the front's fields.
    check = Fields()
    httptools.HttpRequestParser(check).feed_data(head)
    lines = text.split(b"\r\n")[1:]
    assert [(n, v.rstrip(b" \t")) for n, v in check.fields] == [
        (line.split(b":", 1)[0], line.split(b":", 1)[1].strip(b" \t")) for line in lines
    ], check.fields
    return py, timeit.timeit(llhttp, number=number) / number


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--number", type=int, default=20_000)
    args = p.parse_args()
    print(
        "| head | front (pure Python, all rules) | httptools (parse only) "
        "| split (Python) | split (llhttp + what must follow) |"
    )
    print("|---|---|---|---|---|")
    for label, head in HEADS.items():
        front = min(front_cost(head, args.number) for _ in range(args.rounds))
        costs = [httptools_cost(head, args.number) for _ in range(args.rounds)]
        c = min(x for x in costs if x is not None) if None not in costs else None
        ht = f"{c * 1e6:.1f} µs" if c is not None else "not installed"
        splits = [split_costs(head, args.number) for _ in range(args.rounds)]
        sp = min(x for x, _ in splits)
        lls = [y for _, y in splits if y is not None]
        ll = f"{min(lls) * 1e6:.1f} µs" if lls else "not installed"
        print(
            f"| {label}, {len(head)} B | {front * 1e6:.1f} µs | {ht} | {sp * 1e6:.1f} µs | {ll} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
