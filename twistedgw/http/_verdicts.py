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

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from twistedgw import errors
from twistedgw._memo import remember
from twistedgw.config import UNLIMITED, ApiConfig, GatewayConfig, IdentityConfig, Mode, variants
from twistedgw.identity import ClientIdentity, Outcome
from twistedgw.identity import forwarding as idforward
from twistedgw.pipeline import Limit

#: Prefix of the authz answer headers that carry the identity headers to forward:
#: ``X-Twistedgw-Set-X-Forwarded-Client-Cert: <value>`` means "send the backend
#: ``X-Forwarded-Client-Cert: <value>``" (NGINX: ``auth_request_set``).
SET_PREFIX = b"x-twistedgw-set-"

NO_STORE = ((b"X-Accel-Expires", b"0"), (b"Cache-Control", b"no-store"))
#: ``NO_STORE`` for the rendered config (an ``answer`` asker, ``ASKER``): NGINX reads only
#: ``X-Accel-Expires``, and ``0`` is what keeps the answer out of its ``proxy_cache``
#: (``u->cacheable = 0``; the rendered location has no ``proxy_cache_valid`` either, so an
#: answer without it is not kept); the Lua file keeps only an answer whose
#: ``X-Accel-Expires`` is above 0. ``Cache-Control`` would be one more line NGINX parses.
NGINX_NO_STORE = ((b"X-Accel-Expires", b"0"),)
_CACHE_CONTROL_NO_STORE = NO_STORE[1]

#: Sent by the config ``twistedgw nginx-config`` renders: what the asker does with the
#: answer, comma-separated. ``answer``: refusals come as 401 (or 403, the only other
#: status ``auth_request`` understands) with the direct mode's status and JSON in
#: ``X-Twistedgw-Status`` and ``X-Twistedgw-Error``, so NGINX answers them itself
#: without reading the request body. ``token-key``: the asker's cache key holds a hash
#: of the ``Authorization`` header, so bearer-token verdicts may be cached (never past
#: the token's ``exp``). ``tiers``: the asker spends the tier buckets itself; the answer
#: names the bucket (``X-Twistedgw-Tier``) and the endpoint spends nothing.
ASKER = b"x-twistedgw-nginx"
#: The API NGINX routed the request to (its label, percent-encoded): when twistedgw's
#: routing names another, the answer is a refusal NGINX hands to the gateway path.
EXPECTED_API = b"x-twistedgw-api-expected"
STATUS = b"x-twistedgw-status"
ERROR = b"x-twistedgw-error"
TIER = b"x-twistedgw-tier"

# Module constants for what runs per decision: on Python 3.11 an Enum class attribute
# (``Mode.DISABLED``) goes through ``EnumType.__getattr__``'s slot, ~800 instructions.
_DISABLED = Mode.DISABLED
_FAILED = Outcome.FAILED


@dataclass(frozen=True, slots=True)
class Asker:
    """What the proxy asking the authz endpoint does with its answer (``ASKER``)."""

    answer: bool = False
    token_key: bool = False
    tiers: bool = False


PLAIN = Asker()


#: ``asker``'s answers by value: (from anyone, from a trusted proxy). A rendered config
#: sends a few values (per API); a plain dict, emptied when full (an ``lru_cache`` call
#: costs ~600 instructions per decision, a dict look-up ~100).
_ASKERS: dict[bytes, tuple[Asker, Asker]] = {}
_ASKERS_MAX = 64


_PLAINS = (PLAIN, PLAIN)


def asker(value: bytes | None, trusted: bool) -> Asker:
    """``ASKER``'s value; ``token_key`` and ``tiers`` count only from a trusted proxy
    (they change what may be cached and who counts), ``answer`` only changes the form."""
    return askers(value)[1 if trusted else 0]


def askers(value: bytes | None) -> tuple[Asker, Asker]:
    """``asker(value, False)`` and ``asker(value, True)``, in one look-up (the authz
    endpoint reads the header before it knows whether a trusted proxy asked)."""
    if not value:
        return _PLAINS
    known = _ASKERS.get(value)
    if known is None:
        words = {w.strip() for w in value.lower().split(b",")}
        answer = b"answer" in words
        known = (
            _asker(answer, False, False),
            _asker(answer, b"token-key" in words, b"tiers" in words),
        )
        remember(_ASKERS, value, known, _ASKERS_MAX)
    return known


@functools.lru_cache(maxsize=8)
def _asker(answer: bool, token_key: bool, tiers: bool) -> Asker:
    """The one ``Asker`` of each combination (``api_cacheable`` keeps answers by its id)."""
    return Asker(answer, token_key, tiers)


