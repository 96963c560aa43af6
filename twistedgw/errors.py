"""Every error the gateway answers with, in one place, in WSO2-compatible JSON.

Clients migrating from WSO2 API Manager / Microgateway match on these codes, so
the codes and messages are WSO2's; the ``description`` says what went wrong in
plain words.

The body's shape is the config's ``[errors] style``: ``"apim"`` (API Manager 4.x,
``{"code": "900901", "message": ..., "description": ...}``, the default) or ``"mgw"``
(Microgateway 3.x's ``sendErrorResponse``: ``{"fault": {"code": 900901, ...}}``, the
code an integer). It is set once for the config in force (``use_style``, at start,
on reload, in each worker) and every renderer, whichever front writes the error,
calls ``GatewayError.body()``, so they all follow it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from twisted.web.http import RESPONSES

STYLES = ("apim", "mgw")
_style = ["apim"]  # the style in force (one per process: the config serving)


def use_style(style: str) -> None:
    """Render every error body from now on in ``style`` ("apim" or "mgw")."""
    if style not in STYLES:
        raise ValueError(f"unknown error style {style!r}")
    _style[0] = style


def current_style() -> str:
    return _style[0]


@contextmanager
def styled(style: str) -> Iterator[None]:
    """``style`` for the bodies rendered inside the block (``nginx-config``), then back."""
    previous = _style[0]
    use_style(style)
    try:
        yield
    finally:
        _style[0] = previous


@dataclass(frozen=True)
class GatewayError:
    status: int
    code: str
    message: str
    description: str

    def body(self, style: str | None = None) -> bytes:
        """The JSON body, in ``style`` or else the style in force."""
        if (style or _style[0]) == "mgw":
            code: int | str = int(self.code) if self.code.isdigit() else self.code
            return json.dumps({"fault": {
                "code": code, "message": self.message, "description": self.description,
            }}).encode()
        return json.dumps(
            {"code": self.code, "message": self.message, "description": self.description}
        ).encode()


JSON_TYPE = b"application/json"


def write_error(
    request: Any, error: GatewayError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """Put ``error``'s status and headers on a twisted.web request; return the body to
    write (empty for HEAD). The one renderer of JSON errors for dispatched requests;
    the front's refusals before dispatch frame the same body by hand (http/_guard.py)."""
    # twisted.web knows no reason phrase for some codes (421): the error's message is one.
    phrase = None if error.status in RESPONSES else error.message.encode("latin-1")
    request.setResponseCode(error.status, phrase)
    response_headers = request.responseHeaders
    response_headers.setRawHeaders(b"Content-Type", [JSON_TYPE])
    body = error.body()
    response_headers.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
    for name, value in headers:
        response_headers.addRawHeader(name, value)
    return b"" if request.method == b"HEAD" else body


def invalid_credentials(description: str) -> GatewayError:
    return GatewayError(401, "900901", "Invalid Credentials", description)


def missing_credentials(description: str) -> GatewayError:
    return GatewayError(401, "900902", "Missing Credentials", description)


def forbidden(description: str) -> GatewayError:
    return GatewayError(403, "900908", "Resource forbidden", description)


def consumer_forbidden(description: str) -> GatewayError:
    """A consumer ACL refused the caller. WSO2 spells this one "Resource Forbidden"
    (capital F), unlike ``forbidden``: clients match on the exact words."""
    return GatewayError(403, "900908", "Resource Forbidden", description)


def not_found(path: str) -> GatewayError:
    return GatewayError(404, "404", "Status not found", f"No API is deployed for the path {path!r}")


def misdirected(description: str) -> GatewayError:
    """The request's host belongs to another TLS server entry than the connection's SNI
    (RFC 9110 15.5.20): the client should open a connection with the right server name."""
    return GatewayError(421, "421", "Misdirected Request", description)


def no_matching_resource(description: str) -> GatewayError:
    """The API exists but defines no operation for this path (WSO2's code)."""
    return GatewayError(
        404, "900906", "No matching resource found for given API Request", description
    )


def method_not_allowed(description: str) -> GatewayError:
    """The path is an operation's, but not for this method; sent with ``Allow``."""
    return GatewayError(405, "405", "Method not allowed", description)


def bad_request(description: str) -> GatewayError:
    return GatewayError(400, "400", "Bad Request", description)


def payload_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, "413", "Payload Too Large", f"request body exceeds the limit of {limit} bytes"
    )


def throttled(description: str) -> GatewayError:
    return GatewayError(429, "900800", "Message throttled out", description)


def resource_throttled(description: str) -> GatewayError:
    """An operation's own throttling policy (WSO2's resource level) is spent."""
    return GatewayError(429, "900802", "Resource level throttle out", description)


def backend_unavailable(description: str) -> GatewayError:
    return GatewayError(503, "101503", "Runtime Error", description)


def limits_unavailable(description: str) -> GatewayError:
    """``[cluster] on_failure = "closed"`` and the shared tier store cannot answer."""
    return GatewayError(503, "101503", "Runtime Error", description)


def overloaded(description: str) -> GatewayError:
    """The gateway cannot judge the request now (its password checks are all busy)."""
    return GatewayError(503, "101503", "Runtime Error", description)


def backend_timeout(description: str) -> GatewayError:
    return GatewayError(504, "101504", "Runtime Error", description)


def internal_error() -> GatewayError:
    return GatewayError(500, "101500", "Runtime Error", "internal gateway error")


def plugin_failed(name: str) -> GatewayError:
    """A plugin raised or its Deferred failed: the request ends here, nothing is forwarded."""
    return GatewayError(500, "500", "Internal Server Error", f"plugin {name!r} failed")
