"""Response heads from backends (RFC 9112 4, 6.3): parsed once, framing decided.

The gateway reuses backend connections, so a response read differently from the
way the backend meant it would desynchronise the next request's: a head with a
bare CR or LF, a NUL or another CTL (the status line included), obsolete line
folding, a field name that is not a token, or Content-Length values that do not
agree, or a Transfer-Encoding other than one ``chunked`` (a coding the client
could not undo once the field is dropped as hop-by-hop; NGINX refuses it too), is
refused (the forwarder answers 503 and drops the connection). Chunked framing
wins over a length (and the connection is not reused after such a response); no
framing means "until close", never reused.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from twistedgw._headers import HOP_BY_HOP
from twistedgw._memo import remember
from twistedgw.wire._abnf import (
    _CTL_TO_SPACE,
    FRAMING_LINE,
    RESPONSE_HEAD,
    connection_tokens,
    one_connection_value,
    valid_name,
)
from twistedgw.wire._answer import SERVER, http_date
from twistedgw.wire._request import Framing

#: Largest response head accepted (status line and headers together).
RESPONSE_HEAD_LIMIT = 64 * 1024

_NO_BODY_STATUSES = frozenset({204, 304})

#: The response fields a relay never copies: hop-by-hop ones, Server (the gateway sends
#: its own, as NGINX's ``proxy_hide_header``) and Content-Length (the responder frames
#: the body from the parsed length).
NOT_RELAYED: frozenset[bytes] = HOP_BY_HOP | {b"server", b"content-length"}


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
(_F_NONE, _F_LENGTH, _F_CHUNKED, _F_UNTIL_CLOSE) = (
    Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE,
)


class BadResponseHead(ValueError):
    """The backend's response head is not HTTP/1.1 the gateway relays."""


