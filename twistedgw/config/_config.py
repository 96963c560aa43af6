"""TOML configuration -> an immutable model.

Every problem names the file and the dotted key (``apis[2].mutual_ssl``) so an
operator can fix it without reading code; all problems are collected and
reported together. Relative paths are resolved against the config file's folder.
Nothing here touches certificates: ``app/_runtime.py`` loads those. So that it can
check them even when other keys are broken, ``load_partial`` returns the model as
far as it could be read, with the problems and the keys they concern.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twistedgw import _hosts as hostnames
from twistedgw.config._access_log import AccessLogConfig
from twistedgw.config._admin import AdminConfig
from twistedgw.config._backend_tls import BackendTlsConfig, read_backend_tls
from twistedgw.config._base import (
    CONTEXT_RE,
    ConfigError,
    Mode,
    ProblemList,
    TableReader,
    header_name,
    host_patterns,
    read_mode,
    resolve,
    string_list,
)
from twistedgw.config._cluster import ClusterConfig, read_cluster
from twistedgw.config._identity import IDENTITY_FORWARD, IdentityConfig
from twistedgw.config._jwt_issuers import JwtIssuer, declared_issuers, read_jwt_issuers
from twistedgw.config._limits import Limits, read_limits
from twistedgw.config._listeners import Listener, read_listener
from twistedgw.config._mutual_ssl import MutualSslConfig, read_mutual_ssl
from twistedgw.config._nginx import NginxConfig, read_nginx
from twistedgw.config._rules import IdentityRule, parse_rule
from twistedgw.config._tls import TlsConfig, read_tls

if TYPE_CHECKING:
    from twistedgw.config._openapi import Operation, Origin


CERTIFICATE_BOUND = ("required", "when_claimed", "off")


@dataclass(frozen=True)
class Tier:
    """A rate for certificates under a truststore alias, or for one consumer (exactly one)."""

    alias: str | None
    requests_per_minute: int
    consumer: str | None = None
    where: str = field(default="", compare=False)  # its dotted key, for messages


CONSUMER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Consumer:
    """An application (``[[consumers]]``): its API keys and certificate identity entries."""

    name: str
    api_keys: tuple[str, ...] = ()
    certificates: tuple[IdentityRule, ...] = ()


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
    backend: str
    mutual_ssl: Mode = Mode.DISABLED
    aliases: frozenset[str] | None = None  # None = any trusted certificate
    api_key: Mode = Mode.DISABLED
    max_body_bytes: int | None = None
    backend_timeout: float | None = None
    tiers: tuple[Tier, ...] = ()
    backend_tls: BackendTlsConfig | None = None  # None = the top-level [backend_tls]
    plugins: tuple[PluginSpec, ...] = ()  # in the order they run
    # JWT access tokens (section "JWT access tokens" of the README)
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
    # From an OpenAPI definition: only these operations are served (None = every path).
    operations: tuple[Operation, ...] | None = None
    openapi: Origin | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every backend URL, in the order written."""
        return self.backends or (self.backend,)


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes


@dataclass(frozen=True)
class AuthzConfig:
    path: str = "/_twistedgw/authz"
    original_uri_header: str = "X-Original-URI"
    original_method_header: str = "X-Original-Method"
    original_host_header: str = "X-Original-Host"
    cache_seconds: float = 10.0  # the longest a load balancer may cache an allow verdict


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    listeners: tuple[Listener, ...]
    tls: TlsConfig
    apis: tuple[ApiConfig, ...]
    api_keys: tuple[ApiKey, ...] = ()
    mutual_ssl: MutualSslConfig = MutualSslConfig()
    authz: AuthzConfig | None = None
    admin: AdminConfig | None = None
    access_log: AccessLogConfig | None = None
    identity: IdentityConfig = IdentityConfig()
    limits: Limits = Limits()
    workers: int = 1
    shutdown_timeout: float = 30.0
    backend_tls: BackendTlsConfig = BackendTlsConfig()
    nginx: NginxConfig | None = None
    jwt_issuers: tuple[JwtIssuer, ...] = ()
    cluster: ClusterConfig | None = None  # None = tier counters per process
    consumers: tuple[Consumer, ...] = ()  # in config order: the first match names a caller

    @property
    def needs_tls(self) -> bool:
        return any(listener.tls for listener in self.listeners)

    def backend_tls_for(self, api: ApiConfig) -> BackendTlsConfig:
        """The API's own ``backend_tls`` table if it has one (it replaces the global one)."""
        return api.backend_tls if api.backend_tls is not None else self.backend_tls


