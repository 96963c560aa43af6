"""Helpers shared by the end-to-end suites: module-scoped gateways and raw TLS sockets.

The suites start few gateway processes (one per module, many APIs each) and
reuse client ``SSLContext`` objects, so a matrix of hundreds of real TLS
requests stays fast.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from tests.harness import GatewayProcess, Response, free_port, gateway_config, send, start_gateway
from twistedgw.testing.devpki import DevPki


@contextmanager
def running_gateway(
    directory: Path,
    pki: DevPki,
    apis: list[dict[str, Any]],
    port: int | None = None,
    argv: list[str] | None = None,
    **kwargs: Any,
) -> Iterator[GatewayProcess]:
    """A gateway process for ``apis`` (on ``port``, else a free one: pass it when
    ``listeners`` name it; ``argv``: how to start it, as ``start_gateway`` says); its
    log is printed if the block fails."""
    port = port or free_port()
    config = gateway_config(pki, apis, port=port, **kwargs)
    gw = start_gateway(directory, config, port, argv=argv)
    try:
        yield gw
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()


@cache
def _cached_context(
    server_ca: str, crt: str | None, key: str | None, max_version: ssl.TLSVersion | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server_ca)
    if crt is not None and key is not None:
        ctx.load_cert_chain(crt, key)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def context(
    pki: DevPki, client: str | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client context (cached: resuming a session needs the context that made it)."""
    crt, key = (str(p) for p in pki.clients[client]) if client is not None else (None, None)
    return _cached_context(str(pki.server_ca), crt, key, max_version)


class TLSConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over an already-wrapped TLS socket (so a session can be reused)."""

    def __init__(self, sock: ssl.SSLSocket, timeout: float = 30.0) -> None:
        super().__init__("localhost", sock.getpeername()[1], timeout=timeout)
        self.sock = sock

    def connect(self) -> None:
        raise ConnectionError("the TLS connection was closed; open a new one")


def tls_connect(
    port: int,
    ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
    timeout: float = 30.0,
) -> TLSConnection:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    except BaseException:
        raw.close()
        raise
    return TLSConnection(sock, timeout)


def get(
    port: int,
    path: str,
    pki: DevPki,
    client: str | None = None,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    **kwargs: Any,
) -> Response:
    """One request on a fresh TLS connection presenting ``client``'s certificate."""
    conn = tls_connect(port, context(pki, client))
    try:
        return send(conn, path, headers=headers, **kwargs)
    finally:
        conn.close()


def echoed_headers(response: Response) -> list[tuple[str, str]]:
    """The request headers the echo backend saw, in wire order."""
    return [(n, v) for n, v in response.json()["headers"]]


def echoed(response: Response, name: str) -> list[str]:
    return [v for n, v in echoed_headers(response) if n.lower() == name.lower()]
