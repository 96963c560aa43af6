"""Graceful stop on SIGTERM: stop accepting, finish in-flight requests, exit 0."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, connect, free_port, gateway_config, request, send
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki


def _start(gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki,
           shutdown_timeout: float) -> GatewayProcess:
    port = free_port()
    apis = [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
             "mutual_ssl": "mandatory"}]
    text = f"shutdown_timeout = {shutdown_timeout}\n" + gateway_config(pki, apis, port=port)
    return gateway([], config_text=text, port=port)


def _in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_slow_request_finishes_across_sigterm_and_exit_is_zero(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki
) -> None:
    gw = _start(gateway, backend, pki, shutdown_timeout=20)
    idle = connect(gw.port, pki, "partner-app")
    assert send(idle, "/echo/warm").status == 200  # a keep-alive connection, now idle
    thread, result = _in_background(
        lambda: request(gw.port, "/echo/slow/2", pki, "partner-app"))
    time.sleep(0.7)  # the slow request is at the backend now
    sent = time.monotonic()
    gw.signal(signal.SIGTERM)

    wait_until(lambda: _refused(gw.port), timeout=5, what="the listener to close")
    # The idle keep-alive connection is closed at once, not left to time out.
    assert idle.sock is not None
    idle.sock.settimeout(5)
    assert idle.sock.recv(1) == b""
    thread.join(10)
    assert "error" not in result, result
    assert result["value"].status == 200
    assert result["value"].json()["path"] == "/slow/2"
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - sent < 8
    assert "in-flight request" in gw.output()


def test_shutdown_timeout_bounds_the_wait(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki
) -> None:
    gw = _start(gateway, backend, pki, shutdown_timeout=1)
    thread, result = _in_background(
        lambda: request(gw.port, "/echo/slow/30", pki, "partner-app"))
    time.sleep(0.7)
    sent = time.monotonic()
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - sent < 5
    thread.join(5)
    assert isinstance(result.get("error"), (http.client.HTTPException, OSError))
    assert "shutdown_timeout (1.0s) reached" in gw.output()


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigint_stops_gracefully_too(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki, sig: int
) -> None:
    gw = _start(gateway, backend, pki, shutdown_timeout=5)
    assert request(gw.port, "/echo/x", pki, "partner-app").status == 200
    gw.signal(sig)
    assert gw.proc.wait(10) == 0
