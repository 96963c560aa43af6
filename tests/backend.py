"""A small real echo backend for tests: ``python tests/backend.py --port 0 --port-file F``.

HTTP/1.1 with keep-alive on 127.0.0.1 (twisted.web), plain or, with
``--tls-cert``/``--tls-key``, HTTPS; ``--tls-client-ca CA`` then requires a
client certificate issued by that CA (the handshake fails without one). The
actual port is written to F (atomically) once listening. Endpoints:

* any path (default) -> 200 JSON ``{"method", "path" (raw, with query),
  "headers": [[name, value], ...] in wire order with repeats, "body_sha256",
  "body_len"}``; the body is hashed as it arrives, never stored. Over HTTPS
  also ``"tls_client_subject"``: the RFC 4514 subject of the client
  certificate, or null.
* ``/status/NNN[?phrase=P]`` -> that status (JSON echo body unless 204/304/HEAD).
* ``/cookies`` -> two Set-Cookie headers.
* ``/headers?set=Name:Value&set=...`` -> 200 echo with those response headers
  added in order (repeats kept), e.g. to send hop-by-hop response headers.
* ``/bytes/N`` -> N bytes of `pattern` with Content-Length, streamed under
  back-pressure (``?chunked`` to omit Content-Length).
* ``/slow/SECONDS`` -> the echo after a delay.
* ``/stall/N`` -> headers promising 2N bytes, N bytes, then silence.
* ``/reset`` -> headers promising 100000 bytes, 1000 bytes, then a TCP abort
  (``?chunked`` to use chunked framing instead of Content-Length).
* ``/connections`` -> JSON ``{"accepted": N, "open": M}``: TCP connections
  accepted so far and open now (keep-alive reuse is observable).
* ``/requests`` -> JSON ``{"requests": N}``: requests received before this one
  (whether anything was forwarded is observable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from io import BytesIO
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.internet.interfaces import IAddress, IPullProducer
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

reactor: Any = _reactor

_PATTERN = bytes(range(256)) * 256  # 64 KiB, period 256


def pattern(offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the endless 0..255 repeating pattern."""
    out = bytearray()
    while length > 0:
        start = offset % 256
        piece = _PATTERN[start : start + min(length, len(_PATTERN) - 256)]
        out += piece
        offset += len(piece)
        length -= len(piece)
    return bytes(out)


