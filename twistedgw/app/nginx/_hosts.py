"""Host names in the rendered config: ``[[apis]] hosts`` and ``[[tls.sni]] hosts`` as
NGINX regexes on ``$host`` (NGINX's ``*.`` matches any depth, twistedgw's one label),
the maps that pick an API by host and an SNI entry by name, and the 421 and 400 checks
that run before any location, as in direct mode."""

from __future__ import annotations

import re
from pathlib import Path

from twistedgw import _hosts, errors
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import json_body, quote

#: A Host header that names a host (RFC 3986 reg-name of DNS labels, an IPv4 address or
#: a bracketed IPv6 literal) with an optional port; anything else is answered 400.
_GOOD_HOST = (
    r"~*^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)*"
    r"\.?|\[[0-9a-f:.]+\])(?::[0-9]{0,5})?$"
)


def pattern_regex(pattern: str) -> str:
    """``$host`` (lower case, no port, no trailing dot) matched against one host pattern
    in twistedgw's spelling: ``*.`` stands for exactly one label."""
    if pattern.startswith("*."):
        return r"^[^.]+\." + re.escape(pattern[2:]) + "$"
    if ":" in pattern:  # an IPv6 literal: NGINX keeps the brackets in $host
        return r"^\[" + re.escape(pattern) + r"\]$"
    return "^" + re.escape(pattern) + "$"


def patterns_regex(patterns: tuple[str, ...]) -> str:
    return "~" + "|".join(f"(?:{pattern_regex(p)})" for p in patterns)


def exact(pattern: str) -> bool:
    """Whether a host pattern names one host that a map can hash (``$host`` is already in
    lower case without port nor trailing dot): no wildcard, no IPv6 literal, not a word
    a map reads as its own parameter."""
    return not pattern.startswith("*.") and ":" not in pattern and pattern not in _MAP_WORDS


#: Source values a ``map`` block reads as its own parameters.
_MAP_WORDS = frozenset({"default", "hostnames", "include", "volatile"})


def map_keys(patterns: tuple[str, ...]) -> list[str]:
    """A map's keys for host patterns: each exact name hashed (no regex per request: a
    map looks its hash up first), the wildcards and IPv6 literals as one regex."""
    keys = [quote(p) for p in patterns if exact(p)]
    rest = tuple(p for p in patterns if not exact(p))
    if rest:
        keys.append(quote(patterns_regex(rest)))
    return keys


def known_hosts(site: Site) -> list[str]:
    """Host header values the config names (server names, SNI entries' and APIs' exact
    hosts; bare and with the listen port), all good hosts: ``$tgw_bad_host``'s map finds
    them in its hash, so the usual request runs no regex for the Host check."""
    config = site.config
    assert config.nginx is not None
    names = {n.lower() for n in config.nginx.server_name.split() if exact(n.lower())}
    names |= _certificate_names(config.tls.certificate)
    for entry in config.tls.sni:
        names |= {p for p in entry.hosts if exact(p)}
        names |= _certificate_names(entry.certificate)
    for p in site.plans:
        names |= {h for h in p.api.hosts or () if exact(h)}
    names.discard("_")
    port = config.nginx.listen.rsplit(":", 1)[-1]
    good = re.compile(_GOOD_HOST[2:], re.IGNORECASE)
    out = []
    for name in sorted(names):
        for value in (name, f"{name}:{port}"):
            if good.match(value) and value.strip():
                out.append(value)
    return out


def _certificate_names(path: Path | None) -> set[str]:
    """The DNS names (no wildcards) of a server certificate: the names clients connect by,
    so the Host headers they send. Nothing when the file cannot be read (nginx -t and
    direct mode say why)."""
    if path is None:
        return set()
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, IndexError, x509.ExtensionNotFound):
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName) if exact(n.lower())}


