"""``Fields``: the request and response headers of the byte-level front, lean.

twisted.web's ``Headers`` re-encodes and re-validates every name and sanitises every
value on each call; on the keep-alive path that was ~4% of the gateway's CPU, most of
it for names and values the front had already checked. ``Fields`` keeps exactly the
behaviour the gateway relies on (names stored and given back in Twisted's canonical
casing, so forwarded and answered headers are spelled as before; values with CR/LF
folded to a space; ``str`` names and values encoded as Twisted does) in the subset of
``Headers``' methods the resource, the forwarder, the drain and the pipeline's
``HeaderView`` call, plus ``add_checked`` for the front's parser, which skips what it
has already verified.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import AnyStr, TypeVar, overload

_T = TypeVar("_T")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Twisted's canonical spellings that plain Header-Case gets wrong.
_CASE = {
    b"Content-Md5": b"Content-MD5",
    b"Dnt": b"DNT",
    b"Etag": b"ETag",
    b"P3p": b"P3P",
    b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}
_CANONICAL: dict[bytes | str, bytes] = {}
#: Bound on the cache of spellings seen (a client can send endlessly many names).
MAX_CACHED = 10_000


def canonical(name: bytes | str) -> bytes:
    """``name`` as Twisted's ``Headers`` stores and writes it (Header-Case, its
    exceptions); ValueError when it is not a token."""
    found = _CANONICAL.get(name)
    if found is not None:
        return found
    raw = name.encode("iso-8859-1") if isinstance(name, str) else name
    if not _TOKEN.match(raw):
        raise ValueError(f"invalid header name {raw!r}")
    result = b"-".join([word.capitalize() for word in raw.split(b"-")])
    result = _CASE.get(result, result)
    if len(_CANONICAL) < MAX_CACHED:
        _CANONICAL[name] = result
    return result


def _value(value: bytes | str) -> bytes:
    raw = value.encode("utf8") if isinstance(value, str) else value
    return b" ".join(raw.splitlines())  # as Twisted's Headers: no CR/LF reaches the wire


class Fields:
    """Header names to lists of values, in the order first added. See the module doc."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: dict[bytes, list[bytes]] = {}

    def __repr__(self) -> str:
        return f"Fields({self._raw!r})"

    def add_checked(self, name: bytes, value: bytes) -> None:
        """Add a value the caller verified (``name`` a token, no CR or LF in ``value``)."""
        key = _CANONICAL.get(name)
        if key is None:
            key = canonical(name)
        values = self._raw.get(key)
        if values is None:
            self._raw[key] = [value]
        else:
            values.append(value)

    def hasHeader(self, name: bytes | str) -> bool:
        return canonical(name) in self._raw

    def removeHeader(self, name: bytes | str) -> None:
        self._raw.pop(canonical(name), None)

    def setRawHeaders(self, name: bytes | str, values: Sequence[bytes | str]) -> None:
        self._raw[canonical(name)] = [_value(v) for v in values]

    def addRawHeader(self, name: bytes | str, value: bytes | str) -> None:
        self._raw.setdefault(canonical(name), []).append(_value(value))

    @overload
    def getRawHeaders(self, name: AnyStr) -> Sequence[AnyStr] | None: ...

    @overload
    def getRawHeaders(self, name: AnyStr, default: _T) -> Sequence[AnyStr] | _T: ...

    def getRawHeaders(
        self, name: AnyStr, default: _T | None = None
    ) -> Sequence[AnyStr] | _T | None:
        values = self._raw.get(canonical(name))
        if not values:
            return default
        if isinstance(name, str):
            return [v.decode("utf8") for v in values]  # type: ignore[misc]
        return values  # type: ignore[return-value]

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, Sequence[bytes]]]:
        return iter(self._raw.items())
