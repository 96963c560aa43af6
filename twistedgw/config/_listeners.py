"""``[[listeners]]``: where the gateway accepts connections (host/port or a Twisted endpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

from twistedgw import _unixsockets as unixsockets
from twistedgw.config._base import ProblemList, TableReader, quoted


@dataclass(frozen=True)
class Listener:
    host: str = "0.0.0.0"
    port: int = 9095
    tls: bool = True
    endpoint: str | None = None  # a Twisted server endpoint string, instead of host/port
    http2: bool = False  # ALPN offers h2, then http/1.1 (TLS listeners only)
    # Unix-socket listeners: the group that may connect (a socket twistedgw creates gets
    # it, with mode 0660; an inherited one must have it). Name or number, as written.
    group: str | None = None
    where: str = field(default="", compare=False)  # its dotted key, e.g. "listeners[0]"

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        where = self.endpoint or f"{self.host}:{self.port}"
        return f"{scheme} {where}"

    @property
    def unix(self) -> unixsockets.UnixEndpoint | None:
        """The ``unix:`` endpoint twistedgw creates, parsed (None for any other listener)."""
        if self.endpoint is None or not self.endpoint.startswith("unix:"):
            return None
        return unixsockets.parse(self.endpoint)

    @property
    def unix_socket(self) -> bool:
        """Whether it listens on a Unix socket (created here, or systemd's)."""
        endpoint = self.endpoint or ""
        return endpoint.startswith("unix:") or (
            endpoint.startswith("systemd:") and ":domain=UNIX" in endpoint + ":"
        )


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
    group = r.get("group", str, None)  # type: ignore[arg-type]
    listener = Listener(
        host=host, port=port, tls=tls, endpoint=endpoint, http2=http2, group=group, where=r.path
    )
    if endpoint is not None and endpoint.startswith("unix:"):
        try:
            unixsockets.parse(endpoint)
        except ValueError as e:
            r.problem("endpoint", str(e))
    if group is not None:
        if not listener.unix_socket:
            r.problem(
                "group",
                'applies to Unix-socket listeners only (endpoint = "unix:PATH", or '
                '"systemd:domain=UNIX:...")',
            )
        else:
            try:
                unixsockets.group_id(group)
            except KeyError:
                r.problem("group", f"no such group: {quoted(group)}")
    r.finish()
    return listener


def unix_listener_trust(problems: ProblemList, listeners: tuple[Listener, ...]) -> None:
    """``trusted_proxies`` trusts Unix-socket peers: whoever can connect to a Unix-socket
    listener is believed about the caller's certificate. So a socket twistedgw creates
    names the group that may connect (it gets mode 0660), and none is abstract (no file,
    no permissions: any local process could connect)."""
    for i, listener in enumerate(listeners):
        where = listener.where or f"listeners[{i}]"
        try:
            unix = listener.unix
        except ValueError:
            continue  # reported with the endpoint
        if unix is None:
            continue
        if unix.abstract:
            problems.add(
                f"{where}.endpoint",
                "an abstract Unix socket has no file permissions, so any local user could "
                'connect and be trusted (mutual_ssl.trusted_proxies has "unix"); give a path '
                'such as "unix:/run/twistedgw/authz.sock"',
            )
        elif listener.group is None:
            problems.add(
                f"{where}.group",
                'is required on Unix-socket listeners when mutual_ssl.trusted_proxies has "unix": '
                "name the group that may connect (NGINX's workers', e.g. \"www-data\"); the "
                "socket gets mode 0660",
            )
