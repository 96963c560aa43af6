"""HTTP facts shared by the front, the pipeline and the backend client."""

from __future__ import annotations

#: Headers that describe one connection, not the message (RFC 9110 7.6.1), plus
#: the proxy-credential pair, which is meant for the gateway, not the backend.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
