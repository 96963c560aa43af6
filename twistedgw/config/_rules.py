"""Identity rules: which verified client certificates an API (or a consumer) accepts.

One entry (``[[apis.identities]]``, ``[[consumers.certificates]]``) names one or
more properties of the leaf certificate; every property written must hold.
Entries are compiled once when a config is read (hex, DNs, OIDs parsed and
checked there, so ``twistedgw check`` names the broken key) and matched against
facts extracted once per certificate, so a request pays a few comparisons.

The same keys as Azure API Management's ``validate-client-certificate`` and
Envoy's ``match_typed_subject_alt_names`` / certificate hashes / SPKI pins,
with Envoy's meaning where they overlap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from twistedgw.config._base import TableReader, quoted

#: The keys an entry may hold, in the order ``describe`` writes them.
KEYS = (
    "alias",
    "sha256",
    "spki_sha256",
    "subject",
    "common_name",
    "issuer",
    "san_dns",
    "san_uri",
    "san_email",
    "policy_oid",
)

# A name in canonical form: RDNs in DER order, each a sorted list of [OID, normalised
# value], as JSON. A string, so comparing two names costs one string comparison.
_NameKey = str


def _canonical(rdns: Iterable[Iterable[tuple[str, str]]]) -> _NameKey:
    return json.dumps([sorted(set(rdn)) for rdn in rdns], ensure_ascii=False)

# RFC 4514 short names (case-insensitive) beside those cryptography prints.
_ATTRIBUTES = {
    "cn": NameOID.COMMON_NAME,
    "commonname": NameOID.COMMON_NAME,
    "l": NameOID.LOCALITY_NAME,
    "st": NameOID.STATE_OR_PROVINCE_NAME,
    "o": NameOID.ORGANIZATION_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "c": NameOID.COUNTRY_NAME,
    "street": NameOID.STREET_ADDRESS,
    "dc": NameOID.DOMAIN_COMPONENT,
    "uid": NameOID.USER_ID,
    "serialnumber": NameOID.SERIAL_NUMBER,
    "emailaddress": NameOID.EMAIL_ADDRESS,
    "e": NameOID.EMAIL_ADDRESS,
    "title": NameOID.TITLE,
    "givenname": NameOID.GIVEN_NAME,
    "sn": NameOID.SURNAME,
    "surname": NameOID.SURNAME,
    "organizationidentifier": NameOID.ORGANIZATION_IDENTIFIER,
}
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")
_SPECIAL = ',+"\\<>;=# '


class RuleError(ValueError):
    """A value an entry cannot use; the message says what is expected."""


# --------------------------------------------------------------------------- names


def _normalise_value(value: str) -> str:
    """LDAP caseIgnoreMatch, roughly: case folded, runs of spaces collapsed, trimmed."""
    return " ".join(value.casefold().split())


def _split(text: str, separators: str) -> list[str]:
    """``text`` split at unescaped ``separators`` (backslash escapes kept for later)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise RuleError("ends in a lone backslash")
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(raw: str) -> str:
    """An RFC 4514 attribute value: ``\\,`` style escapes and ``\\XX`` UTF-8 hex pairs."""
    if raw.startswith("#"):
        raise RuleError("hex-encoded (#...) values are not supported; write the value as text")
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\":
            nxt = raw[i + 1 : i + 3]
            if _HEX_PAIR.fullmatch(nxt):
                out += bytes.fromhex(nxt)
                i += 3
                continue
            if raw[i + 1 : i + 2] and raw[i + 1] in _SPECIAL:
                out += raw[i + 1].encode()
                i += 2
                continue
            raise RuleError(f"bad escape {quoted(raw[i : i + 2])}")
        if ch == '"':
            raise RuleError('a " must be escaped as \\"')
        out += ch.encode()
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleError("escaped bytes are not UTF-8") from None


