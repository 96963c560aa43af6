"""The tracer behind ``[tracing]``: OpenTelemetry's SDK, exporting over OTLP/HTTP.

Imported only when a config has ``[tracing]`` (``tracing.start_tracer``). The SDK's
``BatchSpanProcessor`` exports from its own thread; in front of it, ``_BoundedQueue``
keeps count of the spans waiting and drops (and reports) any beyond
``max_queue_size``, so a slow or absent collector costs the reactor neither time nor
memory and every lost span is counted. Spans are started with an explicit parent
context, never the ambient one: see ``_hooks``.

What a span records is listed in the README ("Tracing with OpenTelemetry"); never
recorded: the query string, header values other than the User-Agent, API keys,
tokens, passwords and certificates (a client certificate appears only as its SHA-256).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from twistedgw.config import TracingConfig
from twistedgw.errors import GatewayError
from twistedgw.tracing._hooks import IncomingRequest, TracingObserver, Verdict
from twistedgw.tracing._w3c import (
    format_traceparent,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

log = Logger()

#: Seconds one export may take, retries included (the exporter's own bound).
EXPORT_TIMEOUT = 10.0
#: How often queued spans go out when fewer than a batch are waiting.
SCHEDULE_DELAY_MILLIS = 1000
MAX_BATCH = 512
#: At a graceful stop, how long queued spans may take to leave before they are dropped.
STOP_FLUSH_SECONDS = 2.0
#: Longest text recorded for a refusal's reason or a User-Agent.
MAX_TEXT = 256

#: The gateway's own span attributes (beside OpenTelemetry's HTTP conventions), each
#: documented in docs/how-to/tracing.md (tests check both ways).
GATEWAY_ATTRIBUTES = frozenset(
    {
        "twistedgw.api",
        "twistedgw.auth.principals",
        "twistedgw.auth.schemes",
        "twistedgw.backend.endpoint",
        "twistedgw.backend.status_code",
        "twistedgw.consumer",
        "twistedgw.mtls.outcome",
        "twistedgw.mtls.reason",
        "twistedgw.mtls.source",
        "twistedgw.plugin.name",
        "twistedgw.plugin.outcome",
        "twistedgw.plugin.stage",
        "twistedgw.refusal.code",
        "twistedgw.refusal.message",
        "twistedgw.refusal.reason",
        "twistedgw.via_load_balancer",
    }
)

_EMPTY = Context()  # the parent of a trace's first span: explicitly nothing ambient
_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)
_VERSIONS = {b"HTTP/1.0": "1.0", b"HTTP/1.1": "1.1", b"HTTP/2": "2", b"HTTP/2.0": "2"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twistedgw")
    except PackageNotFoundError:
        return "0"


class OtelTracer:
    """``Tracer`` on the OpenTelemetry SDK: one provider, exporter and thread per gateway
    process (never the SDK's global provider, so two gateways in a process stay apart)."""

    def __init__(
        self,
        config: TracingConfig,
        reactor: Any,
        observer: TracingObserver,
        *,
        exporter: SpanExporter | None = None,
        schedule_delay_millis: int = SCHEDULE_DELAY_MILLIS,
    ) -> None:
        self._reactor = reactor
        self._ratio = config.sample_ratio
        self._random = random.Random()  # noqa: S311 (a sampling draw, not a secret)
        version = _version()
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": version}
            ),
            # Every decision is taken in start(): the SDK only sees a request already
            # sampled, and children follow their parent.
            sampler=ParentBased(ALWAYS_ON),
            shutdown_on_exit=False,  # stop() flushes, bounded; no atexit hook of its own
        )
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=config.otlp_endpoint,
                headers=dict(config.headers),
                timeout=EXPORT_TIMEOUT,
            )
        capacity = config.max_queue_size
        self._queue = _BoundedQueue(capacity, observer.spans_dropped)
        self._batch = BatchSpanProcessor(
            _CountingExporter(exporter, self._queue, reactor, observer),
            max_queue_size=capacity,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=min(MAX_BATCH, capacity),
        )
        self._queue.inner = self._batch
        provider.add_span_processor(self._queue)
        self._provider = provider
        self._tracer = provider.get_tracer("twistedgw", version)
        _bridge_sdk_logging()

    # -- the request path --------------------------------------------------------

    def start(self, request: IncomingRequest) -> _RequestTrace | _Unsampled:
        """The sampling decision, then the server span: through the SDK only when it is
        recorded, so a request not sampled costs a random draw and a small object."""
        parent = parse_traceparent(request.traceparent)
        draw = self._random
        if parent is None:
            if not draw.random() < self._ratio:
                return _Unsampled(draw, draw.getrandbits(128) or 1, ())
            context = _EMPTY
        else:
            members = parse_tracestate(request.tracestate) or ()
            # A trusted proxy's decision is followed (parent-based); anyone else keeps
            # the trace id but not the decision: a draw of the gateway's own, not one on
            # the trace id, which a client could pick to be always sampled.
            sampled = parent.sampled if request.trusted else draw.random() < self._ratio
            if not sampled:
                return _Unsampled(draw, parent.trace_id, members)
            remote = SpanContext(
                parent.trace_id,
                parent.span_id,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
                trace_state=TraceState(members) if members else None,
            )
            context = set_span_in_context(NonRecordingSpan(remote), _EMPTY)
        method = request.method if request.method in _METHODS else b"_OTHER"
        span = self._tracer.start_span(
            method.decode("ascii"), context=context, kind=SpanKind.SERVER
        )
        if span.is_recording():
            span.set_attributes(_server_attributes(request, method))
        return _RequestTrace(self._tracer, span, method)

    # -- stopping ----------------------------------------------------------------

    def flush(self) -> None:
        """Export what is queued now, blocking this thread (tests; never the reactor's)."""
        self._batch.force_flush()

    def stop(self) -> Deferred[None]:
        """Flush for up to ``STOP_FLUSH_SECONDS`` in a thread of its own (never the
        reactor's pool, which joins its threads at exit), then carry on regardless."""
        done: Deferred[None] = Deferred()
        reactor = self._reactor

        def fire() -> None:
            if not done.called:
                done.callback(None)

        def flush() -> None:
            try:
                self._provider.shutdown()
            except Exception:
                log.failure("stopping the span exporter failed")
            reactor.callFromThread(fire)

        threading.Thread(target=flush, name="twistedgw-tracing-stop", daemon=True).start()
        timer = reactor.callLater(STOP_FLUSH_SECONDS, fire)
        done.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return done


