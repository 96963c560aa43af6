"""Connections that idle (their TLS record buffers released) and come back.

An idle connection holds no OpenSSL record buffers (MODE_RELEASE_BUFFERS) and
full handshakes of one verified chain share one verdict: a real gateway, real TLS,
a real backend. A connection that idled must still carry a large response intact,
and a resumed session (ticket) must still be judged by its full handshake's verdict.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.backend import pattern
from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, client_context, free_port, gateway_config, start_gateway
from tests.rawhttp import read_response
from twistedgw.testing.devpki import DevPki

LARGE = 3_000_000


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
       backend: BackendProcess) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [{"name": "idle", "context": "/", "backend": backend.url,
             "mutual_ssl": "mandatory"}]
    process = start_gateway(tmp_path_factory.mktemp("idle"),
                            gateway_config(pki, apis, port=port), port)
    try:
        yield process
    finally:
        process.stop()


def open_tls(port: int, context: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost", session=session)


def get(sock: ssl.SSLSocket, path: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    response = read_response(sock)
    return response.status, response.body


def test_idle_connection_then_a_large_response(gw: GatewayProcess, pki: DevPki) -> None:
    sock = open_tls(gw.port, client_context(pki, "partner-app"))
    with sock:
        assert get(sock, "/bytes/100") == (200, pattern(0, 100))
        time.sleep(1.5)  # idle: nothing to read or write, the buffers are released
        status, body = get(sock, f"/bytes/{LARGE}")
        assert status == 200
        assert len(body) == LARGE and body == pattern(0, LARGE)
        time.sleep(0.5)
        assert get(sock, "/bytes/100") == (200, pattern(0, 100))


def test_resumed_session_after_idle_keeps_its_verdict(gw: GatewayProcess, pki: DevPki) -> None:
    context = client_context(pki, "partner-app")
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    first = open_tls(gw.port, context)
    with first:
        assert get(first, "/bytes/10")[0] == 200  # the ticket arrives with the response
        session = first.session
    assert session is not None
    time.sleep(1.0)
    again = open_tls(gw.port, context, session)
    with again:
        assert again.session_reused
        status, body = get(again, f"/bytes/{LARGE}")
        assert status == 200 and body == pattern(0, LARGE)
    # Without a certificate the mandatory API refuses: the 200s above were verdicts.
    anonymous = open_tls(gw.port, client_context(pki))
    with anonymous:
        assert get(anonymous, "/bytes/10")[0] == 401


def test_many_full_handshakes_of_one_client_are_each_verified(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """Shared verdicts: every connection of partner-app passes, intruder's never does,
    whatever the order."""
    good = client_context(pki, "partner-app")
    bad = client_context(pki, "intruder")
    for i in range(6):
        context = good if i % 2 == 0 else bad
        sock = open_tls(gw.port, context)
        with sock:
            assert get(sock, "/bytes/10")[0] == (200 if context is good else 401)
