"""TLS to ``https://`` backends: whom to trust, which name to check, what to present.

Built in ``runtime.build`` (so ``check``, ``run`` and a reload refuse the same
key material) and swapped with the ``Runtime`` on reload. The forwarder asks
``BackendTls.policy_for(target)`` on every https request and keys its endpoints
and pooled connections by the answer, so a connection made under one setting is
never reused under another: not by a second API on the same host and port, and
not after a reload that changed the settings.

Verification is always on (system trust, or the configured CAs instead of it);
there is deliberately no way to turn it off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from twistedgw.config import BackendTlsConfig, ConfigError, GatewayConfig
from twistedgw.identity import fingerprint
from twistedgw.tls import _pki as pki

__all__ = ["BackendPolicy", "BackendTls", "build", "load_policy"]


@implementer(IPolicyForHTTPS)
class BackendPolicy:
    """One effective backend TLS setting, its key material loaded.

    Policies are equal when their trust anchors, client certificate chain and
    server name are, so a reload that changes nothing keeps the pooled backend
    connections while one that changes anything (even a CA file rewritten in
    place) gets new ones.
    """

    def __init__(
        self,
        trusted: Iterable[x509.Certificate] = (),
        client: pki.KeyStore | None = None,
        server_name: str | None = None,
    ) -> None:
        self.trusted = tuple(trusted)  # empty: the system trust store
        self.client = client
        self.server_name = server_name
        self.key: tuple[object, ...] = (
            tuple(fingerprint(c) for c in self.trusted),
            tuple(fingerprint(c) for c in (client.cert, *client.chain)) if client else None,
            server_name,
        )
        self._hash = hash(self.key)
        self._trust_root: Any = (
            ssl.trustRootFromCertificates(
                [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in self.trusted]
            )
            if self.trusted
            else ssl.platformTrust()
        )
        # One OpenSSL context per name checked: the upstream pool asks once per endpoint.
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendPolicy) and other.key == self.key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:  # no key material, only what an operator configured
        trust = f"{len(self.trusted)} configured CA(s)" if self.trusted else "system trust"
        client = "a client certificate" if self.client else "no client certificate"
        name = self.server_name or "the URL host"
        return f"<BackendPolicy {trust}, {client}, name {name}>"

    def describe(self) -> str:
        """One line for the startup log: subjects and expiry only, never key material."""
        trust = (
            "trusts " + "; ".join(c.subject.rfc4514_string() for c in self.trusted)
            if self.trusted
            else "trusts the system CAs"
        )
        client = (
            f"client certificate {pki.describe_certificate(self.client.cert)}"
            if self.client
            else "no client certificate"
        )
        name = f"server name {self.server_name}" if self.server_name else "the URL host as name"
        return f"{trust}; {client}; {name}"

    # IPolicyForHTTPS
    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = self.server_name or hostname.decode("ascii")
        creator = self._creators.get(name)
        if creator is None:
            options: dict[str, Any] = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
            if self.client is not None:
                # cryptography objects, not optionsForClientTLS(clientCertificate=...):
                # that one takes deprecated pyOpenSSL objects and cannot send the chain.
                options.update(
                    privateKey=self.client.key,
                    certificate=self.client.cert,
                    extraCertChain=list(self.client.chain),
                )
            creator = ssl.optionsForClientTLS(
                name, trustRoot=self._trust_root, extraCertificateOptions=options
            )
            self._creators[name] = creator
        return creator


_ORIGIN = re.compile(rb"^[^:/?#]*://[^/?#]*")


def _origin(url: bytes) -> bytes:
    match = _ORIGIN.match(url)
    return match.group(0) if match else url


class BackendTls:
    """Which policy a backend URL gets: that of the API whose backend URL it starts with.

    The forwarder sees only the target URL, which is the API's backend URL plus
    the rest of the path. ``config.parse`` refuses APIs whose backend URLs are
    equal or nested but whose settings differ, so the answer is never ambiguous.
    """

    def __init__(
        self, default: BackendPolicy, backends: Iterable[tuple[str, BackendPolicy]] = ()
    ) -> None:
        self.default = default
        grouped: dict[bytes, list[tuple[bytes, BackendPolicy]]] = {}
        for url, policy in backends:
            prefix = url.encode()
            grouped.setdefault(_origin(prefix), []).append((prefix, policy))
        # Usually one setting per scheme://host:port: answer from the origin alone.
        self._by_origin: dict[bytes, BackendPolicy | tuple[tuple[bytes, BackendPolicy], ...]] = {}
        for origin, entries in grouped.items():
            policies = {policy for _, policy in entries}
            if len(policies) == 1:
                self._by_origin[origin] = entries[0][1]
            else:
                self._by_origin[origin] = tuple(
                    sorted(entries, key=lambda e: len(e[0]), reverse=True)
                )

    def policy_for(self, target: bytes) -> BackendPolicy:
        found = self._by_origin.get(_origin(target))
        if found is None:
            return self.default
        if isinstance(found, BackendPolicy):
            return found
        for prefix, policy in found:
            if target.startswith(prefix) and target[len(prefix) : len(prefix) + 1] in (
                b"",
                b"/",
                b"?",
            ):
                return policy
        return self.default

    @property
    def policies(self) -> frozenset[BackendPolicy]:
        """Every distinct policy in use (the default included)."""
        found = {self.default}
        for entry in self._by_origin.values():
            if isinstance(entry, BackendPolicy):
                found.add(entry)
            else:
                found.update(policy for _, policy in entry)
        return frozenset(found)


def load_policy(settings: BackendTlsConfig, where: str) -> BackendPolicy:
    """Load and check one setting's files; ``where`` is its dotted config key.

    Raises ``pki.PkiError`` naming the key and the file.
    """
    trusted: list[x509.Certificate] = []
    if settings.trusted_certificate is not None:
        trusted = pki.load_pem_certificates(
            settings.trusted_certificate, f"{where}.trusted_certificate:"
        )
    client = None
    if settings.certificate is not None and settings.private_key is not None:
        client = pki.load_keystore_pem(
            settings.certificate,
            settings.private_key,
            cert_what=f"{where}.certificate:",
            key_what=f"{where}.private_key:",
        )
    return BackendPolicy(trusted, client, settings.server_name)


def _never(where: str) -> bool:
    return False


def build(
    config: GatewayConfig,
    *,
    api_paths: Sequence[str] | None = None,
    skip: Callable[[str], bool] = _never,
) -> BackendTls:
    """The backend TLS of a config; raise ConfigError naming file and key on any problem.

    For a config read only in part (``config.Parsed``), ``api_paths`` says where
    each API was read, and ``skip(where)`` leaves out settings whose keys are
    already reported broken, so their files are not blamed a second time.
    """
    problems: list[str] = []
    if api_paths is None:
        api_paths = [f"apis[{i}]" for i in range(len(config.apis))]

    def load(settings: BackendTlsConfig, where: str) -> BackendPolicy:
        if skip(where):
            return BackendPolicy()
        try:
            return load_policy(settings, where)
        except pki.PkiError as e:
            problems.append(f"{config.source}: {e}")
            return BackendPolicy()

    default = load(config.backend_tls, "backend_tls")
    backends: list[tuple[str, BackendPolicy]] = []
    for path, api in zip(api_paths, config.apis, strict=True):
        # all backends: production, sandbox, and each operation's own
        https = [url for url in api.all_urls if url.startswith("https://")]
        if not https:
            continue
        policy = (
            default if api.backend_tls is None else load(api.backend_tls, f"{path}.backend_tls")
        )
        backends.extend((url, policy) for url in https)
    if problems:
        raise ConfigError(problems)
    return BackendTls(default, backends)
