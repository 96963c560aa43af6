"""``twistedgw nginx-config``: the NGINX side of the NGINX-fronted mode, from the same TOML.

NGINX terminates TLS, carries the bytes and caches verdicts; twistedgw decides.
The rendered file is an include for NGINX's ``http {}`` context. Requests take
one of two ways:

- **Fast path**: a request whose raw path is *clean* (nothing twistedgw's
  normalisation would change: no ``%``, ``;``, ``\\``, empty, ``.`` or ``..``
  segments) matches one regex location per API, in twistedgw's order (longest
  context first, case-insensitive, on segment boundaries). NGINX asks twistedgw's
  authz endpoint (``auth_request``, cached per certificate fingerprint, API and
  API key) and proxies to the API's backend itself. For a clean path NGINX's
  ``$uri`` is the raw path and twistedgw's normalised path, so both agree on the
  API and the authz answer is about exactly the path NGINX forwards.
- **Gateway path**: everything else is handed whole to twistedgw, which answers
  exactly as the direct mode does (routing, JSON errors, forwarding): unclean
  paths, paths that match no API, refusals (so the body is twistedgw's JSON),
  certificates NGINX itself refuses under ``optional_no_ca`` (expired, wrong
  purpose: NGINX's 495, which the direct mode serves on open APIs), and APIs
  with per-certificate tiers (every request counts).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from twistedgw import errors
from twistedgw.config import ApiConfig, GatewayConfig, variants
from twistedgw.http import _verdicts as verdicts
from twistedgw.identity import _forwarding as idforward
from twistedgw.pipeline import API_KEY_HEADER, method_override_headers

#: Internal locations live under this prefix; a client's request for it takes the
#: gateway path (it is not a clean path for the fast path), so it cannot reach them.
INTERNAL = "/_twistedgw_nginx"
CACHE_ZONE = "twistedgw_verdicts"

# A raw request target that twistedgw's normalisation leaves as it is: segments of
# RFC 3986 pchar without '%', ';' (params), '$' and "'" (kept out of NGINX strings),
# none empty, '.' or '..'; an optional trailing slash; any query.
CLEAN_TARGET = (
    r"^(?!/_twistedgw_nginx/)(?:/(?!\.\.?(?:/|\?|$))[A-Za-z0-9._~!&()*+,=:@-]+)*/?(?:\?.*)?$"
)
# What a context may contain to be rendered into a location regex.
_CONTEXT_OK = re.compile(r"^/[A-Za-z0-9._~!&()*+,=:@/-]*$")


class NginxConfigError(Exception):
    """The config cannot be rendered; ``problems`` name the file and the dotted key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rendered:
    text: str
    truststore_pem: bytes | None  # the truststore as one PEM bundle (ssl_client_certificate)


