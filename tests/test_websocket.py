"""WebSockets through a real gateway: real TLS with client certificates, the
``websockets`` library's client and echo backend (tests/wskit.py), loopback.

One gateway serves the module (``websocket_idle_timeout = 4``); the graceful stop
and NGINX tests start their own."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.backend_fixture import BackendProcess
from tests.e2e import context, running_gateway
from tests.harness import GatewayProcess, free_port, gateway_config
from tests.opskit import wait_until
from tests.wskit import WsBackend, access_lines, ws_backend, ws_connect
from twistedgw.testing.devpki import DevPki

IDLE = 4


@pytest.fixture(scope="module")
def backend_ws() -> Iterator[WsBackend]:
    with ws_backend() as backend:
        yield backend


def _apis(url: str) -> list[dict[str, Any]]:
    return [
        # (A response cache never sees a handshake: it goes to the backend itself.)
        {"name": "chat", "version": "1", "context": "/ws", "backend": url,
         "mutual_ssl": "mandatory", "websocket": True, "response_cache": {"enabled": True}},
        {"name": "plain", "version": "1", "context": "/plain", "backend": url,
         "mutual_ssl": "mandatory"},
    ]


def _extra(directory: Path, *more: str) -> str:
    return "\n".join((
        '[identity]\nforward = "xfcc"\n',
        f"[limits]\nwebsocket_idle_timeout = {IDLE}\n",
        f'[access_log]\npath = "{directory / "access.jsonl"}"\n',
        *more,
    ))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
       backend_ws: WsBackend) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("ws-gw")
    with running_gateway(d, pki, _apis(backend_ws.url), extra=_extra(d)) as gateway:
        yield gateway


def _records(gw: GatewayProcess) -> list[dict[str, Any]]:
    path = gw.config.parent / "access.jsonl"
    return access_lines(path.read_text()) if path.exists() else []


def _record(gw: GatewayProcess, path: str, timeout: float = 10) -> dict[str, Any]:
    """The one access-log line of the WebSocket on ``path`` (written at its close)."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [r for r in _records(gw) if r["path"] == path and r["status"] == 101]
        return bool(found)

    wait_until(written, timeout=timeout, what=f"the access-log line of {path}")
    time.sleep(0.2)
    assert written() and len(found) == 1, found
    return found[0]


def _url(gw: GatewayProcess, path: str) -> str:
    return f"wss://localhost:{gw.port}{path}"


def test_echo_both_ways(gw: GatewayProcess, pki: DevPki, backend_ws: WsBackend) -> None:
    """Text, binary and a 300 KB message each way, after the API's pipeline set the
    identity header; Upgrade and Connection reach the backend, other hop-by-hop fields
    do not; one access-log line when it closes."""
    big = os.urandom(300_000)
    with ws_connect(_url(gw, "/ws/echo"), context(pki, "partner-app"),
                    additional_headers={"Keep-Alive": "timeout=5", "X-Extra": "1"}) as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff\x01")
        assert ws.recv() == b"\x00\xff\x01"
        ws.send(big)
        assert ws.recv() == big
        ws.send("x" * 100_000)
        assert ws.recv() == "x" * 100_000
    path, headers = backend_ws.requests[-1]
    assert path == "/echo"
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert headers["x-extra"] == "1" and "keep-alive" not in headers
    assert "partner-app" in headers["x-forwarded-client-cert"]  # the pipeline ran
    record = _record(gw, "/ws/echo")
    assert (record["api"], record["closed_by"], record["close_code"]) == (
        "chat:1", "client", 1000)
    assert record["bytes_received"] > 400_000 and record["bytes"] > 400_000
    assert record["mtls"] == "verified"


def test_refused_before_the_101(gw: GatewayProcess, pki: DevPki, backend_ws: WsBackend) -> None:
    """No certificate: the API's 401 JSON, no upgrade, and the backend never sees the
    handshake. A backend's refusal comes back as it sent it. An API that does not accept
    WebSockets forwards a plain request (Upgrade dropped): the backend answers 426."""
    seen = len(backend_ws.requests)
    with pytest.raises(InvalidStatus) as info:
        ws_connect(_url(gw, "/ws/echo"), context(pki))
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.get("Upgrade") is None
    assert b'"code"' in response.body
    assert len(backend_ws.requests) == seen
    # A backend that refuses the handshake: its answer is relayed as a normal response.
    with pytest.raises(InvalidStatus) as info:
        ws_connect(_url(gw, "/ws/deny"), context(pki, "partner-app"))
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"not for you\n"
    assert backend_ws.requests[-1][1]["upgrade"] == "websocket"
    with pytest.raises(InvalidStatus) as info:
        ws_connect(_url(gw, "/plain/echo"), context(pki, "partner-app"))
    assert info.value.response.status_code == 426
    path, headers = backend_ws.requests[-1]
    assert path == "/echo" and "upgrade" not in headers and "connection" not in headers


