"""The gateway's HTTP face: one leaf resource that routes, authenticates and forwards.

A request travels: normalise the path -> route to an API -> resolve the caller's
certificate (``callers``) -> run the API's policy -> forward. Every refusal is a
``GatewayError`` rendered as WSO2-compatible JSON; nothing a client sends can
make this raise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedgw import callers, errors, idforward, tiers, verdicts
from twistedgw.callers import Caller
from twistedgw.config import ApiConfig, Mode
from twistedgw.errors import GatewayError
from twistedgw.forward import Forwarder, ForwardResult
from twistedgw.identity import ClientIdentity, failed
from twistedgw.policy import API_KEY_HEADER, AuthContext, Deny
from twistedgw.routing import BadPath, normalise, split_target
from twistedgw.runtime import Runtime

log = Logger()


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, for the access log and metrics."""

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


Observer = Callable[[RequestRecord], None]


@dataclass
class Gateway:
    """The live state: the current ``Runtime`` (swapped on reload) and what outlives it."""

    runtime: Runtime
    forwarder: Forwarder
    observers: list[Observer] = field(default_factory=list)
    throttle: tiers.TierThrottle = field(default_factory=tiers.TierThrottle)  # survives reload

    def notify(self, record: RequestRecord) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.failure("request observer failed")


def _apply_verdict(caller: Caller, reason: str | None) -> Caller:
    if reason is None:
        return caller
    identity = caller.identity
    return dataclasses.replace(caller, identity=failed(identity.source, reason, identity.chain))


def with_revocation(
    request: Request,
    runtime: Runtime,
    caller: Caller,
    api: ApiConfig,
    then: Callable[[Caller], bytes | int],
) -> bytes | int:
    """Run ``then`` with the caller's certificate checked for revocation.

    The check applies to handshake and header certificates alike, after chain
    verification. It is synchronous (no Deferred) when revocation is off, the
    API does not use mTLS, or the answer is known without I/O (CRLs, cached
    OCSP); only an OCSP query suspends the request.
    """
    checker = runtime.revocation
    identity = caller.identity
    if checker is None or not identity.verified or api.mutual_ssl is Mode.DISABLED:
        return then(caller)
    verdict = checker.check(identity.chain)
    if not isinstance(verdict, Deferred):
        return then(_apply_verdict(caller, verdict))
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def resume(reason: str | None) -> None:
        if gone:  # the client left while the responder was asked
            return
        body = then(_apply_verdict(caller, reason))
        if body is not NOT_DONE_YET:
            assert isinstance(body, bytes)
            request.write(body)
            request.finish()

    def crashed(failure: Failure) -> None:
        log.failure("revocation check failed", failure)
        if not gone:
            request.write(write_error(request, errors.internal_error()))
            request.finish()

    verdict.addCallback(resume).addErrback(crashed)
    return NOT_DONE_YET


def write_error(request: Request, error: GatewayError) -> bytes:
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    body = error.body()
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    return b"" if request.method == b"HEAD" else body