def _within(key: str, other: str) -> bool:
    """Whether dotted key ``other`` is ``key``, lies inside it, or is a table holding it."""
    if other == key:
        return True
    inner, outer = (other, key) if len(other) > len(key) else (key, other)
    return inner.startswith(outer) and inner[len(outer)] in ".["


@dataclass(frozen=True)
class Parsed:
    """A config as far as it could be read, for checks that need not wait for a clean one.

    Where a key was broken, ``config`` holds the default (or leaves the API out),
    so anything read from a key that ``broken`` reports is not to be trusted.
    """

    config: GatewayConfig
    problems: tuple[str, ...]  # one line each, naming file and key
    broken_keys: frozenset[str]  # the dotted keys the problems name
    api_paths: tuple[str, ...]  # where each of config.apis was read: "apis[3]"

    def broken(self, key: str) -> bool:
        """Whether a problem concerns ``key``, something inside it, or a table holding it."""
        return any(_within(key, other) for other in self.broken_keys)


def identity_entries(r: TableReader, key: str) -> list[IdentityRule]:
    """``[[<table>.<key>]]`` identity entries (config/_rules.py), problems by dotted key."""
    out = []
    for t in r.tables(key):
        t.seen.update(t.table)  # parse_rule reports unknown keys itself

        def problem(k: str, message: str, t: TableReader = t) -> None:
            t.problems.add(t.where(k) if k else t.path, message)

        rule = parse_rule(t.table, problem)
        if rule is not None:
            out.append(rule)
    if key in r.table and r.table[key] == []:
        r.problem(key, "an empty list matches no certificate; remove the key instead")
    return out


def read_consumers(top: TableReader, key_names: set[str]) -> list[Consumer]:
    """``[[consumers]]``: unique names, API keys that exist, certificate identity entries."""
    out: list[Consumer] = []
    names: set[str] = set()
    for r in top.tables("consumers"):
        name = r.required("name", str)
        if name is not None and not CONSUMER_NAME_RE.match(name):
            r.problem("name", f"must be 1-64 of A-Z a-z 0-9 . _ -, got {name!r}")
            name = None
        elif name is not None and name in names:
            r.problem("name", f"duplicate consumer name {name!r}")
            name = None
        keys = string_list(r, "api_keys") or []
        for i, key in enumerate(keys):
            if key not in key_names:
                listing = ", ".join(sorted(key_names)) or "none"
                r.problem(f"api_keys[{i}]", f"no [[api_keys]] entry is named {key!r} "
                          f"(defined: {listing})")
        certificates = identity_entries(r, "certificates")
        r.finish()
        if name is not None:
            names.add(name)
            out.append(Consumer(name, tuple(keys), tuple(certificates)))
    return out


def check_consumer_names(
    problems: ProblemList, apis: list[tuple[str, ApiConfig]], consumers: list[Consumer]
) -> None:
    """APIs and tiers may only name consumers that ``[[consumers]]`` defines."""
    known = {c.name for c in consumers}
    listing = ", ".join(sorted(known)) or "none"
    for where, api in apis:
        for i, name in enumerate(api.consumers or ()):
            if name not in known:
                problems.add(f"{where}.consumers[{i}]",
                             f"unknown consumer {name!r} (defined: {listing})")
        for tier in api.tiers:
            if tier.consumer is not None and tier.consumer not in known:
                problems.add(f"{tier.where}.consumer",
                             f"unknown consumer {tier.consumer!r} (defined: {listing})")


