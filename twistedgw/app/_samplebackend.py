"""A tiny JSON echo backend for the demo: shows what the gateway forwarded."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class Echo(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        body = request.content.read() if request.content is not None else b""
        answer = {
            "backend": "twistedgw sample backend",
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "headers": {
                k.decode("latin-1"): [v.decode("latin-1") for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body_bytes": len(body),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer, indent=2).encode() + b"\n"


def listen(reactor: Any, port: int, interface: str = "127.0.0.1") -> Any:
    return reactor.listenTCP(port, Site(Echo()), interface=interface)
