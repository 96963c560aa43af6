"""A real WebSocket backend (the ``websockets`` library's server, on loopback) and a
client through the gateway's real TLS, for the WebSocket tests."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.http11 import Request, Response
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

#: Messages up to this size either way (the tests send one over 64 KiB).
MAX_MESSAGE = 4 * 1024 * 1024


class WsBackend:
    """Echoes every message on any path, except:

    * ``.../close``: answers the first message, then closes with 4000;
    * ``.../flood``: after the first message, sends 64 KiB binary messages for as long
      as its socket takes them, counting them in ``flooded`` (bytes);
    * ``.../deny``: refuses the handshake: 403 with a body.

    ``requests`` holds every request it received, a WebSocket handshake or not (path,
    lower-case headers); a request without ``Upgrade`` is answered 426 (the library's
    server does so)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.flooded = 0
        self.closed: list[int | None] = []  # close codes it saw, per finished connection
        self._server: Server = serve(
            self._handle, "127.0.0.1", 0, max_size=MAX_MESSAGE, compression=None,
            ping_interval=None, process_request=self._seen,
        )
        self.port = self._server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _seen(self, ws: ServerConnection, request: Request) -> Response | None:
        self.requests.append(
            (request.path, {k.lower(): v for k, v in request.headers.raw_items()})
        )
        if request.path.endswith("/deny"):
            return ws.respond(403, "not for you\n")
        return None

    def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        path = request.path
        try:
            if path.endswith("/close"):
                ws.send(ws.recv())
                ws.close(4000, "backend done")
            elif path.endswith("/flood"):
                ws.recv()
                chunk = b"x" * 65536
                while True:
                    ws.send(chunk)
                    self.flooded += len(chunk)
            else:
                for message in ws:
                    ws.send(message)
        except Exception:
            pass
        finally:
            self.closed.append(ws.close_code)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@contextmanager
def ws_backend() -> Iterator[WsBackend]:
    backend = WsBackend()
    try:
        yield backend
    finally:
        backend.stop()


def ws_connect(url: str, ctx: ssl.SSLContext | None, **kwargs: Any) -> ClientConnection:
    """A client of ``url`` (wss:// through the gateway's TLS with ``ctx``'s certificate)."""
    options: dict[str, Any] = {
        "open_timeout": 30, "close_timeout": 5, "max_size": MAX_MESSAGE, "proxy": None,
        "compression": None,
    }
    options.update(kwargs)
    if ctx is not None:
        options["ssl"] = ctx
        options.setdefault("server_hostname", "localhost")
    return connect(url, **options)


def access_lines(output: str) -> list[dict[str, Any]]:
    """The JSON access-log lines in a gateway's output (the log goes to stdout)."""
    out = []
    for line in output.splitlines():
        if line.startswith("{") and '"status"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
