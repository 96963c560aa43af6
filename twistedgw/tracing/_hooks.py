"""The narrow API the request path calls: one ``Tracer`` per gateway process, one
``RequestTrace`` per request, and a span per backend attempt and per waiting plugin.

The request path holds ``None`` where tracing is off and checks for it once per hook,
so a gateway without ``[tracing]`` pays an attribute check per hook (begin, record,
each backend attempt) and imports nothing of OpenTelemetry. Every parent is passed
explicitly (a ``RequestTrace`` owns its server span's context): Twisted's Deferreds run
callbacks wherever they fire, so an ambient "current span" (OpenTelemetry's contextvar)
would name the wrong parent, or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred

from twistedgw.errors import GatewayError
from twistedgw.identity import ClientIdentity

#: The request headers that carry a trace context: with tracing on, the client's are
#: replaced by the gateway's own (``BackendSpan.headers``), never forwarded unchecked.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})


class IncomingRequest(NamedTuple):
    """What the server span needs of a request, read once from whichever front it took."""

    method: bytes
    path: bytes  # the raw path, without the query (never recorded: it may hold secrets)
    secure: bool
    version: bytes  # b"HTTP/1.1", b"HTTP/2", ...
    host: bytes | None  # the Host header (or :authority)
    client: str  # the peer's IP address, "" when unknown (a Unix socket)
    trusted: bool  # the peer is a trusted proxy: its sampling decision is followed
    traceparent: Sequence[bytes] | None
    tracestate: Sequence[bytes] | None
    user_agent: bytes | None


class Verdict(NamedTuple):
    """What the pipeline decided about the caller, for the server span."""

    identity: ClientIdentity | None
    consumer: str | None = None
    principals: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()  # the authentication schemes that passed
    via_load_balancer: bool = False


class StageSpan(Protocol):
    """A plugin stage that answered with a Deferred, until that Deferred fires."""

    def end(self, outcome: str) -> None:
        """``passed``, ``refused`` or ``failed``."""


class BackendSpan(Protocol):
    """One attempt at the backend (a client span)."""

    #: The trace headers to send to the backend (``traceparent``, and ``tracestate``
    #: when there is one); the client's own are never passed on (``TRACE_HEADERS``).
    headers: tuple[tuple[bytes, bytes], ...]

    def end(self, status: int | None, error_kind: str | None) -> None:
        """The attempt is over: the backend's status (None if it sent no response head)
        and the forwarder's error kind (None: it went well)."""


class RequestTrace(Protocol):
    """One request's server span and what hangs off it."""

    trace_id: str  # 32 hex digits, for the access log
    recording: bool  # sampled: what ``end`` is given goes on a span (else skip building it)

    def stage(self, plugin: str, stage: str) -> StageSpan: ...

    def backend(self, method: bytes, target: bytes) -> BackendSpan: ...

    def end(
        self,
        status: int,
        error_kind: str | None,
        *,
        api: str | None = None,
        route: str | None = None,
        verdict: Verdict | None = None,
        refusal: GatewayError | None = None,
    ) -> None:
        """The request is answered: ``refusal`` is the error the gateway answered
        itself, if it did (its code and reason go on the span)."""


class TracingObserver(Protocol):
    """Where the tracer reports what became of its spans (the metrics); called on the
    reactor thread."""

    def spans_dropped(self, count: int) -> None: ...

    def spans_exported(self, count: int, ok: bool) -> None: ...


class Tracer(Protocol):
    def start(self, request: IncomingRequest) -> RequestTrace: ...

    def stop(self) -> Deferred[None]:
        """Send what is queued (for a bounded time) and stop the export thread."""
