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

from typing import NamedTuple

from twistedgw.wire._abnf import (
    _NOT_CTL,
    _seen_names,
    connection_tokens,
    one_connection_value,
    valid_name,
)
from twistedgw.wire._request import Framing

#: Largest response head accepted (status line and headers together).
RESPONSE_HEAD_LIMIT = 64 * 1024

_NO_BODY_STATUSES = frozenset({204, 304})


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
    headers: list[tuple[bytes, bytes]]  # as received, repeats and order kept
    connection_tokens: frozenset[bytes]  # lower-case names the Connection header lists
    length: int | None  # body length when announced by Content-Length, else None
    framing: Framing  # how its body ends (NONE: no body, whatever the headers say)
    body_length: int  # bytes of body to read with LENGTH framing
    keep_alive: bool  # whether the connection may carry another request after it


_NO_TOKENS: frozenset[bytes] = frozenset()

# What a (valid) header name is to the framing: remembered per name as sent, bounded.
_OTHER, _LENGTH, _CODING, _CONNECTION = "other", "content-length", "transfer-encoding", "connection"
_FRAMING_NAMES = {_LENGTH.encode(): _LENGTH, _CODING.encode(): _CODING,
                  _CONNECTION.encode(): _CONNECTION}
_kinds: dict[bytes, str] = {}
_KINDS_MAX = 4096


def _kind_of(name: bytes) -> str:
    kind = _FRAMING_NAMES.get(name.lower(), _OTHER)
    if len(_kinds) >= _KINDS_MAX:
        _kinds.clear()
    _kinds[name] = kind
    return kind


def parse_response_head(raw: bytes, head_only: bool) -> ResponseHead | None:
    """Parse ``raw`` (a response head without its final CRLFCRLF); None for an interim
    1xx response; ``BadResponseHead`` when invalid. ``head_only``: the answer to HEAD."""
    # ``head_controls``, written out (once per response; the split counts the CRLFs).
    lines = raw.split(b"\r\n")
    crlf = len(lines) - 1
    if raw.count(b"\n") != crlf:
        raise BadResponseHead("a bare LF in the response head")
    if raw.count(b"\r") != crlf or raw.translate(None, _NOT_CTL):
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
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            raise BadResponseHead("obsolete line folding in the response head")
        name, sep, value = line.partition(b":")
        if not sep or (name not in _seen_names and not valid_name(name)):
            raise BadResponseHead("invalid response header")
        value = value.strip(b" \t")
        append((name, value))
        # Only the three framing fields are looked at: the names a backend sends are
        # remembered with what they are (one lookup, no lower-casing per header).
        kind = _kinds.get(name)
        if kind is None:
            kind = _kind_of(name)
        if kind is _OTHER:
            continue
        if kind is _LENGTH:
            if b"," in value:
                lengths.extend(v.strip(b" \t") for v in value.split(b","))
            else:  # the usual single value, already stripped
                lengths.append(value)
        elif kind is _CODING:
            codings.extend(v.strip(b" \t").lower() for v in value.split(b","))
        else:
            connection.append(value)
    if not connection:
        tokens = _NO_TOKENS
    elif len(connection) == 1 and len(connection[0]) <= 64:  # the cache holds short values
        tokens = one_connection_value(connection[0])
    else:
        tokens = connection_tokens(connection)
    keep = status[0] == b"HTTP/1.1" and b"close" not in tokens
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
        ResponseHead, (code, phrase, headers, tokens, length, framing, body_length, keep)
    )


_new_head = tuple.__new__
