"""HTTP/2 in memory: ``H2Channel`` (http/_h2.py) behind ``NegotiatingChannel`` over a
transport that counts writes, with an ``h2`` client on the other side.

What is pinned here is the channel's own design, not the protocol (the raw-frame tests
against a real gateway are in test_h2.py): one write per read batch, one write for the
answers made in one reactor turn, and the request judged from its head: its stream gets
no WINDOW_UPDATE until the request is allowed (``BodySource.read``), and a refusal
resets it without reading the body (issue 22 item 4 over HTTP/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from tests.frontkit import Recorder, answer
from twistedgw.config import Limits
from twistedgw.http._guard import Guard
from twistedgw.http._h2 import H2Channel, H2Factory
from twistedgw.wire import Exchange, answer_headers


class CountingTransport(StringTransport):
    negotiatedProtocol = b"h2"

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 443),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


@dataclass
class Conn:
    clock: MemoryReactorClock
    transport: CountingTransport
    channel: H2Channel
    client: h2.connection.H2Connection
    resource: Recorder
    protocol: Any

    def send(self) -> None:
        """What the client has queued, in one read."""
        self.protocol.dataReceived(self.client.data_to_send())

    def events(self) -> list[h2.events.Event]:
        """What the gateway wrote since the last call, as the client reads it."""
        out = self.transport.value()
        self.transport.clear()
        self.transport.writes = 0
        events: list[h2.events.Event] = self.client.receive_data(out)
        return events


def connect(resource: Any = None) -> Conn:
    clock = MemoryReactorClock()
    runtime: Any = SimpleNamespace(config=SimpleNamespace(limits=Limits()))
    gateway: Any = SimpleNamespace(runtime=runtime, notify=lambda record: None)
    guard = Guard(gateway)
    guard.route = lambda target, method=None, host=None: None  # type: ignore[method-assign]
    recorder = resource or Recorder()
    site: Any = Site(recorder, reactor=clock)  # type: ignore[arg-type]
    protocol = H2Factory(site, guard).buildProtocol(None)
    transport = CountingTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    channel = protocol._channel
    assert isinstance(channel, H2Channel)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    conn = Conn(clock, transport, channel, client, recorder, protocol)
    conn.send()
    conn.events()  # the server's preface and SETTINGS ack
    return conn


def get(conn: Conn, path: bytes, end_stream: bool = True,
        extra: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    stream_id: int = conn.client.get_next_available_stream_id()
    conn.client.send_headers(
        stream_id,
        [(b":method", b"GET" if end_stream else b"POST"), (b":path", path),
         (b":scheme", b"https"), (b":authority", b"localhost"), *extra],
        end_stream=end_stream,
    )
    return stream_id


def statuses(events: list[h2.events.Event]) -> dict[int, bytes]:
    return {
        e.stream_id: dict(e.headers)[b":status"]
        for e in events if isinstance(e, h2.events.ResponseReceived)
    }


def test_one_write_per_read_batch() -> None:
    conn = connect()
    ids = [get(conn, b"/a%d" % i) for i in range(10)]
    conn.client.ping(b"12345678")
    conn.send()  # ten requests and a PING in one read, each answered at once
    assert conn.transport.writes == 1
    events = conn.events()
    assert statuses(events) == {i: b"200" for i in ids}
    assert any(isinstance(e, h2.events.PingAckReceived) for e in events)


def test_answers_of_one_reactor_turn_leave_in_one_write() -> None:
    conn = connect(Recorder(hold=True))
    ids = [get(conn, b"/h%d" % i) for i in range(10)]
    conn.send()
    assert len(conn.resource.held) == 10
    conn.events()
    for exchange in conn.resource.held:  # a backend answering each, in the same turn
        answer(exchange, b"hello")
    assert conn.transport.writes == 0  # not one write per stream, nor per frame
    conn.clock.advance(0)
    assert conn.transport.writes == 1
    events = conn.events()
    assert statuses(events) == {i: b"200" for i in ids}
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert ended == set(ids)


def window_updates(events: list[h2.events.Event]) -> dict[int, int]:
    """WINDOW_UPDATE increments by stream (0: the connection)."""
    out: dict[int, int] = {}
    for e in events:
        if isinstance(e, h2.events.WindowUpdated):
            out[e.stream_id] = out.get(e.stream_id, 0) + e.delta
    return out


class Judge:
    """A resource whose verdicts wait: ``allow`` reads an exchange's body, ``refuse``
    answers without reading it."""

    isLeaf = True

    def __init__(self) -> None:
        self.pending: dict[bytes, Exchange] = {}
        self.bodies: dict[bytes, bytes] = {}

    def handle(self, exchange: Exchange) -> None:
        self.pending[exchange.target] = exchange

    def allow(self, target: bytes) -> None:
        exchange = self.pending.pop(target)

        def ready(body: Any, size: int) -> None:
            self.bodies[target] = body.read() if body is not None else b""
            answer(exchange, b"ok")

        assert exchange.body is not None
        exchange.body.read(ready)

    def refuse(self, target: bytes) -> None:
        answer(self.pending.pop(target), b"refused", status=401)


def test_a_request_is_judged_from_its_head_and_its_body_read_only_once_allowed() -> None:
    judge = Judge()
    conn = connect(judge)
    held = get(conn, b"/held", end_stream=False, extra=((b"expect", b"100-continue"),))
    refused = get(conn, b"/refused", end_stream=False)
    conn.send()
    assert set(judge.pending) == {b"/held", b"/refused"}  # dispatched at HEADERS
    assert not [e for e in conn.events()
                if isinstance(e, h2.events.InformationalResponseReceived)]  # no 100 yet
    for stream_id in (held, refused):
        for _ in range(4):
            conn.client.send_data(stream_id, b"x" * 15000)
    conn.send()
    assert window_updates(conn.events()).keys() <= {0}  # no stream asked for more
    judge.refuse(b"/refused")  # answered without reading: reset once the answer is out
    conn.clock.advance(0)
    events = conn.events()
    assert statuses(events) == {refused: b"401"}
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(refused, 0)]
    judge.allow(b"/held")  # allowed: what arrived meanwhile is granted again, 100 sent
    conn.clock.advance(0)
    events = conn.events()
    assert window_updates(events) == {held: 60000}
    informational = [e for e in events if isinstance(e, h2.events.InformationalResponseReceived)]
    assert [e.stream_id for e in informational] == [held]
    conn.client.send_data(held, b"y" * 10, end_stream=True)
    conn.send()
    assert judge.bodies[b"/held"] == b"x" * 60000 + b"y" * 10
    assert statuses(conn.events()) == {held: b"200"}


def test_a_client_that_reads_nothing_is_aborted_after_idle_timeout() -> None:
    """While the transport's output is over its bound nothing more is sent or read; an
    answer the gateway made itself (no backend, so no send_timeout) would then hold the
    connection, and its place in max_connections, for good. After idle_timeout with no
    progress of the socket's unsent bytes, the connection is aborted."""
    conn = connect(Recorder(hold=True))
    get(conn, b"/x")
    conn.send()
    conn.events()
    conn.channel.pauseProducing()  # what the TLS transport says of a client reading nothing
    answer(conn.resource.held[0], b"hello")
    conn.clock.advance(0)
    events = conn.events()
    assert not [e for e in events if isinstance(e, h2.events.DataReceived)]  # held back
    for _ in range(int(Limits().idle_timeout) - 2):
        conn.clock.advance(1)
    assert not conn.transport.disconnecting
    for _ in range(4):
        conn.clock.advance(1)
    assert conn.transport.disconnecting


