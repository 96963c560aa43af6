"""The locations of a server block: one per API context (NGINX's path or the gateway
path), the internal authz locations, and the named locations that answer errors."""

from __future__ import annotations

from urllib.parse import urlsplit

from twistedgw import errors
from twistedgw.app.nginx._hosts import hosted_contexts, location_checks, misdirected_location
from twistedgw.app.nginx._lua import lua_access, lua_retry
from twistedgw.app.nginx._plan import ApiPlan
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import (
    CACHE_ZONE,
    INTERNAL,
    context_regex,
    contexts_regex,
    host_header,
    json_body,
    quote,
)
from twistedgw.app.nginx._upstreams import upstream_name
from twistedgw.http import verdicts
from twistedgw.identity import forwarding as idforward
from twistedgw.pipeline import method_override_headers

#: Every status a refusal of the direct mode may have (errors.py): @twistedgw_refused
#: answers each with the JSON the authz endpoint sent (verdicts.refusal_for_nginx).
REFUSAL_STATUSES = (400, 401, 403, 404, 405, 413, 421, 429, 500, 502, 503, 504)
I1, I2, I3 = "    ", "        ", "            "


def websockets(site: Site) -> bool:
    """Whether any API accepts WebSocket handshakes (http/_upgrade.py)."""
    return any(
        p.api.websocket or any(op.websocket for op in p.api.operations or ())
        for p in site.plans
    )


def upgrade_lines(site: Site) -> tuple[str, ...]:
    """A WebSocket handshake's Upgrade and Connection passed on (the maps of _render.py),
    and ``websocket_idle_timeout`` as NGINX's timeouts: NGINX has one pair for the response
    and the upgraded connection, so they bound both where they are set."""
    idle = max(1, int(site.config.limits.websocket_idle_timeout))
    return (
        "proxy_set_header Upgrade $tgw_upgrade;",
        "proxy_set_header Connection $tgw_connection;",
        f"proxy_read_timeout {idle}s;",
        f"proxy_send_timeout {idle}s;",
    )


def gateway_proxy(site: Site, indent: str) -> None:
    """Hand the request, as the client sent it, to twistedgw's full gateway (with the
    WebSocket upgrade, when an API accepts them: twistedgw judges and relays it)."""
    lb_header = site.config.mutual_ssl.certificate_header
    upgrade = upgrade_lines(site) if websockets(site) else ('proxy_set_header Connection "";',)
    for line in (
        "proxy_pass http://twistedgw_authz$request_uri;",
        "proxy_http_version 1.1;",
        *upgrade,
        "proxy_set_header Host $http_host;",
        f"proxy_set_header {lb_header} {site.client_cert};",
        "proxy_set_header X-SSL-Client-Verify $ssl_client_verify;",
        "proxy_set_header X-Forwarded-For $remote_addr;  # twistedgw's peer is the socket",
        "proxy_set_header X-Forwarded-Proto https;",
        "proxy_intercept_errors off;",
        "proxy_buffering off;",
        # twistedgw judges at head time: the body follows only once it is read.
        "proxy_request_buffering off;",
    ):
        site.w(indent + line)


def shared_locations(site: Site) -> None:
    """The gateway path's locations and the named locations errors go to."""
    w = site.w
    limits = site.config.limits
    w(f"{I1}location @twistedgw_gateway {{")
    gateway_proxy(site, I2)
    w(f"{I1}}}")
    w(f"{I1}location = {INTERNAL}/gateway {{")
    w(f"{I2}internal;")
    location_checks(site, I2)
    gateway_proxy(site, I2)
    w(f"{I1}}}")
    for plan in site.plans:
        api = plan.api
        w(f"{I1}location @twistedgw_413_{plan.index} {{")  # before any access phase
        w(f"{I2}default_type application/json;")
        location_checks(site, I2)
        response_headers(site, plan, I2)
        too_large = errors.payload_too_large(api.max_body_bytes or limits.max_body_bytes)
        w(f"{I2}return 413 {json_body(too_large)};")
        w(f"{I1}}}")
    if any(p.nginx_path and not p.lua for p in site.plans):
        _refused_location(site)  # its variables exist where auth_request_set names them
    misdirected_location(site)
    retry_locations(site)
    _error_locations(site, "")
    for plan in site.plans:  # the API's response headers on its errors too (direct mode)
        if plan.nginx_path and plan.headers.response:
            if not plan.lua:
                _refused_location(site, plan)
            _error_locations(site, f"_{plan.index}", plan)