@functools.lru_cache(maxsize=1024)
def _reference(label: str) -> str:
    return quote(label, safe="")


def api_reference(api: ApiConfig) -> str:
    """How the rendered config names an API to the authz endpoint (``EXPECTED_API``)."""
    return _reference(api.label)


#: ``expected_value``'s answers by label (a plain dict: see ``_ASKERS``), emptied when full.
_EXPECTED: dict[str, bytes] = {}


def expected_value(api: ApiConfig) -> bytes:
    """``api_reference`` as the ``EXPECTED_API`` header's bytes (made once per label)."""
    label = api.label
    known = _EXPECTED.get(label)
    if known is None:
        known = _reference(label).encode()
        remember(_EXPECTED, label, known, 1024)
    return known


def refusal_for_nginx(
    error: errors.GatewayError, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[errors.GatewayError, tuple[tuple[bytes, bytes], ...]]:
    """A direct-mode refusal as the ``answer`` asker wants it: 401 stays 401, any other
    status becomes 403 (``auth_request`` turns other codes into a 500 of its own), with
    the real status and the JSON body in headers beside the refusal's own."""
    shown = error if error.status in (401, 403) else replace(error, status=403)
    extra = ((STATUS, str(error.status).encode()), (ERROR, error.body()))
    return shown, (*headers, *extra)


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


#: The answer says ``remove`` when the judged operation's pipeline removes the bearer
#: token before forwarding (``jwt`` without ``forward_authorization``).
AUTHORIZATION = b"x-twistedgw-authorization"


def strips_authorization(api: ApiConfig) -> bool:
    """Whether requests under ``api``'s security (an API or one operation's) reach the
    backend without ``Authorization`` (the direct mode's ``StripAuthorization``)."""
    return api.jwt is not _DISABLED and not api.forward_authorization


def authorization_rule(api: ApiConfig) -> str:
    """``strip`` (every operation removes Authorization), ``keep`` (none does) or
    ``answer`` (it depends on the operation: the authz answer says)."""
    strips = {strips_authorization(c) for c in _securities(api)}
    if strips == {True}:
        return "strip"
    return "keep" if strips == {False} else "answer"


#: The shipped plugins that only edit headers (fixed values): they decide nothing.
HEADER_PLUGINS = ("request-headers", "response-headers")


def deciding_plugins(api: ApiConfig) -> bool:
    """Plugins that may decide (third-party ones may read anything in the request)."""
    return any(spec.name not in HEADER_PLUGINS for spec in api.plugins)


def per_operation(api: ApiConfig) -> bool:
    """An API read from an OpenAPI definition: the verdict depends on method and path."""
    return api.operations is not None


#: ``api_cacheable``'s answers by (config, API, asker) ids: the same for every decision
#: under one config (the entry holds the three objects, so no id is reused while it lives).
_CACHEABLE: dict[tuple[int, int, int], tuple[GatewayConfig, ApiConfig, Asker, bool]] = {}
_CACHEABLE_MAX = 1024


def api_cacheable(config: GatewayConfig, api: ApiConfig, asker: Asker = PLAIN) -> bool:
    """Whether an allow for ``api`` may be cached at all by ``asker`` (the same for every
    caller). Tiers count every request, so only an asker that spends the buckets itself
    may cache them; a bearer token's verdict ends with the token, so only an asker whose
    cache key holds the token's hash may cache it. Worked out once per config, API and
    asker (it walks the API's operations and plugins: ~5% of a decision per request)."""
    key = (id(config), id(api), id(asker))
    known = _CACHEABLE.get(key)
    if known is not None:
        return known[3]
    answer = _api_cacheable(config, api, asker)
    remember(_CACHEABLE, key, (config, api, asker, answer), _CACHEABLE_MAX)
    return answer


def _api_cacheable(config: GatewayConfig, api: ApiConfig, asker: Asker) -> bool:
    authz = config.authz
    if authz is None or authz.cache_seconds < 1 or deciding_plugins(api):
        return False
    if api.tiers and not asker.tiers:
        return False
    if not asker.token_key and uses_bearer(api):
        return False
    if uses_basic(api) or uses_policy(api):  # a password; every request counts
        return False
    tls = config.tls
    return not (
        api.mutual_ssl is not _DISABLED
        and "ocsp" in tls.revocation
        and tls.ocsp_cache_seconds < authz.cache_seconds
    )


def allow_lifetime(
    config: GatewayConfig,
    api: ApiConfig,
    identity: ClientIdentity,
    now: float | None = None,
    *,
    asker: Asker = PLAIN,
    claims: Mapping[str, Any] | None = None,
) -> int:
    """Whole seconds an allow may be cached; 0 = ask every time. Never past
    ``cache_seconds``, any certificate's expiry in the chain, nor a token's ``exp``."""
    if not api_cacheable(config, api, asker):
        return 0
    assert config.authz is not None
    now = time.time() if now is None else now
    limit = config.authz.cache_seconds
    chain = identity.chain
    if chain:
        # The verdict changes when any certificate in the chain expires, or when a
        # certificate that is not yet valid becomes valid.
        limit = min(limit, min(c.not_valid_after_utc.timestamp() for c in chain) - now)
        if identity.outcome is _FAILED:
            starts = [c.not_valid_before_utc.timestamp() - now for c in chain]
            future = [s for s in starts if s > 0]
            if future:
                limit = min(limit, min(future))
    if claims is not None:
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            try:
                limit = min(limit, float(exp) - now)
            except OverflowError:
                return 0
    return max(0, int(limit))


def tier_value(config: GatewayConfig, limit: Limit) -> bytes:
    """``X-Twistedgw-Tier``: the bucket's capacity and period (seconds), its key as the
    store spends it (hex; in Redis the very key twistedgw's own requests spend, so both
    paths spend one bucket) and ``c`` (a consumer's) or ``l`` (a certificate's), for the
    refusal's words."""
    key = limit.key if config.cluster is None else config.cluster.key_prefix.encode() + limit.key
    kind = b"c" if limit.consumer else b"l"
    return b"%d %d %s %s" % (
        limit.requests_per_minute, limit.period_seconds, key.hex().encode(), kind
    )


def cache_headers(lifetime: int) -> tuple[tuple[bytes, bytes], ...]:
    """``X-Accel-Expires`` first: NGINX ignores ``Cache-Control`` once it has seen it."""
    if lifetime <= 0:
        return NO_STORE
    value = str(lifetime).encode()
    return ((b"X-Accel-Expires", value), (b"Cache-Control", b"max-age=" + value))


def nginx_cache_headers(lifetime: int) -> tuple[tuple[bytes, bytes], ...]:
    """``cache_headers`` for the rendered config (``NGINX_NO_STORE``): ``X-Accel-Expires``
    alone, which both NGINX's ``proxy_cache`` and the Lua file read."""
    if lifetime <= 0:
        return NGINX_NO_STORE
    return ((b"X-Accel-Expires", str(lifetime).encode()),)


def for_nginx(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """A refusal's headers for the rendered config: without ``NO_STORE``'s
    ``Cache-Control`` (``X-Accel-Expires: 0`` stays, see ``NGINX_NO_STORE``)."""
    return tuple(pair for pair in headers if pair != _CACHE_CONTROL_NO_STORE)


#: Answer headers by identity object: the header verifier keeps one ClientIdentity per
#: certificate chain, so a chain asked about again gets the same object, and its XFCC
#: (a URL-encoded PEM: ~80 us, a third of a cold decision) is built once.
_ANSWERS: dict[int, tuple[ClientIdentity, IdentityConfig, list[tuple[bytes, bytes]]]] = {}
_ANSWERS_MAX = 4096


def identity_answer_headers(
    config: GatewayConfig, api: ApiConfig, identity: ClientIdentity
) -> list[tuple[bytes, bytes]]:
    """The identity headers the direct mode would send the backend, as answer headers."""
    if not idforward.mtls_passed(identity, api):
        return []
    settings = config.identity
    known = _ANSWERS.get(id(identity))
    if known is not None and known[0] is identity and known[1] is settings:
        return known[2]
    out = [
        (SET_PREFIX + name.lower(), value)
        for name, value in idforward.headers_for(settings, identity)
    ]
    # (holds identity: its id stays its own)
    remember(_ANSWERS, id(identity), (identity, settings, out), _ANSWERS_MAX)
    return out


#: ``allow_headers``' answers by (config, API, identity) ids (each entry holds the three).
_ALLOWS: dict[
    tuple[int, int, int],
    tuple[GatewayConfig, ApiConfig, ClientIdentity, tuple[tuple[bytes, bytes], ...]],
] = {}


_REMOVE = ((AUTHORIZATION, b"remove"),)


def allow_headers(
    config: GatewayConfig, api: ApiConfig, identity: ClientIdentity
) -> tuple[tuple[bytes, bytes], ...]:
    """An allow's answer headers that depend on the config, the judged API (or operation)
    and the caller's identity alone: the identity headers to forward
    (``identity_answer_headers``) and ``AUTHORIZATION: remove`` when the API strips the
    bearer token. Made once per config, API and identity (the header verifier and the
    handshake keep one identity object per chain)."""
    if not identity.verified:  # no identity header to forward: nothing to keep
        return _REMOVE if strips_authorization(api) else ()
    key = (id(config), id(api), id(identity))
    known = _ALLOWS.get(key)
    if known is not None:
        return known[3]
    headers = list(identity_answer_headers(config, api, identity))
    if strips_authorization(api):
        headers.append((AUTHORIZATION, b"remove"))
    made = tuple(headers)
    remember(_ALLOWS, key, (config, api, identity, made), _ANSWERS_MAX)  # holds all three
    return made


#: ``allow_block``'s answers by (config, API, identity, asker, tier limit) ids and the
#: consumer; each entry holds the objects (so no id is reused while it lives).
_BLOCKS: dict[tuple[int, int, int, int, int, str | None], tuple[Any, ...]] = {}
_BLOCKS_MAX = 4096


def allow_block(
    config: GatewayConfig,
    api: ApiConfig,
    identity: ClientIdentity,
    asker: Asker,
    limit: Limit | None,
    consumer: str | None,
) -> bytes | None:
    """An allow's answer fields, as one block of lines (each with the CRLF before it), for
    an ``answer`` asker when the allow may not be cached (``api_cacheable`` false:
    ``NGINX_NO_STORE``; no ``Server`` nor ``Date``) and no transform declares a header: the
    identity headers and ``Authorization``'s removal (``allow_headers``), the bucket NGINX
    spends (``X-Twistedgw-Tier``) and the consumer. They depend on these objects alone, so
    the block is made once for them, not formatted per decision (the decision itself is
    still made per request; this is only its answer's spelling). None when a value holds
    a CR, LF or NUL (a consumer's name from a token, say): the caller's header list makes
    those spaces."""
    key = (id(config), id(api), id(identity), id(asker), id(limit), consumer)
    known = _BLOCKS.get(key)
    if known is not None:
        return known[5]  # type: ignore[no-any-return]
    fields = [*NGINX_NO_STORE, *allow_headers(config, api, identity)]
    if limit is not None:
        fields.append((TIER, tier_value(config, limit)))
    if consumer is not None:
        fields.append((b"x-consumer-name", consumer.encode()))
    block = b"".join([b"\r\n%s: %s" % pair for pair in fields])
    n = len(fields)
    made = None if (
        block.count(b"\r") != n or block.count(b"\n") != n or block.find(b"\x00") >= 0
    ) else block
    remember(_BLOCKS, key, (config, api, identity, asker, limit, made), _BLOCKS_MAX)
    return made


#: ``_declaring``'s answers by pipeline id (each entry holds its pipeline).
_DECLARING: dict[int, tuple[Any, tuple[tuple[Any, Any], ...]]] = {}


def _declaring(pipeline: Any) -> tuple[tuple[Any, Any], ...]:
    """A pipeline's request transforms that declare the headers they set, with the names
    (a plugin declares them once, with its class): looked for once per pipeline."""
    known = _DECLARING.get(id(pipeline))
    if known is not None and known[0] is pipeline:
        return known[1]
    found = tuple(
        (named, names) for named in pipeline.request_transforms
        if (names := getattr(named.stage, "sets_headers", None))
    )
    remember(_DECLARING, id(pipeline), (pipeline, found), _ANSWERS_MAX)
    return found


def declares_headers(pipeline: Any) -> bool:
    """Whether ``declared_headers`` may find anything for ``pipeline``'s allows."""
    return bool(pipeline.request_transforms) and bool(_declaring(pipeline))


def declared_headers(
    pipeline: Any, call: Any
) -> list[tuple[bytes, bytes]] | errors.GatewayError:
    """The request transforms that declare the headers they set (``sets_headers``), run for
    the authz answer: NGINX sets what they set (``X-Twistedgw-Set-<name>``). Only asked by
    the config nginx-config renders, which applies them; an exception is the direct mode's
    500 for that plugin."""
    transforms = pipeline.request_transforms
    if not transforms:  # the usual pipeline: nothing to run, nothing to import
        return []
    declaring = _declaring(pipeline)
    if not declaring:  # transforms, but none that declares a header (the built-ins')
        return []
    from twistedgw.pipeline import HeaderEdit

    out: list[tuple[bytes, bytes]] = []
    for named, names in declaring:
        edit = HeaderEdit()
        try:
            named.stage.transform_request(call, edit)
        except Exception:
            return errors.plugin_failed(named.name)
        for name in names:
            found = edit.set_values.get(str(name).lower().encode())
            if found is not None:
                out.append((SET_PREFIX + found[0].lower(), found[1]))
    return out


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