def _quote(value: str) -> str:
    """An NGINX string in double quotes (escapes backslash and double quote)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex(context: str) -> str:
    escaped = "".join(c if c.isalnum() or c in "/_" else "\\" + c for c in context.lower())
    return f"^{escaped}(?<tgw_rest>/.*)?$"


def _listener_matches(config: GatewayConfig, authz: str) -> bool:
    """A plain listener serves what ``[nginx] authz`` names."""
    for listener in config.listeners:
        if listener.tls:
            continue
        if authz.startswith("unix:"):
            endpoint = listener.endpoint or ""
            path = authz[len("unix:") :]
            if endpoint.startswith("systemd:"):  # a socket unit owns the path
                return True
            if endpoint.startswith("unix:") and (
                endpoint[len("unix:") :].split(":")[0] in (path, f"address={path}")
            ):
                return True
        elif listener.endpoint is None:
            host, _, port = authz.rpartition(":")
            if int(port) == listener.port and host.strip("[]") in (listener.host, "localhost"):
                return True
    return False


def check(config: GatewayConfig) -> list[str]:
    """What the gateway config lacks for the NGINX-fronted mode (file: key: problem)."""
    file = config.source
    out: list[str] = []
    nginx = config.nginx
    if nginx is None:
        return [f"{file}: nginx: the [nginx] section is required for nginx-config"]
    if config.authz is None:
        out.append(f"{file}: authz: an [authz] section is required (NGINX asks it)")
    lb = config.mutual_ssl
    if lb.certificate_header is None:
        out.append(
            f"{file}: mutual_ssl.certificate_header: is required: NGINX passes the client "
            'certificate in it (e.g. "X-SSL-Client-Cert")'
        )
    elif lb.header_encoding not in ("auto", "url-pem"):
        out.append(
            f"{file}: mutual_ssl.header_encoding: NGINX sends $ssl_client_escaped_cert "
            f'("url-pem" or "auto"), not {lb.header_encoding!r}'
        )
    if nginx.authz.startswith("unix:"):
        if not lb.trust_unix_socket or lb.enable_client_validation:
            out.append(
                f"{file}: mutual_ssl.trusted_proxies: NGINX reaches twistedgw over the Unix "
                'socket in [nginx] authz: set trusted_proxies = ["unix"] and '
                "enable_client_validation = false"
            )
    elif lb.enable_client_validation or not lb.trusted_proxies:
        out.append(
            f"{file}: mutual_ssl.trusted_proxies: NGINX reaches twistedgw over plain HTTP "
            "([nginx] authz): list NGINX's address in trusted_proxies and set "
            "enable_client_validation = false"
        )
    if not _listener_matches(config, nginx.authz):
        out.append(
            f"{file}: listeners: no plain (tls = false) listener serves [nginx] authz = "
            f"{nginx.authz!r}; add one, e.g. endpoint = {nginx.authz!r} with tls = false"
            if nginx.authz.startswith("unix:")
            else f"{file}: listeners: no plain (tls = false) listener on {nginx.authz!r}"
        )
    if config.tls.certificate is None or config.tls.private_key is None:
        out.append(
            f"{file}: tls.certificate: NGINX needs PEM files (certificate and private_key); "
            "a PKCS#12 keystore cannot be rendered"
        )
    for i, api in enumerate(config.apis):
        if not _CONTEXT_OK.match(api.context):
            out.append(
                f"{file}: apis[{i}].context: {api.context!r} cannot be rendered as an NGINX "
                "location ('%', ';', '$' and quotes are not supported in this mode)"
            )
    return out


def _json(error: errors.GatewayError) -> str:
    return _quote(error.body().decode())


def _gateway_proxy(indent: str) -> str:
    """Hand the request, as the client sent it, to twistedgw's full gateway."""
    return "\n".join(
        indent + line
        for line in (
            "proxy_pass http://twistedgw_authz$request_uri;",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;",
            "proxy_set_header X-SSL-Client-Verify $ssl_client_verify;",
            "proxy_set_header X-Forwarded-For $remote_addr;  # twistedgw's peer is the socket",
            "proxy_set_header X-Forwarded-Proto https;",
            "proxy_intercept_errors off;",
            "proxy_buffering off;",
        )
    )


def _host_header(backend: str) -> str:
    parts = urlsplit(backend)
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default else f"{shown}:{port}"


def _backend_tls(config: GatewayConfig, api: ApiConfig, indent: str) -> list[str]:
    if not api.backend.startswith("https://"):
        return []
    tls = config.backend_tls_for(api)
    trusted = str(tls.trusted_certificate) if tls.trusted_certificate else (
        "/etc/ssl/certs/ca-certificates.crt"
    )
    lines = [
        "proxy_ssl_verify on;",
        "proxy_ssl_verify_depth 4;",
        f"proxy_ssl_trusted_certificate {_quote(trusted)};",
        "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        "proxy_ssl_session_reuse on;",
    ]
    name = tls.server_name or urlsplit(api.backend).hostname or ""
    lines.append(f"proxy_ssl_name {_quote(name)};")
    lines.append("proxy_ssl_server_name on;")
    if tls.certificate is not None and tls.private_key is not None:
        lines.append(f"proxy_ssl_certificate {_quote(str(tls.certificate))};")
        lines.append(f"proxy_ssl_certificate_key {_quote(str(tls.private_key))};")
    return [indent + line for line in lines]


