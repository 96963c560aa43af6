"""``[backend_tls]`` (and an API's own ``[apis.backend_tls]``): TLS to ``https://`` backends."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from twistedgw.config._base import TableReader, quoted


@dataclass(frozen=True)
class BackendTlsConfig:
    """How the gateway talks TLS to ``https://`` backends (NGINX's ``proxy_ssl_*``).

    Verification is always on: there is deliberately no switch to turn it off.
    """

    trusted_certificate: Path | None = None  # PEM CA(s); None = the system trust store
    certificate: Path | None = None  # the gateway's client certificate (PEM, + its chain)
    private_key: Path | None = None
    server_name: str | None = None  # verified and sent as SNI; None = the backend URL's host


HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _server_name(r: TableReader, key: str) -> str | None:
    """A DNS name (IDNA allowed) or an IP address, as a backend certificate could name it."""
    value = r.get(key, str, None)  # type: ignore[arg-type]
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if not HOSTNAME_RE.match(ascii_name):
        r.problem(key, f"must be a host name or an IP address, got {quoted(value)}")
        return None
    return value


def read_backend_tls(r: TableReader) -> BackendTlsConfig:
    cfg = BackendTlsConfig(
        trusted_certificate=r.path_value("trusted_certificate"),
        certificate=r.path_value("certificate"),
        private_key=r.path_value("private_key"),
        server_name=_server_name(r, "server_name"),
    )
    # Judge by the keys given, so a missing file is not also reported as a missing key.
    if ("certificate" in r.table) != ("private_key" in r.table):
        r.problem(
            "private_key" if "certificate" in r.table else "certificate",
            "certificate and private_key go together",
        )
    r.finish()
    return cfg