def error_suffix(plan: ApiPlan) -> str:
    """The API's own error locations when its response headers apply to errors too."""
    return f"_{plan.index}" if plan.headers.response else ""


def response_headers(site: Site, plan: ApiPlan | None, indent: str) -> None:
    """``response-headers``: hide the backend's, add the plugin's (on errors too)."""
    if plan is None:
        return
    headers = plan.headers
    for name in headers.response_remove:
        site.w(f"{indent}proxy_hide_header {name};")
    for name, value in headers.response_set:
        site.w(f"{indent}proxy_hide_header {name};")
        site.w(f"{indent}add_header {name} {quote(value)} always;")


def _error_locations(site: Site, suffix: str, plan: ApiPlan | None = None) -> None:
    w = site.w
    w(f"{I1}location @twistedgw_503{suffix} {{")
    w(f"{I2}default_type application/json;")
    response_headers(site, plan, I2)
    w(f"{I2}return 503 {json_body(errors.backend_unavailable('backend is unavailable'))};")
    w(f"{I1}}}")
    w(f"{I1}location @twistedgw_504{suffix} {{")
    w(f"{I2}default_type application/json;")
    response_headers(site, plan, I2)
    timeout = errors.backend_timeout("backend did not answer in time")
    w(f"{I2}return 504 {json_body(timeout)};")
    w(f"{I1}}}")


def _refused_location(site: Site, plan: ApiPlan | None = None) -> None:
    """The auth_request variant's refusals: the direct mode's status, JSON and headers
    from the authz answer (auth_request_set), sent by NGINX before it reads any body.
    An answer without them (a refusal about the subrequest itself) goes to twistedgw."""
    w = site.w
    w(f"{I1}location @twistedgw_refused{error_suffix(plan) if plan else ''} {{")
    w(f"{I2}default_type application/json;")
    response_headers(site, plan, I2)
    w(f"{I2}add_header WWW-Authenticate $tgw_challenge_added always;  # empty: not sent")
    w(f"{I2}add_header Retry-After $tgw_retry_after always;")
    w(f"{I2}add_header Allow $tgw_allow always;")
    for status in REFUSAL_STATUSES:
        w(f"{I2}if ($tgw_status = {status}) {{")
        w(f"{I3}return {status} $tgw_error;")
        w(f"{I2}}}")
    gateway_proxy(site, I2)
    w(f"{I1}}}")


def _extending(context: str, contexts: list[str]) -> list[str]:
    """The contexts that extend ``context`` by whole segments (all of them for "/")."""
    if context == "/":
        return [c for c in contexts if c != "/"]
    return [c for c in contexts if c.startswith(context + "/")]


def _guard(site: Site, context: str, contexts: list[str]) -> None:
    """Prefix locations are case-sensitive where twistedgw's contexts are not: a path that
    names a longer context in other letters (``/Pets/Cats/1`` under ``/pets``) reaches
    the shorter context's location but is twistedgw's longer context's request, so it
    takes the gateway path (before any access-phase work: a rewrite, not a location)."""
    longer = _extending(context, contexts)
    if not longer:
        return
    site.w(f"{I2}if ($uri ~* {quote(contexts_regex(longer))}) {{  # another context's, in "
           "other letters")
    site.w(f"{I3}rewrite ^ {INTERNAL}/gateway last;")
    site.w(f"{I2}}}")


