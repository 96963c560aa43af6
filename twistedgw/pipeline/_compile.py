"""From an API's config to its pipeline: built-ins from the config keys, then its plugins.

Runs when a config is loaded (start, ``check``, reload), never per request.
Plugin problems are reported like any config problem, with the dotted key of
the plugin's table, so ``check`` lists them in the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twistedgw import errors
from twistedgw.config import (
    ApiConfig,
    GatewayConfig,
    Mode,
    PluginSpec,
    policy_table,
    with_variants,
)
from twistedgw.pipeline import _jwks as jwks
from twistedgw.pipeline import _tiers as tiers
from twistedgw.pipeline._basic import STRIP_BASIC_AUTHORIZATION, BasicAuth, PasswordChecks
from twistedgw.pipeline._builtin import (
    ApiKeys,
    IdentityForwarding,
    MutualSsl,
    Revocation,
    Tiers,
)
from twistedgw.pipeline._consumers import ConsumerMapping, Directory, IdentityRules
from twistedgw.pipeline._discovery import Installed, installed
from twistedgw.pipeline._endpoints import BackendCredentials, EndpointChoice
from twistedgw.pipeline._interfaces import (
    IAuthoriser,
    ICertificateCheck,
    IRequestTransform,
    IResponseTransform,
    IScheme,
)
from twistedgw.pipeline._jwt import issuers_of, jwks_urls, scheme_for, strip_for
from twistedgw.pipeline._options import Options, PluginConfigError, PluginContext
from twistedgw.pipeline._run import Named, Pipeline
from twistedgw.pipeline._throttling import policy_stage
from twistedgw.pipeline._transports import Transports

_STAGES = (ICertificateCheck, IScheme, IAuthoriser, IRequestTransform, IResponseTransform)

# The built-in stages whose answer depends on the caller alone (``Pipeline.per_caller``):
# the certificate's aliases and identity rules, the consumer it maps to, the identity
# headers set from it, the endpoint kind its credential may go to and that endpoint's own
# credentials. Not API keys, tokens or passwords (request headers), the transports (a
# trusted proxy's X-Forwarded-Proto, per request), revocation (OCSP answers age), tiers
# and policies (counts), nor any plugin.
_PER_CALLER = frozenset({
    MutualSsl, IdentityRules, ConsumerMapping, IdentityForwarding, EndpointChoice,
    BackendCredentials,
})


@dataclass
class Shared:
    """What outlives one config: state the built-ins keep across reloads."""

    throttle: tiers.TierThrottle = field(default_factory=tiers.TierThrottle)
    jwks: jwks.JwksFetchers = field(default_factory=jwks.JwksFetchers)  # by URL
    # [[basic_users]]: the password-check pool and its cache of successes.
    passwords: PasswordChecks = field(default_factory=PasswordChecks)
    # [cluster]: the Redis store (and its connection) of the config in force; kept while
    # [cluster] is unchanged, replaced (reconnecting) when a reload changes it.
    cluster: Any = None  # cluster.RedisTierStore | None
    cluster_observer: Any = None  # cluster.ClusterObserver (metrics), set by the service
    connect: bool = False  # connect stores when made (the service; never ``check``)
    # In-process backends an embedding application supplies by API name or name:version
    # (``make_service(..., resources=...)``) for APIs with a bare ``backend = "resource:"``.
    resources: Mapping[str, Any] = field(default_factory=dict)
    _stores: dict[Any, Any] = field(default_factory=dict)  # ClusterConfig -> store

    def tier_store(self, config: GatewayConfig) -> tiers.TierStore:
        """This process's buckets, or the Redis store for ``config``'s ``[cluster]``.

        A store made for a config that is then refused is stopped by ``in_force``.
        """
        settings = config.cluster
        if settings is None:
            return self.throttle
        store = self._stores.get(settings)
        if store is None:
            from twistedgw.pipeline._cluster import RedisTierStore

            store = self._stores[settings] = RedisTierStore(
                settings, observer=self.cluster_observer
            )
            if self.connect:
                store.start()
        result: tiers.TierStore = store
        return result

    def in_force(self, config: GatewayConfig) -> None:
        """``config`` is now the one serving: its error style renders every error body from
        now on; stop the Redis stores and JWKS fetchers it does not use."""
        errors.use_style(config.errors.style)
        self.jwks.retain(jwks_urls(config))
        for settings in [s for s in self._stores if s != config.cluster]:
            self._stores.pop(settings).stop()
        self.cluster = self._stores.get(config.cluster) if config.cluster else None

    def observe_cluster(self, observer: Any) -> None:
        self.cluster_observer = observer
        for store in self._stores.values():
            store.observer = observer

    def stop(self) -> Any:
        """Close every Redis connection (on shutdown); a Deferred."""
        from twisted.internet.defer import gatherResults

        self.jwks.stop()
        self.passwords.stop()
        stores, self._stores, self.cluster = list(self._stores.values()), {}, None
        return gatherResults([s.stop() for s in stores], consumeErrors=True)


def compile_pipelines(
    config: GatewayConfig,
    problems: list[str],
    *,
    revocation: Any = None,
    shared: Shared | None = None,
    api_paths: Sequence[str] | None = None,
    plugins: Sequence[Installed] | None = None,
) -> dict[ApiConfig, Pipeline]:
    """One pipeline per API; problems (file: dotted key: message) are added to ``problems``."""
    shared = shared or Shared()
    if api_paths is None:
        api_paths = [f"apis[{i}]" for i in range(len(config.apis))]
    wanted = any(api.plugins for api in config.apis)
    available = list(plugins) if plugins is not None else (installed() if wanted else [])
    by_name: dict[str, list[Installed]] = {}
    for found in available:
        by_name.setdefault(found.name, []).append(found)
    identity = IdentityForwarding(config)
    tier_stage = None
    store: tiers.TierStore | None = None
    policies = policy_table(config.throttling_policies)
    throttled = any(
        policy_stage(api, policies, shared.throttle) is not None
        for api, _own in with_variants(config.apis)
    )
    if any(a.tiers for a in config.apis) or throttled:
        try:
            store = shared.tier_store(config)
            tier_stage = Tiers(store)
        except Exception as e:  # e.g. a rediss:// client certificate that cannot be read
            problems.append(f"{config.source}: cluster: cannot set up the Redis store: {e}")
    revocation_stage = Revocation(revocation) if revocation is not None else None
    jwt_issuers = issuers_of(config, problems, shared.jwks)
    directory = Directory(config.consumers)
    out: dict[ApiConfig, Pipeline] = {}
    # An OpenAPI API gets one more pipeline per distinct operation security (its plugin
    # problems are reported once, for the API itself).
    for api, own in with_variants(config.apis):
        guards: list[Named] = []
        checks: list[Named] = []
        schemes: list[Named] = []
        authorisers: list[Named] = []
        request_transforms: list[Named] = []
        response_transforms: list[Named] = []
        if Transports.needed(api):
            guards.append(Named("transports", Transports(api, config.mutual_ssl)))
        if revocation_stage is not None:
            checks.append(Named("revocation", revocation_stage))
        if api.identities:
            checks.append(Named("identities", IdentityRules(api)))
        # WSO2's application level (api.any_of): one level, any one of its schemes passes.
        def level(name: str) -> str | None:
            return "application" if name in api.any_of else None  # noqa: B023

        if api.mutual_ssl is not Mode.DISABLED:
            schemes.append(Named("mutual_ssl", MutualSsl(api)))
        if api.api_key is not Mode.DISABLED:
            keys = ApiKeys(api, config.api_keys, directory.key_owners)
            schemes.append(Named("api_key", keys, group=level("api_key")))
        if api.jwt is not Mode.DISABLED:
            schemes.append(Named("jwt", scheme_for(api, jwt_issuers), group=level("jwt")))
        if api.basic_auth is not Mode.DISABLED:
            schemes.append(Named("basic_auth", BasicAuth(
                api, config.basic_users, shared.passwords, directory.user_owners
            ), group=level("basic_auth")))
        if EndpointChoice.needed(api):  # right after authentication decided the key type
            authorisers.append(Named("endpoints", EndpointChoice(api)))
        if directory or api.consumers is not None:
            authorisers.append(Named("consumers", ConsumerMapping(api, directory)))
        for spec in api.plugins:
            stage = _configure(spec, by_name, api, config, problems if own else [])
            if stage is None:
                continue
            named = Named(spec.name, stage)
            if ICertificateCheck.providedBy(stage):
                checks.append(named)
            if IScheme.providedBy(stage):
                if stage.mode is not Mode.DISABLED:
                    schemes.append(named)
            if IAuthoriser.providedBy(stage):
                authorisers.append(named)
            if IRequestTransform.providedBy(stage):
                request_transforms.append(named)
            if IResponseTransform.providedBy(stage):
                response_transforms.append(named)
        if api.tiers and tier_stage is not None:
            # Tiers count only requests that every other rule let through. The authz
            # endpoint counts them for the config nginx-config renders (which answers
            # the 429 itself), or names the bucket to NGINX's Lua, which spends it;
            # other askers' (auth_request would turn a 429 into a 500) skip them.
            authorisers.append(Named("tiers", tier_stage))
        policy = policy_stage(api, policies, store) if store is not None else None
        if policy is not None:
            # After every other rule (tiers included): a caller over its own tier does
            # not spend what every caller shares. The authz endpoint counts it too.
            authorisers.append(Named("throttling", policy))
        if api.jwt is not Mode.DISABLED and not api.forward_authorization:
            request_transforms.append(Named("authorization", strip_for(api)))
        if api.basic_auth is not Mode.DISABLED:
            request_transforms.append(Named("basic_authorization", STRIP_BASIC_AUTHORIZATION))
        request_transforms.append(Named("identity", identity))
        if BackendCredentials.needed(api):  # last: the backend's own Authorization
            request_transforms.append(Named("backend_credentials", BackendCredentials(api)))
        stages = [
            *guards, *checks, *schemes, *authorisers, *request_transforms, *response_transforms
        ]
        out[api] = Pipeline(
            api,
            guards=tuple(guards),
            checks=tuple(checks),
            schemes=tuple(schemes),
            authorisers=tuple(authorisers),
            request_transforms=tuple(request_transforms),
            response_transforms=tuple(response_transforms),
            per_caller=all(type(n.stage) in _PER_CALLER for n in stages),
        )
    return out


def _configure(
    spec: PluginSpec,
    by_name: dict[str, list[Installed]],
    api: ApiConfig,
    config: GatewayConfig,
    problems: list[str],
) -> Any:
    file = config.source
    found = by_name.get(spec.name, [])
    if not found:
        names = ", ".join(sorted(by_name)) or "none"
        problems.append(
            f"{file}: {spec.where}.name: unknown plugin {spec.name!r} (installed: {names})"
        )
        return None
    if len(found) > 1:
        origins = ", ".join(f.origin for f in found)
        problems.append(
            f"{file}: {spec.where}.name: more than one plugin is named {spec.name!r} ({origins})"
        )
        return None
    try:
        stage = found[0].plugin.configure(Options(spec.options), PluginContext(api, config))
    except PluginConfigError as e:
        for key, message in e.problems:
            problems.append(f"{file}: {spec.where}.{key}: {message}")
        return None
    except Exception as e:  # a plugin's own bug must not hide the other problems
        problems.append(f"{file}: {spec.where}: plugin {spec.name!r} failed to configure: {e!r}")
        return None
    if not any(iface.providedBy(stage) for iface in _STAGES):
        problems.append(
            f"{file}: {spec.where}: plugin {spec.name!r} returned an object that provides "
            "no pipeline stage interface"
        )
        return None
    return stage