def hosted_contexts(site: Site) -> dict[str, int]:
    """Contexts some API serves only for some hosts, numbered for their maps."""
    out: dict[str, int] = {}
    for p in site.plans:
        if p.api.hosts is not None and p.api.context not in out:
            out[p.api.context] = len(out)
    return out


def host_maps(site: Site) -> None:
    """One map per hosted context: ``$host`` -> the API's index (twistedgw's rule: the API
    whose hosts match, else the one without hosts, else none: twistedgw answers 404)."""
    w = site.w
    for context, n in hosted_contexts(site).items():
        candidates = [p for p in site.plans if p.api.context == context]
        w()
        w(f"# {context}: the API is chosen by the request's host, as twistedgw routes.")
        w(f"map $host $tgw_ctx_{n} {{")
        fallback = "none"
        for p in candidates:
            if p.api.hosts is None:
                fallback = str(p.index)
            else:
                for key in map_keys(p.api.hosts):
                    w(f"    {key} {p.index};  # {p.api.label}")
        w(f"    default {fallback};")
        w("}")
    if site.config.tls.sni or any(p.api.hosts is not None for p in site.plans):
        w()
        w("# A Host that names no host is refused (400) before anything else, as in direct mode.")
        w("map $http_host $tgw_bad_host {")
        w('    "" 0;')
        for value in known_hosts(site):
            w(f"    {quote(value)} 0;")
        w(f"    {quote(_GOOD_HOST)} 0;")
        w("    default 1;")
        w("}")
    entries = site.config.tls.sni
    if not entries:
        return
    if per_server(site):
        w()
        w("# The [[tls.sni]] entry the connection's SNI names (-1: the default certificate);")
        w("# each server block is its host's entry (NGINX picks it by Host), so a request")
        w("# whose SNI names another entry is answered 421, as in direct mode.")
        w("map $ssl_server_name $tgw_sni_entry {")
        for k, entry in enumerate(entries):
            for pattern in entry.hosts:  # exact names hashed, wildcards as regexes
                key = ("~" + pattern_regex(pattern)) if pattern.startswith("*.") or (
                    ":" in pattern) else pattern
                w(f"    {quote(key)} {k};")
        w("    default -1;")
        w("}")
        _sni_words(site)
        return
    for variable, source in (("tgw_sni_entry", "$ssl_server_name"), ("tgw_host_entry", "$host")):
        w()
        w(f"# The [[tls.sni]] entry {source} names (-1: the default certificate).")
        w(f"map {source} ${variable} {{")
        for k, entry in enumerate(entries):
            w(f"    {quote(patterns_regex(entry.hosts))} {k};")
        w("    default -1;")
        w("}")
    w()
    w("# 421 when the request's host belongs to another entry than the connection's SNI")
    w("# (none checked without a Host header), as twistedgw's direct mode answers.")
    w('map "$http_host|$tgw_sni_entry|$tgw_host_entry" $tgw_misdirected {')
    w(r'    "~^\|" 0;')
    w(r'    "~\|(-?[0-9]+)\|\1$" 0;')
    w("    default 1;")
    w("}")
    _sni_words(site)


def _sni_words(site: Site) -> None:
    w = site.w
    w('map $ssl_server_name $tgw_sni_words {')
    w('    "" "no TLS server name";')
    w("    default \"the TLS server name '$ssl_server_name'\";")
    w("}")


def per_server(site: Site) -> bool:
    """Whether each server block can check the 421 on its own: NGINX picks a request's
    server by its Host, and ``[[tls.sni]]`` entries never overlap (config), so the
    server is the Host's entry unless the default server's own names (``[nginx]
    server_name``) are patterns of NGINX's or name an entry's host."""
    config = site.config
    assert config.nginx is not None
    for name in config.nginx.server_name.split():
        if name == "_":
            continue
        if name.startswith(("~", "*", ".")) or name.endswith(".*"):
            return False
        if any(_hosts.any_matches(e.hosts, name.lower()) for e in config.tls.sni):
            return False
    return True


