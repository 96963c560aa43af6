"""The server block's head: where NGINX listens, its TLS settings, and the server-level
rules that run before any location (NGINX's own errors, the gateway path's choice)."""

from __future__ import annotations

from twistedgw import errors
from twistedgw.app import _runtime as runtime
from twistedgw.app.nginx._hosts import host_checks, pattern_regex
from twistedgw.app.nginx._plan import underscored_headers
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import CLEAN_TARGET, INTERNAL, json_body, quote
from twistedgw.config import SniEntry


def asks(site: Site, entry: SniEntry | None) -> bool:
    """Whether handshakes under ``entry`` (None: the default) ask for a certificate: where
    direct mode's ``client_certificate`` would (``auto``: where an API reachable there
    needs one)."""
    return runtime.asks_for_certificate(site.config, entry)


def server_names(entry: SniEntry) -> str:
    """An entry's hosts as NGINX server names (a one-label wildcard as a regex)."""
    return " ".join(
        quote("~" + pattern_regex(p)) if p.startswith("*.") or ":" in p else p
        for p in entry.hosts
    )


def server_head(site: Site, entry: SniEntry | None = None) -> None:
    """The head of the default server (``entry`` None) or of one ``[[tls.sni]]`` entry's."""
    w = site.w
    config = site.config
    nginx = config.nginx
    assert nginx is not None
    limits = config.limits
    default = " default_server" if config.tls.sni and entry is None else ""
    # HTTP/2: a listen parameter before NGINX 1.25.1, its own directive from it on.
    old_h2 = nginx.http2 and (site.nginx_version is None or site.nginx_version < (1, 25, 1))
    w(f"    listen {nginx.listen} ssl{' http2' if old_h2 else ''}{default};")
    if nginx.http2 and not old_h2:
        w("    http2 on;")
    if entry is None:
        w(f"    server_name {nginx.server_name};")
        certificate, key = config.tls.certificate, config.tls.private_key
        advertise = config.tls.advertise_ca_names
    else:
        w(f"    server_name {server_names(entry)};  # {entry.where}")
        certificate, key = entry.certificate, entry.private_key
        advertise = entry.advertise_ca_names
    w("    server_tokens off;  # Server: nginx, without its version")
    # A request's pool holds the request, its header lists, one slot per variable the
    # config names and the Lua context: past NGINX's 4k default every request mallocs
    # (and frees) one or two more blocks (~1,800 instructions per request, callgrind).
    w("    request_pool_size 16k;")
    underscored = underscored_headers(config)
    if underscored:  # else NGINX drops them before twistedgw could read the credential
        w(f"    underscores_in_headers on;  # {', '.join(underscored)}")
    w(f"    ssl_certificate {quote(str(certificate))};")
    w(f"    ssl_certificate_key {quote(str(key))};")
    w(f"    ssl_protocols {' '.join(config.tls.protocols)};")
    w(f"    ssl_ciphers {quote(config.tls.ciphers)};")
    w("    ssl_prefer_server_ciphers on;")
    w("    ssl_session_cache shared:twistedgw_tls:10m;")
    w(f"    ssl_session_tickets {'on' if config.tls.session_tickets else 'off'};")
    if asks(site, entry):
        w("    # Ask for a certificate but never refuse the handshake for it: twistedgw")
        w("    # judges it per API. NGINX still refuses some failures itself (495: expired,")
        w("    # not yet valid, wrong purpose); error_page 495 hands those to twistedgw.")
        w("    ssl_verify_client optional_no_ca;")
        w("    ssl_verify_depth 10;")
        if site.truststore_file is not None and advertise:
            w(f"    ssl_client_certificate {quote(site.truststore_file)};  # CA names offered")
    else:
        w("    ssl_verify_client off;  # no API reachable here needs a certificate (auto)")
    if site.mixed_asks:  # a resumed session under a server that does not ask has none
        cert = "$ssl_client_escaped_cert" if asks(site, entry) else '""'
        w(f"    set $tgw_client_cert {cert};")
    w("    default_type application/json;  # the JSON errors NGINX answers itself")
    w("    error_page 495 = @twistedgw_gateway;")
    w(f"    error_page 400 = {INTERNAL}/400;  # a request NGINX cannot parse: no URI to hand on")
    biggest = max([limits.max_body_bytes, *(a.max_body_bytes or 0 for a in config.apis)])
    w(f"    client_max_body_size {biggest};")
    w(f"    large_client_header_buffers 4 {max(limits.max_header_bytes, 1024)};")
    w(f"    client_header_timeout {max(1, int(limits.client_header_timeout))}s;")
    w(f"    keepalive_timeout {max(1, int(limits.idle_timeout))}s;")
    w(f"    send_timeout {max(1, int(limits.send_timeout))}s;")
    w()
    w("    # NGINX's own 400 (a request line it cannot parse) as twistedgw's JSON.")
    w(f"    if ($uri = {INTERNAL}/400) {{")
    w("        return 400 " + json_body(errors.bad_request("malformed request")) + ";")
    w("    }")
    if not site.lua:
        skip_checks_in_subrequests(site)
    host_checks(site)
    # A raw target twistedgw's path normalisation would change takes the gateway path: a
    # regex on $request_uri here, not a map (a map copies its source and hashes it in lower
    # case before its regex: ~500 instructions more per request).
    w("    # Raw request targets that twistedgw's path normalisation would change.")
    w(f"    if ($request_uri !~ {quote(CLEAN_TARGET)}) {{")
    w(f"        rewrite ^ {INTERNAL}/gateway last;")
    w("    }")
    if not site.lua:
        w(f"    set ${CHECKED} 1;  # passed: its auth_request subrequest skips them")


#: Set once a request has passed the server-level checks (auth_request variant).
CHECKED = "tgw_checked"


def skip_checks_in_subrequests(site: Site) -> None:
    """The auth_request subrequest runs the server block's rules again (NGINX starts every
    internal request at the server rewrite phase), but it shares its main request's
    variables, so the Host, SNI and clean-target checks the main request passed are
    skipped (``break``) where the main request set ``$tgw_checked``: their inputs
    ($http_host, $ssl_server_name, $request_uri) are the main request's. ~900 of a warm
    request's instructions (the target's regex run again). It comes after the ``$uri``
    check: an error page NGINX sends through ``error_page 400`` after the checks (an
    internal redirect, which keeps the variables too) is still answered there."""
    w = site.w
    w("    uninitialized_variable_warn off;  # $tgw_checked is unset until the checks pass")
    w(f"    if (${CHECKED}) {{  # a subrequest of a request that passed the checks below")
    w("        break;")
    w("    }")