def _stripped_headers(config: GatewayConfig) -> list[str]:
    """Every header a caller must never deliver (the direct mode strips the same)."""
    names = set(idforward.stripped(config.identity)) | {API_KEY_HEADER}
    for api in config.apis:  # an OpenAPI apiKey scheme's own header is removed too
        names |= {h.encode() for h in verdicts.key_headers(api)}
    lb = config.mutual_ssl
    names |= {h.lower().encode() for h in (lb.certificate_header, lb.chain_header) if h}
    names |= {b"forwarded", b"x-twistedgw-api", b"x-twistedgw-principal"}
    return sorted(n.decode() for n in names)


#: The access_by_lua module of ``--variant lua`` (plugins/nginx/ in the source tree).
LUA_MODULE = Path(__file__).resolve().parents[2] / "plugins" / "nginx" / "twistedgw_verdicts.lua"
VARIANTS = ("auth_request", "lua")


def render(
    config: GatewayConfig,
    truststore_file: str | None = None,
    *,
    variant: str = "auth_request",
    lua_dir: str | None = None,
) -> Rendered:
    """``_render`` with the error bodies NGINX answers in the config's ``[errors] style``."""
    with errors.styled(config.errors.style):
        return _render(config, truststore_file, variant=variant, lua_dir=lua_dir)


