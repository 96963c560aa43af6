"""WebSockets in memory: the handshake's judgement, the backend's 101, the frame scanner,
the tunnel's relay, timers and closes (over StringTransports), the config keys, the
records and metrics, and HTTP/2's refusal to offer RFC 8441."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from websockets.frames import Frame
from websockets.streams import StreamReader

from tests.frontkit import Recorder, front
from twistedgw import config as configmod
from twistedgw.app._observe import AccessLog, Metrics, access_entry, sample_of
from twistedgw.config import ApiConfig, Limits
from twistedgw.http import RequestRecord
from twistedgw.http import _upgrade as upgrade
from twistedgw.upstream import FrameScanner, Tunnel, TunnelStats
from twistedgw.upstream._tunnel import accept_value, check_switch, close_frame
from twistedgw.wire import Exchange, Fields

KEY = base64.b64encode(b"0123456789abcdef")
GOOD = [
    (b"Host", b"gw"), (b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
    (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13"),
]


class _Switcher:
    """A responder that can switch protocols (the HTTP/1.1 front's has this method)."""

    gone = False

    def switch_protocols(self, head: bytes, tunnel: Any) -> None:
        raise AssertionError("not in these tests")


def _exchange(pairs: list[tuple[bytes, bytes]] = GOOD, method: bytes = b"GET",
              version: bytes = b"HTTP/1.1", body: Any = None,
              responder: Any = None) -> Any:
    conn: Any = SimpleNamespace(client_ip="127.0.0.1", secure=True, transport=None,
                                peer=None, local=None, forwarded=None)
    return Exchange(method, b"/ws/x", version, Fields(list(pairs)), b"gw", conn,
                    responder if responder is not None else _Switcher(), body)


def _route(websocket: bool = True, operation: Any = None,
           target: bytes = b"http://b/x") -> Any:
    api = SimpleNamespace(websocket=websocket)
    return SimpleNamespace(api=api, operation=operation, backend_target=target)


# -- the handshake ---------------------------------------------------------------


def test_wanted_only_where_the_api_or_operation_accepts_and_upgrade_names_websocket() -> None:
    assert upgrade.wanted(_exchange(), _route())
    assert not upgrade.wanted(_exchange(), _route(websocket=False))
    assert upgrade.wanted(_exchange(), _route(False, SimpleNamespace(websocket=True)))
    assert not upgrade.wanted(_exchange(), _route(False, SimpleNamespace(websocket=False)))
    h2c = [(n, b"h2c" if n == b"Upgrade" else v) for n, v in GOOD]
    assert not upgrade.wanted(_exchange(h2c), _route())  # another upgrade: a plain request
    several = [(n, b"foo/2, WebSocket" if n == b"Upgrade" else v) for n, v in GOOD]
    assert upgrade.wanted(_exchange(several), _route())
    # A front that cannot switch (an embedding's own twisted.web Site), or an in-process
    # backend (no connection to hand over): a plain request.
    assert not upgrade.wanted(_exchange(responder=SimpleNamespace()), _route())
    assert not upgrade.wanted(_exchange(), _route(target=b"resource:app:site"))


@pytest.mark.parametrize(("change", "words"), [
    ({"version": b"HTTP/1.0"}, "HTTP/1.1"),
    ({"method": b"POST"}, "GET"),
    ({"body": object()}, "body"),
    ({"drop": b"Connection"}, "Connection: Upgrade"),
    ({"set": (b"Connection", b"keep-alive")}, "Connection: Upgrade"),
    ({"drop": b"Sec-WebSocket-Key"}, "Sec-WebSocket-Key"),
    ({"set": (b"Sec-WebSocket-Key", b"not base64!")}, "Sec-WebSocket-Key"),
    ({"set": (b"Sec-WebSocket-Key", base64.b64encode(b"short"))}, "Sec-WebSocket-Key"),
    ({"add": (b"Sec-WebSocket-Key", KEY)}, "Sec-WebSocket-Key"),
    ({"set": (b"Sec-WebSocket-Version", b"8")}, "Sec-WebSocket-Version: 13"),
    ({"drop": b"Sec-WebSocket-Version"}, "Sec-WebSocket-Version: 13"),
])
def test_malformed_handshakes_are_400(change: dict[str, Any], words: str) -> None:
    pairs = list(GOOD)
    if "drop" in change:
        pairs = [(n, v) for n, v in pairs if n != change["drop"]]
    if "set" in change:
        name, value = change["set"]
        pairs = [(n, value if n == name else v) for n, v in pairs]
    if "add" in change:
        pairs.append(change["add"])
    exchange = _exchange(pairs, method=change.get("method", b"GET"),
                         version=change.get("version", b"HTTP/1.1"), body=change.get("body"))
    problem = upgrade.handshake_problem(exchange)
    assert problem is not None and problem.status == 400 and problem.code == "400"
    assert words in problem.description
    assert upgrade.handshake_problem(_exchange()) is None
    assert upgrade.VERSION_HEADER == ((b"Sec-WebSocket-Version", b"13"),)


# -- the backend's 101 -------------------------------------------------------------


def _switch(*lines: bytes, status: bytes = b"HTTP/1.1 101 Switching Protocols") -> bytes:
    return b"\r\n".join((status, *lines))


ACCEPT = b"Sec-WebSocket-Accept: " + accept_value(KEY)


def test_accept_value_is_rfc_6455s_example() -> None:
    assert accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_101_keeps_its_end_to_end_fields_only() -> None:
    fields = check_switch(_switch(
        b"Upgrade: websocket", b"Connection: Upgrade, X-Hop", b"X-Hop: 1", b"Server: be/1.0",
        ACCEPT, b"Sec-WebSocket-Protocol: chat", b"Set-Cookie: a=1", b"Keep-Alive: x",
    ), KEY)
    assert fields == [(b"Sec-WebSocket-Accept", accept_value(KEY)),
                      (b"Sec-WebSocket-Protocol", b"chat"), (b"Set-Cookie", b"a=1")]


@pytest.mark.parametrize("raw", [
    _switch(b"Upgrade: websocket", b"Connection: upgrade", ACCEPT, status=b"HTTP/1.0 101 x"),
    _switch(b"Upgrade: h2c", b"Connection: upgrade", ACCEPT),
    _switch(b"Connection: upgrade", ACCEPT),
    _switch(b"Upgrade: websocket", ACCEPT),
    _switch(b"Upgrade: websocket", b"Connection: upgrade", b"Sec-WebSocket-Accept: nope"),
    _switch(b"Upgrade: websocket", b"Connection: upgrade"),
    _switch(b"Upgrade: websocket", b"Connection: upgrade", ACCEPT, b" folded"),
    _switch(b"Upgrade: websocket", b"Connection: upgrade", ACCEPT, b"X-A: a\x00b"),
    _switch(b"Upgrade: websocket", b"Connection: upgrade", ACCEPT, b"Bad Name: x"),
])
def test_a_101_that_is_not_the_upgrade_asked_for_is_refused(raw: bytes) -> None:
    assert isinstance(check_switch(raw, KEY), str)


# -- frames ----------------------------------------------------------------------


def _frames(*frames: Frame, mask: bool) -> bytes:
    return b"".join(f.serialize(mask=mask, extensions=[]) for f in frames)


def _parse(data: bytes, mask: bool) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    out = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=mask, extensions=[])
        try:
            next(parser)
        except StopIteration as e:
            out.append(e.value)
            continue
        return out


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
def test_scanner_follows_boundaries_and_reads_the_first_close_code(mask: bool, step: int) -> None:
    from websockets.frames import Close, Opcode

    stream = _frames(
        Frame(Opcode.TEXT, b"hi"),
        Frame(Opcode.BINARY, b"b" * 300),  # a 16-bit length
        Frame(Opcode.BINARY, b"c" * 70000),  # a 64-bit length
        Frame(Opcode.PING, b""),
        Frame(Opcode.CLOSE, Close(4321, "bye").serialize()),
        Frame(Opcode.CLOSE, Close(1000, "").serialize()),
        mask=mask,
    )
    scanner = FrameScanner()
    boundaries = []
    for i in range(0, len(stream), step):
        scanner.feed(stream[i : i + step])
        boundaries.append(scanner.at_boundary)
    assert scanner.at_boundary and scanner.close_code == 4321
    if step == 1:  # mid-frame at most points, at a boundary exactly six times
        assert sum(boundaries) == 6


