"""CORS for APIs that have ``[apis.cors]`` (or ``x-wso2-cors``): the decisions, and the hook.

A browser asks before a cross-origin request that is not "simple" with a preflight:
``OPTIONS`` carrying ``Origin`` and ``Access-Control-Request-Method`` (and
``-Headers``), and no credentials (the Fetch standard forbids them). So the gateway
answers the preflight itself, *before* operation matching and authentication: an API
whose operations are all secured would otherwise answer it 401, and a definition
without an ``options`` operation 405, and no browser could ever call it.

For every other request of the API, the answer (forwarded or refused: a browser must
be able to read a 401's JSON) carries ``Access-Control-Allow-Origin`` (and
``-Credentials``, ``-Expose-Headers``) when the request's ``Origin`` is allowed, and
none at all when it is not. ``Vary: Origin`` goes on every answer whose CORS headers
depend on the origin, so a shared cache never replays one origin's answer to another.
The backend's own ``Access-Control-*`` headers are dropped: two
``Access-Control-Allow-Origin`` values make browsers refuse the answer.

The decisions are pure functions of the settings and the request's headers
(``preflight``, ``actual``); ``intercept`` is the request path's one hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twistedgw import errors
from twistedgw.config import ApiConfig, CorsConfig
from twistedgw.errors import GatewayError
from twistedgw.wire import TOKEN, Fields, Responder, ResponderWrapper, answer_headers

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, GatewayExchange

Headers = list[tuple[bytes, bytes]]

_ORIGIN = b"origin"
_REQUEST_METHOD = b"access-control-request-method"
_REQUEST_HEADERS = b"access-control-request-headers"
#: What a backend may not say for an API whose CORS the gateway answers.
_OWNED = frozenset({
    b"access-control-allow-origin", b"access-control-allow-credentials",
    b"access-control-allow-methods", b"access-control-allow-headers",
    b"access-control-expose-headers", b"access-control-max-age",
})
_VARY_ORIGIN = (b"Vary", b"Origin")
_VARY_PREFLIGHT = (b"Vary", b"Origin, Access-Control-Request-Method, "
                            b"Access-Control-Request-Headers")
_MAX_ORIGIN = 2048  # far beyond any real origin (a host name is at most 253 bytes)


def is_preflight(method: bytes, fields: Fields) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``
    (an ``OPTIONS`` without them is an ordinary request, for the API to answer)."""
    return method == b"OPTIONS" and _ORIGIN in fields and _REQUEST_METHOD in fields


def _origin(fields: Fields) -> bytes | None:
    """The request's one ``Origin``, or None (absent, repeated, a list, or too long)."""
    values = fields.getRawHeaders(_ORIGIN)
    if not values or len(values) != 1:
        return None
    value = values[0].strip()
    if not value or len(value) > _MAX_ORIGIN or b" " in value or b"," in value:
        return None
    return value


def origin_allowed(cors: CorsConfig, origin: bytes | None) -> bool:
    if origin is None:
        return False
    if cors.any_origin:
        return True
    # Browsers serialise origins in lower case without a default port; the settings
    # are kept so (config.normal_origin), and so is this comparison.
    return origin.decode("latin-1").lower() in cors.origins


def _allow_origin(cors: CorsConfig, origin: bytes) -> Headers:
    if cors.any_origin and not cors.credentials:
        return [(b"Access-Control-Allow-Origin", b"*")]
    out = [(b"Access-Control-Allow-Origin", origin)]
    if cors.credentials:
        out.append((b"Access-Control-Allow-Credentials", b"true"))
    return out


def _varies(cors: CorsConfig) -> bool:
    """Whether an answer's CORS headers depend on the request's Origin."""
    return not (cors.any_origin and not cors.credentials)


