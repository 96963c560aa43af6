"""The HTTP/1.1 side of an ``http2 = true`` listener is the byte-level front (issue 14).

Every connection of such a listener starts as ``FrontChannel`` and is handed over to
``H2Channel`` when the TLS handshake chose ALPN h2 (http/_h2.py,
``NegotiatingChannel``). In memory: the hand-over moves the connection count and
the producer registration and leaves no HTTP/1.1 timer behind. Against a real
gateway process: HTTP/1.1 clients (ALPN http/1.1, no ALPN, curl --http1.1) get the
front's answers to hostile input, h2 clients still get HTTP/2, and
``max_connections`` counts each connection once whichever protocol it ends up on.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from tests.backend_fixture import BackendProcess
from tests.e2e import running_gateway
from tests.frontkit import Recorder
from tests.h2client import H2Client, tls_socket
from tests.harness import GatewayProcess, free_port, gateway_config, start_gateway
from tests.rawhttp import read_response, wait_closed
from twistedgw import _deadlines
from twistedgw.config import Limits
from twistedgw.http._guard import Guard
from twistedgw.http._h2 import H2Channel, H2Factory, NegotiatingChannel
from twistedgw.testing.devpki import DevPki

BARE_LF = "a bare LF is not a valid line ending or header byte"
MALFORMED = "malformed request: request line, header syntax or body framing is invalid"
NO_HOST = "an HTTP/1.1 request must have a Host header"

# -- in memory: the hand-over ---------------------------------------------------------


class Memory:
    """An ``H2Factory`` connection over a ``StringTransport`` saying what ALPN chose."""

    def __init__(self, alpn: bytes | None, limits: Limits | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.records: list[Any] = []
        runtime: Any = SimpleNamespace(config=SimpleNamespace(limits=limits or Limits()))
        gateway: Any = SimpleNamespace(runtime=runtime, notify=self.records.append)
        self.guard = Guard(gateway)
        self.guard.route = lambda target, method=None, host=None: None  # type: ignore[method-assign]
        site: Any = Site(Recorder(), reactor=self.clock)  # type: ignore[arg-type]
        self.protocol: NegotiatingChannel = H2Factory(site, self.guard).buildProtocol(None)
        self.front = self.protocol._front
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 443),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.transport.negotiatedProtocol = alpn  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def front_timers(self) -> list[Any]:
        armed = _deadlines.of(self.clock.callLater).entries()
        return [e for e in armed if e.owner is self.front] + [
            call for call in self.clock.getDelayedCalls()
            if getattr(call.func, "__self__", None) is self.front
        ]


def test_alpn_h2_hands_the_connection_over_before_any_byte_is_parsed() -> None:
    m = Memory(b"h2")
    assert m.guard.open == 1 and m.transport.producer is m.front
    assert m.front_timers()  # the header and idle timers of the HTTP/1.1 front
    m.protocol.handshakeCompleted()
    channel = m.protocol._channel
    assert isinstance(channel, H2Channel)
    assert m.guard.open == 1  # the count moved over: still one connection
    assert channel.counted and not m.front._counted
    assert m.transport.producer is channel  # the TLS producer registration too
    assert m.front_timers() == [] and m.front.transport is None
    # The server's preface (a SETTINGS frame) is out; the client's is read as HTTP/2.
    out = m.transport.value()
    assert out[3] == 0x4, out[:16]
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(
        1, [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"),
            (b":authority", b"localhost")], end_stream=True,
    )
    m.transport.clear()
    m.protocol.dataReceived(client.data_to_send())
    for _ in range(5):
        m.clock.advance(0)
    events = client.receive_data(m.transport.value())
    statuses = [
        dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)
    ]
    assert statuses == [b"200"]
    assert not m.transport.value().startswith(b"HTTP/1.1")
    m.protocol.connectionLost(Failure(ConnectionDone()))
    assert m.guard.open == 0


@pytest.mark.parametrize("alpn", [b"http/1.1", None], ids=["alpn-http1.1", "no-alpn"])
def test_other_clients_stay_on_the_front(alpn: bytes | None) -> None:
    m = Memory(alpn)
    m.protocol.handshakeCompleted()
    assert m.protocol._channel is m.front and m.transport.producer is m.front
    m.protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert m.transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    m.transport.clear()
    m.protocol.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")  # only the front refuses this
    out = m.transport.value()
    assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close\r\n" in out
    assert json.loads(out.partition(b"\r\n\r\n")[2])["description"] == NO_HOST
    assert m.guard.open == 1
    m.protocol.connectionLost(Failure(ConnectionDone()))
    assert m.guard.open == 0 and m.front_timers() == []


def test_a_connection_refused_for_max_connections_is_not_handed_over() -> None:
    m = Memory(b"h2", Limits(max_connections=0))
    assert m.guard.refused_connections == 1 and m.transport.disconnecting
    m.protocol.handshakeCompleted()
    assert m.protocol._channel is m.front
    m.protocol.connectionLost(Failure(ConnectionDone()))
    assert m.guard.open == 0


# -- against a real gateway process ------------------------------------------------------


def h1_socket(port: int, pki: DevPki, alpn: Iterable[str] | None) -> ssl.SSLSocket:
    """A TLS connection offering ``alpn`` (None: no ALPN extension at all)."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == (None if alpn is None else "http/1.1")
    return sock


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [{"name": "open", "context": "/o", "backend": backend.url}]
    with running_gateway(
        tmp_path_factory.mktemp("h2-front-gw"), pki, apis, port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "http2": True}],
    ) as gw:
        yield gw


