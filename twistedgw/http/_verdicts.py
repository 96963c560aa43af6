"""How long a load balancer may keep an authz verdict, and what it must forward with it.

The authz endpoint (NGINX ``auth_request``) says on every answer whether it may
be cached (``X-Accel-Expires``, which NGINX reads first, and ``Cache-Control``
for any other cache), so a hand-written NGINX config that honours those headers
is as correct as the one ``twistedgw nginx-config`` renders. An allow is never
cached past ``[authz] cache_seconds`` nor past the certificate's expiry; a
refusal is never cached (NGINX asks the gateway again for its JSON body anyway).
Decisions that can change between two requests with the same credentials
(per-certificate tiers, OCSP answers kept for less than ``cache_seconds``,
plugins, which may read anything) are never cached.
"""

from __future__ import annotations

import time

from twistedgw.config import UNLIMITED, ApiConfig, GatewayConfig, Mode, variants
from twistedgw.identity import ClientIdentity, Outcome
from twistedgw.identity import _forwarding as idforward

#: Prefix of the authz answer headers that carry the identity headers to forward:
#: ``X-Twistedgw-Set-X-Forwarded-Client-Cert: <value>`` means "send the backend
#: ``X-Forwarded-Client-Cert: <value>``" (NGINX: ``auth_request_set``).
SET_PREFIX = b"x-twistedgw-set-"

NO_STORE = ((b"X-Accel-Expires", b"0"), (b"Cache-Control", b"no-store"))


def _securities(api: ApiConfig) -> list[ApiConfig]:
    """The API and its OpenAPI operations' variants (each with its own schemes)."""
    return [api, *variants(api)]


def key_headers(api: ApiConfig) -> tuple[str, ...]:
    """Lower-case names of the request headers whose values decide a verdict besides the
    certificate: the API key header of every security the API's operations use."""
    return tuple(sorted({
        c.api_key_header.lower() for c in _securities(api) if c.api_key is not Mode.DISABLED
    }))


def uses_bearer(api: ApiConfig) -> bool:
    """The API, or one of its operations, reads a bearer token (``jwt``)."""
    return any(getattr(c, "jwt", Mode.DISABLED) is not Mode.DISABLED for c in _securities(api))


def uses_basic(api: ApiConfig) -> bool:
    """The API, or one of its operations, checks ``Authorization: Basic`` passwords."""
    return any(c.basic_auth is not Mode.DISABLED for c in _securities(api))


def uses_policy(api: ApiConfig) -> bool:
    """The API, or one of its operations, is under a throttling policy (every request
    counts, so no verdict can be cached)."""
    return any(
        c.throttling_tier not in (None, UNLIMITED) or c.resource_throttle is not None
        for c in _securities(api)
    )


def per_operation(api: ApiConfig) -> bool:
    """An API read from an OpenAPI definition: the verdict depends on method and path."""
    return api.operations is not None


def api_cacheable(config: GatewayConfig, api: ApiConfig) -> bool:
    """Whether an allow for ``api`` may be cached at all (the same for every caller)."""
    authz = config.authz
    if authz is None or authz.cache_seconds < 1 or api.tiers or api.plugins:
        return False
    # A bearer token's verdict ends with the token, which the cache key cannot see; a
    # password's would have to be keyed by the password.
    if uses_bearer(api) or uses_basic(api) or uses_policy(api):
        return False
    tls = config.tls
    return not (
        api.mutual_ssl is not Mode.DISABLED
        and "ocsp" in tls.revocation
        and tls.ocsp_cache_seconds < authz.cache_seconds
    )


def allow_lifetime(
    config: GatewayConfig, api: ApiConfig, identity: ClientIdentity, now: float | None = None
) -> int:
    """Whole seconds an allow may be cached; 0 = ask every time."""
    if not api_cacheable(config, api):
        return 0
    assert config.authz is not None
    now = time.time() if now is None else now
    limit = config.authz.cache_seconds
    chain = identity.chain
    if chain:
        # The verdict changes when any certificate in the chain expires, or when a
        # certificate that is not yet valid becomes valid.
        limit = min(limit, min(c.not_valid_after_utc.timestamp() for c in chain) - now)
        if identity.outcome is Outcome.FAILED:
            starts = [c.not_valid_before_utc.timestamp() - now for c in chain]
            future = [s for s in starts if s > 0]
            if future:
                limit = min(limit, min(future))
    return max(0, int(limit))


def cache_headers(lifetime: int) -> tuple[tuple[bytes, bytes], ...]:
    """``X-Accel-Expires`` first: NGINX ignores ``Cache-Control`` once it has seen it."""
    if lifetime <= 0:
        return NO_STORE
    value = str(lifetime).encode()
    return ((b"X-Accel-Expires", value), (b"Cache-Control", b"max-age=" + value))


def identity_answer_headers(
    config: GatewayConfig, api: ApiConfig, identity: ClientIdentity
) -> list[tuple[bytes, bytes]]:
    """The identity headers the direct mode would send the backend, as answer headers."""
    if not idforward.mtls_passed(identity, api):
        return []
    return [
        (SET_PREFIX + name.lower(), value)
        for name, value in idforward.headers_for(config.identity, identity)
    ]


def identity_header_names(config: GatewayConfig) -> list[bytes]:
    """Lower-case names of the identity headers the gateway may set (the config decides)."""
    forward = config.identity.forward
    if forward == "xfcc":
        return [idforward.XFCC]
    if forward == "rfc9440":
        return [idforward.CLIENT_CERT, idforward.CLIENT_CERT_CHAIN]
    if forward == "headers":
        return [name.lower().encode() for _f, name in config.identity.headers]
    return []
