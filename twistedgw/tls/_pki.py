"""Keystores and truststores, loaded into ``cryptography`` objects.

A truststore is a set of *aliases*, each naming one certificate that is either an
*issuer* (a CA whose descendants are trusted) or a *pinned* client certificate
(trusted as itself, and only as itself), never both. APIs grant access by alias,
as WSO2's ``aliasList`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from twistedgw.identity import fingerprint

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class PkiError(Exception):
    """A keystore or truststore could not be used; the message names the file."""


@dataclass(frozen=True)
class TrustEntry:
    alias: str
    cert: x509.Certificate
    sha256: bytes
    # A pinned entry passes a leaf byte-identical to it and nothing else: it is never a
    # trust anchor, so a certificate it signed is not trusted (#22 item 7). None: by the
    # default rule (pinned unless it asserts CA:TRUE); TrustStore.classified decides.
    pinned: bool | None = None

    def __post_init__(self) -> None:
        if self.pinned is None:
            object.__setattr__(self, "pinned", not self.is_ca)

    @property
    def is_pinned(self) -> bool:
        return bool(self.pinned)

    @property
    def is_ca(self) -> bool:
        try:
            return self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
            return False  # pinned: it passes a byte-identical leaf, and signs for nobody


@dataclass(frozen=True)
class TrustStore:
    """Trusted certificates by alias; immutable, swapped whole on reload."""

    source: str
    entries: tuple[TrustEntry, ...]
    _by_fp: dict[bytes, TrustEntry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_fp.update({e.sha256: e for e in self.entries})

    @property
    def aliases(self) -> frozenset[str]:
        return frozenset(e.alias for e in self.entries)

    @property
    def certificates(self) -> list[x509.Certificate]:
        """Every entry's certificate (issuers and pinned): the CA names to advertise."""
        return [e.cert for e in self.entries]

    @property
    def issuers(self) -> list[x509.Certificate]:
        """The trust anchors: what chains are verified against."""
        return [e.cert for e in self.entries if not e.is_pinned]

    def pinned_entry(self, leaf_sha256: bytes) -> TrustEntry | None:
        """The pinned entry byte-identical to the leaf with this SHA-256, if any."""
        entry = self._by_fp.get(leaf_sha256)
        return entry if entry is not None and entry.is_pinned else None

    def classified(self, pinned_aliases: Iterable[str] | None = None) -> TrustStore:
        """This truststore with each entry an issuer or pinned.

        An entry that does not assert ``CA:TRUE`` can issue nothing, so it is pinned;
        one that does is an issuer unless ``pinned_aliases`` names it (``openssl req
        -x509`` asserts ``CA:TRUE`` in a self-signed client certificate by default).
        """
        named = frozenset(pinned_aliases or ())
        return TrustStore(
            self.source,
            tuple(
                TrustEntry(e.alias, e.cert, e.sha256, e.alias in named or not e.is_ca)
                for e in self.entries
            ),
        )

    def aliases_in_chain(self, chain: tuple[x509.Certificate, ...]) -> frozenset[str]:
        """The aliases of the truststore entries that appear in a *verified* chain.

        A pinned entry names a chain only when it is the whole chain: a pinned
        certificate that also sits inside a chain to an issuer (itself a CA that
        issuer certified) vouches for nothing it signed.
        """
        found = set()
        for cert in chain:
            entry = self._by_fp.get(fingerprint(cert))
            if entry is not None and (not entry.is_pinned or len(chain) == 1):
                found.add(entry.alias)
        return frozenset(found)

    def subset(self, aliases: frozenset[str]) -> TrustStore:
        return TrustStore(self.source, tuple(e for e in self.entries if e.alias in aliases))


@dataclass(frozen=True)
class KeyStore:
    """The gateway's own certificate, its chain and private key."""

    source: str
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path}: file not found") from None
    except OSError as e:
        raise PkiError(f"{what} {path}: {e.strerror}") from None


