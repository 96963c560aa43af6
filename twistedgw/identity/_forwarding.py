"""What the backend learns about the caller: identity headers set from the verified certificate.

Spoof-proof by construction: every header a backend could read an identity
from (``x-forwarded-client-cert``, RFC 9440 ``Client-Cert``/``Client-Cert-Chain``
and the configured ``[identity.headers]``) is removed from every request,
whatever ``forward`` is, and set again only from a certificate that passed this
API's mTLS check. Envoy's SANITIZE_SET is the model for XFCC: the gateway is the
first hop, so no earlier element is kept.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twistedgw.config import ApiConfig, IdentityConfig, Mode
from twistedgw.identity._identity import ClientIdentity, fingerprint

XFCC = b"x-forwarded-client-cert"
CLIENT_CERT = b"client-cert"
CLIENT_CERT_CHAIN = b"client-cert-chain"
# Certificate and verification headers that load balancers commonly set. A backend
# behind the gateway may still trust one of them (a WSO2 or NGINX set-up that used
# to sit there did), so a caller must never be able to deliver one. The only
# exception is the configured certificate header from a trusted load balancer with
# forward_client_certificate_header on (http/_resource.py keeps that one).
LOAD_BALANCER_HEADERS = frozenset(
    {
        b"x-ssl-cert",
        b"x-ssl-client-cert",
        b"x-ssl-client-verify",
        b"x-ssl-client-s-dn",
        b"x-ssl-client-i-dn",
        b"x-client-cert",
        b"x-client-verify",
        b"ssl-client-cert",
        b"ssl-client-verify",
        b"x-amzn-mtls-clientcert",
        b"x-amzn-mtls-clientcert-leaf",
        b"x-amzn-mtls-clientcert-serial-number",
        b"x-amzn-mtls-clientcert-issuer",
        b"x-amzn-mtls-clientcert-subject",
        b"x-amzn-mtls-clientcert-validity",
        b"x-forwarded-tls-client-cert",
        b"x-forwarded-tls-client-cert-info",
        b"cf-client-cert-der-base64",
        b"x-arr-clientcert",
    }
)
# The consumer the gateway mapped the caller to ([[consumers]]); set only by the gateway.
CONSUMER_NAME = b"x-consumer-name"
# What the authz endpoint answers a load balancer with (the API and the caller's
# principal): a backend behind NGINX may read them, so a caller never sends them.
AUTHZ_ANSWER_HEADERS = frozenset({b"x-twistedgw-api", b"x-twistedgw-principal"})
ALWAYS_STRIPPED = (
    frozenset({XFCC, CLIENT_CERT, CLIENT_CERT_CHAIN, CONSUMER_NAME})
    | LOAD_BALANCER_HEADERS
    | AUTHZ_ANSWER_HEADERS
)

Headers = list[tuple[bytes, bytes]]


def stripped(settings: IdentityConfig) -> frozenset[bytes]:
    """Lower-case names of every identity header a caller must never be able to send."""
    return ALWAYS_STRIPPED | {name.lower().encode() for _f, name in settings.headers}


_DISABLED = Mode.DISABLED  # a module constant: an Enum class attribute costs ~800 instructions


def mtls_passed(identity: ClientIdentity, api: ApiConfig) -> bool:
    """Did the certificate pass this API's mTLS check (not merely verify somewhere)?"""
    return (
        api.mutual_ssl is not _DISABLED
        and identity.verified
        and identity.leaf is not None
        and (api.aliases is None or bool(identity.trust_aliases & api.aliases))
    )


def _url_pem(cert: x509.Certificate) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), safe="")


def _b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The URI and DNS names, leaving out any value with a control character: no header
    can carry it, and no identity rule matches one (config refuses them in rules)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return [], []
    return (
        [v for v in san.get_values_for_type(x509.UniformResourceIdentifier) if _printable(v)],
        [v for v in san.get_values_for_type(x509.DNSName) if _printable(v)],
    )


def _printable(value: str) -> bool:
    return all(" " <= c <= "~" for c in value)


# Characters a SAN value may hold and still be written bare in the ``san`` field.
_BARE = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(',;="\\')


def _san_item(kind: str, value: str) -> str:
    """``KIND=value``, the value double-quoted (``\\`` escaping ``"`` and ``\\``) when it
    holds a separator, a quote, a backslash or a space, or is empty."""
    if value and all(c in _BARE for c in value):
        return f"{kind}={value}"
    return f'{kind}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def san_field(cert: x509.Certificate) -> str:
    """The ``san`` identity field: ``URI=...`` then ``DNS=...`` items joined by ``,``.

    Each value is typed and, where it could be read as more than one, quoted: a URI
    SAN ``urn:x,spiffe://bank.example/sa/admin`` is ``URI="urn:x,spiffe://..."``, one
    value, where a bare join once made it two (#22 item 12). The quoting is XFCC's.
    """
    uris, dns = _sans(cert)
    return ",".join([*(_san_item("URI", u) for u in uris), *(_san_item("DNS", d) for d in dns)])


def _xfcc_value(value: str, *, always_quote: bool = False) -> str:
    """Envoy quotes values holding ``,;=`` (and always the Subject), escaping ``"`` and ``\\``."""
    if always_quote or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc(chain: Sequence[x509.Certificate]) -> str:
    """One XFCC element for the verified leaf: Hash, Cert, Subject, URI and DNS SANs."""
    leaf = chain[0]
    parts = [
        f"Hash={fingerprint(leaf).hex()}",
        f"Cert={_xfcc_value(_url_pem(leaf))}",
        f"Subject={_xfcc_value(leaf.subject.rfc4514_string(), always_quote=True)}",
    ]
    uris, dns = _sans(leaf)
    parts += [f"URI={_xfcc_value(u)}" for u in uris]
    parts += [f"DNS={_xfcc_value(d)}" for d in dns]
    return ";".join(parts)


def _field(name: str, chain: Sequence[x509.Certificate]) -> str:
    leaf = chain[0]
    if name == "subject":
        return leaf.subject.rfc4514_string()
    if name == "issuer":
        return leaf.issuer.rfc4514_string()
    if name == "serial":
        return format(leaf.serial_number, "x")
    if name == "sha256":
        return fingerprint(leaf).hex()
    if name == "cert":
        return _url_pem(leaf)
    if name == "san":
        return san_field(leaf)
    raise ValueError(f"unknown identity field {name!r}")


def headers_for(settings: IdentityConfig, identity: ClientIdentity) -> Headers:
    """The identity headers for a certificate that passed; latin-1 safe, no line breaks."""
    chain = identity.chain
    if settings.forward == "none" or not chain:
        return []
    if settings.forward == "xfcc":
        return [(XFCC, xfcc(chain).encode("latin-1", "replace"))]
    if settings.forward == "rfc9440":
        out = [(CLIENT_CERT, f":{_b64(chain[0])}:".encode())]
        # Intermediates only: RFC 9440 leaves out the leaf, and the anchor is the backend's to know.
        middle = chain[1:-1]
        if middle:
            out.append((CLIENT_CERT_CHAIN, ", ".join(f":{_b64(c)}:" for c in middle).encode()))
        return out
    return [
        (
            name.encode(),
            _field(f, chain).encode("latin-1", "replace").replace(b"\r", b"").replace(b"\n", b""),
        )
        for f, name in settings.headers
    ]
