"""The endpoint a caller may go to, and the credentials its backend gets.

WSO2 Microgateway 3.x sends a request whose credential is a sandbox one (a token's
``keytype`` claim ``SANDBOX``, a sandbox API key) to the API's sandbox endpoints and
every other request (no ``keytype``, certificates, passwords, open operations) to its
production ones. Authentication decides the key type (``Call.sandbox``); these stages
run right after it: ``EndpointChoice`` refuses a caller whose kind of endpoint the API
(or the operation) does not have, before any rate limit counts it, and on the authz
endpoint too; ``BackendCredentials`` gives the chosen backend its own ``Authorization``
(an endpoint's ``securityConfig``), replacing whatever the client sent. The front picks
the URLs (``http.Route.sandbox``).
"""

from __future__ import annotations

from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import ApiConfig
from twistedgw.pipeline._call import Call, HeaderEdit, Refusal
from twistedgw.pipeline._interfaces import IAuthoriser, IRequestTransform

NO_SANDBOX = "sandbox key offered to an API with no sandbox endpoint"
NO_PRODUCTION = "production key offered to an API with no production endpoint"
_AUTHORIZATION = b"Authorization"


@implementer(IAuthoriser)
class EndpointChoice:
    """401 ``900901`` for a sandbox credential where there is no sandbox endpoint, and for
    any other caller where there is no production one (the Microgateway's rule, with the
    status twistedgw gives every invalid credential)."""

    def __init__(self, api: ApiConfig) -> None:
        self._production = bool(api.endpoints)
        self._sandbox = api.sandbox is not None

    @staticmethod
    def needed(api: ApiConfig) -> bool:
        """Whether some caller could be refused: one of the two kinds is missing."""
        return not api.endpoints or api.sandbox is None

    def authorise(self, call: Call) -> Refusal | None:
        if call.sandbox:
            if not self._sandbox:
                return Refusal(errors.invalid_credentials(NO_SANDBOX))
        elif not self._production:
            return Refusal(errors.invalid_credentials(NO_PRODUCTION))
        return None


@implementer(IRequestTransform)
class BackendCredentials:
    """``Authorization: Basic`` for a backend whose endpoint asks for it; the client's own
    ``Authorization`` (whatever the API's schemes made of it) never reaches that backend.
    Runs after every other transform."""

    def __init__(self, api: ApiConfig) -> None:
        production, sandbox = api.backend_auth, api.sandbox.auth if api.sandbox else None
        self._production = production.header_value() if production else None
        self._sandbox_value = sandbox.header_value() if sandbox else None

    @staticmethod
    def needed(api: ApiConfig) -> bool:
        return api.backend_auth is not None or (
            api.sandbox is not None and api.sandbox.auth is not None)

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        value = self._sandbox_value if call.sandbox else self._production
        if value is not None:
            edit.set(_AUTHORIZATION, value)
