"""``[limits] send_timeout``: a client that reads none of a response is cut, a slow one is not.

Found while fixing issue 17 ("nothing a client sends makes ... unbounded open
connections"): a client that asks for a large or endless download and never
reads held its connection and a backend connection for ever, because
back-pressure pauses the backend timer and the response never finishes.

The timer logic runs in memory (a real twisted.web channel over a
StringTransport, the backend connection in memory, a fake clock); the rest
against a real gateway process, the echo backend's ``/bytes/N`` and raw TLS
clients, counting the gateway's client connections from /proc.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error as ierror
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from tests.backend_fixture import BackendProcess, start_backend
from tests.config_cases import api
from tests.harness import client_context, free_port, gateway_config, start_gateway, table
from tests.opskit import read_json_lines, scrape, value, wait_until
from tests.rawhttp import read_response
from tests.test_front import Env, client_connections
from twistedgw.config import ConfigError, Limits, load
from twistedgw.http import web_exchange
from twistedgw.testing.devpki import DevPki
from twistedgw.upstream import (
    BackendCall,
    Forwarder,
    ForwardResult,
    ForwardSettings,
    Upstream,
    _forward,
)
from twistedgw.upstream._client import _Connection

# -- the timer, in memory -------------------------------------------------------


class _Pool(Upstream):
    """An Upstream whose backend connections are in memory and recorded."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        super().__init__(clock)
        self.made: list[tuple[_Connection, StringTransport]] = []

    def _connect(self, call: BackendCall) -> None:
        conn = _Connection(self, call.origin)
        transport = StringTransport()
        conn.makeConnection(transport)
        self.made.append((conn, transport))
        conn.start(call, reused=False)


class _Relay(resource.Resource):
    isLeaf = True

    def __init__(self, forwarder: Forwarder, results: list[ForwardResult]) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.results = results

    def render(self, request: server.Request) -> int:
        self.forwarder.forward(
            web_exchange(request), b"http://127.0.0.1:9/x", on_done=self.results.append
        )
        return server.NOT_DONE_YET


@dataclass
class Relay:
    clock: MemoryReactorClock
    channel: Any  # twisted.web's HTTPChannel, as a Site builds it
    client: StringTransport
    backend: StringTransport
    backend_conn: _Connection
    pool: _Pool
    results: list[ForwardResult]

    def backend_sends(self, data: bytes) -> None:
        self.backend_conn.dataReceived(data)

    def client_full(self) -> None:
        """What the client's transport does when its unsent output is over its bound."""
        self.channel.pauseProducing()

    def client_drained(self) -> None:
        self.channel.resumeProducing()


SEND_TIMEOUT = 1.0
BACKEND_TIMEOUT = 5.0
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"


def relay(send_timeout: float = SEND_TIMEOUT) -> Relay:
    """A GET relayed to an in-memory backend, its response head and 1000 body bytes in."""
    clock = MemoryReactorClock()
    fw = Forwarder(
        clock, ForwardSettings(backend_timeout=BACKEND_TIMEOUT, send_timeout=send_timeout)
    )
    pool = _Pool(clock)
    fw._upstream = pool
    results: list[ForwardResult] = []
    site = server.Site(_Relay(fw, results), reactor=clock)
    site.protocol = http.HTTPChannel  # type: ignore[assignment]  # HTTP/1.1 only, as the gateway
    channel = site.buildProtocol(None)
    client = StringTransport()
    channel.makeConnection(client)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    backend_conn, backend = pool.made[0]
    r = Relay(clock, channel, client, backend, backend_conn, pool, results)
    r.backend_sends(HEAD + b"a" * 1000)
    assert client.value().startswith(b"HTTP/1.1 200 OK")
    return r


def test_a_client_that_accepts_nothing_is_aborted_after_send_timeout() -> None:
    r = relay()
    r.client_full()
    assert r.backend.producerState == "paused"  # back-pressure reached the backend
    r.clock.advance(SEND_TIMEOUT - 0.01)
    assert not r.client.disconnecting and not r.results
    r.clock.advance(0.02)
    assert r.client.disconnected  # aborted, not a graceful close that waits for the client
    assert r.results == [ForwardResult(200, 1000, "client_timeout")]
    assert r.backend.disconnecting  # the backend request is cancelled, its connection closed
    assert not r.pool._idle  # ... and never parked for reuse
    # The abort reaches the channel later; it is not recorded a second time.
    r.channel.connectionLost(Failure(ierror.ConnectionAborted()))
    assert len(r.results) == 1
    # No timer of this request is left: at most the forwarder's one backend-deadline
    # timer, shared by every request, which fires once and then runs nothing.
    left = [c for c in r.clock.getDelayedCalls() if c.active()]
    assert all(c.func.__qualname__ == "_Deadlines._fire" for c in left), left
    r.clock.advance(120)
    assert len(r.results) == 1 and not [c for c in r.clock.getDelayedCalls() if c.active()]