def parse_dn(text: str) -> _NameKey:
    """An RFC 4514 DN (most specific RDN first, as written) as a comparable key.

    Attribute types are case-insensitive short names (``CN``, ``O``, ...) or
    dotted OIDs; spaces around ``,``, ``+`` and ``=`` are allowed, as OpenSSL
    and many tools print them.
    """
    if not text.strip():
        raise RuleError("is empty")
    rdns: list[set[tuple[str, str]]] = []
    for rdn_text in _split(text, ","):
        attrs: set[tuple[str, str]] = set()
        for ava in _split(rdn_text, "+"):
            if not ava.strip():
                raise RuleError("has an empty part (a ',' or '+' too many?)")
            if "=" not in ava:
                raise RuleError(f"{quoted(ava.strip())} is not TYPE=value")
            kind, _eq, raw = ava.partition("=")
            kind = kind.strip()
            if _OID_RE.match(kind):
                oid = kind
            elif _TYPE_RE.match(kind) and kind.lower() in _ATTRIBUTES:
                oid = _ATTRIBUTES[kind.lower()].dotted_string
            else:
                names = ", ".join(sorted({k.upper() for k in _ATTRIBUTES if len(k) <= 6}))
                raise RuleError(
                    f"unknown attribute type {quoted(kind)} (use {names} or a dotted OID)"
                )
            value = _normalise_value(_unescape(raw.strip()))
            if not value:
                raise RuleError(f"{kind} has an empty value")
            attrs.add((oid, value))
        rdns.append(attrs)
    rdns.reverse()  # RFC 4514 writes the last RDN of the DER sequence first
    return _canonical(rdns)


def name_key(name: x509.Name) -> _NameKey:
    """A certificate's name in the form ``parse_dn`` gives."""
    out: list[set[tuple[str, str]]] = []
    for rdn in name.rdns:
        attrs = set()
        for attr in rdn:
            value = attr.value
            text = value if isinstance(value, str) else value.hex()
            attrs.add((attr.oid.dotted_string, _normalise_value(text)))
        out.append(attrs)
    return _canonical(out)


# --------------------------------------------------------------------------- values


def _sha256_hex(value: str) -> bytes:
    cleaned = value.replace(":", "").replace(" ", "")
    try:
        digest = bytes.fromhex(cleaned)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise RuleError(
            "must be a SHA-256 fingerprint: 64 hex digits (colons and case ignored)"
        )
    return digest


def _spki(value: str) -> bytes:
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise RuleError(
            "must be the base64 SHA-256 of the SubjectPublicKeyInfo (44 characters, "
            "e.g. from `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der "
            "| openssl dgst -sha256 -binary | base64`)"
        )
    return digest


def _dns(value: str) -> str:
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    wildcard = labels[0] == "*"
    rest = labels[1:] if wildcard else labels
    try:
        rest = [label.encode("idna").decode("ascii") if label else label for label in rest]
    except UnicodeError:
        rest = [""]
    well_formed = bool(rest) and all(_LABEL_RE.match(label) for label in rest)
    if not well_formed or (wildcard and len(rest) < 2):
        raise RuleError(
            "must be a DNS name, optionally with '*' as its whole first label "
            "(e.g. '*.partner.example')"
        )
    return ".".join(["*", *rest] if wildcard else rest)


def _uri(value: str) -> str:
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", value) or any(
        ord(c) < 0x21 or ord(c) == 0x7F for c in value
    ):
        raise RuleError("must be an absolute URI such as 'spiffe://partner.example/ns/prod/sa/x'")
    if "*" in value[:-1] or (value.endswith("*") and not value.endswith("/*")):
        raise RuleError("'*' is allowed only as a final '/*' (any URI under that prefix)")
    return value


def _email(value: str) -> str:
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in value.strip()):
        raise RuleError("must be an e-mail address such as 'billing@partner.example'")
    return f"{local}@{domain.lower()}"


def _oid(value: str) -> str:
    if not _OID_RE.match(value):
        raise RuleError("must be a dotted OID such as '1.3.6.1.4.1.311.21.8.1'")
    try:
        x509.ObjectIdentifier(value)
    except ValueError:
        raise RuleError("must be a dotted OID such as '1.3.6.1.4.1.311.21.8.1'") from None
    return value


def _alias(value: str) -> str:
    if not value.strip() or value != value.strip():
        raise RuleError("must be a truststore alias (no surrounding spaces)")
    return value


def _cn(value: str) -> str:
    normalised = _normalise_value(value)
    if not normalised:
        raise RuleError("is empty")
    return normalised