class GatewayResource(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        started = time.time()
        runtime = self.gateway.runtime  # one consistent snapshot for this request
        raw_path, query = split_target(request.uri)
        api: ApiConfig | None = None
        identity: ClientIdentity | None = None

        def finish(status: int, sent: int, kind: str | None = None) -> None:
            self.gateway.notify(
                RequestRecord(
                    started=started,
                    duration=time.time() - started,
                    client=callers.client_ip(request),
                    method=request.method.decode("latin-1"),
                    path=raw_path.decode("latin-1"),
                    api=api,
                    status=status,
                    bytes_sent=sent,
                    identity=identity,
                    error_kind=kind,
                )
            )

        def refuse(error: GatewayError) -> bytes:
            body = write_error(request, error)
            finish(error.status, len(body))
            return body

        try:
            path = normalise(raw_path)
        except BadPath as e:
            return refuse(errors.bad_request(str(e)))
        authz = runtime.config.authz
        if authz is not None and path == authz.path.encode():

            def judged(which: ApiConfig, caller: Caller) -> None:
                nonlocal api, identity
                api, identity = which, caller.identity

            return self._authz(request, runtime, refuse, finish, judged)
        route = runtime.router.route(path, query)
        if route is None:
            return refuse(errors.not_found(path.decode("latin-1")))
        api = route.api
        limit = api.max_body_bytes or runtime.config.limits.max_body_bytes
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return refuse(errors.payload_too_large(limit))
        # A chunked body has no Content-Length: measure what twisted.web spooled.
        if request.content is not None and request.content.seek(0, 2) > limit:
            return refuse(errors.payload_too_large(limit))
        target = route.backend_target
        identity_settings = runtime.config.identity
        lb = runtime.config.mutual_ssl

        def authorise(caller: Caller) -> bytes | int:
            nonlocal identity
            identity = caller.identity
            assert api is not None
            decision = runtime.policy.decide(AuthContext(identity, request.requestHeaders), api)
            if isinstance(decision, Deny):
                return refuse(decision.error)
            mtls_passed = idforward.mtls_passed(identity, api)
            wait = self.gateway.throttle.take(api, identity) if mtls_passed else None
            if wait is not None:
                request.responseHeaders.setRawHeaders(b"retry-after", [tiers.retry_after(wait)])
                return refuse(errors.throttled("the certificate's tier limit was exceeded"))

            remove = {API_KEY_HEADER}
            header = lb.certificate_header
            chain_header = lb.chain_header
            if header is not None and (
                caller.ignored_header
                or not caller.via_load_balancer
                or not lb.forward_client_certificate_header
            ):
                remove.add(header.lower().encode())
                if chain_header is not None:
                    remove.add(chain_header.lower().encode())
            # Identity headers are never the caller's to send; only a trusted load
            # balancer's own certificate header may pass, when explicitly forwarded.
            kept = {h.lower().encode() for h in (header, chain_header) if h} - remove
            remove |= idforward.stripped(identity_settings) - kept
            add = idforward.headers_for(identity_settings, identity) if mtls_passed else []

            def done(result: ForwardResult) -> None:
                finish(result.status, result.bytes_sent, result.error_kind)

            self.gateway.forwarder.forward(
                request,
                target,
                add_headers=add,
                remove_headers=remove,
                on_done=done,
                backend_timeout=api.backend_timeout,
            )
            return NOT_DONE_YET

        return with_revocation(request, runtime, callers.resolve(request, runtime), api, authorise)

    def _authz(
        self,
        request: Request,
        runtime: Runtime,
        refuse: Callable[[GatewayError], bytes],
        finish: Callable[[int, int], None],
        judged: Callable[[ApiConfig, Caller], None],
    ) -> bytes | int:
        """Judge the request that ``original_uri_header`` names, without forwarding it.

        For NGINX ``auth_request``, Envoy ``ext_authz`` and Traefik ``forwardAuth``.
        A path that names no API, or an unsafe one, is refused with 403, not
        404/400: ``auth_request`` understands only 2xx, 401 and 403 and would turn
        anything else into a 500 of its own.
        """
        assert runtime.config.authz is not None
        settings = runtime.config.authz
        for name, value in verdicts.NO_STORE:  # refusals are never cached
            request.responseHeaders.setRawHeaders(name, [value])
        original = request.getHeader(settings.original_uri_header.encode())
        if original is None:
            return refuse(
                errors.bad_request(f"the {settings.original_uri_header} header is missing")
            )
        raw_path, query = split_target(original)
        try:
            path = normalise(raw_path)
        except BadPath as e:
            return refuse(errors.forbidden(str(e)))
        route = runtime.router.route(path, query)
        if route is None:
            return refuse(errors.forbidden(errors.not_found(path.decode("latin-1")).description))
        api = route.api

        def judge(caller: Caller) -> bytes:
            judged(api, caller)  # the access log and metrics name the API and caller judged
            decision = runtime.policy.decide(
                AuthContext(caller.identity, request.requestHeaders), api
            )
            if isinstance(decision, Deny):
                return refuse(decision.error)
            request.setResponseCode(200)
            lifetime = verdicts.allow_lifetime(runtime.config, api, caller.identity)
            for name, value in (
                *verdicts.cache_headers(lifetime),
                *verdicts.identity_answer_headers(runtime.config, api, caller.identity),
            ):
                request.responseHeaders.setRawHeaders(name, [value])
            request.responseHeaders.setRawHeaders(b"x-twistedgw-api", [api.label.encode()])
            leaf = caller.identity.leaf
            if leaf is not None and caller.identity.verified:
                request.responseHeaders.setRawHeaders(
                    b"x-client-cert-subject", [leaf.subject.rfc4514_string().encode()]
                )
                request.responseHeaders.setRawHeaders(
                    b"x-client-cert-sha256", [(caller.identity.leaf_sha256() or "").encode()]
                )
            principals = ",".join(decision.principals)
            if principals:
                request.responseHeaders.setRawHeaders(
                    b"x-twistedgw-principal", [principals.encode()]
                )
            request.responseHeaders.setRawHeaders(b"content-length", [b"0"])
            finish(200, 0)
            return b""

        return with_revocation(request, runtime, callers.resolve(request, runtime), api, judge)
