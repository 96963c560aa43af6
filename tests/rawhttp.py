"""Raw-socket HTTP/1.1 for tests that send what http.client refuses to send."""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes
    closed: bool  # the server closed the connection after the response

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name.lower().encode():
                return v.strip().decode("latin-1")
        return None


def open_socket(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket | ssl.SSLSocket, timeout: float = 10.0) -> RawResponse:
    """Read one response (headers plus a Content-Length body); status 0 if none came."""
    deadline = time.monotonic() + timeout
    data = b""
    closed = False
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            chunk = b""
        if not chunk:
            closed = True
            break
        data += chunk
    if b"\r\n\r\n" not in data:
        return RawResponse(0, data, b"", closed)
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # an interim response; read past it
        head, _, body = body.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            chunk = b""
        if not chunk:
            closed = True
            break
        body += chunk
    return RawResponse(status, head, body, closed)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``data`` on a new connection and read one response."""
    with open_socket(port, timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def wait_closed(sock: socket.socket | ssl.SSLSocket, timeout: float) -> float | None:
    """Seconds until the peer closes (EOF or reset), discarding data; None if it did not."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return time.monotonic() - start
        if not chunk:
            return time.monotonic() - start
    return None
