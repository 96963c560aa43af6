"""The in-process resource of bench/run.py's ``inprocess`` scenario: the same answer as
the benchmark's NGINX backend gives ``/small`` (``ok`` and a newline, text/plain), from a
twisted.web resource inside the gateway (``backend = "resource:inprocess_app:root"``)."""

from __future__ import annotations

from typing import Any

from twisted.web import resource


class Small(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return b"ok\n"


root = Small()
