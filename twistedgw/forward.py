"""The HTTP client side of the gateway: relay one authorised request to its backend.

One `Forwarder` per process owns a persistent connection pool and an `Agent`.
`Forwarder.forward` is called from `Resource.render` (which then returns
NOT_DONE_YET) and takes over the request until it is finished or aborted:

* request headers are cleaned (hop-by-hop, Connection-named, Content-Length,
  Host, the caller's `remove_headers`, client-sent X-Forwarded-*), the gateway's
  own X-Forwarded-For/-Proto/-Host and the caller's `add_headers` are set;
* the spooled request body (`request.content`) is streamed, never read whole;
* the response is relayed with `deliverBody`, the backend transport registered
  as the request's producer so a slow client pauses the backend socket instead
  of the gateway buffering the body;
* failures before the response headers become WSO2-style JSON errors (503 for
  "could not reach the backend", 504 for "no response in time"); failures after
  the headers abort the client connection, so a truncated body can never look
  complete; a client that goes away cancels the backend request.

`forward` never raises; what happened is reported once through `on_done`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web._newclient import (
    HTTP11ClientProtocol,
    HTTPClientParser,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _ensureValidURI,
)
from twisted.web._newclient import Request as _ClientRequest
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    _StandardEndpointFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from twistedgw import errors

__all__ = ["HOP_BY_HOP", "ForwardResult", "ForwardSettings", "Forwarder"]

_log = Logger(namespace="twistedgw.forward")

#: Headers that describe one connection, not the message (RFC 9110 7.6.1), plus
#: the proxy-credential pair, which is meant for the gateway, not the backend.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Request headers the gateway always sets itself or must not pass on:
# Content-Length comes from the body producer, Host from the target URL,
# Expect was already answered by twisted.web, and the forwarding headers are
# the edge's to write (a client could otherwise claim any address or scheme).
_REQUEST_DROP: frozenset[bytes] = frozenset(
    {
        b"content-length",
        b"host",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    }
)

# Methods Twisted's pool retries once on a stale keep-alive connection, provided
# there is no body producer; POST and PUT get "Content-Length: 0" without one.
_NO_PRODUCER_WHEN_EMPTY: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE", b"POST", b"PUT"}
)

_READ_SIZE = 64 * 1024

# Status recorded when the client left before anything was sent (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class ForwardSettings:
    connect_timeout: float = 5.0
    backend_timeout: float = 60.0  # time to the backend's response headers, and max idle gap
    max_persistent_per_host: int = 64
    cached_connection_timeout: float = 60.0


@dataclass(frozen=True)
class ForwardResult:
    """What happened to one forwarded request, for the access log and metrics.

    `status` is the status sent to the client (499 if the client left before
    any response was sent). `error_kind` is None on success, else one of
    "refused" (could not connect: refused, DNS, unreachable), "timeout"
    (connect timeout -> 503, no headers in time -> 504, idle body -> abort),
    "reset" (backend closed or broke the connection), "client_gone" and
    "other".
    """

    status: int
    bytes_sent: int
    error_kind: str | None


# -- header hygiene ----------------------------------------------------------


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lower-case header names listed in Connection header values (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def _end_to_end(headers: Headers, drop: Collection[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """Headers minus hop-by-hop, Connection-named and `drop` (lower-case) names."""
    named = connection_tokens(headers.getRawHeaders(b"connection", []))
    kept = []
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop:
            continue
        kept.append((name, list(values)))
    return kept


def build_request_headers(
    request: server.Request,
    *,
    add_headers: Sequence[tuple[bytes, bytes]] = (),
    remove_headers: Collection[bytes] = (),
) -> Headers:
    """The headers to send to the backend for `request`.

    `add_headers` replace any client-sent header of the same name: a client
    must not be able to pre-seed a header the gateway vouches for.
    """
    added = {name.lower() for name, _ in add_headers}
    drop = _REQUEST_DROP | {name.lower() for name in remove_headers} | added
    out = Headers()
    for name, values in _end_to_end(request.requestHeaders, drop):
        out.setRawHeaders(name, values)

    client_host = _client_host(request.getClientAddress())
    if client_host is not None:
        out.setRawHeaders(b"X-Forwarded-For", [client_host])
    out.setRawHeaders(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
    original_host = request.requestHeaders.getRawHeaders(b"host")
    if original_host:
        out.setRawHeaders(b"X-Forwarded-Host", [original_host[0]])

    for name, value in add_headers:
        out.addRawHeader(name, value)
    return out


def _client_host(address: IAddress) -> bytes | None:
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host.encode("ascii", "replace")
    if isinstance(host, bytes):
        return host
    return None


def copy_response_headers(
    response: IResponse, request: server.Request, connection_named: Collection[bytes]
) -> None:
    """Put the backend's end-to-end headers on the client response, repeats kept.

    `setRawHeaders` replaces twisted.web's own Server/Date when the backend
    sent them, so the client sees the backend's.
    """
    drop = set(connection_named)
    if request.method != b"HEAD":
        drop.add(b"content-length")  # set from response.length below
    for name, values in _end_to_end(response.headers, drop):
        request.responseHeaders.setRawHeaders(name, values)
    if (
        request.method != b"HEAD"
        and response.code not in NO_BODY_CODES
        and response.code >= 200
        and response.length is not UNKNOWN_LENGTH
    ):
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % (response.length,)])


# -- the Connection header of responses --------------------------------------
#
# Twisted files a response's Connection header under the parser's private
# `connHeaders`, out of reach of `Response.headers`, so the headers it names
# could not be stripped. This protocol remembers it per response. If Twisted's
# internals change, we merely stop stripping Connection-named response headers.

_response_connection: weakref.WeakKeyDictionary[object, frozenset[bytes]] = (
    weakref.WeakKeyDictionary()
)


def _remember_connection(response: IResponse, parser: HTTPClientParser) -> IResponse:
    values = getattr(parser, "connHeaders", Headers()).getRawHeaders(b"connection", [])
    _response_connection[response] = connection_tokens(values)
    return response


class _ClientProtocol(HTTP11ClientProtocol):
    def request(self, request: _ClientRequest) -> Deferred[IResponse]:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None and d is getattr(self, "_finishedRequest", None):
            d.addCallback(_remember_connection, parser)
        return d


class _ClientFactory(_HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


class _Pool(HTTPConnectionPool):
    _factory = _ClientFactory


class _CachingAgent(Agent):
    """An Agent that builds each backend's endpoint once, not per request.

    Twisted's ``Agent.request`` builds a new endpoint per request, which runs
    the host name through IDNA encoding each time: about 8% of the gateway's CPU
    per keep-alive request in the scenario-1 profile (bench/README.md). Endpoints
    hold no per-connection state, so one per (scheme, host, port, TLS policy) is reused.

    With ``policy_for``, https targets get their TLS policy from it (per API,
    and swapped on reload) and the policy joins the endpoint *and* the pool key:
    a connection made with one TLS setting (trust, client certificate, name) is
    never reused for a target that asks for another.
    """

    _MAX_ENDPOINTS = 1024

    def __init__(
        self,
        reactor: Any,
        *,
        policy_for: Callable[[bytes], IPolicyForHTTPS] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(reactor, **kwargs)
        self._policy_for = policy_for
        self._connect_timeout = kwargs.get("connectTimeout")
        self._endpoints: dict[tuple[bytes, bytes, int, IPolicyForHTTPS | None], Any] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: Any = None,
    ) -> Deferred[IResponse]:
        # Agent.request, with the TLS policy in the endpoint and pool key.
        policy = None
        if self._policy_for is not None and uri.startswith(b"https://"):
            policy = self._policy_for(uri)
        parsed = URI.fromBytes(_ensureValidURI(uri.strip()))
        key = (parsed.scheme, parsed.host, parsed.port, policy)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            factory = self._endpointFactory
            if policy is not None:
                factory = _StandardEndpointFactory(
                    self._reactor, policy, self._connect_timeout, None
                )
            try:
                endpoint = factory.endpointForURI(parsed)
            except SchemeNotSupported:
                return fail()
            if len(self._endpoints) >= self._MAX_ENDPOINTS:
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return self._requestWithEndpoint(
            key,  # type: ignore[arg-type]  # the pool takes any hashable key
            endpoint,
            method,
            parsed,
            headers,
            bodyProducer,
            parsed.originForm,
        )


# -- forwarding --------------------------------------------------------------


class Forwarder:
    """Relays requests to backends over one persistent, per-host connection pool."""

    def __init__(
        self,
        reactor: Any,
        settings: ForwardSettings = ForwardSettings(),
        *,
        tls_policy: IPolicyForHTTPS | None = None,
        tls_policy_for: Callable[[bytes], IPolicyForHTTPS] | None = None,
    ) -> None:
        """``tls_policy_for(target)`` picks the TLS policy per https request (per API,
        current config); without it every https backend gets ``tls_policy``."""
        self._reactor = reactor
        self._settings = settings
        self._pool = _Pool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.max_persistent_per_host
        # Twisted declares it an int but only hands it to callLater.
        self._pool.cachedConnectionTimeout = settings.cached_connection_timeout  # type: ignore[assignment]
        self._agent = _CachingAgent(
            reactor,
            contextFactory=tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS(),
            connectTimeout=settings.connect_timeout,
            pool=self._pool,
            policy_for=tls_policy_for,
        )
        # Our own cooperator so body uploads run on the reactor we were given.
        self._cooperator = Cooperator(scheduler=lambda f: reactor.callLater(0, f))

    def forward(
        self,
        request: server.Request,
        target: bytes,
        *,
        add_headers: Sequence[tuple[bytes, bytes]] = (),
        remove_headers: Collection[bytes] = (),
        on_done: Callable[[ForwardResult], None] | None = None,
        backend_timeout: float | None = None,
    ) -> None:
        """Relay `request` to the absolute URL `target`; the request is ours from now on.

        `backend_timeout` overrides the forwarder's for this request (an API's own
        `backend_timeout`), since one slow API must not set the limit for all.
        """
        settings = self._settings
        if backend_timeout is not None:
            settings = replace(settings, backend_timeout=backend_timeout)
        exchange = _Exchange(self, request, target, on_done, settings)
        try:
            exchange.start(add_headers, remove_headers)
        except Exception:
            _log.failure("forwarding to {backend} failed", backend=_describe(target))
            exchange.fail_internal()

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections (in-flight requests are not touched)."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def _describe(target: bytes) -> str:
    """scheme://host:port of a target, for logs: paths and queries may carry secrets."""
    try:
        parts = urlsplit(target.decode("ascii", "replace"))
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    except ValueError:
        return "<unparsable target>"


