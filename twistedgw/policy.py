"""Authentication schemes and how they combine for one API, the way WSO2 does.

Every scheme an API makes ``mandatory`` must pass. When none is mandatory, at
least one ``optional`` scheme must pass, so ``mutual_ssl = "optional"`` on its
own behaves as mandatory, and optional mTLS beside a mandatory API key needs
only the key. An API with every scheme disabled is open.

Schemes are ``IAuthenticator`` providers, so a plugin can add one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.web.http_headers import Headers
from zope.interface import Attribute, Interface, implementer

from twistedgw import errors, reasons
from twistedgw.config import ApiConfig, ApiKey, Mode
from twistedgw.errors import GatewayError
from twistedgw.identity import ClientIdentity, Outcome


@dataclass(frozen=True)
class AuthContext:
    """What an authenticator may look at for one request."""

    identity: ClientIdentity
    headers: Headers


@dataclass(frozen=True)
class SchemeResult:
    passed: bool
    presented: bool  # were credentials of this scheme offered at all?
    principal: str | None = None
    reason: str | None = None


class IAuthenticator(Interface):
    """One authentication scheme (mutual_ssl, api_key, ...)."""

    name = Attribute("The scheme's name, as used in logs and error descriptions.")

    def mode(api: ApiConfig) -> Mode:
        """How ``api`` applies this scheme."""

    def authenticate(context: AuthContext, api: ApiConfig) -> SchemeResult:
        """Judge one request; must not raise and must not do I/O."""


@implementer(IAuthenticator)
class MutualSslAuthenticator:
    name = "mutual_ssl"

    def mode(self, api: ApiConfig) -> Mode:
        return api.mutual_ssl

    def authenticate(self, context: AuthContext, api: ApiConfig) -> SchemeResult:
        identity = context.identity
        if identity.outcome is Outcome.NONE:
            return SchemeResult(False, False, reason=reasons.NONE)
        if identity.outcome is Outcome.FAILED:
            return SchemeResult(False, True, reason=identity.reason or reasons.INVALID)
        if api.aliases is not None and not (identity.trust_aliases & api.aliases):
            return SchemeResult(False, True, reason=reasons.NOT_FOR_API)
        return SchemeResult(True, True, principal=identity.subject)


API_KEY_HEADER = b"apikey"


@implementer(IAuthenticator)
class ApiKeyAuthenticator:
    """API keys sent in the ``apikey`` header, stored only as SHA-256 digests."""

    name = "api_key"

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._by_digest: Mapping[bytes, str] = {k.sha256: k.name for k in keys}

    def mode(self, api: ApiConfig) -> Mode:
        return api.api_key

    def authenticate(self, context: AuthContext, api: ApiConfig) -> SchemeResult:
        values = context.headers.getRawHeaders(api.api_key_header.lower().encode())
        if not values:
            return SchemeResult(False, False, reason="no API key was presented")
        if len(values) > 1:
            return SchemeResult(False, True, reason="more than one API key was presented")
        name = self._by_digest.get(hashlib.sha256(values[0].strip()).digest())
        if name is None:
            return SchemeResult(False, True, reason="API key is not valid")
        return SchemeResult(True, True, principal=f"apikey:{name}")


@dataclass(frozen=True)
class Allow:
    principals: tuple[str, ...]  # what passed, e.g. the certificate subject, "apikey:app-one"


@dataclass(frozen=True)
class Deny:
    error: GatewayError


class Policy:
    """Runs an API's schemes and combines them."""

    def __init__(self, authenticators: Sequence[IAuthenticator]) -> None:
        self.authenticators = tuple(authenticators)

    def decide(self, context: AuthContext, api: ApiConfig) -> Allow | Deny:
        mandatory: list[tuple[IAuthenticator, SchemeResult]] = []
        optional: list[tuple[IAuthenticator, SchemeResult]] = []
        for auth in self.authenticators:
            mode = auth.mode(api)
            if mode is Mode.DISABLED:
                continue
            result = auth.authenticate(context, api)
            (mandatory if mode is Mode.MANDATORY else optional).append((auth, result))
        if not mandatory and not optional:
            return Allow(())
        if mandatory:
            for _auth, result in mandatory:
                if not result.passed:
                    return Deny(_error(result))
            passed = mandatory + [(a, r) for a, r in optional if r.passed]
        else:
            passed = [(a, r) for a, r in optional if r.passed]
            if not passed:
                presented = [r for _a, r in optional if r.presented]
                if presented:
                    return Deny(errors.invalid_credentials(_describe(presented)))
                return Deny(errors.missing_credentials(_describe([r for _a, r in optional])))
        return Allow(tuple(r.principal for _a, r in passed if r.principal))


def _error(result: SchemeResult) -> GatewayError:
    reason = result.reason or "authentication failed"
    if result.presented:
        return errors.invalid_credentials(reason)
    return errors.missing_credentials(reason)


def _describe(results: list[SchemeResult]) -> str:
    return "; ".join(r.reason or "authentication failed" for r in results)
