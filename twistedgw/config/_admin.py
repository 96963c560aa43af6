"""``[admin]``: where ``/healthz``, ``/readyz`` and ``/metrics`` listen."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901