def bodies(events: list[h2.events.Event]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            out[e.stream_id] = out.get(e.stream_id, b"") + e.data
    return out


def test_a_whole_response_is_sent_at_once_or_waits_for_the_window() -> None:
    """``H2Stream.respond`` (a backend's whole answer in hand): HEADERS and DATA with
    END_STREAM at once, all streams' in one write; a body the stream's window cannot
    take waits for WINDOW_UPDATE like a written one, and ends the stream then."""
    conn = connect(Recorder(hold=True))
    ids = [get(conn, b"/w%d" % i) for i in range(5)]
    conn.send()
    conn.events()
    for exchange in conn.resource.held:
        exchange.responder.respond(200, answer_headers(), 5, b"OK", b"hello", True)
    conn.clock.advance(0)
    assert conn.transport.writes == 1
    events = conn.events()
    assert statuses(events) == {i: b"200" for i in ids}
    assert bodies(events) == {i: b"hello" for i in ids}
    assert {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)} == set(ids)
    assert not conn.channel.streams

    conn.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2})
    conn.send()
    conn.events()
    conn.resource.held.clear()
    small = get(conn, b"/small-window")
    conn.send()
    conn.events()
    conn.resource.held[0].responder.respond(200, answer_headers(), 5, b"OK", b"hello", True)
    conn.clock.advance(0)
    events = conn.events()
    assert statuses(events) == {small: b"200"}
    assert bodies(events) == {small: b"he"}
    assert not [e for e in events if isinstance(e, h2.events.StreamEnded)]
    conn.client.increment_flow_control_window(10, small)
    conn.send()
    events = conn.events()
    assert bodies(events) == {small: b"llo"}
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [small]