def test_scanner_reports_1005_for_a_close_without_code_and_none_without_close() -> None:
    from websockets.frames import Opcode

    scanner = FrameScanner()
    scanner.feed(_frames(Frame(Opcode.TEXT, b"x"), mask=True))
    assert scanner.close_code is None
    scanner.feed(_frames(Frame(Opcode.CLOSE, b""), mask=True)[:3])
    assert not scanner.at_boundary  # a masked header is six bytes
    scanner.feed(_frames(Frame(Opcode.CLOSE, b""), mask=True)[3:])
    assert scanner.close_code == 1005 and scanner.at_boundary


def test_a_read_packed_with_tiny_frames_is_no_longer_followed() -> None:
    """Following 32,768 two-byte frames of one read would hold the reactor for ~20 ms: past
    FRAMES_PER_READ the direction is lost (relayed still, closed without a 1001)."""
    from twistedgw.upstream._tunnel import FRAMES_PER_READ

    scanner = FrameScanner()
    scanner.feed(b"\x81\x00" * (FRAMES_PER_READ - 1))
    assert scanner.at_boundary and not scanner.lost
    scanner = FrameScanner()
    scanner.feed(b"\x81\x00" * 32768)
    assert scanner.lost and not scanner.at_boundary
    scanner.feed(b"\x88\x02\x03\xe8")
    assert scanner.close_code is None