def _raw_handshake(port: int, ctx: ssl.SSLContext, path: str) -> ssl.SSLSocket:
    """A TLS socket that made the opening handshake by hand (with a small receive buffer)
    and read the 101 head, nothing more."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    return sock


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_stalls_the_backend(
    gw: GatewayProcess, pki: DevPki, backend_ws: WsBackend
) -> None:
    """The backend floods a client that reads nothing: the gateway stops reading the
    backend once its buffer toward the client is full (the backend's sends block), its
    memory does not grow, and the stalled connection is closed after the idle timeout."""
    sock = _raw_handshake(gw.port, context(pki, "partner-app"), "/ws/flood")
    try:
        before = _rss(gw.proc.pid)
        backend_ws.flooded = 0
        sock.sendall(b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"go", b"ab", strict=True)))
        wait_until(lambda: backend_ws.flooded > 0, timeout=5, what="the flood to start")
        last = -1
        while backend_ws.flooded != last:  # until the backend's sends block
            last = backend_ws.flooded
            time.sleep(0.5)
        grown = _rss(gw.proc.pid) - before
        # Without the bound the gateway reads as fast as the backend writes (hundreds of
        # MB a second here); with it only the kernels' socket buffers fill.
        assert last < 48 * 1024 * 1024, last
        assert grown < 8 * 1024 * 1024, grown
        record = _record(gw, "/ws/flood", timeout=IDLE + 10)
        assert record["closed_by"] == "idle_timeout"
    finally:
        sock.close()


def test_the_backend_closes(gw: GatewayProcess, pki: DevPki) -> None:
    with ws_connect(_url(gw, "/ws/close"), context(pki, "partner-app")) as ws:
        ws.send("last")
        assert ws.recv() == "last"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4000
    record = _record(gw, "/ws/close")
    assert (record["closed_by"], record["close_code"]) == ("backend", 4000)


def test_idle_timeout(gw: GatewayProcess, pki: DevPki) -> None:
    """No byte either way for websocket_idle_timeout: a 1001 Close, then TCP close."""
    with ws_connect(_url(gw, "/ws/idle"), context(pki, "partner-app"),
                    ping_interval=None) as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=IDLE + 10)
        waited = time.monotonic() - opened
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert IDLE - 0.5 < waited < IDLE + 10
    record = _record(gw, "/ws/idle")
    assert (record["closed_by"], record["close_code"]) == ("idle_timeout", 1001)


def test_graceful_stop_closes_websockets_after_the_drain_timeout(
    gateway: Callable[..., GatewayProcess], pki: DevPki, backend_ws: WsBackend,
    tmp_path: Path,
) -> None:
    """SIGTERM: the WebSocket is left open for shutdown_timeout (the drain), then closed
    with a 1001 Close frame, counted; the process exits 0."""
    port = free_port()
    text = "shutdown_timeout = 1.5\n" + gateway_config(
        pki, _apis(backend_ws.url), port=port, extra=_extra(tmp_path))
    gw = gateway([], config_text=text, port=port)
    with ws_connect(_url(gw, "/ws/stop"), context(pki, "partner-app")) as ws:
        ws.send("before")
        assert ws.recv() == "before"
        sent = time.monotonic()
        gw.signal(signal.SIGTERM)
        time.sleep(0.5)
        ws.send("during the drain")  # still relayed while the drain waits
        assert ws.recv() == "during the drain"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        waited = time.monotonic() - sent
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert 1.3 < waited < 10  # (upper bound: a loaded machine; the drain is 1.5 s)
    assert gw.proc.wait(10) == 0
    assert "closing 1 WebSocket(s) (1001)" in gw.output()
    (record,) = [r for r in access_lines((tmp_path / "access.jsonl").read_text())
                 if r["status"] == 101]
    assert (record["closed_by"], record["close_code"]) == ("shutdown", 1001)


def test_echo_through_the_rendered_nginx_config(
    tmp_path: Path, pki: DevPki, backend: BackendProcess, backend_ws: WsBackend
) -> None:
    """NGINX-fronted: a WebSocket API on NGINX's path (NGINX asks the authz endpoint and
    proxies the upgrade itself) and one on the gateway path (a response cache: twistedgw
    judges and relays it); a refusal is twistedgw's 401 JSON."""
    from tests.test_nginx_fronted import start_fronted

    extra = (
        f'\n[[apis]]\nname = "chat"\nversion = "1"\ncontext = "/chat"\n'
        f'backend = "{backend_ws.url}"\nmutual_ssl = "mandatory"\nwebsocket = true\n'
        f'\n[[apis]]\nname = "cached"\nversion = "1"\ncontext = "/cached"\n'
        f'backend = "{backend_ws.url}"\nmutual_ssl = "mandatory"\nwebsocket = true\n'
        '[apis.response_cache]\nenabled = true\n'
    )
    fronted = start_fronted(tmp_path, pki, backend, extra=extra)
    try:
        site = (tmp_path / "nginx" / "twistedgw.conf").read_text()
        assert "proxy_set_header Upgrade $tgw_upgrade;" in site
        assert "chat:1 (/chat): NGINX's path" in site
        assert "cached:1 (/cached): gateway path" in site
        for path in ("/chat/echo", "/cached/echo"):
            url = f"wss://localhost:{fronted.nginx.port}{path}"
            with ws_connect(url, context(pki, "partner-app")) as ws:
                for message in ("hello", b"\x01\x02", b"z" * 200_000):
                    ws.send(message)
                    assert ws.recv() == message
            assert backend_ws.requests[-1][0] == "/echo"
        seen = len(backend_ws.requests)
        with pytest.raises(InvalidStatus) as info:
            ws_connect(f"wss://localhost:{fronted.nginx.port}/chat/echo", context(pki))
        assert info.value.response.status_code == 401
        assert b'"code"' in info.value.response.body
        assert len(backend_ws.requests) == seen
    finally:
        fronted.nginx.stop()
        fronted.gateway.stop()