def context_locations(site: Site) -> None:
    """Two prefix locations per context, ``^~ /ctx/`` and ``= /ctx`` (in lower case:
    twistedgw's contexts are case-insensitive, so a path in other letters falls through
    to the catch-all and takes the gateway path); the root context's API (or a catch-all
    that hands unknown paths to twistedgw: 404) in ``location /``. Prefix locations cost
    no regex per request, and ``proxy_pass`` with a URI replaces the context with the
    backend's path. A context some API serves only for its ``hosts`` picks the API by
    ``$host`` (a map, twistedgw's rule) and goes on in that API's internal location."""
    w = site.w
    hosted = hosted_contexts(site)
    contexts = sorted({p.api.context.lower() for p in site.plans}, key=len, reverse=True)
    root: ApiPlan | None = None
    rendered: set[str] = set()
    for plan in sorted(site.plans, key=lambda p: len(p.api.context), reverse=True):
        api = plan.api
        context = api.context.lower()
        if context in rendered:  # APIs sharing a context by hosts: one location
            continue
        rendered.add(context)
        if context == "/":
            root = plan
            continue
        for exact in (False, True):
            w()
            where = f"= {quote(context)}" if exact else f"^~ {quote(context + '/')}"
            if context in hosted:
                # The context's first API with hosts is served here (no second location
                # search, no capture); a host of another goes on in its own location.
                first = _first_hosted(site, context)
                n = hosted[context]
                if not exact:
                    w(f"{I1}# {api.context}: the API is chosen by host ($tgw_ctx_{n}); "
                      f"here {first.api.label}")
                w(f"{I1}location {where} {{")
                if not exact:
                    _guard(site, context, contexts)
                capture = "^" if exact else quote(context_regex(context))
                w(f'{I2}if ($tgw_ctx_{n} != "{first.index}") {{')
                w(f"{I3}rewrite {capture} {INTERNAL}/api/$tgw_ctx_{n} last;")
                w(f"{I2}}}")
                api_body(site, first, "exact" if exact else "prefix")
                w(f"{I1}}}")
                continue
            if not exact:
                w(f"{I1}# {api.label}: {api.context} -> {api.backend}")
            w(f"{I1}location {where} {{")
            if not exact:
                _guard(site, context, contexts)
            api_body(site, plan, "exact" if exact else "prefix")
            w(f"{I1}}}")
    w()
    if root is not None and "/" in hosted:
        w(f"{I1}# /: the API is chosen by host ($tgw_ctx_{hosted['/']})")
        w(f"{I1}location / {{")
        _guard(site, "/", contexts)
        w(f'{I2}rewrite "^(?<tgw_rest>/.*)$" {INTERNAL}/api/$tgw_ctx_{hosted["/"]} last;')
        w(f"{I1}}}")
    elif root is not None:
        w(f"{I1}# {root.api.label}: / -> {root.api.backend}")
        w(f"{I1}location / {{")
        _guard(site, "/", contexts)
        api_body(site, root, "root")
        w(f"{I1}}}")
    else:
        w(f"{I1}# No API at this path: twistedgw answers 404 as in direct mode.")
        w(f"{I1}location / {{")
        location_checks(site, I2)
        gateway_proxy(site, I2)
        w(f"{I1}}}")
    if not hosted:
        return
    for plan in site.plans:  # the APIs of hosted contexts, reached by the rewrite above
        if plan.api.context.lower() not in hosted:
            continue
        w()
        w(f"{I1}# {plan.api.label}: {plan.api.context} -> {plan.api.backend}, hosts "
          f"{', '.join(plan.api.hosts or ('(any other)',))}")
        w(f"{I1}location = {INTERNAL}/api/{plan.index} {{")
        w(f"{I2}internal;")
        api_body(site, plan, "captured")
        w(f"{I1}}}")
    w(f"{I1}location = {INTERNAL}/api/none {{  # no API serves this host: twistedgw's 404")
    w(f"{I2}internal;")
    location_checks(site, I2)
    gateway_proxy(site, I2)
    w(f"{I1}}}")


def _first_hosted(site: Site, context: str) -> ApiPlan:
    """The first API with ``hosts`` in a hosted context (the first its map names)."""
    return next(p for p in site.plans if p.api.context.lower() == context
                and p.api.hosts is not None)


def _backend_uri(site: Site, plan: ApiPlan, where: str) -> tuple[str | None, str]:
    """How the request's path becomes the backend's: the direct mode sends the backend
    URL's path, then the rest of the path after the context (``/`` when both are empty),
    then the query. Returns (a ``rewrite`` line or None, the URI part of ``proxy_pass``).

    ``where``: ``prefix`` (``^~ /ctx/``: proxy_pass's URI replaces the context's prefix),
    ``exact`` (``= /ctx``: the rest is empty), ``root`` (``location /``: the rest is the
    whole path), ``captured`` (a hosted API's internal location: ``$tgw_rest`` was
    captured before the rewrite that brought the request there). With several backends
    picked by Lua, ``proxy_pass`` names a variable and takes no URI: a rewrite does it."""
    path = urlsplit(plan.api.backend).path
    context = plan.api.context.lower()
    if where == "captured":
        return (f"rewrite ^ {quote(path + '$tgw_rest')} break;" if path
                else "rewrite ^ $tgw_rest_or_slash break;"), ""
    if where == "exact":
        target = path or "/"
        return (f"rewrite ^ {quote(target)} break;", "") if plan.peers else (None, target)
    if where == "root":
        if plan.peers:
            return (f"rewrite ^ {quote(path + '$uri')} break;" if path else None), ""
        return None, (path + "/" if path else "")
    if plan.peers:
        pattern = quote("^" + _literal(context) + "(/.*)$")
        return f"rewrite {pattern} {quote(path + '$1')} break;", ""
    return None, path + "/"