def read_api(r: TableReader, has_jwt_issuers: bool = True) -> ApiConfig | None:
    """One [[apis]] table; ``has_jwt_issuers``: whether the config declares any (an
    OpenAPI definition's bearer security needs them)."""
    definition = None
    if "openapi" in r.table:
        from twistedgw.config import _openapi as openapi

        definition = openapi.for_api(r)
        if definition is None:  # reported; the rest of the table depends on it
            r.seen.update(r.table)
            return None
        toml_keys = frozenset(r.table)
        r = TableReader(
            r.file, openapi.merged(definition, r.table), r.path, r.problems, {"openapi"}
        )
    name = r.required("name", str)
    version = r.get("version", str, "")
    context = r.required("context", str)
    backends = string_list(r, "backends")
    backend_mode = r.choice("backend_mode", BACKEND_MODES, "load_balance")
    backend = None
    if backends is not None and "backend" in r.table:
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
        if raw_backend is not None:
            backend = _backend_url(r, "backend", raw_backend)
    mutual_ssl = read_mode(r, "mutual_ssl")
    api_key = read_mode(r, "api_key")
    aliases = string_list(r, "aliases")
    if aliases == [] and "aliases" in r.table:
        r.problem(
            "aliases",
            "an empty list lets no certificate pass; remove the key to accept any trusted "
            "certificate, or name the truststore aliases to accept",
        )
    max_body = r.get("max_body_bytes", int, None)  # type: ignore[arg-type]
    backend_timeout = r.get("backend_timeout", float, None)  # type: ignore[arg-type]
    backend_tls = read_backend_tls(r.sub("backend_tls")) if "backend_tls" in r.table else None
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
    api_consumers = string_list(r, "consumers")
    if api_consumers == [] and "consumers" in r.table:
        r.problem(
            "consumers",
            "an empty list lets no caller through; remove the key to accept any caller, "
            "or name the consumers to accept",
        )
    jwt, jwt_issuers, certificate_bound, forward_authorization = _api_jwt(r)
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
                f"must be a clean absolute path such as '/petstore/1.0.5', got {context!r}",
            )
            context = None
        else:
            context = context.rstrip("/") or "/"
    if backend is not None and backend_tls is not None:
        plain = [url for url in (backends or [backend]) if not url.startswith("https://")]
        if plain:
            # Most likely a forgotten "s": say so rather than send plain HTTP.
            r.problem(
                "backend_tls",
                f"applies to https:// backends only, but the backend is {plain[0]!r}",
            )
    r.finish()
    if name is None or context is None or backend is None:
        return None
    api = ApiConfig(
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
    )
    if definition is not None:
        from twistedgw.config import _openapi as openapi

        return openapi.apply(definition, api, r, toml_keys, jwt_issuers=has_jwt_issuers)
    return api


BACKEND_MODES = ("load_balance", "failover")


def _backend_url(r: TableReader, key: str, backend: str) -> str | None:
    """An http(s) backend URL with one spelling of the scheme, or None (reported)."""
    if not isinstance(backend, str):
        r.problem(key, f"expected a string, got {backend!r}")
        return None
    try:
        parts = urlsplit(backend)
        _ = parts.port  # raises for a port out of range
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(key, f"must be an http:// or https:// URL, got {backend!r}")
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
            # (APIs may share a context when their hosts do not overlap: README.)
            message = f"duplicate context {api.context!r} (also used by {where})"
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
                    f"{pat!r} overlaps {clash!r} of {where}, which has the same context "
                    f"{api.context!r}",
                )
                return True
    return False


def _api_jwt(r: TableReader) -> tuple[Mode, tuple[str, ...] | None, str, bool]:
    """An API's JWT keys; issuer names are checked against [[jwt_issuers]] by ``jwt_links``."""
    jwt = read_mode(r, "jwt")
    names = string_list(r, "jwt_issuers")
    if names == [] and "jwt_issuers" in r.table:
        r.problem(
            "jwt_issuers",
            "an empty list accepts no token; remove the key to accept every configured "
            "issuer, or name the [[jwt_issuers]] to accept",
        )
    bound = r.choice("certificate_bound", CERTIFICATE_BOUND, "when_claimed")
    forward = r.get("forward_authorization", bool, False)
    return jwt, tuple(names) if names is not None else None, bound, forward


def jwt_links(
    problems: ProblemList,
    apis: list[tuple[str, ApiConfig]],
    issuers: tuple[JwtIssuer, ...],
    tls: TlsConfig,
    header_mode: bool,
    declared: set[str],
) -> None:
    """Cross-checks between APIs and [[jwt_issuers]]."""
    known = declared | {i.name for i in issuers}
    listing = ", ".join(sorted(known)) or "none"
    for where, api in apis:
        if api.jwt_issuers is not None:
            for i, name in enumerate(api.jwt_issuers):
                if name not in known:
                    problems.add(
                        f"{where}.jwt_issuers[{i}]",
                        f"unknown issuer {name!r} (the [[jwt_issuers]] are: {listing})",
                    )
        # An OpenAPI definition's bearer security is reported where the definition says it.
        if api.jwt is not Mode.DISABLED and not known and api.openapi is None:
            problems.add(f"{where}.jwt", "JWT is enabled but no [[jwt_issuers]] are defined")
        if (
            api.jwt is not Mode.DISABLED
            and api.certificate_bound == "required"
            and tls.truststore is None
            and not header_mode
        ):
            problems.add(
                f"{where}.certificate_bound",
                '"required" needs client certificates, but [tls].truststore is not set',
            )


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
                    f"the backend URL {api_j.backend!r} "
                    f"{relation} that of {where_i} ({api_i.backend!r}), whose backend TLS "
                    "settings differ; backend TLS is chosen by backend URL, so give these APIs "
                    "the same settings or backend URLs that are not prefixes of each other",
                )
                break


