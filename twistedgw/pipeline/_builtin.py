"""The gateway's own plugins: the schemes and rules the config keys have always meant.

``mutual_ssl``, ``api_key``, revocation, tiers and identity forwarding run on
the same seam as third-party plugins; the config keys (``mutual_ssl``,
``api_key``, ``[tls] revocation``, ``[[apis.tiers]]``, ``[identity]``) are
shorthand for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedgw import _query, errors
from twistedgw._headers import HOP_BY_HOP
from twistedgw._memo import remember
from twistedgw.config import ApiConfig, ApiKey, GatewayConfig, operation_config
from twistedgw.identity import ClientIdentity, Outcome, reasons
from twistedgw.identity import forwarding as idforward
from twistedgw.pipeline import _tiers as tiers
from twistedgw.pipeline._call import Call, HeaderEdit, Refusal, SchemeResult
from twistedgw.pipeline._interfaces import (
    IAuthoriser,
    ICertificateCheck,
    IRequestTransform,
    IScheme,
)

API_KEY_HEADER = b"apikey"
#: ``Call.notes[TIERS]`` on the authz endpoint: ``"report"`` (its asker, NGINX's Lua,
#: spends the bucket: the Tiers stage leaves the ``tiers.Limit`` that applies under
#: TIER_LIMIT and spends nothing) or ``"skip"`` (an asker that cannot pass a 429 on: a
#: hand-written ``auth_request``). Absent: the stage spends, as for a forwarded request.
TIERS = "twistedgw.tiers"
TIER_LIMIT = "twistedgw.tiers.limit"

# Module constants: on Python 3.11 an Enum class attribute (``Outcome.NONE``) goes through
# ``EnumType.__getattr__``'s slot, ~800 instructions a lookup, per request here.
_NO_CERTIFICATE = Outcome.NONE
_FAILED = Outcome.FAILED


@implementer(IScheme)
class MutualSsl:
    """The certificate verified (handshake or trusted header) under one of the API's aliases."""

    name = "mutual_ssl"

    _NONE = SchemeResult(False, False, reason=reasons.NONE)
    _NOT_FOR_API = SchemeResult(False, True, reason=reasons.NOT_FOR_API)
    _PASSED_MAX = 4096

    def __init__(self, api: ApiConfig) -> None:
        self.mode = api.mutual_ssl
        self._aliases = api.aliases
        # SchemeResult is immutable: one per subject that passed, not one per request.
        self._passed: dict[str | None, SchemeResult] = {}

    def authenticate(self, call: Call) -> SchemeResult:
        identity = call.identity
        outcome = identity.outcome
        if outcome is _NO_CERTIFICATE:
            return self._NONE
        if outcome is _FAILED:
            return SchemeResult(False, True, reason=identity.reason or reasons.INVALID)
        if self._aliases is not None and not (identity.trust_aliases & self._aliases):
            return self._NOT_FOR_API
        subject = identity.subject
        passed = self._passed.get(subject)
        if passed is None:
            passed = remember(
                self._passed, subject, SchemeResult(True, True, principal=subject),
                self._PASSED_MAX,
            )
        return passed


@implementer(IScheme)
class ApiKeys:
    """API keys sent in the ``apikey`` header (or the header or query parameter an OpenAPI
    apiKey scheme names), stored only as SHA-256 digests; a key's ``keytype`` says whether
    its requests go to the sandbox endpoints."""

    name = "api_key"

    def __init__(
        self, api: ApiConfig, keys: Sequence[ApiKey], owners: Mapping[str, str] | None = None
    ) -> None:
        self.mode = api.api_key
        self._header = api.api_key_header.lower().encode()
        self._query = api.api_key_query.encode() if api.api_key_query is not None else None
        self._by_digest: Mapping[bytes, str] = {k.sha256: k.name for k in keys}
        self._owners: Mapping[str, str] = owners or {}  # key name -> its consumer
        self._sandbox = frozenset(k.name for k in keys if k.sandbox)

    def authenticate(self, call: Call) -> SchemeResult:
        if self._query is not None:  # apiKey "in: query" (the router removes it)
            values: Sequence[bytes] = _query.values(call.request.query, self._query)
        else:
            values = call.request.headers.get(self._header)
        if not values:
            return SchemeResult(False, False, reason="no API key was presented")
        if len(values) > 1:
            return SchemeResult(False, True, reason="more than one API key was presented")
        name = self._by_digest.get(hashlib.sha256(values[0].strip()).digest())
        if name is None:
            return SchemeResult(False, True, reason="API key is not valid")
        return SchemeResult(
            True, True, principal=f"apikey:{name}", consumer=self._owners.get(name),
            sandbox=name in self._sandbox,
        )