def actual(cors: CorsConfig, fields: Fields) -> Headers:
    """The CORS headers for an answer to a request that is not a preflight."""
    origin = _origin(fields)
    out: Headers = []
    if origin_allowed(cors, origin):
        assert origin is not None
        out.extend(_allow_origin(cors, origin))
        if cors.expose_headers:
            out.append((b"Access-Control-Expose-Headers",
                        ", ".join(cors.expose_headers).encode("latin-1")))
    if _varies(cors):
        out.append(_VARY_ORIGIN)
    return out


def preflight(cors: CorsConfig, fields: Fields) -> Headers | str:
    """The headers of the answer to a preflight (``is_preflight``), or why it is refused.

    As the Microgateway answers (Ballerina's CORS, after the W3C CORS algorithm): the
    origin must be allowed, the requested method listed (exactly: methods are
    case-sensitive) and every requested header listed (in any case); the answer names
    the requested method and headers back."""
    origin = _origin(fields)
    if origin is None:
        return "the preflight's Origin is missing, repeated or not one origin"
    shown = origin.decode("latin-1")
    if not origin_allowed(cors, origin):
        return f"the origin {shown!r} is not allowed by this API's CORS settings"
    methods = fields.getRawHeaders(_REQUEST_METHOD) or []
    if len(methods) != 1 or not TOKEN.match(methods[0].strip()):
        return "Access-Control-Request-Method must name one method"
    method = methods[0].strip()
    if not cors.any_method and method.decode("latin-1") not in cors.methods:
        return (f"the method {method.decode('latin-1')!r} is not allowed by this API's CORS "
                f"settings (allowed: {', '.join(cors.methods)})")
    asked: list[bytes] = []
    for value in fields.getRawHeaders(_REQUEST_HEADERS) or ():
        for name in value.split(b","):
            name = name.strip()
            if not name:
                continue
            if not TOKEN.match(name):
                return "Access-Control-Request-Headers must list header names"
            if not cors.any_header and name.decode("latin-1").lower() not in cors.headers:
                return (f"the header {name.decode('latin-1')!r} is not allowed by this API's "
                        "CORS settings")
            asked.append(name)
    out = _allow_origin(cors, origin)
    out.append((b"Access-Control-Allow-Methods", method))
    if asked:
        out.append((b"Access-Control-Allow-Headers", b", ".join(asked)))
    if cors.max_age is not None:
        out.append((b"Access-Control-Max-Age", b"%d" % (cors.max_age,)))
    out.append(_VARY_PREFLIGHT)
    return out


class CorsResponder(ResponderWrapper):
    """A ``wire.Responder`` that gives every answer the API's CORS headers (and drops the
    backend's own), delegating the rest to the front's responder."""

    __slots__ = ("_extra",)

    def __init__(self, inner: Responder, extra: Headers) -> None:
        super().__init__(inner)
        self._extra = extra

    def start_response(
        self, status: int, headers: Headers, length: int | None, reason: bytes | None = None
    ) -> None:
        kept = [(n, v) for n, v in headers if n.lower() not in _OWNED]
        kept.extend(self._extra)
        self._inner.start_response(status, kept, length, reason)


def intercept(gateway: Gateway, exchange: GatewayExchange, api: ApiConfig) -> bool:
    """The request path's hook for an API with CORS settings (``api.cors``), before
    operation matching and authentication: answer a preflight (True), or make every
    answer of this exchange carry the CORS headers (False: the request goes on)."""
    cors = api.cors
    assert cors is not None
    exchange.api = api
    fields = exchange.fields
    if not is_preflight(exchange.method, fields):
        extra = actual(cors, fields)
        if extra:
            exchange.responder = CorsResponder(exchange.responder, extra)
        return False
    from twistedgw.http._resource import answer_error

    decided = preflight(cors, fields)
    if isinstance(decided, str):
        refusal: GatewayError = errors.forbidden(f"CORS preflight refused: {decided}")
        answer_error(gateway, exchange, refusal, (_VARY_PREFLIGHT,))
        return True
    headers = answer_headers()
    headers.extend(decided)
    responder = exchange.responder
    responder.start_response(200, headers, 0)
    responder.finish()
    exchange.record(gateway, 200, 0)
    return True
