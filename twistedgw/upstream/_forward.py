"""The HTTP client side of the gateway: relay one authorised request to its backend.

One `Forwarder` per process owns the backend connection pool (`upstream/_client.py`).
`Forwarder.forward` is called by the request path (`http/_resource.py`) once the
exchange (a `wire.Exchange`) is allowed and its body read, and takes the exchange
over until its `wire.Responder` is finished or aborted:

* the request head is written as bytes: hop-by-hop, Connection-named,
  Content-Length, Host, the caller's `remove_headers`, client-sent
  X-Forwarded-* and every header whose name contains `_` are dropped (WSGI and
  CGI backends read `X_Client_Cert` as `X-Client-Cert`; NGINX drops them too,
  `underscores_in_headers off`); the gateway's own X-Forwarded-For/-Proto/-Host and
  the caller's `add_headers` are set;
* the spooled request body is streamed, never read whole;
* the response head is built as one header list, given to the responder once; the
  body is relayed as it arrives; this relay is registered as the responder's
  producer, so a slow client pauses the backend socket instead of the gateway
  buffering the body;
* failures before the response headers become WSO2-style JSON errors (503 for
  "could not reach the backend", 504 for "no response in time"); failures after
  the headers abort the client connection, so a truncated body can never look
  complete; a client that goes away cancels the backend request;
* a client that accepts none of the response for ``send_timeout`` seconds while
  output waits for it (NGINX's ``send_timeout``) is aborted and the backend
  request cancelled: back-pressure pauses the backend timer, so without this a
  client that never reads would hold both connections for as long as it likes.

`forward` never raises; what happened is reported once through `on_done`.
"""

from __future__ import annotations

import enum
import functools
import re
import socket
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any, NamedTuple

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from twistedgw import errors
from twistedgw._headers import HOP_BY_HOP
from twistedgw._memo import remember
from twistedgw.tracing import TRACE_HEADERS, BackendSpan, RequestTrace
from twistedgw.upstream._client import (
    BackendCall,
    BadResponse,
    ConnectFailed,
    NoResponse,
    Origin,
    Upstream,
    UpstreamError,
    parse_origin,
)
from twistedgw.upstream._tunnel import check_switch
from twistedgw.wire import (
    NOT_RELAYED,
    SERVER,
    TOKEN,
    UNUSUAL_NAMES,
    Exchange,
    Responder,
    ResponseHead,
    connection_tokens,
    http_date,
)

__all__ = ["HOP_BY_HOP", "NO_EDITS", "ForwardResult", "ForwardSettings", "Forwarder", "HeadEdits"]

_log = Logger(namespace="twistedgw.upstream._forward")

# Request headers the gateway always sets itself or must not pass on:
# Content-Length comes from the spooled body, Host from the target URL,
# Expect was already answered by twisted.web, and the forwarding headers are
# the edge's to write (a client could otherwise claim any address or scheme).
_REQUEST_DROP: frozenset[bytes] = HOP_BY_HOP | {
    b"content-length",
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
}

# Methods whose empty body is sent without a Content-Length (as clients do);
# every other method with an empty body says "Content-Length: 0".
_NO_LENGTH_WHEN_EMPTY: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"}
)

_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")

# twisted.web's statuses without a body, as a set (its tuple is searched by comparisons).
_NO_BODY_CODES: frozenset[int] = frozenset(NO_BODY_CODES)

# Status recorded when the client left before anything was sent (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class ForwardSettings:
    connect_timeout: float = 5.0
    backend_timeout: float = 60.0  # time to the backend's response headers, and max idle gap
    max_persistent_per_host: int = 64
    cached_connection_timeout: float = 60.0
    # An API with several backends skips one that refused a connection or timed out
    # for this long (tried last, not never: if all are down, the request still goes).
    endpoint_suspend_seconds: float = 30.0
    # Seconds the client may accept no byte while the response waits for it (paused).
    send_timeout: float = 60.0


class ForwardResult(NamedTuple):
    """What happened to one forwarded request, for the access log and metrics (a tuple:
    one is built per request).

    `status` is the status sent to the client (499 if the client left before
    any response was sent). `error_kind` is None on success, else one of
    "refused" (could not connect: refused, DNS, unreachable), "timeout"
    (connect timeout -> 503, no headers in time -> 504, idle body -> abort),
    "reset" (backend closed or broke the connection), "client_gone",
    "client_timeout" (the client accepted nothing for ``send_timeout``; a
    client error, not the backend's) and "other".
    """

    status: int
    bytes_sent: int
    error_kind: str | None


_new_result = tuple.__new__  # a ForwardResult without its NamedTuple __new__ (a Python call)

#: ``Forwarder.relay``'s ``on_done``: a ``ForwardResult``'s status, bytes sent and error
#: kind, as three arguments.
OnDone = Callable[[int, int, "str | None"], None]


# -- header hygiene ----------------------------------------------------------


# Bytes as ints for ``in``: on Python 3.11 ``b"x" in data`` first tries its argument as an
# integer and formats the TypeError it raises (~1.8k instructions per test).
_CR, _LF, _NUL, _UNDERSCORE = ord("\r"), ord("\n"), 0, ord("_")


def _one_line(value: bytes) -> bytes:
    """A header value can never carry a line break into the backend request."""
    if _CR in value or _LF in value or _NUL in value:
        return value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")
    return value


class HeadEdits(NamedTuple):
    """What the gateway changes in a request head on its way to the backend, prepared once
    (an API's pipeline sets and removes the same headers for a caller request after
    request: ``http/_resource.py`` keeps one per connection, issue 27 item 3).

    ``drop``: the lower-case names never copied from the client: ``_REQUEST_DROP``, the
    pipeline's removals and the names it sets (a client must not be able to pre-seed a
    header the gateway vouches for). ``block``: the header lines the gateway adds, as
    bytes (names checked, values on one line), ``lines`` of them."""

    drop: frozenset[bytes]
    block: bytes
    lines: int

    @classmethod
    def of(
        cls,
        add_headers: Sequence[tuple[bytes, bytes]] = (),
        remove_headers: Collection[bytes] = (),
    ) -> HeadEdits:
        """The edits of a pipeline's ``HeaderEdit``: set ``add_headers``, remove
        ``remove_headers``; ValueError for a name that is not a token."""
        drop = _drop_set(remove_headers) if remove_headers else _REQUEST_DROP
        if not add_headers:
            return cls(drop, b"", 0)
        for name, _ in add_headers:
            if not TOKEN.match(name):
                raise ValueError(f"invalid header name {name!r}")
        drop = drop.union(name.lower() for name, _ in add_headers)
        block = b"".join([b"%s: %s\r\n" % (name, _one_line(value)) for name, value in add_headers])
        return cls(drop, block, len(add_headers))

    def adding(self, headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]) -> HeadEdits:
        """These edits, then ``headers`` set too and ``drop`` never copied (a backend
        span's trace context, per attempt)."""
        more = HeadEdits.of(headers, drop)
        return HeadEdits(self.drop | more.drop, self.block + more.block, self.lines + more.lines)


