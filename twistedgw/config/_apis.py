"""``[[apis]]``: each API's context, backends, schemes, tiers, plugins and identity rules.

An API with ``openapi = FILE`` is read here too, from the table its definition implies
(``_openapi.py`` builds that table and finishes the API).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twistedgw import _hosts as hostnames
from twistedgw.config._backend_tls import BackendTlsConfig, read_backend_tls
from twistedgw.config._base import (
    CONTEXT_RE,
    Mode,
    ProblemList,
    TableReader,
    header_name,
    host_patterns,
    listed,
    quoted,
    read_mode,
    string_list,
)
from twistedgw.config._cors import CorsConfig, read_cors
from twistedgw.config._endpoints import (
    PRODUCTION,
    BackendAuth,
    CredentialEntry,
    Endpoints,
    read_backend_credentials,
)
from twistedgw.config._operations import Operation, Origin, ResourceThrottle
from twistedgw.config._response_cache import ApiCache, read_api_cache
from twistedgw.config._rules import IdentityRule, identity_entries

BACKEND_MODES = ("load_balance", "failover")
TRANSPORTS = ("http", "https")  # WSO2's x-wso2-transports values
TOML_SECURITY = ("every_operation", "api_level")
APPLICATION_TYPES = ("jwt", "api_key", "basic_auth")
CERTIFICATE_BOUND = ("required", "when_claimed", "off")


@dataclass(frozen=True)
class Tier:
    """A rate for certificates under a truststore alias, or for one consumer (exactly one)."""

    alias: str | None
    requests_per_minute: int
    consumer: str | None = None
    where: str = field(default="", compare=False)  # its dotted key, for messages


@dataclass(frozen=True)
class PluginSpec:
    """One ``[[apis.plugins]]`` table: the plugin's name and its own keys, checked by the
    plugin itself when the runtime is built (so ``check`` reports them in the same pass)."""

    name: str
    where: str  # the table's dotted path, e.g. "apis[2].plugins[0]"
    options: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class ApiConfig:
    name: str
    version: str
    context: str  # normalised: leading '/', no trailing '/'
    # The production backend ("" when a definition gives only sandbox endpoints, or gives
    # every operation its own: production callers are then refused where none applies).
    backend: str
    mutual_ssl: Mode = Mode.DISABLED
    aliases: frozenset[str] | None = None  # None = any trusted certificate
    api_key: Mode = Mode.DISABLED
    max_body_bytes: int | None = None
    backend_timeout: float | None = None
    tiers: tuple[Tier, ...] = ()
    backend_tls: BackendTlsConfig | None = None  # None = the top-level [backend_tls]
    plugins: tuple[PluginSpec, ...] = ()  # in the order they run
    # JWT access tokens (docs/how-to/jwt.md)
    jwt: Mode = Mode.DISABLED
    jwt_issuers: tuple[str, ...] | None = None  # names; None = every [[jwt_issuers]]
    certificate_bound: str = "when_claimed"  # RFC 8705: "required" | "when_claimed" | "off"
    forward_authorization: bool = False
    identities: tuple[IdentityRule, ...] = ()  # when any: the leaf must match one
    consumers: tuple[str, ...] | None = None  # None = any caller; else only these consumers
    hosts: tuple[str, ...] | None = None  # host patterns (_hosts.pattern); None = any host
    # Several backends (``backends``; ``backend`` is the first): how to pick one.
    backends: tuple[str, ...] = ()
    backend_mode: str = "load_balance"  # | "failover"
    api_key_header: str = "apikey"  # an OpenAPI apiKey scheme may name another header
    # ... or a query parameter (apiKey "in: query"): then the key is read from it, and the
    # parameter is removed from the query forwarded to the backend.
    api_key_query: str | None = None
    # The header that carries the bearer token (x-wso2-auth-header), removed before
    # forwarding unless forward_authorization.
    auth_header: str = "Authorization"
    # x-wso2-transports: the schemes the API is served over (a plain listener's request
    # counts as https only from a trusted proxy that says X-Forwarded-Proto: https).
    transports: frozenset[str] = frozenset(TRANSPORTS)
    basic_auth: Mode = Mode.DISABLED  # HTTP Basic against [[basic_users]]
    # A throttling policy for all callers of the API together (x-wso2-throttling-tier):
    # its name, and the JSON pointer it was read from in the definition ("" = TOML).
    throttling_tier: str | None = None
    throttling_from: str = field(default="", compare=False)
    # Set only on an operation's variant (``_openapi.operation_config``): its own policy.
    resource_throttle: ResourceThrottle | None = None
    # From an OpenAPI definition: only these operations are served (None = every path).
    operations: tuple[Operation, ...] | None = None
    openapi: Origin | None = None
    # WSO2's application level (application_security): these schemes are one level that
    # passes when any one of them does; the others are each a level of their own.
    any_of: frozenset[str] = frozenset()
    # With a definition: whether the TOML's security keys apply to every operation or
    # to the API level only (operations with their own security keep it).
    toml_security: str = "every_operation"
    # Basic credentials for the production backend (securityConfig, backend_credentials).
    backend_auth: BackendAuth | None = None
    # x-wso2-sandbox-endpoints: where callers with a sandbox credential go (None: they are
    # refused). On an operation's variant, the operation's own (else the API's).
    sandbox: Endpoints | None = None
    # [[apis.backend_credentials]] as read, for a definition's endpoints (resolved by
    # ``_openapi.apply``, then dropped).
    credentials: tuple[CredentialEntry, ...] = field(default=(), compare=False, repr=False)
    # [apis.cors] (or the definition's x-wso2-cors): the gateway answers preflights and
    # adds the Access-Control-* headers (http/_cors.py); None: no CORS headers at all.
    cors: CorsConfig | None = None
    # [apis.response_cache] (or x-wso2-response-cache): GET answers kept per caller
    # (http/_cache.py); None: never cached.
    response_cache: ApiCache | None = None
    # Accept WebSocket opening handshakes (GET with Upgrade: websocket) and relay the
    # connection after the backend's 101 (http/_upgrade.py); else Upgrade is dropped.
    websocket: bool = False

    @functools.cached_property
    def label(self) -> str:
        """``name:version``, made once (the metrics and logs name the API per request)."""
        return f"{self.name}:{self.version}"

    @property
    def in_process(self) -> bool:
        """Whether the backend is a Twisted resource in this process (``resource:``)."""
        return self.backend.startswith(RESOURCE)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every production backend URL, in the order written."""
        if not self.backend:
            return ()
        return self.backends or (self.backend,)

    @property
    def production(self) -> Endpoints | None:
        """The production backends as one endpoint (None: there is none)."""
        urls = self.endpoints
        if not urls:
            return None
        return Endpoints(urls, self.backend_mode, PRODUCTION, auth=self.backend_auth)

    def every_endpoint(self) -> tuple[Endpoints, ...]:
        """Production and sandbox endpoints of the API and of each of its operations,
        each once (backend TLS settings and the startup log cover them all)."""
        found: dict[Endpoints, None] = {}
        for e in (self.production, self.sandbox):
            if e is not None:
                found[e] = None
        for op in self.operations or ():
            for e in (op.production, op.sandbox):
                if e is not None:
                    found[e] = None
        return tuple(found)

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every backend URL this API may send a request to."""
        return tuple(dict.fromkeys(u for e in self.every_endpoint() for u in e.urls))


def read_api(r: TableReader, *, backend_optional: bool = False) -> ApiConfig | None:
    """One [[apis]] table as written in TOML (or as its OpenAPI definition implies, which
    ``_openapi.read_api`` gives here); None if a key the API cannot do without is broken.
    ``backend_optional``: the definition names endpoints elsewhere (sandbox, or one for
    each operation), so an API-level production backend may be absent ("")."""
    name = r.required("name", str)
    version = r.get("version", str, "")
    context = r.required("context", str)
    backends = string_list(r, "backends")
    backend_mode = r.choice("backend_mode", BACKEND_MODES, "load_balance")
    backend = None
    if backend_optional and backends is None and "backend" not in r.table:
        r.seen.add("backend")
        backend = ""
    elif backends is not None and "backend" in r.table:
        r.seen.add("backend")
        r.problem("backends", "give either backend or backends, not both")
        backends = None
    elif backends is not None:
        checked = [_backend_url(r, f"backends[{i}]", url) for i, url in enumerate(backends)]
        backends = [url for url in checked if url is not None]
        if not checked:
            r.problem("backends", "must name at least one backend URL")
        if len(backends) != len(checked) or not backends:
            backends = None
        else:
            backend = backends[0]
    else:
        raw_backend = r.required("backend", str)
        if raw_backend is not None and raw_backend.startswith(RESOURCE):
            backend = _resource_backend(r, raw_backend)  # a Twisted resource in this process
        elif raw_backend is not None:
            backend = _backend_url(r, "backend", raw_backend)
    mutual_ssl = read_mode(r, "mutual_ssl")
    api_key = read_mode(r, "api_key")
    basic_auth = read_mode(r, "basic_auth")
    throttling_tier = r.get("throttling_tier", str, None)  # type: ignore[arg-type]
    if throttling_tier is not None and not throttling_tier.strip():
        r.problem("throttling_tier", "names no policy; remove the key for no API-wide limit")
        throttling_tier = None
    toml_security = r.choice("toml_security", TOML_SECURITY, "every_operation")
    if "toml_security" in r.table and "openapi" not in r.seen:
        r.problem("toml_security", "applies to [[apis]] tables with openapi only")
    aliases = listed(
        r, "aliases", "lets no certificate pass; remove the key to accept any trusted "
        "certificate, or name the truststore aliases to accept",
    )
    max_body = r.get("max_body_bytes", int, None)  # type: ignore[arg-type]
    backend_timeout = r.get("backend_timeout", float, None)  # type: ignore[arg-type]
    websocket = r.get("websocket", bool, False)
    backend_tls = read_backend_tls(r.sub("backend_tls")) if "backend_tls" in r.table else None
    cors = read_cors(r.sub("cors")) if "cors" in r.table else None
    r.seen.add("cors")
    cache = read_api_cache(r.sub("response_cache")) if "response_cache" in r.table else None
    r.seen.add("response_cache")
    tiers = []
    for t in r.tables("tiers"):
        alias = t.get("alias", str, None)  # type: ignore[arg-type]
        tier_consumer = t.get("consumer", str, None)  # type: ignore[arg-type]
        if ("alias" in t.table) == ("consumer" in t.table):
            t.problem("alias", "give exactly one of alias (a truststore alias) or consumer")
        rpm = (
            t.positive("requests_per_minute", int, 0) if "requests_per_minute" in t.table else None
        )
        if rpm is None:
            t.problem("requests_per_minute", "is required")
        t.finish()
        if (alias is None) != (tier_consumer is None) and rpm:
            tiers.append(Tier(alias, rpm, consumer=tier_consumer, where=t.path))
    identities = identity_entries(r, "identities")
    # Judged by the key as written, so a misspelt mode is not also blamed here.
    if identities and r.table.get("mutual_ssl", Mode.DISABLED.value) == Mode.DISABLED.value:
        r.problem(
            "identities",
            "identity rules apply to client certificates, but this API has mutual_ssl "
            "disabled; enable mutual_ssl or remove them",
        )
    api_hosts = host_patterns(r, "hosts")
    api_consumers = listed(
        r, "consumers", "lets no caller through; remove the key to accept any caller, "
        "or name the consumers to accept",
    )
    jwt, jwt_issuers, certificate_bound, forward_authorization = _api_jwt(r)
    auth_header = header_name(r, "auth_header", "Authorization") or "Authorization"
    transports = _transports(r, mutual_ssl)
    credentials = read_backend_credentials(r)
    backend_auth = None
    if "openapi" not in r.seen:  # a definition's endpoints are resolved with it
        for entry in credentials:
            if entry.endpoint == PRODUCTION:
                backend_auth = BackendAuth(entry.username, entry.password,
                                           f"{entry.where}.password_file")
            else:
                r.problems.add(f"{entry.where}.endpoint", f"no endpoint is named "
                               f"{quoted(entry.endpoint)}: an API without a definition has one, "
                               f"{quoted(PRODUCTION)}")
        credentials = ()
    any_of: frozenset[str] = frozenset()
    application = _application_security(r)
    if application is not None:
        modes, any_of = application
        api_key, jwt, basic_auth = modes["api_key"], modes["jwt"], modes["basic_auth"]
    plugins = []
    for t in r.tables("plugins"):
        plugin_name = t.required("name", str)
        t.seen.update(t.table)  # the plugin checks its own keys
        if plugin_name is not None:
            plugins.append(PluginSpec(plugin_name, t.path, dict(t.table)))
    if context is not None:
        if (
            not CONTEXT_RE.match(context)
            or "//" in context
            or "/../" in f"{context}/"
            or "/./" in f"{context}/"
        ):
            r.problem(
                "context",
                f"must be a clean absolute path such as '/petstore/1.0.5', got {quoted(context)}",
            )
            context = None
        else:
            context = context.rstrip("/") or "/"
    if backend and backend_tls is not None:
        plain = [url for url in (backends or [backend]) if not url.startswith("https://")]
        if plain:
            # Most likely a forgotten "s": say so rather than send plain HTTP.
            r.problem(
                "backend_tls",
                f"applies to https:// backends only, but the backend is {quoted(plain[0])}",
            )
    if websocket and backend and backend.startswith(RESOURCE):
        r.problem("websocket", "an in-process backend (resource:) has no connection to "
                               "switch to WebSocket: give the API a network backend")
    r.finish()
    if name is None or context is None or backend is None:
        return None
    return ApiConfig(
        name=name,
        version=version,
        context=context,
        backend=backend.rstrip("/"),
        mutual_ssl=mutual_ssl,
        aliases=frozenset(aliases) if aliases is not None else None,
        api_key=api_key,
        max_body_bytes=max_body,
        backend_timeout=backend_timeout,
        tiers=tuple(tiers),
        backend_tls=backend_tls,
        plugins=tuple(plugins),
        jwt=jwt,
        jwt_issuers=jwt_issuers,
        certificate_bound=certificate_bound,
        forward_authorization=forward_authorization,
        identities=tuple(identities),
        consumers=tuple(api_consumers) if api_consumers is not None else None,
        hosts=api_hosts,
        backends=tuple(url.rstrip("/") for url in backends) if backends else (),
        backend_mode=backend_mode,
        basic_auth=basic_auth,
        throttling_tier=throttling_tier,
        any_of=any_of,
        toml_security=toml_security,
        backend_auth=backend_auth,
        credentials=credentials,
        auth_header=auth_header,
        transports=transports,
        cors=cors,
        response_cache=cache,
        websocket=websocket,
    )


def _transports(r: TableReader, mutual_ssl: Mode) -> frozenset[str]:
    """``transports = ["https"]`` (x-wso2-transports): "http", "https" or both (any case).
    Mandatory mutual TLS adds https, as the Microgateway adds it."""
    written = string_list(r, "transports")
    if written is None:
        return frozenset(TRANSPORTS)
    spelled = {t.strip().lower() for t in written}
    if not written or not spelled <= set(TRANSPORTS):
        r.problem("transports", f"must list 'http', 'https' or both, got {quoted(written)}")
        return frozenset(TRANSPORTS)
    if mutual_ssl is Mode.MANDATORY and "https" not in spelled:
        r.warning("transports", "mutual_ssl is mandatory, so https is served too (as the "
                                "Microgateway adds it)")
        spelled.add("https")
    return frozenset(spelled)


def _application_security(r: TableReader) -> tuple[dict[str, Mode], frozenset[str]] | None:
    """``application_security = { types = ["jwt", "api_key"], optional = false }``: WSO2's
    application level, of which any one type must pass (or none, when optional)."""
    if "application_security" not in r.table:
        r.seen.add("application_security")
        return None
    t = r.sub("application_security")
    types = string_list(t, "types")
    optional = t.get("optional", bool, False)
    t.finish()
    for key in APPLICATION_TYPES:
        if key in r.table:
            r.problem(key, "give either application_security or api_key / jwt / basic_auth, "
                           "not both")
    if types is None:
        t.problem("types", 'is required: the application security types, e.g. ["jwt", '
                           '"api_key"]')
        return None
    bad = [x for x in types if x not in APPLICATION_TYPES]
    if bad or not types:
        t.problem("types", f"must list one or more of {', '.join(map(repr, APPLICATION_TYPES))}"
                           f", got {quoted(types)}")
        return None
    mode = Mode.OPTIONAL if optional else Mode.MANDATORY
    modes = {k: (mode if k in types else Mode.DISABLED) for k in APPLICATION_TYPES}
    return modes, frozenset(types) if len(set(types)) > 1 else frozenset()


RESOURCE = "resource:"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_RESOURCE_SPEC = re.compile(rf"^(?:{_DOTTED}:{_DOTTED})?$")


def _resource_backend(r: TableReader, backend: str) -> str | None:
    """``resource:package.module:attribute`` (imported when the Runtime is built), or a
    bare ``resource:`` (the embedding application supplies it: ``make_service(...,
    resources={name: resource})``)."""
    if not _RESOURCE_SPEC.match(backend[len(RESOURCE):]):
        r.problem("backend", f"{quoted(backend)}: write resource:package.module:attribute (a "
                             "Twisted resource to import), or resource: alone for one the "
                             "embedding application supplies")
        return None
    return backend


def _backend_url(r: TableReader, key: str, backend: str) -> str | None:
    """An http(s) backend URL with one spelling of the scheme, or None (reported)."""
    if not isinstance(backend, str):
        r.problem(key, f"expected a string, got {quoted(backend)}")
        return None
    try:
        parts = urlsplit(backend)
        _ = parts.port  # raises for a port out of range
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        also = " (a resource: backend cannot be one of several)" if backend.startswith(
            RESOURCE) else ""
        r.problem(key, f"must be an http:// or https:// URL, got {quoted(backend)}{also}")
        return None
    if parts.query or parts.fragment:
        r.problem(key, "must not carry a query or fragment")
        return None
    # one spelling of the scheme: the forwarder and pool keys compare bytes
    return parts.scheme + backend[len(parts.scheme) :]


def context_clash(r: TableReader, api: ApiConfig, sharing: list[tuple[str, ApiConfig]]) -> bool:
    """Whether ``api`` cannot share its context with the APIs already there: two APIs
    share a context only when their ``hosts`` do not overlap (one may have none)."""
    for where, other in sharing:
        if api.hosts is None and other.hosts is None:
            # (APIs share a context only when their hosts do not overlap: hostnames-and-sni.md)
            message = f"duplicate context {quoted(api.context)} (also used by {where})"
            origin = api.openapi
            if origin is not None and origin.context_from is not None:
                r.problem("openapi", f"{origin.file}: {origin.context_from}: {message}")
            else:
                r.problem("context", message)
            return True
        for i, pat in enumerate(api.hosts or ()):
            clash = next((o for o in other.hosts or () if hostnames.overlap(pat, o)), None)
            if clash is not None:
                r.problem(
                    f"hosts[{i}]",
                    f"{quoted(pat)} overlaps {quoted(clash)} of {where}, which has the same "
                    "context "
                    f"{quoted(api.context)}",
                )
                return True
    return False


def _api_jwt(r: TableReader) -> tuple[Mode, tuple[str, ...] | None, str, bool]:
    """An API's JWT keys; issuer names are checked against [[jwt_issuers]] by ``jwt_links``."""
    jwt = read_mode(r, "jwt")
    names = listed(
        r, "jwt_issuers", "accepts no token; remove the key to accept every configured "
        "issuer, or name the [[jwt_issuers]] to accept",
    )
    bound = r.choice("certificate_bound", CERTIFICATE_BOUND, "when_claimed")
    forward = r.get("forward_authorization", bool, False)
    return jwt, tuple(names) if names is not None else None, bound, forward