_PARSERS: dict[str, Callable[[str], Any]] = {
    "alias": _alias,
    "sha256": _sha256_hex,
    "spki_sha256": _spki,
    "subject": parse_dn,
    "common_name": _cn,
    "issuer": parse_dn,
    "san_dns": _dns,
    "san_uri": _uri,
    "san_email": _email,
    "policy_oid": _oid,
}


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class CertificateFacts:
    """What rules look at in one leaf certificate, extracted once."""

    sha256: bytes
    spki_sha256: bytes
    subject: _NameKey
    common_names: frozenset[str]
    issuer: _NameKey
    san_dns: tuple[str, ...]
    san_uri: tuple[str, ...]
    san_email: tuple[str, ...]
    policy_oids: frozenset[str]


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    # Absent, written twice (RFC 5280 allows one) or malformed: nothing to match.
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None


_FACTS: OrderedDict[int, tuple[x509.Certificate, CertificateFacts]] = OrderedDict()
_FACTS_MAX = 4096


def facts(cert: x509.Certificate) -> CertificateFacts:
    """The certificate's facts, cached: the same callers come back again and again.

    Keyed by object identity (the entry holds the certificate, so its id cannot be
    reused meanwhile): hashing a ``Certificate`` costs as much as reading its facts.
    A connection's identity and the load-balancer header decoder's cache hand out
    the same certificate object for every request of the same caller.
    """
    key = id(cert)
    found = _FACTS.get(key)
    if found is not None and found[0] is cert:
        return found[1]
    extracted = _extract(cert)
    _FACTS[key] = (cert, extracted)
    if len(_FACTS) > _FACTS_MAX:
        _FACTS.popitem(last=False)
    return extracted


def _extract(cert: x509.Certificate) -> CertificateFacts:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    san = _extension(cert, x509.SubjectAlternativeName)
    policies = _extension(cert, x509.CertificatePolicies)
    cns = frozenset(
        _normalise_value(a.value)
        for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(a.value, str)
    )
    return CertificateFacts(
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest(),
        spki_sha256=hashlib.sha256(spki).digest(),
        subject=name_key(cert.subject),
        common_names=cns,
        issuer=name_key(cert.issuer),
        san_dns=tuple(
            d.rstrip(".").lower() for d in san.get_values_for_type(x509.DNSName)
        )
        if san is not None
        else (),
        san_uri=tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        if san is not None
        else (),
        san_email=tuple(san.get_values_for_type(x509.RFC822Name)) if san is not None else (),
        policy_oids=frozenset(p.policy_identifier.dotted_string for p in policies)
        if policies is not None
        else frozenset(),
    )


# --------------------------------------------------------------------------- matching


def _dns_matches(pattern: str, name: str) -> bool:
    if not pattern.startswith("*."):
        return name == pattern
    head, dot, tail = name.partition(".")
    return bool(dot) and bool(head) and tail == pattern[2:]


def _uri_matches(pattern: str, uri: str) -> bool:
    if not pattern.endswith("/*"):
        return uri == pattern
    prefix = pattern[:-1]  # keeps the '/'
    rest = uri[len(prefix) :]
    if not uri.startswith(prefix) or not rest:
        return False
    # Dot segments would step out of the prefix a rule means.
    padded = f"/{rest}/"
    return "/./" not in padded and "/../" not in padded


def _email_matches(pattern: str, email: str) -> bool:
    local, _at, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}" == pattern


