"""The Lua variant: the module shipped inside the package (``twistedgw_verdicts.lua``)
and the ``access_by_lua_block`` each NGINX-path API's location calls it from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twistedgw.app.nginx._hosts import lua_checks
from twistedgw.app.nginx._text import lua_string
from twistedgw.http import verdicts

if TYPE_CHECKING:
    from twistedgw.app.nginx._plan import ApiPlan
    from twistedgw.app.nginx._site import Site

LUA_NAME = "twistedgw_verdicts.lua"


def lua_source() -> Path:
    """The Lua module's file in the installed package (a wheel ships it as package data)."""
    return Path(__file__).resolve().with_name(LUA_NAME)


def answers(site: Site, plan: ApiPlan) -> list[tuple[str, str]]:
    """(authz answer header, location variable) pairs the location takes from a verdict."""
    out = [((verdicts.SET_PREFIX + name).decode(), f"tgw_id_{n}")
           for n, name in enumerate(site.identity_names)]
    out.append(("x-consumer-name", "tgw_consumer"))
    if verdicts.authorization_rule(plan.api) == "answer":
        out.append((verdicts.AUTHORIZATION.decode(), "tgw_authz_rm"))
    for n, name in enumerate(plan.headers.declared):  # set by a plugin, said by the answer
        out.append(((verdicts.SET_PREFIX.decode() + name.lower()), f"tgw_ph_{n}"))
    if plan.tiers:  # kept with the verdict; no variable: Lua spends the bucket it names
        out.append((verdicts.TIER.decode(), ""))
    return out


def _backends(site: Site, plan: ApiPlan) -> str:
    """The API's backends for Lua's pick, in order: {upstream, Host, TLS name, endpoint}
    (scheme://host:port, what direct mode marks down: shared by every API using it)."""
    from twistedgw.app.nginx._text import host_header, host_port
    from twistedgw.app.nginx._upstreams import upstream_name

    rows = []
    for k, endpoint in enumerate(plan.api.endpoints):
        name = urlsplit(endpoint).hostname or ""
        parts = urlsplit(endpoint)
        where = f"{parts.scheme}://{host_port(endpoint)}".lower()  # what is marked down
        rows.append(f"{{{lua_string(upstream_name(plan, k))}, "
                    f"{lua_string(host_header(endpoint))}, {lua_string(name)}, "
                    f"{lua_string(where)}}}")
    return "{" + ", ".join(rows) + "}"


def peer_name(site: Site, plan: ApiPlan) -> bool:
    """Whether the location's proxy_ssl_name is each backend's own ($tgw_peer_name): an
    https API whose [backend_tls] names no server."""
    return plan.api.backend.startswith("https://") and not site.config.backend_tls_for(
        plan.api).server_name


def _peer_vars(site: Site, plan: ApiPlan, indent: str) -> list[str]:
    """The variables Lua sets with the backend it picks (``$tgw_peers``: the try and the
    ones left, for the retry), only those the location reads."""
    if not plan.peers:
        return []
    named = peer_name(site, plan)
    for variable in ("tgw_peer", "tgw_peer_host", *(("tgw_peer_name",) if named else ()),
                     "tgw_peers"):
        site.w(f'{indent}set ${variable} "";')
    mode = lua_string(plan.api.backend_mode)
    return [f"backends = {_backends(site, plan)}", f"backend_mode = {mode}",
            f"peer_name = {'true' if named else 'false'}"]


