"""``upstream`` blocks: twistedgw's socket, and each NGINX-path API's backends.

One backend: one upstream with keep-alive. Several, in the Lua variant: one upstream
per backend, and Lua picks each request's (``_lua``). Several, with stock NGINX: one
group, ``max_fails=1 fail_timeout=30s`` (a failed backend is skipped for 30 s, as in
direct mode) and, for ``failover``, the second as ``backup``.
"""

from __future__ import annotations

from twistedgw.app.nginx._plan import ApiPlan
from twistedgw.app.nginx._site import Site
from twistedgw.app.nginx._text import host_port

SUSPEND_SECONDS = 30  # upstream/_forward.py ForwardSettings.endpoint_suspend_seconds


def upstream_name(plan: ApiPlan, k: int | None = None) -> str:
    """The API's upstream, or its k-th backend's (Lua's pick): a short name, since a
    variable ``proxy_pass`` parses it and compares it with every upstream's name of the
    same length on each request."""
    if k is not None:
        return f"tgw_{plan.index}_{k}"
    return f"twistedgw_backend_{plan.index}"


def upstreams(site: Site) -> None:
    w = site.w
    nginx = site.config.nginx
    assert nginx is not None
    w("upstream twistedgw_authz {")
    w(f"    server {nginx.authz};")
    w("    keepalive 32;")
    w("}")
    for plan in site.plans:
        if not plan.nginx_path:
            continue
        endpoints = plan.api.endpoints
        if plan.peers:
            for k, endpoint in enumerate(endpoints):
                w()
                w(f"upstream {upstream_name(plan, k)} {{  # {plan.api.label}: {endpoint}")
                w(f"    server {host_port(endpoint)};")
                w("    keepalive 32;")
                w("}")
            continue
        w()
        w(f"upstream {upstream_name(plan)} {{  # {plan.api.label}")
        if len(endpoints) == 1:
            w(f"    server {host_port(endpoints[0])};")
        else:
            failover = plan.api.backend_mode == "failover"
            for k, endpoint in enumerate(endpoints):
                backup = " backup" if failover and k > 0 else ""
                w(f"    server {host_port(endpoint)} max_fails=1 "
                  f"fail_timeout={SUSPEND_SECONDS}s{backup};")
        w("    keepalive 32;")
        w("}")