def _literal(text: str) -> str:
    return "".join(c if c.isalnum() or c in "/_" else "\\" + c for c in text)


def api_body(site: Site, plan: ApiPlan, where: str = "prefix") -> None:
    """An API's location: ask twistedgw (or the verdict cache), then proxy to the backend
    with the identity headers from the answer; or hand everything to twistedgw."""
    w = site.w
    config, api, i = site.config, plan.api, plan.index
    limits = config.limits
    if plan.gateway is not None:
        w(f"{I2}# {plan.gateway}: twistedgw forwards every request.")
        location_checks(site, I2)
        gateway_proxy(site, I2)
        return
    if not plan.lua:  # Lua checks the Host and SNI per connection
        location_checks(site, I2)
    body = api.max_body_bytes or limits.max_body_bytes
    if len(api.endpoints) > 1 and not plan.peers:
        # Stock NGINX would retry an idempotent request that has a body on the next
        # backend; direct mode does not (unless nothing was sent): twistedgw takes it.
        w(f"{I2}if ($tgw_body_retry) {{")
        w(f"{I3}rewrite ^ {INTERNAL}/gateway last;")
        w(f"{I2}}}")
    if plan.lua:
        lua_access(site, plan, I2)
    else:
        w(f"{I2}auth_request {INTERNAL}/authz/{i};")
        for n, name in enumerate(site.identity_names):
            variable = (verdicts.SET_PREFIX + name).decode().replace("-", "_")
            w(f"{I2}auth_request_set $tgw_id_{n} $upstream_http_{variable};")
        w(f"{I2}auth_request_set $tgw_consumer $upstream_http_x_consumer_name;")
        if verdicts.authorization_rule(api) == "answer":
            w(f"{I2}auth_request_set $tgw_authz_rm $upstream_http_x_twistedgw_authorization;")
        for n, declared in enumerate(plan.headers.declared):
            upstream = (verdicts.SET_PREFIX.decode() + declared.lower()).replace("-", "_")
            w(f"{I2}auth_request_set $tgw_ph_{n} $upstream_http_{upstream};")
        for variable, answer in (("status", verdicts.STATUS), ("error", verdicts.ERROR),
                                 ("challenge", b"www-authenticate"),
                                 ("retry_after", b"retry-after"), ("allow", b"allow")):
            upstream = answer.decode().replace("-", "_")
            w(f"{I2}auth_request_set $tgw_{variable} $upstream_http_{upstream};")
        w(f"{I2}error_page 401 403 = @twistedgw_refused{error_suffix(plan)};")
    w(f"{I2}error_page 413 = @twistedgw_413_{i};")
    # NGINX's own 400 here (a malformed chunked body, read after the verdict) as the
    # server's: this location's error_page lines replace the server block's.
    w(f"{I2}error_page 400 = {INTERNAL}/400;")
    e = error_suffix(plan)
    if plan.peers:  # Lua tries the next backend where direct mode would
        w(f"{I2}recursive_error_pages on;  # each next try may fail too")
        w(f"{I2}error_page 502 504 = @twistedgw_retry_{i};")
        w(f"{I2}error_page 503 = @twistedgw_503{e};")
    else:
        w(f"{I2}error_page 502 503 = @twistedgw_503{e};")
        w(f"{I2}error_page 504 = @twistedgw_504{e};")
    w(f"{I2}client_max_body_size {body};")
    # The backend path, then the rest after the context (the query follows by itself);
    # a fixed proxy_pass keeps the upstream lookup out of the per-request work.
    rewrite, uri = _backend_uri(site, plan, where)
    if rewrite is not None:
        w(f"{I2}{rewrite}")
    proxy_to_backend(site, plan, I2, uri)


