"""Is any certificate of a verified chain revoked? CRLs and OCSP, in one place.

Both certificate sources (the TLS handshake and a load balancer's header) are
judged here, *after* chain verification, so they behave identically: OpenSSL's
CRL flags would cover the handshake only, and ``cryptography.x509.verification``
has no revocation at all.

A certificate's status is GOOD, REVOKED or UNKNOWN (no CRL for its issuer, a
stale CRL, a CRL whose signature does not verify, an unreachable OCSP responder).
REVOKED always refuses, even from a stale CRL: a revocation is never undone.
UNKNOWN follows ``revocation_fail``. With ``crl+ocsp`` both are asked: REVOKED if
either says so, GOOD if either gives a fresh GOOD, otherwise UNKNOWN.

CRLs are read when the runtime is built (start and SIGHUP), never on the request
path. OCSP answers are cached per (issuer, serial) so the request path asks the
network only on a miss, and concurrent misses share one query.

The responder URL comes from the client certificate (its AIA), so anyone the
truststore accepts chooses where the gateway connects: ``ResponderFetch`` fetches
only http(s) URLs, resolves the name itself, refuses it if any address it resolves
to is not a global one (private, loopback, link-local, ...: the gateway's own
network, a cloud metadata service) unless ``[tls] ocsp_responders`` lists the
responder's origin, and connects to the very address it checked (a second
resolution could answer otherwise).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import ipaddress
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import defer
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from twistedgw.config import TlsConfig, ocsp_origin
from twistedgw.identity import fingerprint, reasons

log = Logger()

UNAVAILABLE = "certificate revocation status is unavailable"

Chain = Sequence[x509.Certificate]
Verdict = str | None  # None = not revoked (or unknown and revocation_fail = "open")
Fetch = Callable[[str, bytes, float], "defer.Deferred[bytes]"]

UNKNOWN_TTL = 5.0
"""Seconds an UNKNOWN OCSP answer (responder down, bad response) is remembered:
long enough that a dead responder does not add ``ocsp_timeout`` to every request,
short enough that recovery is noticed at once."""

CLOCK_SKEW = datetime.timedelta(minutes=5)


class Status(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class CrlError(Exception):
    """A CRL file could not be read; the message names the file."""


def _combine(statuses: Iterable[Status]) -> Status:
    """REVOKED wins, then any fresh GOOD, else UNKNOWN."""
    seen = set(statuses)
    if Status.REVOKED in seen:
        return Status.REVOKED
    return Status.GOOD if Status.GOOD in seen else Status.UNKNOWN


def _utc_now(clock: Callable[[], float]) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(clock(), datetime.UTC)


# --------------------------------------------------------------------------- CRLs


@dataclass(frozen=True)
class LoadedCrl:
    crl: x509.CertificateRevocationList
    source: Path
    sha256: bytes
    revoked: frozenset[int]  # serial numbers, indexed once at load


def load_crls(paths: Iterable[Path]) -> list[LoadedCrl]:
    """Read PEM (one or more CRLs per file) or DER CRL files."""
    out: list[LoadedCrl] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CrlError(f"{path}: cannot read: {e.strerror}") from None
        try:
            if b"-----BEGIN X509 CRL-----" in data:
                blocks = data.split(b"-----BEGIN X509 CRL-----")[1:]
                crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + b) for b in blocks]
            else:
                crls = [x509.load_der_x509_crl(data)]
        except ValueError:
            raise CrlError(f"{path}: not a PEM or DER CRL") from None
        for crl in crls:
            der = crl.public_bytes(serialization.Encoding.DER)
            out.append(
                LoadedCrl(
                    crl,
                    path,
                    hashlib.sha256(der).digest(),
                    frozenset(r.serial_number for r in crl),
                )
            )
    return out


class CrlStore:
    """CRLs by issuer name; a CRL counts only if its signature verifies against the issuer."""

    def __init__(self, crls: Sequence[LoadedCrl]) -> None:
        self._by_issuer: dict[x509.Name, list[LoadedCrl]] = {}
        for c in crls:
            self._by_issuer.setdefault(c.crl.issuer, []).append(c)
        self._signature_ok: dict[tuple[bytes, bytes], bool] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_issuer.values())

    def _signed_by(self, c: LoadedCrl, issuer: x509.Certificate) -> bool:
        key = (c.sha256, fingerprint(issuer))
        ok = self._signature_ok.get(key)
        if ok is None:
            try:
                ok = c.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except Exception:
                ok = False
            if not ok:
                log.warn(
                    "Ignoring CRL {source}: its signature does not verify against {issuer}",
                    source=str(c.source),
                    issuer=issuer.subject.rfc4514_string(),
                )
            self._signature_ok[key] = ok
        return ok

    def status(
        self, cert: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
    ) -> Status:
        fresh = False
        for c in self._by_issuer.get(cert.issuer, ()):
            if not self._signed_by(c, issuer):
                continue
            if cert.serial_number in c.revoked:
                return Status.REVOKED
            next_update = c.crl.next_update_utc
            if c.crl.last_update_utc <= now + CLOCK_SKEW and (
                next_update is None or now <= next_update
            ):
                fresh = True
        return Status.GOOD if fresh else Status.UNKNOWN


# --------------------------------------------------------------------------- OCSP


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first http(s) OCSP responder named in the certificate's AIA."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None
    for desc in aia:
        if desc.access_method == x509.oid.AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            url = desc.access_location.value
            if url.startswith(("http://", "https://")):
                return url
    return None


def _verify_signature(
    key: Any, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _responder_key(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> Any:
    """The key that may sign for ``issuer``: the issuer itself, or a delegate it issued."""
    issuer_key_hash = x509.SubjectKeyIdentifier.from_public_key(
        issuer.public_key()  # type: ignore[arg-type]
    ).digest
    if response.responder_name == issuer.subject or response.responder_key_hash == issuer_key_hash:
        return issuer.public_key()
    for delegate in response.certificates:
        try:
            delegate.verify_directly_issued_by(issuer)
            eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except Exception:  # noqa: S112 - not a delegate for this issuer; try the next
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku:
            return delegate.public_key()
    return None


def parse_response(
    body: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes | None,
    now: datetime.datetime,
) -> tuple[Status, datetime.datetime | None]:
    """Judge one OCSP response for ``cert``: its status and until when it is fresh."""
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError(f"responder said {response.response_status.name}")
    key = _responder_key(response, issuer)
    if key is None or not _verify_signature(
        key, response.signature, response.tbs_response_bytes, response.signature_hash_algorithm
    ):
        raise ValueError("response signature does not verify")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None  # the nonce is optional (RFC 8954): many responders pre-sign
        if echoed is not None and echoed != nonce:
            raise ValueError("response nonce does not match the request")
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        if single.this_update_utc > now + CLOCK_SKEW:
            raise ValueError("response is not yet valid")
        next_update = single.next_update_utc
        if next_update is not None and next_update < now:
            raise ValueError("response is stale")
        status = {
            ocsp.OCSPCertStatus.GOOD: Status.GOOD,
            ocsp.OCSPCertStatus.REVOKED: Status.REVOKED,
        }.get(single.certificate_status, Status.UNKNOWN)
        return status, next_update
    raise ValueError("response does not cover the certificate")


def refused_address(address: str) -> bool:
    """Whether a responder at IP ``address`` is refused unless allow-listed: anything but
    a global unicast address (RFC 6890's special-purpose ranges: private, loopback,
    link-local, shared, reserved, unspecified...), IPv4 inside IPv6 judged as IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def resolve_host(reactor: Any, host: str) -> defer.Deferred[list[str]]:
    """Every address ``host`` resolves to (the reactor's resolver: getaddrinfo in a thread)."""
    done: defer.Deferred[list[str]] = defer.Deferred()
    found: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            found.append(address.host)

        def resolutionComplete(self) -> None:
            done.callback(found)

    reactor.nameResolver.resolveHostName(Receiver(), host, 0)
    return done


