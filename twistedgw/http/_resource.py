"""The gateway's HTTP face: one leaf resource that hands each request to its API's pipeline.

A request travels: routed once (the guard did it when the headers arrived, see
``route_request``) -> the caller's certificate resolved (``callers``) -> the
API's compiled pipeline (certificate checks, schemes combined the WSO2 way,
authorisers, request transforms) -> forwarded, with the response transforms
applied to the answer -> observed (one ``RequestRecord``). Every refusal is a
``GatewayError`` rendered as WSO2-compatible JSON; nothing a client sends can
make this raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedgw import _hosts, _twisted, errors
from twistedgw.config import ApiConfig, GatewayConfig
from twistedgw.errors import GatewayError, write_error
from twistedgw.http import _callers as callers
from twistedgw.http import _verdicts as verdicts
from twistedgw.http._routing import BadPath, Route, authz_path, normalise, split_target
from twistedgw.http._snapshot import Snapshot
from twistedgw.identity import ClientIdentity
from twistedgw.pipeline import (
    Call,
    HeaderEdit,
    HeaderView,
    Outcome,
    Pipeline,
    Refusal,
    RequestView,
    ResponseEdit,
)
from twistedgw.tls import server_name, sni_entry
from twistedgw.upstream import TOKEN, Forwarder

log = Logger()


class RequestRecord(NamedTuple):
    """One finished request, for the access log and metrics.

    Immutable; a tuple because one is built per request and a frozen dataclass's
    ``__init__`` cost three times as much (CHANGELOG.md 0.4.0, fifth round).
    """

    started: float
    duration: float
    client: str
    method: str
    path: str
    api: ApiConfig | None
    status: int
    bytes_sent: int
    identity: ClientIdentity | None
    error_kind: str | None = None
    consumer: str | None = None  # the [[consumers]] name the caller mapped to
    protocol: str = "HTTP/1.1"  # as the client spoke it: HTTP/1.0, HTTP/1.1 or HTTP/2
    # The JSON error the gateway answered with instead of forwarding, whichever stage
    # refused (the front's limits, routing, a scheme, an authoriser, a plugin): the
    # access log's reason and code and the metrics' refusal labels come from it.
    refusal: GatewayError | None = None


Observer = Callable[[RequestRecord], None]


@dataclass
class Gateway:
    """The live state: the current ``Runtime`` (swapped whole on reload) and its observers."""

    runtime: Snapshot
    forwarder: Forwarder
    observers: list[Observer] = field(default_factory=list)

    def notify(self, record: RequestRecord) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.failure("request observer failed")


class Routed(NamedTuple):
    """A request target routed once, under one Runtime snapshot."""

    runtime: Snapshot
    raw_path: bytes
    path: bytes | None  # normalised; None when the path was refused
    query: bytes | None
    route: Route | None
    problem: str | None = None  # why the path was refused
    host: str | None = None  # the Host header's host (_hosts.py spelling); None if absent

    @property
    def body_limit(self) -> int:
        """The API's ``max_body_bytes``, else the global one: the one body-limit rule."""
        route = self.route
        if route is not None and route.api.max_body_bytes is not None:
            return route.api.max_body_bytes
        return self.runtime.config.limits.max_body_bytes