def retry_locations(site: Site) -> None:
    """The Lua variant's next try, after a backend failed before answering (502/504):
    Lua marks it down for 30 s and, where direct mode would retry (nothing was sent, or
    an idempotent request without a body), sends the request to the next backend."""
    w = site.w
    for plan in site.plans:
        if not plan.peers:
            continue
        w(f"{I1}location @twistedgw_retry_{plan.index} {{  # {plan.api.label}")
        w(f"{I2}recursive_error_pages on;")
        w(f"{I2}error_page 502 504 = @twistedgw_retry_{plan.index};")
        w(f"{I2}error_page 503 = @twistedgw_503{error_suffix(plan)};")
        lua_retry(site, plan, I2)
        proxy_to_backend(site, plan, I2)
        w(f"{I1}}}")


def proxy_to_backend(site: Site, plan: ApiPlan, indent: str, uri: str = "") -> None:
    """``proxy_pass`` to the API's backend (Lua's pick, with its own Host, when it has
    several) and the headers the direct mode sends it."""
    w = site.w
    config, api = site.config, plan.api
    limits = config.limits
    timeout = api.backend_timeout or limits.backend_timeout
    scheme = "https" if api.backend.startswith("https://") else "http"
    if plan.peers:
        w(f"{indent}proxy_pass {scheme}://$tgw_peer;")
    else:
        target = f"{scheme}://{upstream_name(plan)}{uri}"
        w(f"{indent}proxy_pass {quote(target) if uri else target};")
    w(f"{indent}proxy_http_version 1.1;")
    w(f"{indent}proxy_connect_timeout {max(1, int(limits.backend_connect_timeout))}s;")
    if api.websocket:  # WebSocket upgrades ride NGINX's path too
        for line in upgrade_lines(site):
            w(f"{indent}{line}")
    else:
        w(f"{indent}proxy_read_timeout {max(1, int(timeout))}s;")
        w(f"{indent}proxy_send_timeout {max(1, int(timeout))}s;")
        w(f'{indent}proxy_set_header Connection "";')
    w(f"{indent}proxy_intercept_errors off;")
    if plan.peers:
        w(f"{indent}proxy_set_header Host $tgw_peer_host;")
        w(f"{indent}proxy_next_upstream off;  # Lua decides (direct mode's retry rule)")
    else:
        w(f"{indent}proxy_set_header Host {quote(host_header(api.backend))};")
    # A request-headers plugin that sets one of these adds a second, as in direct mode.
    w(f"{indent}proxy_set_header X-Forwarded-For $remote_addr;")
    w(f"{indent}proxy_set_header X-Forwarded-Proto https;")
    w(f"{indent}proxy_set_header X-Forwarded-Host $http_host;")
    names = site.identity_names
    for header in site.stripped:
        if header.encode() not in names and header.encode() != idforward.CONSUMER_NAME:
            w(f'{indent}proxy_set_header {header} "";')
    w(f"{indent}proxy_set_header X-Consumer-Name $tgw_consumer;  # empty: removed")
    for header in method_override_headers(api):  # operations differ in security
        w(f'{indent}proxy_set_header {header} "";')
    rule = verdicts.authorization_rule(api)
    if rule == "strip":  # the bearer token is for twistedgw (forward_authorization = false)
        w(f'{indent}proxy_set_header Authorization "";')
    elif rule == "answer":  # removed where the judged operation's pipeline removes it
        w(f"{indent}proxy_set_header Authorization $tgw_authorization;")
    for n, name in enumerate(names):
        w(f"{indent}proxy_set_header {name.decode()} $tgw_id_{n};")
    headers = plan.headers
    for header, value in headers.request:  # request-headers: fixed values ("" removes)
        w(f"{indent}proxy_set_header {header} {quote(value)};")
    for n, header in enumerate(headers.declared):  # a plugin's, from the authz answer
        w(f"{indent}proxy_set_header {header} $tgw_ph_{n};")
    response_headers(site, plan, indent)
    _backend_tls(site, plan, indent)


def _backend_tls(site: Site, plan: ApiPlan, indent: str) -> None:
    api = plan.api
    if not api.backend.startswith("https://"):
        return
    tls = site.config.backend_tls_for(api)
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
    if tls.server_name:
        lines.append(f"proxy_ssl_name {quote(tls.server_name)};")
    elif plan.peers:  # each backend's own name (Lua sets it with the backend)
        lines.append("proxy_ssl_name $tgw_peer_name;")
    else:
        lines.append(f"proxy_ssl_name {quote(urlsplit(api.backend).hostname or '')};")
    lines.append("proxy_ssl_server_name on;")
    if tls.certificate is not None and tls.private_key is not None:
        lines.append(f"proxy_ssl_certificate {quote(str(tls.certificate))};")
        lines.append(f"proxy_ssl_certificate_key {quote(str(tls.private_key))};")
    for line in lines:
        site.w(indent + line)


