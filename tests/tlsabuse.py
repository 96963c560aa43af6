"""Malformed and unwanted TLS for robustness tests and the soak: raw ClientHellos,
random bytes, truncated handshakes, and reading a process's fds and RSS."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path

# TLS_RSA_WITH_AES_128_CBC_SHA, ..._256_..., ECDHE-RSA-AES128/256-SHA, 3DES: what 1.0/1.1 used.
_OLD_CIPHERS = (0x002F, 0x0035, 0xC013, 0xC014, 0x000A)


def client_hello(version: int, host: bytes = b"localhost") -> bytes:
    """A ClientHello record offering exactly ``version`` (0x0301 = TLS 1.0, 0x0302 = 1.1)."""
    body = struct.pack(">H", version) + os.urandom(32) + b"\x00"
    body += struct.pack(">H", 2 * len(_OLD_CIPHERS))
    body += b"".join(struct.pack(">H", c) for c in _OLD_CIPHERS)
    body += b"\x01\x00"  # compression: null
    server_name = struct.pack(">BH", 0, len(host)) + host
    sni = struct.pack(">HH", 0, len(server_name) + 2) + struct.pack(">H", len(server_name))
    sni += server_name
    body += struct.pack(">H", len(sni)) + sni
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16" + struct.pack(">HH", 0x0301, len(handshake)) + handshake


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the peer sends, and whether it closed (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data, True
    except OSError:  # our timeout: the peer kept the connection open
        return data, False


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (or resets, or ``timeout``)."""
    return read_until_closed(sock, timeout)[0]


_MODERN: dict[ssl.TLSVersion, ssl.SSLContext] = {}


def modern_client_hello(max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """The first flight of a real TLS 1.2/1.3 client (Python's ssl), for hello-then-close."""
    ctx = _MODERN.get(max_version)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = max_version
        ctx = _MODERN.setdefault(max_version, ctx)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# What bad_handshake(kind=i) sends; the gateway must close each without a session.
KINDS = ("random", "tls1.0", "tls1.1", "plain-http", "truncated", "bad-record", "hello-close")


@dataclass
class Attempt:
    kind: str
    reply: bytes
    closed: bool  # the gateway closed (EOF/reset) before our timeout; True when we closed first
    seconds: float


def bad_handshake(port: int, kind: int, rng: random.Random, timeout: float = 5.0) -> Attempt:
    """One failed TLS attempt of kind 0..6 (``KINDS``); returns once the gateway has dealt
    with it: it closed, or (truncated, hello-close) we closed first."""
    start = time.monotonic()
    reply, closed = b"", True
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if kind == 0:
            s.sendall(rng.randbytes(rng.randint(1, 2048)))
        elif kind == 1:
            s.sendall(client_hello(0x0301))
        elif kind == 2:
            s.sendall(client_hello(0x0302))
        elif kind == 3:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
        elif kind == 4:
            hello = client_hello(0x0303)
            s.sendall(hello[: rng.randint(1, len(hello) - 1)])  # truncated, then gone
        elif kind == 5:
            # Random bytes inside a plausible handshake record header.
            payload = rng.randbytes(rng.randint(4, 512))
            s.sendall(b"\x16\x03\x03" + struct.pack(">H", len(payload)) + payload)
        else:
            # A real TLS 1.2 or 1.3 ClientHello; read the server's first flight (the
            # gateway has done its key exchange and signature), then vanish.
            version = rng.choice([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
            s.sendall(modern_client_hello(version))
            s.settimeout(timeout)
            try:
                reply = s.recv(65536)
            except OSError:
                closed = False
        if kind not in (4, 6):
            reply, closed = read_until_closed(s, timeout)
    return Attempt(KINDS[kind], reply, closed, time.monotonic() - start)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