def test_close_frames_parse_as_rfc_6455s_both_ways() -> None:
    from websockets.frames import Close

    for masked in (False, True):
        (frame,) = _parse(close_frame(1001, "the gateway is stopping", masked=masked), masked)
        assert Close.parse(frame.data) == Close(1001, "the gateway is stopping")


# -- the tunnel, over StringTransports ------------------------------------------------


#: A masked text frame of one byte (mask "abcd").
CLIENT_FRAME = b"\x81\x81abcdX"


class _Backend:
    """The upstream client's connection as the forwarder hands it over."""

    def __init__(self) -> None:
        self.transport = StringTransport()


def _tunnel(idle: float = 30.0) -> Any:
    recorder = Recorder(hold=True)
    f = front(resource=recorder)
    f.send(b"GET /ws HTTP/1.1\r\nHost: gw\r\n\r\n" + CLIENT_FRAME)  # sent before the 101
    exchange = recorder.held[0]
    backend = _Backend()
    ended: list[TunnelStats] = []
    tunnel = Tunnel(backend, idle_timeout=idle, buffer_bytes=1000, on_end=ended.append)
    taken = exchange.responder.switch_protocols(b"HTTP/1.1 101 x\r\n\r\n", tunnel)
    assert taken is not None
    client, rest = taken
    exchange.responder.when_gone(tunnel.client_lost)
    tunnel.start(client, rest, b"\x82\x02ok")
    return SimpleNamespace(front=f, tunnel=tunnel, backend=backend.transport, ended=ended,
                           clock=f.clock)


def test_bytes_go_both_ways_and_the_backend_connection_is_adopted() -> None:
    t = _tunnel()
    client_out = t.front.transport.value()
    assert client_out == b"HTTP/1.1 101 x\r\n\r\n\x82\x02ok"
    assert t.backend.value() == CLIENT_FRAME  # what the client sent after its head
    t.front.send(b"\x81\x80abcd")
    t.backend.protocol.dataReceived(b"\x81\x01z")  # the transport's protocol is the tunnel's
    assert t.backend.value() == CLIENT_FRAME + b"\x81\x80abcd"
    assert t.front.transport.value().endswith(b"\x81\x01z")
    assert (t.tunnel.received, t.tunnel.sent) == (13, 7)
    assert t.front.channel.requests  # busy for a graceful stop while it is open


