"""W3C Trace Context (``traceparent``, ``tracestate``): strict parsing, bounded work.

Both headers come from clients, so each is held to the grammar of the W3C
recommendation (Trace Context Level 1) and to a length bound before anything
looks inside: a value that is too long, malformed, or sent twice is ignored, as
the recommendation says (the gateway then starts a trace of its own). Every check
is a fixed-width match or a single pass over at most ``MAX_TRACESTATE`` bytes.
No OpenTelemetry import here: the parsers run in memory tests without the SDK.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

#: A version 00 traceparent is exactly 55 characters; later versions may append fields
#: after a "-", which a version 00 parser skips. Anything longer than this is refused.
MAX_TRACEPARENT = 256
#: The recommendation asks vendors to propagate at least 512 characters of tracestate;
#: a longer one (or more than 32 members) is dropped whole, which it allows.
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KEY = re.compile(
    rb"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE = re.compile(rb"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_OWS = b" \t"

SAMPLED = 0x01


class TraceParent(NamedTuple):
    """A valid ``traceparent``: the caller's trace and span, and its flags."""

    trace_id: int
    span_id: int  # the caller's span: the gateway's server span is its child
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse_traceparent(values: Sequence[bytes] | None) -> TraceParent | None:
    """The ``traceparent`` header's field values -> a ``TraceParent``, or None if absent
    or invalid (sent more than once, too long, not the grammar, all-zero ids, version ff)."""
    if not values or len(values) != 1:
        return None
    value = values[0].strip(_OWS)
    size = len(value)
    if size < 55 or size > MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value, 0, 55)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == b"ff":
        return None
    if version == b"00" and size != 55:
        return None
    if size > 55 and value[55:56] != b"-":  # a later version's extra fields follow a "-"
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    flags = int(flags_hex, 16)
    if version != b"00":
        flags &= SAMPLED  # the only flag a version 00 implementation may pass on
    return TraceParent(trace_id, span_id, flags)


def parse_tracestate(values: Sequence[bytes] | None) -> tuple[tuple[str, str], ...] | None:
    """The ``tracestate`` header's field values (joined with commas, as HTTP allows) ->
    its members in order, or None when absent, empty, too long or invalid (bad key or
    value, a key twice, more than 32 members): then it is not passed on at all."""
    if not values:
        return None
    total = sum(len(v) for v in values) + len(values) - 1
    if total > MAX_TRACESTATE:
        return None
    members: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    for value in values:
        for raw in value.split(b","):
            member = raw.strip(_OWS)
            if not member:
                continue  # empty list members are allowed, and skipped
            key, eq, val = member.partition(b"=")
            if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val):
                return None
            if key in seen:
                return None
            seen.add(key)
            members.append((key.decode("ascii"), val.decode("ascii")))
            if len(members) > MAX_TRACESTATE_MEMBERS:
                return None
    return tuple(members) or None


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    """A version 00 ``traceparent`` value."""
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def format_tracestate(members: Sequence[tuple[str, str]]) -> bytes:
    return ",".join(f"{k}={v}" for k, v in members).encode("ascii")
