"""Load-balancer header decoding: every format, ``auto`` detection, and hostile input."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from urllib.parse import unquote_plus

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import headerenc
from tests.cputime import least_cpu
from tests.headerenc import CONCRETE_ENCODINGS
from twistedgw.identity import (
    ENCODINGS,
    MAX_CERTIFICATES,
    MAX_VALUE_LENGTH,
    DecodedHeader,
    HeaderDecodeError,
    decode,
    sniff,
)
from twistedgw.testing import devpki

CHAINS = ("partner-app", "partner-rsa", "partner-direct", "pinned")


def full_chain(pki: devpki.DevPki, name: str) -> tuple[x509.Certificate, ...]:
    return pki.issued[name].full_chain


def expected_auto(encoding: str, certs: Sequence[x509.Certificate]) -> str:
    """What ``auto`` must call ``headerenc.encode(certs, encoding)``.

    A one-certificate Traefik value (v2.9.2+) is byte for byte a base64-der value.
    """
    if encoding == "traefik" and len(certs) == 1:
        return "base64-der"
    return encoding


def test_public_encodings() -> None:
    assert ENCODINGS == ("auto", *CONCRETE_ENCODINGS)


def test_dev_certificates_exercise_the_alb_bug(pki: devpki.DevPki) -> None:
    """Without '+', '/' and '=' in the base64 the ALB tests below would prove nothing."""
    for name in CHAINS:
        for cert in full_chain(pki, name):
            b64 = headerenc.b64der(cert)
            assert "+" in b64 and "/" in b64 and b64.endswith("=")


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("encoding", CONCRETE_ENCODINGS)
def test_round_trip(pki: devpki.DevPki, encoding: str, name: str) -> None:
    certs = full_chain(pki, name)
    value = headerenc.encode(certs, encoding)
    chain_value = headerenc.chain_value_for(certs, encoding)
    want = headerenc.decodable_certs(certs, encoding)

    explicit = decode(value, encoding, chain_value)
    assert explicit == DecodedHeader(encoding, want)
    assert explicit.leaf == certs[0]

    detected = decode(value, "auto", chain_value)
    assert detected.encoding == expected_auto(encoding, certs)
    assert detected.certs == want
    assert sniff(value) == detected.encoding


def test_intermediate_chain_is_carried_leaf_first(pki: devpki.DevPki) -> None:
    issued = pki.issued["partner-app"]
    assert len(issued.full_chain) == 2
    decoded = decode(headerenc.aws_alb(issued.full_chain))
    assert decoded.certs == (issued.cert, pki.authorities["partner-issuing"].cert)


# --------------------------------------------------------------------------- AWS ALB


def test_alb_plus_is_not_a_space(pki: devpki.DevPki) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.aws_alb(certs)
    assert "+" in value and "/" in value and "=" in value
    assert "%2B" not in value and "%3D" not in value

    # The WSO2 bug: form decoding turns each raw '+' into a space and breaks the base64.
    misread = unquote_plus(value)
    try:
        parsed = x509.load_pem_x509_certificates(misread.encode())
    except ValueError:
        parsed = []
    assert parsed != list(certs)

    decoded = decode(value, "aws-alb")
    assert decoded.certs == certs
    assert decode(value).encoding == "aws-alb"


@pytest.mark.parametrize(
    ("raw", "auto"),
    [
        ("+/=", "aws-alb"),  # what ALB sends
        ("+/", "aws-alb"),  # AWS's documented example: '=' as %3D
        ("=", "aws-alb"),
        ("", "url-pem"),  # fully escaped: indistinguishable from NGINX, and decoded the same
    ],
)
def test_alb_escaped_and_raw_forms(pki: devpki.DevPki, raw: str, auto: str) -> None:
    certs = full_chain(pki, "partner-rsa")
    value = headerenc.aws_alb(certs, raw=raw)
    assert ("%3D" in value) == ("=" not in raw)
    assert decode(value, "aws-alb") == DecodedHeader("aws-alb", certs)
    assert decode(value) == DecodedHeader(auto, certs)


def test_url_pem_refuses_raw_plus_and_points_at_alb(pki: devpki.DevPki) -> None:
    value = headerenc.aws_alb(full_chain(pki, "partner-app"))
    with pytest.raises(HeaderDecodeError, match="aws-alb"):
        decode(value, "url-pem")


@pytest.mark.parametrize("char", ["+", "/", "="])
def test_url_pem_refuses_each_raw_alb_character(pki: devpki.DevPki, char: str) -> None:
    value = headerenc.aws_alb(full_chain(pki, "partner-direct"), raw=char)
    with pytest.raises(HeaderDecodeError, match="aws-alb"):
        decode(value, "url-pem")


# --------------------------------------------------------------------------- other formats


def test_url_pem_lowercase_escapes(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-direct"].cert
    value = headerenc.url_pem([cert]).replace("%2B", "%2b").replace("%0A", "%0a")
    assert decode(value, "url-pem").certs == (cert,)


@pytest.mark.parametrize("sep", ["\t", " ", "\n", "\r\n", " \t"])
def test_pem_folded_any_whitespace(pki: devpki.DevPki, sep: str) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.pem_folded(certs, sep=sep)
    assert decode(value, "pem") == DecodedHeader("pem", certs)
    assert decode(value).encoding == "pem"


def test_pem_nginx_tab_continuations(pki: devpki.DevPki) -> None:
    """``$ssl_client_cert`` starts continuation lines with a tab; unfolding keeps it."""
    cert = pki.issued["partner-rsa"].cert
    value = headerenc.pem(cert).strip().replace("\n", "\n\t")
    assert decode(value, "pem").certs == (cert,)


@pytest.mark.parametrize("quoted", [False, True])
def test_haproxy_base64_der(pki: devpki.DevPki, quoted: bool) -> None:
    cert = pki.issued["partner-app"].cert
    value = headerenc.base64_der(cert, quoted=quoted)
    assert value.startswith('"') == quoted
    assert decode(value, "base64-der").certs == (cert,)
    assert decode(value) == DecodedHeader("base64-der", (cert,))


def test_base64_der_without_padding(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-app"].cert
    value = headerenc.b64der(cert).rstrip("=")
    assert decode(value, "base64-der").certs == (cert,)


def test_rfc9440_with_and_without_chain(pki: devpki.DevPki) -> None:
    issued = pki.issued["partner-app"]
    value = headerenc.rfc9440(issued.cert)
    assert decode(value).certs == (issued.cert,)
    chain = headerenc.rfc9440_chain(issued.chain)
    assert decode(value, "rfc9440", chain).certs == issued.full_chain
    assert decode(value, "auto", chain).certs == issued.full_chain
    assert decode(value, "rfc9440", "").certs == (issued.cert,)


def test_rfc9440_bad_chain_is_an_error(pki: devpki.DevPki) -> None:
    value = headerenc.rfc9440(pki.issued["partner-app"].cert)
    with pytest.raises(HeaderDecodeError, match="Client-Cert-Chain"):
        decode(value, "rfc9440", "MIIB")
    with pytest.raises(HeaderDecodeError, match="Client-Cert-Chain"):
        decode(value, "rfc9440", ":AAAA:")


def test_chain_value_only_for_rfc9440(pki: devpki.DevPki) -> None:
    issued = pki.issued["partner-app"]
    chain = headerenc.rfc9440_chain(issued.chain)
    assert decode(headerenc.base64_der(issued.cert), "auto", chain).certs == (issued.cert,)


@pytest.mark.parametrize("escaped", [False, True])
def test_traefik(pki: devpki.DevPki, escaped: bool) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.traefik(certs, escaped=escaped)
    assert ("%2C" in value) == escaped
    assert decode(value, "traefik") == DecodedHeader("traefik", certs)
    assert decode(value) == DecodedHeader("traefik", certs)


def test_traefik_escaped_single_certificate_is_detected(pki: devpki.DevPki) -> None:
    cert = pki.issued["pinned"].cert
    value = headerenc.traefik([cert], escaped=True)
    assert decode(value) == DecodedHeader("traefik", (cert,))


def test_traefik_spaces_after_commas(pki: devpki.DevPki) -> None:
    certs = full_chain(pki, "partner-app")
    value = ", ".join(headerenc.b64der(c) for c in certs)
    assert decode(value).certs == certs


# --------------------------------------------------------------------------- Envoy XFCC


def test_xfcc_cert_only(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-direct"].cert
    value = headerenc.xfcc(cert)
    assert decode(value, "xfcc") == DecodedHeader("xfcc", (cert,))


def test_xfcc_chain_only(pki: devpki.DevPki) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.xfcc(None, certs)
    assert "Cert=" not in value
    assert decode(value).certs == certs


def test_xfcc_subject_with_commas_semicolons_and_quotes(pki: devpki.DevPki) -> None:
    certs = full_chain(pki, "partner-app")
    subject = 'CN=partner, "the app";O=Acme, Inc.;OU=a=b\\c'
    value = headerenc.xfcc(certs[0], certs, subject=subject)
    assert decode(value, "xfcc").certs == certs


def test_xfcc_uses_the_last_element(pki: devpki.DevPki) -> None:
    """Each hop appends an element; the nearest proxy's is last, and only it counts."""
    ours = full_chain(pki, "partner-app")
    earlier = headerenc.xfcc_element(
        pki.issued["other-app"].cert,
        subject='CN=other, "quoted";with=semicolons',
        dns=("a.example", "b.example"),
    )
    value = headerenc.xfcc(ours[0], ours, previous=[earlier, earlier])
    assert value.count("Cert=") == 3
    assert decode(value).certs == ours