HOSTILE = {
    "bare-lf": (b"GET /o/x HTTP/1.1\nHost: localhost\n\n", BARE_LF),
    "cl-te": (
        b"POST /o/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        MALFORMED,
    ),
    "no-host": (b"GET /o/x HTTP/1.1\r\n\r\n", NO_HOST),  # twisted.web served this one
}


@pytest.mark.parametrize("alpn", [("http/1.1",), None], ids=["alpn-http1.1", "no-alpn"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_http1_on_an_h2_listener_gets_the_fronts_refusals(
    gw: GatewayProcess, pki: DevPki, alpn: tuple[str, ...] | None, case: str
) -> None:
    raw, description = HOSTILE[case]
    sock = h1_socket(gw.port, pki, alpn)
    try:
        sock.sendall(raw)
        response = read_response(sock)
        assert response.status == 400, response
        assert response.header("Connection") == "close"
        assert response.json()["code"] == "400"
        assert response.json()["description"] == description
        assert wait_closed(sock, 5) is not None
    finally:
        sock.close()


def test_http1_keep_alive_on_an_h2_listener(gw: GatewayProcess, pki: DevPki) -> None:
    sock = h1_socket(gw.port, pki, None)
    try:
        for i in range(3):
            sock.sendall(b"GET /o/k%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
            response = read_response(sock)
            assert response.status == 200 and not response.closed
            assert json.loads(response.body)["path"] == f"/k{i}"
    finally:
        sock.close()


def _curl(pki: DevPki, version: str, url: str, *args: str) -> tuple[str, str, str]:
    out = subprocess.run(
        ["curl", "-sS", version, "--cacert", str(pki.server_ca), "-o", "-",
         "-w", "\n%{http_version} %{http_code}", *args, url],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    body, _, tail = out.rpartition("\n")
    got, status = tail.split()
    return got, status, body


def test_curl_http1_is_served_by_the_front_and_curl_http2_by_h2(
    gw: GatewayProcess, pki: DevPki
) -> None:
    url = f"https://localhost:{gw.port}/o/c"
    assert _curl(pki, "--http1.1", url)[:2] == ("1.1", "200")
    got, status, body = _curl(pki, "--http1.1", url, "-H", "Host:")  # curl sends no Host
    assert (got, status) == ("1.1", "400")
    assert json.loads(body)["description"] == NO_HOST
    got, status, body = _curl(pki, "--http2", url)
    assert (got, status) == ("2", "200")
    assert json.loads(body)["path"] == "/c"


def _refused(port: int, pki: DevPki) -> bool:
    """Whether a new connection is closed at once (``max_connections``)."""
    try:
        sock = tls_socket(port, pki, alpn=("h2", "http/1.1"), timeout=5)
    except OSError:  # reset or EOF during the handshake
        return True
    try:
        return wait_closed(sock, 2) is not None
    finally:
        sock.close()


def test_max_connections_counts_h2_and_http1_once_each(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> None:
    port = free_port()
    text = gateway_config(
        pki, [{"name": "open", "context": "/o", "backend": backend.url}], port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "http2": True}],
        extra="[limits]\nmax_connections = 4\nclient_header_timeout = 30\nidle_timeout = 30\n",
    )
    gw = start_gateway(tmp_path_factory.mktemp("h2-maxconn"), text, port)
    try:
        time.sleep(0.3)  # the harness's own readiness probe must be gone
        for _ in range(2):  # the second round: every count of the first went back
            h2s = [H2Client(port, pki) for _ in range(2)]
            h1s = [h1_socket(port, pki, alpn) for alpn in (("http/1.1",), None)]
            try:
                assert [c.get("/o/m").status for c in h2s] == [200, 200]
                for sock in h1s:
                    sock.sendall(b"GET /o/m HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    assert read_response(sock).status == 200
                assert _refused(port, pki), "a 5th connection was served"
            finally:
                for c in h2s:
                    c.close()
                for sock in h1s:
                    sock.close()
            time.sleep(0.5)  # the gateway sees the closes
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
