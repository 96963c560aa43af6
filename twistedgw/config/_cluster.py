"""``[cluster]``: tier counters shared in Redis by every worker and instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twistedgw.config._base import TableReader, quoted

ON_FAILURE = ("open", "closed")


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: tier counters shared in Redis by every worker and instance.

    ``redis`` is kept as written (for messages); the parts below are parsed from it.
    The password, if the URL has one, is never logged (``describe``).
    """

    redis: str = field(repr=False)  # may hold a password
    scheme: str = "redis"  # "redis" | "rediss" | "unix"
    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    key_prefix: str = "twistedgw:"
    timeout: float = 0.05  # seconds for one round trip
    on_failure: str = "open"  # "open" | "closed"
    # rediss:// only: the CA to verify Redis with (None = system trust) and a client certificate.
    trusted_certificate: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None

    def describe(self) -> str:
        """Where Redis is, without credentials."""
        if self.scheme == "unix":
            return f"unix://{self.path} db {self.db}"
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}"


def read_cluster(r: TableReader) -> ClusterConfig | None:
    url = r.required("redis", str)
    prefix = r.get("key_prefix", str, "twistedgw:")
    timeout = r.positive("timeout", float, 0.05)
    on_failure = r.choice("on_failure", ON_FAILURE, "open")
    trusted = r.path_value("trusted_certificate")
    certificate = r.path_value("certificate")
    private_key = r.path_value("private_key")
    if ("certificate" in r.table) != ("private_key" in r.table):
        r.problem(
            "private_key" if "certificate" in r.table else "certificate",
            "certificate and private_key go together",
        )
    parts = _redis_url(r, url) if url is not None else None
    if parts is not None and parts["scheme"] != "rediss":
        for key in ("trusted_certificate", "certificate", "private_key"):
            if key in r.table:
                r.problem(key, "applies only to a rediss:// (TLS) redis URL")
    r.finish()
    if parts is None or url is None:
        return None
    return ClusterConfig(
        redis=url,
        key_prefix=prefix,
        timeout=timeout,
        on_failure=on_failure,
        trusted_certificate=trusted,
        certificate=certificate,
        private_key=private_key,
        **parts,
    )


def _redis_url(r: TableReader, url: str) -> dict[str, Any] | None:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` or
    ``unix:///path/to/redis.sock[?db=N]``; None (and a problem) if it is none of them."""
    usage = (
        "expected redis://host[:port][/db], rediss://host[:port][/db] or "
        f"unix:///path/to/redis.sock, got {quoted(_without_password(url))}"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        r.problem("redis", f"{usage} ({e})")
        return None
    scheme = parts.scheme.lower()
    out: dict[str, Any] = {"scheme": scheme}
    if parts.username:
        out["username"] = parts.username
    if parts.password:
        out["password"] = parts.password
    db_text = ""
    if scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            r.problem("redis", usage)
            return None
        out["path"] = parts.path
        for item in parts.query.split("&") if parts.query else ():
            name, _, value = item.partition("=")
            if name != "db":
                r.problem("redis", f"unknown parameter {quoted(name)} (only db=N)")
                return None
            db_text = value
    elif scheme in ("redis", "rediss"):
        if not parts.hostname or parts.query or parts.fragment:
            r.problem("redis", usage)
            return None
        out["host"] = parts.hostname
        out["port"] = port if port is not None else 6379
        db_text = parts.path.strip("/")
    else:
        r.problem("redis", usage)
        return None
    if db_text:
        if not db_text.isdigit() or len(db_text) > 5:
            r.problem("redis", f"the database must be a number, got {quoted(db_text)}")
            return None
        out["db"] = int(db_text)
    return out


def _without_password(url: str) -> str:
    """``url`` with the password of a ``user:password@`` part starred out, for messages."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"
