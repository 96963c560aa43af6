"""Request heads (RFC 9112 2-3, 6): parsed in one pass, refused for any ambiguity.

A gateway needs more than a careful HTTP/1.1 parser: a proxy in front of it and a
backend behind it must read every request exactly as it does, or a request can
be smuggled past the policy (``tests/test_smuggling.py`` runs the corpus). So
obsolete line folding, bare LF line ends, CTLs in values, field names that are
not tokens, ``Transfer-Encoding`` other than one ``chunked`` (or outside
HTTP/1.1), Content-Length with Transfer-Encoding, a Content-Length that is not
one run of digits (lists included), and no, several or malformed ``Host`` headers
are all refused with 400 (RFC 9112 allows a recipient to reject every one of
them); a ``Host`` that names no host (``_hosts.from_header``, on every listener)
is 400 too, and so is a method that is not upper-case; ``CONNECT`` is 405
(``wire.method_refusal``, which HTTP/2 applies as well). A request line over
``max_header_bytes`` is 414, a head over it 431.
"""

from __future__ import annotations

import enum
import re

from twistedgw import _hosts
from twistedgw.errors import GatewayError, bad_request
from twistedgw.wire._abnf import (
    _CTL_TO_SPACE,
    _SERVED_METHODS,
    _TARGET_OK,
    BAD_VALUE,
    CLEAN,
    CTL_FOUND,
    DIGITS,
    LIST,
    MALFORMED,
    REQUEST_HEAD,
    _seen_names,
    bare_lf,
    method_refusal,
    target_problem,
    valid_name,
)
from twistedgw.wire._fields import Fields

#: More field lines than this in one head is refused (twisted.web's ``maxHeaders``).
MAX_FIELDS = 500

VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


class Framing(enum.Enum):
    """How a message's body is delimited (RFC 9112 6.3)."""

    NONE = "no body"
    LENGTH = "Content-Length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "the connection's close"  # responses only


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
_F_NONE, _F_LENGTH, _F_CHUNKED = Framing.NONE, Framing.LENGTH, Framing.CHUNKED


class WireError(Exception):
    """A request the front refuses itself, before any policy sees it.

    ``line`` is the (method, target) when the request line was read, for the record."""

    def __init__(
        self,
        error: GatewayError,
        kind: str = "bad_request",
        line: tuple[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(error.description)
        self.error = error
        self.kind = kind
        self.line = line


def header_too_large(limit: int) -> GatewayError:
    return GatewayError(
        431,
        "431",
        "Request Header Fields Too Large",
        f"request line and headers exceed the limit of {limit} bytes",
    )


def uri_too_long(limit: int) -> GatewayError:
    return GatewayError(414, "414", "URI Too Long", f"request line exceeds {limit} bytes")


# Bytes as the ints ``in`` tests a bytes object for without an exception (see above).
_CR, _LF, _PERCENT = ord("\r"), ord("\n"), ord("%")


_HTTP11, _HTTP10 = VERSIONS

#: The fields the parse reads itself (framing, Host, Expect, Connection).
_READ_HERE = frozenset(
    (b"content-length", b"transfer-encoding", b"host", b"expect", b"connection")
)


def _request_line(
    head: bytes, limit: int
) -> tuple[list[bytes], bytes, bytes, bytes, tuple[bytes, bytes], bool]:
    """A head ``REQUEST_HEAD`` does not match, checked piece by piece up to its field lines
    (refused here when its controls, limits or request line are bad): its lines (the
    request line first), method, target, version, the (method, target) pair, and whether
    it holds no CTL at all (then no value needs a check of its own)."""
    # ``head_controls``, written out. What the CRLFs leave, joined, holds a CR or LF only
    # where the head has a bare one: two ``memchr`` scans instead of two counts byte by
    # byte (~8k instructions for an authz question's ~2 KB head). The bytes looked for are
    # ints: on Python 3.11 ``b"x" in data`` first tries its argument as an integer and
    # formats the TypeError it raises (~1.8k instructions per test).
    lines = head.split(b"\r\n")
    rest = b"".join(lines)
    if _LF in rest:
        raise _bad("a bare LF is not a valid line ending or header byte")
    controls = CTL_FOUND if _CR in rest or rest.translate(_CTL_TO_SPACE) != rest else CLEAN
    request_line = lines[0]
    if len(request_line) > limit:
        raise WireError(uri_too_long(limit), "header_too_large")
    if len(head) + 4 > limit:  # the lines and their CRLFs, the empty line too
        raise WireError(header_too_large(limit), "header_too_large")
    # No CTL (nor bare CR) anywhere: then no value holds one and the per-value check is
    # skipped. One in the request line makes the values checked too, and the request
    # line's own checks refuse it.
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise _bad(MALFORMED)
    method, target, version = parts
    line = (method, target)
    if version not in VERSIONS:
        raise _bad(MALFORMED, line)
    if method not in _SERVED_METHODS:
        refusal = method_refusal(method)
        if refusal is not None:
            raise WireError(refusal, "bad_request", line)
    # ``target_problem``'s answer is None for a path of allowed bytes and no escape:
    # asked only otherwise.
    if target[:1] != b"/" or _PERCENT in target or target.translate(None, _TARGET_OK):
        problem = target_problem(target)
        if problem is not None:
            raise _bad(problem, line)
    return lines, method, target, version, line, controls == CLEAN


def _bad(description: str, line: tuple[bytes, bytes] | None = None) -> WireError:
    return WireError(bad_request(description), "bad_request", line)


class RequestHead:
    """One parsed request head (slotted: one per request)."""

    __slots__ = (
        "expect_continue", "fields", "framing", "host", "host_name", "length", "method",
        "persistent", "target", "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        fields: Fields,
        framing: Framing,
        length: int,
        host: bytes | None,
        host_name: str | None,
        expect_continue: bool,
        persistent: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.framing = framing
        self.length = length  # Content-Length (LENGTH framing), else 0
        self.host = host  # the Host value as sent, validated; None when absent (HTTP/1.0)
        self.host_name = host_name  # the same in _hosts.py's one spelling (no port)
        self.expect_continue = expect_continue  # HTTP/1.1 and Expect: 100-continue
        # Whether the client lets the connection carry another request (HTTP/1.0: when
        # it asked for keep-alive, and the answer has a length; the front decides that).
        self.persistent = persistent


def check_partial_head(buf: bytes, limit: int) -> None:
    """Refuse an incomplete head already known to be bad: a bare LF (refused as soon
    as it arrives, never waited on), or more bytes than ``limit`` allows."""
    if bare_lf(buf):
        raise _bad("a bare LF is not a valid line ending or header byte")
    first = buf.find(b"\r\n")
    if (first < 0 and len(buf) > limit) or first > limit:
        raise WireError(uri_too_long(limit), "header_too_large")
    if len(buf) > limit:
        raise WireError(header_too_large(limit), "header_too_large")


def parse_request_head(head: bytes, limit: int) -> RequestHead:
    """Parse ``head`` (a request head without its final CRLFCRLF) or raise ``WireError``."""
    return RequestHead(*parse_request_fields(head, limit))


#: ``parse_request_fields``'s answer: ``RequestHead``'s fields, in its order.
HeadFields = tuple[
    bytes, bytes, bytes, Fields, Framing, int, "bytes | None", "str | None", bool, bool
]


#: A head longer than this is not matched whole against ``REQUEST_HEAD`` (SRE tests its
#: value class at ~30 instructions a byte) but by ``_long_head``'s passes in C (~15 a
#: byte) and a token look-up per field name: the authz endpoint's question, say, 1-2 KB
#: with NGINX's certificate header, ~25k instructions less to check.
LONG_HEAD = 512

#: ``REQUEST_HEAD``'s request line alone.
REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|TRACE) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)"
    rb" HTTP/1\.([01])"
)