@implementer(ICertificateCheck)
class Revocation:
    """CRL/OCSP for the caller's verified chain; only an OCSP query suspends the request."""

    def __init__(self, checker: Any) -> None:
        self._checker = checker

    def check_certificate(self, call: Call) -> str | Deferred[str | None] | None:
        result: str | Deferred[str | None] | None = self._checker.check(call.identity.chain)
        return result


_LIMITS_KEPT = 4096  # ``Tiers._limits``: callers (API, identity, consumer) per config


@implementer(IAuthoriser)
class Tiers:
    """Request rates (``[[apis.tiers]]``) per certificate that passed mTLS, or per consumer.

    The store is this process's buckets or, with ``[cluster]``, Redis's (a Deferred);
    which tier and bucket apply is ``tiers.limit_for``'s decision.
    """

    def __init__(self, store: tiers.TierStore) -> None:
        self._store = store
        # ``tiers.limit_for``'s answers by (API, identity, consumer): the same caller gets
        # the same tier and bucket key (the leaf's fingerprint, the API's label) under one
        # config, and a stage lives as long as its config. Each entry holds its API and
        # identity (their ids stay theirs); bounded. The bucket is still spent per request.
        self._limits: dict[
            tuple[int, int, str | None],
            tuple[ApiConfig, ClientIdentity | None, tiers.Limit | None],
        ] = {}

    def authorise(self, call: Call) -> Refusal | Deferred[Refusal | None] | None:
        identity = call.identity if call.mtls_passed else None
        consumer = call.consumer
        if identity is None and consumer is None:
            return None
        api = call.api
        key = (id(api), id(identity), consumer)
        known = self._limits.get(key)
        if known is not None:
            limit = known[2]
        else:
            limit = tiers.limit_for(api, identity, consumer)
            remember(self._limits, key, (api, identity, limit), _LIMITS_KEPT)
        if limit is None:
            return None
        notes: dict[str, Any] = getattr(call, "notes", None) or {}  # a bare call: none
        mode = notes.get(TIERS)
        if mode is not None:  # the authz endpoint's asker spends it, or cannot
            if mode == "report":
                notes[TIER_LIMIT] = limit
            return None
        try:
            wait = self._store.take_limit(limit)
        except tiers.StoreUnavailable as e:
            return _store_unavailable(e)
        if isinstance(wait, Deferred):
            return wait.addCallbacks(_throttled, _store_failed, callbackArgs=(limit,))
        return _throttled(wait, limit)


def _throttled(wait: float | None, limit: tiers.Limit) -> Refusal | None:
    if wait is None:
        return None
    whose = "consumer's" if limit.consumer else "certificate's"
    return Refusal(
        errors.throttled(f"the {whose} tier limit was exceeded"),
        ((b"Retry-After", tiers.retry_after(wait)),),
    )


def _store_unavailable(e: BaseException) -> Refusal:
    return Refusal(errors.limits_unavailable(f"the tier limit cannot be checked now ({e})"))


def _store_failed(failure: Failure) -> Refusal:
    failure.trap(tiers.StoreUnavailable)
    assert failure.value is not None
    return _store_unavailable(failure.value)