def test_xfcc_keys_are_case_insensitive(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-rsa"].cert
    digest = hashlib.sha256(headerenc.der(cert)).hexdigest()
    value = f'by=x;HASH={digest};cErT="{headerenc.url_pem([cert])}"'
    assert decode(value) == DecodedHeader("xfcc", (cert,))


def test_xfcc_unquoted_cert_with_raw_alb_characters(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-app"].cert
    value = f"Cert={headerenc.aws_alb([cert])}"
    assert decode(value, "xfcc").certs == (cert,)


def test_xfcc_without_cert_or_chain(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-app"].cert
    value = headerenc.xfcc(cert).split(";Cert=")[0] + ';Subject="CN=partner-app,O=x"'
    with pytest.raises(HeaderDecodeError, match="xfcc element carries no Cert or Chain"):
        decode(value, "xfcc")
    with pytest.raises(HeaderDecodeError, match="xfcc element carries no Cert or Chain"):
        decode(value)


def test_xfcc_only_the_last_element_counts_even_if_it_lacks_a_cert(pki: devpki.DevPki) -> None:
    earlier = headerenc.xfcc_element(pki.issued["partner-app"].cert)
    with pytest.raises(HeaderDecodeError, match="no Cert or Chain"):
        decode(f"{earlier},By=spiffe://x;Hash=abcd")


def test_xfcc_hash_must_match(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-app"].cert
    value = f'Hash={"0" * 64};Cert="{headerenc.url_pem([cert])}"'
    with pytest.raises(HeaderDecodeError, match="Hash does not match"):
        decode(value)


@pytest.mark.parametrize(
    "tail",
    ['Subject="unterminated', 'Subject="x"y', 'Subject=a"b', 'Subject="ends with escape\\"'],
)
def test_xfcc_bad_quoting(pki: devpki.DevPki, tail: str) -> None:
    value = headerenc.xfcc(pki.issued["partner-app"].cert) + ";" + tail
    with pytest.raises(HeaderDecodeError):
        decode(value, "xfcc")


def test_xfcc_two_certs_in_one_element(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-app"].cert
    escaped = headerenc.url_pem([cert])
    with pytest.raises(HeaderDecodeError, match="more than one"):
        decode(f'Cert="{escaped}";Cert="{escaped}"')


# --------------------------------------------------------------------------- explicit vs other


# (explicit, format of the value) pairs that are legitimately the same bytes.
COMPATIBLE = {("aws-alb", "url-pem"), ("traefik", "base64-der")}


@pytest.mark.parametrize("explicit", CONCRETE_ENCODINGS)
@pytest.mark.parametrize("actual", CONCRETE_ENCODINGS)
def test_explicit_encodings_accept_only_their_own(
    pki: devpki.DevPki, explicit: str, actual: str
) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.encode(certs, actual)
    chain_value = headerenc.chain_value_for(certs, actual)
    if explicit == actual or (explicit, actual) in COMPATIBLE:
        assert decode(value, explicit, chain_value).encoding == explicit
    else:
        with pytest.raises(HeaderDecodeError) as info:
            decode(value, explicit, chain_value)
        assert "\n" not in str(info.value)


def test_mismatch_names_the_likely_format(pki: devpki.DevPki) -> None:
    value = headerenc.url_pem(full_chain(pki, "partner-app"))
    with pytest.raises(HeaderDecodeError, match="looks like url-pem"):
        decode(value, "base64-der")


def test_unknown_encoding() -> None:
    with pytest.raises(HeaderDecodeError, match="unknown header encoding"):
        decode("x", "der")


# --------------------------------------------------------------------------- damage and bounds


def make_bad_der_values() -> dict[str, str]:
    junk = base64.b64encode(b"\x30\x82\x01\x00" + b"\x00" * 40).decode()
    return {
        "empty": "",
        "blank": "  \t ",
        "garbage": "hello world!",
        "bad base64": "MII@@@",
        "bad der": junk,
        "bad der rfc9440": f":{junk}:",
        "non-ascii": "MIIBé",
        "pem no end": "-----BEGIN CERTIFICATE----- MIIB",
        "pem junk body": "-----BEGIN CERTIFICATE----- !!!! -----END CERTIFICATE-----",
        "url-pem no end": "-----BEGIN%20CERTIFICATE-----%0AMIIB",
        "bad escape": "-----BEGIN%20CERTIFICATE-----%0AMI%ZZ",
        "non-ascii escape": "-----BEGIN%20CERTIFICATE-----%0A%C3%A9",
        "empty byte sequence": "::",
        "lone colon": ":",
        "traefik empty item": "MIIB,,MIIB",
        "xfcc nothing": "By=spiffe://x",
        "quote only": '"',
        "empty quotes": '""',
    }


@pytest.mark.parametrize(("case", "value"), sorted(make_bad_der_values().items()))
def test_damaged_values_fail_cleanly(case: str, value: str) -> None:
    for encoding in ENCODINGS:
        with pytest.raises(HeaderDecodeError) as info:
            decode(value, encoding)
        assert "\n" not in str(info.value), case


@pytest.mark.parametrize("encoding", ["url-pem", "aws-alb", "pem", "traefik", "xfcc"])
def test_truncated_values(pki: devpki.DevPki, encoding: str) -> None:
    certs = full_chain(pki, "partner-app")
    value = headerenc.encode(certs, encoding)
    for cut in (len(value) // 3, len(value) // 2, len(value) - 40):
        with pytest.raises(HeaderDecodeError):
            decode(value[:cut], encoding)
        with pytest.raises(HeaderDecodeError):
            decode(value[:cut])


def test_truncated_pem_reason(pki: devpki.DevPki) -> None:
    value = headerenc.aws_alb(full_chain(pki, "partner-app"))
    with pytest.raises(HeaderDecodeError, match="truncated"):
        decode(value[: len(value) // 2])


def test_too_long_is_refused_unread() -> None:
    value = "A" * (MAX_VALUE_LENGTH + 1)
    with pytest.raises(HeaderDecodeError, match="64 KiB"):
        decode(value)


@pytest.mark.parametrize("encoding", ["pem", "aws-alb", "traefik", "xfcc"])
def test_too_many_certificates(pki: devpki.DevPki, encoding: str) -> None:
    cert = pki.issued["partner-direct"].cert
    ok = [cert] * MAX_CERTIFICATES
    assert len(decode(headerenc.encode(ok, encoding), encoding).certs) == (
        1 if encoding == "xfcc" else MAX_CERTIFICATES  # xfcc drops the leaf repeated in Chain
    )
    value = headerenc.encode([cert] * (MAX_CERTIFICATES + 1), encoding)
    if encoding == "xfcc":
        value = f'Chain="{headerenc.url_pem([cert] * (MAX_CERTIFICATES + 1))}"'
    with pytest.raises(HeaderDecodeError, match="more than 10 certificates"):
        decode(value, encoding)


def test_rfc9440_chain_counts_towards_the_bound(pki: devpki.DevPki) -> None:
    cert = pki.issued["partner-direct"].cert
    value = headerenc.rfc9440(cert)
    with pytest.raises(HeaderDecodeError, match="more than 10"):
        decode(value, "rfc9440", headerenc.rfc9440_chain([cert] * MAX_CERTIFICATES))


def test_error_never_echoes_the_value(pki: devpki.DevPki) -> None:
    value = headerenc.aws_alb(full_chain(pki, "partner-app"))
    damaged = value[:200] + "!" + value[201:]
    for encoding in ENCODINGS:
        with pytest.raises(HeaderDecodeError) as info:
            decode(damaged, encoding)
        message = str(info.value)
        assert "\n" not in message
        assert len(message) < 300
        assert damaged[:100] not in message


# --------------------------------------------------------------------------- properties


def _check_decode(value: str, encoding: str, chain_value: str | None = None) -> None:
    try:
        result = decode(value, encoding, chain_value)
    except HeaderDecodeError as e:
        message = str(e)
        assert message and "\n" not in message and len(message) < 400
    else:
        assert result.encoding in CONCRETE_ENCODINGS
        assert 1 <= len(result.certs) <= MAX_CERTIFICATES


TOKENS = [
    *'ABCIMQgw019+/=%:,;"\\ \t-_.~',
    "-----BEGIN",
    " CERTIFICATE-----",
    "%20",
    "%0A",
    "%2B",
    "%3D",
    "Cert=",
    "Chain=",
    "Hash=",
    "-----END",
]
HEADERISH = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.text(max_size=300), HEADERISH),
    encoding=st.sampled_from(ENCODINGS),
    chain_value=st.one_of(st.none(), st.text(max_size=50), HEADERISH),
)
def test_arbitrary_text_only_raises_header_decode_error(
    value: str, encoding: str, chain_value: str | None
) -> None:
    _check_decode(value, encoding, chain_value)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate", "swapcase"]),
        st.floats(min_value=0, max_value=1),
        st.integers(min_value=1, max_value=40),
        st.sampled_from([*'A+/=%,;:"\\ \t-0zZ\x00é', "%2", "%0A", "-----"]),
    ),
    min_size=1,
    max_size=4,
)


def mutate(value: str, ops: list[tuple[str, float, int, str]]) -> str:
    for kind, where, size, text in ops:
        i = int(where * len(value))
        if kind == "delete":
            value = value[:i] + value[i + size :]
        elif kind == "insert":
            value = value[:i] + text + value[i:]
        elif kind == "replace":
            value = value[:i] + text + value[i + len(text) :]
        elif kind == "truncate":
            value = value[:i]
        elif kind == "duplicate":
            value = value[:i] + value[i : i + size] + value[i:]
        else:
            value = value[:i] + value[i : i + size].swapcase() + value[i + size :]
    return value


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    encoding=st.sampled_from(CONCRETE_ENCODINGS),
    name=st.sampled_from(CHAINS),
    as_auto=st.booleans(),
    ops=MUTATIONS,
)
def test_mutated_values_only_raise_header_decode_error(
    pki: devpki.DevPki,
    data: st.DataObject,
    encoding: str,
    name: str,
    as_auto: bool,
    ops: list[tuple[str, float, int, str]],
) -> None:
    certs = full_chain(pki, name)
    value = mutate(headerenc.encode(certs, encoding), ops)
    chain_value = headerenc.chain_value_for(certs, encoding)
    if chain_value is not None and data.draw(st.booleans()):
        chain_value = mutate(chain_value, ops)
    _check_decode(value, "auto" if as_auto else encoding, chain_value)


# --------------------------------------------------------------------------- linear time
# The 10 ms rule (#22): decoders see values as large as the header limit allows; every
# pass over one is a C loop or a find that never looks at a character twice.


def _reference_split(text: str, sep: str) -> list[str]:
    """The per-character splitter the find-based one replaced."""
    parts: list[str] = []
    buf: list[str] = []
    in_quotes = escaped = False
    for c in text:
        if in_quotes:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == sep:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(c)
    if in_quotes:
        raise HeaderDecodeError("xfcc value has an unterminated quoted string")
    parts.append("".join(buf))
    return parts


def _reference_value(raw: str, key: str) -> str:
    raw = raw.strip()
    if not raw.startswith('"'):
        if '"' in raw:
            raise HeaderDecodeError(f"xfcc {key} value has a stray double quote")
        return raw
    out: list[str] = []
    i = 1
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
            continue
        if c == '"':
            if raw[i + 1 :].strip():
                raise HeaderDecodeError(f"xfcc {key} value has text after its closing quote")
            return "".join(out)
        out.append(c)
        i += 1
    raise HeaderDecodeError(f"xfcc {key} value has an unterminated quoted string")


def _outcome(f: object, *args: str) -> object:
    try:
        return f(*args)  # type: ignore[operator]
    except HeaderDecodeError as e:
        return str(e)


_XFCC_TEXT = st.lists(st.sampled_from(['"', "\\", ",", ";", "a", " ", "="]), max_size=16).map(
    "".join
)


@settings(max_examples=2000, deadline=None)
@given(_XFCC_TEXT, st.sampled_from([",", ";"]))
def test_xfcc_splitting_and_unquoting_agree_with_the_reference(text: str, sep: str) -> None:
    from twistedgw.identity import _lbheader

    assert _outcome(_lbheader._split_outside_quotes, text, sep) == _outcome(
        _reference_split, text, sep
    )
    assert _outcome(_lbheader._xfcc_value, text, "Uri") == _outcome(
        _reference_value, text, "Uri"
    )


HOSTILE_VALUES = [
    "By=x;Hash=" + '"a\\"' * 4000 + '"',
    "Cert=" + ",;" * 8000,
    'By="' + "\\" * 16000 + '"',
    'Subject="' + '\\"' * 8000,
    '"a",' * 4000,
    "A," * 8000,
    "-----BEGIN%20CERTIFICATE-----" + "%41" * 5000 + "%",
    "-----BEGIN CERTIFICATE-----" + " \t" * 8000,
    "A" * 16000 + "!",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_hostile_header_values_are_decoded_within_budget(value: str) -> None:
    for encoding in ("auto", "xfcc", "traefik"):

        def refused(encoding: str = encoding) -> None:
            with pytest.raises(HeaderDecodeError):
                decode(value, encoding)

        spent = least_cpu(refused, 0.002)
        assert spent < 0.002, f"{spent * 1000:.2f} ms as {encoding}"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("By=x;Hash=" + '"a"' * 600, "more than 1024 '\"' characters"),
        ("Cert=x" + ";a=b" * 1100, "more than 1024 ';' characters"),
        ("Cert=x" + ",By=y" * 1100, "more than 1024 ',' characters"),
        ('Cert="' + "\\\\" * 600 + '"', "more than 1024 '\\\\' characters"),
        ("-----BEGIN%20CERTIFICATE-----" + "%41" * 9000, "more than 8192 percent-escapes"),
        ("A," * 30000, "header carries more than 10 certificates"),
    ],
    ids=["quotes", "semicolons", "commas", "backslashes", "escapes", "traefik-items"],
)
def test_values_with_more_structure_than_any_chain_are_refused_unread(value: str,
                                                                    says: str) -> None:
    """Bounds checked by one count() before parsing: at 64 KiB each parsing step, not the
    count, is what costs (the 10 ms rule)."""
    def refused() -> None:
        with pytest.raises(HeaderDecodeError) as e:
            decode(value)
        assert says in str(e.value)

    spent = least_cpu(refused, 0.002)
    assert spent < 0.002, f"{spent * 1000:.2f} ms"
