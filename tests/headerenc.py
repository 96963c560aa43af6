"""Encode certificates the way each load balancer puts them in a header.

Written from the vendors' documentation (see DESIGN.md, "Load-balancer header
formats"), independently of ``twistedgw.identity._lbheader``, so that decoding what these
produce tests the decoder against the vendors rather than against itself.
Shared by the unit tests and the integration tests that send headers to a
running gateway.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from urllib.parse import quote, quote_plus

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CONCRETE_ENCODINGS = ("url-pem", "aws-alb", "pem", "base64-der", "rfc9440", "xfcc", "traefik")

# Which encodings carry only the leaf (RFC 9440 carries its chain in a second header).
LEAF_ONLY = frozenset({"base64-der"})


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def b64der(cert: x509.Certificate) -> str:
    return base64.b64encode(der(cert)).decode("ascii")


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def url_pem(certs: Sequence[x509.Certificate]) -> str:
    """NGINX ``$ssl_client_escaped_cert``: every byte but ``A-Za-z0-9-._~`` escaped."""
    return quote(pem(*certs), safe="")


def aws_alb(certs: Sequence[x509.Certificate], *, raw: str = "+/=") -> str:
    """AWS ALB ``X-Amzn-Mtls-Clientcert``: URL-encoded PEM chain with ``raw`` left as is.

    ALB leaves ``+ = /`` raw; AWS's own example escapes ``=`` (``raw="+/"``).
    """
    return quote(pem(*certs), safe=raw)


def pem_folded(certs: Sequence[x509.Certificate], *, sep: str = "\t") -> str:
    """NGINX ``$ssl_client_cert`` after header unfolding: PEM lines joined by ``sep``."""
    return sep.join(pem(*certs).strip().splitlines())


def base64_der(cert: x509.Certificate, *, quoted: bool = False) -> str:
    """HAProxy ``%[ssl_c_der,base64]`` (``%{+Q}`` adds the quotes), Cloudflare."""
    value = b64der(cert)
    return f'"{value}"' if quoted else value


def rfc9440(cert: x509.Certificate) -> str:
    """RFC 9440 ``Client-Cert``: a structured-field byte sequence."""
    return f":{b64der(cert)}:"


def rfc9440_chain(certs: Iterable[x509.Certificate]) -> str:
    """RFC 9440 ``Client-Cert-Chain``: the certificates after the leaf."""
    return ", ".join(rfc9440(c) for c in certs)


def traefik(certs: Sequence[x509.Certificate], *, escaped: bool = False) -> str:
    """Traefik ``X-Forwarded-Tls-Client-Cert``; ``escaped`` as before v2.9.2 (QueryEscape)."""
    value = ",".join(b64der(c) for c in certs)
    return quote_plus(value, safe="") if escaped else value


def quoted(value: str) -> str:
    """A double-quoted xfcc value, ``"`` and backslash escaped with a backslash."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xfcc_quote(value: str) -> str:
    """Envoy's quoting: values holding ``,;="`` or a backslash go in double quotes."""
    return quoted(value) if any(c in value for c in ',;="\\') else value


def xfcc_element(
    cert: x509.Certificate | None = None,
    chain: Sequence[x509.Certificate] = (),
    *,
    by: str | None = "spiffe://cluster.local/ns/default/sa/gateway",
    include_hash: bool = True,
    subject: str | None = None,
    uri: str | None = None,
    dns: Sequence[str] = (),
) -> str:
    """One proxy hop's element, keys in Envoy's order; Cert and Chain quoted as Envoy does."""
    pairs: list[str] = []
    if by is not None:
        pairs.append(f"By={xfcc_quote(by)}")
    leaf = cert if cert is not None else (chain[0] if chain else None)
    if include_hash and leaf is not None:
        pairs.append(f"Hash={hashlib.sha256(der(leaf)).hexdigest()}")
    if cert is not None:
        pairs.append(f'Cert="{url_pem([cert])}"')
    if chain:
        pairs.append(f'Chain="{url_pem(chain)}"')
    if subject is not None:
        pairs.append(f"Subject={quoted(subject)}")
    if uri is not None:
        pairs.append(f"URI={xfcc_quote(uri)}")
    pairs.extend(f"DNS={xfcc_quote(d)}" for d in dns)
    return ";".join(pairs)


def xfcc(
    cert: x509.Certificate | None = None,
    chain: Sequence[x509.Certificate] = (),
    *,
    previous: Sequence[str] = (),
    subject: str | None = None,
    by: str | None = "spiffe://cluster.local/ns/default/sa/gateway",
    include_hash: bool = True,
) -> str:
    """A whole ``x-forwarded-client-cert`` value: earlier hops' elements, then ours (last)."""
    element = xfcc_element(cert, chain, by=by, include_hash=include_hash, subject=subject)
    return ",".join([*previous, element])


def encode(certs: Sequence[x509.Certificate], encoding: str) -> str:
    """``certs`` (leaf first) as ``encoding`` puts them; see :func:`chain_value_for`."""
    certs = list(certs)
    leaf = certs[0]
    if encoding == "url-pem":
        return url_pem(certs)
    if encoding == "aws-alb":
        return aws_alb(certs)
    if encoding == "pem":
        return pem_folded(certs)
    if encoding == "base64-der":
        return base64_der(leaf)
    if encoding == "rfc9440":
        return rfc9440(leaf)
    if encoding == "xfcc":
        return xfcc(leaf, certs if len(certs) > 1 else ())
    if encoding == "traefik":
        return traefik(certs)
    raise ValueError(f"no such encoding: {encoding}")


def chain_value_for(certs: Sequence[x509.Certificate], encoding: str) -> str | None:
    """The companion chain header an encoding needs (only RFC 9440 has one)."""
    if encoding == "rfc9440" and len(certs) > 1:
        return rfc9440_chain(certs[1:])
    return None


def decodable_certs(
    certs: Sequence[x509.Certificate], encoding: str
) -> tuple[x509.Certificate, ...]:
    """What a decoder should return for ``encode(certs, encoding)`` plus its chain value."""
    return (certs[0],) if encoding in LEAF_ONLY else tuple(certs)