@dataclass(frozen=True)
class IdentityRule:
    """One entry: every property given must hold for the leaf certificate.

    ``alias`` holds when the certificate verified under that truststore entry (an
    issuer in its chain, or the pinned certificate itself): names alone can be
    issued by any trusted CA, an alias says which one did.
    """

    alias: str | None = None
    sha256: bytes | None = None
    spki_sha256: bytes | None = None
    subject: _NameKey | None = None
    common_name: str | None = None
    issuer: _NameKey | None = None
    san_dns: str | None = None
    san_uri: str | None = None
    san_email: str | None = None
    policy_oid: str | None = None
    text: str = ""  # the entry as written, for logs

    def __post_init__(self) -> None:
        # Only the keys written, each a cheap test: a request pays for what the entry says.
        object.__setattr__(self, "_tests", tuple(_tests(self)))

    @property
    def by_names_alone(self) -> bool:
        """Whether only names identify the certificate (no alias, hash or key pin):
        what any trusted CA could put in a certificate of its own."""
        return self.alias is None and self.sha256 is None and self.spki_sha256 is None

    def matches(self, cert: x509.Certificate, aliases: frozenset[str] = frozenset()) -> bool:
        return self.holds(facts(cert), aliases)

    def holds(self, f: CertificateFacts, aliases: frozenset[str] = frozenset()) -> bool:
        """Whether the leaf with facts ``f``, verified under ``aliases``, matches."""
        if self.alias is not None and self.alias not in aliases:
            return False
        for test in self._tests:  # type: ignore[attr-defined]
            if not test(f):
                return False
        return True


def _tests(rule: IdentityRule) -> Iterable[Callable[[CertificateFacts], bool]]:
    sha256, spki, subject, issuer = rule.sha256, rule.spki_sha256, rule.subject, rule.issuer
    cn, dns, uri, email, oid = (
        rule.common_name, rule.san_dns, rule.san_uri, rule.san_email, rule.policy_oid
    )
    if sha256 is not None:
        yield lambda f: f.sha256 == sha256
    if spki is not None:
        yield lambda f: f.spki_sha256 == spki
    if subject is not None:
        yield lambda f: f.subject == subject
    if cn is not None:
        yield lambda f: cn in f.common_names
    if issuer is not None:
        yield lambda f: f.issuer == issuer
    if dns is not None:
        yield lambda f: any(_dns_matches(dns, d) for d in f.san_dns)
    if uri is not None:
        if uri.endswith("/*"):
            yield lambda f: any(_uri_matches(uri, u) for u in f.san_uri)
        else:
            yield lambda f: uri in f.san_uri
    if email is not None:
        yield lambda f: any(_email_matches(email, e) for e in f.san_email)
    if oid is not None:
        yield lambda f: oid in f.policy_oids


def matches_any(
    rules: Iterable[IdentityRule], cert: x509.Certificate, aliases: frozenset[str] = frozenset()
) -> bool:
    """Whether ``cert``, verified under the truststore ``aliases``, matches one of ``rules``."""
    f = facts(cert)
    return any(rule.holds(f, aliases) for rule in rules)


def parse_rule(
    table: Mapping[str, Any], problem: Callable[[str, str], None]
) -> IdentityRule | None:
    """Compile one entry; each problem is reported as ``problem(key, message)``, all at once
    (key ``""`` for the entry as a whole).

    Unknown keys, values that are not strings and malformed values are problems;
    an entry with no key at all would match every certificate, so it is one too.
    """
    values: dict[str, Any] = {}
    ok = True
    for key, raw in table.items():
        parser = _PARSERS.get(key)
        if parser is None:
            problem(key, f"unknown key; an identity entry takes {', '.join(KEYS)}")
            ok = False
            continue
        if not isinstance(raw, str):
            problem(key, f"expected a string, got {quoted(raw)}")
            ok = False
            continue
        try:
            values[key] = parser(raw)
        except RuleError as e:
            problem(key, f"{e} (got {quoted(raw)})")
            ok = False
    if not table:
        problem("", f"an identity entry needs at least one of {', '.join(KEYS)}")
        return None
    if not ok:
        return None
    text = ", ".join(f"{k} = {table[k]!r}" for k in KEYS if k in table)
    return IdentityRule(**values, text=text)


def identity_entries(r: TableReader, key: str) -> list[IdentityRule]:
    """``[[<table>.<key>]]`` identity entries of a config table, problems by dotted key."""
    out = []
    for t in r.tables(key):
        t.seen.update(t.table)  # parse_rule reports unknown keys itself

        def problem(k: str, message: str, t: TableReader = t) -> None:
            t.problems.add(t.where(k) if k else t.path, message)

        rule = parse_rule(t.table, problem)
        if rule is not None:
            out.append(rule)
    if key in r.table and r.table[key] == []:
        r.problem(key, "an empty list matches no certificate; remove the key instead")
    return out
