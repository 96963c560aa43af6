"""What a plugin sees of one request: a narrow, front-independent view and the caller.

Plugins never get twisted.web's ``Request``: the HTTP front may change (a
byte-level HTTP/1.1 parser, h2) and a plugin must not be able to write to the
client, read the body or reach the transport. They get a ``Call``: the request
view (method, normalised path, query, headers, peer), the API, and what is
known of the caller so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from twistedgw.config import ApiConfig
from twistedgw.errors import GatewayError
from twistedgw.identity import ClientIdentity
from twistedgw.tracing import RequestTrace


class RawHeaders(Protocol):
    """The part of ``twisted.web.http_headers.Headers`` the view reads (or any look-alike)."""

    def getRawHeaders(self, name: bytes) -> Sequence[bytes] | None: ...

    def getAllRawHeaders(self) -> Iterable[tuple[bytes, Sequence[bytes]]]: ...


class HeaderView:
    """Read-only request headers; names are case-insensitive bytes."""

    __slots__ = ("_raw",)

    def __init__(self, raw: RawHeaders) -> None:
        self._raw = raw

    def get(self, name: bytes) -> Sequence[bytes]:
        """Every value of ``name`` in arrival order; empty when absent."""
        values = self._raw.getRawHeaders(name)
        return tuple(values) if values else ()

    def first(self, name: bytes) -> bytes | None:
        values = self._raw.getRawHeaders(name)
        return values[0] if values else None

    def __contains__(self, name: bytes) -> bool:
        return bool(self._raw.getRawHeaders(name))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """``(name, value)`` pairs, names lower-cased, repeats kept."""
        for name, values in self._raw.getAllRawHeaders():
            lower = name.lower()
            for value in values:
                yield lower, value


class RequestView(NamedTuple):
    """One request as the HTTP front parsed it. ``path`` is normalised (routing's form).

    A tuple: immutable, and built once per request at tuple speed (a frozen
    dataclass's ``__init__`` cost more than the rest of the view).
    """

    method: bytes
    path: bytes
    query: bytes | None
    headers: HeaderView
    client: str  # the peer's address ("" when unknown)
    secure: bool  # arrived over TLS

    @property
    def host(self) -> bytes | None:
        return self.headers.first(b"host")


@dataclass(frozen=True, slots=True)
class SchemeResult:
    """One authentication scheme's judgement of one request."""

    passed: bool
    presented: bool  # were credentials of this scheme offered at all?
    principal: str | None = None  # what passed, e.g. a subject or "apikey:app-one"
    reason: str | None = None  # plain words for the error description when it failed
    challenge: bytes | None = None  # a WWW-Authenticate value to send if the request is refused
    consumer: str | None = None  # the consumer this credential belongs to, when known
    claims: Mapping[str, Any] | None = None  # a token's verified claims
    # Answer this instead of 401 when this result decides a refusal: the scheme could
    # not judge (a password check pool that is full answers 503, not "invalid").
    error: GatewayError | None = None
    # WSO2's key type of the credential: True sandbox, False production, None: the
    # scheme's credentials carry none (certificates, passwords: production callers).
    sandbox: bool | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the client with ``error`` (plus ``headers``) instead of forwarding."""

    error: GatewayError
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Call:
    """One request on its way through an API's pipeline.

    The pipeline fills in what stages learn: ``identity`` may be replaced by a
    certificate check (revoked, not matching the identity rules), the
    authentication step sets ``principals``, ``mtls_passed``, ``passed_schemes``,
    ``consumer`` and ``claims``. ``notes`` is free for plugins to pass facts to later
    stages. ``trace`` is the request's trace with ``[tracing]`` on (else None): the
    pipeline gives each plugin that answers with a Deferred a span of its own under it.
    """

    request: RequestView
    api: ApiConfig
    identity: ClientIdentity
    via_load_balancer: bool = False
    principals: tuple[str, ...] = ()
    mtls_passed: bool = False  # the certificate passed this API's mutual_ssl scheme
    consumer: str | None = None
    claims: Mapping[str, Any] | None = None
    presented_consumers: tuple[str, ...] = ()  # consumers named by passing credentials
    notes: dict[str, Any] = field(default_factory=dict)
    passed_schemes: tuple[str, ...] = ()  # the authentication schemes that passed, by name
    trace: RequestTrace | None = None
    # A credential that passed is a sandbox one (a token's keytype SANDBOX, a sandbox
    # API key): the request goes to the API's sandbox endpoints.
    sandbox: bool = False


class HeaderEdit:
    """Changes to the headers forwarded to the backend, made by request transforms.

    ``set`` replaces every value of a header; ``remove`` drops it. The gateway
    applies the edits, then strips identity headers and adds its own, so no
    transform can forward a forged identity.
    """

    __slots__ = ("removed", "set_values")

    def __init__(self) -> None:
        self.set_values: dict[bytes, tuple[bytes, bytes]] = {}  # lower name -> (name, value)
        self.removed: set[bytes] = set()

    def set(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        self.removed.discard(lower)
        self.set_values[lower] = (name, value)

    def remove(self, name: bytes) -> None:
        lower = name.lower()
        self.set_values.pop(lower, None)
        self.removed.add(lower)

    def remove_lowered(self, names: frozenset[bytes]) -> None:
        """``remove`` for many names already in lower case (the per-request strip list)."""
        if self.set_values:
            for lower in names.intersection(self.set_values):
                del self.set_values[lower]
        self.removed |= names

    def __bool__(self) -> bool:
        return bool(self.set_values or self.removed)


class ResponseEdit:
    """The answer's status and headers, for response transforms, before it is sent."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers  # (name, value) pairs, repeats kept

    def get(self, name: bytes) -> list[bytes]:
        lower = name.lower()
        return [v for n, v in self.headers if n.lower() == lower]

    def set(self, name: bytes, value: bytes) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def remove(self, name: bytes) -> None:
        lower = name.lower()
        self.headers[:] = [(n, v) for n, v in self.headers if n.lower() != lower]