class _Unsampled:
    """A request not sampled: no span is made, yet its trace id is logged and its
    backends get a ``traceparent`` (a fresh span id per attempt, not sampled), so the
    services behind agree with the decision."""

    __slots__ = ("_draw", "_state", "_trace", "trace_id")

    recording = False

    def __init__(
        self, draw: random.Random, trace_id: int, state: tuple[tuple[str, str], ...]
    ) -> None:
        self._draw = draw
        self._trace = trace_id
        self._state = state
        self.trace_id = format(trace_id, "032x")

    def stage(self, plugin: str, stage: str) -> _Nothing:
        return _NOTHING

    def backend(self, method: bytes, target: bytes) -> _Nothing:
        span_id = self._draw.getrandbits(64) or 1
        headers: tuple[tuple[bytes, bytes], ...] = (
            (b"traceparent", format_traceparent(self._trace, span_id, False)),
        )
        if self._state:
            headers += ((b"tracestate", format_tracestate(self._state)),)
        return _Nothing(headers)

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
        pass


class _Nothing:
    """The span of a request not sampled: it carries headers, records nothing."""

    __slots__ = ("headers",)

    def __init__(self, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.headers = headers

    def end(self, *args: Any) -> None:
        pass


_NOTHING = _Nothing()


class _RequestTrace:
    """One request's server span; children get its context explicitly."""

    recording = True

    __slots__ = (
        "_backend_endpoint",
        "_backend_status",
        "_context",
        "_ended",
        "_method",
        "_refusal",
        "_resends",
        "_span",
        "_tracer",
        "trace_id",
    )

    def __init__(self, tracer: Any, span: Span, method: bytes) -> None:
        self._tracer = tracer
        self._span = span
        self._method = method
        self._context = set_span_in_context(span, _EMPTY)
        self.trace_id = format(span.get_span_context().trace_id, "032x")
        self._refusal: GatewayError | None = None
        self._backend_endpoint: str | None = None
        self._backend_status: int | None = None
        self._resends = -1
        self._ended = False

    def stage(self, plugin: str, stage: str) -> _StageSpan:
        span = self._tracer.start_span(f"plugin {plugin}", context=self._context)
        if span.is_recording():
            span.set_attributes({"twistedgw.plugin.name": plugin, "twistedgw.plugin.stage": stage})
        return _StageSpan(span)

    def backend(self, method: bytes, target: bytes) -> _BackendSpan:
        self._resends += 1
        known = method if method in _METHODS else b"_OTHER"
        span = self._tracer.start_span(
            known.decode("ascii"), context=self._context, kind=SpanKind.CLIENT
        )
        start = target.find(b"://") + 3
        end = target.find(b"/", start)
        origin = target if end < 0 else target[:end]
        endpoint, host, port = _origin(origin)
        self._backend_endpoint = endpoint
        self._backend_status = None
        if span.is_recording():
            attributes: dict[str, Any] = {
                "http.request.method": known.decode("ascii"),
                "server.address": host,
                "server.port": port,
                # never the query string: it may hold secrets
                "url.full": target.split(b"?", 1)[0].decode("ascii", "replace"),
                "network.protocol.version": "1.1",
            }
            if known != method:
                attributes["http.request.method_original"] = _text(method)
            if self._resends:
                attributes["http.request.resend_count"] = self._resends
            span.set_attributes(attributes)
        context = span.get_span_context()
        headers: tuple[tuple[bytes, bytes], ...] = (
            (
                b"traceparent",
                format_traceparent(context.trace_id, context.span_id, context.trace_flags.sampled),
            ),
        )
        state = context.trace_state
        if state:
            headers += ((b"tracestate", state.to_header().encode("ascii")),)
        return _BackendSpan(self, span, headers)

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
        if self._ended:
            return
        self._ended = True
        self._refusal = refusal
        span = self._span
        if span.is_recording():
            if route is not None:
                span.update_name(f"{self._method.decode('ascii')} {route}")
            span.set_attributes(self._end_attributes(status, error_kind, api, route, verdict))
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _end_attributes(
        self,
        status: int,
        error_kind: str | None,
        api: str | None,
        route: str | None,
        verdict: Verdict | None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"http.response.status_code": status}
        if route is not None:
            out["http.route"] = route
        if api is not None:
            out["twistedgw.api"] = api
        if error_kind is not None:
            out["error.type"] = error_kind
        elif status >= 500:
            out["error.type"] = str(status)
        if verdict is not None:
            identity = verdict.identity
            if identity is not None:
                out["twistedgw.mtls.outcome"] = identity.outcome.value
                out["twistedgw.mtls.source"] = identity.source.value
                if identity.reason is not None and not identity.verified:
                    out["twistedgw.mtls.reason"] = _text(identity.reason)
                sha256 = identity.leaf_sha256()
                if sha256 is not None:
                    out["tls.client.hash.sha256"] = sha256.upper()
            if verdict.consumer is not None:
                out["twistedgw.consumer"] = verdict.consumer
            if verdict.schemes:
                out["twistedgw.auth.schemes"] = list(verdict.schemes)
            if verdict.principals:
                out["twistedgw.auth.principals"] = list(verdict.principals)
            if verdict.via_load_balancer:
                out["twistedgw.via_load_balancer"] = True
        refusal = self._refusal
        if refusal is not None:
            out["twistedgw.refusal.code"] = refusal.code
            out["twistedgw.refusal.message"] = refusal.message
            out["twistedgw.refusal.reason"] = _text(refusal.description)
        if self._backend_endpoint is not None:
            out["twistedgw.backend.endpoint"] = self._backend_endpoint
        if self._backend_status is not None:
            out["twistedgw.backend.status_code"] = self._backend_status
        return out


class _StageSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, outcome: str) -> None:
        span = self._span
        if span.is_recording():
            span.set_attribute("twistedgw.plugin.outcome", outcome)
            if outcome == "failed":
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", "plugin_failed")
        span.end()