def backend_tls_overlaps(
    problems: ProblemList, apis: list[tuple[str, ApiConfig]], default: BackendTlsConfig
) -> None:
    """Problems for https backends that backend TLS cannot tell apart.

    The forwarder picks backend TLS settings by backend URL (the longest API
    backend URL the request URL starts with), so two APIs whose backend URLs are
    equal, or one a path prefix of the other, must agree on them.
    """
    https = [(where, api) for where, api in apis if api.backend.startswith("https://")]
    for j, (where_j, api_j) in enumerate(https):
        tls_j = api_j.backend_tls if api_j.backend_tls is not None else default
        for where_i, api_i in https[:j]:
            tls_i = api_i.backend_tls if api_i.backend_tls is not None else default
            if tls_i == tls_j:
                continue
            a, b = sorted((api_i.backend, api_j.backend), key=len)
            if b == a or b.startswith(a + "/"):
                relation = (
                    "is the same as"
                    if a == b
                    else ("lies under" if b == api_j.backend else "contains")
                )
                problems.add(
                    f"{where_j}.backend_tls",
                    f"the backend URL {quoted(api_j.backend)} "
                    f"{relation} that of {where_i} ({quoted(api_i.backend)}), whose backend TLS "
                    "settings differ; backend TLS is chosen by backend URL, so give these APIs "
                    "the same settings or backend URLs that are not prefixes of each other",
                )
                break