def _checks_host(site: Site) -> bool:
    """Whether requests are checked for a Host that is not a host (and, with ``[[tls.sni]]``
    entries, for a host of another entry than the SNI's), as direct mode checks them."""
    config = site.config
    return bool(config.tls.sni) or any(p.api.hosts is not None for p in site.plans)


def checks_in_locations(site: Site) -> bool:
    """Whether the Host (400) and SNI (421) checks run in each location (``location_checks``)
    instead of the server block: in the Lua variant, where the 421 is one server's per
    entry. An API's Lua checks them per connection: the SNI's entry once (the map on
    every request cost ~700 instructions), a Host only when it is not the connection's
    last good one (the map ~650); the other locations check per request as before, each
    before it answers anything. (In an ``auth_request`` location they would cost more.)"""
    return site.lua and _checks_host(site) and (not site.config.tls.sni or per_server(site))


def host_checks(site: Site) -> None:
    """Server-level checks before any location, unless each location makes them
    (``checks_in_locations``): a Host that is not a host (400), and a host served under
    another SNI entry than the connection's (421)."""
    w = site.w
    config = site.config
    if not _checks_host(site):
        return
    if not checks_in_locations(site):
        w("    if ($tgw_bad_host) {")
        w(f"        return 400 {json_body(_bad_host())};")
        w("    }")
        if config.tls.sni:
            w(f'    if ($tgw_sni_entry != "{site.server}") {{' if per_server(site) else
              "    if ($tgw_misdirected) {")
            w(f"        return 421 {quote(_misdirected())};")
            w("    }")
    if config.tls.sni:
        # NGINX's own 421 (a Host other than the SNI on a server that asks for certificates).
        w("    error_page 421 = @twistedgw_421;")


def _bad_host() -> errors.GatewayError:
    """Direct mode's 400 for a Host that is not a host (in the config's error style)."""
    return errors.bad_request("bad Host header: not a host name")


def location_checks(site: Site, indent: str) -> None:
    """The Host and SNI checks of a location that answers without Lua, where they are made
    in locations (``checks_in_locations``)."""
    if not checks_in_locations(site):
        return
    site.w(f"{indent}if ($tgw_bad_host) {{")
    site.w(f"{indent}    return 400 {json_body(_bad_host())};")
    site.w(f"{indent}}}")
    if site.config.tls.sni:
        site.w(f'{indent}if ($tgw_sni_entry != "{site.server}") {{')
        site.w(f"{indent}    return 421 {quote(_misdirected())};")
        site.w(f"{indent}}}")


def lua_checks(site: Site) -> str | None:
    """What an API's Lua is told to check (``checks_in_locations``): the server's
    ``[[tls.sni]]`` entry ("" without entries: the Host only); None: nothing."""
    if not checks_in_locations(site):
        return None
    return str(site.server) if site.config.tls.sni else ""


def _misdirected() -> str:
    """Direct mode's 421 body (in the config's error style) naming ``$host`` and the SNI:
    both are host names once ``$tgw_bad_host`` passed, so they need no JSON escaping."""
    body = errors.misdirected(
        "the host 'TGWHOSTTGW' is not served on this connection, which was opened with "
        "TGWSNITGW; open a connection whose server name (SNI) is that host"
    ).body().decode()
    return body.replace("TGWHOSTTGW", "$host").replace("TGWSNITGW", "$tgw_sni_words")


def misdirected_location(site: Site) -> None:
    """The named locations an API's Lua hands a bad Host (400) and a misdirected request
    (421) to; the 421's also takes NGINX's own."""
    if checks_in_locations(site):
        site.w("    location @twistedgw_bad_host {")
        site.w("        default_type application/json;")
        site.w(f"        return 400 {json_body(_bad_host())};")
        site.w("    }")
    if not site.config.tls.sni:
        return
    site.w("    location @twistedgw_421 {")
    site.w("        default_type application/json;")
    site.w(f"        return 421 {quote(_misdirected())};")
    site.w("    }")