def _render(
    config: GatewayConfig,
    truststore_file: str | None = None,
    *,
    variant: str = "auth_request",
    lua_dir: str | None = None,
) -> Rendered:
    """The include for NGINX's ``http {}``; NginxConfigError if the config cannot have one.

    ``variant = "lua"`` keeps verdicts in a ``lua_shared_dict`` (needs the NGINX Lua
    module loaded in nginx.conf, and ``lua_dir`` holding ``twistedgw_verdicts.lua``).
    """
    problems = check(config)
    if problems:
        raise NginxConfigError(problems)
    nginx = config.nginx
    authz = config.authz
    assert nginx is not None and authz is not None
    lb_header = config.mutual_ssl.certificate_header
    assert lb_header is not None
    limits = config.limits
    out: list[str] = []
    w = out.append
    w(f"# Rendered by `twistedgw nginx-config` from {config.source}; do not edit: change")
    w("# the TOML and render again (then `nginx -s reload`). Include it in http {}.")
    w("# The fast path (clean paths of cacheable APIs) never reaches Python when the verdict")
    w("# is cached; everything else is answered by twistedgw exactly as in direct mode.")
    w("")
    lua = variant == "lua"
    if lua:
        w("# Variant lua: verdicts in shared memory (plugins/nginx/twistedgw_verdicts.lua).")
        w(f"lua_shared_dict {CACHE_ZONE} 10m;")
        w(f"lua_package_path {_quote(str(lua_dir or LUA_MODULE.parent) + '/?.lua;;')};")
    else:
        w(f"proxy_cache_path {nginx.cache_path} levels=1:2 keys_zone={CACHE_ZONE}:10m")
        w("                 max_size=256m inactive=10m use_temp_path=off;")
    w("")
    w("# Raw request targets that twistedgw's path normalisation leaves unchanged.")
    w("map $request_uri $twistedgw_gateway_path {")
    w(f"    {_quote('~' + CLEAN_TARGET)} 0;")
    w("    default 1;")
    w("}")
    w("")
    w("# An API whose backend URL has no path gets '/' for an empty rest, as in direct mode.")
    w("map $tgw_rest $tgw_rest_or_slash {")
    w('    "" "/";')
    w("    default $tgw_rest;")
    w("}")
    w("")
    w("upstream twistedgw_authz {")
    w(f"    server {nginx.authz};")
    w("    keepalive 32;")
    w("}")
    for i, api in enumerate(config.apis):
        parts = urlsplit(api.backend)
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        port = parts.port or (443 if parts.scheme == "https" else 80)
        w("")
        w(f"upstream twistedgw_backend_{i} {{  # {api.label}")
        w(f"    server {shown}:{port};")
        w("    keepalive 32;")
        w("}")
    w("")
    w("server {")
    w(f"    listen {nginx.listen} ssl;")
    w(f"    server_name {nginx.server_name};")
    w(f"    ssl_certificate {_quote(str(config.tls.certificate))};")
    w(f"    ssl_certificate_key {_quote(str(config.tls.private_key))};")
    w(f"    ssl_protocols {' '.join(config.tls.protocols)};")
    w(f"    ssl_ciphers {_quote(config.tls.ciphers)};")
    w("    ssl_prefer_server_ciphers on;")
    w("    ssl_session_cache shared:twistedgw_tls:10m;")
    if config.tls.session_tickets:
        w("    ssl_session_tickets on;")
    else:
        w("    ssl_session_tickets off;")
    w("    # Ask for a certificate but never refuse the handshake for it: twistedgw judges it")
    w("    # per API. NGINX still refuses some failures itself (495: expired, not yet valid,")
    w("    # wrong purpose); error_page 495 hands those to twistedgw, as in direct mode.")
    w("    ssl_verify_client optional_no_ca;")
    w("    default_type application/json;  # the JSON errors NGINX answers itself")
    w("    ssl_verify_depth 10;")
    if truststore_file is not None:
        w(f"    ssl_client_certificate {_quote(truststore_file)};  # CA names offered to clients")
    w("    error_page 495 = @twistedgw_gateway;")
    w(f"    error_page 400 = {INTERNAL}/400;  # a request NGINX cannot parse: no URI to hand on")
    biggest = max(
        [limits.max_body_bytes, *(a.max_body_bytes or 0 for a in config.apis)]
    )
    w(f"    client_max_body_size {biggest};")
    w(f"    large_client_header_buffers 4 {max(limits.max_header_bytes, 1024)};")
    w(f"    client_header_timeout {max(1, int(limits.client_header_timeout))}s;")
    w(f"    keepalive_timeout {max(1, int(limits.idle_timeout))}s;")
    w(f"    send_timeout {max(1, int(limits.send_timeout))}s;")
    w("")
    w("    # NGINX's own 400 (a request line it cannot parse) as twistedgw's JSON.")
    w(f"    if ($uri = {INTERNAL}/400) {{")
    w("        return 400 " + _json(errors.bad_request("malformed request")) + ";")
    w("    }")
    w("    if ($twistedgw_gateway_path) {")
    w(f"        rewrite ^ {INTERNAL}/gateway last;")
    w("    }")
    w("")
    w("    location @twistedgw_gateway {")
    w(_gateway_proxy("        "))
    w("    }")
    w(f"    location = {INTERNAL}/gateway {{")
    w("        internal;")
    w(_gateway_proxy("        "))
    w("    }")
    for i, api in enumerate(config.apis):
        w(f"    location @twistedgw_413_{i} {{")
        w("        default_type application/json;")
        too_large = errors.payload_too_large(api.max_body_bytes or limits.max_body_bytes)
        w(f"        return 413 {_json(too_large)};")
        w("    }")
    w("    location @twistedgw_503 {")
    w("        default_type application/json;")
    w("        return 503 " + _json(errors.backend_unavailable("backend is unavailable")) + ";")
    w("    }")
    w("    location @twistedgw_504 {")
    w("        default_type application/json;")
    w("        return 504 " + _json(errors.backend_timeout("backend did not answer in time")) + ";")
    w("    }")
    stripped = _stripped_headers(config)
    identity_names = verdicts.identity_header_names(config)
    ordered = sorted(enumerate(config.apis), key=lambda item: len(item[1].context), reverse=True)
    root_api: tuple[int, ApiConfig] | None = None
    hosted = _hosted_contexts(config)
    rendered: set[str] = set()
    for i, api in ordered:
        if api.context in rendered:  # APIs sharing a context by hosts: one location
            continue
        rendered.add(api.context)
        if api.context == "/":
            root_api = (i, api)
            continue
        w("")
        w(f"    # {api.label}: {api.context} -> {api.backend}")
        w(f"    location ~* {_quote(_regex(api.context))} {{")
        _api_body(w, config, i, api, stripped, identity_names, lua, hosted)
        w("    }")
    w("")
    if root_api is not None:
        i, api = root_api
        w(f"    # {api.label}: / -> {api.backend}")
        w('    location ~ "^(?<tgw_rest>/.*)$" {')
        _api_body(w, config, i, api, stripped, identity_names, lua, hosted)
        w("    }")
    else:
        w("    # No API at this path: twistedgw answers 404 as in direct mode.")
        w("    location / {")
        w(_gateway_proxy("        "))
        w("    }")
    for i, api in enumerate(config.apis):
        if _whole_to_twistedgw(api, hosted) is not None:
            continue
        w("")
        w(f"    location = {INTERNAL}/authz/{i} {{  # {api.label}")
        w("        internal;")
        w(f"        proxy_pass http://twistedgw_authz{authz.path};")
        w("        proxy_method GET;")
        w("        proxy_http_version 1.1;")
        w("        proxy_pass_request_body off;")
        w('        proxy_set_header Content-Length "";')
        w('        proxy_set_header Connection "";')
        w("        proxy_set_header Host $http_host;")
        w(f"        proxy_set_header {authz.original_uri_header} $request_uri;")
        w(f"        proxy_set_header {authz.original_method_header} $request_method;")
        w(f"        proxy_set_header {lb_header} $ssl_client_escaped_cert;")
        w("        proxy_set_header X-SSL-Client-Verify $ssl_client_verify;")
        if verdicts.api_cacheable(config, api) and not lua:
            key_parts = [f"{i}:{api.label}", "$ssl_client_fingerprint"]
            key_parts += [f"$http_{h.replace('-', '_')}" for h in verdicts.key_headers(api)]
            if verdicts.per_operation(api):  # the operation decides the schemes
                key_parts += ["$request_method", "$request_uri"]
            w(f"        proxy_cache {CACHE_ZONE};")
            w(f"        proxy_cache_key {_quote('|'.join(key_parts))};")
            w("        proxy_cache_methods GET;")
            w("        proxy_ignore_headers Set-Cookie Vary Expires;")
            w("        # The answer's X-Accel-Expires says how long (never past cache_seconds")
            w("        # nor the certificate's expiry); refusals are never cached.")
        else:
            w("        # This API's verdicts are not cacheable: asked every time.")
        w("    }")
    w("}")
    w("")
    pem = _truststore_pem(config)
    return Rendered("\n".join(out), pem)


