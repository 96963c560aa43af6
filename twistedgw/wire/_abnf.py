"""The HTTP grammar both directions share (RFC 9110, 9112, 3986), as compiled rules.

Every rule here is what one parser applies: the front (requests) and the upstream
client (responses) import them, so a smuggling rule changes in one place. Each
regular expression is linear in its input (no two adjacent quantifiers that can
match the same bytes): client bytes reach them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from twistedgw import errors
from twistedgw._headers import HOP_BY_HOP
from twistedgw.errors import GatewayError

#: An HTTP token (RFC 9110 5.6.2): methods and field names.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

#: RFC 9110 field-value: no CTL but HTAB (a value is already stripped of OWS).
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: Any CTL but HTAB in a head's field lines, CR only as part of CRLF: searched once per
#: head (a bare LF is refused before); when none is found no value can hold one, and
#: the per-value search is skipped.
CTL_IN_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")

#: A line feed not preceded by a carriage return.
BARE_LF = re.compile(rb"(?<!\r)\n")

# Every byte but the CTLs ``CTL_IN_HEAD`` refuses outright (HTAB, CR and LF are kept).
_NOT_CTL = bytes(b for b in range(256) if (b >= 0x20 and b != 0x7F) or b in (0x09, 0x0A, 0x0D))
# The same as a table: each of those CTLs becomes a space, every other byte stays itself, so
# ``data.translate(_CTL_TO_SPACE) != data`` finds one in one pass (``translate(None,
# _NOT_CTL)`` builds a table of its 256 bytes per call, ~1.6k instructions more).
_CTL_TO_SPACE = bytes(b if b in _NOT_CTL else 0x20 for b in range(256))


#: ``head_controls``'s answers.
CLEAN, BARE_LF_FOUND, CTL_FOUND = 0, 1, 2


def head_controls(data: bytes) -> int:
    """``BARE_LF_FOUND`` if ``data`` holds a bare LF, else ``CTL_FOUND`` if it holds what
    ``CTL_IN_HEAD`` finds, else ``CLEAN``: ``bare_lf`` and ``ctl_in_head`` in one call,
    the CRLFs counted once."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        return BARE_LF_FOUND
    if data.count(b"\r") != crlf or data.translate(_CTL_TO_SPACE) != data:
        return CTL_FOUND
    return CLEAN


def bare_lf(data: bytes) -> bool:
    """Whether ``data`` holds a line feed not preceded by a carriage return: ``BARE_LF``'s
    answer, from two counts in C (the look-behind search cost ~1.8 µs a head)."""
    return data.count(b"\n") != data.count(b"\r\n")


def ctl_in_head(data: bytes) -> bool:
    """Whether ``data`` holds what ``CTL_IN_HEAD`` finds (a CTL but HTAB, or a CR that
    does not start a CRLF), without a regular expression: what deleting every other
    byte leaves, and a count (``CTL_IN_HEAD.search`` cost ~1.6 µs a head)."""
    return data.translate(_CTL_TO_SPACE) != data or data.count(b"\r") != data.count(b"\r\n")

#: A Content-Length value: 1 to 18 digits (no sign, no list, no spaces).
DIGITS = re.compile(rb"[0-9]{1,18}\Z")

#: A response head (without its final CRLFCRLF) in the one spelling nearly every backend
#: sends: an HTTP/1.x status line of a 3-digit code and a phrase, field lines of a token,
#: a colon and a value, joined by CRLFs; no CTL but HTAB anywhere (so no bare CR or LF)
#: and no obsolete folding (a line starting with whitespace names no token). Its groups:
#: the version's minor digit, the code, the phrase (None: none), the field lines (each
#: with the CRLF before it). What it does not match, the parser reads line by line (and
#: refuses what is invalid): it only spares a valid head that loop. Linear: each
#: repetition stops at the bytes the next part starts with.
RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"
    rb"((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*)"
)

#: A request head (without its final CRLFCRLF) in the spelling nearly every client sends:
#: a method the gateway serves, an origin-form target of the bytes ``target_problem``
#: allows (no percent-escape: those are checked apart), HTTP/1.0 or 1.1, and field lines
#: of a token, a colon and a value of no CTL but HTAB, joined by CRLFs (no bare CR or LF,
#: no folding). Its groups: method, target, the version's minor digit, the field lines
#: (each with the CRLF before it). What it does not match, the parser checks piece by
#: piece (and refuses what is invalid, with the reason). Linear, as ``RESPONSE_HEAD``.
REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|TRACE) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)"
    rb" HTTP/1\.([01])((?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*)"
)

#: Field names a request head's fast path leaves to the line-by-line parse: those that
#: frame the body or name the host (``parse_request_fields`` reads them), the hop-by-hop
#: ones and those the forwarder writes itself (``upstream``'s ``_REQUEST_DROP``: it never
#: copies them), so the lines ``USUAL_REQUEST_HEAD`` leaves after Host can be copied to
#: a backend as they came.
UNUSUAL_NAMES: frozenset[bytes] = HOP_BY_HOP | {
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded",
}

_UNUSUAL_LONGEST_FIRST: list[bytes] = sorted(UNUSUAL_NAMES, key=len, reverse=True)

