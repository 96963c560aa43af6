"""``[access_log]``: where the access log is written."""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader, quoted, resolve


@dataclass(frozen=True)
class AccessLogConfig:
    path: str = "-"  # "-" = stdout


def read_access_log(a: TableReader) -> AccessLogConfig:
    """``[access_log]``; a path relative to the config file's folder, or "-" for stdout."""
    log_path = a.get("path", str, "-")
    if log_path != "-":
        resolved = resolve(a.file, log_path)
        if resolved is None:
            a.problem("path", f"not a usable path: {quoted(log_path)}")
        log_path = str(resolved)
    access_log = AccessLogConfig(path=log_path)
    a.finish()
    return access_log
