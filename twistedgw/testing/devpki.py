"""A development PKI: every kind of certificate the gateway has to tell apart.

Used by ``twistedgw dev-pki`` (so a new user can try mTLS in a minute) and by the
test-suite fixtures, so that tests and the example configuration exercise the same
certificates. Nothing here is meant for production keys.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyType = Literal["ec", "rsa"]

_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str = "twistedgw dev") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and the chain (excluding itself) a client would send."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def full_chain(self) -> tuple[x509.Certificate, ...]:
        return (self.cert, *self.chain)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` (leaf then chain) and ``stem.key``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        crt = directory / f"{stem}.crt"
        key = directory / f"{stem}.key"
        crt.write_bytes(cert_pem(*self.full_chain))
        key.write_bytes(key_pem(self.key))
        key.chmod(0o600)
        return crt, key


def _build(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    signing_key: PrivateKey,
    *,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    eku: tuple[x509.ObjectIdentifier, ...] | None,
    sans: list[x509.GeneralName],
    issuer_key_for_aki: PrivateKey,
    path_length: int | None = None,
    ocsp_url: str | None = None,
    policies: tuple[str, ...] = (),
) -> x509.Certificate:
    """Build a certificate whose base64 DER contains ``+``, ``/`` and ``=``.

    Header encodings that leave those characters raw (AWS ALB) only break on
    certificates that contain them, so every dev certificate does.
    """
    for _ in range(200):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            # A varying serial length varies the DER length, and with it the base64
            # padding: RSA signatures have a fixed size, so only this moves the '='.
            .serial_number((x509.random_serial_number() >> secrets.randbelow(64)) | 1)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key_for_aki.public_key()),
                critical=False,
            )
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if ocsp_url is not None:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(ocsp_url),
                        )
                    ]
                ),
                critical=False,
            )
        if policies:
            builder = builder.add_extension(
                x509.CertificatePolicies(
                    [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in policies]
                ),
                critical=False,
            )
        cert = builder.sign(signing_key, hashes.SHA256())
        b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER))
        if b"+" in b64 and b"/" in b64 and b64.endswith(b"="):
            return cert
    raise RuntimeError("could not build a certificate with +, / and = in its base64")


@dataclass
class Authority:
    """A certificate authority that can issue sub-CAs, clients and servers."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # intermediates above this CA, not the root
    key_type: KeyType = "ec"

    @classmethod
    def root(cls, cn: str, key_type: KeyType = "ec") -> Authority:
        key = new_key(key_type)
        now = _now()
        cert = _build(
            _name(cn),
            _name(cn),
            key.public_key(),
            key,
            ca=True,
            not_before=now - _DAY,
            not_after=now + 3650 * _DAY,
            eku=None,
            sans=[],
            issuer_key_for_aki=key,
        )
        return cls(cert, key, (), key_type)

    def intermediate(
        self,
        cn: str,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Authority:
        """A sub-CA (path length 0), valid for five years from yesterday unless told."""
        key = new_key(self.key_type)
        now = _now()
        cert = _build(
            _name(cn),
            self.cert.subject,
            key.public_key(),
            self.key,
            ca=True,
            path_length=0,
            not_before=not_before or now - _DAY,
            not_after=not_after or now + 1825 * _DAY,
            eku=None,
            sans=[],
            issuer_key_for_aki=self.key,
        )
        parent_chain = (self.cert, *self.chain) if self.chain or not _self_signed(self.cert) else ()
        return Authority(cert, key, parent_chain, self.key_type)

    def issue(
        self,
        cn: str,
        *,
        eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        sans: list[x509.GeneralName] | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        key_type: KeyType | None = None,
        ocsp_url: str | None = None,
        policies: tuple[str, ...] = (),
        key: PrivateKey | None = None,
        ca: bool = False,
    ) -> Issued:
        """A client (by default) certificate; ``ocsp_url`` names an OCSP responder in its AIA,
        ``policies`` go in certificatePolicies, ``key`` reuses a key (a renewal).

        ``ca=True`` asserts ``cA`` in it: a CA certificate presented as a client's,
        which both verification paths must refuse.
        """
        key = key or new_key(key_type or self.key_type)
        now = _now()
        if sans is None:
            sans = (
                [x509.DNSName(cn)]
                if "." in cn
                else [x509.UniformResourceIdentifier(f"urn:twistedgw:client:{cn}")]
            )
        cert = _build(
            _name(cn),
            self.cert.subject,
            key.public_key(),
            self.key,
            ca=ca,
            not_before=not_before or now - _DAY,
            not_after=not_after or now + 365 * _DAY,
            eku=eku,
            sans=sans,
            issuer_key_for_aki=self.key,
            ocsp_url=ocsp_url,
            policies=policies,
        )
        chain = (self.cert, *self.chain) if not _self_signed(self.cert) else ()
        return Issued(cert, key, chain)

    def server(
        self, hostnames: tuple[str, ...] = ("localhost",), key_type: KeyType | None = None
    ) -> Issued:
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        return self.issue(
            hostnames[0], eku=(ExtendedKeyUsageOID.SERVER_AUTH,), sans=sans, key_type=key_type
        )

    def crl(
        self,
        revoked: Iterable[x509.Certificate | int] = (),
        *,
        last_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
        signer: PrivateKey | None = None,
        encoding: Literal["pem", "der"] = "pem",
    ) -> bytes:
        """A CRL from this CA revoking ``revoked`` (certificates or serials).

        Fresh for a day unless ``last_update``/``next_update`` say otherwise (a
        past ``next_update`` makes it stale); ``signer`` forges one with another key.
        """
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update or now - datetime.timedelta(minutes=5))
            .next_update(next_update or now + _DAY)
        )
        for item in revoked:
            serial = item if isinstance(item, int) else item.serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - datetime.timedelta(minutes=5))
                .build()
            )
        crl = builder.sign(signer or self.key, hashes.SHA256())  # type: ignore[arg-type]
        return crl.public_bytes(
            serialization.Encoding.PEM if encoding == "pem" else serialization.Encoding.DER
        )


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def self_signed_client(cn: str, key_type: KeyType = "ec") -> Issued:
    """A self-signed client certificate, to be pinned in a truststore."""
    key = new_key(key_type)
    now = _now()
    cert = _build(
        _name(cn),
        _name(cn),
        key.public_key(),
        key,
        ca=False,
        not_before=now - _DAY,
        not_after=now + 365 * _DAY,
        eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        sans=[x509.UniformResourceIdentifier(f"urn:twistedgw:client:{cn}")],
        issuer_key_for_aki=key,
    )
    return Issued(cert, key)