def test_a_repeated_request_block_is_parsed_once_and_a_refused_one_every_time(
    monkeypatch: Any,
) -> None:
    """A client repeating its request (the same header block) is judged once per
    connection by ``_parse_request`` and the head's checks; a block those refused is
    not remembered, so each repeat is refused again."""
    from twistedgw.http import _h2

    parsed: list[bytes] = []
    real = _h2._parse_request

    def counting(fields: Any) -> Any:
        parsed.append(dict(fields)[b":path"])
        return real(fields)

    monkeypatch.setattr(_h2, "_parse_request", counting)
    conn = connect()
    ids = [get(conn, b"/same") for _ in range(3)]
    bad = [get(conn, b"/bad path") for _ in range(2)]  # a SP in the target: 400
    conn.send()
    events = conn.events()
    assert statuses(events) == {**{i: b"200" for i in ids}, **{i: b"400" for i in bad}}
    assert parsed == [b"/same", b"/bad path", b"/bad path"]
    assert [s.target for s in conn.resource.seen] == [b"/same"] * 3
    assert all(
        dict(s.headers)[b"host"] == b"localhost" for s in conn.resource.seen
    )  # every request its own fields, the :authority added as Host each time


def frames(conn: Conn) -> list[Frame]:
    """What the gateway wrote since the last read, as frames (after a GOAWAY, which
    the ``h2`` client would take as the end of everything)."""
    data = conn.transport.value()
    conn.transport.clear()
    conn.transport.writes = 0
    out: list[Frame] = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def test_a_graceful_stop_between_an_answer_and_its_flush_still_sends_the_answer() -> None:
    """A stop's drain ticks on its own timer: when it finds the last stream answered
    but its frames still in h2's buffer (the flush is the next reactor turn), the
    connection closes after writing them, not instead (CI once saw the in-flight
    stream's HEADERS lost after a GOAWAY)."""
    for finish in ("respond", "finish"):
        conn = connect(Recorder(hold=True))
        stream = get(conn, b"/in-flight")
        conn.send()
        conn.events()
        conn.channel.graceful_close()  # GOAWAY: stream 1 is in flight
        goaways = [f for f in frames(conn) if isinstance(f, GoAwayFrame)]
        assert [f.last_stream_id for f in goaways] == [stream]
        assert not conn.transport.disconnecting
        exchange = conn.resource.held[0]
        if finish == "respond":
            exchange.responder.respond(200, answer_headers(), 5, b"OK", b"hello", True)
        else:
            exchange.responder.finish()
        assert conn.transport.writes == 0  # the flush waits for the next turn
        conn.channel.graceful_close()  # the drain's next tick comes first
        assert conn.transport.disconnecting, finish
        sent = [f for f in frames(conn) if f.stream_id == stream]
        assert any(isinstance(f, HeadersFrame) for f in sent), (finish, sent)
        assert "END_STREAM" in sent[-1].flags, (finish, sent)