class _Exchange:
    """The state of one request/response relay: waiting -> streaming -> done."""

    def __init__(
        self,
        forwarder: Forwarder,
        request: server.Request,
        target: bytes,
        on_done: Callable[[ForwardResult], None] | None,
        settings: ForwardSettings | None = None,
    ) -> None:
        self._fw = forwarder
        self._reactor = forwarder._reactor
        self._settings = settings if settings is not None else forwarder._settings
        self._request = request
        self._target = target
        self._on_done = on_done
        self._phase = "waiting"
        self._client_gone = False
        self._timed_out = False
        self._pending: Deferred[IResponse] | None = None
        self._timer: IDelayedCall | None = None
        self._body: FileBodyProducer | None = None
        self._relay: _BodyRelay | None = None
        self._status = 0

    @property
    def _backend(self) -> str:
        """scheme://host:port, for log lines only (computed when one is written)."""
        return _describe(self._target)

    # -- start -----------------------------------------------------------

    def start(
        self, add_headers: Sequence[tuple[bytes, bytes]], remove_headers: Collection[bytes]
    ) -> None:
        request = self._request
        headers = build_request_headers(
            request, add_headers=add_headers, remove_headers=remove_headers
        )
        self._body = self._body_producer(request)
        request.notifyFinish().addBoth(self._client_finished)
        self._timer = self._reactor.callLater(
            self._settings.backend_timeout, self._headers_timed_out
        )
        d = self._fw._agent.request(request.method, self._target, headers, self._body)
        self._pending = d
        d.addCallbacks(self._got_response, self._request_failed)
        d.addErrback(self._bug)

    def _body_producer(self, request: server.Request) -> FileBodyProducer | None:
        content = request.content
        if content is None:
            return None
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size == 0 and request.method in _NO_PRODUCER_WHEN_EMPTY:
            return None
        return FileBodyProducer(content, cooperator=self._fw._cooperator, readSize=_READ_SIZE)

    # -- before the response headers ------------------------------------

    def _headers_timed_out(self) -> None:
        self._timer = None
        if self._pending is not None and self._phase == "waiting":
            self._timed_out = True
            self._pending.cancel()

    def _request_failed(self, failure: Failure) -> None:
        self._pending = None
        self._cancel_timer()
        self._stop_body()
        if self._phase != "waiting":
            return
        if self._client_gone:
            self._finish_result(CLIENT_CLOSED_REQUEST, "client_gone")
            return
        kind, err = self._classify(failure)
        _log.warn(
            "backend {backend} for {method} failed before responding ({kind}): {reason}",
            backend=self._backend,
            method=self._request.method.decode("ascii", "replace"),
            kind=kind,
            reason=_reason(failure),
        )
        self._send_error(err, kind)

    def _classify(self, failure: Failure) -> tuple[str, errors.GatewayError]:
        secs = self._settings
        if self._timed_out:
            return "timeout", errors.backend_timeout(
                f"backend did not respond within {secs.backend_timeout:g} seconds"
            )
        if failure.check(ierror.TimeoutError):
            return "timeout", errors.backend_unavailable(
                f"could not connect to the backend within {secs.connect_timeout:g} seconds"
            )
        if failure.check(ierror.DNSLookupError):
            return "refused", errors.backend_unavailable("backend host name does not resolve")
        if failure.check(ierror.ConnectError):
            return "refused", errors.backend_unavailable("could not connect to the backend")
        if failure.check(RequestGenerationFailed):
            return "other", errors.internal_error()
        if failure.check(ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed):
            if _has_reason(failure, SSL.Error):
                return "other", errors.backend_unavailable("TLS with the backend failed")
            if isinstance(failure.value, ResponseNeverReceived | RequestTransmissionFailed):
                return "reset", errors.backend_unavailable(
                    "backend closed the connection without responding"
                )
            return "other", errors.backend_unavailable("backend sent an invalid response")
        if failure.check(SSL.Error):
            return "other", errors.backend_unavailable("TLS with the backend failed")
        return "other", errors.internal_error()

    def _send_error(self, err: errors.GatewayError, kind: str) -> None:
        request = self._request
        body = err.body()
        if not request.startedWriting:
            request.setResponseCode(err.status)
            request.responseHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
            request.write(body)
            request.finish()
            sent = 0 if request.method == b"HEAD" else len(body)
            self._finish_result(err.status, kind, sent)
        else:  # cannot happen before headers; never send a second status line
            _abort_client(request)
            self._finish_result(request.code, kind)

    def fail_internal(self) -> None:
        """Answer 500 after a bug in forward() itself, if nothing was sent yet."""
        self._cancel_timer()
        if self._phase == "done":
            return
        if self._pending is not None:
            self._phase = "done"  # ignore whatever the request Deferred does next
            self._pending.cancel()
        try:
            if self._client_gone or getattr(self._request, "_disconnected", False):
                self._finish_result(CLIENT_CLOSED_REQUEST, "client_gone")
            elif self._request.startedWriting:
                _abort_client(self._request)
                self._finish_result(self._request.code, "other")
            else:
                self._phase = "waiting"
                self._send_error(errors.internal_error(), "other")
        except Exception:
            _log.failure("could not answer after a forwarding failure")
            self._finish_result(500, "other")

    def _bug(self, failure: Failure) -> None:
        _log.failure("bug while forwarding to {backend}", failure, backend=self._backend)
        self.fail_internal()

    # -- the response ----------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._pending = None
        self._cancel_timer()
        if self._phase != "waiting":
            return
        request = self._request
        connection_named = _response_connection.pop(response, frozenset())
        if self._client_gone:  # cancellation came too late
            self._discard(response)
            self._finish_result(CLIENT_CLOSED_REQUEST, "client_gone")
            return
        try:
            request.setResponseCode(response.code, response.phrase)
            copy_response_headers(response, request, connection_named)
            request.defaultContentType = None  # an absent Content-Type stays absent
        except Exception:
            _log.failure("cannot relay the response of {backend}", backend=self._backend)
            self._discard(response)
            self._send_error(errors.internal_error(), "other")
            return
        self._phase = "streaming"
        self._status = response.code
        self._relay = _BodyRelay(self)
        response.deliverBody(self._relay)

    def _discard(self, response: IResponse) -> None:
        """Take the body nobody will read and close its connection (it can't be reused)."""
        relay = _BodyRelay(self, discard=True)
        response.deliverBody(relay)
        relay.stop_backend()

    def body_done(self, reason: Failure, bytes_sent: int, idle_timeout: bool) -> None:
        """The backend body ended: finish the client response, or abort it if truncated."""
        self._stop_body()
        if self._phase == "done":
            return
        request = self._request
        if self._client_gone:
            self._finish_result(self._status, "client_gone", bytes_sent)
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss) and not idle_timeout:
            request.finish()
            self._finish_result(self._status, None, bytes_sent)
            return
        kind = "timeout" if idle_timeout else "reset"
        _log.warn(
            "backend {backend} broke off the response after {n} body bytes ({kind}): {reason};"
            " aborting the client connection",
            backend=self._backend,
            n=bytes_sent,
            kind=kind,
            reason=_reason(reason),
        )
        _abort_client(request)
        self._finish_result(self._status, kind, bytes_sent)

    # -- the client ------------------------------------------------------

    def _client_finished(self, result: Failure | None) -> None:
        if not isinstance(result, Failure) or self._phase == "done":
            return
        self._client_gone = True
        if self._phase == "waiting":
            self._stop_body()
            if self._pending is not None:
                self._pending.cancel()
        elif self._relay is not None:
            self._relay.stop_backend()

    # -- helpers ---------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _stop_body(self) -> None:
        """Stop reading request.content: twisted.web closes it when the request ends."""
        body, self._body = self._body, None
        if body is not None:
            try:
                body.stopProducing()
            except AttributeError:  # never started: no connection was made
                pass

    def _finish_result(self, status: int, kind: str | None, bytes_sent: int = 0) -> None:
        if self._phase == "done" and self._on_done is None:
            return
        self._phase = "done"
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            try:
                on_done(ForwardResult(status, bytes_sent, kind))
            except Exception:
                _log.failure("on_done callback failed")


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """Copies the backend body to the client; the client's pace drives the backend socket.

    Registered on the request as a streaming producer: when the client's send
    buffer fills twisted.web pauses us and we pause the backend transport. The
    idle timer (backend_timeout) only runs while we are not paused, so a slow
    client is never blamed on the backend.
    """

    def __init__(self, exchange: _Exchange, *, discard: bool = False) -> None:
        self._exchange = exchange
        self._discard = discard
        self._paused = False
        self._done = False
        self._idle: IDelayedCall | None = None
        self._idle_timeout = False
        self.bytes_sent = 0

    def connectionMade(self) -> None:
        if self._discard:
            return
        request = self._exchange._request
        request.registerProducer(self, True)
        # A channel whose send buffer is already full only tells producers about
        # the next transition; start paused rather than read into a full buffer.
        if getattr(request.channel, "_waitingForTransport", False):
            self.pauseProducing()
        else:
            self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._discard or self._done:
            return
        self._arm()
        self.bytes_sent += len(data)
        self._exchange._request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done = True
        self._disarm()
        if self._discard:
            return
        self._exchange.body_done(reason, self.bytes_sent, self._idle_timeout)

    @property
    def _backend(self) -> IPushProducer | None:
        """The backend transport as deliverBody hands it over: a pausable proxy."""
        return IPushProducer(self.transport, None)

    def stop_backend(self) -> None:
        """Close the backend connection; the parser then reports the body as failed."""
        self._disarm()
        backend = self._backend
        if backend is not None:
            backend.stopProducing()

    # IPushProducer, driven by the client connection

    def pauseProducing(self) -> None:
        self._paused = True
        self._disarm()
        backend = self._backend
        if backend is not None and not self._done:
            backend.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        backend = self._backend
        if backend is not None and not self._done:
            self._arm()
            backend.resumeProducing()

    def stopProducing(self) -> None:
        if not self._done:
            self.stop_backend()

    # idle timer

    def _arm(self) -> None:
        if self._done or self._paused:
            return
        timeout = self._exchange._settings.backend_timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self._exchange._reactor.callLater(timeout, self._idle_fired)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_fired(self) -> None:
        self._idle = None
        self._idle_timeout = True
        self.stop_backend()


def _abort_client(request: server.Request) -> None:
    """Drop the client connection so a partial response can't pass as complete."""
    channel = request.channel
    if channel is None:
        return
    try:
        if request.producer is not None:
            request.unregisterProducer()
        stream_abort = getattr(channel, "abortConnection", None)  # an HTTP/2 stream
        if stream_abort is not None:
            stream_abort()
            return
        transport = getattr(channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
        else:
            channel.loseConnection()
    except Exception:
        _log.failure("could not abort the client connection")


def _has_reason(failure: Failure, exc_type: type[BaseException]) -> bool:
    reasons = getattr(failure.value, "reasons", None) or []
    return any(isinstance(r, Failure) and r.check(exc_type) for r in reasons)


def _reason(failure: Failure) -> str:
    """A short description of a failure, unwrapping Twisted's wrapper exceptions."""
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        inner = ", ".join(
            type(r.value).__name__ + (f": {r.value}" if str(r.value) else "")
            for r in reasons
            if isinstance(r, Failure)
        )
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, CancelledError):
        return "cancelled"
    text = str(value)
    return type(value).__name__ + (f": {text}" if text else "")
