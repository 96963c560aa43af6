"""Small pieces of NGINX config text shared by the renderer's modules."""

from __future__ import annotations

from urllib.parse import urlsplit

from twistedgw import errors

#: Internal locations live under this prefix; a client's request for it takes the
#: gateway path (it is not a clean path for the fast path), so it cannot reach them.
INTERNAL = "/_twistedgw_nginx"
CACHE_ZONE = "twistedgw_verdicts"
TIERS_ZONE = "twistedgw_tiers"

# A raw request target that twistedgw's normalisation leaves as it is: segments of
# RFC 3986 pchar without '%', ';' (params), '$' and "'" (kept out of NGINX strings),
# none empty, '.' or '..'; an optional trailing slash; any query.
CLEAN_TARGET = (
    r"^(?!/_twistedgw_nginx/)(?:/(?!\.\.?(?:/|\?|$))[A-Za-z0-9._~!&()*+,=:@-]+)*/?(?:\?.*)?$"
)


def quote(value: str) -> str:
    """An NGINX string in double quotes (escapes backslash and double quote)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def json_body(error: errors.GatewayError) -> str:
    """The error's JSON body as an NGINX string (``return CODE "..."``)."""
    return quote(error.body().decode())


def _escaped(context: str) -> str:
    return "".join(c if c.isalnum() or c in "/_" else "\\" + c for c in context.lower())


def context_regex(context: str) -> str:
    """A case-sensitive regex for ``context`` (lower case, as the prefix locations name it)
    that captures the rest of the path (after the context) as ``$tgw_rest``."""
    return f"^{_escaped(context)}(?<tgw_rest>/.*)?$"


def contexts_regex(contexts: list[str]) -> str:
    """A case-insensitive regex matching any of ``contexts`` on a segment boundary."""
    alternatives = "|".join(_escaped(c.rstrip("/")) for c in contexts)
    return f"^(?:{alternatives})(?:/|$)"


def host_header(backend: str) -> str:
    """The ``Host`` the direct mode sends ``backend`` (the port only when not the default)."""
    parts = urlsplit(backend)
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default else f"{shown}:{port}"


def host_port(backend: str) -> str:
    """``host:port`` of a backend URL, as an NGINX ``server`` line names it."""
    parts = urlsplit(backend)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{shown}:{port}"


def lua_string(value: str) -> str:
    """A Lua string literal (long strings would need care with ``]]``: escape instead)."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.append("".join(f"\\{b:03d}" for b in ch.encode()))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
