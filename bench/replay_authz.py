"""The floor of a decision per request: the cheapest Twisted process NGINX could ask.

``python3 bench/replay_authz.py --listen SOCK --gateway GWSOCK [--reactor-changes]``

Issue #26's rows that ask twistedgw on every request (8g, and 8c and 8f with
``auth_request``) pay for the ask itself: NGINX's side of it (the Lua cosocket or the
``auth_request`` subrequest) and the Python process that answers. This answerer stands
where twistedgw's authz socket is and does the least any Python answerer can: it reads a
question up to its blank line and writes the answer back. The first time it sees a
question it relays it to the real twistedgw (``--gateway``, its listener moved to another
socket) and keeps twistedgw's answer, byte for byte; from then on it replays that answer
to the same question without deciding anything. bench/run.py's scenario
``nginx-fronted`` runs it as the rows ``8x/floor``, so a per-decision row can be read
against what its stack allows, as scenario ``minimal`` does for the direct mode.

A benchmark tool only: a replayed answer is a decision made once, which is exactly what
``cache_seconds = 0`` forbids. Questions carry no body (the Lua ask and NGINX's
``auth_request`` subrequest send none); one with a ``Content-Length`` other than 0 is
answered 400 and the connection closed. ``--reactor-changes`` applies what ``twistedgw
run`` applies to the reactor and heap, as bench/minimal_proxy.py does.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

MAX_HEAD = 64 * 1024
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def fetch(gateway: str, head: bytes) -> bytes:
    """twistedgw's answer to one question, read by its Content-Length (blocking: once per
    distinct question, before the run's rounds measure anything)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(gateway)
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(65536)
            if not more:
                raise RuntimeError("twistedgw closed before answering")
            data += more
        end = data.index(b"\r\n\r\n") + 4
        length = 0
        for line in data[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < end + length:
            more = s.recv(65536)
            if not more:
                raise RuntimeError("twistedgw closed in an answer's body")
            data += more
    return data[: end + length]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="the Unix socket NGINX asks")
    p.add_argument("--gateway", required=True, help="twistedgw's own authz socket")
    p.add_argument("--reactor-changes", action="store_true")
    args = p.parse_args()
    from twisted.internet import reactor  # installs Twisted's default (epoll on Linux)
    from twisted.internet.protocol import Factory, Protocol

    if args.reactor_changes:
        from twistedgw import _reactor

        if not _reactor.adopt(reactor):
            raise SystemExit("--reactor-changes: the reactor is not Twisted's epoll reactor")

    answers: dict[bytes, bytes] = {}
    gateway = args.gateway

    class Replay(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            out = []
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, buf = buf[: end + 4], buf[end + 4 :]
                answer = answers.get(head)
                if answer is None:
                    low = head.lower()
                    at = low.find(b"\r\ncontent-length:")
                    if at >= 0 and low[at + 17 : low.index(b"\r\n", at + 2)].strip() != b"0":
                        self.transport.write(b"".join(out) + BAD)
                        self.transport.loseConnection()
                        return
                    answer = answers[head] = fetch(gateway, head)
                out.append(answer)
            if len(buf) > MAX_HEAD:
                self.transport.write(b"".join(out) + BAD)
                self.transport.loseConnection()
                return
            self.buf = buf
            if out:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    factory: Any = Factory.forProtocol(Replay)
    if os.path.exists(args.listen):
        os.unlink(args.listen)
    reactor.listenUNIX(args.listen, factory, backlog=1024)  # type: ignore[attr-defined]
    if args.reactor_changes:
        from twistedgw.app import _heap

        reactor.callWhenRunning(_heap.settle)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # twistedgw
    main()