NO_EDITS = HeadEdits(_REQUEST_DROP, b"", 0)


def build_request_head(
    exchange: Exchange,
    origin: Origin,
    target: bytes,
    *,
    add_headers: Sequence[tuple[bytes, bytes]] = (),
    remove_headers: Collection[bytes] = (),
    body_length: int | None = None,
    edits: HeadEdits | None = None,
) -> bytes:
    """The request head to send to the backend for `exchange`, as bytes.

    `add_headers` replace any client-sent header of the same name: a client
    must not be able to pre-seed a header the gateway vouches for. `edits`, when given,
    are both prepared (``HeadEdits``) and stand for them.
    """
    if edits is None:
        edits = HeadEdits.of(add_headers, remove_headers) if (
            add_headers or remove_headers
        ) else NO_EDITS
    return _request_head(exchange, origin, target, body_length, edits)


def _request_head(
    exchange: Exchange,
    origin: Origin,
    target: bytes,
    body_length: int | None,
    edits: HeadEdits,
) -> bytes:
    """``build_request_head`` with its edits prepared, every argument by position (the
    forwarder's call, once per request: 3.11 runs a call with keywords in a nested
    interpreter)."""
    method = exchange.method
    if method not in _SAFE_METHODS and not TOKEN.match(method):
        raise ValueError("invalid request method")
    if _NUL in target.translate(_UNSAFE_TO_NUL):  # _UNSAFE_TARGET, in one C pass
        raise ValueError("invalid request target")
    conn = exchange.conn
    if exchange.client_ip == conn.client_ip and exchange.secure is conn.secure:
        forwarded = conn.forwarded  # the connection's (``_forwarded``), once built
        if forwarded is None:
            forwarded = _forwarded(exchange)
    else:
        forwarded = _forwarded(exchange)
    lines = exchange.lines
    host = exchange.host  # validated by the front (_hosts.from_header), or None
    if lines is not None and host is not None and origin.plain_host:
        # The front checked the head whole (``wire.USUAL_REQUEST_HEAD``): its lines after
        # Host hold no name ``_REQUEST_DROP`` holds, none with a ``_`` and no CTL, and
        # are copied as they came, but those the pipeline drops. No piece holds a CR, LF
        # or NUL but the CRLFs written here (as below). (The edits' fields by index: 3.11
        # reads a NamedTuple's field by name through the generic attribute path.)
        if lines and edits[0] is not _REQUEST_DROP:  # ``edits.drop``
            lines = _kept_lines(lines, edits[0])
        return b"%s %s HTTP/1.1\r\nHost: %s%s\r\n%sX-Forwarded-Host: %s\r\n%s%s\r\n" % (
            method, target, origin.host_header, lines, forwarded, host, edits[1],  # .block
            b"" if body_length is None else b"Content-Length: %d\r\n" % (body_length,),
        )
    # ``_head_lines`` with ``_same``, written out: the one pass most requests need.
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (exchange.method, target, origin.host_header)]
    append = out.append
    drop = edits.drop
    connection = False
    for name, value in exchange.fields.pairs:
        lower = name.lower()
        if lower in drop or lower in _REQUEST_DROP or _UNDERSCORE in name:
            if lower == b"connection":
                connection = True
            continue
        append(b"%s: %s\r\n" % (name, value))
    append(forwarded)
    if host is not None:
        append(b"X-Forwarded-Host: %s\r\n" % (host,))
    if edits.lines:
        append(edits.block)
    if body_length is not None:
        append(b"Content-Length: %d\r\n" % (body_length,))
    append(b"\r\n")
    if connection:
        # The client's Connection header names more fields to drop (hop-by-hop for it):
        # again, leaving those out too. Rare: clients seldom list any.
        extra = connection_tokens(exchange.fields.getRawHeaders(b"connection") or ())
        out, _ = _head_lines(exchange, origin, target, edits, extra, body_length, forwarded, _same)
    else:
        extra = _NO_NAMES
    head = b"".join(out)
    if exchange.fields.clean and origin.plain_host:
        # Every piece is known to hold no CR, LF or NUL: the parsed fields (``Fields.clean``),
        # the checked method and target, the validated Host, the forwarded block and the
        # edits (both built through ``_one_line``), the origin's Host just checked.
        return head
    # Every line ends in the one CRLF written for it: then no value holds a CR, LF or
    # NUL, and ``_one_line`` (a call and three scans per value) would change nothing.
    # The first entry holds two lines (request line, Host), the forwarded block one or
    # two, the gateway's own block ``edits.lines`` (and is left out when empty).
    crlfs = len(out) + forwarded.count(b"\n") + (edits.lines - 1 if edits.lines else 0)
    if head.count(b"\n") == crlfs and head.count(b"\r") == crlfs and _NUL not in head:
        return head
    out, _ = _head_lines(
        exchange, origin, target, edits, extra, body_length, forwarded, _one_line
    )
    return b"".join(out)


_NO_NAMES: frozenset[bytes] = frozenset()
assert _REQUEST_DROP <= UNUSUAL_NAMES, "a usual head's lines never hold a dropped name"


def _kept_lines(lines: bytes, drop: frozenset[bytes]) -> bytes:
    """``lines`` (field lines, each with the CRLF before it) but those whose lower-case
    name is in ``drop``."""
    kept = [b""]
    for line in lines.split(b"\r\n")[1:]:
        if line[: line.find(b":")].lower() not in drop:
            kept.append(line)
    return b"\r\n".join(kept)
_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
# Each byte ``_UNSAFE_TARGET`` matches mapped to NUL, every other to itself: a target holds
# one iff its translation holds a NUL. A table without deletions is one pass over the
# target; ``translate(None, allowed)`` built a table from the ~220 allowed bytes per call
# (~1.6k instructions more per request).
_UNSAFE_TO_NUL = bytes(0 if _UNSAFE_TARGET.match(bytes([b])) else b for b in range(256))


# ``_REQUEST_DROP`` with a caller's ``remove_headers``, lower-cased, by the set of names
# given. An API's pipeline removes the same names on every request (the identity headers
# a caller could forge), so this is computed once per distinct set, not once per request.
_drop_sets: dict[frozenset[bytes], frozenset[bytes]] = {}
_DROP_SETS_MAX = 256


def _drop_set(remove_headers: Collection[bytes]) -> frozenset[bytes]:
    key = remove_headers if isinstance(remove_headers, frozenset) else frozenset(remove_headers)
    drop = _drop_sets.get(key)
    if drop is None:
        drop = remember(
            _drop_sets, key, _REQUEST_DROP.union(map(bytes.lower, key)), _DROP_SETS_MAX
        )
    return drop