def test_buffers_bound_each_direction_with_back_pressure() -> None:
    t = _tunnel()
    client_t = t.front.transport
    # Each side is the other's producer: a full client output stops reading the backend.
    client_t.producer.pauseProducing()
    assert t.backend.producerState == "paused"
    client_t.producer.resumeProducing()
    assert t.backend.producerState == "producing"
    t.backend.producer.pauseProducing()
    assert client_t.producerState == "paused"


def test_idle_closes_both_with_1001_and_a_stalled_receiver_counts_as_idle() -> None:
    t = _tunnel(idle=10)
    t.clock.advance(6)
    t.front.send(b"\x81\x80abcd")  # activity: an empty masked text frame
    t.clock.advance(6)
    assert not t.ended
    t.backend.producer.pauseProducing()  # the backend reads nothing from now on
    for _ in range(5):
        t.clock.advance(2)
        t.front.send(b"\x81\x80abcd")  # bytes keep arriving from the client, none leave
    assert t.ended and t.ended[0].closed_by == "idle_timeout"
    assert t.ended[0].close_code == 1001
    assert t.front.transport.value().endswith(close_frame(1001, "idle timeout", masked=False))
    assert t.backend.disconnecting and t.front.transport.disconnecting
    (frame,) = _parse(t.backend.value()[-20:], mask=True)  # masked, to the backend
    assert frame.data == b"\x03\xe9idle timeout"


def test_shutdown_sends_1001_only_where_a_frame_can_start() -> None:
    t = _tunnel()
    cut = b"\x82\x7e\x01\x00" + b"x" * 10  # a 256-byte frame, cut short
    t.backend.protocol.dataReceived(cut)
    t.tunnel.shutdown()
    assert t.front.transport.value().endswith(cut)  # mid-frame: no Close, a TCP close
    (frame,) = _parse(t.backend.value()[len(CLIENT_FRAME):], mask=True)
    assert frame.data == b"\x03\xe9the gateway is stopping"
    assert t.ended[0].closed_by == "shutdown" and t.front.transport.disconnecting
    t.clock.advance(5)  # a backend that does not close is aborted
    assert t.backend.disconnected


def test_a_close_from_either_side_ends_it_with_its_code() -> None:
    t = _tunnel()
    mask = b"\x00\x00\x00\x00"
    t.front.send(b"\x88\x82" + mask + b"\x0f\xa0")  # the client's Close 4000
    t.backend.protocol.connectionLost(Failure(Exception("closed")))  # the backend's TCP close
    # The client began the closing handshake (a server closes TCP first, RFC 6455 7.1.1).
    assert t.ended == [TunnelStats(15, 4, 4000, "client")]
    assert t.front.transport.disconnecting  # closed after what it still has to receive
    t1 = _tunnel()
    t1.backend.protocol.connectionLost(Failure(Exception("closed")))  # no Close frame at all
    assert t1.ended == [TunnelStats(7, 4, None, "backend")]
    t2 = _tunnel()
    t2.front.channel.connectionLost(Failure(Exception("gone")))
    assert t2.ended[0].closed_by == "client" and t2.backend.disconnecting
    assert t2.front.channel.guard.open == 0  # it counted in max_connections until now


# -- config ------------------------------------------------------------------------


def test_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[[listeners]]\nport = 0\ntls = false\n[limits]\nwebsocket_idle_timeout = 30\n'
        'websocket_buffer_bytes = 4096\n'
        '[[apis]]\nname = "a"\ncontext = "/a"\nbackend = "http://b"\nwebsocket = true\n'
        '[[apis]]\nname = "b"\ncontext = "/b"\nbackend = "http://b"\n'
    )
    config = configmod.load(path)
    assert (config.limits.websocket_idle_timeout, config.limits.websocket_buffer_bytes) == (
        30.0, 4096)
    assert [a.websocket for a in config.apis] == [True, False]
    assert (Limits().websocket_idle_timeout, Limits().websocket_buffer_bytes) == (300.0, 65536)
    text = path.read_text()
    path.write_text(text.replace("websocket = true", 'websocket = "yes"'))
    with pytest.raises(configmod.ConfigError, match=r"apis\[0\]\.websocket"):
        configmod.load(path)
    in_process = 'backend = "resource:"\nwebsocket'
    path.write_text(text.replace('backend = "http://b"\nwebsocket', in_process))
    with pytest.raises(configmod.ConfigError, match=r"apis\[0\]\.websocket: an in-process"):
        configmod.load(path)


