"""The server block's head: where NGINX listens, its TLS settings, and the server-level
rules that run before any location (NGINX's own errors, the gateway path's choice)."""

from __future__ import annotations

from twistedgw import errors
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import INTERNAL, json_body, quote


def server_head(site: Site) -> None:
    w = site.w
    config = site.config
    nginx = config.nginx
    assert nginx is not None
    limits = config.limits
    w(f"    listen {nginx.listen} ssl;")
    w(f"    server_name {nginx.server_name};")
    w("    server_tokens off;  # Server: nginx, without its version")
    w(f"    ssl_certificate {quote(str(config.tls.certificate))};")
    w(f"    ssl_certificate_key {quote(str(config.tls.private_key))};")
    w(f"    ssl_protocols {' '.join(config.tls.protocols)};")
    w(f"    ssl_ciphers {quote(config.tls.ciphers)};")
    w("    ssl_prefer_server_ciphers on;")
    w("    ssl_session_cache shared:twistedgw_tls:10m;")
    w(f"    ssl_session_tickets {'on' if config.tls.session_tickets else 'off'};")
    w("    # Ask for a certificate but never refuse the handshake for it: twistedgw judges it")
    w("    # per API. NGINX still refuses some failures itself (495: expired, not yet valid,")
    w("    # wrong purpose); error_page 495 hands those to twistedgw, as in direct mode.")
    w("    ssl_verify_client optional_no_ca;")
    w("    default_type application/json;  # the JSON errors NGINX answers itself")
    w("    ssl_verify_depth 10;")
    if site.truststore_file is not None:
        w(f"    ssl_client_certificate {quote(site.truststore_file)};  # CA names offered")
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
    w("    if ($twistedgw_gateway_path) {")
    w(f"        rewrite ^ {INTERNAL}/gateway last;")
    w("    }")