def _tiers(site: Site, plan: ApiPlan) -> list[str]:
    """How Lua spends this API's tier buckets: the store, direct mode's 429 bodies (a
    certificate's and a consumer's) and the 503 of ``[cluster] on_failure = "closed"``."""
    if not plan.tiers:
        return []
    from twistedgw import errors
    from twistedgw.pipeline import EXPIRE_MS, PERIOD_MS, SCRIPT, SCRIPT_SHA

    bodies = {
        "l": errors.throttled("the certificate's tier limit was exceeded").body().decode(),
        "c": errors.throttled("the consumer's tier limit was exceeded").body().decode(),
    }
    parts = [f"store = {lua_string(plan.tiers)}",
             f"l = {lua_string(bodies['l'])}", f"c = {lua_string(bodies['c'])}"]
    cluster = site.config.cluster
    if plan.tiers == "redis":
        assert cluster is not None
        unavailable = errors.limits_unavailable(
            "the cluster store cannot answer").body().decode()
        assert PERIOD_MS + 1000 == EXPIRE_MS  # the expiry rule Lua applies to any period
        parts += [
            f"host = {lua_string(cluster.host)}", f"port = {cluster.port}",
            f"path = {lua_string(cluster.path or '')}", f"db = {cluster.db}",
            f"username = {lua_string(cluster.username or '')}",
            f"password = {lua_string(cluster.password or '')}",
            f"timeout = {max(1, int(cluster.timeout * 1000))}",
            f"closed = {'true' if cluster.on_failure == 'closed' else 'false'}",
            f"unavailable = {lua_string(unavailable)}",
            f"sha = {lua_string(SCRIPT_SHA)}", f"script = {lua_string(SCRIPT.decode())}",
        ]
    return ["tiers = {" + ", ".join(parts) + "}"]


def _ask(site: Site, plan: ApiPlan) -> str:
    """How Lua asks twistedgw's authz endpoint (what the auth_request variant's internal
    authz location says with proxy_set_header)."""
    config = site.config
    nginx, authz = config.nginx, config.authz
    header = config.mutual_ssl.certificate_header
    assert nginx is not None and authz is not None and header is not None
    parts = {
        "address": nginx.authz,
        "path": authz.path, "uri_header": authz.original_uri_header,
        "method_header": authz.original_method_header, "cert_header": header,
        "cert_var": site.client_cert.lstrip("$"), "asker": plan.asker_header,
        "expected": verdicts.api_reference(plan.api),
    }
    return "ask = {" + ", ".join(f"{k} = {lua_string(v)}" for k, v in parts.items()) + "}"


def lua_retry(site: Site, plan: ApiPlan, indent: str) -> None:
    """The retry location's Lua: the next backend, or direct mode's 503/504."""
    w = site.w
    spec = [f'api = "{plan.index}"', f"backends = {_backends(site, plan)}",
            f"peer_name = {'true' if peer_name(site, plan) else 'false'}"]
    w(f"{indent}access_by_lua_block {{")
    w(f'{indent}    require("twistedgw_verdicts").retry({{{", ".join(spec)}}})')
    w(f"{indent}}}")


def lua_access(site: Site, plan: ApiPlan, indent: str) -> None:
    """``access_by_lua_block`` for one API: its verdict cache key's parts and the answer
    headers whose values the location's variables take."""
    w = site.w
    api = plan.api
    pairs = answers(site, plan)
    for _answer, variable in pairs:
        if variable:
            w(f'{indent}set ${variable} "";')
    table = ", ".join(f"{{{lua_string(a)}, {lua_string(v)}}}" for a, v in pairs)
    keys = ", ".join(lua_string(h) for h in verdicts.key_headers(api))
    spec = [
        f'api = "{plan.index}"',
        f"keys = {{{keys}}}",
        f"bearer = {'true' if verdicts.uses_bearer(api) else 'false'}",
        f"per_operation = {'true' if verdicts.per_operation(api) else 'false'}",
        f"drop_underscored = {'true' if plan.drop_underscored else 'false'}",
        f"answers = {{{table}}}",
        _ask(site, plan),
        *_peer_vars(site, plan, indent),
        *_tiers(site, plan),
    ]
    if plan.headers.response_set:  # also on answers written on the raw connection
        pairs_set = ", ".join(f"{{{lua_string(n)}, {lua_string(v)}}}"
                              for n, v in plan.headers.response_set)
        spec.append(f"response_headers = {{{pairs_set}}}")
    # What Lua checks (the Host; the server's [[tls.sni]] entry, compared with the
    # connection's $tgw_sni_entry, read once per connection), when locations check them.
    checks = lua_checks(site)
    server = "" if checks is None else f", {lua_string(checks)}"
    w(f"{indent}access_by_lua_block {{")
    w(f'{indent}    local v = package.loaded.twistedgw_verdicts or require("twistedgw_verdicts")')
    w(f'{indent}    return v.access(v.specs["{plan.index}"] or v.define("{plan.index}", {{')
    for part in spec:
        w(f"{indent}        {part},")
    w(f"{indent}    }}){server})")
    w(f"{indent}}}")