def _long_head(head: bytes) -> tuple[list[bytes], tuple[bytes, ...]] | None:
    """A long head's lines and its request line's ``REQUEST_LINE`` groups if it is in
    ``REQUEST_HEAD``'s spelling but for its field lines' names (the caller checks that
    each line has a colon after a token), else None (the piece-by-piece parse judges
    it): no CTL but HTAB anywhere, no CR or LF but the CRLFs between its lines, a
    served method, a target of allowed bytes without a percent-escape, HTTP/1.x."""
    if head.translate(_CTL_TO_SPACE) != head:  # a CTL other than HTAB, CR and LF
        return None
    lines = head.split(b"\r\n")
    rest = b"".join(lines)
    if _CR in rest or _LF in rest:  # a bare one (ints: see ``_request_line``)
        return None
    match = REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        return None
    return lines, match.groups()


def parse_request_fields(head: bytes, limit: int) -> HeadFields:
    """``parse_request_head``'s fields as a tuple (the front's call, once per request: it
    unpacks them where a ``RequestHead`` would cost a class call)."""
    match = REQUEST_HEAD.fullmatch(head) if len(head) <= LONG_HEAD else None
    long = _long_head(head) if match is None and len(head) > LONG_HEAD else None
    names_checked = True
    if long is not None:
        # As ``REQUEST_HEAD``'s match below, the names checked in the loop.
        lines, (method, target, minor) = long
        version = _HTTP11 if minor == b"1" else _HTTP10
        line = (method, target)
        if len(lines[0]) > limit:
            raise WireError(uri_too_long(limit), "header_too_large")
        if len(head) + 4 > limit:
            raise WireError(header_too_large(limit), "header_too_large")
        checked = True
        clean = True
        names_checked = False
    elif match is not None:
        # The usual head, checked whole by one match: a served method, a target of allowed
        # bytes, HTTP/1.x, field lines of a token and a value of no CTL. The limits
        # apply as below; no line is checked again.
        method, target, minor, block = match.groups()
        version = _HTTP11 if minor == b"1" else _HTTP10
        line = (method, target)
        if len(method) + len(target) + 10 > limit:  # the request line: "M T HTTP/1.x"
            raise WireError(uri_too_long(limit), "header_too_large")
        if len(head) + 4 > limit:
            raise WireError(header_too_large(limit), "header_too_large")
        lines = block.split(b"\r\n")  # lines[0]: b"", where the request line was
        checked = True
        clean = True
    else:
        lines, method, target, version, line, clean = _request_line(head, limit)
        checked = False
    if len(lines) > MAX_FIELDS + 1:
        raise _bad(MALFORMED, line)
    pairs: list[tuple[bytes, bytes]] = []
    # A long head's index by name is made here, from the names lower-cased below: its
    # reader (the authz endpoint, reading ~10 of its fields) would build it anyway.
    index: dict[bytes, list[bytes]] | None = None if names_checked else {}
    append = pairs.append
    length: bytes | None = None
    lengths = 0
    te: list[bytes] = []
    host: bytes | None = None
    hosts = 0
    expect = False
    close = False
    keep_alive = False
    for field_line in lines[1:]:
        if checked:  # (``REQUEST_HEAD``: a token, a colon, a value of no CTL)
            name, sep, value = field_line.partition(b":")
            if not names_checked and (
                not sep or (name not in _seen_names and not valid_name(name))
            ):  # (a long head's: the piece-by-piece parse's refusal of this line)
                if field_line[:1] in (b" ", b"\t"):
                    raise _bad(
                        "obsolete line folding in request headers is not accepted", line)
                raise _bad(MALFORMED, line)
            value = value.strip(b" \t")
        else:
            if field_line[:1] in (b" ", b"\t"):
                raise _bad("obsolete line folding in request headers is not accepted", line)
            colon = field_line.find(b":")
            if colon <= 0:
                raise _bad(MALFORMED, line)
            name = field_line[:colon]
            if name not in _seen_names and not valid_name(name):
                raise _bad(MALFORMED, line)
            value = field_line[colon + 1 :].strip(b" \t")
            if not clean and BAD_VALUE.search(value) is not None:
                raise _bad(MALFORMED, line)
        append((name, value))
        lower = name.lower()
        if index is not None:
            known = index.get(lower)
            if known is None:
                index[lower] = [value]
            else:
                known.append(value)
        if lower not in _READ_HERE:  # (most lines: one look-up, not five comparisons)
            continue
        if lower == b"content-length":
            lengths += 1
            length = value
        elif lower == b"transfer-encoding":
            te.append(value)
        elif lower == b"host":
            hosts += 1
            host = value
        elif lower == b"expect":
            expect = value.lower() == b"100-continue"
        elif lower == b"connection":
            tokens = LIST.split(value.lower())
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
    http11 = version == b"HTTP/1.1"
    framing = _F_NONE
    size = 0
    if te:
        if not http11:
            raise _bad("Transfer-Encoding is only accepted in HTTP/1.1 requests", line)
        if len(te) != 1 or te[0].lower() != b"chunked":
            raise _bad("only 'Transfer-Encoding: chunked' is accepted", line)
        if lengths:
            raise _bad(MALFORMED, line)
        framing = _F_CHUNKED
    elif lengths:
        if lengths > 1 or length is None or not DIGITS.match(length):
            raise _bad(MALFORMED, line)
        size = int(length)
        if size:
            framing = _F_LENGTH
    host_name: str | None = None
    if hosts > 1:
        raise _bad("more than one Host header", line)
    if host is not None:
        try:
            host_name = _hosts.from_header(host)
        except _hosts.BadHost as e:
            raise _bad(f"bad Host header: {e}", line) from None
    elif http11:  # RFC 9112 3.2: a server MUST refuse it
        raise _bad("an HTTP/1.1 request must have a Host header", line)
    persistent = not close if http11 else (keep_alive and not close)
    return (
        method, target, version, Fields(pairs, True, index), framing, size, host, host_name,
        expect and http11, persistent,
    )


#: The other field lines of a head ``USUAL_REQUEST_HEAD`` matched are this long at most
#: (in bytes): a line takes 4 at least, so they cannot exceed ``MAX_FIELDS`` (a longer
#: block goes through ``parse_request_fields``, which counts).
USUAL_LINES_MAX = 4 * (MAX_FIELDS - 1)

#: A head is matched against ``USUAL_REQUEST_HEAD`` only below this many bytes: a longer
#: one goes straight to ``parse_request_fields`` (a match that fails late costs ~0.06 µs
#: a byte in backtracking; the parse below has its own bound, the 10 ms rule).
USUAL_HEAD_MAX = 8192


def usual_fields(host_field: bytes, host: bytes, lines: bytes) -> Fields:
    """The ``Fields`` of a head ``USUAL_REQUEST_HEAD`` matched (its Host field's name and
    value, and its other lines), made only when something reads them: the front's usual
    request is forwarded from its lines as they came (``Exchange.lines``)."""
    pairs = [(host_field, host)]
    if lines:
        for field_line in lines.split(b"\r\n")[1:]:
            name, _, value = field_line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
    return Fields(pairs, True)
