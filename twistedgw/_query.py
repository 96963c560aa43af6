"""One query parameter, read and removed the same way by the pipeline and the router.

An API key sent in the query (an OpenAPI ``apiKey`` scheme ``in: query``) is read by
the ``api_key`` scheme and removed from the query the backend gets; both must agree on
which ``name=value`` pairs are that parameter, or a client could smuggle the key past
one of them (``api%5Fkey=...``). A pair is the parameter when its name, with ``+`` read
as a space and percent-escapes decoded (HTML form encoding, as the Microgateway's
``getQueryParamValue`` reads it), equals the name. Both are linear in the query, which
the header limit bounds.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


def _decoded(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" ")) if b"%" in raw or b"+" in raw else raw


def values(query: bytes | None, name: bytes) -> list[bytes]:
    """Every value of parameter ``name`` in ``query``, decoded, in order."""
    if not query:
        return []
    out = []
    for pair in query.split(b"&"):
        key, _sep, value = pair.partition(b"=")
        if _decoded(key) == name:
            out.append(_decoded(value))
    return out


def without(query: bytes | None, name: bytes) -> bytes | None:
    """``query`` without parameter ``name`` (every occurrence; the other pairs exactly as
    sent); None when nothing is left."""
    if not query:
        return query
    kept = [pair for pair in query.split(b"&") if _decoded(pair.partition(b"=")[0]) != name]
    return b"&".join(kept) or None