@dataclass
class DevPki:
    """Where ``generate`` put everything. Paths are absolute."""

    directory: Path
    server_ca: Path
    server_cert: Path
    server_key: Path
    truststore_dir: Path
    truststore_p12: Path
    keystore_p12: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    authorities: dict[str, Authority] = field(default_factory=dict)
    issued: dict[str, Issued] = field(default_factory=dict)

    P12_PASSWORD = "changeit"  # noqa: S105 - a dev PKI, documented as such

    # Backend TLS ([backend_tls]): an https backend's own CA and server certificate
    # (localhost, 127.0.0.1, ::1), and the gateway's client certificate from a CA
    # of its own, for backends that require one.
    @property
    def backend_dir(self) -> Path:
        return self.directory / "backend"

    @property
    def backend_ca(self) -> Path:
        return self.backend_dir / "backend-ca.crt"

    @property
    def backend_cert(self) -> Path:
        return self.backend_dir / "backend.crt"

    @property
    def backend_key(self) -> Path:
        return self.backend_dir / "backend.key"

    @property
    def gateway_client_ca(self) -> Path:
        return self.backend_dir / "gateway-client-ca.crt"

    @property
    def gateway_client_cert(self) -> Path:
        return self.backend_dir / "gateway-client.crt"

    @property
    def gateway_client_key(self) -> Path:
        return self.backend_dir / "gateway-client.key"


IDENTITY_POLICY_OID = "1.3.6.1.4.1.55555.1.1"  # under a private enterprise arc, for tests


