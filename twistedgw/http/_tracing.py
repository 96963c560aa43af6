"""Where the request path meets ``twistedgw.tracing``: a request's server span begins
when ``serve_exchange`` takes its exchange and ends with its record.

Only reached with ``[tracing]`` on (``serve_exchange`` checks ``Gateway.tracer`` once); the
front's own refusals before dispatch (400, 405, 408, 413, 431) carry no span.
"""

from __future__ import annotations

from typing import Any

from twistedgw.config import ApiConfig
from twistedgw.errors import GatewayError
from twistedgw.http import _callers as callers
from twistedgw.http._routing import Route
from twistedgw.http._snapshot import Snapshot
from twistedgw.pipeline import Call
from twistedgw.tracing import IncomingRequest, RequestTrace, Tracer, Verdict
from twistedgw.wire import Exchange


def begin(tracer: Tracer, exchange: Exchange, raw_path: bytes, runtime: Snapshot) -> RequestTrace:
    """The server span of ``exchange``, continuing the caller's trace context; called
    before the caller is resolved, so the peer is the connection's."""
    fields = exchange.fields
    traceparent = fields.getRawHeaders(b"traceparent")
    return tracer.start(
        IncomingRequest(
            method=exchange.method,
            path=raw_path,
            secure=exchange.secure,
            version=exchange.version,
            host=exchange.host,
            client=exchange.client_ip,
            # Only a caller's own trace context needs its source judged.
            trusted=traceparent is not None
            and callers.from_trusted_proxy(exchange, runtime.config.mutual_ssl),
            traceparent=traceparent,
            tracestate=fields.getRawHeaders(b"tracestate"),
            user_agent=fields.first(b"user-agent"),
        )
    )


def route_template(route: Route | None) -> str | None:
    """``http.route``: the API's context and the operation's path template, or the context
    and ``/*`` for an API that forwards every path under it."""
    if route is None:
        return None
    context = route.api.context.rstrip("/")
    if route.operation is not None:
        return context + route.operation.template
    return context + "/*"


def end(
    trace: RequestTrace,
    status: int,
    kind: str | None,
    api: ApiConfig | None,
    call: Call | None,
    routed: Any,
    refusal: GatewayError | None = None,
) -> None:
    """End the server span with what the request's record holds (``routed``: the
    front's routing of the request, if it routed it)."""
    if not trace.recording:  # not sampled: nothing to describe
        trace.end(status, kind)
        return
    route = getattr(routed, "route", None)
    verdict = None
    if call is not None:
        verdict = Verdict(
            call.identity,
            call.consumer,
            call.principals,
            call.passed_schemes,
            call.via_load_balancer,
        )
    label = api.label if api is not None else None
    trace.end(
        status, kind, api=label, route=route_template(route), verdict=verdict, refusal=refusal
    )