def route_request(
    runtime: Snapshot,
    target: bytes,
    method: bytes | None = None,
    *,
    as_forwarded: bool = False,
    host: bytes | None = None,
) -> Routed:
    """Normalise and route ``target`` (under the ``Host`` header's ``host``) once; the
    guard calls this when the headers are in and stores the result on the request, so
    the resource never routes again.
    ``method`` picks the operation of an API read from an OpenAPI definition.

    ``as_forwarded`` (the authz endpoint) accepts only a path already in normal form
    (``routing.authz_path``): the proxy in front forwards it raw, so judging its
    normalised form would judge a different request than the one forwarded."""
    raw_path, query = split_target(target)
    try:
        path = authz_path(raw_path) if as_forwarded else normalise(raw_path)
    except BadPath as e:
        return Routed(runtime, raw_path, None, query, None, str(e))
    # The host matters only to a config that routes by it or has SNI entries; others
    # neither pay for it nor refuse a Host they always accepted.
    wanted = runtime.router.uses_hosts or (
        runtime.server_tls is not None and bool(runtime.server_tls.sni_hosts)
    )
    try:
        name = _hosts.from_header(host) if host is not None and wanted else None
    except _hosts.BadHost as e:
        return Routed(runtime, raw_path, None, query, None, f"bad Host header: {e}")
    route = runtime.router.route(path, query, method, name)
    return Routed(runtime, raw_path, path, query, route, host=name)


def misdirected(request: Request, routed: Routed) -> GatewayError | None:
    """421 when the request's host would have chosen another ``[[tls.sni]]`` entry (or
    the default) than the connection's SNI did: a certificate verdict, and the
    CertificateRequest, belong to the entry the handshake chose."""
    server_tls = routed.runtime.server_tls
    host = routed.host
    if server_tls is None or not server_tls.sni_hosts or host is None or not request.isSecure():
        return None
    handle = getattr(_twisted.connection_transport(request.channel), "getHandle", None)
    if handle is None:
        return None
    sni = server_name(handle())
    if sni_entry(server_tls.sni_hosts, sni) == sni_entry(server_tls.sni_hosts, host):
        return None
    named = f"the TLS server name {sni!r}" if sni is not None else "no TLS server name"
    return errors.misdirected(
        f"the host {host!r} is not served on this connection, which was opened with {named}; "
        "open a connection whose server name (SNI) is that host"
    )


def request_view(request: Request, path: bytes, query: bytes | None) -> RequestView:
    return RequestView(
        method=request.method,
        path=path,
        query=query,
        headers=HeaderView(request.requestHeaders),
        client=callers.client_ip(request),
        secure=request.isSecure(),
    )