@implementer(IRequestTransform)
class IdentityForwarding:
    """Runs after every other request transform: strips what a caller must never send
    (identity headers, load-balancer certificate headers, the API key) and sets the
    identity headers from a certificate that passed this API's mTLS check."""

    def __init__(self, config: GatewayConfig) -> None:
        self._settings = config.identity
        lb = config.mutual_ssl
        self._lb_headers = tuple(
            h.lower().encode() for h in (lb.certificate_header, lb.chain_header) if h
        )
        self._forward_lb_header = lb.forward_client_certificate_header
        stripped = idforward.stripped(config.identity) | {API_KEY_HEADER}
        # Computed once: everything a caller could claim, with and without the trusted
        # load balancer's own certificate headers.
        self._strip_all = frozenset(stripped | set(self._lb_headers))
        self._strip_but_lb = frozenset(self._strip_all - set(self._lb_headers))
        # APIs (and their operations' variants, which keep name, version and context)
        # whose operations differ in security: no method override reaches their backend.
        self._no_override = frozenset(
            (api.name, api.version, api.context)
            for api in config.apis
            if differs_by_operation(api)
        )

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        # Only a trusted load balancer's own certificate header may pass, and only
        # when explicitly forwarded; everything else a caller could claim goes.
        if self._forward_lb_header and call.via_load_balancer:
            edit.remove_lowered(self._strip_but_lb)
        else:
            edit.remove_lowered(self._strip_all)
        api = call.api
        if api.api_key_header.lower() != "apikey":  # an OpenAPI apiKey scheme's header
            edit.remove(api.api_key_header.encode())
        if api.operations is not None and (api.name, api.version, api.context) in self._no_override:
            edit.remove_lowered(METHOD_OVERRIDE_HEADERS)
        if call.mtls_passed:
            for name, value in idforward.headers_for(self._settings, call.identity):
                edit.set(name, value)
        if call.consumer is not None:  # a configured name: [A-Za-z0-9._-]{1,64}
            edit.set(b"X-Consumer-Name", call.consumer.encode())



#: Headers asking a backend to run another method than the request line's (Google's
#: and Microsoft's conventions, honoured by many frameworks and middlewares).
METHOD_OVERRIDE_HEADERS = frozenset(
    {b"x-http-method-override", b"x-http-method", b"x-method-override"}
)


def differs_by_operation(api: ApiConfig) -> bool:
    """Whether ``api`` (as configured, not an operation's variant) has OpenAPI operations
    that do not all run the same schemes.

    Then the gateway judges each request by its method, and a backend that honours
    ``X-HTTP-Method-Override`` (or its two siblings) would run a secured operation
    through an open one: ``GET /items`` (open) with ``X-HTTP-Method-Override: DELETE``.
    """
    if api.operations is None:
        return False
    schemes = set()
    for op in api.operations:
        runs = operation_config(api, op)  # the API itself, or the operation's variant
        schemes.add(
            (runs.mutual_ssl, runs.api_key, runs.api_key_header, runs.jwt, runs.basic_auth,
             runs.any_of)
        )
    return len(schemes) > 1


def method_override_headers(api: ApiConfig) -> tuple[str, ...]:
    """The method-override headers never forwarded to ``api``'s backend, lower case (none
    unless its operations differ in security): the same list for NGINX's fast path."""
    return tuple(sorted(h.decode() for h in METHOD_OVERRIDE_HEADERS)) if differs_by_operation(
        api
    ) else ()


def protected_headers(config: GatewayConfig) -> frozenset[bytes]:
    """Lower-case names no plugin may set or remove: hop-by-hop, framing, Host, and
    every identity header (the gateway's own and those load balancers use)."""
    lb = config.mutual_ssl
    return (
        HOP_BY_HOP
        | {b"content-length", b"transfer-encoding", b"host"}
        | idforward.stripped(config.identity)
        | {h.lower().encode() for h in (lb.certificate_header, lb.chain_header) if h}
    )
