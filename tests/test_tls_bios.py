"""Fresh memory BIOs for an idle TLS connection (``_twisted.fresh_bios``, used by the
front): in memory over twisted.test.iosim, with the gateway's ServerTLS."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from tests.frontkit import front
from tests.test_tls_memory import Collect, client_options
from twistedgw._twisted import fresh_bios
from twistedgw.config import Limits, TlsConfig
from twistedgw.http._front import FrontChannel
from twistedgw.testing.devpki import DevPki
from twistedgw.tls import ServerTLS
from twistedgw.tls import _pki as pkimod


@pytest.fixture(scope="module")
def server_tls(pki: DevPki) -> ServerTLS:
    keystore = pkimod.load_keystore_pem(pki.server_cert, pki.server_key)
    return ServerTLS(TlsConfig(), keystore, pkimod.load_truststore(pki.truststore_dir))


def _pair(server_tls: ServerTLS, pki: DevPki, server_app: Any) -> tuple[Any, Any, Any, Any]:
    clock = Clock()
    client_app = Collect()
    server_factory = TLSMemoryBIOFactory(
        server_tls, False, Factory.forProtocol(lambda: server_app), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_options(pki, "partner-app"), True, Factory.forProtocol(lambda: client_app),
        clock=clock,
    )
    client, server, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    return client, server, pump, client_app


def test_fresh_bios_keep_the_connection_working(server_tls: ServerTLS, pki: DevPki) -> None:
    server_app = Collect()
    client, server, pump, client_app = _pair(server_tls, pki, server_app)
    big = bytes(range(256)) * 1024  # 256 KiB each way: both BIOs grow
    client.write(big)
    server.write(big)
    pump.flush()
    assert server_app.data == big and client_app.data == big
    conn = server.getHandle()
    before = (conn._into_ssl, conn._from_ssl)
    assert fresh_bios(conn)
    assert conn._into_ssl not in before and conn._from_ssl not in before
    client.write(b"after")  # the TLS state did not move: both ways still work
    pump.flush()
    server.write(b"back")
    pump.flush()
    assert server_app.data == big + b"after" and client_app.data == big + b"back"


def test_fresh_bios_leave_bytes_in_flight_alone(server_tls: ServerTLS, pki: DevPki) -> None:
    server_app = Collect()
    client, server, pump, _ = _pair(server_tls, pki, server_app)
    client.write(b"x")
    pump.flush()
    conn = server.getHandle()
    conn.bio_write(b"\x17\x03\x03\x00")  # the start of a record, not yet whole
    into = conn._into_ssl
    assert not fresh_bios(conn) and conn._into_ssl is into


def test_the_front_gives_a_tls_connection_fresh_bios_after_its_first_answer(
    server_tls: ServerTLS, pki: DevPki
) -> None:
    f = front(Limits())  # its guard and resource; the channel below is served over TLS
    channel = FrontChannel(f.channel.guard)
    channel.site = f.channel.site
    clock = Clock()
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    client, server, pump, client_app = _pair(server_tls, pki, channel)
    pump.flush()
    conn = server.getHandle()
    handshake_bios = conn._into_ssl
    client.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    assert client_app.data.startswith(b"HTTP/1.1 200 ")
    first = conn._into_ssl
    assert first != handshake_bios  # replaced once the first answer was out
    client.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    assert client_app.data.count(b"HTTP/1.1 200 ") == 2
    assert conn._into_ssl == first  # not per request: the timer's housekeeping does later
    clock.advance(Limits().client_header_timeout + 0.1)  # the timer, idle: replaced again
    assert conn._into_ssl != first
    client.write(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    assert client_app.data.count(b"HTTP/1.1 200 ") == 3
