"""``[response_cache]`` (the bounds, per worker) and ``[apis.response_cache]`` (WSO2's
``x-wso2-response-cache``): which APIs' GET answers the gateway keeps, and how much.

The cache itself is ``http/_cache.py``; this module reads and checks the settings once
per config load. A definition's ``x-wso2-response-cache`` (``enabled``,
``cacheTimeoutInSeconds``, as API Manager and the Microgateway 3.x write it) becomes the
same ``[apis.response_cache]`` table (``from_wso2``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twistedgw.config._base import TableReader, quoted

#: API Manager's default cache timeout (its publisher's "cacheTimeout": 300).
DEFAULT_TIMEOUT = 300


@dataclass(frozen=True)
class ResponseCacheConfig:
    """``[response_cache]``: each worker's bounds, whatever the number of APIs."""

    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_entry_bytes: int = 1024 * 1024  # a larger answer is streamed, never kept


@dataclass(frozen=True)
class ApiCache:
    """``[apis.response_cache]``: the longest an answer of the API is served from the cache
    (a backend's ``max-age``/``s-maxage`` is capped by it; without either, it applies)."""

    timeout_seconds: int = DEFAULT_TIMEOUT


def read_response_cache(r: TableReader) -> ResponseCacheConfig:
    d = ResponseCacheConfig()
    out = ResponseCacheConfig(
        max_entries=r.positive("max_entries", int, d.max_entries),
        max_bytes=r.positive("max_bytes", int, d.max_bytes),
        max_entry_bytes=r.positive("max_entry_bytes", int, d.max_entry_bytes),
    )
    r.finish()
    if out.max_entry_bytes > out.max_bytes:
        r.problem("max_entry_bytes", f"is larger than max_bytes ({out.max_bytes}): no answer "
                                     "that large could be kept")
    return out


def read_api_cache(r: TableReader) -> ApiCache | None:
    """An ``[apis.response_cache]`` table; None when ``enabled = false`` (which turns off a
    definition's ``x-wso2-response-cache``) or when it is broken (reported)."""
    enabled = r.get("enabled", bool, True)
    timeout = r.positive("timeout_seconds", int, DEFAULT_TIMEOUT)
    r.finish()
    return ApiCache(timeout) if enabled else None


Report = Callable[[str, str], None]


def from_wso2(
    value: Any, where: str, note: Report, warn: Report, pointer: Callable[..., str]
) -> dict[str, Any] | None:
    """The ``[apis.response_cache]`` table ``x-wso2-response-cache`` (at ``where``) stands
    for, or None when it says ``enabled: false`` or is broken (``note``-d)."""
    if not isinstance(value, Mapping):
        note(where, "expected a mapping with enabled (and cacheTimeoutInSeconds)")
        return None
    enabled = value.get("enabled")
    if not isinstance(enabled, bool):
        # The Microgateway toolkit fails on a missing one too.
        note(pointer(where, "enabled"), f"expected true or false, got {quoted(enabled)}")
        return None
    for key in value:
        if key not in ("enabled", "cacheTimeoutInSeconds"):
            warn(pointer(where, key), f"unknown x-wso2-response-cache key {quoted(key)} is ignored")
    if not enabled:
        return None
    timeout = value.get("cacheTimeoutInSeconds", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        note(pointer(where, "cacheTimeoutInSeconds"), f"expected seconds (an integer > 0), got "
                                                      f"{quoted(timeout)}")
        return None
    return {"timeout_seconds": timeout}
