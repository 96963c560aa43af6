"""The native heap one server TLS connection holds: OpenSSL's part of an idle connection.

``python3 bench/tls_heap.py [--count 1000]`` measures, in this process, glibc's
in-use heap (``mallinfo2``) per connection for: a bare pyOpenSSL ``Connection``
(cryptography's bundled OpenSSL), a bare stdlib ``ssl`` object (the system
OpenSSL, the one NGINX runs with), and ServerTLS connections after a TLS 1.3
handshake over memory BIOs (what the gateway's listeners use) without and with
a client certificate chain, before and after the verdict is asked for, and what
fresh memory BIOs give back (``_twisted.fresh_bios``: the front's, once a TLS
connection is idle), after a tiny response and after a 1 MiB one. No sockets, no
other process.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import ssl as stdlib_ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import SSL, crypto

from twistedgw._twisted import fresh_bios
from twistedgw.config import TlsConfig
from twistedgw.testing import devpki
from twistedgw.tls import ServerTLS
from twistedgw.tls import _pki as pkimod


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_used() -> int:
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def per_item(count: int, make: Callable[[], Any]) -> float:
    """KiB of native heap each of ``count`` objects from ``make`` holds while alive."""
    keep = []
    gc.collect()
    before = heap_used()
    for _ in range(count):
        keep.append(make())
    gc.collect()
    return (heap_used() - before) / count / 1024


class _App:
    """Stands in for the TLS protocol a connection's record is keyed by."""

    def __init__(self, connection: SSL.Connection | None = None) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection | None:
        return self.connection


def _pump(client: SSL.Connection, server: SSL.Connection) -> None:
    for _ in range(6):
        for src, dst in ((client, server), (server, client)):
            try:
                data = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                dst.bio_write(data)
        for end in (client, server):
            try:
                end.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                end.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    pki = devpki.generate(Path(tempfile.mkdtemp(prefix="twistedgw-heap-")) / "pki")
    server = ServerTLS(TlsConfig(), pkimod.load_keystore_pem(pki.server_cert, pki.server_key),
                       pkimod.load_truststore(pki.truststore_dir))
    issued = pki.issued["partner-app"]

    def client_context(with_cert: bool) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE)
        if with_cert:
            ctx.use_certificate(crypto.X509.from_cryptography(issued.cert))
            ctx.use_privatekey(crypto.PKey.from_cryptography_key(issued.key))
            for c in issued.chain:
                ctx.add_extra_chain_cert(crypto.X509.from_cryptography(c))
        return ctx

    def drain(client: SSL.Connection, conn: SSL.Connection) -> None:
        while True:
            try:
                client.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                return
            try:
                while client.recv(65536):
                    pass
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass

    def served(ctx: SSL.Context, judge: bool, body: bytes = b"ok\n", fresh: bool = False) -> Any:
        app = _App()
        conn = server.serverConnectionForTLS(app)
        app.connection = conn
        conn.set_accept_state()
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        _pump(client, conn)
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _pump(client, conn)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
        data = head + body
        for at in range(0, len(data), 16384):  # as Twisted's TLS writes: 16 KiB a send
            conn.send(data[at : at + 16384])
            drain(client, conn)
        _pump(client, conn)
        if fresh:
            assert fresh_bios(conn)
        return (app, conn, server.identity_for(app) if judge else None)

    bare_ctx = SSL.Context(SSL.TLS_METHOD)
    std_ctx = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_SERVER)
    with_cert, without = client_context(True), client_context(False)
    big = b"x" * (1 << 20)
    rows = [
        (f"bare pyOpenSSL Connection ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})",
         lambda: SSL.Connection(bare_ctx, None)),
        (f"bare stdlib ssl object ({stdlib_ssl.OPENSSL_VERSION})",
         lambda: std_ctx.wrap_bio(stdlib_ssl.MemoryBIO(), stdlib_ssl.MemoryBIO(),
                                  server_side=True)),
        ("ServerTLS, TLS 1.3 handshake + one exchange, no client certificate",
         lambda: served(without, False)),
        ("ServerTLS, the same with partner-app's chain (leaf + intermediate)",
         lambda: served(with_cert, False)),
        ("ServerTLS, the same, verdict asked for (identity_for)",
         lambda: served(with_cert, True)),
        ("ServerTLS, the same, then fresh memory BIOs (the front, after its first answer)",
         lambda: served(with_cert, True, fresh=True)),
        ("ServerTLS, the same after a 1 MiB response",
         lambda: served(with_cert, True, big)),
        ("ServerTLS, the same after a 1 MiB response, then fresh memory BIOs",
         lambda: served(with_cert, True, big, fresh=True)),
    ]
    for label, make in rows:
        print(f"{per_item(args.count, make):6.1f} KiB  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
