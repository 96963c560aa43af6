"""The gateway as a Twisted service: listeners, reload and graceful stop.

``make_service`` is the one way in, used by ``twistedgw run``, the twistd
plugin and applications that embed the gateway, so all three behave the same.
Nothing here is global: two gateways can share a reactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site
from zope.interface import implementer

from twistedgw import config as configmod
from twistedgw import guard, pki, runtime
from twistedgw.config import ConfigError, GatewayConfig, Listener
from twistedgw.forward import Forwarder, ForwardSettings
from twistedgw.tls import HandshakeRecords
from twistedgw.web import Gateway, GatewayResource

log = Logger()


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
    """A Site that does not log every request in the Common Log Format (observe.py does)."""

    def log(self, request: Any) -> None:
        pass

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/1.1 only: per-connection client-certificate identity and streaming
        # back-pressure are built on the HTTP/1.1 channel (H2 streams have no transport).
        return [b"http/1.1"]


class GatewayService(service.Service):
    """Listens on every configured listener and serves the gateway."""

    name = "twistedgw"

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self._records = HandshakeRecords()
        built = runtime.build(config, self._records)
        limits = config.limits
        self.forwarder = Forwarder(
            reactor,
            ForwardSettings(
                connect_timeout=limits.backend_connect_timeout,
                backend_timeout=limits.backend_timeout,
            ),
        )
        self.gateway = Gateway(built, self.forwarder)
        self.site = GatewaySite(GatewayResource(self.gateway))
        # Limits, timeouts, strict framing (guard.py); max_connections per process.
        self.guard = guard.harden(self.site, self.gateway)
        self.ports: list[IListeningPort] = []
        self.listening: defer.Deferred[list[IListeningPort]] | None = None

    def _endpoint(self, listener: Listener) -> Any:
        if listener.endpoint is not None:
            return endpoints.serverFromString(self.reactor, listener.endpoint)
        return (
            endpoints.TCP4ServerEndpoint(self.reactor, listener.port, interface=listener.host)
            if ":" not in listener.host
            else endpoints.TCP6ServerEndpoint(self.reactor, listener.port, interface=listener.host)
        )

    def _factory(self, listener: Listener) -> Any:
        if listener.tls:
            return TLSMemoryBIOFactory(_CurrentTLS(self), False, self.site)
        return self.site

    def startService(self) -> None:
        super().startService()
        results = [
            self._endpoint(listener).listen(self._factory(listener))
            for listener in self.config.listeners
        ]
        self.listening = defer.gatherResults(results, consumeErrors=True)
        self.listening.addCallback(self._listening)

    def _listening(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        self.ports = list(ports)
        log_startup(self.config, self.gateway.runtime, ports)
        return ports

    def reload(self) -> bool:
        """Re-read the config and key material; keep the old state on any problem."""
        try:
            new_config = configmod.load(self.config.source)
            built = runtime.build(new_config, self._records)
        except ConfigError as e:
            for line in e.problems:
                log.error(
                    "Reload refused, still serving the previous config: {problem}", problem=line
                )
            return False
        if [lst for lst in new_config.listeners] != [lst for lst in self.config.listeners]:
            log.warn("Listener changes take effect on restart only")
        self.config = new_config
        self.gateway.runtime = built
        log.info("Reloaded {source}", source=str(new_config.source))
        return True

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        stops = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        d: defer.Deferred[Any] = defer.gatherResults(stops, consumeErrors=True)
        d.addBoth(lambda _: self.forwarder.close())
        d.addBoth(lambda _: None)
        return d


def log_startup(config: GatewayConfig, built: runtime.Runtime, ports: list[Any]) -> None:
    """One summary: listeners, APIs and their mTLS modes, truststore aliases and expiry."""
    where = []
    for listener, port in zip(config.listeners, ports, strict=False):
        address = port.getHost()
        where.append(
            f"{'https' if listener.tls else 'http'}://{getattr(address, 'host', '?')}:"
            f"{getattr(address, 'port', '?')}"
        )
    log.info("twistedgw listening on {where}", where=", ".join(where))
    for api in config.apis:
        aliases = ", ".join(sorted(api.aliases)) if api.aliases is not None else "any trusted"
        log.info(
            "API {label} at {context} -> {backend}: mutual_ssl={mtls} (aliases: {aliases}), "
            "api_key={key}",
            label=api.label,
            context=api.context,
            backend=api.backend,
            mtls=api.mutual_ssl.value,
            aliases=aliases,
            key=api.api_key.value,
        )
    if built.truststore is not None:
        for entry in built.truststore.entries:
            log.info(
                "Truststore alias {alias}: {cert}", alias=entry.alias, cert=pki.describe(entry.cert)
            )
    if built.keystore is not None:
        log.info("Server certificate: {cert}", cert=pki.describe(built.keystore.cert))


def make_service(config: GatewayConfig | str | Path, reactor: Any = None) -> GatewayService:
    """Build the gateway service from a config (or a path to one).

    Raises ``ConfigError`` for any configuration problem. Add the result to an
    application with ``setServiceParent``.
    """
    if not isinstance(config, GatewayConfig):
        config = configmod.load(config)
    return GatewayService(config, reactor)
