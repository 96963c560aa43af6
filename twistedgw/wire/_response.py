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
    _seen_names,
    bare_lf,
    connection_tokens,
    ctl_in_head,
    one_connection_value,
    valid_name,
)
from twistedgw.wire._request import Framing

#: Largest response head accepted (status line and headers together).
RESPONSE_HEAD_LIMIT = 64 * 1024

_NO_BODY_STATUSES = frozenset({204, 304})


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


def parse_response_head(raw: bytes, head_only: bool) -> ResponseHead | None:
    """Parse ``raw`` (a response head without its final CRLFCRLF); None for an interim
    1xx response; ``BadResponseHead`` when invalid. ``head_only``: the answer to HEAD."""
    if bare_lf(raw):
        raise BadResponseHead("a bare LF in the response head")
    if ctl_in_head(raw):
        raise BadResponseHead("a bare CR, a NUL or another control byte in the response head")
    lines = raw.split(b"\r\n")
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
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if b"," in value:
                lengths.extend(v.strip(b" \t") for v in value.split(b","))
            else:  # the usual single value, already stripped
                lengths.append(value)
        elif lower == b"transfer-encoding":
            codings.extend(v.strip(b" \t").lower() for v in value.split(b","))
        elif lower == b"connection":
            connection.append(value)
    if len(connection) == 1 and len(connection[0]) <= 64:  # the cache holds short values
        tokens = one_connection_value(connection[0])
    else:
        tokens = connection_tokens(connection)
    keep = status[0] == b"HTTP/1.1" and b"close" not in tokens
    length: int | None = None
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise BadResponseHead("invalid Content-Length")
        length = int(lengths[0])
    if codings and codings != [b"chunked"]:
        # A coding the gateway would relay undecoded under a dropped Transfer-Encoding:
        # the client could not read it (NGINX answers 502 too).
        raise BadResponseHead("a Transfer-Encoding other than 'chunked'")
    if head_only or code in _NO_BODY_STATUSES:
        return ResponseHead(code, phrase, headers, tokens, length, Framing.NONE, 0, keep)
    if codings:
        if length is not None:
            keep = False  # RFC 9112 6.3: both sent, chunked wins, close after this response
        return ResponseHead(code, phrase, headers, tokens, length, Framing.CHUNKED, 0, keep)
    if length is not None:
        framing = Framing.LENGTH if length else Framing.NONE
        return ResponseHead(code, phrase, headers, tokens, length, framing, length, keep)
    return ResponseHead(code, phrase, headers, tokens, length, Framing.UNTIL_CLOSE, 0, False)
