"""``twistedgw decode-header``: show what the gateway reads from a certificate header.

When a load balancer integration fails, the operator's first question is "what
did the gateway see?". This answers it offline with the same decoder and
verifier the request path uses, so the answer cannot differ from production.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from cryptography import x509

from twistedgw.identity import HeaderDecodeError, decode, fingerprint
from twistedgw.tls import ChainVerifier, TrustStore

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_DECODE_FAILED = 2


def decode_header_report(
    value: str,
    encoding: str = "auto",
    truststore: TrustStore | None = None,
    chain_value: str | None = None,
) -> tuple[list[str], int]:
    """Printable lines describing the header, and the command's exit code.

    Exit 0: decoded (and verified, when a truststore is given); 1: decoded but
    verification failed; 2: the value could not be decoded.
    """
    try:
        decoded = decode(value, encoding, chain_value)
    except HeaderDecodeError as e:
        return [f"cannot decode header: {e}"], EXIT_DECODE_FAILED
    lines = [f"encoding: {decoded.encoding}"]
    total = len(decoded.certs)
    for i, cert in enumerate(decoded.certs, 1):
        role = "leaf" if i == 1 else "chain"
        lines.append(f"certificate {i} of {total} ({role})")
        lines.extend(f"  {line}" for line in _certificate_lines(cert))
    if truststore is None:
        return lines, EXIT_OK
    identity = ChainVerifier(truststore, cache_size=0).verify(decoded.certs)
    if identity.verified:
        aliases = ", ".join(sorted(identity.trust_aliases))
        lines.append(f"verification: verified (aliases: {aliases})")
        return lines, EXIT_OK
    lines.append(f"verification: failed: {identity.reason}")
    return lines, EXIT_VERIFICATION_FAILED


def _certificate_lines(cert: x509.Certificate) -> list[str]:
    return [
        f"subject: {_name(lambda: cert.subject)}",
        f"issuer: {_name(lambda: cert.issuer)}",
        f"serial: {_hex(cert.serial_number)}",
        f"not before: {_when(cert.not_valid_before_utc)}",
        f"not after: {_when(cert.not_valid_after_utc)}",
        f"sha256: {fingerprint(cert).hex(':').upper()}",
    ]


def _name(get: Callable[[], x509.Name]) -> str:
    """An RFC 4514 name made safe to print; a malformed name must not stop the report."""
    try:
        text = get().rfc4514_string()
    except Exception as e:
        return _printable(f"<unreadable: {e}>")
    return _printable(text) or "<empty>"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _hex(number: int) -> str:
    sign = "-" if number < 0 else ""
    digits = f"{abs(number):X}"
    if len(digits) % 2:
        digits = "0" + digits
    return sign + ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
