"""The include for NGINX's ``http {}``: maps, upstreams, the server and its locations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twistedgw import errors
from twistedgw.app.nginx._checks import NginxConfigError, check
from twistedgw.app.nginx._hosts import host_maps, hosted_contexts
from twistedgw.app.nginx._locations import (
    authz_locations,
    context_locations,
    shared_locations,
    websockets,
)
from twistedgw.app.nginx._lua import lua_source
from twistedgw.app.nginx._plan import plan
from twistedgw.app.nginx._servers import server_head
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import CACHE_ZONE, TIERS_ZONE, quote
from twistedgw.app.nginx._upstreams import upstreams
from twistedgw.config import ApiConfig, GatewayConfig
from twistedgw.http import verdicts

VARIANTS = ("auth_request", "lua")


@dataclass(frozen=True)
class Rendered:
    text: str
    truststore_pem: bytes | None  # the truststore as one PEM bundle (ssl_client_certificate)


def render(
    config: GatewayConfig,
    truststore_file: str | None = None,
    *,
    variant: str = "auth_request",
    lua_dir: str | None = None,
    pipelines: Mapping[ApiConfig, Any] | None = None,
    nginx_version: tuple[int, int, int] | None = None,
) -> Rendered:
    """``_render`` with the error bodies NGINX answers in the config's ``[errors] style``.
    ``pipelines`` (the Runtime's) say what third-party plugins do (``_plugins``);
    ``nginx_version`` (the binary's) how ``[nginx] http2`` is spelled."""
    with errors.styled(config.errors.style):
        return _render(config, truststore_file, variant=variant, lua_dir=lua_dir,
                       pipelines=pipelines, nginx_version=nginx_version)


def _render(
    config: GatewayConfig,
    truststore_file: str | None = None,
    *,
    variant: str = "auth_request",
    lua_dir: str | None = None,
    pipelines: Mapping[ApiConfig, Any] | None = None,
    nginx_version: tuple[int, int, int] | None = None,
) -> Rendered:
    """The include for NGINX's ``http {}``; NginxConfigError if the config cannot have one.

    ``variant = "lua"`` keeps verdicts in a ``lua_shared_dict`` (needs the NGINX Lua
    module loaded in nginx.conf, and ``lua_dir`` holding ``twistedgw_verdicts.lua``).
    """
    problems = check(config)
    if problems:
        raise NginxConfigError(problems)
    site = Site(config, plan(config, variant, pipelines), variant, truststore_file,
                lua_dir or str(lua_source().parent), nginx_version)
    nginx = config.nginx
    assert nginx is not None
    w = site.w
    w(f"# Rendered by `twistedgw nginx-config` from {config.source}; do not edit: change")
    w("# the TOML and render again (then `nginx -s reload`). Include it in http {}.")
    w("# NGINX's path (clean paths of the APIs listed so below) never reaches Python when")
    w("# the verdict is cached; everything else is answered by twistedgw as in direct mode.")
    for p in site.plans:
        w(f"#   {p.describe(config)}")
    w()
    if site.lua:
        w("# Variant lua: verdicts in shared memory (twistedgw_verdicts.lua).")
        w(f"lua_shared_dict {CACHE_ZONE} 10m;")
        if any(p.tiers == "dict" for p in site.plans):
            w(f"lua_shared_dict {TIERS_ZONE} 10m;  # tier buckets (every worker's)")
        w(f"lua_package_path {quote(site.lua_dir + '/?.lua;;')};")
    else:
        w(f"proxy_cache_path {nginx.cache_path} levels=1:2 keys_zone={CACHE_ZONE}:10m")
        w("                 max_size=256m inactive=10m use_temp_path=off;")
    if any(len(p.api.endpoints) > 1 and p.nginx_path and not p.peers for p in site.plans):
        w()
        w("# An idempotent request with a body: stock NGINX would retry it on the next")
        w("# backend where direct mode does not; such requests take the gateway path.")
        w("# A request without Content-Length and Transfer-Encoding (the usual GET) is")
        w("# told by one hash lookup; only the others meet the pattern (~850 instructions).")
        w('map "$http_content_length$http_transfer_encoding" $tgw_body_retry {')
        w('    "" 0;')
        w("    default $tgw_body_retry_method;")
        w("}")
        w('map "$request_method:$http_content_length:$http_transfer_encoding" '
          "$tgw_body_retry_method {")
        w(r'    "~^(?:GET|HEAD|OPTIONS|PUT|DELETE|TRACE):(?:0*[1-9][0-9]*:|[^:]*:.)" 1;')
        w("    default 0;")
        w("}")
    if hosted_contexts(site):  # their internal locations get the rest captured before
        w()
        w("# An API whose backend URL has no path gets '/' for an empty rest, as in direct mode.")
        w("map $tgw_rest $tgw_rest_or_slash {")
        w('    "" "/";')
        w("    default $tgw_rest;")
        w("}")
    if any(p.nginx_path and not p.lua for p in site.plans):
        w()
        w("# A refusal's WWW-Authenticate: auth_request itself passes a 401's on; add_header")
        w("# adds it for the other statuses only (else a 401 would carry it twice).")
        w("map $tgw_status $tgw_challenge_added {")
        w('    "401" "";')
        w("    default $tgw_challenge;")
        w("}")
    if any(verdicts.authorization_rule(p.api) == "answer" for p in site.plans if p.nginx_path):
        w()
        w("# Authorization as the judged operation forwards it (the authz answer says remove).")
        w("map $tgw_authz_rm $tgw_authorization {")
        w('    remove "";')
        w("    default $http_authorization;")
        w("}")
    if websockets(site):
        w()
        w("# WebSocket handshakes: Upgrade and Connection passed on (an upgrade to anything")
        w("# else is dropped, as twistedgw does); other requests keep the upstream keepalive.")
        w("map $http_upgrade $tgw_upgrade {")
        w('    "~*^websocket$" websocket;')
        w('    default "";')
        w("}")
        w("map $http_upgrade $tgw_connection {")
        w('    "~*^websocket$" upgrade;')
        w('    default "";')
        w("}")
    w()
    upstreams(site)
    host_maps(site)
    for entry in (None, *config.tls.sni):  # the same locations under each certificate
        w()
        site.server = -1 if entry is None else config.tls.sni.index(entry)
        w("server {")
        server_head(site, entry)
        w()
        shared_locations(site)
        context_locations(site)
        authz_locations(site)
        w("}")
    w()
    return Rendered("\n".join(site.lines), _truststore_pem(config))


def _truststore_pem(config: GatewayConfig) -> bytes | None:
    if config.tls.truststore is None:
        return None
    from cryptography.hazmat.primitives import serialization

    from twistedgw.tls import PkiError, load_truststore

    try:
        store = load_truststore(config.tls.truststore, config.tls.truststore_password)
    except PkiError:
        return None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in store.certificates)
