"""The include for NGINX's ``http {}``: maps, upstreams, the server and its locations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from twistedgw import errors
from twistedgw.app.nginx._checks import NginxConfigError, check
from twistedgw.app.nginx._lua import lua_source
from twistedgw.app.nginx._text import (
    CACHE_ZONE,
    CLEAN_TARGET,
    INTERNAL,
    context_regex,
    host_header,
    json_body,
    quote,
)
from twistedgw.config import ApiConfig, GatewayConfig, variants
from twistedgw.http import _verdicts as verdicts
from twistedgw.identity import _forwarding as idforward
from twistedgw.pipeline import API_KEY_HEADER, method_override_headers


@dataclass(frozen=True)
class Rendered:
    text: str
    truststore_pem: bytes | None  # the truststore as one PEM bundle (ssl_client_certificate)


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
            # twistedgw judges at head time: the body follows only once it is read.
            "proxy_request_buffering off;",
        )
    )


#: Every status a refusal of the direct mode may have (errors.py): @twistedgw_refused
#: answers each with the JSON the authz endpoint sent (verdicts.refusal_for_nginx).
REFUSAL_STATUSES = (400, 401, 403, 404, 405, 413, 421, 429, 500, 502, 503, 504)


def _refused_location(w: Callable[[str], None]) -> None:
    """The auth_request variant's refusals: the direct mode's status, JSON and headers
    from the authz answer (auth_request_set), sent by NGINX before it reads any body.
    An answer without them (a refusal about the subrequest itself) goes to twistedgw."""
    w("    location @twistedgw_refused {")
    w("        default_type application/json;")
    w("        add_header WWW-Authenticate $tgw_challenge always;  # empty: not sent")
    w("        add_header Retry-After $tgw_retry_after always;")
    w("        add_header Allow $tgw_allow always;")
    for status in REFUSAL_STATUSES:
        w(f"        if ($tgw_status = {status}) {{")
        w(f"            return {status} $tgw_error;")
        w("        }")
    w(_gateway_proxy("        "))
    w("    }")


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
        f"proxy_ssl_trusted_certificate {quote(trusted)};",
        "proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        "proxy_ssl_session_reuse on;",
    ]
    name = tls.server_name or urlsplit(api.backend).hostname or ""
    lines.append(f"proxy_ssl_name {quote(name)};")
    lines.append("proxy_ssl_server_name on;")
    if tls.certificate is not None and tls.private_key is not None:
        lines.append(f"proxy_ssl_certificate {quote(str(tls.certificate))};")
        lines.append(f"proxy_ssl_certificate_key {quote(str(tls.private_key))};")
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
        w(f"lua_package_path {quote(str(lua_dir or lua_source().parent) + '/?.lua;;')};")
    else:
        w(f"proxy_cache_path {nginx.cache_path} levels=1:2 keys_zone={CACHE_ZONE}:10m")
        w("                 max_size=256m inactive=10m use_temp_path=off;")
    w("")
    w("# Raw request targets that twistedgw's path normalisation leaves unchanged.")
    w("map $request_uri $twistedgw_gateway_path {")
    w(f"    {quote('~' + CLEAN_TARGET)} 0;")
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
    w("    server_tokens off;  # Server: nginx, without its version")
    w(f"    ssl_certificate {quote(str(config.tls.certificate))};")
    w(f"    ssl_certificate_key {quote(str(config.tls.private_key))};")
    w(f"    ssl_protocols {' '.join(config.tls.protocols)};")
    w(f"    ssl_ciphers {quote(config.tls.ciphers)};")
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
        w(f"    ssl_client_certificate {quote(truststore_file)};  # CA names offered to clients")
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
    w("        return 400 " + json_body(errors.bad_request("malformed request")) + ";")
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
        w(f"        return 413 {json_body(too_large)};")
        w("    }")
    hosted = _hosted_contexts(config)
    if any(_whole_to_twistedgw(api, hosted) is None
           and not (lua and verdicts.api_cacheable(config, api)) for api in config.apis):
        _refused_location(w)  # its variables exist where auth_request_set names them
    w("    location @twistedgw_503 {")
    w("        default_type application/json;")
    w("        return 503 " + json_body(errors.backend_unavailable("backend is unavailable")) + ";")
    w("    }")
    w("    location @twistedgw_504 {")
    w("        default_type application/json;")
    timeout = errors.backend_timeout("backend did not answer in time")
    w("        return 504 " + json_body(timeout) + ";")
    w("    }")
    stripped = _stripped_headers(config)
    identity_names = verdicts.identity_header_names(config)
    ordered = sorted(enumerate(config.apis), key=lambda item: len(item[1].context), reverse=True)
    root_api: tuple[int, ApiConfig] | None = None
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
        w(f"    location ~* {quote(context_regex(api.context))} {{")
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
        w(f"        proxy_set_header {verdicts.ASKER.decode()} answer;  # refusals NGINX sends")
        reference = quote(verdicts.api_reference(api))
        w(f"        proxy_set_header {verdicts.EXPECTED_API.decode()} {reference};")
        if verdicts.api_cacheable(config, api) and not lua:
            key_parts = [f"{i}:{api.label}", "$ssl_client_fingerprint"]
            key_parts += [f"$http_{h.replace('-', '_')}" for h in verdicts.key_headers(api)]
            if verdicts.per_operation(api):  # the operation decides the schemes
                key_parts += ["$request_method", "$request_uri"]
            w(f"        proxy_cache {CACHE_ZONE};")
            w(f"        proxy_cache_key {quote('|'.join(key_parts))};")
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
        for variable, answer in (("status", verdicts.STATUS), ("error", verdicts.ERROR),
                                 ("challenge", b"www-authenticate"),
                                 ("retry_after", b"retry-after"), ("allow", b"allow")):
            upstream = answer.decode().replace("-", "_")
            write(f"        auth_request_set $tgw_{variable} $upstream_http_{upstream};")
        write("        error_page 401 403 = @twistedgw_refused;")
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
    write(f"        proxy_set_header Host {quote(host_header(api.backend))};")
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
