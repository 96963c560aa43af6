"""``[nginx]``: what ``twistedgw nginx-config`` writes into the NGINX side of the fronted mode."""

from __future__ import annotations

import re
from dataclasses import dataclass

from twistedgw.config._base import TableReader, quoted


@dataclass(frozen=True)
class NginxConfig:
    """``[nginx]``: read only by ``twistedgw nginx-config`` (the NGINX side of the mode
    where NGINX carries the traffic and asks twistedgw for verdicts)."""

    listen: str = "443"  # NGINX's TLS `listen` address ("ssl" is added)
    server_name: str = "_"
    authz: str = "unix:/run/twistedgw/authz.sock"  # how NGINX reaches twistedgw
    cache_path: str = "/var/cache/nginx/twistedgw"  # proxy_cache_path for verdicts
    http2: bool = False  # HTTP/2 to clients (ALPN h2), rendered for the NGINX version found
    binary: str = "nginx"  # the NGINX nginx-config probes and runs (a name on PATH, or a path)


_NGINX_NAME_RE = re.compile(r"^[A-Za-z0-9_*.-]+$")
_NGINX_LISTEN_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]:|[A-Za-z0-9.-]+:)?[0-9]{1,5}$")
_NGINX_AUTHZ_RE = re.compile(
    r"^(?:unix:/[^\s;{}'\"$]+|[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5})$"
)


def read_nginx(r: TableReader) -> NginxConfig:
    """``[nginx]``; every value lands in an NGINX config, so each is checked against what
    NGINX accepts there (and can carry no ``;``, quote or newline into it)."""
    d = NginxConfig()
    listen = r.get("listen", (str, int), d.listen)
    listen = str(listen)
    m = _NGINX_LISTEN_RE.match(listen)
    if not m or not 0 < int(listen.rsplit(":", 1)[-1]) <= 65535:
        r.problem(
            "listen",
            f"must be a port or address:port such as '127.0.0.1:8443', got {quoted(listen)}",
        )
        listen = d.listen
    server_name = r.get("server_name", str, d.server_name)
    if not all(_NGINX_NAME_RE.match(n) for n in server_name.split()) or not server_name.split():
        r.problem(
            "server_name",
            f"must be one or more host names separated by spaces, got {quoted(server_name)}",
        )
        server_name = d.server_name
    authz = r.get("authz", str, d.authz)
    if not _NGINX_AUTHZ_RE.match(authz):
        r.problem("authz", f"must be 'unix:/path/to.sock' or 'host:port', got {quoted(authz)}")
        authz = d.authz
    cache_path = r.get("cache_path", str, d.cache_path)
    if not cache_path.startswith("/") or any(c in cache_path for c in " \t\n;{}'\"$"):
        r.problem(
            "cache_path",
            f"must be an absolute directory path without spaces, got {quoted(cache_path)}",
        )
        cache_path = d.cache_path
    http2 = r.get("http2", bool, d.http2)
    binary = r.get("binary", str, d.binary)
    if not binary or any(c in binary for c in "\n\0") or (
        "/" in binary and not binary.startswith("/")
    ):
        r.problem(
            "binary", f"must be a program name on PATH or an absolute path, got {binary!r}"
        )
        binary = d.binary
    r.finish()
    return NginxConfig(listen=listen, server_name=server_name, authz=authz,
                       cache_path=cache_path, http2=http2, binary=binary)
