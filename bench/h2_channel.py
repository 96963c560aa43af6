"""The HTTP/2 channel's own CPU per stream, in process: no kernel, TLS, reactor or backend.

    PYTHONPATH=TREE python3 bench/h2_channel.py [--batches 50] [--rounds 7]

An ``h2`` client sends 32 GETs in one read to an ``H2Channel`` (``http/_h2.py``) behind
the listener's ``NegotiatingChannel``, over an in-memory transport; the site's resource
answers each stream whole (``Responder.respond``, as the forwarder does when a backend's
answer came in one read) and the next turn's flush writes the answers; the client reads
them and its WINDOW_UPDATEs go back in one read. Only the channel's side is timed (process
CPU): h2's frames and state machines, HPACK, the request header checks and the stream
objects, not the request path (the resource holds the exchange) nor the client. A figure
to compare trees in the same run (``PYTHONPATH=TREE``), not an absolute one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from twistedgw.config import Limits
from twistedgw.http import H2Factory
from twistedgw.http._guard import Guard

FIELDS = [(b"content-type", b"text/plain"), (b"server", b"twistedgw")]


class _Transport(StringTransport):
    negotiatedProtocol = b"h2"


class _Hold:
    """The resource: keeps each exchange, answered after the read."""

    isLeaf = True

    def __init__(self) -> None:
        self.held: list[Any] = []

    def handle(self, exchange: Any) -> None:
        self.held.append(exchange)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=50, help="reads of 32 GETs per round")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    clock = MemoryReactorClock()
    runtime: Any = SimpleNamespace(config=SimpleNamespace(limits=Limits()))
    guard = Guard(SimpleNamespace(runtime=runtime, notify=lambda record: None))  # type: ignore[arg-type]
    guard.route = lambda target, method=None, host=None: None  # type: ignore[method-assign]
    resource = _Hold()
    protocol: Any = H2Factory(Site(resource, reactor=clock), guard).buildProtocol(None)  # type: ignore[arg-type]
    transport = _Transport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 443),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
    )
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    protocol.dataReceived(client.data_to_send())
    client.receive_data(transport.value())
    transport.clear()
    cpu = time.process_time
    spent = 0.0

    def batch() -> None:
        nonlocal spent
        for _ in range(32):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(
                stream_id,
                [(b":method", b"GET"), (b":path", b"/bench/small"), (b":scheme", b"https"),
                 (b":authority", b"localhost")],
                end_stream=True,
            )
        data = client.data_to_send()
        start = cpu()
        protocol.dataReceived(data)
        held, resource.held = resource.held, []
        for exchange in held:
            exchange.responder.respond(200, list(FIELDS), 2, b"OK", b"ok", True)
        clock.advance(0)  # the flush
        spent += cpu() - start
        client.receive_data(transport.value())
        transport.clear()
        data = client.data_to_send()
        start = cpu()
        protocol.dataReceived(data)
        spent += cpu() - start

    for _ in range(20):
        batch()
    figures = []
    for _ in range(args.rounds):
        spent = 0.0
        for _ in range(args.batches):
            batch()
        figures.append(spent / (args.batches * 32) * 1e6)
    print(
        f"H2Channel: {statistics.median(figures):.1f} us of CPU per stream "
        f"(min {min(figures):.1f}, max {max(figures):.1f}; {args.rounds} rounds of "
        f"{args.batches * 32} streams)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
