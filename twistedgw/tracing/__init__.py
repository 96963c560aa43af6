"""OpenTelemetry traces (``[tracing]``): the hooks the request path calls.

The request path holds a ``Tracer`` (or None: tracing off) and asks it for a
``RequestTrace`` per request; the forwarder asks that for a ``BackendSpan`` per
attempt (its ``traceparent`` goes to the backend) and the pipeline for a
``StageSpan`` per plugin that answered with a Deferred. Only ``start_tracer``
imports OpenTelemetry, so a gateway without ``[tracing]`` never loads it.
"""

from __future__ import annotations

from typing import Any

from twistedgw.config import TracingConfig
from twistedgw.tracing._hooks import (
    TRACE_HEADERS,
    BackendSpan,
    IncomingRequest,
    RequestTrace,
    StageSpan,
    Tracer,
    TracingObserver,
    Verdict,
)
from twistedgw.tracing._w3c import (
    TraceParent,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)


def start_tracer(
    config: TracingConfig, reactor: Any, observer: TracingObserver, **options: Any
) -> Tracer:
    """The SDK-backed tracer for ``config`` (its export thread starts now).

    ``options`` are for tests: ``exporter`` (an SDK ``SpanExporter`` instead of OTLP/HTTP)
    and ``schedule_delay_millis``."""
    from twistedgw.tracing._otel import OtelTracer

    return OtelTracer(config, reactor, observer, **options)


__all__ = [
    "TRACE_HEADERS",
    "BackendSpan",
    "IncomingRequest",
    "RequestTrace",
    "StageSpan",
    "TraceParent",
    "Tracer",
    "TracingObserver",
    "Verdict",
    "format_traceparent",
    "parse_traceparent",
    "parse_tracestate",
    "start_tracer",
]