def _hosted_contexts(config: GatewayConfig) -> frozenset[str]:
    """Contexts where an API has ``hosts``: which API serves them depends on the Host."""
    return frozenset(api.context for api in config.apis if api.hosts is not None)


def _whole_to_twistedgw(api: ApiConfig, hosted: frozenset[str] = frozenset()) -> str | None:
    """Why NGINX must hand every request of ``api`` to twistedgw, or None (the fast path)."""
    if api.context in hosted:
        # NGINX's location (and the verdict cache key) would name one API for every host.
        return "APIs chosen by Host ([[apis]] hosts): twistedgw picks the API and judges it"
    if api.in_process:
        return ("The backend is a Twisted resource inside twistedgw (resource:): only "
                "twistedgw can serve it")
    if api.cors is not None:
        return ("CORS ([apis.cors], x-wso2-cors): twistedgw answers preflights before "
                "authentication and adds the Access-Control headers")
    if api.response_cache is not None:
        # proxy_cache writes its key in clear into each cache file: keyed by the caller's
        # token or cookie, it would put credentials on disk.
        return ("Response cache ([apis.response_cache], x-wso2-response-cache): twistedgw "
                "keeps answers per caller in memory")
    if api.tiers:
        return "Per-certificate or per-consumer tiers count every request"
    if api.sandbox is not None or any(
        op.production is not None or op.sandbox is not None for op in api.operations or ()
    ):
        return ("Sandbox or per-operation endpoints (x-wso2-sandbox-endpoints, x-wso2-production-"
                "endpoints on a resource): twistedgw picks the endpoint after authentication")
    if api.backend_auth is not None:
        return ("Backend credentials (securityConfig, backend_credentials): twistedgw sets the "
                "backend's Authorization, so the password stays out of NGINX's config")
    if api.transports != frozenset(("http", "https")):
        return ("Transports (x-wso2-transports): twistedgw judges the scheme the client used "
                "(NGINX's X-Forwarded-Proto)")
    if any(c.api_key_query is not None or c.auth_header.lower() != "authorization"
           for c in (api, *variants(api))):
        return ("An API key in the query or a bearer token in x-wso2-auth-header: twistedgw "
                "reads it and removes it before forwarding")
    if verdicts.uses_policy(api):
        return "Throttling policies (x-wso2-throttling-tier) count every request"
    if len(api.endpoints) > 1:
        return "Several backends: twistedgw picks one (load_balance/failover) and its Host"
    if verdicts.uses_bearer(api):
        return "Bearer tokens: twistedgw checks them and removes Authorization as configured"
    if verdicts.uses_basic(api):
        return "Basic authentication: twistedgw checks the password and removes Authorization"
    return None


