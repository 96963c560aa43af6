"""The admin listener: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP.

A separate port (``[admin]``), so health checks and Prometheus never pass through
the gateway's own authentication and never show up in its access log or request
metrics. Bind it to loopback or a management network: it is unauthenticated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twistedgw.app._observe import Metrics
from twistedgw.config import AdminConfig
from twistedgw.http import SERVER

log = Logger()

# Returns None when ready, else why not (shown in the 503 body).
Readiness = Callable[[], str | None]
# Lines shown after "ready" (or the reason): things an operator should know, e.g. that
# the [cluster] store is unreachable, which does not make the gateway unready.
Detail = Callable[[], list[str]]


class AdminResource(Resource):
    isLeaf = True

    def __init__(
        self, metrics: Metrics, readiness: Readiness, detail: Detail | None = None
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._readiness = readiness
        self._detail = detail

    def render(self, request: Request) -> bytes:
        request.setHeader(b"server", SERVER)  # no TwistedWeb version, as on the gateway
        body: bytes = super().render(request)
        return body

    def render_GET(self, request: Request) -> bytes:
        path = request.path.rstrip(b"/")
        if path == b"/healthz":
            return _text(request, 200, "ok\n")
        if path == b"/readyz":
            why = self._readiness()
            extra = "".join(line + "\n" for line in self._detail()) if self._detail else ""
            if why is None:
                return _text(request, 200, "ready\n" + extra)
            return _text(request, 503, why + "\n" + extra)
        if path == b"/metrics":
            body: bytes = generate_latest(self._metrics.registry)
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.setHeader(b"content-length", str(len(body)).encode())
            return body
        return _text(request, 404, "not found: try /healthz, /readyz or /metrics\n")

    def render_HEAD(self, request: Request) -> bytes:
        self.render_GET(request)
        return b""


def _text(request: Request, status: int, text: str) -> bytes:
    body = text.encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", str(len(body)).encode())
    request.setHeader(b"cache-control", b"no-store")
    return body


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


class AdminService(service.Service):
    """Listens on ``[admin]`` host/port; started and stopped with its owner."""

    name = "twistedgw-admin"

    def __init__(
        self,
        reactor: Any,
        settings: AdminConfig,
        metrics: Metrics,
        readiness: Readiness,
        detail: Detail | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.site = _QuietSite(AdminResource(metrics, readiness, detail))
        self.site.noisy = False
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        host = self.settings.host
        factory = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
        endpoint = factory(self.reactor, self.settings.port, interface=host)
        self.listening = endpoint.listen(self.site)
        self.listening.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def describe(self) -> str:
        address = self.port.getHost() if self.port is not None else None
        host = getattr(address, "host", self.settings.host)
        number = getattr(address, "port", self.settings.port)
        return f"http://{host}:{number}/metrics"

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[Any] = defer.maybeDeferred(port.stopListening)
        return d.addCallback(lambda _: None)