class ResponseHead(NamedTuple):
    """A backend's response head as parsed (a tuple: one is built per response)."""

    code: int
    phrase: bytes
    # The field lines as received, each with the CRLF before it (b"" when none): a
    # relay copies them on without a list (``upstream/_forward.py``); ``headers`` lists
    # them.
    block: bytes
    connection_tokens: frozenset[bytes]  # lower-case names the Connection header lists
    length: int | None  # body length when announced by Content-Length, else None
    framing: Framing  # how its body ends (NONE: no body, whatever the headers say)
    body_length: int  # bytes of body to read with LENGTH framing
    keep_alive: bool  # whether the connection may carry another request after it
    # The field lines a relay sends (each with the CRLF before it): the gateway's Server,
    # the backend's Date or the gateway's, the backend's end-to-end lines as sent. Made by
    # a ``ResponseShape`` only, when the Connection header names no field beyond the
    # never-relayed ones; None: the relay works them out from ``block``.
    relayed: bytes | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The fields as ``(name, value)`` pairs, in order, repeats kept, values without
        their surrounding whitespace."""
        pairs = []
        for line in self.block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
        return pairs


_NO_TOKENS: frozenset[bytes] = frozenset()

#: Each status code's three digits -> the code.
_CODES = {b"%03d" % code: code for code in range(1000)}
_CONTENT_LENGTH = b"content-length"
_COMMA = ord(",")
_CONNECTION = b"connection"
#: A shape's status line's version and code (``1.1 200``) -> (the code, whether HTTP/1.1,
#: whether the code has no body).
_STATUSES = {
    b"1.%d %03d" % (minor, code): (code, minor == 1, code in _NO_BODY_STATUSES)
    for minor in (0, 1) for code in range(1000)
}


def parse_response_head(raw: bytes, head_only: bool) -> ResponseHead | None:
    """Parse ``raw`` (a response head without its final CRLFCRLF); None for an interim
    1xx response; ``BadResponseHead`` when invalid. ``head_only``: the answer to HEAD.

    A head in the usual spelling is checked whole by one match (``RESPONSE_HEAD``: no
    CTL, no bare CR or LF, no folding, every name a token) and its framing fields found
    by one search of its lower-cased lines; any other is read line by line
    (``_parse_lines``), which refuses what is invalid and says why."""
    match = RESPONSE_HEAD.fullmatch(raw)
    if match is None:
        return _parse_lines(raw, head_only)
    minor, code_text, phrase, block = match.groups()
    code = _CODES[code_text]  # three digits (the match): looked up, not parsed
    if code < 200:
        if code < 100 or code == 101:
            return _parse_lines(raw, head_only)  # refused there, with the reason
        return None
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    if block:
        for name, value in FRAMING_LINE.findall(block.lower()):
            if name == _CONTENT_LENGTH:
                if _COMMA in value:  # (an int: see _request.py's _CR)
                    lengths.extend([v.strip(b" \t") for v in value.split(b",")])
                else:  # the usual single value
                    lengths.append(value.strip(b" \t"))
            elif name == _CONNECTION:
                connection.append(value.strip(b" \t"))
            else:  # transfer-encoding (lower-cased with the rest)
                codings.extend([v.strip(b" \t") for v in value.split(b",")])
    if len(lengths) == 1 and not codings and not head_only and code not in _NO_BODY_STATUSES:
        # ``_framed``'s usual case written out: one Content-Length, no coding.
        first = lengths[0]
        if first.isdigit() and len(first) <= 18:
            if not connection:
                tokens = _NO_TOKENS
            elif len(connection) == 1 and len(connection[0]) <= 64:
                tokens = one_connection_value(connection[0])
            else:
                tokens = connection_tokens(connection)
            length = int(first)
            return _new_head(  # type: ignore[no-any-return]
                ResponseHead,
                (code, phrase or b"", block, tokens, length, _F_LENGTH if length else _F_NONE,
                 length, minor == b"1" and b"close" not in tokens, None),
            )
    return _framed(
        code, phrase or b"", block, minor == b"1", lengths, codings, connection, head_only
    )


def _parse_lines(raw: bytes, head_only: bool) -> ResponseHead | None:
    """``parse_response_head`` line by line: for the heads ``RESPONSE_HEAD`` does not
    match (most of them invalid, refused here with the reason)."""
    # ``head_controls``, written out (the split counts the CRLFs).
    lines = raw.split(b"\r\n")
    crlf = len(lines) - 1
    if raw.count(b"\n") != crlf:
        raise BadResponseHead("a bare LF in the response head")
    if raw.count(b"\r") != crlf or raw.translate(_CTL_TO_SPACE) != raw:
        raise BadResponseHead("a bare CR, a NUL or another control byte in the response head")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadResponseHead("invalid status line")
    code_text = status[1]
    if len(code_text) != 3 or not code_text.isdigit():
        raise BadResponseHead("invalid status code")
    code = int(code_text)
    if code < 100:
        raise BadResponseHead("invalid status code")
    if code == 101:
        raise BadResponseHead("protocol upgrades are not relayed")
    if code < 200:
        return None
    phrase = status[2] if len(status) == 3 else b""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            raise BadResponseHead("obsolete line folding in the response head")
        name, sep, value = line.partition(b":")
        if not sep or not valid_name(name):
            raise BadResponseHead("invalid response header")
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == _CONTENT_LENGTH:
            lengths.extend(v.strip(b" \t") for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings.extend(v.strip(b" \t").lower() for v in value.split(b","))
        elif lower == _CONNECTION:
            connection.append(value)
    return _framed(
        code, phrase, raw[len(lines[0]):], status[0] == b"HTTP/1.1", lengths, codings,
        connection, head_only,
    )


def _framed(
    code: int,
    phrase: bytes,
    block: bytes,
    http11: bool,
    lengths: list[bytes],
    codings: list[bytes],
    connection: list[bytes],
    head_only: bool,
) -> ResponseHead:
    """The head, its framing decided from its framing fields' values (RFC 9112 6.3):
    ``lengths`` (Content-Length values, list elements apart), ``codings``
    (Transfer-Encoding's, lower case), ``connection`` (Connection's)."""
    if not connection:
        tokens = _NO_TOKENS
    elif len(connection) == 1 and len(connection[0]) <= 64:  # the cache holds short values
        tokens = one_connection_value(connection[0])
    else:
        tokens = connection_tokens(connection)
    keep = http11 and b"close" not in tokens
    length: int | None = None
    if lengths:
        first = lengths[0]
        if (
            (len(lengths) > 1 and len(set(lengths)) != 1)
            or not first.isdigit() or len(first) > 18
        ):
            raise BadResponseHead("invalid Content-Length")
        length = int(first)
    if codings and codings != [b"chunked"]:
        # A coding the gateway would relay undecoded under a dropped Transfer-Encoding:
        # the client could not read it (NGINX answers 502 too).
        raise BadResponseHead("a Transfer-Encoding other than 'chunked'")
    if head_only or code in _NO_BODY_STATUSES:
        framing, body_length = _F_NONE, 0
    elif codings:
        framing, body_length = _F_CHUNKED, 0
        if length is not None:
            keep = False  # RFC 9112 6.3: both sent, chunked wins, close after this response
    elif length is not None:
        framing, body_length = (_F_LENGTH if length else _F_NONE), length
    else:
        framing, body_length, keep = _F_UNTIL_CLOSE, 0, False
    # tuple.__new__ directly: the NamedTuple's own __new__ is a Python call per response.
    return _new_head(  # type: ignore[no-any-return]
        ResponseHead, (code, phrase, block, tokens, length, framing, body_length, keep, None)
    )


_new_head = tuple.__new__


# -- response shapes ------------------------------------------------------------

_VALUE = rb"[\t\x20-\x7e\x80-\xff]*+"  # RESPONSE_HEAD's field value, possessive
_SERVER_LINE = b"\r\nServer: " + SERVER
_SERVER_DATE = _SERVER_LINE + b"\r\nDate: "
#: Most runs of relayed lines a shape has between never-relayed ones, and most lines.
_MAX_RUNS = 4
_MAX_LINES = 32
_HEAD_END_LIMIT = RESPONSE_HEAD_LIMIT + 4  # the largest head with its CRLFCRLF
_MAX_BLOCK = 4096  # the longest field lines a layout is learnt from
_CONTENT_LENGTH_LINE = rb"[ \t]*+(?P<cl>[0-9]{1,18})[ \t]*+"


class ResponseShape:
    """A parser for the heads of one layout: the status line, then exactly these field
    names (as spelt) in this order, one Content-Length of digits, at most one
    Connection, no Transfer-Encoding. ``parse`` answers what ``parse_response_head``
    would, with ``relayed`` set, or None when the head is not of this layout (or an
    interim 1xx): the general parser reads it then."""

    __slots__ = ("_conn", "_connection", "_lead", "_length", "_match", "_one_run", "_open",
                 "_relayable", "_run", "_runs", "_tokens", "end", "names")

    def __init__(self, names: tuple[bytes, ...]) -> None:
        self.names = names
        # (A 1xx is not read here: the general parser answers None for it, or refuses it.)
        parts = [rb"HTTP/(1\.[01] [2-9][0-9]{2})(?: (" + _VALUE + rb"))?("]
        groups = 3  # the groups so far: version and code, phrase, block
        length = connection = 0  # the groups of the framing fields' values
        runs: list[int] = []  # the groups of the runs of relayed lines
        in_run = dated = False
        for name in names:
            lower = name.lower()
            line = rb"\r\n" + re.escape(name) + b":"
            if lower in NOT_RELAYED:
                if in_run:
                    parts.append(b")")
                    in_run = False
                if lower == _CONTENT_LENGTH:
                    parts.append(line + rb"[ \t]*+([0-9]{1,18})[ \t]*+")
                    groups += 1
                    length = groups
                elif lower == _CONNECTION:
                    parts.append(line + b"(" + _VALUE + b")")
                    groups += 1
                    connection = groups
                else:
                    parts.append(line + _VALUE)
                continue
            dated = dated or lower == b"date"
            if not in_run:
                parts.append(b"(")
                groups += 1
                runs.append(groups)
                in_run = True
            parts.append(line + _VALUE)
        if in_run:
            parts.append(b")")
        parts.append(b")()")  # the block; an empty group stands for a field not there
        empty = groups + 1
        pattern = re.compile(b"".join(parts) + b"\r\n\r\n")
        # A head and its final CRLFCRLF at the start of the bytes read (``read``).
        self._match = pattern.match
        # Where ``match.groups()`` holds what ``read`` takes after the version and code,
        # the phrase and the block (its first three): the Content-Length value, the
        # Connection value (b"" when there is none) and the _MAX_RUNS runs of relayed
        # lines, empty ones last (read by index: a tuple's is the cheapest read).
        self._length = length - 1
        self._conn = (connection or empty) - 1
        self._runs = tuple(n - 1 for n in (*runs, *[empty] * (_MAX_RUNS - len(runs))))
        self._run = self._runs[0]
        # What comes before the relayed lines: the gateway's Server, and its Date when
        # the layout has none (b"": the Date is the clock's, per response).
        self._lead = _SERVER_LINE if dated else b""
        self._one_run = len(runs) <= 1
        # The last Connection value seen (a backend sends the same one), its tokens,
        # whether they leave the connection open, whether they name only never-relayed
        # fields (``_connection_value``; b"": no Connection field).
        self._connection = b""
        self._tokens = _NO_TOKENS
        self._open = True
        self._relayable = True

        # Where the last head ``read`` took ended (its body's first byte in the bytes read).
        self.end = 0

    def parse(self, raw: bytes, head_only: bool) -> ResponseHead | None:
        """``parse_response_head(raw, head_only)`` with ``relayed``, for a head of this
        layout; None for any other head (and an interim response)."""
        head = self.read(raw + b"\r\n\r\n", head_only)
        return head if self.end == len(raw) + 4 else None  # (not a head cut short)

    def read(self, data: bytes, head_only: bool) -> ResponseHead | None:
        """``parse``, for bytes read that start with a head and its final CRLFCRLF
        (perhaps a body after it, from ``end`` on): no search for the CRLFCRLF first."""
        match = self._match(data)
        if match is None:
            return None
        end = self.end = match.end()
        if end > _HEAD_END_LIMIT:  # refused by the general parser, with the reason
            return None
        groups = match.groups()
        code, http11, no_body = _STATUSES[groups[0]]
        connection = groups[self._conn]
        if connection != self._connection:
            self._connection_value(connection)
        length = int(groups[self._length])
        if head_only or no_body:
            framing, body_length = _F_NONE, 0
        else:
            framing, body_length = (_F_LENGTH if length else _F_NONE), length
        if not self._relayable:  # the relay cuts the fields Connection names too
            relayed = None
        elif self._one_run:
            relayed = (self._lead or _SERVER_DATE + http_date()) + groups[self._run]
        else:
            k0, k1, k2, k3 = self._runs
            relayed = b"%s%s%s%s%s" % (self._lead or _SERVER_DATE + http_date(), groups[k0],
                                       groups[k1], groups[k2], groups[k3])
        return _new_head(  # type: ignore[no-any-return]
            ResponseHead,
            (code, groups[1] or b"", groups[2], self._tokens, length, framing, body_length,
             http11 and self._open, relayed),
        )

    def _connection_value(self, connection: bytes) -> None:
        """A Connection value other than the last one seen (b"": none): its tokens, whether
        it lets the connection stay open, whether it names only never-relayed fields (then
        the relayed lines are the runs captured), kept until another comes."""
        value = connection.strip(b" \t")
        tokens = one_connection_value(value) if len(value) <= 64 else connection_tokens((value,))
        self._connection, self._tokens = connection, tokens
        self._open = b"close" not in tokens
        self._relayable = tokens <= NOT_RELAYED


#: Layouts by their names (None: one no shape reads), made on a layout's second sighting
#: (a backend that sends new names every time makes none): bounded, emptied when full.
_shapes: dict[tuple[bytes, ...], ResponseShape | None] = {}
_sighted: set[tuple[bytes, ...]] = set()
_SHAPES_MAX = 256


def learn_shape(head: ResponseHead) -> ResponseShape | None:
    """The ``ResponseShape`` of ``head``'s layout (a head the general parser read), or
    None when its layout is not one a shape reads (no single Content-Length, a
    Transfer-Encoding or a second Connection, too many lines or bytes) or is seen the
    first time."""
    if head.length is None or head.framing is _F_CHUNKED:
        return None
    block = head.block
    if len(block) > _MAX_BLOCK or block.count(b"\r\n") > _MAX_LINES:
        return None  # (nor remembered: a large head's names are not kept)
    names = tuple([line[: line.find(b":")] for line in block.split(b"\r\n")[1:]])
    if names in _shapes:
        return _shapes[names]  # None: a layout no shape reads, known as such
    if names not in _sighted:
        if len(_sighted) >= _SHAPES_MAX:
            _sighted.clear()
        _sighted.add(names)
        return None
    shape = _shape_for(names)
    return remember(_shapes, names, shape, _SHAPES_MAX)


def _shape_for(names: tuple[bytes, ...]) -> ResponseShape | None:
    """The shape of a layout of these names, or None when a shape does not read it."""
    lowers = [name.lower() for name in names]
    if (lowers.count(_CONTENT_LENGTH) != 1 or lowers.count(_CONNECTION) > 1
            or b"transfer-encoding" in lowers):
        return None
    runs = 0
    relayed_before = False
    for lower in lowers:
        relayed = lower not in NOT_RELAYED
        runs += relayed and not relayed_before
        relayed_before = relayed
    if runs > _MAX_RUNS:
        return None
    return ResponseShape(names)