def _same(value: bytes) -> bytes:
    return value


def _head_lines(
    exchange: Exchange,
    origin: Origin,
    target: bytes,
    edits: HeadEdits,
    extra: Collection[bytes],
    body_length: int | None,
    forwarded: bytes,
    one_line: Callable[[bytes], bytes],
) -> tuple[list[bytes], bool]:
    """``build_request_head``'s lines, each client value passed through ``one_line``; a
    header whose lower-case name is in ``edits.drop`` or ``extra`` is left out. And
    whether the client sent a Connection header (whose tokens ``extra`` must hold)."""
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (exchange.method, target, origin.host_header)]
    append = out.append
    drop = edits.drop
    connection = False
    for name, value in exchange.fields.pairs:
        lower = name.lower()
        if lower in _REQUEST_DROP or lower in drop or lower in extra or _UNDERSCORE in name:
            if lower == b"connection":
                connection = True
            continue
        append(b"%s: %s\r\n" % (name, one_line(value)))
    out.append(forwarded)
    host = exchange.host  # validated by the front (_hosts.from_header), or None
    if host is not None:
        out.append(b"X-Forwarded-Host: %s\r\n" % (one_line(host),))
    if edits.lines:
        out.append(edits.block)
    if body_length is not None:
        out.append(b"Content-Length: %d\r\n" % (body_length,))
    out.append(b"\r\n")
    return out, connection


def _forwarded(exchange: Exchange) -> bytes:
    """The ``X-Forwarded-For``/``-Proto`` lines: once per connection, unless a trusted
    proxy named another client or scheme for this request (``http/_callers.py``)."""
    conn = exchange.conn
    if exchange.client_ip == conn.client_ip and exchange.secure is conn.secure:
        block = conn.forwarded
        if block is None:
            block = conn.forwarded = _forwarded_lines(conn.client_ip, conn.secure)
        return block
    return _forwarded_lines(exchange.client_ip, exchange.secure)


@functools.lru_cache(maxsize=1024)
def _forwarded_lines(client_ip: str, secure: bool) -> bytes:
    """One bytes object per address and scheme: the connections of one client address
    share their block (``wire.Connection.forwarded``) instead of a copy each."""
    proto = b"X-Forwarded-Proto: https\r\n" if secure else b"X-Forwarded-Proto: http\r\n"
    if not client_ip:
        return proto
    return b"X-Forwarded-For: %s\r\n%s" % (_one_line(client_ip.encode("ascii", "replace")), proto)


# The backend's response headers never copied: hop-by-hop, Server (the gateway's own is
# sent) and Content-Length (the responder frames the body from the parsed length).
_RESPONSE_SKIP: frozenset[bytes] = NOT_RELAYED


# A backend's header names as sent -> lower case, or b"" when never relayed
# (``_RESPONSE_SKIP``): remembered, as a backend sends the same few; bounded.
_relayed: dict[bytes, bytes] = {}
_RELAYED_MAX = 4096


def _relayed_name(name: bytes) -> bytes:
    lower = name.lower()
    if lower in _RESPONSE_SKIP:
        lower = b""
    return remember(_relayed, name, lower, _RELAYED_MAX)


# ``_RESPONSE_SKIP``'s field lines in a head's block (``ResponseHead.block``: each line
# with the CRLF before it), cut out in one pass.
_NOT_RELAYED = re.compile(
    rb"\r\n(?:%s):[^\r\n]*" % b"|".join(re.escape(name) for name in sorted(_RESPONSE_SKIP)),
    re.IGNORECASE,
)
_SERVER_LINE = b"\r\nServer: " + SERVER


def relay_block(head: ResponseHead) -> bytes | None:
    """``response_headers``'s fields as one block of lines, each with the CRLF before it,
    cut from the backend's block with no list: the gateway's Server, the backend's Date
    or the gateway's, the backend's end-to-end lines as sent. None when its Connection
    header names fields beyond the hop-by-hop ones (then the list does it). A head a
    ``wire.ResponseShape`` read has them already (``ResponseHead.relayed``)."""
    if head.relayed is not None:
        return head.relayed
    tokens = head.connection_tokens
    if tokens and not tokens <= _RESPONSE_SKIP:
        return None
    block = head.block
    if block:
        block = _NOT_RELAYED.sub(b"", block)
        if block.lower().find(b"\r\ndate:") >= 0:
            return _SERVER_LINE + block
    return b"%s\r\nDate: %s%s" % (_SERVER_LINE, http_date(), block)