class EchoRequest(server.Request):
    """Hashes the body as it streams in and records the raw header lines in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_headers: list[tuple[str, str]] = []
        self.body_hash = hashlib.sha256()
        self.body_len = 0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # keep nothing: the body is only hashed

    def handleContentChunk(self, data: bytes) -> None:
        self.body_hash.update(data)
        self.body_len += len(data)


class EchoChannel(http.HTTPChannel):
    def headerReceived(self, line: bytes) -> bool:
        ok: bool = super().headerReceived(line)
        if ok:
            name, _, value = line.partition(b":")
            req = self.requests[-1]
            req.raw_headers.append(
                (name.strip().decode("latin-1"), value.strip(b" \t").decode("latin-1"))
            )
        return ok


class CountingSite(server.Site):
    """Counts accepted and open TCP connections."""

    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.accepted = 0
        self.open = 0
        self.requests = 0
        self.requestFactory = EchoRequest
        self.protocol = EchoChannel

    def buildProtocol(self, addr: IAddress) -> Any:
        proto = super().buildProtocol(addr)
        self.accepted += 1
        self.open += 1
        site = self
        original = proto.connectionLost

        def lost(reason: Failure) -> None:
            site.open -= 1
            original(reason)

        proto.connectionLost = lost
        return proto


@implementer(IPullProducer)
class PatternProducer:
    """Writes `total` pattern bytes, one chunk each time the consumer asks."""

    CHUNK = 64 * 1024

    def __init__(self, request: EchoRequest, total: int) -> None:
        self.request = request
        self.total = total
        self.offset = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        n = min(self.CHUNK, self.total - self.offset)
        if n > 0:
            self.request.write(pattern(self.offset, n))
            self.offset += n
        if self.offset >= self.total:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


def _client_subject(request: EchoRequest) -> str | None:
    peer = request.channel.transport.getPeerCertificate()
    return None if peer is None else str(peer.to_cryptography().subject.rfc4514_string())


def _echo(request: EchoRequest) -> bytes:
    echo: dict[str, Any] = {
        "method": request.method.decode("latin-1"),
        "path": request.uri.decode("latin-1"),
        "headers": [[n, v] for n, v in request.raw_headers],
        "body_sha256": request.body_hash.hexdigest(),
        "body_len": request.body_len,
    }
    if request.isSecure():
        echo["tls_client_subject"] = _client_subject(request)
    return json.dumps(echo).encode()


def _send_json(
    request: EchoRequest, body: bytes, code: int = 200, phrase: bytes | None = None
) -> None:
    request.setResponseCode(code, phrase)
    request.setHeader(b"Content-Type", b"application/json")
    if code not in (204, 304):
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
    request.finish()


def _query_flag(request: EchoRequest, name: bytes) -> bool:
    """Whether the query has `name` or `name=...` (twisted.web drops bare names)."""
    query = request.uri.partition(b"?")[2]
    return any(item.partition(b"=")[0] == name for item in query.split(b"&"))


class Backend(resource.Resource):
    isLeaf = True

    def __init__(self, site_ref: list[CountingSite]) -> None:
        super().__init__()
        self._site_ref = site_ref

    def render(self, request: server.Request) -> bytes | int:
        assert isinstance(request, EchoRequest)
        site = self._site_ref[0]
        site.requests += 1
        parts = request.path.decode("latin-1").strip("/").split("/")
        head = parts[0]
        try:
            if head == "status" and len(parts) == 2:
                phrase = (request.args or {}).get(b"phrase", [None])[0]
                _send_json(request, _echo(request), int(parts[1]), phrase)
            elif head == "cookies":
                request.responseHeaders.addRawHeader(b"Set-Cookie", b"a=1; Path=/")
                request.responseHeaders.addRawHeader(b"Set-Cookie", b"b=2; Path=/; HttpOnly")
                _send_json(request, _echo(request))
            elif head == "headers":
                for item in (request.args or {}).get(b"set", []):
                    name, _, value = item.partition(b":")
                    request.responseHeaders.addRawHeader(name.strip(), value.strip())
                _send_json(request, _echo(request))
            elif head == "bytes" and len(parts) == 2:
                self._bytes(request, int(parts[1]))
            elif head == "slow" and len(parts) == 2:
                self._slow(request, float(parts[1]))
            elif head == "stall" and len(parts) == 2:
                n = int(parts[1])
                request.setHeader(b"Content-Length", b"%d" % (2 * n))
                request.write(pattern(0, n))
            elif head == "reset":
                self._reset(request)
            elif head == "connections":
                counts = {"accepted": site.accepted, "open": site.open}
                _send_json(request, json.dumps(counts).encode())
            elif head == "requests":
                _send_json(request, json.dumps({"requests": site.requests - 1}).encode())
            else:
                _send_json(request, _echo(request))
        except ValueError:
            _send_json(request, b'{"error": "bad endpoint argument"}', 400)
        return server.NOT_DONE_YET

    def _bytes(self, request: EchoRequest, n: int) -> None:
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if not _query_flag(request, b"chunked"):
            request.setHeader(b"Content-Length", b"%d" % n)
        if request.method == b"HEAD" or n == 0:
            request.write(b"")
            request.finish()
            return
        producer = PatternProducer(request, n)
        request.notifyFinish().addErrback(lambda _: producer.stopProducing())
        request.registerProducer(producer, False)

    def _slow(self, request: EchoRequest, seconds: float) -> None:
        call = reactor.callLater(seconds, lambda: _send_json(request, _echo(request)))

        def gone(_: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(gone)

    def _reset(self, request: EchoRequest) -> None:
        if not _query_flag(request, b"chunked"):
            request.setHeader(b"Content-Length", b"100000")
        request.write(pattern(0, 1000))
        transport = request.channel.transport
        # Give the kernel the headers and partial body first, then abort.
        reactor.callLater(0.2, transport.abortConnection)
        request.notifyFinish().addErrback(lambda _: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS instead of HTTP")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--tls-client-ca", help="PEM CA: require a client certificate it issued (with --tls-cert)"
    )
    args = parser.parse_args(argv)

    site_ref: list[CountingSite] = []
    site = CountingSite(Backend(site_ref))
    site_ref.append(site)
    site.noisy = False
    if args.tls_cert:
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            identity = ssl.PrivateCertificate.loadPEM(c.read() + k.read())
        if args.tls_client_ca:
            with open(args.tls_client_ca, "rb") as f:
                options = identity.options(ssl.Certificate.loadPEM(f.read()))
        else:
            options = identity.options()
        port = reactor.listenSSL(args.port, site, options, interface=args.host)
    else:
        port = reactor.listenTCP(args.port, site, interface=args.host)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port.getHost().port))
    os.replace(tmp, args.port_file)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
