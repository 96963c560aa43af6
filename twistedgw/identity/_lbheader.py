"""Decoders for the certificate headers load balancers send, and ``auto`` detection.

Every vendor escapes the certificate differently, and a decoder that is almost
right fails only on certificates whose base64 happens to hold ``+``, ``/`` or
``=`` (the AWS ALB bug: ``+`` read as a space). So each format has its own strict
decoder, ``auto`` recognises each by a feature no other format shares, and every
failure is a :class:`HeaderDecodeError` whose message names the problem without
echoing the (attacker-supplied, possibly huge) value.

The formats, by the name used in ``header_encoding``:

``url-pem``     NGINX ``$ssl_client_escaped_cert``: PEM, everything but
                ``A-Za-z0-9-._~`` percent-escaped.
``aws-alb``     AWS ALB ``X-Amzn-Mtls-Clientcert``: URL-encoded PEM chain, leaf
                first, ``+ / =`` left raw (escaped forms accepted too).
``pem``         PEM folded onto one line (NGINX ``$ssl_client_cert``) or plain PEM.
``base64-der``  base64 DER, optionally double-quoted (HAProxy, Cloudflare).
``rfc9440``     ``Client-Cert: :<base64 DER>:`` plus ``Client-Cert-Chain``.
``xfcc``        Envoy ``x-forwarded-client-cert`` (``Cert=`` / ``Chain=``).
``traefik``     base64 DER certificates joined by ``,``, URL-escaped before v2.9.2.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ENCODINGS: tuple[str, ...] = (
    "auto",
    "url-pem",
    "aws-alb",
    "pem",
    "base64-der",
    "rfc9440",
    "xfcc",
    "traefik",
)

MAX_VALUE_LENGTH = 64 * 1024
"""Longer values are refused unread: ten certificates fit easily in far less."""

MAX_CERTIFICATES = 10
"""More certificates than any real chain has; bounds parsing work per request."""

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_BEGIN_ESCAPED = "-----BEGIN%20CERTIFICATE-----"

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_URL_PEM_CHARS = _UNRESERVED | {"%"}
_ALB_RAW = frozenset("+/=")
_ALB_CHARS = _URL_PEM_CHARS | _ALB_RAW
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_TRAEFIK_CHARS = _B64_CHARS | {",", "%", " ", "\t"}

_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_WS_RE = re.compile(r"\s+")
_XFCC_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_XFCC_START_RE = re.compile(r"(?i)(by|hash|cert|chain|subject|uri|dns)\s*=")
_XFCC_KEYS = frozenset({"by", "hash", "cert", "chain", "subject", "uri", "dns"})


class HeaderDecodeError(ValueError):
    """The header value is not a certificate in the expected format.

    ``str(e)`` is one line of plain words and never contains the whole value.
    """


class _FormatMismatch(HeaderDecodeError):
    """The value is not in the requested format at all (rather than a damaged one)."""


@dataclass(frozen=True)
class DecodedHeader:
    """The certificates a header carried.

    ``encoding`` is the concrete format (never ``auto``), so logs and the
    ``decode-header`` command can tell an operator what ``auto`` chose.
    """

    encoding: str
    certs: tuple[x509.Certificate, ...]  # leaf first, then any chain certificates sent

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]


def decode(value: str, encoding: str = "auto", chain_value: str | None = None) -> DecodedHeader:
    """Decode a certificate header value.

    ``chain_value`` is the RFC 9440 ``Client-Cert-Chain`` header and is used only
    when the value is ``rfc9440``. Raises :class:`HeaderDecodeError` and nothing
    else, whatever the input.
    """
    if encoding not in ENCODINGS:
        raise HeaderDecodeError(
            f"unknown header encoding {encoding[:40]!r}; expected one of {', '.join(ENCODINGS)}"
        )
    text = _prepare(value, "header value")
    if encoding == "auto":
        detected = _sniff(text)
        if detected is None:
            raise HeaderDecodeError(
                "not a recognised certificate header format (expected URL-encoded PEM, PEM, "
                "base64 DER, RFC 9440 :base64:, Envoy XFCC or Traefik)"
            )
        encoding = detected
    decoder = _DECODERS[encoding]
    try:
        certs = decoder(text, chain_value)
    except _FormatMismatch as e:
        guess = _sniff(text)
        reason = str(e)
        if guess is not None and guess != encoding and "looks like" not in reason:
            raise HeaderDecodeError(f"{reason} (the value looks like {guess})") from None
        raise HeaderDecodeError(reason) from None
    return DecodedHeader(encoding, tuple(certs))


def sniff(value: str) -> str | None:
    """The concrete encoding ``auto`` would choose for ``value``, or None."""
    try:
        text = _prepare(value, "header value")
    except HeaderDecodeError:
        return None
    return _sniff(text)


# --------------------------------------------------------------------------- helpers


def _prepare(value: str, what: str) -> str:
    """Bound, check and trim a raw value before any format-specific work."""
    if len(value) > MAX_VALUE_LENGTH:
        raise HeaderDecodeError(f"{what} is larger than {MAX_VALUE_LENGTH // 1024} KiB")
    if not value.isascii():
        raise HeaderDecodeError(f"{what} contains non-ASCII characters")
    text = value.strip()
    if not text:
        raise HeaderDecodeError(f"{what} is empty")
    return text


def _sniff(text: str) -> str | None:
    """Pick the format by a feature only that format has; None when nothing fits."""
    if text.startswith(":"):
        return "rfc9440"
    if text.startswith(_BEGIN_ESCAPED):
        return "aws-alb" if any(c in _ALB_RAW for c in text) else "url-pem"
    if text.startswith("-----BEGIN"):
        return "pem"
    if _XFCC_START_RE.match(text):
        return "xfcc"
    if text.startswith('"'):
        return "base64-der"
    if _first_outside(text, _TRAEFIK_CHARS) is None:
        if "," in text or "%" in text:
            return "traefik"
        return "base64-der"
    return None


@functools.cache
def _outside(allowed: frozenset[str]) -> re.Pattern[str]:
    """A one-character class of what ``allowed`` lacks: a search is one C loop."""
    return re.compile("[^" + "".join(re.escape(c) for c in sorted(allowed)) + "]")


def _first_outside(text: str, allowed: frozenset[str]) -> tuple[int, str] | None:
    found = _outside(allowed).search(text)
    return (found.start(), found.group()) if found is not None else None


MAX_ESCAPES = 8192
"""Percent-escapes one value may hold: ten URL-encoded PEM certificates need a few
hundred each; each costs ``unquote`` a step."""


def _percent_decode(text: str, what: str) -> str:
    """``unquote`` (never ``unquote_plus``: a raw ``+`` is base64, not a space)."""
    if text.count("%") > MAX_ESCAPES:
        raise HeaderDecodeError(f"{what} has more than {MAX_ESCAPES} percent-escapes")
    bad = _BAD_ESCAPE_RE.search(text)
    if bad is not None:
        if bad.start() >= len(text) - 2:
            raise HeaderDecodeError(f"{what} is truncated (it ends inside a percent-escape)")
        raise HeaderDecodeError(f"{what} has a malformed percent-escape at position {bad.start()}")
    try:
        return unquote(text, encoding="ascii", errors="strict")
    except UnicodeDecodeError:
        raise HeaderDecodeError(f"{what} has percent-escapes of non-ASCII bytes") from None


def _b64decode(text: str, what: str) -> bytes:
    if not text:
        raise HeaderDecodeError(f"{what} is empty")
    if not _B64_RE.fullmatch(text):
        raise HeaderDecodeError(f"{what} is not valid base64")
    if len(text) % 4:
        if "=" in text or len(text) % 4 == 1:
            raise HeaderDecodeError(f"{what} has a wrong base64 length (truncated?)")
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HeaderDecodeError(f"{what} is not valid base64") from None


def _load_der(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except Exception:  # any parser complaint means the same thing here
        raise HeaderDecodeError(
            f"{what} is not a valid X.509 certificate (truncated or corrupt DER)"
        ) from None


def _check_count(n: int) -> None:
    if n > MAX_CERTIFICATES:
        raise HeaderDecodeError(f"header carries more than {MAX_CERTIFICATES} certificates")


def _parse_pem(text: str, what: str) -> list[x509.Certificate]:
    """Certificates from PEM text whose lines may be folded with any whitespace."""
    text = text.strip()
    if not text:
        raise HeaderDecodeError(f"{what} is empty")
    ders: list[bytes] = []
    pos = 0
    while pos < len(text):
        if not text.startswith(_BEGIN, pos):
            if ders:
                raise HeaderDecodeError(f"{what} has unexpected text after certificate {len(ders)}")
            raise _FormatMismatch(f"{what} does not start with {_BEGIN}")
        n = len(ders) + 1
        _check_count(n)
        start = pos + len(_BEGIN)
        end = text.find(_END, start)
        if end < 0:
            raise HeaderDecodeError(f"{what}: certificate {n} is truncated (no {_END} line)")
        body = _WS_RE.sub("", text[start:end])
        if "-----" in body:
            raise HeaderDecodeError(
                f"{what}: certificate {n} is truncated (a new BEGIN before END)"
            )
        ders.append(_b64decode(body, f"{what}: certificate {n}"))
        pos = end + len(_END)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return [_load_der(der, f"{what}: certificate {i}") for i, der in enumerate(ders, 1)]


# --------------------------------------------------------------------------- formats


def _url_encoded_pem(text: str, *, allow_raw: bool, name: str) -> list[x509.Certificate]:
    if not text.startswith(_BEGIN_ESCAPED):
        # Checked first: a raw '+' or '/' says "AWS ALB" only in a URL-encoded PEM
        # (base64 DER has them too, and decode() names the format it looks like).
        raise _FormatMismatch(f"{name} value does not start with {_BEGIN_ESCAPED}")
    bad = _first_outside(text, _ALB_CHARS if allow_raw else _URL_PEM_CHARS)
    if bad is not None:
        i, c = bad
        if not allow_raw and c in _ALB_RAW:
            raise _FormatMismatch(
                f"{name} value has a raw {c!r} at position {i}, so it is not fully escaped; "
                "this looks like an AWS ALB header (X-Amzn-Mtls-Clientcert): use encoding aws-alb"
            )
        raise _FormatMismatch(f"{name} value has an unexpected character {c!r} at position {i}")
    return _parse_pem(_percent_decode(text, f"{name} value"), f"{name} value")


def _decode_url_pem(text: str, _chain: str | None) -> list[x509.Certificate]:
    return _url_encoded_pem(text, allow_raw=False, name="url-pem")


def _decode_aws_alb(text: str, _chain: str | None) -> list[x509.Certificate]:
    return _url_encoded_pem(text, allow_raw=True, name="aws-alb")


def _decode_pem(text: str, _chain: str | None) -> list[x509.Certificate]:
    if not text.startswith(_BEGIN):
        raise _FormatMismatch(f"pem value does not start with {_BEGIN}")
    return _parse_pem(text, "pem value")


def _decode_base64_der(text: str, _chain: str | None) -> list[x509.Certificate]:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    if "," in text:
        raise _FormatMismatch("base64-der value holds one certificate but has commas")
    if "%" in text:
        raise _FormatMismatch("base64-der value has percent-escapes")
    bad = _first_outside(text, _B64_CHARS)
    if bad is not None:
        i, c = bad
        raise _FormatMismatch(f"base64-der value has an unexpected character {c!r} at position {i}")
    return [_load_der(_b64decode(text, "base64-der value"), "base64-der value")]


def _sf_binary(item: str, what: str) -> bytes:
    """An RFC 8941 byte sequence ``:base64:``."""
    item = item.strip()
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise _FormatMismatch(f"{what} is not an RFC 9440 byte sequence (:base64:)")
    return _b64decode(item[1:-1], what)


def _decode_rfc9440(text: str, chain: str | None) -> list[x509.Certificate]:
    leaf_der = _sf_binary(text, "rfc9440 Client-Cert")
    ders = [leaf_der]
    if chain is not None:
        chain_text = _prepare(chain, "Client-Cert-Chain value") if chain.strip() else ""
        if chain_text:
            items = chain_text.split(",")
            _check_count(1 + len(items))
            for i, item in enumerate(items, 1):
                try:
                    ders.append(_sf_binary(item, f"Client-Cert-Chain item {i}"))
                except _FormatMismatch as e:  # the chain is not the value being sniffed
                    raise HeaderDecodeError(str(e)) from None
    certs = [_load_der(leaf_der, "rfc9440 Client-Cert")]
    certs += [_load_der(d, f"Client-Cert-Chain item {i}") for i, d in enumerate(ders[1:], 1)]
    return certs


@functools.cache
def _field(sep: str) -> re.Pattern[str]:
    """One ``sep``-separated field: text outside quotes and whole quoted strings
    (backslash escapes inside). Possessive throughout, so a match never backtracks:
    linear in the value, in one C loop."""
    return re.compile(rf'[^"{sep}]*+(?:"(?:[^"\\]++|\\.)*+"[^"{sep}]*+)*+', re.DOTALL)


_QUOTED = re.compile(r'"((?:[^"\\]++|\\.)*+)"', re.DOTALL)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside double quotes (with backslash escapes).

    One regex match per field (a Python loop per character cost milliseconds on a
    value at the header size limit).
    """
    if '"' not in text:
        return text.split(sep)
    match = _field(sep).match
    parts: list[str] = []
    pos = 0
    while True:
        end = match(text, pos).end()  # type: ignore[union-attr]  # it matches "" at least
        parts.append(text[pos:end])
        if end == len(text):
            return parts
        if text[end] != sep:  # a quote that never closes
            raise HeaderDecodeError("xfcc value has an unterminated quoted string")
        pos = end + 1


