"""A minimal gateway around `Forwarder`, run as a process by tests/test_forward.py.

``python tests/forward_harness.py --backend URL --port-file F [options]`` serves
plain HTTP on 127.0.0.1 and forwards every request to URL + the raw request URI.
``/__harness/results`` answers the ForwardResults seen so far (JSON list) and
``/__harness/rss`` the process's peak RSS, instead of forwarding.
"""

from __future__ import annotations

import argparse
import json
import os
import resource as rlimit
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import resource, server
from twisted.web.client import BrowserLikePolicyForHTTPS

from twistedgw.http import web_exchange
from twistedgw.upstream import Forwarder, ForwardResult, ForwardSettings

reactor: Any = _reactor


class ForwardingResource(resource.Resource):
    isLeaf = True

    def __init__(
        self,
        forwarder: Forwarder,
        backend: bytes,
        add_headers: list[tuple[bytes, bytes]],
        remove_headers: list[bytes],
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.backend = backend
        self.add_headers = add_headers
        self.remove_headers = remove_headers
        self.results: list[dict[str, Any]] = []

    def render(self, request: server.Request) -> bytes | int:
        if request.path == b"/__harness/results":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(self.results).encode()
        if request.path == b"/__harness/rss":
            request.setHeader(b"Content-Type", b"application/json")
            peak = rlimit.getrusage(rlimit.RUSAGE_SELF).ru_maxrss
            return json.dumps({"maxrss_kb": peak}).encode()
        path = request.uri.decode("latin-1")

        def done(result: ForwardResult) -> None:
            self.results.append(
                {
                    "path": path,
                    "status": result.status,
                    "bytes_sent": result.bytes_sent,
                    "error_kind": result.error_kind,
                }
            )

        exchange = web_exchange(request)  # twisted.web read the body already

        def forward(body: Any, size: int) -> None:
            self.forwarder.forward(
                exchange,
                self.backend + request.uri,
                body=body,
                body_size=size,
                add_headers=self.add_headers,
                remove_headers=self.remove_headers,
                on_done=done,
            )

        if exchange.body is None:
            forward(None, 0)
        else:
            exchange.body.read(forward)
        return server.NOT_DONE_YET


def _header(text: str) -> tuple[bytes, bytes]:
    name, _, value = text.partition(":")
    return name.strip().encode(), value.strip().encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help="e.g. http://127.0.0.1:8080")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--backend-timeout", type=float, default=60.0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--add-header", action="append", default=[], metavar="NAME:VALUE")
    parser.add_argument("--remove-header", action="append", default=[], metavar="NAME")
    parser.add_argument("--backend-ca", help="PEM CA to trust for https:// backends")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    settings = ForwardSettings(
        connect_timeout=args.connect_timeout, backend_timeout=args.backend_timeout
    )
    tls_policy = None
    if args.backend_ca:
        with open(args.backend_ca, "rb") as f:
            tls_policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))
    forwarder = Forwarder(reactor, settings, tls_policy=tls_policy)
    root = ForwardingResource(
        forwarder,
        args.backend.rstrip("/").encode(),
        [_header(h) for h in args.add_header],
        [h.lower().encode() for h in args.remove_header],
    )
    site = server.Site(root)
    site.noisy = False
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port.getHost().port))
    os.replace(tmp, args.port_file)
    reactor.addSystemEventTrigger("before", "shutdown", forwarder.close)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
