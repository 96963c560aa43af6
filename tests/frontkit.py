"""An in-memory ``FrontChannel`` (http/_front.py) over a ``StringTransport``, with a
handler that records what was dispatched: for the front's unit and property tests."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import IO, Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twistedgw.config import Limits
from twistedgw.http._front import FrontChannel
from twistedgw.http._guard import Guard
from twistedgw.wire import Exchange, answer_headers


def own_cost() -> ModuleType:
    """``bench/own_cost.py`` loaded as a module: its ``Harness`` drives the whole request
    path (front, routing, caller, pipeline, forwarder, metrics) over in-memory transports."""
    path = Path(__file__).resolve().parent.parent / "bench" / "own_cost.py"
    spec = importlib.util.spec_from_file_location("own_cost", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Seen:
    """What the handler was handed: one entry per dispatched request (its body read)."""

    method: bytes
    target: bytes
    body: bytes
    headers: list[tuple[bytes, bytes]]


def answer(exchange: Exchange, body: bytes = b"ok", status: int = 200,
           length: int | None = -1) -> None:
    """Answer ``exchange`` through its responder (``length=-1``: ``len(body)``)."""
    responder = exchange.responder
    responder.start_response(status, answer_headers(), len(body) if length == -1 else length)
    responder.write(body)
    responder.finish()


@dataclass
class Recorder:
    """The site's resource: reads each body, then answers ``answer`` at once, or holds
    the exchange when ``hold``; with ``read_body=False`` it answers without reading it."""

    answer: bytes = b"ok"
    hold: bool = False
    read_body: bool = True
    seen: list[Seen] = field(default_factory=list)
    held: list[Any] = field(default_factory=list)  # exchanges (or twisted.web requests)
    isLeaf = True

    def handle(self, exchange: Exchange) -> None:
        headers = [(n.lower(), v) for n, v in exchange.fields.pairs]

        def ready(body: IO[bytes] | None, size: int) -> None:
            self.seen.append(
                Seen(exchange.method, exchange.target, body.read() if body else b"", headers)
            )
            if self.hold:
                self.held.append(exchange)
            else:
                self.respond(exchange)

        if exchange.body is None or not self.read_body:
            ready(None, 0)
        else:
            exchange.body.read(ready)

    def respond(self, exchange: Exchange) -> None:
        answer(exchange, self.answer)

    def render(self, request: Any) -> bytes | int:
        """The same for a twisted.web request (HTTP/2 streams reach a Site's resource so)."""
        from twisted.web.server import NOT_DONE_YET

        content = request.content
        self.seen.append(Seen(
            request.method, request.uri, content.read() if content is not None else b"",
            [(n.lower(), v) for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
        ))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET  # type: ignore[no-any-return]
        return self.answer


class NoRoutes(Guard):
    """A guard that routes nothing (the channel then applies the global limits)."""

    def route(self, target: bytes | None, method: bytes | None = None,
              host: bytes | None = None) -> Any:
        return None


@dataclass
class Front:
    channel: FrontChannel
    transport: StringTransport
    clock: Clock
    resource: Recorder
    records: list[Any]

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def output(self) -> bytes:
        out: bytes = self.transport.value()
        return out


def front(limits: Limits | None = None, resource: Recorder | None = None) -> Front:
    clock = Clock()
    records: list[Any] = []
    runtime: Any = SimpleNamespace(config=SimpleNamespace(limits=limits or Limits()))
    gateway: Any = SimpleNamespace(runtime=runtime, notify=records.append)
    guard = NoRoutes(gateway)
    channel = FrontChannel(guard)
    recorder = resource or Recorder()
    channel.site = SimpleNamespace(resource=recorder)  # type: ignore[assignment]
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 443),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
    )
    channel.makeConnection(transport)
    return Front(channel, transport, clock, recorder, records)
