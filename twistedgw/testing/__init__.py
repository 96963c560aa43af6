"""Run a plugin or an API's pipeline in memory: no reactor, no sockets, no processes.

Public, as ``twisted.internet.testing`` is for Twisted: a plugin author builds
a fake request and caller with ``fake_call``, configures the plugin with
``configure`` (the same checks ``twistedgw check`` runs) and runs it, alone or
in a pipeline, with ``run``::

    stage = configure(my_plugin, {"set": {"X-Env": "prod"}})
    outcome = run(pipeline(stages=[stage]), fake_call(headers={"apikey": "k"}))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from twistedgw.config import ApiConfig, GatewayConfig, Listener, Mode, TlsConfig
from twistedgw.identity import ClientIdentity, no_certificate
from twistedgw.pipeline import (
    Call,
    HeaderView,
    IAuthoriser,
    ICertificateCheck,
    IRequestTransform,
    IResponseTransform,
    IScheme,
    Named,
    Options,
    Outcome,
    Pipeline,
    PluginContext,
    RequestView,
)


def fake_api(
    *, mutual_ssl: Mode = Mode.DISABLED, api_key: Mode = Mode.DISABLED, **changes: Any
) -> ApiConfig:
    """An API at ``/t`` with every scheme disabled unless asked."""
    fields: dict[str, Any] = {
        "name": "test",
        "version": "1",
        "context": "/t",
        "backend": "http://127.0.0.1:1",
        "mutual_ssl": mutual_ssl,
        "api_key": api_key,
    }
    fields.update(changes)
    return ApiConfig(**fields)


def fake_config(apis: Sequence[ApiConfig] = (), **changes: Any) -> GatewayConfig:
    """A gateway config holding ``apis`` (a plain listener, no TLS files)."""
    fields: dict[str, Any] = {
        "source": Path("memory.toml"),
        "listeners": (Listener(tls=False),),
        "tls": TlsConfig(),
        "apis": tuple(apis) or (fake_api(),),
    }
    fields.update(changes)
    return GatewayConfig(**fields)


def fake_call(
    *,
    method: bytes = b"GET",
    path: bytes = b"/t",
    query: bytes | None = None,
    headers: Mapping[str, str | Iterable[str]] | None = None,
    api: ApiConfig | None = None,
    identity: ClientIdentity | None = None,
    client: str = "127.0.0.1",
    secure: bool = True,
    via_load_balancer: bool = False,
) -> Call:
    """A request as a plugin sees it; ``identity`` defaults to "no certificate"."""
    raw = Headers()
    for name, value in (headers or {}).items():
        for one in [value] if isinstance(value, str) else value:
            raw.addRawHeader(name.encode("latin-1"), one.encode("latin-1"))
    view = RequestView(method, path, query, HeaderView(raw), client, secure)
    return Call(
        view,
        api if api is not None else fake_api(),
        identity if identity is not None else no_certificate(),
        via_load_balancer=via_load_balancer,
    )


def configure(
    plugin: Any,
    options: Mapping[str, Any] | None = None,
    *,
    api: ApiConfig | None = None,
    config: GatewayConfig | None = None,
) -> Any:
    """``plugin.configure`` as the gateway calls it; raises ``PluginConfigError``."""
    api = api if api is not None else fake_api()
    config = config if config is not None else fake_config([api])
    table = {"name": getattr(plugin, "name", "plugin"), **(options or {})}
    return plugin.configure(Options(table), PluginContext(api, config))


def pipeline(stages: Sequence[Any] = (), *, api: ApiConfig | None = None) -> Pipeline:
    """A pipeline of ``stages`` (each placed by the interfaces it provides), in order."""
    groups: dict[Any, list[Named]] = {
        iface: []
        for iface in (
            ICertificateCheck,
            IScheme,
            IAuthoriser,
            IRequestTransform,
            IResponseTransform,
        )
    }
    for i, stage in enumerate(stages):
        named = Named(str(getattr(stage, "name", f"stage{i}")), stage)
        for iface, group in groups.items():
            if iface.providedBy(stage):
                group.append(named)
    return Pipeline(
        api if api is not None else fake_api(),
        checks=tuple(groups[ICertificateCheck]),
        schemes=tuple(groups[IScheme]),
        authorisers=tuple(groups[IAuthoriser]),
        request_transforms=tuple(groups[IRequestTransform]),
        response_transforms=tuple(groups[IResponseTransform]),
    )


def run(target: Pipeline, call: Call) -> Outcome:
    """Run ``call`` through ``target``; a Deferred outcome must already have fired."""
    outcome = target.run(call)
    if not isinstance(outcome, Deferred):
        return outcome
    results: list[Outcome | Failure] = []
    outcome.addBoth(results.append)
    if not results:
        raise AssertionError("the pipeline is still waiting: fire the stage's Deferred first")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert not isinstance(result, Failure)
    return result
