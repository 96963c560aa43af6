"""``[access_log]``: where the access log is written."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccessLogConfig:
    path: str = "-"  # "-" = stdout
