"""Every WSO2 OpenAPI extension twistedgw knows: honoured, not supported yet, or refused.

One table, ``EXTENSIONS``, says for each ``x-wso2-*`` extension (and API
Manager's ``x-throttling-tier``, ``x-auth-type``, ``x-scope``) where WSO2 reads
it and what twistedgw does with it there. Nothing a definition says is dropped
in silence: an extension twistedgw does not honour is a ``check`` error naming
it, its JSON pointer and why, unless its value asks for nothing twistedgw does
not already do (a throttling tier of ``Unlimited``, ``x-wso2-http2-backend-enabled:
false``, ...). An unknown ``x-wso2-*`` name is a
warning naming the closest known one, and an error when it is a near miss of a
security extension (``x-wso2-mutual-sll`` would otherwise leave an API open).

To honour an extension, implement it in the definition reader and set its
level's ``Support`` to ``HONOURED`` here: the check, the messages and the
documentation's table (tested against this one) follow.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Support(enum.Enum):
    HONOURED = "honoured"
    NOT_YET = "not supported yet"
    REFUSED = "refused"


API = "api"  # the top of the definition
RESOURCE = "resource"  # a path item or an operation
ENDPOINT = "endpoint"  # a key inside an endpoint (x-wso2-production-endpoints, ...)

#: A value that asks for nothing twistedgw does not do: None = it asks for something
#: (so a non-honoured extension is refused); "" = inert; other text = inert, warn this.
Inert = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Extension:
    name: str
    levels: Mapping[str, Support]  # where WSO2 reads it -> what twistedgw does there
    meaning: str  # WSO2's meaning (the documentation's table)
    twistedgw: str  # what twistedgw does (honoured) or why not (the refusal's reason)
    inert: Inert | None = field(default=None, compare=False)
    security: bool = False  # a near miss of the name is an error, not a warning

    def support(self, level: str) -> Support | None:
        """What twistedgw does with it at ``level``; None if WSO2 does not read it there."""
        return self.levels.get(level)


def _disabled(value: Any) -> str | None:
    return "" if value is False else None


_HONOURED_API = {API: Support.HONOURED}
_PLUGIN = ("interceptors are Ballerina or Java code that twistedgw cannot run; a twistedgw "
           "plugin does the same job ([[apis.plugins]], a request or response transform: see "
           "docs/tutorials/writing-a-plugin.md)")

EXTENSIONS: tuple[Extension, ...] = (
    Extension(
        "x-wso2-basePath", _HONOURED_API,
        "the context the gateway serves the API at ({version} is replaced)",
        "the API's context"),
    Extension(
        "x-wso2-production-endpoints",
        {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "the backend: urls, type (load_balance, failover, http), or \"#/x-wso2-endpoints/NAME\"",
        "the API's backends and backend_mode; on a path or an operation, its own (the "
        "operation's wins over its path's)"),
    Extension(
        "x-wso2-sandbox-endpoints", {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "the backend for callers whose credential is a sandbox one",
        "callers whose token says keytype SANDBOX, or whose [[api_keys]] entry says keytype "
        "= \"sandbox\", go there (401 where there is none)"),
    Extension(
        "x-wso2-endpoints", _HONOURED_API,
        "named endpoints that x-wso2-production-endpoints refers to",
        "the endpoints \"#/x-wso2-endpoints/NAME\" refers to"),
    Extension(
        "x-wso2-request-interceptor", {API: Support.REFUSED, RESOURCE: Support.REFUSED},
        "Ballerina/Java code (Microgateway), or an interceptor service (Choreo Connect) run on "
        "each request", _PLUGIN),
    Extension(
        "x-wso2-response-interceptor", {API: Support.REFUSED, RESOURCE: Support.REFUSED},
        "the same, on each response", _PLUGIN),
    Extension(
        "x-wso2-throttling-tier", {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "a rate limit policy (policies.yaml) for the API or the operation",
        "the named [[throttling_policies]] entry (or a built-in one) for all callers of the "
        "API or operation; the API's wins over the operations'"),
    Extension(
        "x-throttling-tier", {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "API Manager's rate limit policy for the API or the operation",
        "as x-wso2-throttling-tier"),
    Extension(
        "x-wso2-cors", _HONOURED_API,
        "the API's CORS settings (allowed origins, methods, headers, credentials)",
        "[apis.cors]: the gateway answers preflights before authentication and adds the "
        "Access-Control headers to every answer (corsConfigurationEnabled: false: none)"),
    Extension(
        "x-wso2-response-cache", _HONOURED_API,
        "caching of responses (enabled, cacheTimeoutInSeconds)",
        "[apis.response_cache]: GET answers kept per caller for at most "
        "cacheTimeoutInSeconds, as Cache-Control allows"),
    Extension(
        "x-wso2-disable-security", {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "true: no authentication for the API or the resource (the most specific level wins)",
        "the operation is open (true) or secured again (false)", security=True),
    Extension(
        "x-wso2-application-security", {API: Support.HONOURED, RESOURCE: Support.HONOURED},
        "the application level: security-types (oauth2, api_key, basic_auth) of which one "
        "must pass, and optional",
        "api_key, oauth2 (as JWTs from [[jwt_issuers]]) and basic_auth ([[basic_users]])",
        security=True),
    Extension(
        "x-wso2-auth-header", {API: Support.HONOURED},
        "the header that carries the bearer token",
        "bearer tokens are read from that header (auth_header), which is removed before "
        "forwarding unless forward_authorization", security=True),
    Extension(
        "x-wso2-api-key-header", _HONOURED_API,
        "the header that carries the API key (API Manager 4)",
        "the header the API key is read from (and removed before forwarding)"),
    Extension(
        "x-wso2-transports", {API: Support.HONOURED},
        "the transports the API is served on: http, https",
        "transports: https only answers a plain request 403 (a trusted proxy's "
        "X-Forwarded-Proto: https counts as https); http only answers https with 404, as the "
        "Microgateway serves it on its HTTP listener only", security=True),
    Extension(
        "x-wso2-mutual-ssl", _HONOURED_API,
        "the transport level: mutual TLS mandatory or optional", "mutual_ssl", security=True),
    Extension(
        "x-auth-type", {RESOURCE: Support.HONOURED},
        "API Manager: None means the resource needs no authentication; Application, "
        "Application User, Application & Application User, Any keep it",
        "None opens the operation (x-wso2-disable-security wins over it)"),
    Extension(
        "x-scope", {RESOURCE: Support.REFUSED},
        "the OAuth2 scope a token needs for the resource",
        "token scopes are not checked, so any valid token would pass"),
    Extension(
        "x-wso2-security", _HONOURED_API,
        "API Manager 2.x: the scopes and their roles (enforced through x-scope)",
        "metadata: declares scopes, enforces nothing"),
    Extension(
        "x-wso2-owner", _HONOURED_API,
        "the API's provider (analytics)", "metadata: no effect on traffic"),
    Extension(
        "x-wso2-label", _HONOURED_API,
        "the gateway environments that deploy the API (Choreo Connect)",
        "metadata: twistedgw serves the APIs its config lists"),
    Extension(
        "x-wso2-pass-request-payload-to-enforcer", _HONOURED_API,
        "Choreo Connect: hand the request body to its enforcer",
        "metadata: no effect on traffic"),
    Extension(
        "x-wso2-http2-backend-enabled", {API: Support.REFUSED},
        "Choreo Connect: HTTP/2 to the backend",
        "twistedgw speaks HTTP/1.1 to backends (false is accepted)", inert=_disabled),
    Extension(
        "securityConfig", {ENDPOINT: Support.HONOURED},
        "credentials the gateway sends to the backend (type: basic, username, password)",
        "Authorization: Basic to the backend (the client's is replaced); the password from "
        "NAME_prod_basic_password / NAME_sand_basic_password or [[apis.backend_credentials]]"),
    Extension(
        "advanceEndpointConfig", {ENDPOINT: Support.REFUSED},
        "timeouts, retries and circuit breakers for the endpoint",
        "set backend_timeout in the [[apis]] table; failover skips a failed backend for 30 s"),
)

BY_NAME: Mapping[str, Extension] = {e.name: e for e in EXTENSIONS}
#: Near misses of these names are errors: a misspelt one would leave an API open.
SECURITY_NAMES = (
    "x-wso2-mutual-ssl",
    "x-wso2-disable-security",
    "x-wso2-application-security",
    "x-wso2-auth-header",
    "x-wso2-transports",
)
_MAX_NEAR = 2


def distance(a: str, b: str, limit: int = 8) -> int:
    """Levenshtein distance of ``a`` and ``b`` (case-insensitive), capped at ``limit``."""
    a, b = a.lower(), b.lower()
    if abs(len(a) - len(b)) > limit:
        return limit
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return min(previous[-1], limit)


def closest(name: str) -> tuple[str, int]:
    """The known extension name nearest to ``name``, and how near."""
    best = min((distance(name, known), known) for known in BY_NAME if known.startswith("x-"))
    return best[1], best[0]


@dataclass(frozen=True)
class Finding:
    where: str  # JSON pointer of the extension
    message: str
    error: bool


def judge(name: str, value: Any, level: str, where: str) -> Iterator[Finding]:
    """What ``check`` says about extension ``name`` (valued ``value``) found at ``level``."""
    known = BY_NAME.get(name)
    if known is None:
        if not name.startswith("x-wso2-"):
            return  # another vendor's, or not an extension name twistedgw reads
        near, how_far = closest(name)
        risky = [s for s in SECURITY_NAMES if distance(name, s) <= _MAX_NEAR]
        if risky:
            yield Finding(where, f"unknown extension {name!r}: did you mean {risky[0]!r}? "
                                 "(a misspelt security extension would be ignored; fix it "
                                 "or remove it)", True)
        else:
            hint = f"; did you mean {near!r}?" if how_far <= 4 else ""
            yield Finding(where, f"unknown WSO2 extension {name!r} is ignored{hint}", False)
        return
    support = known.support(level)
    if support is None:
        wso2_levels = " and ".join(sorted(known.levels))
        text = (f"{name} is read at the {wso2_levels} level only, by WSO2 and by twistedgw; "
                "here it has no effect")
        yield Finding(where, text + (": move it" if known.security else ""), known.security)
        return
    if support is Support.HONOURED:
        return
    note = known.inert(value) if known.inert is not None else None
    if note is not None:
        if note:
            yield Finding(where, f"{name}: {note}", False)
        return
    if support is Support.NOT_YET:
        yield Finding(where, f"{name} is not supported yet: {known.twistedgw}; remove it to "
                             "serve the API without it", True)
    else:
        yield Finding(where, f"{name} is not supported: {known.twistedgw}", True)
