"""``[[listeners]]``: where the gateway accepts connections (host/port or a Twisted endpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader


@dataclass(frozen=True)
class Listener:
    host: str = "0.0.0.0"
    port: int = 9095
    tls: bool = True
    endpoint: str | None = None  # a Twisted server endpoint string, instead of host/port
    http2: bool = False  # ALPN offers h2, then http/1.1 (TLS listeners only)

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        where = self.endpoint or f"{self.host}:{self.port}"
        return f"{scheme} {where}"


def read_listener(r: TableReader) -> Listener:
    endpoint = r.get("endpoint", str, None)  # type: ignore[arg-type]
    host = r.get("host", str, "0.0.0.0")
    port = r.get("port", int, 9095)
    if not 0 <= port <= 65535:
        r.problem("port", f"must be 0-65535, got {port}")
    if endpoint is not None and ("host" in r.table or "port" in r.table):
        r.problem("endpoint", "give either endpoint or host/port, not both")
    tls = r.get("tls", bool, True)
    http2 = r.get("http2", bool, False)
    if http2 and not tls:
        r.problem("http2", "HTTP/2 is offered through TLS (ALPN) only; set tls = true")
    r.finish()
    return Listener(host=host, port=port, tls=tls, endpoint=endpoint, http2=http2)
