"""The gateway's request path: each exchange to its API's pipeline, then to its backend.

A request travels: routed once (the front did it when the head arrived, see
``route_request``) -> the caller's certificate resolved (``callers``) -> the
API's compiled pipeline (certificate checks, schemes combined the WSO2 way,
authorisers, request transforms) -> its body read (only now: a refused request's
body is never read) and forwarded, with the response transforms applied to the
answer -> observed (one ``RequestRecord``). Every refusal is a ``GatewayError``
rendered as WSO2-compatible JSON; nothing a client sends can make this raise.

Fronts hand in a ``GatewayExchange`` (a ``wire.Exchange``) through
``GatewayResource.handle``; a twisted.web ``Request`` (HTTP/2 streams, an
embedding's own ``Site``) reaches ``GatewayResource.render``, which adapts it
(``http/_webexchange.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import IO, Any, NamedTuple, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from twistedgw import _hosts, errors
from twistedgw._memo import remember
from twistedgw.config import ApiConfig, AuthzConfig, GatewayConfig
from twistedgw.errors import GatewayError
from twistedgw.http import _callers as callers
from twistedgw.http import _cors as cors
from twistedgw.http import _served as served
from twistedgw.http import _tracing as tracing
from twistedgw.http import _upgrade as websocket
from twistedgw.http import _verdicts as verdicts
from twistedgw.http._callers import Caller
from twistedgw.http._routing import BadPath, Route, authz_path, normalise, split_target
from twistedgw.http._snapshot import Snapshot
from twistedgw.identity import ClientIdentity
from twistedgw.identity import Outcome as IdentityOutcome
from twistedgw.pipeline import (
    TIER_LIMIT,
    TIERS,
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
from twistedgw.tracing import RequestTrace, Tracer
from twistedgw.upstream import NO_EDITS, Forwarder, ForwardResult, HeadEdits, TunnelStats
from twistedgw.wire import (
    TOKEN,
    BodySource,
    Connection,
    Exchange,
    Fields,
    Responder,
    answer_headers,
    method_refusal,
)

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
    trace_id: str | None = None  # [tracing]: the request's trace (32 hex digits)
    cache: str | None = None  # "hit" | "miss" for an API with a response cache
    # A WebSocket (http/_upgrade.py) is notified twice: when its 101 is sent (this with
    # ``closed_by`` None: counted as a request, no access-log line) and when it closes
    # (its one access-log line: duration, bytes each way, close code; not a request).
    websocket: TunnelStats | None = None


Observer = Callable[[RequestRecord], None]


class RequestCounter(Protocol):
    """What counts every finished request (the metrics) without a ``RequestRecord``: the
    fields of one, as arguments. A request whose only reader is a counter builds no record
    (issue 27 item 5); ``observers`` get records."""

    def count_request(
        self,
        api: ApiConfig | None,
        status: int,
        duration: float,
        identity: ClientIdentity | None,
        consumer: str | None,
        error_kind: str | None,
        refusal: GatewayError | None,
        cache: str | None = None,
        websocket: TunnelStats | None = None,
    ) -> None: ...


@dataclass
class Gateway:
    """The live state: the current ``Runtime`` (swapped whole on reload), what counts its
    requests (``counter``: the metrics) and what reads their records (``observers``: the
    access log, an embedding's own)."""

    runtime: Snapshot
    forwarder: Forwarder
    observers: list[Observer] = field(default_factory=list)
    tracer: Tracer | None = None  # [tracing]; None: off, and nothing of it runs
    counter: RequestCounter | None = None

    def notify(self, record: RequestRecord) -> None:
        counter = self.counter
        if counter is not None:
            try:
                counter.count_request(
                    record.api, record.status, record.duration, record.identity,
                    record.consumer, record.error_kind, record.refusal, record.cache,
                    record.websocket,
                )
            except Exception:
                log.failure("request counter failed")
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
    # Every request's host is validated, whether or not any API routes by host: the
    # value reaches the backend in X-Forwarded-Host (issue 23 item 1). Cached per value.
    try:
        name = _hosts.from_header(host) if host is not None else None
    except _hosts.BadHost as e:
        return Routed(runtime, raw_path, None, query, None, f"bad Host header: {e}")
    route = runtime.router.route(path, query, method, name)
    return Routed(runtime, raw_path, path, query, route, host=name)


def route_parsed(
    runtime: Snapshot, target: bytes, method: bytes, host_name: str | None
) -> Routed:
    """``route_request`` for a front whose head parser validated the Host already
    (``host_name``: ``_hosts.from_header``'s spelling): the router's one call
    (``Router.parts``; the HTTP/1.1 front writes this out)."""
    return runtime.router.parts(Routed, runtime, target, method, host_name)


_new_routed = tuple.__new__  # a Routed without its NamedTuple __new__ (a Python call)
assert Routed._fields == (  # ``Router.parts`` builds a Routed in this order
    "runtime", "raw_path", "path", "query", "route", "problem", "host"
), "Router.parts and the front's authz Routed list every field in order"


def misdirection(exchange: Exchange, routed: Routed) -> GatewayError | None:
    """421 when the request's host would have chosen another ``[[tls.sni]]`` entry (or
    the default) than the connection's SNI did: a certificate verdict, and the
    CertificateRequest, belong to the entry the handshake chose."""
    server_tls = routed.runtime.server_tls
    host = routed.host
    if server_tls is None or not server_tls.sni_hosts or host is None or not exchange.secure:
        return None
    conn = exchange.conn
    conn.derived_under(routed.runtime)
    # The handshake's server name and entry, once per connection; the last host compared
    # with it and the answer (a connection names the same host request after request).
    seen: tuple[str | None, object, str, bool] | None = conn.sni
    if seen is not None and seen[2] == host:
        if seen[3]:
            return None
        sni = seen[0]
    else:
        if seen is not None:
            sni, entry = seen[0], seen[1]
        else:
            handle = getattr(conn.transport, "getHandle", None)
            if handle is None:
                return None
            sni = server_name(handle())
            entry = sni_entry(server_tls.sni_hosts, sni)
        same = entry == sni_entry(server_tls.sni_hosts, host)
        conn.sni = (sni, entry, host, same)
        if same:
            return None
    named = f"the TLS server name {sni!r}" if sni is not None else "no TLS server name"
    return errors.misdirected(
        f"the host {host!r} is not served on this connection, which was opened with {named}; "
        "open a connection whose server name (SNI) is that host"
    )


def request_view(exchange: Exchange, path: bytes, query: bytes | None) -> RequestView:
    return RequestView(
        method=exchange.method,
        path=path,
        query=query,
        headers=HeaderView(exchange.fields),
        client=exchange.client_ip,
        secure=exchange.secure,
    )


class CallerVerdict(NamedTuple):
    """A pipeline's verdict on one connection's caller, kept on the connection
    (``wire.Connection.verdict``) for the pipelines whose verdict depends on the caller
    alone (``Pipeline.per_caller``): the connection's next requests to that API run no
    stage, build no ``Call`` and send the same header lines (issue 27 items 3 and 5)."""

    pipeline: Pipeline
    caller: Caller  # whose verdict (the same object for every request of a connection)
    refusal: Refusal | None
    edits: HeadEdits  # allowed: what the backend's request head gets and loses, prepared
    add_headers: tuple[tuple[bytes, bytes], ...]  # the same as the pipeline gave them, for
    removed: frozenset[bytes]  # a backend other than the forwarder (a cache, in-process)
    # For the record, metrics and the response cache's key: the caller's identity after
    # the certificate checks, the consumer it maps to, the principals the schemes passed,
    # and whether a sandbox credential passed.
    identity: ClientIdentity
    consumer: str | None
    principals: tuple[str, ...]
    sandbox: bool

    @classmethod
    def of(cls, pipeline: Pipeline, caller: Caller, call: Call, outcome: Outcome) -> CallerVerdict:
        if isinstance(outcome, Refusal):
            return cls(pipeline, caller, outcome, NO_EDITS, (), frozenset(), call.identity,
                       call.consumer, call.principals, call.sandbox)
        add = tuple(outcome.set_values.values())
        removed = frozenset(outcome.removed)
        return cls(pipeline, caller, None, HeadEdits.of(add, removed), add, removed,
                   call.identity, call.consumer, call.principals, call.sandbox)


class GatewayExchange(Exchange):
    """A ``wire.Exchange`` and what the request path learns of it: its route, the API,
    the pipeline's ``Call`` (or the connection's ``CallerVerdict``) and the record it
    ends with. One per request."""

    __slots__ = (
        "api", "began", "cache", "call", "edits", "gateway", "judged_method", "pipeline",
        "routed", "switch", "trace", "verdict",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        fields: Fields,
        host: bytes | None,
        conn: Connection,
        responder: Responder,
        body: BodySource | None,
        routed: Routed | None = None,
    ) -> None:
        # wire.Exchange's fields, set here rather than through its __init__ (one call
        # fewer per request).
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.host = host
        self.lines = None  # (the fronts that check a head whole set it)
        self.conn = conn
        self.responder = responder
        self.body = body
        self.client_ip = conn.client_ip
        self.secure = conn.secure
        self.routed = routed  # routed once, by the front; None: not yet
        self.began = time.time()  # when its head was taken
        self.judged_method = method  # the authz endpoint records the method it judged
        self.api: ApiConfig | None = None
        self.call: Call | None = None
        self.pipeline: Pipeline | None = None
        self.trace: RequestTrace | None = None  # [tracing]: begun by serve_exchange()
        self.cache: str | None = None  # set by the response cache (http/_cache.py)
        self.verdict: CallerVerdict | None = None  # judged without a Call (per_caller)
        self.gateway: Gateway | None = None  # set when forwarded
        # The backend head's edits, when forwarded: a CallerVerdict's (prepared once), or
        # the pipeline's own, prepared by the forwarder (which answers a bad one with 500).
        self.edits: CallerVerdict | HeaderEdit | None = None
        # A WebSocket handshake being forwarded (http/_upgrade.py): what takes the exchange
        # over on the backend's 101, and the upgrade's own header lines.
        self.switch: tuple[websocket.OnSwitch, list[tuple[bytes, bytes]]] | None = None

    def record(
        self,
        gateway: Gateway,
        status: int,
        sent: int,
        kind: str | None = None,
        refusal: GatewayError | None = None,
        websocket: TunnelStats | None = None,
    ) -> None:
        """The exchange ended: one ``RequestRecord`` for the access log and metrics
        (``refusal``: the error answered instead of forwarding, whichever stage made it;
        ``websocket``: an upgraded connection's, see ``RequestRecord``)."""
        call = self.call
        routed = self.routed
        started = self.began
        trace = self.trace
        if trace is not None and (websocket is None or websocket.closed_by is None):
            # (A WebSocket's span is its handshake's, ended at the 101: not at its close.)
            tracing.end(trace, status, kind, self.api, call, routed, refusal)
        identity: ClientIdentity | None
        consumer: str | None
        if call is not None:
            identity, consumer = call.identity, call.consumer
        else:
            verdict = self.verdict
            if verdict is not None:  # (by index: a NamedTuple field by name costs on 3.11)
                identity, consumer = verdict[6], verdict[7]  # .identity, .consumer
            else:
                identity = consumer = None
        if not gateway.observers:  # nothing reads a record: count the request, build none
            counter = gateway.counter
            if counter is not None:
                try:
                    counter.count_request(
                        self.api, status, time.time() - started, identity, consumer, kind,
                        refusal, self.cache, websocket,
                    )
                except Exception:
                    log.failure("request counter failed")
            return
        gateway.notify(
            RequestRecord(
                started=started,
                duration=time.time() - started,
                client=self.client_ip,
                method=self.judged_method.decode("latin-1"),
                path=(routed.raw_path if routed is not None else self.path).decode("latin-1"),
                api=self.api,
                status=status,
                bytes_sent=sent,
                identity=identity,
                error_kind=kind,
                consumer=consumer,
                protocol=self.version.decode("latin-1"),
                refusal=refusal,
                trace_id=trace.trace_id if trace is not None else None,
                cache=self.cache,
                websocket=websocket,
            )
        )

    def send(self, body: IO[bytes] | None, size: int) -> None:
        """``wire.BodyReady``: the allowed exchange's body is read (or there is none);
        the forwarder takes it over (``_forward`` set ``gateway`` and ``edits``)."""
        gateway = self.gateway
        routed = self.routed
        assert gateway is not None and routed is not None and routed.route is not None
        route = routed.route
        pipeline = route.pipeline
        target, alternatives = route.backend_target, route.alternatives
        judged = self.call if self.call is not None else self.verdict
        if judged is not None and judged.sandbox:  # authentication chose the sandbox endpoint
            target, alternatives = route.sandbox[0], route.sandbox[1:]
        switch = self.switch
        # The forwarder, or a cache; a WebSocket handshake, the forwarder itself (a cache's
        # capture cannot switch). No cache nor in-process backend: the forwarder.
        backend = gateway.forwarder if (
            switch is not None or routed.runtime.served is None
        ) else served.backend_for(gateway, self, route)
        edits = self.edits
        assert edits is not None
        if isinstance(edits, CallerVerdict):
            # Prepared once per connection; only the forwarder takes them so (a cache keys
            # its entries by the caller's header edits, an in-process backend reads them,
            # a WebSocket handshake adds its upgrade's lines).
            if backend is gateway.forwarder and switch is None:
                prepared: HeadEdits | None = edits.edits
                add: list[tuple[bytes, bytes]] = []
                remove: Collection[bytes] = ()
            else:
                prepared, add, remove = None, list(edits.add_headers), edits.removed
        else:  # the set headers' names need not be removed too: the forwarder drops them
            prepared, add, remove = None, list(edits.set_values.values()), edits.removed
        on_switch = None
        if switch is not None:
            on_switch = switch[0]
            add.extend(switch[1])
        on_answer = self.transform_answer if pipeline and pipeline.response_transforms else None
        send_timeout = gateway.runtime.config.limits.send_timeout  # after a reload too
        if backend is gateway.forwarder:  # ``forward``, its arguments by position
            backend.relay(
                self, target, body, size, add, remove, self.forwarded,
                route.api.backend_timeout, None, alternatives, on_answer, send_timeout,
                self.trace, on_switch, prepared,
            )
            return
        extra: dict[str, Any] = {}
        if prepared is not None:
            extra["edits"] = prepared
        if on_switch is not None:
            extra["on_switch"] = on_switch
        backend.forward(
            self,
            target,
            body=body,
            body_size=size,
            add_headers=add,
            remove_headers=remove,
            on_done=self.forwarded_result,
            backend_timeout=route.api.backend_timeout,
            on_answer=on_answer,
            alternatives=alternatives,
            send_timeout=send_timeout,
            trace=self.trace,
            **extra,
        )

    @property
    def sandbox(self) -> bool:
        """Whether authentication chose the API's sandbox endpoints (a sandbox key)."""
        judged = self.call if self.call is not None else self.verdict
        return judged is not None and judged.sandbox

    def allowed(self, edit: HeaderEdit) -> None:
        """The pipeline allowed the exchange, with ``edit``: forward it."""
        assert self.gateway is not None
        _forward(self.gateway, self, edit)

    def forwarded(self, status: int, sent: int, kind: str | None) -> None:
        """``Forwarder.relay``'s ``on_done`` (a ``ForwardResult``'s values, no tuple to
        build and unpack: issue 27, once per request): the exchange's record."""
        gateway = self.gateway
        assert gateway is not None
        self.record(gateway, status, sent, kind)

    def forwarded_result(self, result: ForwardResult) -> None:
        """Another backend's ``forward`` ``on_done`` (an in-process backend, a cache):
        the exchange's record."""
        # Unpacked: 3.11 reads a NamedTuple's field by name through the generic attribute
        # path.
        status, sent, kind = result
        self.forwarded(status, sent, kind)

    def transform_answer(
        self, status: int, headers: list[tuple[bytes, bytes]]
    ) -> GatewayError | None:
        """The API's response transforms, on whatever answer is about to be sent: they
        edit ``headers`` in place; an error they return is answered instead."""
        pipeline, call = self.pipeline, self.call
        if pipeline is None or call is None or not pipeline.response_transforms:
            return None
        refusal = pipeline.transform_response(call, ResponseEdit(status, headers))
        if refusal is not None:
            return refusal.error
        # Framing is the front's (wire.Responder): a third-party transform cannot set it.
        headers[:] = [(n, v) for n, v in headers if n.lower() not in _FRAMING]
        return None


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def _reason(error: GatewayError) -> bytes | None:
    """twisted.web knows no reason phrase for some codes (421): the error's message is one."""
    return None if error.status in RESPONSES else error.message.encode("latin-1")


def answer_error(
    gateway: Gateway,
    exchange: GatewayExchange,
    error: GatewayError,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer ``error`` as WSO2-style JSON (with ``headers``), after the response
    transforms, and record it."""
    out = answer_headers()
    out.append((b"Content-Type", errors.JSON_TYPE))
    out.extend(headers)
    _send_error(gateway, exchange, error, out)


def _send_error(
    gateway: Gateway, exchange: GatewayExchange, error: GatewayError,
    out: list[tuple[bytes, bytes]],
) -> None:
    """Send ``error``'s JSON with the fields ``out`` (after the response transforms: a
    failing transform was logged) and record it: both refusal forms end here."""
    body = error.body()
    exchange.transform_answer(error.status, out)
    responder = exchange.responder
    responder.start_response(error.status, out, len(body), _reason(error))
    head = exchange.method == b"HEAD"
    if not head:
        responder.write(body)
    responder.finish()
    exchange.record(gateway, error.status, 0 if head else len(body), refusal=error)


class GatewayResource(Resource):
    """The gateway's one leaf resource: ``handle`` for the fronts' exchanges, ``render``
    for twisted.web requests (HTTP/2, an embedding's own ``Site``)."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def handle(self, exchange: GatewayExchange) -> None:
        """Serve ``exchange`` (its head is in; its body, if any, is read when allowed)."""
        serve_exchange(self.gateway, exchange)

    def render(self, request: Any) -> int:
        from twistedgw.http._webexchange import web_exchange

        exchange = web_exchange(request)
        # The HTTP/1.1 front refuses these before dispatch (wire); twisted.web's
        # HTTP/2 does not, and a backend must never see them (issue 23 item 5).
        refusal = method_refusal(exchange.method)
        if refusal is not None:
            answer_error(self.gateway, exchange, refusal)
        else:
            serve_exchange(self.gateway, exchange)
        return NOT_DONE_YET


def serve_exchange(gateway: Gateway, exchange: GatewayExchange) -> None:
    """Route (unless the front did), judge and forward one exchange; never raises for
    anything a client sends."""
    routed = exchange.routed
    if routed is None:  # an exchange the front did not route (an embedding's own Site)
        routed = exchange.routed = route_request(
            gateway.runtime, exchange.target, exchange.method, host=exchange.host
        )
    # Its fields at once (a NamedTuple's field read is a descriptor call on 3.11).
    runtime, raw_path, path, _query, route, problem, _host = routed
    tracer = gateway.tracer
    if tracer is not None:
        exchange.trace = tracing.begin(tracer, exchange, raw_path, runtime)
    server_tls = runtime.server_tls
    if server_tls is not None and server_tls.sni_hosts:  # (else no host is misdirected)
        wrong_host = misdirection(exchange, routed)  # before any policy, the authz endpoint too
        if wrong_host is not None:
            answer_error(gateway, exchange, wrong_host)
            return
    if path is None:
        answer_error(gateway, exchange, errors.bad_request(problem or "bad request path"))
        return
    # (``runtime``: one consistent snapshot for this request.)
    config = runtime.config
    authz = config.authz
    if authz is not None and path == authz.path.encode():
        _authz(gateway, exchange, runtime)
        return
    if route is None:
        answer_error(gateway, exchange, errors.not_found(path.decode("latin-1")))
        return
    (api, backend_target, pipeline, alternatives, operation, _effective, unmatched, allow,
     _sandbox) = route
    if pipeline is None:
        answer_error(gateway, exchange, errors.not_found(path.decode("latin-1")))
        return
    if api.cors is not None and cors.intercept(gateway, exchange, api):
        return  # a preflight, answered before operation matching and authentication
    if unmatched is not None:  # an OpenAPI API without this operation
        exchange.api = api
        answer_error(gateway, exchange, unmatched, ((b"Allow", allow),) if allow else ())
        return
    conn = exchange.conn
    seen = conn.caller
    if (
        seen is not None and conn.generation is runtime
        and config.mutual_ssl.certificate_header is None
    ):  # ``callers.resolve``'s usual answer: the connection's own, worked out before
        caller = seen[0]  # ``seen.direct``: by index, as a NamedTuple field costs on 3.11
    else:
        caller = callers.resolve(exchange, runtime)
    exchange.api, exchange.pipeline = api, pipeline
    # A pipeline whose verdict depends on the caller alone is run once per connection
    # (and config): its verdict and header edits are the connection's (CallerVerdict).
    # With [tracing] on, every request runs it (its span describes the Call).
    per_caller = pipeline.per_caller and exchange.trace is None
    if per_caller:
        verdict: CallerVerdict | None = conn.verdict
        # (Its fields by index: 3.11 reads a NamedTuple's field by name through the generic
        # attribute path, ~2x an index's cost; tests/test_upstream.py checks the positions.)
        if verdict is None or verdict[0] is not pipeline or verdict[1] is not caller:
            # Another connection of this caller's may have judged it (callers.Shared).
            verdict = callers.shared(runtime).verdict(pipeline, caller)
            if verdict is not None:
                conn.verdict = verdict
        if verdict is not None:
            exchange.verdict = verdict
            refusal, edits, sandbox = verdict[2], verdict[3], verdict[9]
            if refusal is None:  # ``_conclude``'s allow, the connection's usual
                if exchange.body is None and operation is None and not api.websocket:
                    # ``_forward``'s usual case written out: no body to read, no upgrade.
                    exchange.gateway = gateway
                    if runtime.served is None and not sandbox:
                        # ``send``'s usual case written out: the forwarder, the API's own
                        # backends, the verdict's edits prepared once per connection (the
                        # config in force: ``runtime`` is this turn's ``gateway.runtime``).
                        gateway.forwarder.relay(
                            exchange, backend_target, None, 0, (), (),
                            exchange.forwarded, api.backend_timeout, None, alternatives,
                            exchange.transform_answer if pipeline.response_transforms else None,
                            config.limits.send_timeout, None, None, edits,
                        )
                    else:
                        exchange.edits = verdict  # (what ``send`` forwards with)
                        exchange.send(None, 0)
                else:
                    _forward(gateway, exchange, verdict)
            else:
                _conclude(gateway, exchange, verdict)
            return
    call = Call(
        request_view(exchange, path, routed.query),
        route.security_api,  # an operation's own security, if it has one
        caller.identity,
        via_load_balancer=caller.via_load_balancer,
        trace=exchange.trace,
    )
    exchange.call = call
    outcome = pipeline.run(call)
    if per_caller and not isinstance(outcome, Deferred):
        try:
            verdict = CallerVerdict.of(pipeline, caller, call, outcome)
        except ValueError:  # a header name no backend head may carry: the forwarder says so
            verdict = None
        if verdict is not None:
            exchange.conn.verdict = verdict
            callers.shared(runtime).keep_verdict(pipeline, caller, verdict)
            _conclude(gateway, exchange, verdict)
            return
    exchange.gateway = gateway
    _settle(gateway, exchange, outcome, exchange.allowed)


def _conclude(gateway: Gateway, exchange: GatewayExchange, verdict: CallerVerdict) -> None:
    """Answer a caller's verdict: its refusal, or forward with its edits."""
    refusal = verdict.refusal
    if refusal is not None:
        answer_error(gateway, exchange, refusal.error, refusal.headers)
    else:
        _forward(gateway, exchange, verdict)


def _forward(
    gateway: Gateway, exchange: GatewayExchange, edits: CallerVerdict | HeaderEdit
) -> None:
    """Allowed: read the body (only now), then hand the exchange to the forwarder
    (``GatewayExchange.send``); a WebSocket handshake is checked and forwarded as one
    (http/_upgrade.py)."""
    exchange.gateway = gateway
    exchange.edits = edits
    route = exchange.routed.route if exchange.routed is not None else None
    if route is not None and (
        route.api.websocket or route.operation is not None  # ``websocket.accepts``, first
    ) and websocket.wanted(exchange, route):
        upgrade: list[tuple[bytes, bytes]] = []
        on_switch = websocket.prepare(gateway, exchange, upgrade, answer_error)
        if on_switch is None:  # a malformed handshake: answered 400
            return
        exchange.switch = (on_switch, upgrade)
    source = exchange.body
    if source is None:
        exchange.send(None, 0)
    else:
        source.read(exchange.send)


def _authz(gateway: Gateway, exchange: GatewayExchange, runtime: Snapshot) -> None:
    """Judge the request that ``original_uri_header`` names, without forwarding it.

    Its method is the one ``original_method_header`` names, or this request's
    own (the access log records the judged request, not the subrequest).

    For NGINX ``auth_request``, Envoy ``ext_authz`` and Traefik ``forwardAuth``.
    A path that names no API, or an unsafe one, is refused with 403, not
    404/400: ``auth_request`` understands only 2xx, 401 and 403 and would turn
    anything else into a 500 of its own. So is a path not already in normal
    form (``routing.authz_path``). Refusals are never cached (``verdicts.NO_STORE``).
    The config ``nginx-config`` renders also asks for answers NGINX can send itself
    (``verdicts.ASKER``): then every refusal the direct mode would give this request
    carries its status and JSON, and only the refusals about the subrequest itself (a
    path not in normal form, another API than NGINX routed to) are left for NGINX's
    gateway path.
    """
    config = runtime.config
    settings = config.authz
    assert settings is not None
    names = _AUTHZ_NAMES.get(id(settings))  # (``_authz_names``'s usual answer inline)
    uri_name, method_name, host_name = (
        names[1] if names is not None and names[0] is settings else _authz_names(settings)
    )
    get = exchange.fields.index().get  # (every name asked below is lower-case)
    values = get(verdicts.ASKER)
    asked = values[-1] if values else None
    # (from anyone, from a trusted proxy): which one counts is known once the caller is
    askers = verdicts.askers(asked)
    answer = askers[0].answer
    values = get(uri_name)
    if not values:
        _refuse_question(gateway, exchange, errors.bad_request(
            f"the {settings.original_uri_header} header is missing"))
        return
    original = values[-1]
    values = get(method_name)
    named_method = values[-1] if values else None
    if named_method is not None:
        if named_method not in _METHODS and not TOKEN.match(named_method):
            _refuse_question(gateway, exchange, errors.forbidden(
                f"the {settings.original_method_header} header is not a method"))
            return
        exchange.judged_method = named_method
    # The judged request's host: the one original_host_header names, else this
    # request's own Host (a proxy that passes Host through needs no header). When it is
    # the very value the front validated and named (the HTTP/1.1 front's Host), its
    # name is the front's (``Routed.host``), not worked out again.
    values = get(host_name) or get(b"host")
    host = values[-1] if values else None
    # The judged target routed as ``route_request(..., as_forwarded=True)`` would, written
    # out here (no ``Routed`` made: nothing after reads it).
    raw_path, sep, query_part = original.partition(b"?")
    query = query_part if sep else None
    try:
        path = authz_path(raw_path)
    except BadPath as e:
        _refuse_question(gateway, exchange, errors.forbidden(str(e) or "bad request path"))
        return
    name: str | None = None
    if host is not None:
        asked_as = exchange.routed
        if host is exchange.host and asked_as is not None:
            name = asked_as[6]  # ``Routed.host``: the front's name of this very value
        if name is None:
            try:
                name = _hosts.from_header(host)
            except _hosts.BadHost as e:
                _refuse_question(gateway, exchange,
                                 errors.forbidden(f"bad Host header: {e}"))
                return
    route = runtime.router.route(path, query, exchange.judged_method, name)
    # Its fields at once (a NamedTuple's field read by name is a descriptor call on 3.11,
    # ``security_api`` a property).
    (api, _backend, pipeline, _alternatives, _operation, effective, unmatched, allow,
     _sandbox) = route if route is not None else _NO_ROUTE
    if pipeline is None:  # (no route, or one without a pipeline)
        missing = errors.not_found(path.decode("latin-1"))
        _refuse(gateway, exchange, missing if answer else errors.forbidden(missing.description),
                verdicts.NO_STORE, answer)
        return
    security_api = effective if effective is not None else api
    values = get(verdicts.EXPECTED_API)
    if values and values[-1] != verdicts.expected_value(api):
        _refuse_question(gateway, exchange, errors.forbidden(
            f"twistedgw routes this request to {api.label}, not to the API the "
            "proxy chose"))
        return
    if api.operations is not None and named_method is None:
        # An OpenAPI API's security depends on the operation, so on the real method,
        # not the subrequest's own.
        _refuse_question(gateway, exchange, errors.forbidden(
            f"the {settings.original_method_header} header is missing"))
        return
    if unmatched is not None:
        if answer:  # the direct mode's 404 or 405 (with Allow)
            exchange.api = api
            allowed = ((b"Allow", allow),) if allow else ()
            _refuse(gateway, exchange, unmatched, (*verdicts.NO_STORE, *allowed), True)
        else:
            _refuse_question(gateway, exchange, errors.forbidden(unmatched.description))
        return
    caller = callers.resolve(exchange, runtime, get)
    identity, via_load_balancer = caller
    asker = askers[1] if via_load_balancer else askers[0]
    # A pipeline whose verdict depends on the caller alone (``Pipeline.per_caller``: no
    # request header, time, count or plugin) judged this verified caller before under
    # this config: its judged Call (without the request) and outcome are reused, as the
    # direct mode reuses a connection's ``CallerVerdict``; no Call, no stage runs.
    memo = (
        pipeline.per_caller and exchange.trace is None and identity.outcome is _VERIFIED
    )
    if memo:
        key = (id(pipeline), id(security_api), id(identity), via_load_balancer,
               id(asker))
        judged_before = callers.shared(runtime).judged.get(key)
        if judged_before is not None:
            exchange.api, exchange.call = api, judged_before[4]
            outcome = judged_before[3]
            if isinstance(outcome, Refusal):
                _refuse(gateway, exchange, outcome.error,
                        (*verdicts.NO_STORE, *outcome.headers), answer)
                return
            block = judged_before[6]
            if block is not None:  # ``_allow``'s answer to this asker, made when judged
                respond_block = getattr(exchange.responder, "respond_block", None)
                if respond_block is not None:
                    respond_block(200, block, 0, b"OK", b"")
                    exchange.record(gateway, 200, 0)
                    return
            _allow(gateway, exchange, config, asker, pipeline)
            return
    notes = (
        {TIERS: "report"} if asker.tiers  # NGINX spends the bucket: the Tiers stage names it
        else {} if asker.answer
        else {TIERS: "skip"}  # auth_request would turn a 429 into a 500 of its own
    )
    # Made without class calls (3.11 runs an ``__init__`` reached through
    # ``type.__call__`` in a nested interpreter; a NamedTuple's ``__new__`` is a Python
    # call): ``object.__new__`` and ``__init__`` called as a function, by position:
    # request, api, identity, via_load_balancer, principals, mtls_passed, consumer,
    # claims, presented_consumers, notes, passed_schemes, trace.
    headers = _new_object(HeaderView)
    _init_headers(headers, exchange.fields)
    call = _new_object(Call)
    _init_call(
        call,
        _new_tuple(RequestView, (  # the judged request: its method, its path
            exchange.judged_method, path, query, headers, exchange.client_ip,
            exchange.secure,
        )),
        security_api, identity, via_load_balancer, (), False, None, None, (),
        notes, (), exchange.trace,
    )
    # The access log and metrics name the API and caller judged.
    exchange.api, exchange.call = api, call
    outcome = pipeline.judge(call)
    if not isinstance(outcome, Deferred):  # the usual case: answered now, no closure
        if memo:  # kept without the request (its headers may carry anyone's credentials)
            callers.shared(runtime).keep_judged(
                key, (pipeline, security_api, identity, outcome,
                      replace(call, request=_NO_REQUEST, notes={}), asker,
                      None if isinstance(outcome, Refusal)
                      else _memo_block(config, asker, pipeline, call)),
            )
        if isinstance(outcome, Refusal):
            _refuse(gateway, exchange, outcome.error, (*verdicts.NO_STORE, *outcome.headers),
                    answer)
        else:
            _allow(gateway, exchange, config, asker, pipeline)
        return
    _settle(
        gateway, exchange, outcome,
        lambda _o: _allow(gateway, exchange, config, asker, pipeline),
        verdicts.NO_STORE,
        answer,
    )


def _memo_block(
    config: GatewayConfig, asker: verdicts.Asker, pipeline: Pipeline, call: Call
) -> bytes | None:
    """The answer block ``_allow`` sends an ``answer`` asker for this allow of a per-caller
    pipeline (``verdicts.allow_block``), or None when ``_allow`` must run each time (a
    transform that declares headers, a sandbox credential, a cacheable allow, a tier's
    bucket): kept with the judgement so that a decision it repeats goes straight to it."""
    api = call.api
    if (
        not asker.answer or verdicts.declares_headers(pipeline) or call.sandbox or api is None
        or TIER_LIMIT in call.notes or verdicts.api_cacheable(config, api, asker)
    ):
        return None
    return verdicts.allow_block(config, api, call.identity, asker, None, call.consumer)


_new_object = object.__new__
_new_tuple = tuple.__new__
_init_call = Call.__init__
_init_headers = HeaderView.__init__
assert len(RequestView._fields) == 6, "_authz's RequestView lists every field"
assert len(dataclass_fields(Call)) == 13, "_authz's Call lists the fields before sandbox"

#: ``_authz``'s fields of no route (its pipeline None: refused as not found).
_NO_ROUTE: tuple[Any, ...] = (None,) * 9
assert len(Route._fields) == 9, "_authz unpacks every Route field"

#: The methods every judged request names: ``TOKEN``'s regular expression is asked
#: only for others.
_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")
)
_VERIFIED = IdentityOutcome.VERIFIED  # a module constant: an Enum read costs ~800 instructions
#: The request a kept judged Call carries instead of the one it judged (http/_callers.py,
#: ``Shared.judged``): nothing after the pipeline reads it.
_NO_REQUEST = RequestView(b"", b"", None, HeaderView(Fields([])), "", False)


#: The authz settings' header names as bytes, by settings object (one config's).
_AUTHZ_NAMES: dict[int, tuple[AuthzConfig, tuple[bytes, bytes, bytes]]] = {}


def _authz_names(settings: AuthzConfig) -> tuple[bytes, bytes, bytes]:
    """``original_uri_header``, ``original_method_header``, ``original_host_header``,
    lower-case bytes, made once per config rather than encoded per decision."""
    known = _AUTHZ_NAMES.get(id(settings))
    if known is not None and known[0] is settings:
        return known[1]
    names = (
        settings.original_uri_header.lower().encode(),
        settings.original_method_header.lower().encode(),
        settings.original_host_header.lower().encode(),
    )
    # holds settings: its id stays its own
    remember(_AUTHZ_NAMES, id(settings), (settings, names), 64)
    return names


def _refuse_question(gateway: Gateway, exchange: GatewayExchange, error: GatewayError) -> None:
    """A refusal about the authz subrequest itself (not the direct mode's refusal of the
    judged request): plain, never cached; NGINX's gateway path answers the request."""
    answer_error(gateway, exchange, error, verdicts.NO_STORE)


def _refuse(
    gateway: Gateway,
    exchange: GatewayExchange,
    error: GatewayError,
    headers: tuple[tuple[bytes, bytes], ...],
    answer: bool,
) -> None:
    """A refusal; for an authz asker that answers refusals itself, in its form, without
    ``Server``, ``Date`` nor ``Cache-Control`` (``verdicts.NGINX_NO_STORE``): NGINX reads
    only the fields its config names (and the framing) of an answer to its question."""
    if not answer:
        answer_error(gateway, exchange, error, headers)
        return
    error, headers = verdicts.refusal_for_nginx(error, verdicts.for_nginx(headers))
    _send_error(gateway, exchange, error, [(b"Content-Type", errors.JSON_TYPE), *headers])


def _allow(
    gateway: Gateway, exchange: GatewayExchange, config: GatewayConfig,
    asker: verdicts.Asker = verdicts.PLAIN, pipeline: Pipeline | None = None,
) -> None:
    call = exchange.call
    assert call is not None and call.api is not None
    api = call.api
    if asker.answer and pipeline is not None and not call.sandbox:
        # The rendered config's question of a decision per request, its usual allow: no
        # transform declares a header and the allow may not be cached, for every caller
        # of this API (worked out once per config, pipeline, API and asker), so the answer is
        # ``verdicts.allow_block``'s, sent as one block where the front takes one
        # (HTTP/1.1; the Unix socket NGINX asks on).
        key = (id(config), id(pipeline), id(api), id(asker))
        known = _BLOCKABLE.get(key)
        if known is None:
            known = remember(_BLOCKABLE, key, (
                config, pipeline, api, asker, not verdicts.declares_headers(pipeline)
                and not verdicts.api_cacheable(config, api, asker)), 256)
        if known[4]:
            respond_block = getattr(exchange.responder, "respond_block", None)
            if respond_block is not None:
                block = verdicts.allow_block(config, api, call.identity, asker,
                                             call.notes.get(TIER_LIMIT), call.consumer)
                if block is not None:
                    respond_block(200, block, 0, b"OK", b"")
                    exchange.record(gateway, 200, 0)
                    return
    declared: list[tuple[bytes, bytes]] = []
    if asker.answer and pipeline is not None and pipeline.request_transforms:
        made = verdicts.declared_headers(pipeline, call)
        if isinstance(made, GatewayError):  # a plugin's transform failed
            _refuse(gateway, exchange, made, verdicts.NO_STORE, asker.answer)
            return
        declared = made
    if call.sandbox:  # the proxy that asked forwards to its own backend, never a sandbox one
        answer_error(gateway, exchange, errors.forbidden(
            "a sandbox credential goes to the API's sandbox endpoint, which only the gateway "
            "itself can choose: serve this API through the gateway, not the authz endpoint"),
            verdicts.NO_STORE)
        return
    identity = call.identity
    limit = call.notes.get(TIER_LIMIT)
    if asker.answer and not declared and not verdicts.api_cacheable(config, api, asker):
        # The rendered config's question of a decision per request: the answer's fields
        # are the same for every decision by this caller (``verdicts.allow_block``), sent
        # as one block where the front takes one (HTTP/1.1; the Unix socket NGINX asks on).
        respond_block = getattr(exchange.responder, "respond_block", None)
        if respond_block is not None:
            block = verdicts.allow_block(config, api, identity, asker, limit, call.consumer)
            if block is not None:
                respond_block(200, block, 0, b"OK", b"")
                exchange.record(gateway, 200, 0)
                return
    # The rendered config's answer: no Server, Date nor Cache-Control (NGINX reads none
    # of them; ``verdicts.NGINX_NO_STORE``); anyone else's: the direct mode's fields.
    headers: list[tuple[bytes, bytes]] = [] if asker.answer else answer_headers()
    if verdicts.api_cacheable(config, api, asker):
        lifetime = verdicts.allow_lifetime(config, api, identity, asker=asker,
                                           claims=call.claims)
        headers.extend(verdicts.nginx_cache_headers(lifetime) if asker.answer
                       else verdicts.cache_headers(lifetime))
    else:  # 0 whatever the caller: ask every time
        headers.extend(verdicts.NGINX_NO_STORE if asker.answer else verdicts.NO_STORE)
    # The identity headers and Authorization's removal, made once per API and identity.
    headers.extend(verdicts.allow_headers(config, api, identity))
    if declared:
        headers.extend(declared)
    if limit is not None:  # the bucket NGINX spends for this caller
        headers.append((verdicts.TIER, verdicts.tier_value(config, limit)))
    if not asker.answer:  # for hand-written auth_request_set / forwardAuth configs; the
        # rendered config reads none of these, and NGINX parses every header of a cached
        # answer again on each hit
        headers.append((b"x-twistedgw-api", api.label.encode()))
        if identity.leaf is not None and identity.verified:
            headers.append((b"x-client-cert-subject", (identity.subject or "").encode()))
            headers.append((b"x-client-cert-sha256", (identity.leaf_sha256() or "").encode()))
        principals = ",".join(call.principals)
        if principals:
            headers.append((b"x-twistedgw-principal", principals.encode()))
    consumer = call.consumer
    if consumer is not None:  # for auth_request_set / forwardAuth's authResponseHeaders
        headers.append((b"x-consumer-name", consumer.encode()))
    responder = exchange.responder
    responder.start_response(200, headers, 0)
    responder.finish()
    exchange.record(gateway, 200, 0)


#: ``_allow``'s usual answer to an ``answer`` asker, by (config, pipeline, API, asker)
#: ids: whether its allows go as ``verdicts.allow_block``'s block (each entry holds the
#: objects, so no id is reused while it lives); emptied when full.
_BLOCKABLE: dict[tuple[int, int, int, int], tuple[Any, Any, Any, Any, bool]] = {}


def _settle(
    gateway: Gateway,
    exchange: GatewayExchange,
    outcome: Outcome | Deferred[Outcome],
    proceed: Callable[[HeaderEdit], None],
    refusal_headers: tuple[tuple[bytes, bytes], ...] = (),
    answer: bool = False,
) -> None:
    """Answer a pipeline's outcome now, or when its Deferred fires (if the client stayed);
    ``answer``: refusals in the form of an authz asker that answers them itself."""
    if not isinstance(outcome, Deferred):
        if isinstance(outcome, Refusal):
            _refuse(gateway, exchange, outcome.error, (*refusal_headers, *outcome.headers),
                    answer)
        else:
            proceed(outcome)
        return
    responder = exchange.responder

    def resume(result: Outcome) -> None:
        if responder.gone:  # the client left while a stage was waiting
            return
        if isinstance(result, Refusal):
            _refuse(gateway, exchange, result.error, (*refusal_headers, *result.headers),
                    answer)
        else:
            proceed(result)

    def crashed(failure: Failure) -> None:
        log.failure("request pipeline failed", failure)
        if not responder.gone and not responder.started:
            answer_error(gateway, exchange, errors.internal_error(), refusal_headers)

    outcome.addCallback(resume).addErrback(crashed)


__all__ = [
    "Gateway",
    "GatewayExchange",
    "GatewayResource",
    "RequestRecord",
    "Routed",
    "answer_error",
    "route_parsed",
    "route_request",
    "serve_exchange",
]