def _cache_seconds(r: TableReader) -> float:
    """``[authz] cache_seconds``: 0 turns caching off; NGINX counts whole seconds."""
    value = r.get("cache_seconds", float, AuthzConfig.cache_seconds)
    if not 0 <= value <= 86400 or value != value:
        r.problem("cache_seconds", f"must be 0-86400, got {value!r}")
        return AuthzConfig.cache_seconds
    return value


def load(path: str | Path) -> GatewayConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    file, raw = _read(path)
    return parse(raw, file)


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The resolved path and its TOML; ConfigError if it cannot be read or is not TOML."""
    file = Path(path).resolve()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{file}: config file not found"]) from None
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: invalid TOML: {e}"]) from None
    return file, raw


def load_partial(path: str | Path) -> Parsed:
    """Read a config file as far as possible; raise ConfigError only if it is not TOML."""
    file, raw = _read(path)
    return parse_partial(raw, file)


def parse(raw: dict[str, Any], file: Path) -> GatewayConfig:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    parsed = parse_partial(raw, file)
    if parsed.problems:
        raise ConfigError(list(parsed.problems))
    return parsed.config


def parse_partial(raw: dict[str, Any], file: Path) -> Parsed:
    """The model with defaults where keys are broken, and every problem found."""
    problems = ProblemList(file)
    top = TableReader(file, raw, "", problems)

    listeners = tuple(read_listener(r) for r in top.tables("listeners"))
    if "listeners" not in raw:
        top.problem("listeners", "at least one [[listeners]] table is required")
    tls = read_tls(top.sub("tls"))

    apis: list[ApiConfig] = []
    api_paths: list[tuple[str, ApiConfig]] = []
    contexts: dict[str, list[tuple[str, ApiConfig]]] = {}
    for r in top.tables("apis"):
        api = read_api(r, has_jwt_issuers=bool(declared_issuers(raw)))
        if api is None:
            continue
        if context_clash(r, api, contexts.get(api.context, [])):
            continue
        contexts.setdefault(api.context, []).append((r.path, api))
        apis.append(api)
        api_paths.append((r.path, api))
    if not raw.get("apis"):
        top.problem("apis", "at least one [[apis]] table is required")

    keys = []
    key_names: set[str] = set()
    for r in top.tables("api_keys"):
        name = r.required("name", str)
        digest = r.required("key_sha256", str)
        r.finish()
        if digest is not None:
            try:
                raw_digest = bytes.fromhex(digest)
                if len(raw_digest) != 32:
                    raise ValueError
            except ValueError:
                r.problem("key_sha256", "must be 64 hex characters (the SHA-256 of the key)")
                continue
            if name is not None:
                if name in key_names:
                    r.problem("name", f"duplicate API key name {name!r}")
                key_names.add(name)
                keys.append(ApiKey(name, raw_digest))

    consumers = read_consumers(top, key_names)
    check_consumer_names(problems, api_paths, consumers)
    mutual_ssl = read_mutual_ssl(top.sub("mutual_ssl"))
    authz = None
    if "authz" in raw:
        a = top.sub("authz")
        authz_path = a.get("path", str, AuthzConfig.path)
        if not authz_path.startswith("/"):
            a.problem("path", f"must start with '/', got {authz_path!r}")
        authz = AuthzConfig(
            path=authz_path.rstrip("/") or "/",
            original_uri_header=header_name(a, "original_uri_header", "X-Original-URI")
            or "X-Original-URI",
            original_method_header=header_name(a, "original_method_header", "X-Original-Method")
            or "X-Original-Method",
            original_host_header=header_name(a, "original_host_header", "X-Original-Host")
            or "X-Original-Host",
            cache_seconds=_cache_seconds(a),
        )
        a.finish()
        if any(
            authz.path == api.context or authz.path.startswith(api.context.rstrip("/") + "/")
            for api in apis
            if api.context != "/"
        ):
            a.problem("path", f"{authz.path!r} lies inside an API context")
    admin = None
    if "admin" in raw:
        a = top.sub("admin")
        admin = AdminConfig(host=a.get("host", str, "127.0.0.1"), port=a.get("port", int, 9901))
        a.finish()
    access_log = None
    if "access_log" in raw:
        a = top.sub("access_log")
        log_path = a.get("path", str, "-")
        if log_path != "-":
            resolved = resolve(file, log_path)
            if resolved is None:
                a.problem("path", f"not a usable path: {log_path!r}")
            log_path = str(resolved)
        access_log = AccessLogConfig(path=log_path)
        a.finish()
    identity = IdentityConfig()
    if "identity" in raw:
        a = top.sub("identity")
        fwd = a.choice("forward", IDENTITY_FORWARD, "none")
        hdrs = a.sub("headers")
        pairs = []
        for k in list(hdrs.table):
            name = header_name(hdrs, k, None)
            if name:
                pairs.append((k, name))
        allowed_fields = {"subject", "issuer", "serial", "sha256", "cert", "san"}
        for k, _ in pairs:
            if k not in allowed_fields:
                hdrs.problem(k, f"unknown identity field; use one of {sorted(allowed_fields)}")
        if fwd == "headers" and not pairs:
            a.problem(
                "headers", 'forward = "headers" needs at least one header in [identity.headers]'
            )
        identity = IdentityConfig(forward=fwd, headers=tuple(pairs))
        a.finish()
    nginx = read_nginx(top.sub("nginx")) if "nginx" in raw else None
    limits = read_limits(top.sub("limits"))
    backend_tls = read_backend_tls(top.sub("backend_tls"))
    backend_tls_overlaps(problems, api_paths, backend_tls)
    jwt_issuers = read_jwt_issuers(top)
    jwt_links(
        problems,
        api_paths,
        jwt_issuers,
        tls,
        mutual_ssl.header_mode,
        declared_issuers(raw),
    )
    cluster = read_cluster(top.sub("cluster")) if "cluster" in raw else None
    workers = top.positive("workers", int, 1)
    shutdown_timeout = top.get("shutdown_timeout", float, 30.0)
    if shutdown_timeout < 0:
        top.problem("shutdown_timeout", "must not be negative")
    top.finish()

    uses_mtls = any(api.mutual_ssl is not Mode.DISABLED for api in apis)
    needs_tls = any(listener.tls for listener in listeners)
    if needs_tls and not (tls.keystore or tls.certificate):
        problems.add(
            "tls.certificate",
            "a TLS listener needs tls.certificate and tls.private_key (or tls.keystore)",
        )
    if (uses_mtls or mutual_ssl.header_mode) and tls.truststore is None:
        problems.add("tls.truststore", "APIs with mutual_ssl need a truststore")
    if tls.truststore is None:
        for where, asked in (
            ("tls", tls.client_certificate),
            *((e.where, e.client_certificate) for e in tls.sni),
        ):
            if asked == "request":
                problems.add(
                    f"{where}.client_certificate",
                    '"request" asks for client certificates, but there is no tls.truststore '
                    "to verify them against",
                )
    if any(api.api_key is not Mode.DISABLED for api in apis) and not keys:
        problems.add("api_keys", "an API uses api_key but no [[api_keys]] are defined")
    if mutual_ssl.header_mode and mutual_ssl.enable_client_validation and not needs_tls:
        problems.add(
            "mutual_ssl.enable_client_validation",
            "is true (the default), which trusts the certificate header only on a TLS "
            "connection where the load balancer presents its own certificate, but no listener "
            "terminates TLS; add a TLS listener for the load balancer, or set "
            "enable_client_validation = false with trusted_proxies",
        )
    if uses_mtls and not needs_tls and not mutual_ssl.header_mode:
        problems.add(
            "listeners",
            "APIs use mutual_ssl but no listener terminates TLS and "
            "[mutual_ssl].certificate_header is not set, so no certificate can ever arrive",
        )
    config = GatewayConfig(
        source=file,
        listeners=listeners,
        tls=tls,
        apis=tuple(apis),
        api_keys=tuple(keys),
        mutual_ssl=mutual_ssl,
        authz=authz,
        admin=admin,
        access_log=access_log,
        identity=identity,
        limits=limits,
        workers=workers,
        shutdown_timeout=shutdown_timeout,
        backend_tls=backend_tls,
        nginx=nginx,
        jwt_issuers=jwt_issuers,
        cluster=cluster,
        consumers=tuple(consumers),
    )
    return Parsed(
        config=config,
        problems=tuple(problems.lines),
        broken_keys=frozenset(problems.keys),
        api_paths=tuple(where for where, _ in api_paths),
    )