def _api_body(
    write: Callable[[str], None],
    config: GatewayConfig,
    i: int,
    api: ApiConfig,
    stripped: Sequence[str],
    identity_names: Sequence[bytes],
    lua: bool = False,
    hosted: frozenset[str] = frozenset(),
) -> None:
    limits = config.limits
    reason = _whole_to_twistedgw(api, hosted)
    if reason is not None:
        write(f"        # {reason}: twistedgw forwards every request.")
        write(_gateway_proxy("        "))
        return
    body = api.max_body_bytes or limits.max_body_bytes
    timeout = api.backend_timeout or limits.backend_timeout
    path = urlsplit(api.backend).path
    target = f"{path}$tgw_rest" if path else "$tgw_rest_or_slash"
    if lua and verdicts.api_cacheable(config, api):
        answers = [((verdicts.SET_PREFIX + name).decode(), f"tgw_id_{n}")
                   for n, name in enumerate(identity_names)]
        answers.append(("x-consumer-name", "tgw_consumer"))
        for _answer, variable in answers:
            write(f'        set ${variable} "";')
        table = ", ".join(f'{{"{a}", "{v}"}}' for a, v in answers)
        keys = ", ".join(f'"{h}"' for h in verdicts.key_headers(api))
        per_op = "true" if verdicts.per_operation(api) else "false"
        write("        access_by_lua_block {")
        write(f'            require("twistedgw_verdicts").access("{i}", {{{keys}}}, {per_op},')
        write(f"                                                 {{{table}}})")
        write("        }")
    else:
        write(f"        auth_request {INTERNAL}/authz/{i};")
        for n, name in enumerate(identity_names):
            variable = (verdicts.SET_PREFIX + name).decode().replace("-", "_")
            write(f"        auth_request_set $tgw_id_{n} $upstream_http_{variable};")
        write("        auth_request_set $tgw_consumer $upstream_http_x_consumer_name;")
    write("        error_page 401 403 = @twistedgw_gateway;")
    write(f"        error_page 413 = @twistedgw_413_{i};")
    write("        error_page 502 503 = @twistedgw_503;")
    write("        error_page 504 = @twistedgw_504;")
    write(f"        client_max_body_size {body};")
    scheme = "https" if api.backend.startswith("https://") else "http"
    # The backend path, then the rest after the context (the query follows by itself);
    # a fixed proxy_pass keeps the upstream lookup out of the per-request work.
    write(f"        rewrite ^ {target} break;")
    write(f"        proxy_pass {scheme}://twistedgw_backend_{i};")
    write("        proxy_http_version 1.1;")
    write(f"        proxy_connect_timeout {max(1, int(limits.backend_connect_timeout))}s;")
    write(f"        proxy_read_timeout {max(1, int(timeout))}s;")
    write(f"        proxy_send_timeout {max(1, int(timeout))}s;")
    write("        proxy_intercept_errors off;")
    write('        proxy_set_header Connection "";')
    write(f"        proxy_set_header Host {_quote(_host_header(api.backend))};")
    write("        proxy_set_header X-Forwarded-For $remote_addr;")
    write("        proxy_set_header X-Forwarded-Proto https;")
    write("        proxy_set_header X-Forwarded-Host $http_host;")
    for header in stripped:
        if header.encode() not in identity_names and header.encode() != idforward.CONSUMER_NAME:
            write(f'        proxy_set_header {header} "";')
    write("        proxy_set_header X-Consumer-Name $tgw_consumer;  # empty: removed")
    for header in method_override_headers(api):  # operations differ in security
        write(f'        proxy_set_header {header} "";')
    for n, name in enumerate(identity_names):
        write(f"        proxy_set_header {name.decode()} $tgw_id_{n};")
    for line in _backend_tls(config, api, "        "):
        write(line)


