"""What an API serves, operation by operation, and under which schemes.

The model of an OpenAPI definition's operations (``_openapi.py`` reads them), kept below
``_apis.py`` so that an ``ApiConfig`` can hold them without importing the reader of
definitions. ``Security`` is WSO2's rule: a transport level (mTLS) and application
schemes, each a level of its own or grouped into one application level of which any
one passes; mandatory levels must pass, and with none mandatory one optional must.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from twistedgw.config._base import Mode
from twistedgw.config._endpoints import Endpoints

WSO2_API_KEY_HEADER = "apikey"
#: The throttling policy that means no limit (WSO2's name).
UNLIMITED = "Unlimited"
MTLS = "mutual_ssl"  # the transport level's scheme
APPLICATION = ("api_key", "jwt", "basic_auth")  # the application level's schemes


@dataclass(frozen=True)
class Security:
    """The schemes that apply to an API or one operation, combined as WSO2 does.

    Each enabled scheme is a level of its own, except those in ``any_of``: they form
    one application level (WSO2's ``x-wso2-application-security``) that passes when
    any one of them does, and share one mode. Mandatory levels must pass; with none
    mandatory, one optional level must.
    """

    mutual_ssl: Mode = Mode.DISABLED
    api_key: Mode = Mode.DISABLED
    api_key_header: str = WSO2_API_KEY_HEADER
    jwt: Mode = Mode.DISABLED
    basic_auth: Mode = Mode.DISABLED  # HTTP Basic, [[basic_users]]
    any_of: frozenset[str] = frozenset()  # of "api_key", "jwt", "basic_auth"
    # An OpenAPI apiKey scheme "in: query": the key is this query parameter (removed
    # before forwarding), not a header.
    api_key_query: str | None = None

    @property
    def open(self) -> bool:
        return all(
            m is Mode.DISABLED for m in (self.mutual_ssl, self.api_key, self.jwt, self.basic_auth)
        )

    def mode(self, scheme: str) -> Mode:
        mode: Mode = getattr(self, scheme)
        return mode

    def units(self) -> list[tuple[frozenset[str], Mode]]:
        """The levels the rule combines: (schemes of which one must pass, mode)."""
        out: list[tuple[frozenset[str], Mode]] = []
        group = frozenset(s for s in self.any_of if self.mode(s) is not Mode.DISABLED)
        for scheme in (MTLS, *APPLICATION):
            mode = self.mode(scheme)
            if mode is not Mode.DISABLED and scheme not in group:
                out.append((frozenset((scheme,)), mode))
        if group:
            out.append((group, self.mode(next(iter(sorted(group))))))
        return out

    def normal(self) -> Security:
        """The same rule in one spelling (flat where a group adds nothing)."""
        group = frozenset(s for s in self.any_of if self.mode(s) is not Mode.DISABLED)
        if len(group) < 2:
            return dataclasses.replace(self, any_of=frozenset())
        modes = {self.mode(s) for s in group}
        if len(modes) != 1:
            return dataclasses.replace(self, any_of=frozenset())
        others = [m for u, m in self.units() if u != group]
        mode = modes.pop()
        if mode is Mode.OPTIONAL and Mode.MANDATORY not in others:
            return dataclasses.replace(self, any_of=frozenset())  # any one level: the same
        if mode is Mode.MANDATORY and not others:
            return dataclasses.replace(  # the group alone: any one of its schemes
                self, any_of=frozenset(),
                api_key=Mode.OPTIONAL if "api_key" in group else self.api_key,
                jwt=Mode.OPTIONAL if "jwt" in group else self.jwt,
                basic_auth=Mode.OPTIONAL if "basic_auth" in group else self.basic_auth,
            )
        return dataclasses.replace(self, any_of=group)

    def without_jwt(self) -> Security:
        return dataclasses.replace(self, jwt=Mode.DISABLED, any_of=self.any_of - {"jwt"}).normal()

    def jwt_decides(self) -> bool:
        """Whether a token can change the outcome: bearer security needs issuers then.

        mTLS mandatory beside an optional OAuth2 alternative never consults the token
        for the decision (WSO2: mandatory levels must pass, optional ones only when
        none is mandatory)."""
        if self.jwt is Mode.DISABLED:
            return False
        units = self.units()
        mine = next(m for u, m in units if "jwt" in u)
        return mine is Mode.MANDATORY or Mode.MANDATORY not in {m for _u, m in units}


OPEN = Security()


@dataclass(frozen=True)
class Operation:
    """One operation of the definition: what the router serves."""

    method: str  # upper-case, e.g. "GET"
    template: str  # the path template as written, relative to the context: "/pet/{petId}"
    security: Security | None = None  # None: the API's own schemes
    where: str = ""  # its JSON pointer, for messages: "#/paths/~1pet~1{petId}/get"
    # x-wso2-throttling-tier on the operation: its own limit, unless the API names one.
    throttling_tier: str | None = None
    throttling_from: str = field(default="", compare=False)  # its JSON pointer
    # What the definition alone says for it (None: the same as ``security``), and why it
    # is open when it is: for check's lines on what the TOML changed.
    defined: Security | None = field(default=None, compare=False)
    opened_by: str = field(default="", compare=False)
    # Its own x-wso2-production-endpoints / x-wso2-sandbox-endpoints (the operation's,
    # else its path item's); None: the API's.
    production: Endpoints | None = None
    sandbox: Endpoints | None = None
    # x-twistedgw-websocket: true on a get operation: it accepts WebSocket handshakes.
    websocket: bool = False


@dataclass(frozen=True)
class ResourceThrottle:
    """An operation's own throttling policy (WSO2's resource level): one limit for all
    the callers of that method and path template."""

    policy: str
    method: str
    template: str

    @property
    def resource(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True)
class Origin:
    """Where an API came from, for messages about it after it was built."""

    file: Path
    context_from: str | None  # the definition's key the context was read from; None = TOML
    opened_by: str = ""  # why the definition opens the API level, when it does
