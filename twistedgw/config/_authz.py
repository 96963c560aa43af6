"""``[authz]``: the endpoint a load balancer asks for verdicts (NGINX ``auth_request``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twistedgw.config._apis import ApiConfig
from twistedgw.config._base import TableReader, header_name, quoted


@dataclass(frozen=True)
class AuthzConfig:
    path: str = "/_twistedgw/authz"
    original_uri_header: str = "X-Original-URI"
    original_method_header: str = "X-Original-Method"
    original_host_header: str = "X-Original-Host"
    cache_seconds: float = 10.0  # the longest a load balancer may cache an allow verdict


def _cache_seconds(r: TableReader) -> float:
    """``[authz] cache_seconds``: 0 turns caching off; NGINX counts whole seconds."""
    value = r.get("cache_seconds", float, AuthzConfig.cache_seconds)
    if not 0 <= value <= 86400 or value != value:
        r.problem("cache_seconds", f"must be 0-86400, got {quoted(value)}")
        return AuthzConfig.cache_seconds
    return value


def read_authz(a: TableReader, apis: Sequence[ApiConfig]) -> AuthzConfig:
    """``[authz]``; its path must lie outside every API's context (``apis``)."""
    authz_path = a.get("path", str, AuthzConfig.path)
    if not authz_path.startswith("/"):
        a.problem("path", f"must start with '/', got {quoted(authz_path)}")
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
        a.problem("path", f"{quoted(authz.path)} lies inside an API context")
    return authz
