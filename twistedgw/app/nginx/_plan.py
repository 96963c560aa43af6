"""Which way each API's requests take through NGINX, and why: the one place that decides
(the renderer follows it; ``nginx-config`` prints it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twistedgw.app.nginx._plugins import NONE, Headers, plugin_headers
from twistedgw.config import ApiConfig, GatewayConfig, Mode, variants
from twistedgw.http import verdicts

#: What the rendered config tells the authz endpoint it does with the answer.
AUTH_REQUEST_ASKER = verdicts.Asker(answer=True)
LUA_ASKER = verdicts.Asker(answer=True, token_key=True, tiers=True)
#: The Lua variant where Lua cannot spend the tier buckets (Redis over TLS): twistedgw
#: spends them, one decision per request.
LUA_ASKER_NO_TIERS = verdicts.Asker(answer=True, token_key=True, tiers=False)


@dataclass(frozen=True)
class ApiPlan:
    """One API's way: NGINX's path (NGINX proxies it, asking twistedgw for verdicts) or
    the gateway path (NGINX hands every request to twistedgw), and why."""

    index: int
    api: ApiConfig
    gateway: str | None  # why every request goes to twistedgw; None: NGINX's path
    lua: bool = False  # access_by_lua (the Lua variant), else auth_request
    cached: bool = False  # verdicts are cached (else asked on every request)
    uncached_why: str = ""
    peers: bool = False  # several backends, picked per request by Lua (direct mode's order)
    tiers: str = ""  # Lua spends the tier buckets: "dict" (lua_shared_dict) or "redis"
    headers: Headers = NONE  # what NGINX does for the API's header plugins
    asker: verdicts.Asker = AUTH_REQUEST_ASKER  # what its authz location says it does
    drop_underscored: bool = False  # Lua removes headers whose names hold "_" (see below)

    @property
    def asker_header(self) -> str:
        """``X-Twistedgw-Nginx``'s value for this API's authz location."""
        a = self.asker
        return ",".join(w for w, on in (("answer", a.answer), ("token-key", a.token_key),
                                        ("tiers", a.tiers)) if on)

    @property
    def nginx_path(self) -> bool:
        return self.gateway is None

    def describe(self, config: GatewayConfig) -> str:
        """One line: the API, its context, its way and why."""
        head = f"{self.api.label} ({self.api.context})"
        if self.gateway is not None:
            return f"{head}: gateway path: {self.gateway}"
        how = "Lua (access_by_lua)" if self.lua else "auth_request"
        if self.tiers:
            where = "Redis" if self.tiers == "redis" else "a lua_shared_dict"
            how += f", tiers counted by NGINX in {where}"
        if self.cached:
            assert config.authz is not None
            seconds = f"{config.authz.cache_seconds:g}"
            verdict = f"verdicts cached for at most {seconds} s"
        else:
            verdict = f"a decision per request ({self.uncached_why})"
        return f"{head}: NGINX's path, {how}, {verdict}"


def underscored_headers(config: GatewayConfig) -> tuple[str, ...]:
    """Request headers twistedgw reads a credential from whose names hold ``_`` (WSO2's
    ``api_key``, an ``x-wso2-auth-header``), lower-case.

    NGINX drops such headers unless ``underscores_in_headers on`` (server-wide), so the
    rendered servers say it when this is not empty. Then every other client header with
    ``_`` reaches NGINX too, where direct mode never forwards one to a backend (WSGI and
    CGI read ``X_Client_Cert`` as ``X-Client-Cert``): the Lua variant removes them on
    NGINX's path; stock NGINX cannot remove headers by pattern, so in the
    ``auth_request`` variant every API takes the gateway path (twistedgw drops them).
    """
    names = set()
    for api in config.apis:
        for c in (api, *variants(api)):
            if c.api_key is not Mode.DISABLED and c.api_key_query is None:
                names.add(c.api_key_header.lower())
            names.add(c.auth_header.lower())
    return tuple(sorted(n for n in names if "_" in n))


def _uncached_why(config: GatewayConfig, api: ApiConfig, asker: verdicts.Asker) -> str:
    authz = config.authz
    if authz is None or authz.cache_seconds < 1:
        return "[authz] cache_seconds = 0"
    if verdicts.deciding_plugins(api):
        return "a plugin may read anything in the request"
    if api.tiers and not asker.tiers:
        if asker.token_key:
            return "tiers counted by twistedgw: NGINX's Lua does not speak Redis over TLS"
        return "tiers count every request"
    if verdicts.uses_bearer(api) and not asker.token_key:
        return "bearer tokens: NGINX's cache key would hold the token in clear"
    return "OCSP answers are kept for less than cache_seconds"


def _backends_reason(api: ApiConfig, lua: bool) -> str | None:
    """Why NGINX cannot pick among ``api``'s backends as direct mode does, or None.

    The Lua variant picks each request's backend itself (round-robin or in order, a
    failed one tried last for 30 s, a retry only where direct mode retries) and sends
    each its own Host; stock NGINX's upstream group cannot send per-backend Host
    headers (the request is written before the peer is chosen) and takes turns among
    backup servers, so those cases keep the gateway path in the auth_request variant.
    """
    parts = [urlsplit(e) for e in api.endpoints]
    if len(parts) < 2:
        return None
    if len({p.scheme for p in parts}) > 1:
        return "several backends mixing http and https: twistedgw picks one"
    if len({p.path for p in parts}) > 1:
        return "several backends with different paths: twistedgw picks one"
    if not lua:
        if len({p.hostname for p in parts}) > 1:
            return ("several backends with different host names: stock NGINX would send "
                    "them one Host (the Lua variant sends each its own)")
        if api.backend_mode == "failover" and len(parts) > 2:
            return ("failover over more than two backends: stock NGINX's backup servers "
                    "take turns (the Lua variant keeps the order)")
    return None


def _gateway_reason(api: ApiConfig, lua: bool) -> str | None:
    """Why NGINX must hand every request of ``api`` to twistedgw, or None."""
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
    if verdicts.uses_basic(api):
        return "Basic authentication: twistedgw checks the password and removes Authorization"
    if not api.websocket and any(op.websocket for op in api.operations or ()):
        return "WebSocket operations (x-twistedgw-websocket): twistedgw upgrades those only"
    return _backends_reason(api, lua)


def plan(config: GatewayConfig, variant: str, pipelines: Mapping[ApiConfig, Any] | None = None
         ) -> tuple[ApiPlan, ...]:
    """Every API's way, in config order. ``pipelines`` (each API's compiled pipeline, from
    its Runtime) tell what third-party plugins' stages do; without them such an API keeps
    the gateway path."""
    lua = variant == "lua"
    cluster = config.cluster
    store = "" if not lua else "dict" if cluster is None else (
        "" if cluster.scheme == "rediss" else "redis")
    underscored = underscored_headers(config)
    out = []
    for i, api in enumerate(config.apis):
        reason = _gateway_reason(api, lua)
        if reason is None and underscored and not lua:
            reason = (f"A credential header whose name holds '_' ({', '.join(underscored)}): "
                      "NGINX accepts such headers for every API (underscores_in_headers on) "
                      "and stock NGINX cannot drop them before the backend as direct mode "
                      "does (the Lua variant does)")
        headers = plugin_headers(api, (pipelines or {}).get(api))
        if reason is None and isinstance(headers, str):
            reason = headers
        if reason is not None or isinstance(headers, str):
            out.append(ApiPlan(i, api, reason))
            continue
        asker = AUTH_REQUEST_ASKER
        if lua:
            asker = LUA_ASKER if store or not api.tiers else LUA_ASKER_NO_TIERS
        cached = verdicts.api_cacheable(config, api, asker)
        why = "" if cached else _uncached_why(config, api, asker)
        out.append(ApiPlan(i, api, None, lua=lua, cached=cached, uncached_why=why,
                           peers=lua and len(api.endpoints) > 1,
                           tiers=store if api.tiers else "", asker=asker, headers=headers,
                           drop_underscored=bool(underscored)))
    return tuple(out)
