"""``x-wso2-transports``: the schemes an API is served over.

The Microgateway 3.x binds each API's service to the listeners of its transports
(``service ... on apiListener`` for http, ``apiSecureListener`` for https), so an
https-only API is simply absent from its HTTP port, and an http-only one from its HTTPS
port. twistedgw serves every API on every listener and judges each request instead: a
request is https when it arrived over TLS, or over a plain listener from a trusted proxy
(``[mutual_ssl] trusted_proxies``, ``"unix"`` for a Unix-socket listener) that says
``X-Forwarded-Proto: https``. Anyone else's ``X-Forwarded-Proto`` counts for nothing (no
header trust without source trust). An https-only API answers a plain request 403
``900908`` (issue 25's contract); an http-only API answers an https one 404, as the
Microgateway does (it has no such API on its HTTPS listener).
"""

from __future__ import annotations

import ipaddress

from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import ApiConfig, MutualSslConfig
from twistedgw.pipeline._call import Call, Refusal
from twistedgw.pipeline._interfaces import IAuthoriser

HTTPS_ONLY = "this API is served over https only"
_XFP = b"x-forwarded-proto"


@implementer(IAuthoriser)
class Transports:
    """Refuses a request over a scheme the API is not served over (a guard: it runs
    before certificate checks and authentication)."""

    def __init__(self, api: ApiConfig, trust: MutualSslConfig) -> None:
        self._http = "http" in api.transports
        self._https = "https" in api.transports
        self._networks = trust.trusted_proxies
        self._unix = trust.trust_unix_socket

    @staticmethod
    def needed(api: ApiConfig) -> bool:
        return api.transports != frozenset(("http", "https"))

    def _trusted(self, client: str) -> bool:
        if not client:  # a Unix-socket listener's connection has no address
            return self._unix
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def https(self, call: Call) -> bool:
        request = call.request
        if request.secure:
            return True
        said = request.headers.get(_XFP)
        return (len(said) == 1 and said[0].strip().lower() == b"https"
                and self._trusted(request.client))

    def authorise(self, call: Call) -> Refusal | None:
        if self.https(call):
            if self._https:
                return None
            return Refusal(errors.GatewayError(
                404, "404", "Status not found",
                f"No API is deployed for the path {call.request.path.decode('latin-1')!r} over "
                "https: this API is served over http only"))
        if self._http:
            return None
        return Refusal(errors.forbidden(HTTPS_ONLY))