class _Exchange:
    """One request's bookkeeping: the record it ends with, and how it answers."""

    __slots__ = (
        "api", "call", "gateway", "method", "pipeline", "raw_path", "request", "started"
    )

    def __init__(self, gateway: Gateway, request: Request, raw_path: bytes) -> None:
        self.gateway = gateway
        self.request = request
        self.raw_path = raw_path
        self.method = request.method  # the authz endpoint records the method it judged
        self.started = time.time()
        self.api: ApiConfig | None = None
        self.call: Call | None = None
        self.pipeline: Pipeline | None = None

    def finish(
        self, status: int, sent: int, kind: str | None = None, refusal: GatewayError | None = None
    ) -> None:
        call = self.call
        request = self.request
        self.gateway.notify(
            RequestRecord(
                started=self.started,
                duration=time.time() - self.started,
                client=callers.client_ip(request),
                method=self.method.decode("latin-1"),
                path=self.raw_path.decode("latin-1"),
                api=self.api,
                status=status,
                bytes_sent=sent,
                identity=call.identity if call is not None else None,
                error_kind=kind,
                consumer=call.consumer if call is not None else None,
                protocol=request.clientproto.decode("latin-1"),
                refusal=refusal,
            )
        )

    def refuse(self, error: GatewayError, headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        body = write_error(self.request, error, headers)
        self.transform_answer(self.request)
        self.finish(error.status, len(body), refusal=error)
        return body

    def transform_answer(self, request: Request) -> GatewayError | None:
        """The API's response transforms, on whatever answer is about to be sent."""
        pipeline, call = self.pipeline, self.call
        if pipeline is None or call is None or not pipeline.response_transforms:
            return None
        headers = request.responseHeaders
        edit = ResponseEdit(
            request.code,
            [(name, value) for name, values in headers.getAllRawHeaders() for value in values],
        )
        refusal = pipeline.transform_response(call, edit)
        if refusal is not None:
            return refusal.error
        for name, _values in list(headers.getAllRawHeaders()):
            headers.removeHeader(name)
        for name, value in edit.headers:
            headers.addRawHeader(name, value)
        return None


class GatewayResource(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        routed: Routed | None = getattr(request, "routed", None)
        if routed is None:  # a request the guard did not see (an embedding's own Site)
            routed = route_request(
                self.gateway.runtime, request.uri, request.method, host=request.getHeader(b"host")
            )
        exchange = _Exchange(self.gateway, request, routed.raw_path)
        wrong_host = misdirected(request, routed)  # before any policy, the authz endpoint too
        if wrong_host is not None:
            return exchange.refuse(wrong_host)
        if routed.path is None:
            return exchange.refuse(errors.bad_request(routed.problem or "bad request path"))
        runtime = routed.runtime  # one consistent snapshot for this request
        authz = runtime.config.authz
        if authz is not None and routed.path == authz.path.encode():
            return self._authz(request, runtime, exchange)
        route = routed.route
        if route is None or route.pipeline is None:
            return exchange.refuse(errors.not_found(routed.path.decode("latin-1")))
        if route.unmatched is not None:  # an OpenAPI API without this operation
            exchange.api = route.api
            allow = ((b"Allow", route.allow),) if route.allow else ()
            return exchange.refuse(route.unmatched, allow)
        caller = callers.resolve(request, runtime)
        call = Call(
            request_view(request, routed.path, routed.query),
            route.security_api,  # an operation's own security, if it has one
            caller.identity,
            via_load_balancer=caller.via_load_balancer,
        )
        exchange.api, exchange.call, exchange.pipeline = route.api, call, route.pipeline
        return _settle(
            request, exchange, route.pipeline.run(call), lambda o: self._forward(exchange, route, o)
        )

    def _forward(self, exchange: _Exchange, route: Route, edit: HeaderEdit) -> int:
        # The set headers' names need not be removed as well: the forwarder drops every
        # client-sent header named in add_headers.
        self.gateway.forwarder.forward(
            exchange.request,
            route.backend_target,
            add_headers=list(edit.set_values.values()),
            remove_headers=edit.removed,
            on_done=lambda r: exchange.finish(r.status, r.bytes_sent, r.error_kind),
            backend_timeout=route.api.backend_timeout,
            on_answer=exchange.transform_answer if route.pipeline else None,
            alternatives=route.alternatives,
            send_timeout=self.gateway.runtime.config.limits.send_timeout,  # after a reload too
        )
        return NOT_DONE_YET

    def _authz(self, request: Request, runtime: Snapshot, exchange: _Exchange) -> bytes | int:
        """Judge the request that ``original_uri_header`` names, without forwarding it.

        Its method is the one ``original_method_header`` names, or this request's
        own (the access log records the judged request, not the subrequest).

        For NGINX ``auth_request``, Envoy ``ext_authz`` and Traefik ``forwardAuth``.
        A path that names no API, or an unsafe one, is refused with 403, not
        404/400: ``auth_request`` understands only 2xx, 401 and 403 and would turn
        anything else into a 500 of its own. So is a path not already in normal
        form (``routing.authz_path``).
        """
        assert runtime.config.authz is not None
        settings = runtime.config.authz
        for name, value in verdicts.NO_STORE:  # refusals are never cached
            request.responseHeaders.setRawHeaders(name, [value])
        original = request.getHeader(settings.original_uri_header.encode())
        if original is None:
            return exchange.refuse(
                errors.bad_request(f"the {settings.original_uri_header} header is missing")
            )
        named_method = request.getHeader(settings.original_method_header.encode())
        if named_method is not None and not TOKEN.match(named_method):
            return exchange.refuse(
                errors.forbidden(f"the {settings.original_method_header} header is not a method")
            )
        if named_method is not None:
            exchange.method = named_method
        # The judged request's host: the one original_host_header names, else this
        # request's own Host (a proxy that passes Host through needs no header).
        judged_host = request.getHeader(settings.original_host_header.encode())
        if judged_host is None:
            judged_host = request.getHeader(b"host")
        judged = route_request(
            runtime, original, exchange.method, as_forwarded=True, host=judged_host
        )
        if judged.path is None:
            return exchange.refuse(errors.forbidden(judged.problem or "bad request path"))
        route = judged.route
        if route is None or route.pipeline is None:
            return exchange.refuse(
                errors.forbidden(errors.not_found(judged.path.decode("latin-1")).description)
            )
        if route.api.operations is not None and named_method is None:
            # An OpenAPI API's security depends on the operation, so on the real method,
            # not the subrequest's own.
            return exchange.refuse(
                errors.forbidden(f"the {settings.original_method_header} header is missing")
            )
        if route.unmatched is not None:
            return exchange.refuse(errors.forbidden(route.unmatched.description))
        caller = callers.resolve(request, runtime)
        view = request_view(request, judged.path, judged.query)
        call = Call(
            view._replace(method=exchange.method),
            route.security_api,
            caller.identity,
            via_load_balancer=caller.via_load_balancer,
        )
        # The access log and metrics name the API and caller judged.
        exchange.api, exchange.call = route.api, call
        config = runtime.config
        return _settle(
            request, exchange, route.pipeline.judge(call), lambda _o: _allow(exchange, config)
        )


def _allow(exchange: _Exchange, config: GatewayConfig) -> bytes:
    request, call = exchange.request, exchange.call
    assert call is not None and call.api is not None
    request.setResponseCode(200)
    headers = request.responseHeaders
    for name, value in (
        *verdicts.cache_headers(verdicts.allow_lifetime(config, call.api, call.identity)),
        *verdicts.identity_answer_headers(config, call.api, call.identity),
    ):
        headers.setRawHeaders(name, [value])
    headers.setRawHeaders(b"x-twistedgw-api", [call.api.label.encode()])
    identity = call.identity
    if identity.leaf is not None and identity.verified:
        headers.setRawHeaders(b"x-client-cert-subject", [(identity.subject or "").encode()])
        headers.setRawHeaders(b"x-client-cert-sha256", [(identity.leaf_sha256() or "").encode()])
    principals = ",".join(call.principals)
    if principals:
        headers.setRawHeaders(b"x-twistedgw-principal", [principals.encode()])
    if call.consumer is not None:  # for auth_request_set / forwardAuth's authResponseHeaders
        headers.setRawHeaders(b"x-consumer-name", [call.consumer.encode()])
    headers.setRawHeaders(b"content-length", [b"0"])
    exchange.finish(200, 0)
    return b""


def _settle(
    request: Request,
    exchange: _Exchange,
    outcome: Outcome | Deferred[Outcome],
    proceed: Callable[[HeaderEdit], bytes | int],
) -> bytes | int:
    """Answer a pipeline's outcome now, or when its Deferred fires (if the client stayed)."""
    if not isinstance(outcome, Deferred):
        if isinstance(outcome, Refusal):
            return exchange.refuse(outcome.error, outcome.headers)
        return proceed(outcome)
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def resume(result: Outcome) -> None:
        if gone:  # the client left while a stage was waiting
            return
        if isinstance(result, Refusal):
            body: bytes | int = exchange.refuse(result.error, result.headers)
        else:
            body = proceed(result)
        if body is not NOT_DONE_YET:
            assert isinstance(body, bytes)
            request.write(body)
            request.finish()

    def crashed(failure: Failure) -> None:
        log.failure("request pipeline failed", failure)
        if not gone:
            request.write(exchange.refuse(errors.internal_error()))
            request.finish()

    outcome.addCallback(resume).addErrback(crashed)
    return NOT_DONE_YET


__all__ = ["Gateway", "GatewayResource", "RequestRecord", "Routed", "route_request"]