def response_headers(
    head: ResponseHead, is_head: bool
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """The client answer's header list for a backend's ``head``, and its body length.

    The backend's end-to-end headers in their order, repeats kept; its Date if it sent
    one, else the gateway's. The backend's Server header is dropped and the
    gateway's (no version) sent, as NGINX's ``proxy_hide_header`` does by default: a
    backend's software and version are not the client's business.
    """
    named = head.connection_tokens
    out: list[tuple[bytes, bytes]] = [(b"Server", SERVER)]
    append = out.append
    dated = False
    relayed = _relayed
    for pair in head.headers:
        name = pair[0]
        lower = relayed.get(name)
        if lower is None:
            lower = _relayed_name(name)
        if not lower or lower in named:  # b"": never relayed
            continue
        if lower == b"date":
            dated = True
        append(pair)
    if not dated:
        out.insert(1, (b"Date", http_date()))
    code = head.code
    length = head.length if (is_head or code not in NO_BODY_CODES) else None
    return out, length


# -- forwarding --------------------------------------------------------------


class Forwarder:
    """Relays requests to backends over one persistent, per-origin connection pool."""

    _MAX_ORIGINS = 1024

    def __init__(
        self,
        reactor: Any,
        settings: ForwardSettings = ForwardSettings(),
        *,
        tls_policy: IPolicyForHTTPS | None = None,
        tls_policy_for: Callable[[bytes], IPolicyForHTTPS] | None = None,
    ) -> None:
        """``tls_policy_for(target)`` picks the TLS policy per https request (per API,
        current config); without it every https backend gets ``tls_policy``."""
        self._reactor = reactor
        self._settings = settings
        self._tls = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        self._tls_for = tls_policy_for
        self._upstream = Upstream(
            reactor,
            connect_timeout=settings.connect_timeout,
            max_idle_per_origin=settings.max_persistent_per_host,
            idle_timeout=settings.cached_connection_timeout,
        )
        self._origins: dict[tuple[bytes, IPolicyForHTTPS], Origin] = {}
        self._splits: dict[bytes, tuple[IPolicyForHTTPS, tuple[Origin, bytes]]] = {}
        self._deadlines = _Deadlines(reactor)
        self._down: dict[bytes, float] = {}  # scheme://host:port -> skipped until (seconds)
        self._with: dict[tuple[float | None, float | None], ForwardSettings] = {}

    # -- several backends (an API's ``backends``) ---------------------------------

    def _ordered(self, targets: list[bytes]) -> list[bytes]:
        """``targets`` with the endpoints known to be down moved last (order kept)."""
        now = self._reactor.seconds()
        down = self._down
        up = [t for t in targets if down.get(_endpoint(t), 0.0) <= now]
        if len(up) == len(targets):
            return targets
        return up + [t for t in targets if down.get(_endpoint(t), 0.0) > now]

    def _suspend(self, target: bytes) -> None:
        remember(
            self._down, _endpoint(target),
            self._reactor.seconds() + self._settings.endpoint_suspend_seconds,
            self._MAX_ORIGINS,
        )

    def _answered(self, target: bytes) -> None:
        if self._down:
            self._down.pop(_endpoint(target), None)

    def _split(self, target: bytes, tls: IPolicyForHTTPS) -> tuple[Origin, bytes]:
        """Absolute URL -> (origin, path and query); origins are parsed once each, and an
        API's target (the same on every request) is split once per TLS policy."""
        known = self._splits.get(target)
        if known is not None and known[0] is tls:
            return known[1]
        split = self._split_new(target, tls)
        remember(self._splits, target, (tls, split), self._MAX_ORIGINS)
        return split

    def _split_new(self, target: bytes, tls: IPolicyForHTTPS) -> tuple[Origin, bytes]:
        scheme_end = target.find(b"://")
        if scheme_end < 0:
            raise ValueError("the backend target is not an absolute URL")
        path_start = target.find(b"/", scheme_end + 3)
        query_start = target.find(b"?", scheme_end + 3)
        if path_start < 0 or 0 <= query_start < path_start:
            cut = query_start if query_start >= 0 else len(target)
            base, rest = target[:cut], b"/" + target[cut:]
        else:
            base, rest = target[:path_start], target[path_start:]
        key = (base, tls)
        origin = self._origins.get(key)
        if origin is None:
            origin = remember(self._origins, key, parse_origin(base, tls), self._MAX_ORIGINS)
        return origin, rest

    def forward(
        self,
        exchange: Exchange,
        target: bytes,
        *,
        body: IO[bytes] | None = None,
        body_size: int = 0,
        add_headers: Sequence[tuple[bytes, bytes]] = (),
        remove_headers: Collection[bytes] = (),
        on_done: Callable[[ForwardResult], None] | None = None,
        backend_timeout: float | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
        alternatives: Sequence[bytes] = (),
        on_answer: OnAnswer | None = None,
        send_timeout: float | None = None,
        trace: RequestTrace | None = None,
        on_switch: OnSwitch | None = None,
        edits: HeadEdits | None = None,
    ) -> None:
        """Relay `exchange` to the absolute URL `target`; it is ours from now on.

        `body` is the request body read whole (`body_size` bytes, positioned at its
        start), None when there is none. `edits` are `add_headers` and `remove_headers`
        prepared once (``HeadEdits``), and stand for them when given.

        `backend_timeout` overrides the forwarder's for this request (an API's own
        `backend_timeout`), since one slow API must not set the limit for all;
        `tls_policy` likewise overrides how an https backend is verified.
        `alternatives` are the same request on other backends of the API, in the
        order to try them: when a backend refuses the connection or times out it
        is skipped for `endpoint_suspend_seconds`, and the request goes to the next
        one if that is safe (nothing was sent, or an idempotent method without a body).
        `on_answer(status, headers)` runs when the answer's status and header list are
        built and nothing is sent yet (the API's response transforms, which edit the
        list in place); an error it returns is answered instead of the backend's
        response.
        `send_timeout` overrides the forwarder's (the config in force, after a reload).
        `trace` ([tracing]): each attempt gets a client span under it, whose context
        the backend receives in place of the client's `traceparent`/`tracestate`.
        `on_switch(fields, rest, connection)`: the request asks for an upgrade (its
        `add_headers` say `Upgrade` and `Connection`); a valid `101` from the backend
        (`_tunnel.check_switch`) hands over the exchange, the 101's end-to-end fields, the
        bytes after it and the backend connection, which never returns to the pool; no
        `on_done` follows. Any other answer is relayed as usual.
        """
        done: OnDone | None = None
        if on_done is not None:
            reported = on_done

            def done(status: int, sent: int, kind: str | None) -> None:
                reported(_new_result(ForwardResult, (status, sent, kind)))

        self.relay(
            exchange, target, body, body_size, add_headers, remove_headers, done,
            backend_timeout, tls_policy, alternatives, on_answer, send_timeout, trace,
            on_switch, edits,
        )

    def relay(
        self,
        exchange: Exchange,
        target: bytes,
        body: IO[bytes] | None,
        body_size: int,
        add_headers: Sequence[tuple[bytes, bytes]],
        remove_headers: Collection[bytes],
        on_done: OnDone | None,
        backend_timeout: float | None,
        tls_policy: IPolicyForHTTPS | None,
        alternatives: Sequence[bytes],
        on_answer: OnAnswer | None,
        send_timeout: float | None,
        trace: RequestTrace | None,
        on_switch: OnSwitch | None,
        edits: HeadEdits | None,
    ) -> None:
        """``forward``, every argument by position, in its order: the request path's call,
        once per request (3.11 runs a call with keywords in a nested interpreter). Its
        ``on_done`` is given a ``ForwardResult``'s three values (``OnDone``), not the
        tuple: the request path's record reads them, and the tuple and a frame to unpack
        it cost ~1k a request (``forward`` wraps its caller's ``on_done``)."""
        settings = self._settings
        if (backend_timeout is not None and backend_timeout != settings.backend_timeout) or (
            send_timeout is not None and send_timeout != settings.send_timeout
        ):
            settings = self._settings_with(backend_timeout, send_timeout)
        rest = _NO_ALTERNATIVES
        if alternatives:
            target, *rest = self._ordered([target, *alternatives])
        if not body_size:
            body = None
        # The forwarding, made here: ``object.__new__`` and its fields set in this frame (a
        # class call runs ``__init__`` in a nested interpreter on 3.11, and a call with its
        # arguments costs ~750 instructions; once per request). Each store costs ~80, so
        # only what every request reads is set: the body's streaming state when it streams
        # (``response_head``), the call's ``origin``, ``head`` and ``body`` when it is sent
        # (``_send``), its ``queued_at`` if it waits (``Upstream._wait``).
        forwarding: _Forwarding = _new_object(_Forwarding)
        forwarding._fw = self
        forwarding._trace = trace
        forwarding._span = None
        forwarding._on_answer = on_answer
        forwarding._on_switch = on_switch
        forwarding._alternatives = rest
        forwarding._tls = tls_policy
        forwarding._edits = NO_EDITS if edits is None else edits
        forwarding._settings = settings
        forwarding._exchange = exchange
        forwarding._responder = exchange.responder
        forwarding._body = body
        method = forwarding.method = exchange.method
        forwarding._body_length = body_size if body is not None else (
            None if method in _NO_LENGTH_WHEN_EMPTY else 0
        )
        forwarding._target = target
        forwarding._on_done = on_done
        forwarding._phase = _WAITING
        forwarding._call = forwarding  # its own first call (``_send`` sends it)
        forwarding._send_timer = None
        forwarding._status = 0
        # ``BackendCall``'s fields that a cancel reads before the first attempt is sent.
        forwarding.handler = forwarding
        forwarding.cancelled = False
        forwarding.conn = None
        forwarding._connecting = None
        try:
            if edits is None:  # (not prepared: a bad name among them is answered 500)
                forwarding._edits = HeadEdits.of(add_headers, remove_headers) if (
                    add_headers or remove_headers
                ) else NO_EDITS
            # The client leaving cancels the backend request; then the first attempt.
            forwarding._responder.when_gone(forwarding._client_left)
            forwarding._send(True)
        except Exception:
            _log.failure("forwarding to {backend} failed", backend=_origin_for_logs(target))
            forwarding.fail_internal()

    def _settings_with(
        self, backend_timeout: float | None, send_timeout: float | None
    ) -> ForwardSettings:
        """The forwarder's settings with an API's own timeouts: made once per pair (an
        API's requests all ask for the same), not a ``dataclasses.replace`` per request."""
        key = (backend_timeout, send_timeout)
        settings = self._with.get(key)
        if settings is None:
            settings = self._settings
            if backend_timeout is not None:
                settings = replace(settings, backend_timeout=backend_timeout)
            if send_timeout is not None:
                settings = replace(settings, send_timeout=send_timeout)
            remember(self._with, key, settings, self._MAX_ORIGINS)
        return settings

    def close(self) -> Deferred[None]:
        """Close the idle pooled connections (in-flight requests are not touched)."""
        return self._upstream.close()


def _endpoint(target: bytes) -> bytes:
    """scheme://host:port of an absolute URL: what is skipped when it is down."""
    start = target.find(b"://")
    end = target.find(b"/", start + 3) if start >= 0 else -1
    query = target.find(b"?", start + 3) if start >= 0 else -1
    if 0 <= query and (end < 0 or query < end):
        end = query
    return (target if end < 0 else target[:end]).lower()


#: Methods that may be sent twice (RFC 9110 9.2.2); with no body, a retry is safe.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def _origin_for_logs(target: bytes) -> str:
    """scheme://host:port of a target, for logs: paths and queries may carry secrets."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(target.decode("ascii", "replace"))
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    except ValueError:
        return "<unparsable target>"


#: What a forwarding calls when the answer's status and headers are built (transforms).
OnAnswer = Callable[[int, list[tuple[bytes, bytes]]], "errors.GatewayError | None"]
#: What takes an upgraded exchange over after the backend's 101 (upstream/_tunnel.py).
OnSwitch = Callable[[list[tuple[bytes, bytes]], bytes, Any], None]


class _Phase(enum.Enum):
    """Where one forwarding is."""

    WAITING = "waiting for the backend's response head"
    STREAMING = "relaying the backend's response body"
    DONE = "done: reported through on_done"


# The members as module names: Python 3.11 reads an Enum member through a descriptor
# (~3x a global's cost), and every request reads a few dozen.
_WAITING, _STREAMING, _DONE = _Phase.WAITING, _Phase.STREAMING, _Phase.DONE


@implementer(IPushProducer)
class _Forwarding(BackendCall):
    """The state of one request/response relay: waiting -> streaming -> done.

    It is its own first `BackendCall` and that call's `ResponseHandler` (one object per
    request, issue 27 item 1; an attempt on another backend gets a `BackendCall` of its
    own, with this as its handler), and the responder's push producer while the body
    streams (no object of its own: a relay that pointed back at it made a reference
    cycle per request, left to the cyclic GC). It stops being its own handler when it is
    done (``_finish_result``), so no cycle outlives the request. One timer
    serves both phases: time to the response head (-> 504), then the longest silence
    between body bytes while the client is keeping up (-> abort). While the
    client is not keeping up (paused) a second one, the send timer, takes over.
    """

    # One per forwarded request: slots make its ~25 fields cheaper to set and read. Each
    # store costs ~90 instructions on 3.11, so ``__init__`` sets only what every request
    # reads: ``_paused``, ``_sent`` and ``_send_mark`` are set when the body starts to
    # stream (``response_head``), the call's ``origin``, ``head`` and ``body`` when it is
    # sent (``_send``), its ``queued_at`` when it waits (``Upstream._wait``).
    __slots__ = (
        "_alternatives", "_body", "_body_length", "_call", "_edits",
        "_exchange", "_fw", "_on_answer", "_on_done", "_on_switch", "_paused", "_phase",
        "_responder", "_send_mark", "_send_timer", "_sent", "_settings",
        "_span", "_status", "_target", "_tls", "_trace",
    )

    # Its fields, set by ``Forwarder.relay``, the one place that makes a forwarding.
    _fw: Forwarder
    _trace: RequestTrace | None
    _span: BackendSpan | None
    _on_answer: OnAnswer | None
    _on_switch: OnSwitch | None
    # The API's other backends, in the order to try them; ``_NO_ALTERNATIVES``: it has
    # none (the list itself, never popped, says so once the others are tried).
    _alternatives: list[bytes]
    _tls: IPolicyForHTTPS | None  # None: the forwarder's, per target
    _edits: HeadEdits
    _settings: ForwardSettings
    _exchange: Exchange
    _responder: Responder
    _body: IO[bytes] | None
    _body_length: int | None  # the Content-Length to announce: the body's, or none/0
    _target: bytes
    _on_done: OnDone | None
    _phase: _Phase
    _call: BackendCall | None  # the attempt in flight (this object: the first)
    _send_timer: IDelayedCall | None
    _status: int
    # Set when the body starts to stream (``response_head``).
    _paused: bool  # the client's output is full (we paused the backend)
    _sent: int  # body bytes relayed to the client
    _send_mark: int | None  # the client's progress when last looked at

    def __init__(self) -> None:
        """Not called: ``Forwarder.relay`` makes a forwarding and sets its fields there,
        without a call (a call with its ~14 arguments is ~750 instructions on 3.11, once
        per request)."""
        raise TypeError("a forwarding is made by Forwarder.relay")

    @property
    def _backend(self) -> str:
        """scheme://host:port, for log lines only (computed when one is written)."""
        return _origin_for_logs(self._target)

    # -- start -----------------------------------------------------------

    def _send(self, first: bool) -> None:
        """Send the request to ``_target``: ``first``, as this object (its own call), else
        as a call of its own (an attempt on another backend)."""
        exchange = self._exchange
        fw = self._fw
        tls = self._tls
        if tls is None:
            tls = fw._tls
            # (An ``http://`` target's fifth byte is the colon: most requests skip the
            # slice and lower-casing.)
            if fw._tls_for is not None and self._target[4] | 0x20 == 0x73 and (
                self._target[:8].lower() == b"https://"
            ):
                tls = fw._tls_for(self._target)
        target = self._target
        known = fw._splits.get(target)  # ``fw._split``, its usual case written out
        origin, path = known[1] if known is not None and known[0] is tls else fw._split(
            target, tls
        )
        edits = self._edits
        if self._trace is not None:  # this attempt's span: its context replaces the client's
            self._span = self._trace.backend(exchange.method, self._target)
            edits = edits.adding(self._span.headers, TRACE_HEADERS)
        head = _request_head(exchange, origin, path, self._body_length, edits)
        body = self._body
        if body is not None:
            body.seek(0)  # a retry on another backend sends it from its start
        # ``_Deadlines.arm``, written out (once per request).
        deadlines = fw._deadlines
        due = fw._reactor.seconds() + self._settings.backend_timeout
        deadlines._due[self] = due
        if deadlines._call is None or due < deadlines._at:
            deadlines._schedule(due)
        upstream = fw._upstream
        if first:  # this object is the call (``_call`` already)
            self.origin, self.head, self.body = origin, head, body
            upstream.send(self)
        else:  # an attempt on another backend: a call of its own
            self._call = upstream.request(origin, exchange.method, head, body, self)

    def _next_endpoint(self, kind: str, nothing_sent: bool) -> bool:
        """After a failure before the response: skip this backend for a while and, if
        another is left and a retry is safe, send the request there. True if sent."""
        if self._span is not None:
            self._span.end(None, kind)
        if self._alternatives is _NO_ALTERNATIVES:  # the API has no other backend
            return False
        self._fw._suspend(self._target)
        _log.warn(
            "backend {failed} ({kind}) is skipped for {secs:g} seconds",
            failed=self._backend,
            kind=kind,
            secs=self._settings.endpoint_suspend_seconds,
        )
        if not self._alternatives or self._phase is _DONE:
            return False
        method = self._exchange.method
        if not nothing_sent and (method not in _IDEMPOTENT or self._body is not None):
            return False
        self._target = self._alternatives.pop(0)
        _log.info(
            "{method} goes to {backend} instead",
            method=method.decode("ascii", "replace"),
            backend=self._backend,
        )
        try:
            self._send(False)
        except Exception:
            _log.failure("forwarding to {backend} failed", backend=self._backend)
            self.fail_internal()
        return True

    # -- the timer -------------------------------------------------------

    def _timed_out(self) -> None:
        if self._phase is _WAITING:
            self._cancel_call()
            _log.warn(
                "backend {backend} for {method} failed before responding (timeout):"
                " no response within {secs:g} seconds",
                backend=self._backend,
                method=self._exchange.method.decode("ascii", "replace"),
                secs=self._settings.backend_timeout,
            )
            if self._next_endpoint("timeout", nothing_sent=False):
                return
            self._send_error(
                errors.backend_timeout(
                    f"backend did not respond within {self._settings.backend_timeout:g} seconds"
                ),
                "timeout",
            )
        elif self._phase is _STREAMING:
            self._cancel_call()
            self._body_done("timeout", "no body bytes within the backend timeout")

    def _rearm(self) -> None:
        self._fw._deadlines.arm(self, self._settings.backend_timeout)

    def _cancel_timer(self) -> None:
        self._fw._deadlines.disarm(self)

    def _cancel_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    # -- ResponseHandler -------------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        if self._phase is not _WAITING:
            return
        try:
            headers, length = response_headers(head, self._exchange.method == b"HEAD")
        except Exception:
            _log.failure("cannot relay the response of {backend}", backend=self._backend)
            self._cancel_call()
            self._cancel_timer()
            self._send_error(errors.internal_error(), "other")
            return
        if self._on_answer is not None:
            refused = self._on_answer(head.code, headers)
            if refused is not None:  # a response transform failed: its error, not the body
                self._cancel_call()
                self._cancel_timer()
                self._send_error(refused, "other", transform=False)
                return
        self._phase = _STREAMING
        self._paused = False  # the client's output is full (we paused the backend)
        self._sent = 0  # body bytes relayed to the client
        self._send_mark: int | None = None  # the client's progress when last looked at
        self._fw._answered(self._target)
        self._status = head.code
        self._responder.start_response(head.code, headers, length, head.phrase)
        self._rearm()  # from now on: the longest silence between body bytes
        # This forwarding is the responder's producer while the body streams: the
        # responder pauses it at once if the client's output is already full.
        self._responder.register_producer(self)

    def response_whole(self, head: ResponseHead, body: bytes) -> None:
        """The backend's whole response came in one read, its connection already back in
        the pool: answered in one go (``response_head``, ``response_data`` and
        ``response_end`` folded), with no producer to register and no body timer."""
        self._call = None
        if self._phase is not _WAITING:
            return
        fw = self._fw
        fw._deadlines._due.pop(self, None)  # the head's deadline is met
        # Its fields by index: 3.11 reads a NamedTuple's field by name through the generic
        # attribute path (~2x an index's cost; unpacking all nine iterates; issue 27, once
        # per request). tests/test_upstream.py checks the positions.
        code, phrase, announced, relayed = head[0], head[1], head[4], head[8]
        if self._on_answer is None:
            # The front's one-call answer from the backend's own field lines (no list to
            # build, no line to format), when it has one (HTTP/1.1) and no transform edits
            # a list: ``response_headers``'s fields, as ``relay_block`` cuts them.
            respond_block = getattr(self._responder, "respond_block", None)
            block = relayed
            if block is None and respond_block is not None:
                block = relay_block(head)
            if respond_block is not None and block is not None:
                if fw._down:
                    fw._answered(self._target)
                length = announced if (
                    code not in _NO_BODY_CODES or self._exchange.method == b"HEAD"
                ) else None
                respond_block(code, block, length, phrase, body)
                sent = len(body)
                # ``_finish_result(code, None, sent)``, written out (once per request): no
                # send timer was armed (nothing streamed), and the phase is still
                # ``_WAITING`` (``respond_block`` let go of ``_client_left`` first).
                self._phase = _DONE
                self.handler = _DONE_HANDLER  # no cycle outlives the request
                if self._span is not None:
                    self._span.end(code, None)
                # (No ``when_gone(None)``: ``respond_block`` let go of ``_client_left``
                # itself when it answered, and a client gone before then finished this
                # forwarding already.)
                on_done, self._on_done = self._on_done, None
                if on_done is not None:
                    try:
                        on_done(code, sent, None)
                    except Exception:
                        _log.failure("on_done callback failed")
                return
        try:
            headers, length = response_headers(head, self._exchange.method == b"HEAD")
        except Exception:
            _log.failure("cannot relay the response of {backend}", backend=self._backend)
            self._send_error(errors.internal_error(), "other")
            return
        if self._on_answer is not None:
            refused = self._on_answer(code, headers)
            if refused is not None:  # a response transform failed: its error, not the body
                self._send_error(refused, "other", transform=False)
                return
        if fw._down:
            fw._answered(self._target)
        self._status = code
        responder = self._responder
        respond = getattr(responder, "respond", None)
        if respond is not None:
            # Without a transform every value is the parsed head's (no CR, LF or NUL
            # passes ``parse_response_head``) or the gateway's own: nothing to scan for.
            respond(code, headers, length, head.phrase, body, self._on_answer is None)
        else:
            responder.start_response(code, headers, length, head.phrase)
            if body:
                responder.write(body)
            responder.finish()
        sent = len(body)
        self._finish_result(code, None, sent)

    @property
    def switching(self) -> bool:
        """Whether a ``101`` is awaited (an upgrade request): read by ``_client.py``."""
        return self._on_switch is not None

    def response_switched(self, head: bytes, rest: bytes, conn: Any) -> None:
        """The backend answered ``101`` (``head``): ``on_switch`` owns the exchange and the
        connection from now on; a 101 that is not the upgrade asked for is a 503."""
        self._call = None
        on_switch = self._on_switch
        if self._phase is not _WAITING or on_switch is None:
            conn.abort()
            return
        fields = check_switch(head, self._exchange.fields.last(b"sec-websocket-key"))
        if isinstance(fields, str):
            conn.abort()
            self.response_failed(BadResponse(fields))
            return
        self._cancel_timer()
        self._fw._answered(self._target)
        self._status = 101
        self._on_done = None  # the exchange is recorded by on_switch's side (its 101, its close)
        self._finish_result(101, None)  # done here (the backend span ends)
        on_switch(fields, rest, conn)

    def response_data(self, data: bytes) -> None:
        if self._phase is _STREAMING:
            if not self._paused:
                self._rearm()
            self._sent += len(data)
            self._responder.write(data)

    def response_end(self) -> None:
        self._call = None
        if self._phase is _STREAMING:
            self._body_done(None, "")

    def response_failed(self, error: UpstreamError) -> None:
        self._call = None
        if self._phase is _STREAMING:
            self._body_done("reset", _reason(error))
            return
        if self._phase is not _WAITING:
            return
        self._cancel_timer()
        kind, err = self._classify(error)
        _log.warn(
            "backend {backend} for {method} failed before responding ({kind}): {reason}",
            backend=self._backend,
            method=self._exchange.method.decode("ascii", "replace"),
            kind=kind,
            reason=_reason(error),
        )
        if kind in ("refused", "timeout", "reset") and self._next_endpoint(
            kind, nothing_sent=isinstance(error, ConnectFailed)
        ):
            return
        self._send_error(err, kind)

    def _classify(self, error: UpstreamError) -> tuple[str, errors.GatewayError]:
        if error.caused_by(SSL.Error, VerificationError):
            return "other", errors.backend_unavailable("TLS with the backend failed")
        if isinstance(error, ConnectFailed):
            if error.caused_by(ierror.TimeoutError):
                return "timeout", errors.backend_unavailable(
                    "could not connect to the backend within "
                    f"{self._settings.connect_timeout:g} seconds"
                )
            if error.caused_by(ierror.DNSLookupError):
                return "refused", errors.backend_unavailable("backend host name does not resolve")
            return "refused", errors.backend_unavailable("could not connect to the backend")
        if isinstance(error, NoResponse):
            return "reset", errors.backend_unavailable(
                "backend closed the connection without responding"
            )
        if isinstance(error, BadResponse):
            return "other", errors.backend_unavailable("backend sent an invalid response")
        return "other", errors.internal_error()

    # -- endings ---------------------------------------------------------

    def _send_error(self, err: errors.GatewayError, kind: str, *, transform: bool = True) -> None:
        responder = self._responder
        if not responder.started:
            body = err.body()
            headers = [(b"Server", SERVER), (b"Date", http_date()),
                       (b"Content-Type", errors.JSON_TYPE)]
            if transform and self._on_answer is not None:
                self._on_answer(err.status, headers)  # a failing transform was logged
            reason = None if err.status in RESPONSES else err.message.encode("latin-1")
            responder.start_response(err.status, headers, len(body), reason)
            head = self._exchange.method == b"HEAD"
            if not head:
                responder.write(body)
            responder.finish()
            self._finish_result(err.status, kind, 0 if head else len(body))
        else:  # cannot happen before headers; never send a second status line
            _abort_client(responder)
            self._finish_result(self._status, kind)

    def fail_internal(self) -> None:
        """Answer 500 after a bug in forward() itself, if nothing was sent yet."""
        self._cancel_timer()
        self._cancel_call()
        if self._phase is _DONE:
            return
        try:
            responder = self._responder
            if responder.gone:
                self._finish_result(CLIENT_CLOSED_REQUEST, "client_gone")
            elif responder.started:
                _abort_client(responder)
                self._finish_result(self._status, "other")
            else:
                self._send_error(errors.internal_error(), "other")
        except Exception:
            _log.failure("could not answer after a forwarding failure")
            self._finish_result(500, "other")

    def _body_done(self, kind: str | None, reason: str) -> None:
        """The backend body ended: finish the client response, or abort it if cut short."""
        self._cancel_timer()
        if self._phase is _DONE:
            return
        sent = self._sent
        responder = self._responder
        responder.unregister_producer()
        if kind is None:
            responder.finish()
            self._finish_result(self._status, None, sent)
            return
        _log.warn(
            "backend {backend} broke off the response after {n} body bytes ({kind}): {reason};"
            " aborting the client connection",
            backend=self._backend,
            n=sent,
            kind=kind,
            reason=reason,
        )
        _abort_client(responder)
        self._finish_result(self._status, kind, sent)

    def _client_left(self) -> None:
        if self._phase is _DONE:
            return
        self._cancel_timer()
        self._cancel_call()
        if self._phase is _WAITING:
            self._finish_result(CLIENT_CLOSED_REQUEST, "client_gone")
        else:
            self._finish_result(self._status, "client_gone", self._sent)

    def _finish_result(self, status: int, kind: str | None, bytes_sent: int = 0) -> None:
        if self._send_timer is not None:
            self._cancel_send_timer()
        if self._phase is _DONE and self._on_done is None:
            return
        self._phase = _DONE
        self.handler = _DONE_HANDLER  # no longer its own: no cycle outlives the request
        if self._span is not None:
            self._span.end(self._status, kind)
        self._responder.when_gone(None)
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            try:
                on_done(status, bytes_sent, kind)
            except Exception:
                _log.failure("on_done callback failed")

    # -- pacing: the responder's IPushProducer while the body streams ----------
    # When the client's output is full the front pauses us and we pause the backend
    # socket; when it drains we resume it.

    def pauseProducing(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._cancel_timer()  # a slow client is never blamed on the backend
        if self._call is not None:
            self._call.pause()
        if self._send_timer is None and self._phase is _STREAMING:
            self._send_mark = _client_progress(self._exchange)
            self._send_timer = self._fw._reactor.callLater(
                self._settings.send_timeout, self._send_timed_out
            )

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._cancel_send_timer()
        if self._call is not None and self._phase is _STREAMING:
            self._rearm()
            self._call.resume()

    def stopProducing(self) -> None:
        self._cancel_timer()
        self._cancel_send_timer()
        self._cancel_call()

    def _cancel_send_timer(self) -> None:
        timer, self._send_timer = self._send_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _send_timed_out(self) -> None:
        """Paused for ``send_timeout``: abort unless the client accepted bytes meanwhile.

        A steady but slow reader can keep the output paused for longer than a
        short timeout (the kernel wakes a writer only once part of its send
        buffer has drained: pauses of 1.3-1.5 s were seen for a 210 kB/s reader
        of a plain Twisted TCP server), so where the kernel says how many bytes
        the client acknowledged, any progress starts a new period, as NGINX's
        ``send_timeout`` counts from the last successful write.
        """
        self._send_timer = None
        if self._phase is not _STREAMING:
            return
        mark = _client_progress(self._exchange)
        if mark is not None and self._send_mark is not None and mark > self._send_mark:
            self._send_mark = mark
            self._send_timer = self._fw._reactor.callLater(
                self._settings.send_timeout, self._send_timed_out
            )
            return
        sent = self._sent
        _log.info(
            "client {client} accepted no response bytes for {secs:g} seconds"
            " (send_timeout) after {n} body bytes; aborting it and the request to {backend}",
            client=self._exchange.client_ip or "-",
            secs=self._settings.send_timeout,
            n=sent,
            backend=self._backend,
        )
        self._cancel_timer()
        self._cancel_call()  # the backend connection is closed, never parked for reuse
        responder = self._responder
        self._finish_result(self._status, "client_timeout", sent)  # before the abort's echo
        _abort_client(responder)


#: ``Forwarder.relay``'s way to make a forwarding: ``object.__new__``, its fields set in
#: ``relay`` (no ``__init__`` call).
_new_object = object.__new__
#: The alternatives of a forwarding without any (shared: an empty list is never popped).
_NO_ALTERNATIVES: list[bytes] = []


class _DoneHandler:
    """The handler of a forwarding's own call once the forwarding is done (its call was
    completed or cancelled before: nothing reaches it)."""

    __slots__ = ()

    def response_head(self, head: ResponseHead) -> None:
        pass

    def response_data(self, data: bytes) -> None:
        pass

    def response_end(self) -> None:
        pass

    def response_failed(self, error: UpstreamError) -> None:
        pass


_DONE_HANDLER = _DoneHandler()


class _Deadlines:
    """The forwarder's backend timers: one ``DelayedCall`` for every forwarding.

    Each forwarding waiting on its backend has a deadline (``_Forwarding._timed_out`` runs
    when it passes); one reactor call is kept at (or before) the earliest one. Arming,
    re-arming and disarming is a dict update, where a timer per request cost a
    ``callLater``, a ``reset`` per body chunk and a ``cancel`` (~2% of a keep-alive
    request's CPU in their own frames, more in the reactor's heap: CHANGELOG.md 0.4.0,
    fifth round). When the call fires before any deadline (the earliest exchange
    finished), it moves to the earliest left. Disarming the last exchange leaves the call
    where it is: one request at a time (a keep-alive client's) would otherwise make and
    cancel a ``DelayedCall`` per request; with nothing armed when it fires, it runs
    nothing and none is pending after it.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._due: dict[_Forwarding, float] = {}
        self._call: IDelayedCall | None = None
        self._at = 0.0  # when _call fires

    def arm(self, forwarding: _Forwarding, seconds: float) -> None:
        due = self._reactor.seconds() + seconds
        self._due[forwarding] = due
        if self._call is None or due < self._at:
            self._schedule(due)

    def disarm(self, forwarding: _Forwarding) -> None:
        self._due.pop(forwarding, None)

    def _schedule(self, at: float) -> None:
        if self._call is not None:
            self._call.cancel()
        self._at = at
        self._call = self._reactor.callLater(
            max(0.0, at - self._reactor.seconds()), self._fire
        )

    def _fire(self) -> None:
        self._call = None
        now = self._reactor.seconds()
        expired = [forwarding for forwarding, due in self._due.items() if due <= now]
        for forwarding in expired:
            del self._due[forwarding]
        for forwarding in expired:
            forwarding._timed_out()  # may arm again (the next backend): then a call exists
        if self._due:
            earliest = min(self._due.values())
            if self._call is None or earliest < self._at:
                self._schedule(earliest)


# struct tcp_info (linux/tcp.h): the u64 tcpi_bytes_acked is at offset 120 (Linux 4.1+).
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120


def _client_progress(exchange: Exchange) -> int | None:
    """Bytes of the response the client's TCP stack has acknowledged, if the kernel says.

    Only a number that grows when the client reads: None where there is no TCP
    socket (a test transport) or the kernel has no ``tcpi_bytes_acked``.
    """
    if _TCP_INFO is None:
        return None
    transport = exchange.conn.transport
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    try:
        handle = transport.getHandle()
        if not isinstance(handle, socket.socket):
            return None
        info = handle.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except (AttributeError, OSError):
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]
    return acked


def _abort_client(responder: Responder) -> None:
    """Drop the client connection so a partial response can't pass as complete."""
    try:
        responder.unregister_producer()
        responder.abort()
    except Exception:
        _log.failure("could not abort the client connection")


def _reason(error: UpstreamError) -> str:
    """A short description: what failed, and the underlying error if there was one."""
    text = str(error)
    reason = error.reason
    if reason is None:
        return text
    value = reason.value
    inner = type(value).__name__
    detail = str(value)
    return f"{text} ({inner}{': ' + detail if detail else ''})"
