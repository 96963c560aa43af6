"""The gateway as a Twisted service: listeners, reload and graceful stop.

``make_service`` is the one way in, used by ``twistedgw run``, the twistd
plugin and applications that embed the gateway, so all three behave the same.
Nothing here is global: two gateways can share a reactor.

With ``workers = 1`` everything runs in this process. With more, ``make_service``
returns a ``workers.Supervisor`` whose worker processes each run a
``GatewayService`` on sockets the parent passed down (``inherited``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, fdesc, threads
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import Site
from zope.interface import implementer

from twistedgw import _sdlisten as sdlisten
from twistedgw import _unixsockets as unixsockets
from twistedgw.app import _runtime as runtime
from twistedgw.app._admin import AdminService
from twistedgw.app._drain import ConnectionTracker
from twistedgw.app._observe import AccessLog, Metrics
from twistedgw.config import (
    ConfigError,
    GatewayConfig,
    Listener,
    describe_security,
    route_rows,
)
from twistedgw.http import Gateway, GatewayResource, H2Factory, serve_http1
from twistedgw.pipeline import Shared
from twistedgw.tls import BackendPolicy, HandshakeRecords, ServerTLSFactory, describe_certificate
from twistedgw.tracing import Tracer, TracingObserver, start_tracer
from twistedgw.upstream import Forwarder, ForwardSettings

log = Logger()

_SYSTEM_TRUST = BackendPolicy()


def listener_endpoint(reactor: Any, listener: Listener) -> Any:
    """The server endpoint for a listener: its endpoint string, or host and port."""
    if listener.endpoint is not None:
        if listener.endpoint.startswith("systemd:"):
            # Ours, not Twisted's: socket names are optional (see sdlisten).
            try:
                return sdlisten.endpoint(reactor, listener.endpoint)
            except ValueError as e:
                raise ValueError(f"endpoint {listener.endpoint!r}: {e}") from None
        try:
            return endpoints.serverFromString(reactor, listener.endpoint)
        except (IndexError, KeyError) as e:
            raise ValueError(f"endpoint {listener.endpoint!r}: {e!r}") from None
    return (
        endpoints.TCP4ServerEndpoint(reactor, listener.port, interface=listener.host)
        if ":" not in listener.host
        else endpoints.TCP6ServerEndpoint(reactor, listener.port, interface=listener.host)
    )


def listen(
    reactor: Any, listener: Listener, factory: Any, *, trust_unix: bool = False
) -> defer.Deferred[IListeningPort]:
    """Listen as ``listener`` says; any failure arrives as a failed Deferred.

    Unix sockets are twistedgw's own business (``_unixsockets``): one it creates gets
    mode 0660 and the listener's group, and one it inherits keeps systemd's mode (Twisted
    would make either world-writable). ``trust_unix`` (``trusted_proxies`` has "unix"):
    whoever connects is believed about the caller's certificate, so a socket that lets
    other local users connect, or sits where they could replace it, is refused.
    """
    try:
        unix = listener.unix
        if unix is not None:
            return defer.succeed(_listen_unix(reactor, listener, unix, factory, trust_unix))
        if listener.endpoint is not None and listener.endpoint.startswith("systemd:"):
            try:
                family, fd = sdlisten.descriptor(listener.endpoint)
            except ValueError as e:
                raise ValueError(f"endpoint {listener.endpoint!r}: {e}") from None
            if family == socket.AF_UNIX:
                return defer.succeed(_adopt_unix(reactor, listener, fd, factory, trust_unix))
        d: defer.Deferred[IListeningPort] = listener_endpoint(reactor, listener).listen(factory)
    except Exception:
        return defer.fail()
    return d


class UnixSocketRefused(Exception):
    """A Unix socket whose peers would be trusted lets other local users connect."""


def _gid(listener: Listener) -> int | None:
    return unixsockets.group_id(listener.group) if listener.group is not None else None


def _listen_unix(
    reactor: Any,
    listener: Listener,
    unix: unixsockets.UnixEndpoint,
    factory: Any,
    trust_unix: bool,
) -> IListeningPort:
    """Create the socket (mode 0660, the listener's group) and listen on it."""
    where = listener.endpoint
    if unix.abstract and trust_unix:  # the config refuses it too; never listen on one
        raise UnixSocketRefused(f"{where}: {unixsockets.exposure(unix.address)}")
    gid = _gid(listener)
    try:
        sock, lock = unixsockets.create(unix, gid)
    except (OSError, ValueError) as e:
        raise UnixSocketRefused(f"{where}: {e}") from None
    with sock:
        port = unixsockets.adopt(reactor, sock.fileno(), factory, owns_file=True, lock=lock)
    if trust_unix:
        problem = unixsockets.exposure(unix.address, gid)
        if problem is not None:
            port.stopListening()
            raise UnixSocketRefused(_refused(where, problem))
    result: IListeningPort = port
    return result


def _adopt_unix(
    reactor: Any, listener: Listener, fd: int, factory: Any, trust_unix: bool
) -> IListeningPort:
    """Listen on a Unix socket systemd passed, leaving its file as systemd made it."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        address = sock.getsockname()
    if trust_unix:
        problem = unixsockets.exposure(address, _gid(listener))
        if problem is not None:
            raise UnixSocketRefused(_refused(f"{listener.endpoint} ({address!r})", problem))
    # As Twisted's AdoptedStreamServerEndpoint: non-blocking, and the original closed.
    fdesc.setNonBlocking(fd)
    port: IListeningPort = unixsockets.adopt(reactor, fd, factory, owns_file=False)
    os.close(fd)
    return port


def _refused(where: str | None, problem: str) -> str:
    return (
        f"{where}: refused to listen: {problem} (mutual_ssl.trusted_proxies trusts whoever "
        "connects to this socket to tell the caller's certificate)"
    )


def gather_listening(
    listening: Sequence[defer.Deferred[IListeningPort]], admin: AdminService | None
) -> defer.Deferred[list[IListeningPort]]:
    """Start ``admin`` beside the listeners' ``listening``; fire with the listeners' ports.

    One Deferred for all, so that any of them failing (the admin listener too) fails
    start-up as a whole; the admin port is left out of the result, which callers pair
    with their listeners. Shared by ``GatewayService`` and ``workers.Supervisor``.
    """
    results = list(listening)
    if admin is not None:
        admin.startService()
        assert admin.listening is not None
        results.append(admin.listening)
    gathered = defer.gatherResults(results, consumeErrors=True)
    if admin is not None:
        gathered.addCallback(lambda ports: ports[:-1])
    return gathered


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentTLS:
    """Hands each new connection to the TLS settings in force *now* (swapped on reload)."""

    def __init__(self, gateway_service: GatewayService) -> None:
        self._service = gateway_service

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        server_tls = self._service.gateway.runtime.server_tls
        assert server_tls is not None
        return server_tls.serverConnectionForTLS(tlsProtocol)


class GatewaySite(Site):
    """A Site that does not log every request in the Common Log Format (app/_observe.py does)
    and knows its open connections, so a graceful stop can drain them."""

    def __init__(self, resource: Any) -> None:
        # twisted.web would read urlencoded and multipart POST bodies whole into
        # memory to fill ``args``; the gateway never uses them.
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.tracker = ConnectionTracker()
        self._call_later: Any = None  # the reactor's, bound once (buildProtocol)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            # twisted.web gives each channel its own bound ``reactor.callLater`` (~64
            # bytes per open connection): every channel of this site shares one.
            call_later = self._call_later
            if call_later is None or call_later.__self__ is not self.reactor:
                call_later = self._call_later = self.reactor.callLater
            protocol.callLater = call_later
            self.tracker.track(protocol)
        return protocol

    def log(self, request: Any) -> None:
        pass

    def acceptableProtocols(self) -> list[bytes]:
        # What this site serves by itself; ALPN is chosen per listener by the TLS
        # contexts' callback (tls/_server.py: h2 only where http2 = true, http/_h2.py).
        return [b"http/1.1"]


class GatewayService(service.Service):
    """Listens on every configured listener and serves the gateway.

    ``inherited`` (used by worker processes) lists already-listening socket file
    descriptors with whether each terminates TLS and offers HTTP/2; they replace the configured
    listeners, and the admin listener and metrics are left to the parent. ``resources``
    (``make_service``) serve the APIs whose backend is ``resource:``, across reloads.
    """

    name = "twistedgw"

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any = None,
        *,
        inherited: Sequence[tuple[int, bool, bool]] | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self._records = HandshakeRecords()
        self._reloads = defer.DeferredLock()  # one reload at a time, in order
        # Outlives reloads: tier buckets, and with [cluster] the Redis connection.
        # ... and the resources the embedding application supplies (make_service).
        self.shared = Shared(connect=True, resources=dict(resources or {}))
        built = runtime.build(config, self._records, self.shared)
        self.shared.in_force(config)
        limits = config.limits
        self.forwarder = Forwarder(
            reactor,
            ForwardSettings(
                connect_timeout=limits.backend_connect_timeout,
                backend_timeout=limits.backend_timeout,
                send_timeout=limits.send_timeout,
            ),
            tls_policy_for=self._backend_tls_policy,
        )
        self.runtime = built  # the full Runtime; the front reads it as a Snapshot
        self.gateway = Gateway(built, self.forwarder)
        self.site = GatewaySite(GatewayResource(self.gateway))
        # The byte-level HTTP/1.1 front (http/_front.py): limits, timeouts, strict
        # framing (the guard's rules, http/_guard.py); max_connections per process.
        self.guard = serve_http1(self.site, self.gateway)
        self.site.noisy = False
        self.ports: list[IListeningPort] = []
        self.listening: defer.Deferred[list[IListeningPort]] | None = None
        self.inherited = list(inherited) if inherited is not None else None
        self.stopping = False
        self.metrics: Metrics | None = None
        self.admin: AdminService | None = None
        if self.inherited is None:
            self.metrics = Metrics(lambda: self.runtime)
            self.gateway.counter = self.metrics  # counts requests without their records
            self.shared.observe_cluster(self.metrics)
            if config.admin is not None:
                self.admin = AdminService(
                    reactor, config.admin, self.metrics, self.readiness, self.detail
                )
        self.access_log: AccessLog | None = None
        self._set_access_log(config)
        # [tracing]: the tracer starts with the service (its export thread with it); what
        # becomes of its spans goes to the metrics, or to the parent (a worker sets this).
        self.tracer: Tracer | None = None
        self.tracing_observer: TracingObserver | None = self.metrics

    def _backend_tls_policy(self, target: bytes) -> IPolicyForHTTPS:
        """The TLS policy for an https target under the config in force *now*."""
        backend_tls = self.runtime.backend_tls
        if backend_tls is None:  # a Runtime built by hand, without runtime.build
            return _SYSTEM_TRUST
        return backend_tls.policy_for(target)

    def _set_access_log(self, config: GatewayConfig) -> None:
        """Open (or reopen, for logrotate) the access log ``config`` asks for."""
        wanted = config.access_log.path if config.access_log is not None else None
        current = self.access_log
        if current is not None and current.path == wanted:
            current.reopen()
            return
        if current is not None:
            self.gateway.observers.remove(current)
            current.close()
            self.access_log = None
        if wanted is not None:
            try:
                self.access_log = AccessLog(wanted)
            except OSError as e:
                raise ConfigError(
                    [f"{config.source}: access_log.path: cannot open {wanted}: {e.strerror}"]
                ) from None
            self.gateway.observers.append(self.access_log)

    def reopen_logs(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    def readiness(self) -> str | None:
        """None when serving; otherwise why not (for ``/readyz``)."""
        if self.stopping:
            return "stopping"
        if not self.ports:
            return "listeners are not up yet"
        return None

    def detail(self) -> list[str]:
        """Extra ``/readyz`` lines: the [cluster] store's state."""
        store = self.shared.cluster
        return [store.describe()] if store is not None else []

    def _endpoint(self, listener: Listener) -> Any:
        return listener_endpoint(self.reactor, listener)

    def _factory(self, listener: Listener) -> Any:
        if listener.tls:
            # http2: ALPN offers h2 on this listener's connections (http/_h2.py).
            served: Any = H2Factory(self.site, self.guard) if listener.http2 else self.site
            return ServerTLSFactory(_CurrentTLS(self), False, served)
        return self.site

    def _adopt(self, fd: int, tls: bool, http2: bool = False) -> defer.Deferred[IListeningPort]:
        """Listen on a socket inherited from the parent process (workers)."""
        with socket.socket(fileno=fd) as sock:
            family = sock.family
            factory = self._factory(Listener(tls=tls, http2=http2))
            try:
                if family == socket.AF_UNIX:  # the parent's file: its mode and life stay
                    port = unixsockets.adopt(self.reactor, fd, factory, owns_file=False)
                else:
                    port = self.reactor.adoptStreamPort(fd, family, factory)
                # either dups the descriptor; ours is closed on leaving the block
            except Exception:
                return defer.fail()
        return defer.succeed(port)

    def startService(self) -> None:
        super().startService()
        if self.config.tracing is not None and self.tracer is None:
            self.tracer = self.gateway.tracer = start_tracer(
                self.config.tracing, self.reactor, _TracingReports(self)
            )
        if self.inherited is not None:
            results = [self._adopt(fd, tls, http2) for fd, tls, http2 in self.inherited]
        else:
            trust_unix = self.config.mutual_ssl.trust_unix_socket
            results = [
                listen(self.reactor, listener, self._factory(listener), trust_unix=trust_unix)
                for listener in self.config.listeners
            ]
        self.listening = gather_listening(results, self.admin)
        self.listening.addCallback(self._listening)

    def _listening(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        self.ports = list(ports)
        if self.metrics is not None:
            self.metrics.workers.set(1)
        if self.inherited is None:
            log_startup(
                self.config,
                self.runtime,
                ports,
                admin=self.admin.describe() if self.admin is not None else None,
            )
        return ports

    def _stop_tracing(self) -> defer.Deferred[None] | None:
        """After the drain (the last spans have ended): send what is queued, bounded."""
        tracer, self.tracer = self.tracer, None
        if tracer is None:
            return None
        self.gateway.tracer = None
        return tracer.stop()

    def reload(self) -> defer.Deferred[bool]:
        """Re-read the config and key material; keep the old state on any problem.

        Reading and validating the files (TOML, OpenAPI definitions: in a child
        process) and loading key material run off the reactor thread
        (``runtime.prepare_beside_reactor``): a large definition must not hold requests
        (the 50 ms rule). The pipelines are compiled and the runtime swapped on the
        reactor. A reload asked for while one runs follows it.
        """
        return self._reloads.run(self._reload)

    def _reload(self) -> defer.Deferred[bool]:
        pool = self.reactor.getThreadPool()
        prepared = threads.deferToThreadPool(
            self.reactor, pool, runtime.prepare_beside_reactor, self.config.source, self._records
        )
        # The tier buckets and other shared state carry over to the new pipelines.
        applied = prepared.addBoth(
            lambda result: self._apply(finish_reload(self.config, result, self.runtime.shared))
        )
        return applied.addErrback(self._reload_failed)

    def _reload_failed(self, failure: Failure) -> bool:
        log.failure("Reload failed, still serving the previous config", failure)
        return self._apply(None)

    def _apply(self, built: runtime.Runtime | None) -> bool:
        if self.metrics is not None:
            self.metrics.reloaded(built is not None)
        if built is None:
            self.reopen_logs()  # logrotate sends SIGHUP whatever the config says
            self.shared.in_force(self.config)  # a store the refused config made goes
            return False
        new_config = built.config
        try:
            self._set_access_log(new_config)
        except ConfigError as e:  # the rest of the new config still applies
            log.error("{problem}", problem=e.problems[0])
        self.config = new_config
        self.shared.in_force(new_config)  # a changed [cluster] has connected anew: drop the old
        self.runtime = self.gateway.runtime = built
        log.info("Reloaded {source}", source=str(new_config.source))
        return True

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, let in-flight requests finish (up to ``shutdown_timeout``),
        close keep-alive connections, then the backend pool and the admin listener."""
        super().stopService()
        self.stopping = True
        if self.metrics is not None:
            self.metrics.workers.set(0)
        ports, self.ports = self.ports, []
        stops = [defer.maybeDeferred(port.stopListening) for port in ports]
        d: defer.Deferred[Any] = defer.gatherResults(stops, consumeErrors=True)
        d.addBoth(lambda _: self.site.tracker.drain(self.reactor, self.config.shutdown_timeout))
        d.addBoth(lambda _: self._stop_tracing())
        d.addBoth(lambda _: self.forwarder.close())
        d.addBoth(lambda _: self.shared.stop())
        if self.admin is not None:
            admin = self.admin
            d.addBoth(lambda _: admin.stopService())
        d.addBoth(lambda _: self.access_log.close() if self.access_log is not None else None)
        d.addBoth(lambda _: None)
        return d


class _TracingReports:
    """The tracer's reports, to whichever observer the service has when they arrive."""

    def __init__(self, gateway_service: GatewayService) -> None:
        self._service = gateway_service

    def spans_dropped(self, count: int) -> None:
        observer = self._service.tracing_observer
        if observer is not None:
            observer.spans_dropped(count)

    def spans_exported(self, count: int, ok: bool) -> None:
        observer = self._service.tracing_observer
        if observer is not None:
            observer.spans_exported(count, ok)


def reload_runtime(
    old: GatewayConfig, records: HandshakeRecords | None = None, shared: Shared | None = None
) -> runtime.Runtime | None:
    """The one reload path (one process, and the supervisor before it tells its workers):
    re-read ``old.source``; None, with every problem logged, if anything is wrong."""
    try:
        prepared: runtime.Prepared | Failure = runtime.prepare(old.source, records)
    except ConfigError:
        prepared = Failure()
    return finish_reload(old, prepared, shared)


def finish_reload(
    old: GatewayConfig, prepared: runtime.Prepared | Failure, shared: Shared | None
) -> runtime.Runtime | None:
    """``reload_runtime`` once ``runtime.prepare`` has run (here or in a thread)."""
    try:
        if isinstance(prepared, Failure):
            prepared.raiseException()
        built = runtime.finish(prepared, shared)
    except ConfigError as e:
        for line in e.problems:
            log.error("Reload refused, still serving the previous config: {problem}", problem=line)
        return None
    _warn_restart_only(old, built.config)
    log_warnings(built)
    return built


def log_warnings(built: runtime.Runtime) -> None:
    """What ``check`` prints as warnings, in the log at start and on reload."""
    for line in built.warnings:
        log.warn("{warning}", warning=line)


def _warn_restart_only(old: GatewayConfig, new: GatewayConfig) -> None:
    """Settings bound to sockets and processes are not changed by a reload: say so."""
    for what, before, after in (
        ("listeners", old.listeners, new.listeners),
        ("[admin]", old.admin, new.admin),
        ("workers", old.workers, new.workers),
        ("[tracing]", old.tracing, new.tracing),
    ):
        if before != after:
            log.warn("Changes to {what} take effect on restart only", what=what)


def log_startup(
    config: GatewayConfig, built: runtime.Runtime, ports: list[Any], *, admin: str | None = None
) -> None:
    """One summary: listeners, APIs and their mTLS modes, truststore aliases and expiry,
    workers, the admin listener and the access log."""
    where = []
    for listener, port in zip(config.listeners, ports, strict=False):
        address = port.getHost()
        scheme = "https" if listener.tls else "http"
        name = getattr(address, "name", None)  # a Unix socket's path
        if name is not None:
            where.append(f"{scheme}+unix:{os.fsdecode(name)!r}")
            continue
        where.append(
            f"{scheme}://{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        )
    log.info(
        "twistedgw listening on {where} ({workers})",
        where=", ".join(where),
        workers="1 process" if config.workers == 1 else f"{config.workers} worker processes",
    )
    log.info(
        "Admin: {admin}; access log: {access}",
        admin=admin or "off",
        access=(
            "off"
            if config.access_log is None
            else ("stdout" if config.access_log.path == "-" else config.access_log.path)
        ),
    )
    for api in config.apis:
        endpoints = list(api.endpoints)
        # Every backend and how one is picked; the schemes (mutual_ssl[aliases] when the API
        # names its truststore aliases, else any trusted certificate passes).
        log.info(
            "API {label} at {context} -> {backends}{mode}: {schemes}",
            label=api.label,
            context=api.context,
            backends=", ".join(endpoints) or "(no production endpoint)",
            mode=f" ({api.backend_mode})" if len(endpoints) > 1 else "",
            schemes=describe_security(api),
        )
        # The sandbox endpoint and operations' own (a username at most, never a password).
        others = [("sandbox", api.sandbox)] + [
            (f"{op.method} {op.template} {kind}", getattr(op, kind))
            for op in api.operations or () for kind in ("production", "sandbox")]
        for what, other in others:
            if other is not None:
                log.info("  {what} endpoint {name} -> {urls}{mode}{auth}", what=what,
                         name=other.name, urls=", ".join(other.urls),
                         mode=f" ({other.mode})" if len(other.urls) > 1 else "",
                         auth=f" (basic auth as {other.auth.username!r})" if other.auth else "")
        if api.operations is not None:
            rows = {(method, path): schemes for _h, method, path, _l, schemes in route_rows([api])}
            for (method, path), schemes in rows.items():
                log.info("  {method} {path}: {schemes}", method=method, path=path,
                         schemes=schemes)
    if built.backend_tls is not None:
        for api in config.apis:
            if api.backend.startswith("https://"):
                policy = built.backend_tls.policy_for(api.backend.encode())
                log.info(
                    "Backend TLS for API {label}: {tls}", label=api.label, tls=policy.describe()
                )
    if built.truststore is not None:
        for entry in built.truststore.entries:
            log.info(
                "Truststore alias {alias}: {cert}",
                alias=entry.alias,
                cert=describe_certificate(entry.cert),
            )
    if built.keystore is not None:
        log.info("Server certificate: {cert}", cert=describe_certificate(built.keystore.cert))
    if built.server_tls is not None and built.truststore is not None:
        # What auto decided: whether each entry's handshakes ask for a certificate.
        for label, sni, mode in (
            ("default", None, config.tls.client_certificate),
            *((", ".join(e.hosts), e, e.client_certificate) for e in config.tls.sni),
        ):
            asks = runtime.asks_for_certificate(config, sni)
            log.info(
                "TLS {label}: client_certificate={mode} ({asks})",
                label=label,
                mode=mode,
                asks="asks for a client certificate" if asks else "never asks",
            )
    log_warnings(built)