@implementer(IAgentEndpointFactory)
class _Pinned:
    """Connects an ``Agent`` to one checked address, whatever the URL's name resolves to
    by then; TLS is still verified against (and SNI sent for) the name."""

    def __init__(self, reactor: Any, address: str, timeout: float) -> None:
        self._reactor = reactor
        self._address = address
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet import endpoints, ssl

        v6 = ":" in self._address
        kind = endpoints.TCP6ClientEndpoint if v6 else endpoints.TCP4ClientEndpoint
        endpoint = kind(self._reactor, self._address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return endpoints.wrapClientTLS(ssl.optionsForClientTLS(uri.host.decode()), endpoint)
        return endpoint


class ResponderFetch:
    """The ``Fetch`` of ``OcspClient``: POST to the responder, but never into the
    gateway's own network unless ``[tls] ocsp_responders`` says so (no SSRF from a
    certificate's AIA).

    Only http(s) URLs. The host is resolved here; if any address it resolves to is
    refused (``refused_address``) and its origin is not listed, nothing is sent. The
    request goes to the first address, the one checked, with the URL's own Host header.
    """

    def __init__(
        self,
        allowed: Iterable[str] = (),
        reactor: Any = None,
        *,
        resolve: Callable[[str], defer.Deferred[list[str]]] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._allowed = frozenset(allowed)
        self._resolve = resolve or (lambda host: resolve_host(reactor, host))

    def __call__(self, url: str, body: bytes, timeout: float) -> defer.Deferred[bytes]:
        try:
            origin = ocsp_origin(url)
        except ValueError as e:
            return defer.fail(ValueError(f"responder URL refused: {e}"))
        host = urlsplit(url).hostname or ""
        listed = origin in self._allowed
        try:
            ipaddress.ip_address(host)
            resolved: defer.Deferred[list[str]] = defer.succeed([host])
        except ValueError:
            resolved = self._resolve(host)

        def checked(addresses: list[str]) -> defer.Deferred[bytes]:
            if not addresses:
                raise ValueError(f"{host} resolves to no address")
            refused = [a for a in addresses if refused_address(a)]
            if refused and not listed:
                raise ValueError(
                    f"responder {origin} is at {refused[0]}, a private, loopback or "
                    "link-local address: not fetched (list the origin in [tls] "
                    "ocsp_responders to allow it)"
                )
            return agent_fetch(url, body, timeout, reactor=self._reactor, address=addresses[0])

        result: defer.Deferred[bytes] = resolved.addCallback(checked)  # type: ignore[assignment]
        result.addTimeout(timeout, self._reactor)
        return result


def agent_fetch(
    url: str, body: bytes, timeout: float, *, reactor: Any = None, address: str | None = None
) -> defer.Deferred[bytes]:
    """POST an OCSP request with Twisted's Agent (non-blocking), giving up after ``timeout``;
    to ``address`` (an IP) when given, whatever the URL's name resolves to."""
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    pool = HTTPConnectionPool(reactor, persistent=False)
    if address is not None:
        agent = Agent.usingEndpointFactory(reactor, _Pinned(reactor, address, timeout), pool=pool)
    else:
        agent = Agent(reactor, connectTimeout=timeout, pool=pool)
    d = agent.request(
        b"POST",
        url.encode("ascii"),
        Headers({b"content-type": [b"application/ocsp-request"]}),
        FileBodyProducer(BytesIO(body)),
    )

    def read(response: Any) -> defer.Deferred[bytes]:
        if response.code != 200:
            raise ValueError(f"responder answered HTTP {response.code}")
        return readBody(response)  # type: ignore[no-any-return]

    body_d: defer.Deferred[bytes] = d.addCallback(read)  # type: ignore[assignment]
    body_d.addTimeout(timeout, reactor)  # type: ignore[arg-type]
    return body_d


class OcspClient:
    """Asks responders, caches answers (``ocsp_cache_seconds``, capped at nextUpdate)."""

    def __init__(
        self,
        timeout: float,
        cache_seconds: float,
        *,
        fetch: Fetch = agent_fetch,
        clock: Callable[[], float] = time.time,
        use_nonce: bool = True,
        cache_size: int = 10000,
    ) -> None:
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._fetch = fetch
        self._clock = clock
        self._use_nonce = use_nonce
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[bytes, int], tuple[float, Status]] = OrderedDict()
        self._pending: dict[tuple[bytes, int], list[defer.Deferred[Status]]] = {}
        self.queries = 0

    @staticmethod
    def _key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
        return fingerprint(issuer), cert.serial_number

    def cached(self, cert: x509.Certificate, issuer: x509.Certificate) -> Status | None:
        key = self._key(cert, issuer)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._cache[key]
            return None
        return entry[1]

    def query(self, cert: x509.Certificate, issuer: x509.Certificate) -> defer.Deferred[Status]:
        """The status from the responder in ``cert``'s AIA; never errbacks."""
        key = self._key(cert, issuer)
        waiter: defer.Deferred[Status] = defer.Deferred()
        if key in self._pending:
            self._pending[key].append(waiter)
            return waiter
        self._pending[key] = [waiter]
        d = defer.maybeDeferred(self._ask, cert, issuer)
        d.addErrback(self._broken)
        d.addCallback(self._answer, key)
        return waiter

    @staticmethod
    def _broken(failure: Any) -> tuple[Status, float]:
        log.failure("OCSP query could not be made", failure)
        return Status.UNKNOWN, UNKNOWN_TTL

    def _answer(self, result: tuple[Status, float], key: tuple[bytes, int]) -> None:
        status, ttl = result
        self._cache[key] = (self._clock() + ttl, status)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        for waiter in self._pending.pop(key, []):
            waiter.callback(status)

    def _ask(
        self, cert: x509.Certificate, issuer: x509.Certificate
    ) -> defer.Deferred[tuple[Status, float]]:
        url = ocsp_url(cert)
        if url is None:
            return defer.succeed((Status.UNKNOWN, self._cache_seconds))
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - RFC 6960's CertID
        nonce = os.urandom(16) if self._use_nonce else None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        body = builder.build().public_bytes(serialization.Encoding.DER)
        self.queries += 1
        d = self._fetch(url, body, self._timeout)

        def judge(data: bytes) -> tuple[Status, float]:
            now = _utc_now(self._clock)
            status, next_update = parse_response(data, cert, issuer, nonce, now)
            ttl = self._cache_seconds
            if next_update is not None:
                ttl = min(ttl, (next_update - now).total_seconds())
            if status is Status.UNKNOWN:
                ttl = min(ttl, UNKNOWN_TTL)
            return status, ttl

        def unavailable(failure: Any) -> tuple[Status, float]:
            log.warn(
                "OCSP responder {url} gave no usable answer for serial {serial:x}: {error}",
                url=url,
                serial=cert.serial_number,
                error=failure.getErrorMessage(),
            )
            return Status.UNKNOWN, UNKNOWN_TTL

        judged: defer.Deferred[tuple[Status, float]] = d.addCallback(judge)
        return judged.addErrback(unavailable)


# --------------------------------------------------------------------------- the check


class RevocationChecker:
    """Takes a verified chain (leaf first, anchor last) and says whether it is revoked."""

    def __init__(
        self,
        *,
        scope: str,
        fail_open: bool,
        crls: CrlStore | None,
        ocsp_client: OcspClient | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scope = scope
        self._fail_open = fail_open
        self._crls = crls
        self._ocsp = ocsp_client
        self._clock = clock

    def _pairs(self, chain: Chain) -> list[tuple[x509.Certificate, x509.Certificate]]:
        """(certificate, its issuer) to check; the trust anchor itself is never checked."""
        pairs = list(itertools.pairwise(chain))
        return pairs[:1] if self._scope == "leaf" else pairs

    def check(self, chain: Chain) -> Verdict | defer.Deferred[Verdict]:
        """A verdict now when no I/O is needed (CRLs, cached OCSP), else a Deferred.

        Returning a plain value keeps the request path synchronous in the common case.
        """
        pairs = self._pairs(chain)
        now = _utc_now(self._clock)
        statuses: list[Status] = []
        missing: list[tuple[int, x509.Certificate, x509.Certificate]] = []
        for i, (cert, issuer) in enumerate(pairs):
            found = [self._crls.status(cert, issuer, now)] if self._crls is not None else []
            if self._ocsp is not None and Status.REVOKED not in found:
                cached = self._ocsp.cached(cert, issuer)
                if cached is None:
                    missing.append((i, cert, issuer))
                else:
                    found.append(cached)
            statuses.append(_combine(found))
            if statuses[-1] is Status.REVOKED:
                return reasons.REVOKED
        if not missing:
            return self._verdict(statuses, chain)
        assert self._ocsp is not None
        queries = [self._ocsp.query(cert, issuer) for _i, cert, issuer in missing]

        def combine(answers: list[Status]) -> Verdict:
            for (i, _cert, _issuer), answer in zip(missing, answers, strict=True):
                statuses[i] = _combine((statuses[i], answer))
            return self._verdict(statuses, chain)

        return defer.gatherResults(queries).addCallback(combine)

    def _verdict(self, statuses: list[Status], chain: Chain) -> Verdict:
        if Status.REVOKED in statuses:
            return reasons.REVOKED
        if Status.UNKNOWN in statuses:
            if self._fail_open:
                log.warn(
                    "No fresh revocation status for {subject}; allowed (revocation_fail = open)",
                    subject=chain[0].subject.rfc4514_string(),
                )
                return None
            return UNAVAILABLE
        return None


def build(settings: TlsConfig) -> RevocationChecker | None:
    """The checker for ``settings``, or None when revocation is off; raises CrlError."""
    if settings.revocation == "off":
        return None
    crls = CrlStore(load_crls(settings.crl)) if "crl" in settings.revocation else None
    client = (
        OcspClient(
            settings.ocsp_timeout,
            settings.ocsp_cache_seconds,
            fetch=ResponderFetch(settings.ocsp_responders),
        )
        if "ocsp" in settings.revocation
        else None
    )
    return RevocationChecker(
        scope=settings.revocation_scope,
        fail_open=settings.revocation_fail == "open",
        crls=crls,
        ocsp_client=client,
    )