def test_openapi_operation_marker(tmp_path: Path) -> None:
    """``x-twistedgw-websocket: true`` on a get operation; anywhere else a check error."""

    def load(paths: str) -> Any:
        definition.write_text(
            "openapi: 3.0.3\ninfo: {title: chat, version: '1'}\nsecurity: []\n"
            "x-wso2-basePath: /chat\nx-wso2-production-endpoints: {urls: ['http://b:1']}\n"
            "paths:\n" + paths
        )
        return configmod.load(path)

    definition = tmp_path / "api.yaml"
    path = tmp_path / "g.toml"
    path.write_text(f'[[listeners]]\nport = 0\ntls = false\n[[apis]]\nopenapi = "{definition}"\n')
    (api,) = load("  /live:\n    get: {x-twistedgw-websocket: true}\n    post: {}\n"
                  "  /history:\n    get: {}\n").apis
    assert not api.websocket
    assert {(o.method, o.template): o.websocket for o in api.operations or ()} == {
        ("GET", "/live"): True, ("POST", "/live"): False, ("GET", "/history"): False}
    for paths, words in (("  /live:\n    post: {x-twistedgw-websocket: true}\n", "is a GET"),
                         ("  /live:\n    get: {x-twistedgw-websocket: 1}\n", "true or false")):
        with pytest.raises(configmod.ConfigError) as info:
            load(paths)
        assert "#/paths/~1live/" in str(info.value) and "x-twistedgw-websocket" in str(info.value)
        assert words in str(info.value)


# -- records and metrics --------------------------------------------------------------


def _record(stats: TunnelStats | None, status: int = 101) -> RequestRecord:
    api = ApiConfig(name="chat", version="1", context="/chat", backend="http://b")
    return RequestRecord(0.0, 12.5, "127.0.0.1", "GET", "/chat/live", api, status, 300, None,
                         websocket=stats)