class _BackendSpan:
    __slots__ = ("_ended", "_span", "_trace", "headers")

    def __init__(
        self, trace: _RequestTrace, span: Span, headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        self._trace = trace
        self._span = span
        self.headers = headers
        self._ended = False

    def end(self, status: int | None, error_kind: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        if status:
            self._trace._backend_status = status
        else:
            status = None
        span = self._span
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error_kind is not None:
                span.set_attribute("error.type", error_kind)
            elif status is not None and status >= 400:
                span.set_attribute("error.type", str(status))
            if error_kind is not None or (status is not None and status >= 400):
                span.set_status(Status(StatusCode.ERROR))
        span.end()


def _server_attributes(request: IncomingRequest, method: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {
        "http.request.method": method.decode("ascii"),
        "url.path": _text(request.path),
        "url.scheme": "https" if request.secure else "http",
        "network.protocol.name": "http",
    }
    if method != request.method:
        out["http.request.method_original"] = _text(request.method)
    version = _VERSIONS.get(request.version)
    if version is not None:
        out["network.protocol.version"] = version
    if request.client:
        out["client.address"] = request.client
    host = request.host
    if host:
        name, port = _split_host(host)
        if name:
            out["server.address"] = name
        if port is not None:
            out["server.port"] = port
    if request.user_agent:
        out["user_agent.original"] = _text(request.user_agent)
    return out


@functools.lru_cache(maxsize=256)
def _origin(origin: bytes) -> tuple[str, str, int]:
    """``scheme://host[:port]`` -> (that, with the port always written; host; port): an
    API's few backends, parsed once each."""
    try:
        parts = urlsplit(origin.decode("ascii", "replace"))
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
    except ValueError:
        return "-", "", 0
    return f"{parts.scheme}://{host}:{port}", host, port


def _split_host(host: bytes) -> tuple[str, int | None]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port); garbage -> ("", None)."""
    text = host.decode("ascii", "replace").strip()
    if text.startswith("["):
        end = text.find("]")
        name, rest = (text[1:end], text[end + 1 :]) if end > 0 else ("", "")
    else:
        name, _, rest = text.partition(":")
        rest = ":" + rest if rest else ""
    port = int(rest[1:]) if rest[:1] == ":" and rest[1:].isdigit() and len(rest) < 7 else None
    return name[:MAX_TEXT], port


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"


# -- the export path -----------------------------------------------------------


class _BoundedQueue(SpanProcessor):
    """Counts the spans handed to the batch processor and not yet taken for export;
    at ``capacity`` a finished span is dropped and reported instead.

    The count can only run ahead of the batch processor's own queue (a batch is taken
    from it a moment before ``taken`` is called), so that queue never overflows and
    drops nothing behind our back: every lost span goes through ``dropped``."""

    def __init__(self, capacity: int, dropped: Callable[[int], None]) -> None:
        self.inner: SpanProcessor | None = None
        self._capacity = capacity
        self._dropped = dropped
        self._waiting = 0
        self._lock = threading.Lock()

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled or self.inner is None:
            return
        with self._lock:
            full = self._waiting >= self._capacity
            if not full:
                self._waiting += 1
        if full:
            self._dropped(1)
            return
        self.inner.on_end(span)

    def taken(self, count: int) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - count)

    @property
    def waiting(self) -> int:
        return self._waiting

    def shutdown(self) -> None:
        if self.inner is not None:
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis) if self.inner is not None else True


class _CountingExporter(SpanExporter):
    """The real exporter, with each batch's outcome reported on the reactor thread."""

    def __init__(
        self, inner: SpanExporter, queue: _BoundedQueue, reactor: Any, observer: TracingObserver
    ) -> None:
        self._inner = inner
        self._queue = queue
        self._reactor = reactor
        self._observer = observer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        count = len(spans)
        self._queue.taken(count)
        try:
            result = self._inner.export(spans)
        except Exception:
            log.failure("exporting {count} spans failed", count=count)
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        self._reactor.callFromThread(self._observer.spans_exported, count, ok)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


_bridged = False


def _bridge_sdk_logging() -> None:
    """The SDK and its exporter log through ``logging`` (a collector that cannot be
    reached, a full queue); send their warnings to the gateway's log instead of
    stderr, once per process. Their messages carry the endpoint, never the headers."""
    global _bridged
    if _bridged:
        return
    _bridged = True
    sdk = logging.getLogger("opentelemetry")
    sdk.addHandler(_ToTwisted())
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False


class _ToTwisted(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        log.warn("OpenTelemetry: {message}", message=message)