def _truststore_pem(config: GatewayConfig) -> bytes | None:
    if config.tls.truststore is None:
        return None
    from cryptography.hazmat.primitives import serialization

    from twistedgw.tls import _pki as pki

    try:
        store = pki.load_truststore(config.tls.truststore, config.tls.truststore_password)
    except pki.PkiError:
        return None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in store.certificates)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()),
        None,
    )


def nginx_test(include: Path, modules: Sequence[str] = ()) -> tuple[bool, str]:
    """``nginx -t`` on a minimal nginx.conf whose ``http {}`` holds only ``include``.

    ``nginx -t`` creates the ``proxy_cache_path`` directory; the test runs on a copy
    whose cache lives in a temporary directory, so checking needs no privilege and
    leaves nothing behind (the real directory is created when NGINX starts).
    """
    binary = nginx_binary()
    if binary is None:
        return False, "nginx is not installed (needed for --check)"
    with tempfile.TemporaryDirectory(prefix="twistedgw-nginx-") as tmp:
        d = Path(tmp)
        text = re.sub(
            r"^proxy_cache_path \S+", f"proxy_cache_path {d / 'cache'}", include.read_text(),
            flags=re.MULTILINE,
        )
        include = d / include.name
        include.write_text(text)
        temps = "\n".join(
            f"    {kind}_temp_path {d / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = d / "nginx.conf"
        loads = "".join(f"load_module {m};\n" for m in modules)
        conf.write_text(
            f"{loads}pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'};\n"
            f"events {{ }}\nhttp {{\n    access_log off;\n{temps}\n"
            f"    include {include.resolve()};\n}}\n"
        )
        result = subprocess.run(
            [binary, "-t", "-q", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
            capture_output=True,
            text=True,
        )
    return result.returncode == 0, (result.stderr or result.stdout).strip()


#: Debian's libnginx-mod-http-lua (and the NDK it needs), for ``--check`` of ``--variant lua``.
LUA_MODULES = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
)
