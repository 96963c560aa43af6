"""The floor of twistedgw's stack: a minimal Twisted + pyOpenSSL mutual-TLS HTTP/1.1 proxy.

``python3 bench/minimal_proxy.py --port P --backend 127.0.0.1:B --cert C --key K
--truststore DIR [--reactor-changes]``

Issue #27 measured such a proxy (no routing, policy, metrics, timers or limits) to
say what Twisted and pyOpenSSL allow; bench/run.py's scenario ``minimal`` runs this one
in the same run as twistedgw and NGINX, so the docs can say how close the gateway is.

What it does, per client connection: TLS 1.2+ with the server certificate, a client
certificate required and verified against every certificate in the truststore
directory's PEM files (``VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT``; the verify
callback returns OpenSSL's own verdict); one plain TCP connection to the backend, kept
for the client connection's life; each request head (up to CRLFCRLF, GET without a body)
sent on to the backend with ``X-Forwarded-For`` added, its target unchanged; the
backend's answer read by its Content-Length and relayed, head and body, in one write.
Anything else (another method, a body, HTTP/1.0, a head over 64 KiB, a backend answer
without Content-Length) is answered 400 (502 for the backend's) and the connection
closed.

What it does not do (what a gateway does, so the comparison stays honest): no routing
(the target goes to the backend as it came), no header grammar checks beyond finding the
head's end, no Host handling, no caller identity or access decision per API, no
X-Forwarded-Proto/-Host or client-certificate headers, no metrics, logs, timeouts,
connection limits, chunked bodies, or a backend connection pool.

Its TLS is Twisted's ``TLSMemoryBIOProtocol`` (what twistedgw's listeners use), not the
``BufferingTLSTransport`` Twisted's TLS endpoint would choose: every answer here is one
write already, so that transport's zero-delay timer per write would only add cost.

``--reactor-changes`` applies what ``twistedgw run`` applies to the reactor and heap,
from twistedgw itself (neither needs a config): ``twistedgw._reactor.adopt`` (the
epoll reactor without the legacy log context per socket event, send-first writes with
back-pressure) and ``twistedgw.app._heap.settle`` once listening (a full collection,
then ``gc.freeze()``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

MAX_HEAD = 64 * 1024
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
CONTENT_LENGTH = b"\r\ncontent-length:"


def pem_certificates(directory: Path) -> list[crypto.X509]:
    """Every certificate in every ``*.pem`` file of ``directory``."""
    marker = b"-----END CERTIFICATE-----"
    out = []
    for path in sorted(directory.glob("*.pem")):
        for block in path.read_bytes().split(marker)[:-1]:
            out.append(crypto.load_certificate(crypto.FILETYPE_PEM, block + marker))
    return out


def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's own verdict (the handshake fails on a chain that does not verify)."""
    return bool(ok)