def test_the_timer_counts_only_an_unbroken_pause() -> None:
    """Each time the client drains the output the period starts again (NGINX counts from the
    last write); the backend timer does not run while the client is the slow one."""
    r = relay()
    for _ in range(10):
        r.client_full()
        r.clock.advance(SEND_TIMEOUT * 0.9)
        r.client_drained()
        r.backend_sends(b"b" * 1000)
    assert not r.client.disconnecting and not r.results
    r.client_full()
    r.clock.advance(BACKEND_TIMEOUT * 0.9)  # longer than send_timeout: the client's fault
    assert r.results == [ForwardResult(200, 11000, "client_timeout")]


def test_a_client_that_keeps_accepting_bytes_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may keep the output paused for longer than send_timeout while a slow
    client reads steadily: what the client acknowledged counts as progress."""
    acked = [0]
    monkeypatch.setattr(_forward, "_client_progress", lambda request: acked[0])
    r = relay()
    r.client_full()
    for _ in range(20):
        acked[0] += 65536
        r.clock.advance(SEND_TIMEOUT)
    assert not r.client.disconnecting and not r.results
    r.clock.advance(SEND_TIMEOUT)  # no progress for a whole period
    assert r.results == [ForwardResult(200, 1000, "client_timeout")]
    assert r.client.disconnected


def test_a_body_that_ends_while_the_client_is_slow_stops_the_timer() -> None:
    r = relay()
    r.client_full()
    r.backend_sends(b"a" * (10000000 - 1000))
    assert r.results == [ForwardResult(200, 10000000, None)]
    r.clock.advance(SEND_TIMEOUT * 10)
    assert r.results == [ForwardResult(200, 10000000, None)]
    assert not r.client.disconnected


def test_the_backend_timer_still_applies_while_the_client_keeps_up() -> None:
    r = relay(send_timeout=100.0)
    r.clock.advance(BACKEND_TIMEOUT + 0.1)
    assert r.results == [ForwardResult(200, 1000, "timeout")]


def test_client_progress_is_what_the_peer_acknowledged() -> None:
    """On Linux, the bytes the client's TCP stack acknowledged; None without a TCP socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    try:

        class Transport:
            def getHandle(self) -> socket.socket:
                return sender

        class Conn:
            transport: Any = Transport()

        class Exchange:
            conn = Conn()

        request: Any = Exchange()
        start = _forward._client_progress(request)
        if start is None:
            pytest.skip("this kernel does not report tcpi_bytes_acked")
        sender.sendall(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(receiver.recv(65536))
        assert wait_until(lambda: _forward._client_progress(request) == start + 100_000)
        Conn.transport = StringTransport()
        assert _forward._client_progress(request) is None
    finally:
        for s in (sender, receiver, listener):
            s.close()


# -- the config key ----------------------------------------------------------------


def test_send_timeout_defaults_to_60_seconds_and_is_read(pki: DevPki, tmp_path: Path) -> None:
    assert Limits().send_timeout == 60.0
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(pki, [api()], port=0, extra="[limits]\nsend_timeout = 2.5\n"))
    assert load(path).limits.send_timeout == 2.5


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", '"soon"'])
def test_a_bad_send_timeout_names_the_file_and_key(
    pki: DevPki, tmp_path: Path, bad: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(pki, [api()], port=0, extra=f"[limits]\nsend_timeout = {bad}\n"))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path.resolve()}: limits.send_timeout: " in str(info.value)


# -- against a real gateway ---------------------------------------------------------

REAL_SEND_TIMEOUT = 1.0
MiB = 1024 * 1024


@dataclass
class Real:
    env: Env  # what tests/test_front.py counts client connections of
    backend: BackendProcess
    access_log: Path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[Real]:
    """A gateway (send_timeout 1 s, backend_timeout 30 s) before a backend of its own."""
    directory = tmp_path_factory.mktemp("send-timeout")
    backend = start_backend(directory / "backend")
    port, tls_port, admin = free_port(), free_port(), free_port()
    access_log = directory / "access.jsonl"
    extra = (
        table("limits", {"send_timeout": REAL_SEND_TIMEOUT, "backend_timeout": 30.0})
        + table("admin", {"host": "127.0.0.1", "port": admin})
        + table("access_log", {"path": str(access_log)})
    )
    text = gateway_config(
        pki,
        [{"name": "open", "context": "/open", "backend": backend.url}],
        port=port,
        extra=extra,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False},
                   {"host": "127.0.0.1", "port": tls_port}],
    )
    try:
        gw = start_gateway(directory / "gw", text, port, wait_for=(tls_port, admin))
    except Exception:
        backend.stop()
        raise
    try:
        yield Real(Env(gw, port, tls_port, admin, pki), backend, access_log)
    finally:
        gw.stop()
        backend.stop()


