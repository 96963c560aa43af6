"""``[admin]``: where ``/healthz``, ``/readyz`` and ``/metrics`` listen."""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901


def read_admin(a: TableReader) -> AdminConfig:
    admin = AdminConfig(host=a.get("host", str, "127.0.0.1"), port=a.get("port", int, 9901))
    a.finish()
    return admin