#: ``REQUEST_HEAD`` for the head nearly every client sends on a keep-alive connection
#: (curl, browsers, wrk, Python's http.client): ``Host`` is its first field line, and no
#: other line names a field in ``UNUSUAL_NAMES`` or holds a ``_`` in its name (the
#: forwarder drops those). Such a head has no body, one Host and no Connection field: the
#: front takes it from this one match (``http/_front.FrontChannel._head``), with no loop
#: over its lines; any other head goes through ``parse_request_fields``. Groups: method,
#: target, the version's minor digit, the Host field's name as sent, its value (without
#: OWS; at most 255 bytes, no space or CTL: else the parse below judges it), and the
#: other field lines as sent (each with the CRLF before it), each in the form the
#: forwarder writes (``name: value``: one space after the colon, no OWS after the value)
#: so that they are copied as they came. Linear: the Host value's bytes and the OWS
#: around it are disjoint, a value's last byte is found within its line, and each line's
#: look-ahead is bounded. Each line is an atomic group, their repetition possessive: a
#: line matched is never tried shorter when a later one fails (no shorter match of a line
#: could be followed by a CRLF), so a head that fails late is not walked back value by
#: value (an authz question failing at its X-Forwarded-For cost ~585k instructions in
#: backtracking through its certificate header's ~0.9 KB; now ~48k).
USUAL_REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|TRACE) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)"
    rb" HTTP/1\.([01])\r\n([Hh][Oo][Ss][Tt]):[ \t]*([!-~]{0,255})[ \t]*"
    rb"((?>\r\n(?!(?i:" + b"|".join(_UNUSUAL_LONGEST_FIRST) + rb"):)"
    rb"[!#$%&'*+\-.^`|~0-9A-Za-z]+: (?:[!-~\x80-\xff](?:[\t -~\x80-\xff]*[!-~\x80-\xff])?)?)*+)"
)

#: The framing fields' lines in a lower-cased block of field lines (``RESPONSE_HEAD``'s
#: last group): name and value (untrimmed), in order.
FRAMING_LINE = re.compile(rb"\r\n(content-length|transfer-encoding|connection):([^\r\n]*)")

#: What separates the tokens of a list-valued field (Connection).
LIST = re.compile(rb"[ \t,]+")

#: A trailer line: a field name, a colon, a field value (no obs-fold, no CTL but HTAB).
TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")

#: A method the gateway serves: upper-case letters, '_' and '-', as NGINX accepts.
METHOD = re.compile(rb"[A-Z_\-]+\Z")

# RFC 3986 / RFC 9112 origin-form: absolute-path [ "?" query ]; pchar, "/" and "?",
# percent-escapes of two hex digits. Anything else is refused before routing.
_TARGET_BYTE = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")

MALFORMED = "malformed request: request line, header syntax or body framing is invalid"


# The bytes ``_TARGET_BYTE`` allows: deleting them from a target leaves what it refuses.
_TARGET_OK = bytes(b for b in range(256) if _TARGET_BYTE.match(bytes([b])) is None)


def target_problem(target: bytes) -> str | None:
    """Why ``target`` is not an origin-form request target, or None if it is."""
    if not target.startswith(b"/"):
        if target == b"*":
            return "the asterisk-form request target (OPTIONS *) is not served"
        return "request target must be an absolute path (origin-form)"
    # One pass in C finds whether any byte is refused; the search says which, for the
    # message, only then.
    bad = _TARGET_BYTE.search(target) if target.translate(None, _TARGET_OK) else None
    if bad is not None:
        return (
            f"request target contains the byte 0x{target[bad.start()]:02x}, "
            f"which is not allowed in a URI (at offset {bad.start()})"
        )
    if b"%" in target and _BAD_ESCAPE.search(target) is not None:
        return "request target contains a malformed percent-escape"
    return None


# The methods nearly every request uses, served without a match.
_SERVED_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"}
)


def method_refusal(method: bytes) -> GatewayError | None:
    """Why ``method`` is not served (both HTTP versions), or None.

    ``CONNECT`` is 405: the gateway is no tunnel, and an HTTP/1.1 backend must never
    see one. A method that is not upper-case (``get``) is 400, as NGINX answers: a
    backend that upper-cases methods would run ``GET`` under the policy of an
    operation nobody defined for ``get``."""
    if method in _SERVED_METHODS:
        return None
    if METHOD.match(method) is not None:
        if method == b"CONNECT":
            return errors.method_not_allowed("the CONNECT method is not served by this gateway")
        return None
    if TOKEN.match(method) is None:
        return errors.bad_request(MALFORMED)
    return errors.bad_request(
        "the request method must be upper-case letters, '_' or '-' (methods are case-sensitive)"
    )


# Field names that were valid tokens: a peer sends the same few names in every message,
# and a set lookup costs a fraction of the regex match. Bounded: cleared when full.
_seen_names: set[bytes] = set()
SEEN_NAMES_MAX = 4096


def valid_name(name: bytes) -> bool:
    """Whether ``name`` is a token (``TOKEN``), remembered when it is."""
    if name in _seen_names:
        return True
    if not TOKEN.match(name):
        return False
    if len(_seen_names) >= SEEN_NAMES_MAX:
        _seen_names.clear()
    _seen_names.add(name)
    return True


@functools.lru_cache(maxsize=64)
def one_connection_value(value: bytes) -> frozenset[bytes]:
    """``connection_tokens`` of one Connection value: a peer sends the same one
    (``keep-alive``) in every message."""
    return connection_tokens((value,))


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lower-case field names listed in Connection field values (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)