def authz_locations(site: Site) -> None:
    """The internal location each NGINX-path API asks twistedgw through."""
    w = site.w
    config = site.config
    authz = config.authz
    lb_header = config.mutual_ssl.certificate_header
    assert authz is not None and lb_header is not None
    for plan in site.plans:
        if not plan.nginx_path or plan.lua:  # Lua asks on a cosocket of its own
            continue
        api, i = plan.api, plan.index
        w()
        w(f"{I1}location = {INTERNAL}/authz/{i} {{  # {api.label}")
        w(f"{I2}internal;")
        w(f"{I2}proxy_pass http://twistedgw_authz{authz.path};")
        w(f"{I2}proxy_method GET;")
        w(f"{I2}proxy_http_version 1.1;")
        w(f"{I2}proxy_pass_request_body off;")
        w(f'{I2}proxy_set_header Content-Length "";')
        w(f'{I2}proxy_set_header Connection "";')
        w(f"{I2}proxy_set_header Host $http_host;")
        w(f"{I2}proxy_set_header {authz.original_uri_header} $request_uri;")
        w(f"{I2}proxy_set_header {authz.original_method_header} $request_method;")
        w(f"{I2}proxy_set_header {lb_header} {site.client_cert};")
        w(f"{I2}proxy_set_header X-SSL-Client-Verify $ssl_client_verify;")
        w(f"{I2}proxy_set_header X-Forwarded-For $remote_addr;  # the caller, not its claim")
        w(f"{I2}proxy_set_header X-Forwarded-Proto https;")
        w(f"{I2}proxy_set_header {verdicts.ASKER.decode()} {quote(plan.asker_header)};")
        reference = quote(verdicts.api_reference(api))
        w(f"{I2}proxy_set_header {verdicts.EXPECTED_API.decode()} {reference};")
        if plan.cached and not plan.lua:
            key_parts = [f"{i}:{api.label}", "$ssl_client_fingerprint"]
            key_parts += [f"$http_{h.replace('-', '_')}" for h in verdicts.key_headers(api)]
            if verdicts.per_operation(api):  # the operation decides the schemes
                key_parts += ["$request_method", "$request_uri"]
            w(f"{I2}proxy_cache {CACHE_ZONE};")
            w(f"{I2}proxy_cache_key {quote('|'.join(key_parts))};")
            w(f"{I2}proxy_cache_methods GET;")
            w(f"{I2}proxy_ignore_headers Set-Cookie Vary Expires;")
            w(f"{I2}# The answer's X-Accel-Expires says how long (never past cache_seconds")
            w(f"{I2}# nor the certificate's expiry); refusals are never cached.")
            open_verdict_files(site, I2)
        else:
            w(f"{I2}# Not cached: {plan.uncached_why}.")
        w(f"{I1}}}")


#: Verdict files an NGINX worker keeps open (``open_file_cache``'s ``max``) and how long
#: one unused stays open (``inactive``): the descriptors count against the worker's
#: ``worker_rlimit_nofile`` beside its connections.
OPEN_VERDICT_FILES = 1000
OPEN_VERDICT_INACTIVE = "30s"


def open_verdict_files(site: Site, indent: str) -> None:
    """Keep a cached verdict's file open between hits (``open_file_cache``): without it
    NGINX opens, stats and closes the file on every hit (4 of a warm request's 13 system
    calls, kernel time the bare proxy does not spend). Safe for verdicts: NGINX's file
    cache hands the descriptor on only while its entry names the same file (its inode:
    an answer stored again is a new file, opened anew), and reads and checks the
    answer's own validity from the file on every hit, so a kept descriptor never
    serves a verdict past its ``X-Accel-Expires``; a reload of NGINX starts workers
    with no descriptor kept."""
    site.w(f"{indent}open_file_cache max={OPEN_VERDICT_FILES} "
           f"inactive={OPEN_VERDICT_INACTIVE};  # the verdict file stays open between hits")