def load_pem_certificates(path: Path, what: str = "certificate file") -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise PkiError(f"{what} {path}: no PEM or DER certificate in it") from None
    return certs


def load_truststore(path: Path, password: str | None = None) -> TrustStore:
    """A directory of PEM files (alias = file stem) or a PKCS#12 file (alias = friendly name).

    A PEM file with several certificates gives ``stem``, ``stem-2``, ``stem-3`` ...
    """
    entries: list[TrustEntry] = []
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in {".pem", ".crt", ".cer", ".der"}
        )
        for f in files:
            for i, cert in enumerate(load_pem_certificates(f, "truststore entry")):
                alias = f.stem if i == 0 else f"{f.stem}-{i + 1}"
                entries.append(TrustEntry(alias, cert, fingerprint(cert)))
    elif path.is_file():
        data = _read(path, "truststore")
        try:
            p12 = pkcs12.load_pkcs12(data, password.encode() if password is not None else None)
        except ValueError:
            raise PkiError(
                f"truststore {path}: not a PKCS#12 file, or the truststore_password is wrong"
            ) from None
        certs = list(p12.additional_certs)
        if p12.cert is not None:
            certs.insert(0, p12.cert)
        for i, pc in enumerate(certs):
            alias = (
                pc.friendly_name.decode("utf-8", "replace") if pc.friendly_name else f"cert-{i + 1}"
            )
            entries.append(TrustEntry(alias, pc.certificate, fingerprint(pc.certificate)))
    else:
        raise PkiError(f"truststore {path}: no such file or directory")
    if not entries:
        raise PkiError(f"truststore {path}: contains no certificates")
    seen: set[str] = set()
    for e in entries:
        if e.alias in seen:
            raise PkiError(f"truststore {path}: alias {e.alias!r} appears twice")
        seen.add(e.alias)
    # Issuers and pinned entries by the default rule; [tls] pinned_aliases may pin more.
    return TrustStore(str(path), tuple(entries)).classified()


def load_keystore_pem(
    cert_path: Path,
    key_path: Path,
    *,
    cert_what: str = "tls.certificate",
    key_what: str = "tls.private_key",
) -> KeyStore:
    """A PEM certificate (leaf first, then its chain) and its unencrypted PEM key.

    ``cert_what``/``key_what`` name the config keys in error messages.
    """
    certs = load_pem_certificates(cert_path, cert_what)
    data = _read(key_path, key_what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{key_what} {key_path}: not an unencrypted PEM private key") from None
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise PkiError(f"{key_what} {key_path}: unsupported key type")
    _check_pair(certs[0], key, f"{key_what} {key_path}")
    return KeyStore(str(cert_path), certs[0], key, tuple(certs[1:]))


def load_keystore_p12(path: Path, password: str | None) -> KeyStore:
    data = _read(path, "tls.keystore")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(
            data, password.encode() if password is not None else None
        )
    except ValueError:
        raise PkiError(
            f"tls.keystore {path}: not a PKCS#12 file, or the keystore_password is wrong"
        ) from None
    if key is None or cert is None:
        raise PkiError(f"tls.keystore {path}: needs a private key and its certificate")
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise PkiError(f"tls.keystore {path}: unsupported key type")
    _check_pair(cert, key, str(path))
    return KeyStore(str(path), cert, key, tuple(extra))


def _check_pair(cert: x509.Certificate, key: PrivateKey, where: str) -> None:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if cert.public_key().public_bytes(enc, fmt) != key.public_key().public_bytes(enc, fmt):
        raise PkiError(f"{where}: the private key does not match the certificate")


def describe_certificate(cert: x509.Certificate) -> str:
    """One line for logs: subject and expiry, never the certificate itself."""
    return f"{cert.subject.rfc4514_string()} (expires {cert.not_valid_after_utc:%Y-%m-%d})"