def test_access_log_writes_one_line_per_websocket_at_close(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "access.jsonl"))
    log(_record(TunnelStats(0, 0, None, None)))  # the 101: nothing yet
    log(_record(TunnelStats(120, 300, 1000, "client")))
    log.close()
    (line,) = (tmp_path / "access.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert (entry["status"], entry["duration_ms"], entry["bytes"]) == (101, 12500.0, 300)
    assert (entry["bytes_received"], entry["close_code"], entry["closed_by"]) == (
        120, 1000, "client")
    assert "closed_by" not in access_entry(_record(None, 200))


def test_metrics_gauge_open_websockets_and_count_closes_by_reason() -> None:
    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    metrics = Metrics(lambda: None)
    metrics.observe(_record(TunnelStats(0, 0, None, None)))
    metrics.observe(_record(TunnelStats(0, 0, None, None)))
    assert value("twistedgw_websockets_open") == 2
    # The handshake is the request (its latency, not the connection's life)...
    assert value("twistedgw_requests_total", api="chat:1", status="101",
                 consumer="none") == 2
    metrics.observe(_record(TunnelStats(1, 2, 1001, "shutdown")))
    # ...and a close is not one; the parent of workers counts the same from samples.
    metrics.count(sample_of(_record(TunnelStats(1, 2, None, "backend"))))
    assert value("twistedgw_websockets_open") == 0
    assert value("twistedgw_websockets_closed_total", api="chat:1", reason="shutdown") == 1
    assert value("twistedgw_websockets_closed_total", api="chat:1", reason="backend") == 1
    assert value("twistedgw_requests_total", api="chat:1", status="101",
                 consumer="none") == 2
    assert sample_of(_record(None, 200))[-1] is None


def test_a_websocket_is_counted_without_a_record_too() -> None:
    """The metrics count a request from its fields when nothing reads records
    (``Gateway.counter``, issue 27 item 5): a WebSocket's 101 and its close move the gauge
    there as they do through a record, and a worker's samples carry the same event."""
    from twistedgw.app._workers import _ParentLink
    from twistedgw.http import Gateway, GatewayExchange
    from twistedgw.wire import Connection

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    metrics = Metrics(lambda: None)
    gateway = Gateway(None, None, counter=metrics)  # type: ignore[arg-type]
    conn = Connection(None, None, True, None)
    exchange = GatewayExchange(b"GET", b"/chat/live", b"HTTP/1.1", Fields([]), None, conn,
                               None, None)  # type: ignore[arg-type]
    exchange.api = _record(None).api
    exchange.record(gateway, 101, 120, websocket=TunnelStats(0, 0, None, None))
    assert value("twistedgw_websockets_open") == 1
    assert value("twistedgw_requests_total", api="chat:1", status="101",
                 consumer="none") == 1
    exchange.record(gateway, 101, 300, websocket=TunnelStats(120, 300, 1000, "client"))
    assert value("twistedgw_websockets_open") == 0
    assert value("twistedgw_websockets_closed_total", api="chat:1", reason="client") == 1
    assert value("twistedgw_requests_total", api="chat:1", status="101",
                 consumer="none") == 1
    link = _ParentLink(SimpleNamespace(callLater=lambda *_a: None))  # type: ignore[arg-type]
    link.count_request(exchange.api, 101, 0.1, None, None, None, None, None,
                       TunnelStats(0, 0, None, None))
    link.count_request(exchange.api, 101, 0.1, None, None, None, None, None,
                       TunnelStats(1, 2, 1001, "shutdown"))
    assert [s[-1] for s in link._pending] == ["open", "shutdown"]


# -- HTTP/2 does not offer RFC 8441 --------------------------------------------------


def test_h2_never_offers_extended_connect() -> None:
    """The server's SETTINGS leave SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8) at 0: "not
    supported" (RFC 8441 3); an extended CONNECT is then answered 405 (tests/test_h2.py,
    over raw frames)."""
    from hyperframe.frame import Frame as H2Frame

    from twistedgw.http._h2 import _GuardedH2

    conn = _GuardedH2(Limits())
    conn.initiate_connection()
    data = conn.data_to_send()
    frame, length = H2Frame.parse_frame_header(memoryview(data[:9]))
    frame.parse_body(memoryview(data[9 : 9 + length]))
    assert frame.settings.get(0x8, 0) == 0  # type: ignore[attr-defined]


# -- the upstream client hands an upgraded connection over, never back to the pool ----


def test_a_101_leaves_the_pool_for_good_and_only_when_asked_for() -> None:
    from tests.test_upstream import GET, ORIGIN, Recorder, _Pool

    class Switching(Recorder):
        switching = True

        def __init__(self) -> None:
            super().__init__()
            self.switched: list[tuple[bytes, bytes, Any]] = []

        def response_switched(self, head: bytes, rest: bytes, conn: Any) -> None:
            self.switched.append((head, rest, conn))

    pool, handler = _Pool(), Switching()
    pool.request(ORIGIN, b"GET", GET, None, handler)
    conn, _transport = pool.made[0]
    conn.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01x")
    ((head, rest, given),) = handler.switched
    assert head.startswith(b"HTTP/1.1 101") and rest == b"\x81\x01x" and given is conn
    assert not conn.reusable and conn.call is None and not handler.failures
    assert not pool._idle  # never parked: the next request opens a new connection
    plain = Recorder()  # one that asked for no upgrade: a 101 is an invalid response
    pool.request(ORIGIN, b"GET", GET, None, plain)
    assert len(pool.made) == 2
    pool.made[1][0].dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert plain.failures and "upgrades" in str(plain.failures[0])
