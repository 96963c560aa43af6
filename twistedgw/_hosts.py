"""Host names and host patterns: ``[[apis]] hosts`` and ``[[tls.sni]] hosts``.

One spelling everywhere, so routing, the SNI entry choice and the 421 check
cannot disagree about what a host *is*: lower case, no port, no trailing dot,
IDNA names as their ASCII form. A pattern is a name, or ``*.`` and a name,
where ``*`` stands for exactly one label (``*.partner.example`` matches
``a.partner.example``, not ``partner.example`` nor ``a.b.partner.example``),
as in certificate wildcards (RFC 6125).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class BadHost(ValueError):
    """A Host header value or a configured host that is not a host name."""


def _shown(value: str) -> str:
    """``repr(value)`` cut short: a message (a 400's description, a config problem) quotes
    the start of what was sent, never a whole 64 KiB value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _name(value: str) -> str:
    """A DNS name or an IP address in its one spelling; BadHost otherwise."""
    text = value.strip().rstrip(".").lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        raise BadHost(f"not a host name: {_shown(value)}") from None
    if not _NAME_RE.match(ascii_name):
        raise BadHost(f"not a host name: {_shown(value)}")
    return ascii_name


def name(value: str) -> str:
    """A host name (no wildcard) or IP address in its one spelling; BadHost otherwise."""
    return _name(value)


def pattern(value: str) -> str:
    """A configured host pattern in its one spelling; BadHost with why otherwise."""
    if value.startswith("*."):
        rest = _name(value[2:])
        if is_address(rest):
            raise BadHost(f"a wildcard applies to names, not addresses: {_shown(value)}")
        return "*." + rest
    if "*" in value:
        raise BadHost(
            f"a wildcard must be the whole first label ('*.example.com'), got {_shown(value)}"
        )
    return _name(value)


def is_address(name: str) -> bool:
    """Whether ``name`` (one spelling) is an IP address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def from_header(value: bytes) -> str:
    """The host a ``Host`` header (HTTP/2: ``:authority``; or ``X-Original-Host``) names,
    port dropped, in the one spelling; ``BadHost`` saying why when it names none.

    The one validator of a request's host, on every listener and both HTTP versions
    (issue 23 item 1): ``host [ ":" port ]`` where host is an IP literal in brackets
    (``[::1]``), an IPv4 address, or a DNS name (labels of letters, digits, ``-`` and
    ``_``, an optional trailing dot) and port is digits. Anything else is refused,
    RFC 3986's wider reg-name included (``a@b``, ``x,y``, ``a b``, ``evil/x``, ``...``,
    an empty value): a backend or a log that reads the value (``X-Forwarded-Host``
    copies it) must not see a host the gateway never judged.
    Short values are cached (callers repeat a few hosts; refusals are not cached), so
    unique values cannot grow memory."""
    if len(value) <= 255:
        return _from_header_cached(value)
    return _from_header(value)


_HOST_NAME_BYTES = re.compile(r"[A-Za-z0-9._\-]+")


def _from_header(value: bytes) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise BadHost("the Host header is not ASCII") from None
    if not text:
        raise BadHost("the Host header is empty")
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        if end < 0:
            raise BadHost(f"an IP literal without its closing bracket: {_shown(text)}")
        rest = text[end + 1 :]
        if rest and not _port(rest):
            raise BadHost(f"not a port: {_shown(rest)}")
        literal = text[1:end]
        try:
            if "%" in literal:  # a zone names an interface of the client's, not a host
                raise ValueError(literal)
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise BadHost(f"not an IPv6 address: {_shown(text[: end + 1])}") from None
    host, colon, port = text.partition(":")
    if ":" in port:
        raise BadHost(f"an IPv6 address must be in brackets: {_shown(text)}")
    if colon and not _port(colon + port):
        raise BadHost(f"not a port: {_shown(port)}")
    if not host:
        raise BadHost(f"no host before the port: {_shown(text)}")
    if _HOST_NAME_BYTES.fullmatch(host) is None:
        raise BadHost(f"not a host name: {_shown(host)}")
    return _name(host)


_from_header_cached = functools.lru_cache(maxsize=1024)(_from_header)


def _port(text: str) -> bool:
    """``":"`` and at most five digits (RFC 3986 allows an empty port)."""
    return text.startswith(":") and (text == ":" or (text[1:].isdigit() and len(text) <= 6))


def matches(pat: str, host: str) -> bool:
    """Whether ``host`` (one spelling) is matched by ``pat`` (one spelling)."""
    if pat.startswith("*."):
        head, dot, tail = host.partition(".")
        return bool(dot) and bool(head) and tail == pat[2:]
    return pat == host


def any_matches(patterns: Iterable[str], host: str) -> bool:
    return any(matches(p, host) for p in patterns)


def overlap(a: str, b: str) -> bool:
    """Whether some host is matched by both patterns (wildcards are one label deep)."""
    if a == b:
        return True
    if a.startswith("*.") and b.startswith("*."):
        return False  # one label each: equal suffixes only, handled above
    return matches(a, b) or matches(b, a)


def covered(pat: str, names: Iterable[str]) -> bool:
    """Whether every host ``pat`` matches is matched by one of ``names`` (certificate
    SAN DNS names or other patterns)."""
    return any(n == pat or (not pat.startswith("*.") and matches(n, pat)) for n in names)