def generate(directory: Path, key_type: KeyType = "ec") -> DevPki:
    """Write a complete dev PKI below ``directory``.

    Truststore aliases (file stems / PKCS#12 friendly names):
    ``partner-root`` (root of the ``partner-*`` clients, which chain through an
    intermediate), ``other-root`` (a second trusted CA), ``pinned-client`` (a
    self-signed client pinned by itself) and ``lb-ca`` (issues load-balancer
    certificates). ``intruder`` chains to a CA that is not trusted at all;
    ``ca-as-client`` is a CA certificate (``cA`` asserted, clientAuth) from
    ``partner-root``, which no path may accept as a client's.
    ``identity-app`` carries a DNS, a SPIFFE URI and an e-mail SAN and the
    policy ``IDENTITY_POLICY_OID``; ``identity-renewed`` reuses its key;
    ``acme-app`` and ``globex-app`` are the consumers of the docs' examples.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = _now()

    server_root = Authority.root("twistedgw dev server root", key_type)
    partner_root = Authority.root("twistedgw dev partner root", key_type)
    partner_issuing = partner_root.intermediate("twistedgw dev partner issuing CA")
    other_root = Authority.root("twistedgw dev other root", key_type)
    lb_ca = Authority.root("twistedgw dev load balancer CA", key_type)
    untrusted = Authority.root("twistedgw dev untrusted root", key_type)
    backend_root = Authority.root("twistedgw dev backend root", key_type)
    gateway_client_ca = Authority.root("twistedgw dev gateway client CA", key_type)

    issued: dict[str, Issued] = {
        "server": server_root.server(("localhost",)),
        "partner-app": partner_issuing.issue("partner-app"),
        "partner-direct": partner_root.issue("partner-direct"),
        "partner-rsa": partner_issuing.issue("partner-rsa", key_type="rsa"),
        "expired": partner_issuing.issue(
            "expired-app", not_before=now - 400 * _DAY, not_after=now - 30 * _DAY
        ),
        "not-yet-valid": partner_issuing.issue(
            "future-app", not_before=now + 30 * _DAY, not_after=now + 400 * _DAY
        ),
        "server-only": partner_issuing.issue(
            "server-only-app", eku=(ExtendedKeyUsageOID.SERVER_AUTH,)
        ),
        "other-app": other_root.issue("other-app"),
        "pinned": self_signed_client("pinned-app", key_type),
        "intruder": untrusted.issue("intruder-app"),
        "ca-as-client": partner_root.issue("ca-as-client-app", ca=True),
        "lb": lb_ca.issue("lb.internal"),
        # Identity rules and consumers: every SAN kind and a certificate policy.
        "identity-app": partner_issuing.issue(
            "identity-app",
            sans=[
                x509.DNSName("api.partner.example"),
                x509.UniformResourceIdentifier("spiffe://partner.example/ns/prod/sa/billing"),
                x509.RFC822Name("billing@partner.example"),
            ],
            policies=(IDENTITY_POLICY_OID,),
        ),
        "acme-app": partner_issuing.issue(
            "acme-app",
            sans=[x509.UniformResourceIdentifier("spiffe://acme.example/ns/prod/sa/orders")],
        ),
        "globex-app": other_root.issue(
            "globex-app", sans=[x509.UniformResourceIdentifier("spiffe://globex.example/sa/web")]
        ),
    }
    # The same key, certified again: SPKI pins survive renewal, certificate hashes do not.
    issued["identity-renewed"] = partner_issuing.issue(
        "identity-app",
        key=issued["identity-app"].key,
        sans=[x509.DNSName("api.partner.example")],
    )

    pki = DevPki(
        directory=directory,
        server_ca=directory / "server-ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        truststore_dir=directory / "truststore",
        truststore_p12=directory / "truststore.p12",
        keystore_p12=directory / "keystore.p12",
        authorities={
            "server-root": server_root,
            "partner-root": partner_root,
            "partner-issuing": partner_issuing,
            "other-root": other_root,
            "lb-ca": lb_ca,
            "untrusted": untrusted,
            "backend-root": backend_root,
            "gateway-client-ca": gateway_client_ca,
        },
        issued=issued,
    )
    pki.server_ca.write_bytes(cert_pem(server_root.cert))
    issued["server"].write(directory, "server")

    trust = {
        "partner-root": partner_root.cert,
        "other-root": other_root.cert,
        "pinned-client": issued["pinned"].cert,
        "lb-ca": lb_ca.cert,
    }
    pki.truststore_dir.mkdir(exist_ok=True)
    for alias, cert in trust.items():
        (pki.truststore_dir / f"{alias}.pem").write_bytes(cert_pem(cert))

    password = DevPki.P12_PASSWORD.encode()
    pki.truststore_p12.write_bytes(
        pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(c, alias.encode()) for alias, c in trust.items()],
            serialization.BestAvailableEncryption(password),
        )
    )
    pki.keystore_p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"server",
            issued["server"].key,  # type: ignore[arg-type]
            issued["server"].cert,
            [server_root.cert],
            serialization.BestAvailableEncryption(password),
        )
    )
    pki.keystore_p12.chmod(0o600)

    clients_dir = directory / "clients"
    for stem, item in issued.items():
        if stem != "server":
            pki.clients[stem] = item.write(clients_dir, stem)
    (directory / "untrusted-root.crt").write_bytes(cert_pem(untrusted.cert))
    # For [mutual_ssl] intermediates: completes leaf-only header chains (NGINX, HAProxy).
    (directory / "intermediates.pem").write_bytes(cert_pem(partner_issuing.cert))

    # Not callers of the gateway, so not in clients/: see the DevPki backend_* paths.
    issued["backend"] = backend_root.server(("localhost",))
    issued["gateway-client"] = gateway_client_ca.issue("twistedgw gateway")
    issued["backend"].write(pki.backend_dir, "backend")
    issued["gateway-client"].write(pki.backend_dir, "gateway-client")
    pki.backend_ca.write_bytes(cert_pem(backend_root.cert))
    pki.gateway_client_ca.write_bytes(cert_pem(gateway_client_ca.cert))
    return pki
