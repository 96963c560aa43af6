"""What every answer the gateway makes starts with: its Server and Date fields."""

from __future__ import annotations

import time

from twisted.web.http import datetimeToString

#: The Server header on every answer: no version (NGINX's ``server_tokens off``).
SERVER = b"twistedgw"


class _DateCache:
    """The HTTP Date value, formatted once per second, not per request."""

    second = -1
    value = b""


def http_date() -> bytes:
    now = int(time.time())
    if now != _DateCache.second:
        _DateCache.value = datetimeToString(now)
        _DateCache.second = now
    return _DateCache.value


def answer_headers() -> list[tuple[bytes, bytes]]:
    """A new answer's header list: ``Server`` and ``Date``, for the caller to extend."""
    return [(b"Server", SERVER), (b"Date", http_date())]
