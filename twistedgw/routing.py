"""One normalised path, used both to choose the API and to build the backend URL.

Policy bypasses come from a router and a backend disagreeing about a path
(``/open/../secret``, ``/secret%2Fx``, ``/SECRET``, ``/secret;x``). So the
gateway decides what a path *is* once, routes on that, and sends the backend
exactly that path: it has nothing left to reinterpret.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twistedgw.config import ApiConfig

if TYPE_CHECKING:
    from twistedgw.pipeline import Pipeline


class BadPath(ValueError):
    """The request target cannot be normalised safely; answered with 400."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters allowed raw in a path segment (RFC 3986 pchar minus '%', plus '/').
_PCHAR = frozenset(b"!$&'()*+,;=:@/") | _UNRESERVED
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
# Percent-escapes that would change the path's structure if a backend decoded them.
_FORBIDDEN_ESCAPES = {0x2F: "'/'", 0x5C: "'\\'", 0x00: "NUL", 0x3B: "';'"}


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


def normalise(path: bytes) -> bytes:
    """Normalise a request path (no query); raise BadPath when it is unsafe or malformed.

    Steps: require an absolute path; refuse control characters, backslashes and
    escaped '/', '\\', NUL or ';'; decode escapes of unreserved characters and
    upper-case the rest; drop ``;params`` from each segment; collapse empty
    segments; resolve ``.`` and ``..`` (refusing to climb above the root).
    Results for short paths are cached (the guard and the router both ask, and
    callers repeat paths); at most 4096 entries of at most 512 bytes, so unique
    long paths cannot grow memory. Refusals are never cached.
    """
    if len(path) <= _CACHED_PATH_BYTES:
        return _normalise_cached(path)
    return _normalise(path)


_CACHED_PATH_BYTES = 512


def _normalise(path: bytes) -> bytes:
    if not path.startswith(b"/"):
        raise BadPath("request target must be an absolute path")
    if any(b < 0x21 or b == 0x7F or b == 0x5C for b in path):
        raise BadPath("request path contains a control character, space or backslash")
    if any(b >= 0x80 for b in path):
        raise BadPath("request path contains a raw non-ASCII byte")

    def unescape(m: re.Match[bytes]) -> bytes:
        value = int(m.group(1), 16)
        if value in _FORBIDDEN_ESCAPES:
            raise BadPath(f"request path contains an encoded {_FORBIDDEN_ESCAPES[value]}")
        if value in _UNRESERVED:
            return bytes([value])
        return b"%" + m.group(1).upper()

    if b"%" in path:
        stray = path.count(b"%") - len(_PCT.findall(path))
        if stray:
            raise BadPath("request path contains a malformed percent-escape")
        path = _PCT.sub(unescape, path)
    for b in path:
        if b not in _PCHAR and b != 0x25:
            raise BadPath(f"request path contains the character {chr(b)!r}")

    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for i, raw in enumerate(segments):
        segment = raw.split(b";", 1)[0]
        last = i == len(segments) - 1
        if segment in (b"", b"."):
            if last:
                out.append(b"")  # keep a trailing slash
            continue
        if segment == b"..":
            if not out or out == [b""]:
                raise BadPath("request path climbs above the root")
            out.pop()
            if last:
                out.append(b"")
            continue
        out.append(segment)
    return b"/" + b"/".join(out)


_normalise_cached = functools.lru_cache(maxsize=4096)(_normalise)


def authz_path(path: bytes) -> bytes:
    """The path the authz endpoint may judge: ``path`` itself, already in normal form.

    Why: with NGINX ``auth_request`` (Envoy ``ext_authz``, Traefik ``forwardAuth``)
    the gateway only judges; the front proxy routes on its own reading of the path
    and forwards the raw path to a backend that routes on yet another. If the
    gateway judged the normalised form of ``/secure/admin/..;/public/`` it would
    judge the open ``/secure/public`` while the backend serves ``/secure/admin``.
    So a path whose normalised form differs from the bytes forwarded (dot segments
    in any spelling: ``.``, ``..``, ``%2e``, ``.;x``, ``..;``; ``;`` parameters;
    escapes of unreserved characters; empty segments; lower-case escapes) is
    refused, never judged as something else. Only then do the raw and the judged
    path select the same API whatever the contexts and whatever prefix router
    sits behind the proxy. Direct mode keeps normalising (it forwards what it judged).
    """
    clean = normalise(path)  # raises BadPath for what is refused everywhere
    if clean == path:
        return clean
    segments = path.split(b"/")[1:]
    if b";" in path:
        why = "a ';' parameter"
    elif any(s in (b".", b"..") for s in segments):
        why = "a '.' or '..' segment"
    elif any(int(m.group(1), 16) in _UNRESERVED for m in _PCT.finditer(path)):
        why = "an escaped unreserved character such as %2E (a dot) or %41"
    elif b"" in segments[:-1]:
        why = "an empty segment"
    else:
        why = "a percent-escape in lower case"
    raise BadPath(
        f"request path has {why}: the proxy forwards it as sent, so it is not judged"
        f" as {clean.decode('latin-1')!r}"
    )


@dataclass(frozen=True)
class Route:
    """Where one request goes: its API, the backend URL and the API's compiled pipeline."""

    api: ApiConfig
    backend_target: bytes  # absolute URL for the backend, path and query included
    pipeline: Pipeline | None = None  # None only for a Router built without pipelines


class Router:
    """Longest-context match on segment boundaries, case-insensitively.

    Contexts match case-insensitively so that ``/PETSTORE`` cannot slip past a
    protected ``/petstore`` to a catch-all API whose backend ignores case.
    """

    def __init__(
        self, apis: Iterable[ApiConfig], pipelines: Mapping[ApiConfig, Pipeline] | None = None
    ) -> None:
        ordered = sorted(apis, key=lambda a: len(a.context), reverse=True)
        pipelines = pipelines or {}
        self._apis = [(a.context.lower().encode(), a, pipelines.get(a)) for a in ordered]

    def route(self, path: bytes, query: bytes | None) -> Route | None:
        """``path`` must already be normalised."""
        lowered = path.lower()
        for context, api, pipeline in self._apis:
            if context == b"/" or lowered == context or lowered.startswith(context + b"/"):
                rest = path[len(context) :] if context != b"/" else path
                target = api.backend.encode() + (rest if rest else b"")
                if not rest and not api.backend.split("://", 1)[1].count("/"):
                    target += b"/"
                if query is not None:
                    target += b"?" + query
                return Route(api, target, pipeline)
        return None
