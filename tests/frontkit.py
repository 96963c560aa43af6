"""An in-memory ``FrontChannel`` (http/_front.py) over a ``StringTransport``, with a
resource that records what was dispatched: for the front's unit and property tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import NOT_DONE_YET

from twistedgw.config import Limits
from twistedgw.http._front import FrontChannel, FrontRequest
from twistedgw.http._guard import Guard


@dataclass
class Seen:
    """What the resource was handed: one entry per dispatched request."""

    method: bytes
    target: bytes
    body: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass
class Recorder:
    """A leaf resource: answers ``answer`` at once, or holds requests when ``hold``."""

    answer: bytes = b"ok"
    hold: bool = False
    seen: list[Seen] = field(default_factory=list)
    held: list[FrontRequest] = field(default_factory=list)
    isLeaf = True

    def render(self, request: FrontRequest) -> bytes | int:
        content = request.content
        self.seen.append(
            Seen(
                request.method,
                request.uri,
                content.read() if content is not None else b"",
                [(n.lower(), v) for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
            )
        )
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.answer


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
    guard = Guard(gateway)
    guard.route = lambda target, method=None, host=None: None  # type: ignore[method-assign]
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
