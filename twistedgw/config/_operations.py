"""What an API serves, operation by operation, and under which schemes.

The model of an OpenAPI definition's operations (``_openapi.py`` reads them), kept below
``_apis.py`` so that an ``ApiConfig`` can hold them without importing the reader of
definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twistedgw.config._base import Mode

WSO2_API_KEY_HEADER = "apikey"
#: The throttling policy that means no limit (WSO2's name).
UNLIMITED = "Unlimited"


@dataclass(frozen=True)
class Security:
    """The schemes that apply to an API or one operation, as modes (WSO2's combine rule)."""

    mutual_ssl: Mode = Mode.DISABLED
    api_key: Mode = Mode.DISABLED
    api_key_header: str = WSO2_API_KEY_HEADER
    jwt: Mode = Mode.DISABLED
    basic_auth: Mode = Mode.DISABLED  # HTTP Basic, [[basic_users]]

    @property
    def open(self) -> bool:
        return all(
            m is Mode.DISABLED for m in (self.mutual_ssl, self.api_key, self.jwt, self.basic_auth)
        )


OPEN = Security()


@dataclass(frozen=True)
class Operation:
    """One operation of the definition: what the router serves."""

    method: str  # upper-case, e.g. "GET"
    template: str  # the path template as written, relative to the context: "/pet/{petId}"
    security: Security | None = None  # None: the API's own schemes
    where: str = ""  # e.g. "paths./pet/{petId}.get", for messages
    # x-wso2-throttling-tier on the operation: its own limit, unless the API names one.
    throttling_tier: str | None = None
    throttling_from: str = field(default="", compare=False)  # its JSON pointer


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