def test_frames_written_directly_are_h2s_own_bytes_and_state(monkeypatch: Any) -> None:
    """``_GuardedH2.send_headers``/``send_data`` write HEADERS (CONTINUATIONs for a large
    block) and DATA frames themselves: the bytes, the streams' states, the windows and
    the HPACK context must be exactly what h2's own methods make, errors included (a
    window too small, a frame too large, a stream already ended, an informational
    head, which goes through h2)."""
    import h2.exceptions

    from twistedgw.http._h2 import _GuardedH2

    def pair() -> tuple[_GuardedH2, _GuardedH2, h2.connection.H2Connection]:
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        for stream_id in (1, 3, 5, 7):
            client.send_headers(
                stream_id,
                [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"https"),
                 (b":authority", b"x")],
                end_stream=stream_id != 7,
            )
        wire = client.data_to_send()
        servers = _GuardedH2(Limits()), _GuardedH2(Limits())
        for server in servers:
            server.initiate_connection()
            server.receive_data(wire)
            server.data_to_send()
        return servers[0], servers[1], client

    big = b"v" * 40_000  # a block of three frames at the default 16 KiB
    steps: list[tuple[str, int, Any, bool]] = [
        ("headers", 1, [(b":status", b"200"), (b"content-length", b"5")], False),
        ("data", 1, b"hel", False),
        ("data", 1, b"lo", True),
        ("data", 1, b"late", False),  # the stream ended: refused
        ("headers", 3, [(b":status", b"100")], False),  # informational: h2's path
        ("headers", 3, [(b":status", b"200"), (b"x-big", big)], False),
        ("data", 3, b"x" * 101, False),  # over the stream's window of 100: refused
        ("data", 3, b"x" * 100, False),
        ("data", 3, b"", True),
        ("headers", 5, [(b":status", b"204"), (b"x-a", b"1")], True),
        ("headers", 5, [(b":status", b"200")], False),  # ended: refused
        ("headers", 7, [(b":status", b"413"), (b"x-a", b"1")], False),
        ("data", 7, b"y" * 20_000, False),  # larger than a frame (and the window)
        ("data", 7, b"{}", True),
        ("data", 9, b"z", False),  # never opened
    ]
    fast, slow, client = pair()
    through_h2: list[int] = []  # the steps the direct writer left to h2
    for name in ("send_headers", "send_data"):
        method = getattr(h2.connection.H2Connection, name)

        def spy(server: Any, stream_id: int, *args: Any, _m: Any = method, **kw: Any) -> Any:
            if server is fast:
                through_h2.append(stream_id)
            return _m(server, stream_id, *args, **kw)

        monkeypatch.setattr(h2.connection.H2Connection, name, spy)
    for kind, stream_id, value, end in steps:
        results = []
        for server, direct in ((fast, True), (slow, False)):
            try:
                if kind == "headers":
                    if direct:
                        server.send_headers(stream_id, value, end_stream=end)
                    else:
                        h2.connection.H2Connection.send_headers(
                            server, stream_id, value, end_stream=end)
                elif direct:
                    server.send_data(stream_id, value, end_stream=end)
                else:
                    h2.connection.H2Connection.send_data(server, stream_id, value, end_stream=end)
                error = None
            except h2.exceptions.H2Error as e:
                error = (type(e), str(e))
            stream = server.streams.get(stream_id)
            results.append((
                error,
                server.data_to_send(),
                server.outbound_flow_control_window,
                None if stream is None else (
                    stream.state_machine.state, stream.outbound_flow_control_window,
                    stream.closed),
                list(server.encoder.header_table.dynamic_entries),
            ))
        assert results[0] == results[1], (kind, stream_id, results)
        client.receive_data(results[0][1])  # and the client takes them as valid frames
    assert fast.streams[5].closed and fast.streams[3].closed
    assert through_h2 == [3, 9]  # the informational head, the stream never opened


def test_a_new_streams_headers_are_read_without_h2s_trace_repr(monkeypatch: Any) -> None:
    """h2 formats every frame it receives for a trace log nobody reads (a tenth of the
    receiving cost): a new stream's HEADERS frame (every request) skips that step. A
    HEADERS frame on a known stream (trailers, say) still goes through h2's own path."""
    shown: list[int] = []

    def counting_repr(frame: Any) -> str:
        shown.append(frame.stream_id)
        return "frame"

    monkeypatch.setattr(HeadersFrame, "__repr__", counting_repr)
    conn = connect(Recorder(hold=True))
    ids = [get(conn, b"/a"), get(conn, b"/b"), get(conn, b"/c", end_stream=False)]
    conn.send()
    assert len(conn.resource.held) == 2 and not shown
    conn.client.send_headers(ids[2], [(b"x-trailer", b"1")], end_stream=True)
    conn.send()
    assert shown == [ids[2]]  # the trailers: h2's path