def _tls_get(real: Real, path: str, rcvbuf: int | None = None) -> tuple[ssl.SSLSocket, bytes]:
    """A TLS connection that sent GET ``path`` and read the response head: (socket, body read)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", real.env.tls_port))
    sock = client_context(real.env.pki).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed inside the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock, body


def _backend_open(real: Real) -> int:
    """The backend's open connections, not counting the one asking."""
    with socket.create_connection(("127.0.0.1", real.backend.port), timeout=10) as s:
        s.sendall(b"GET /connections HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        answer = read_response(s)
    return int(answer.json()["open"]) - 1


def _queued_for(real: Real, client_port: int) -> int:
    """Bytes the kernel holds, unsent or unacknowledged, on the gateway's socket to a client."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
        if int(local, 16) == real.env.tls_port and int(remote, 16) == client_port:
            return int(fields[4].split(":")[0], 16)
    return 0


def _record(real: Real, path: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        lines = [e for e in read_json_lines(real.access_log) if e.get("path") == path]
        return lines[-1] if lines else None

    return wait_until(find, what=f"the access-log line of {path}")


def test_a_client_that_stops_reading_is_cut_and_the_backend_released(real: Real) -> None:
    """256 MiB asked for, the head read, then nothing: the client connection is closed about
    send_timeout later and the backend connection with it (backend_timeout is 30 s)."""
    path = f"/open/bytes/{256 * MiB}"
    before = scrape(real.env.admin)
    baseline = client_connections(real.env)
    sock, _ = _tls_get(real, path, rcvbuf=64 * 1024)
    try:
        stopped = time.monotonic()
        assert client_connections(real.env) == baseline + 1
        assert _backend_open(real) == 1
        deadline = stopped + REAL_SEND_TIMEOUT + 8.0
        while time.monotonic() < deadline and client_connections(real.env) > baseline:
            time.sleep(0.1)
        held = time.monotonic() - stopped
        assert client_connections(real.env) == baseline, f"still held after {held:.1f} s"
        assert held >= REAL_SEND_TIMEOUT * 0.9
        assert wait_until(lambda: _backend_open(real) == 0, what="the backend connection closed")
        # The client sees a cut, never a complete response.
        got = 0
        sock.settimeout(10)
        try:
            while chunk := sock.recv(4 * MiB):
                got += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert got < 256 * MiB
    finally:
        sock.close()
    record = _record(real, path)
    assert (record["status"], record["error"]) == (200, "client_timeout")
    assert 0 < record["bytes"] < 256 * MiB
    after = scrape(real.env.admin)
    kind = {"kind": "client_timeout"}
    assert value(after, "twistedgw_client_errors_total", **kind) - value(
        before, "twistedgw_client_errors_total", **kind
    ) == 1
    backend_errors = {
        labels: count for labels, count in after.get("twistedgw_backend_errors_total", {}).items()
        if count
    }
    assert not backend_errors, backend_errors
    assert "Traceback" not in real.env.gw.output()


def test_a_slow_but_steady_reader_is_not_cut(real: Real) -> None:
    """64 KiB every 0.3 s (about 210 kB/s) with send_timeout 1 s: the output stays paused
    for longer than a second at times (the kernel wakes the writer only once a third of
    its send buffer has drained), yet the client is reading, so the download completes."""
    n = 3 * MiB
    path = f"/open/bytes/{n}"
    sock, body = _tls_get(real, path)
    client_port = sock.getsockname()[1]
    try:
        received = len(body)
        started = time.monotonic()
        waiting = 0
        while received < n:
            waiting = max(waiting, _queued_for(real, client_port))
            time.sleep(0.3)
            want = min(64 * 1024, n - received)
            while want > 0:
                chunk = sock.recv(want)
                assert chunk, f"cut after {received} of {n} bytes"
                received += len(chunk)
                want -= len(chunk)
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert received == n
    assert elapsed > 10 * REAL_SEND_TIMEOUT  # it really was slow
    assert waiting > MiB  # and the gateway had output waiting for it (the timer's case)
    record = _record(real, path)
    assert (record["status"], record["bytes"], record["error"]) == (200, n, None)


def test_nginx_in_front_gets_the_same_send_timeout(tmp_path: Path, pki: DevPki) -> None:
    """`twistedgw nginx-config` renders [limits] send_timeout as NGINX's own."""
    from tests.test_nginx_fronted import _config
    from twistedgw.app import nginx as nginxconf

    rendered = nginxconf.render(load(_config(tmp_path, pki, "[limits]\nsend_timeout = 7\n")))
    assert "    send_timeout 7s;\n" in rendered.text