def _xfcc_value(raw: str, key: str) -> str:
    raw = raw.strip()
    if not raw.startswith('"'):
        if '"' in raw:
            raise HeaderDecodeError(f"xfcc {key} value has a stray double quote")
        return raw
    quoted = _QUOTED.match(raw)
    if quoted is None:
        raise HeaderDecodeError(f"xfcc {key} value has an unterminated quoted string")
    if raw[quoted.end() :].strip():
        raise HeaderDecodeError(f"xfcc {key} value has text after its closing quote")
    return _unescape(quoted.group(1))


def _unescape(content: str) -> str:
    """Each backslash escapes the character after it. Escaped backslashes are paired
    left to right first (as a reader meets them), parked on a character no ASCII value
    holds, then the remaining backslashes dropped: three C passes, no per-match work."""
    if "\\" not in content:
        return content
    return content.replace("\\\\", "\uffff").replace("\\", "").replace("\uffff", "\\")


MAX_XFCC_SEPARATORS = 1024
"""More ``,``, ``;``, ``"`` or ``\\`` in an XFCC value than this is refused unread: a
chain of proxies names a handful of keys each, and every one costs a step to parse."""


def _decode_xfcc(text: str, _chain: str | None) -> list[x509.Certificate]:
    if "=" not in text:
        raise _FormatMismatch("not an xfcc value (expected key=value pairs such as Cert=...)")
    for mark in ',;"\\':
        if text.count(mark) > MAX_XFCC_SEPARATORS:
            raise HeaderDecodeError(
                f"xfcc value has more than {MAX_XFCC_SEPARATORS} {mark!r} characters"
            )
    # One element per proxy hop; the last was added by the proxy nearest to us.
    element = _split_outside_quotes(text, ",")[-1].strip()
    if not element:
        raise HeaderDecodeError("xfcc value ends with an empty element")
    pairs: dict[str, list[str]] = {}
    for pair in _split_outside_quotes(element, ";"):
        if not pair.strip():
            continue
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not _XFCC_KEY_RE.fullmatch(key):
            raise _FormatMismatch("not an xfcc value (expected key=value pairs such as Cert=...)")
        pairs.setdefault(key.lower(), []).append(_xfcc_value(raw, key))
    if not _XFCC_KEYS.intersection(pairs):
        raise _FormatMismatch(
            "not an xfcc value (no By, Hash, Cert, Chain, Subject, URI or DNS key)"
        )
    cert_values = pairs.get("cert", [])
    chain_values = pairs.get("chain", [])
    if not cert_values and not chain_values:
        raise HeaderDecodeError("xfcc element carries no Cert or Chain")
    if len(cert_values) > 1 or len(chain_values) > 1:
        raise HeaderDecodeError("xfcc element has more than one Cert or Chain")
    leaf: x509.Certificate | None = None
    if cert_values:
        certs = _parse_pem(_percent_decode(cert_values[0], "xfcc Cert"), "xfcc Cert")
        if len(certs) != 1:
            raise HeaderDecodeError(f"xfcc Cert carries {len(certs)} certificates; expected one")
        leaf = certs[0]
    chain: list[x509.Certificate] = []
    if chain_values:
        chain = _parse_pem(_percent_decode(chain_values[0], "xfcc Chain"), "xfcc Chain")
    if leaf is None:
        leaf = chain[0]
    result = [leaf] + [c for c in chain if c != leaf]
    _check_count(len(result))
    for hash_value in pairs.get("hash", []):
        digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
        if hash_value.replace(":", "").lower() != digest:
            raise HeaderDecodeError("xfcc Hash does not match the certificate it carries")
    return result


