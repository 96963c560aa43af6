"""The whole config: every section read in one pass, then the checks across sections.

Every problem names the file and the dotted key (``apis[2].mutual_ssl``) so an
operator can fix it without reading code; all problems are collected and
reported together. Relative paths are resolved against the config file's folder.
Nothing here touches certificates: ``app/_runtime.py`` loads those. So that it can
check them even when other keys are broken, ``load_partial`` returns the model as
far as it could be read, with the problems and the keys they concern.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twistedgw.config import _openapi as openapi
from twistedgw.config._access_log import AccessLogConfig, read_access_log
from twistedgw.config._admin import AdminConfig, read_admin
from twistedgw.config._api_keys import ApiKey, read_api_keys
from twistedgw.config._apis import ApiConfig, backend_tls_overlaps, context_clash, read_api
from twistedgw.config._authz import AuthzConfig, read_authz
from twistedgw.config._backend_tls import BackendTlsConfig, read_backend_tls
from twistedgw.config._base import ConfigError, Mode, ProblemList, TableReader, quoted
from twistedgw.config._basic_users import BasicUser, read_basic_users
from twistedgw.config._cluster import ClusterConfig, read_cluster
from twistedgw.config._consumers import Consumer, check_consumer_names, read_consumers
from twistedgw.config._errors import ErrorsConfig, read_errors
from twistedgw.config._identity import IdentityConfig, read_identity
from twistedgw.config._jwt_issuers import JwtIssuer, declared_issuers, jwt_links, read_jwt_issuers
from twistedgw.config._limits import Limits, read_limits
from twistedgw.config._listeners import Listener, read_listener, unix_listener_trust
from twistedgw.config._mutual_ssl import MutualSslConfig, read_mutual_ssl
from twistedgw.config._nginx import NginxConfig, read_nginx
from twistedgw.config._response_cache import ResponseCacheConfig, read_response_cache
from twistedgw.config._throttling import (
    ThrottlingPolicy,
    read_throttling_policies,
    throttling_links,
)
from twistedgw.config._tls import TlsConfig, read_tls
from twistedgw.config._tracing import TracingConfig, read_tracing


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
    basic_users: tuple[BasicUser, ...] = ()
    throttling_policies: tuple[ThrottlingPolicy, ...] = ()  # defined; see policy_table
    errors: ErrorsConfig = ErrorsConfig()
    response_cache: ResponseCacheConfig = ResponseCacheConfig()  # bounds per worker
    # Worth a look but not refused (file: key: message): check prints them, start logs them.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    tracing: TracingConfig | None = None  # None = no traces, the SDK never imported

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
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError([f"{file}: invalid TOML: arrays or tables nested too deeply"]) from None
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
        if "openapi" in r.table:
            api = openapi.read_api(r, has_jwt_issuers=bool(declared_issuers(raw)))
        else:
            api = read_api(r)
        if api is None:
            continue
        if context_clash(r, api, contexts.get(api.context, [])):
            continue
        contexts.setdefault(api.context, []).append((r.path, api))
        apis.append(api)
        api_paths.append((r.path, api))
    if not raw.get("apis"):
        top.problem("apis", "at least one [[apis]] table is required")
    _same_labels(problems, api_paths)

    keys, key_names = read_api_keys(top)
    basic_users, user_names = read_basic_users(top)
    consumers = read_consumers(top, key_names, user_names)
    check_consumer_names(problems, api_paths, consumers)
    mutual_ssl = read_mutual_ssl(top.sub("mutual_ssl"))
    authz = read_authz(top.sub("authz"), apis) if "authz" in raw else None
    admin = read_admin(top.sub("admin")) if "admin" in raw else None
    access_log = read_access_log(top.sub("access_log")) if "access_log" in raw else None
    identity = read_identity(top.sub("identity")) if "identity" in raw else IdentityConfig()
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
    tracing = read_tracing(top.sub("tracing")) if "tracing" in raw else None
    policies = read_throttling_policies(top)
    throttling_links(problems, api_paths, policies)
    errors = read_errors(top.sub("errors")) if "errors" in raw else ErrorsConfig()
    response_cache = read_response_cache(top.sub("response_cache"))
    workers = top.positive("workers", int, 1)
    shutdown_timeout = top.get("shutdown_timeout", float, 30.0)
    if shutdown_timeout < 0:
        top.problem("shutdown_timeout", "must not be negative")
    top.finish()

    # An OpenAPI operation may use a scheme its API does not.
    securities = [api for api, _own in openapi.with_variants(apis)]
    uses_mtls = any(api.mutual_ssl is not Mode.DISABLED for api in securities)
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
    if any(api.api_key is not Mode.DISABLED for api in securities) and not keys:
        problems.add("api_keys", "an API uses api_key but no [[api_keys]] are defined")
    if (
        any(api.basic_auth is not Mode.DISABLED for api, _own in openapi.with_variants(apis))
        and not basic_users
        and "basic_users" not in raw
    ):
        problems.add("basic_users", "an API uses basic_auth but no [[basic_users]] are defined")
    if mutual_ssl.header_mode and mutual_ssl.enable_client_validation and not needs_tls:
        problems.add(
            "mutual_ssl.enable_client_validation",
            "is true (the default), which trusts the certificate header only on a TLS "
            "connection where the load balancer presents its own certificate, but no listener "
            "terminates TLS; add a TLS listener for the load balancer, or set "
            "enable_client_validation = false with trusted_proxies",
        )
    if mutual_ssl.trust_unix_socket:
        unix_listener_trust(problems, listeners)
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
        basic_users=tuple(basic_users),
        throttling_policies=tuple(policies),
        errors=errors,
        response_cache=response_cache,
        warnings=tuple(problems.warnings),
        tracing=tracing,
    )
    return Parsed(
        config=config,
        problems=tuple(problems.lines),
        broken_keys=frozenset(problems.keys),
        api_paths=tuple(where for where, _ in api_paths),
    )


def _same_labels(problems: ProblemList, apis: list[tuple[str, ApiConfig]]) -> None:
    """Two APIs with one name and version: WSO2 refuses the second; here both are served
    (on different contexts or hosts), but logs, metrics and mutual SSL aliases in
    micro-gw.conf name APIs by ``name:version``, so say so."""
    first: dict[str, str] = {}
    for where, api in apis:
        if api.label in first:
            problems.warn(where, f"the same name and version as {first[api.label]} "
                                 f"({quoted(api.label)}): logs and metrics cannot tell them apart")
        else:
            first[api.label] = where
