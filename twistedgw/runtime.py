"""Everything a request needs, built once from a config and swapped whole on reload.

Building loads the keystore and truststore and checks the config against them
(aliases the truststore does not have are config errors), so ``twistedgw check``
and a reload refuse exactly what would fail at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw import backendtls, pki, revocation
from twistedgw.chainverify import ChainVerifier
from twistedgw.config import ConfigError, GatewayConfig
from twistedgw.policy import ApiKeyAuthenticator, IAuthenticator, MutualSslAuthenticator, Policy
from twistedgw.routing import Router
from twistedgw.tls import HandshakeRecords, ServerTLS


@dataclass(frozen=True)
class Runtime:
    config: GatewayConfig
    keystore: pki.KeyStore | None
    truststore: pki.TrustStore | None
    server_tls: ServerTLS | None
    router: Router
    policy: Policy
    header_verifier: ChainVerifier | None
    revocation: revocation.RevocationChecker | None = None  # CRLs are re-read on reload
    # TLS to https:// backends; a reload swaps it with the rest, and the forwarder's
    # pool is keyed by its policies, so changed settings get new connections.
    backend_tls: backendtls.BackendTls | None = None


def authenticators(config: GatewayConfig) -> list[IAuthenticator]:
    return [MutualSslAuthenticator(), ApiKeyAuthenticator(config.api_keys)]


def build(config: GatewayConfig, records: HandshakeRecords | None = None) -> Runtime:
    """Load key material and cross-check the config; raise ConfigError on any problem."""
    file = config.source
    problems: list[str] = []
    tls = config.tls
    keystore = truststore = None
    try:
        if tls.keystore is not None:
            keystore = pki.load_keystore_p12(tls.keystore, tls.keystore_password)
        elif tls.certificate is not None and tls.private_key is not None:
            keystore = pki.load_keystore_pem(tls.certificate, tls.private_key)
    except pki.PkiError as e:
        problems.append(f"{file}: {e}")
    try:
        if tls.truststore is not None:
            truststore = pki.load_truststore(tls.truststore, tls.truststore_password)
    except pki.PkiError as e:
        problems.append(f"{file}: tls.truststore: {e}")

    if truststore is not None:
        known = truststore.aliases
        listing = ", ".join(sorted(known))

        def check(where: str, aliases: frozenset[str] | None) -> None:
            for alias in sorted(aliases or ()):
                if alias not in known:
                    problems.append(
                        f"{file}: {where}: unknown truststore alias {alias!r} "
                        f"(the truststore has: {listing})"
                    )

        for i, api in enumerate(config.apis):
            check(f"apis[{i}].aliases", api.aliases)
            check(f"apis[{i}].tiers", frozenset(t.alias for t in api.tiers))
        check("mutual_ssl.load_balancer_aliases", config.mutual_ssl.load_balancer_aliases)
    checker = None
    try:
        checker = revocation.build(tls)
    except revocation.CrlError as e:
        problems.append(f"{file}: tls.crl: {e}")
    backend_tls = None
    try:
        backend_tls = backendtls.build(config)
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)

    server_tls = None
    if keystore is not None and config.needs_tls:
        try:
            server_tls = ServerTLS(tls, keystore, truststore, records)
        except Exception as e:  # OpenSSL's own rejection, e.g. a cipher string it cannot use
            raise ConfigError([f"{file}: tls: OpenSSL refused the TLS settings: {e}"]) from None
    header_verifier = (
        ChainVerifier(truststore)
        if truststore is not None and config.mutual_ssl.header_mode
        else None
    )
    return Runtime(
        config=config,
        keystore=keystore,
        truststore=truststore,
        server_tls=server_tls,
        router=Router(config.apis),
        policy=Policy(authenticators(config)),
        header_verifier=header_verifier,
        revocation=checker,
        backend_tls=backend_tls,
    )