def _decode_traefik(text: str, _chain: str | None) -> list[x509.Certificate]:
    if text.startswith('"'):
        raise _FormatMismatch("traefik value is never quoted")
    bad = _first_outside(text, _TRAEFIK_CHARS)
    if bad is not None:
        i, c = bad
        raise _FormatMismatch(f"traefik value has an unexpected character {c!r} at position {i}")
    if "%" in text:  # Traefik before v2.9.2 URL-escaped the whole list
        text = _percent_decode(text, "traefik value")
        bad = _first_outside(text, _TRAEFIK_CHARS - {"%"})
        if bad is not None:
            raise HeaderDecodeError(
                f"traefik value has an unexpected escaped character at position {bad[0]}"
            )
    _check_count(text.count(",") + 1)  # before any list is made of them
    items = [item.strip() for item in text.split(",")]
    ders = []
    for i, item in enumerate(items, 1):
        if not item:
            raise HeaderDecodeError(f"traefik value: certificate {i} is empty")
        ders.append(_b64decode(item, f"traefik value: certificate {i}"))
    return [_load_der(der, f"traefik value: certificate {i}") for i, der in enumerate(ders, 1)]


_DECODERS: dict[str, Callable[[str, str | None], list[x509.Certificate]]] = {
    "url-pem": _decode_url_pem,
    "aws-alb": _decode_aws_alb,
    "pem": _decode_pem,
    "base64-der": _decode_base64_der,
    "rfc9440": _decode_rfc9440,
    "xfcc": _decode_xfcc,
    "traefik": _decode_traefik,
}