def server_context(cert: Path, key: Path, truststore: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # as twistedgw and NGINX
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for ca in pem_certificates(truststore):
        store.add_cert(ca)
        ctx.add_client_ca(ca)  # named in the CertificateRequest, as twistedgw and NGINX
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """One pyOpenSSL context, a connection from it per client."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.ctx, None)


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS wrapper, each write encrypted at once (see the module's docstring)."""

    protocol = TLSMemoryBIOProtocol


class Backend(Protocol):
    """The backend side of one client connection: reads each answer by Content-Length."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.buf = b""

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end].lower()
        at = head.find(CONTENT_LENGTH)
        stop = head.find(b"\r\n", at + 1)
        try:
            if at < 0:
                raise ValueError("no Content-Length")
            size = end + 4 + int(head[at + len(CONTENT_LENGTH):stop if stop > 0 else end])
        except ValueError:
            self.buf = b""
            self.front.failed(BAD_GATEWAY)
            return
        if len(buf) < size:
            self.buf = buf
            return
        self.buf = buf[size:]
        self.front.answer(buf[:size])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.front.backend_gone()


class Front(Protocol):
    """The client side: one request at a time; pipelined ones wait in ``buf``."""

    def __init__(self, backend: TCP4ClientEndpoint) -> None:
        self.backend_endpoint = backend
        self.buf = b""
        self.backend: Backend | None = None
        self.waiting: bytes | None = None  # a request made before the backend was up
        self.busy = False
        self.closing = False
        self.xff = b""

    def connectionMade(self) -> None:
        tcp: Any = self.transport.transport  # type: ignore[union-attr]  # under the TLS
        tcp.setTcpNoDelay(True)
        self.xff = b"X-Forwarded-For: " + tcp.getPeer().host.encode() + b"\r\n\r\n"
        connectProtocol(self.backend_endpoint, Backend(self)).addCallbacks(
            self.backend_up, lambda _: self.failed(BAD_GATEWAY))

    def backend_up(self, backend: Backend) -> None:
        self.backend = backend
        if self.closing:
            backend.transport.loseConnection()  # type: ignore[union-attr]
        elif self.waiting is not None:
            backend.transport.write(self.waiting)  # type: ignore[union-attr]
            self.waiting = None

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.next_request()
        elif len(self.buf) > MAX_HEAD:  # pipelined beyond any sane head
            self.failed(BAD_REQUEST)

    def next_request(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.failed(BAD_REQUEST)
            return
        head = buf[:end]
        self.buf = buf[end + 4:]
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        lower = head.lower()
        if (not line.startswith(b"GET ") or not line.endswith(b" HTTP/1.1")
                or CONTENT_LENGTH in lower or b"\r\ntransfer-encoding:" in lower):
            self.failed(BAD_REQUEST)
            return
        self.busy = True
        request = head + b"\r\n" + self.xff
        if self.backend is None:
            self.waiting = request
        else:
            self.backend.transport.write(request)  # type: ignore[union-attr]

    def answer(self, response: bytes) -> None:
        if self.closing:
            return
        self.transport.write(response)  # type: ignore[union-attr]
        self.busy = False
        if self.buf:
            self.next_request()

    def failed(self, response: bytes) -> None:
        if not self.closing:
            self.closing = True
            self.transport.write(response)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def backend_gone(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        if self.backend is not None:
            self.backend.transport.loseConnection()  # type: ignore[union-attr]


class FrontFactory(Factory):
    def __init__(self, backend: TCP4ClientEndpoint) -> None:
        self.backend = backend

    def buildProtocol(self, addr: Any) -> Front:
        front = Front(self.backend)
        front.factory = self
        return front


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", required=True, help="HOST:PORT of the plain HTTP backend")
    p.add_argument("--cert", type=Path, required=True, help="server certificate (PEM, chain)")
    p.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    p.add_argument("--truststore", type=Path, required=True,
                   help="a directory of PEM files: the client certificates' CAs")
    p.add_argument("--reactor-changes", action="store_true",
                   help="twistedgw's GatewayReactor and frozen heap (what twistedgw run uses)")
    args = p.parse_args(argv)
    backend_host, _, backend_port = args.backend.rpartition(":")

    from twisted.internet import reactor  # installs Twisted's default (epoll on Linux)

    if args.reactor_changes:
        from twistedgw import _reactor

        if not _reactor.adopt(reactor):
            print("--reactor-changes: the reactor is not Twisted's epoll reactor",
                  file=sys.stderr)
            return 2
    backend = TCP4ClientEndpoint(reactor, backend_host, int(backend_port))
    ctx = server_context(args.cert, args.key, args.truststore)
    tls = UnbufferedTLSFactory(ServerTLS(ctx), False, FrontFactory(backend))
    TCP4ServerEndpoint(reactor, args.port, backlog=4096, interface=args.host).listen(tls)
    if args.reactor_changes:
        from twistedgw.app import _heap

        reactor.callWhenRunning(_heap.settle)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # twistedgw
    sys.exit(main())
