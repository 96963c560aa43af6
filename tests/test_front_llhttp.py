"""The front splits clean request heads with llhttp (httptools) and keeps every rule of its
own pure-Python parser: on generated request streams, fed in pieces of any size, both
ways must give byte-identical answers, dispatch the same requests and close alike."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.frontkit import Front, front
from tests.test_front_h11 import _BYTES, _request
from twistedgw.config import Limits
from twistedgw.http import _front

_METHODS = [b"GET", b"POST", b"HEAD", b"OPTIONS", b"FOO", b"M-SEARCH", b"get", b"G\x01T",
            b"CONNECT", b"PRI", b"G(T", b""]
_TARGETS = [b"/a", b"/a?b=c", b"*", b"http://x/a", b"x:443", b"/a\x7f", b"/a#f", b"/%zz",
            b"/a b", b"//a", b""]
_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1",
             b"HTTP/1.1 ", b"HTTP/11"]
_FIELDS = [b"Host: x", b"Host: y", b"Host:x", b"Host:  x \t", b"Connection: close",
           b"Connection: keep-alive", b"Connection: upgrade", b"Upgrade: websocket",
           b"Expect: 100-continue", b"Expect: 100-Continue", b"Content-Length: 0",
           b"Content-Length: 3", b"Content-Length:3 ", b"Transfer-Encoding: chunked",
           b"Transfer-Encoding: gzip, chunked", b"X-A: a  b", b"X-A:", b"X-A: \x80\xff",
           b"X A: b", b"X-A : b", b"X-A\t: b", b": b", b"X-A", b" folded", b"\tfolded",
           b"X-\xe9: b", b"X-A: b\x00", b"X-A: b\rc", b"Proxy-Connection: close"]


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    """A request head from odd request lines and header fields, with a short body."""
    def part(values: list[bytes]) -> bytes:  # mostly the first two: most heads are valid
        return draw(st.sampled_from(values if draw(st.integers(0, 3)) == 0 else values[:2]))

    line = part([b" ", b" ", b"  ", b"\t"]).join(
        [part(_METHODS), part(_TARGETS), part(_VERSIONS)]
    )
    fields = [b"Host: x", *draw(st.lists(st.sampled_from(_FIELDS), max_size=6))]
    data = b"\r\n".join([line, *fields]) + b"\r\n\r\n" + draw(st.sampled_from([b"", b"abc"]))
    for _ in range(draw(st.integers(0, 1))):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from(_BYTES)) + data[at + draw(st.integers(0, 1)) :]
    return data


_DATE = re.compile(rb"\r\ndate: [^\r]*", re.IGNORECASE)


def _run(data: bytes, read_size: int, llhttp: bool, limits: Limits | None) -> tuple[object, ...]:
    """Everything observable of the front after ``data``: output, dispatched requests,
    refusal, keep-alive, and what was recorded."""
    saved = _front.LLHTTP
    _front.LLHTTP = llhttp
    try:
        f: Front = front(limits)
        for i in range(0, len(data), read_size):
            f.send(data[i : i + read_size])
    finally:
        _front.LLHTTP = saved
    return (
        _DATE.sub(b"", f.output()),
        f.resource.seen,
        f.channel.refused,
        f.channel.persistent,
        f.transport.disconnecting,
        [(r.method, r.path, r.status, r.bytes_sent, r.error_kind, r.protocol) for r in f.records],
    )


def _same(data: bytes, read_size: int, limits: Limits | None = None) -> None:
    split = _run(data, read_size, True, limits)
    assert split == _run(data, read_size, False, limits), data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_head(), _request()), min_size=1, max_size=3), st.integers(1, 64))
def test_llhttp_and_the_pure_python_split_answer_alike(
    requests: list[bytes], read_size: int
) -> None:
    _same(b"".join(requests), read_size)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: b  \t\r\n\r\n",  # llhttp keeps the trailing OWS
        b"GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",  # llhttp takes two spaces
        b"GET /a HTTP/2.0\r\nHost: x\r\n\r\n",  # llhttp takes any digit.digit
        b"FOO /a HTTP/1.1\r\nHost: x\r\n\r\n",  # llhttp refuses a method it does not know
        b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",  # llhttp raises HttpParserUpgrade
        b"GET /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + b"X-A: b\r\n" * 500 + b"Host: x\r\n\r\n",  # MAX_HEADERS
        b"GET /a HTTP/1.1\r\n" + b"X-A: b\r\n" * 499 + b"Host: x\r\n\r\n",
    ],
)
def test_where_llhttp_is_lenient_or_strict_the_answer_is_the_front_s(data: bytes) -> None:
    """Each case's answer is the pure-Python front's, fed whole and a byte at a time."""
    limits = Limits(max_header_bytes=1 << 16)
    _same(data, len(data), limits)
    _same(data, 1, limits)


def test_the_split_runs_and_its_answers_are_checked() -> None:
    """The control: llhttp does split clean heads (the comparison above is not between
    one path and itself), and a lenient case is refused by the front's own check."""
    calls: list[bytes] = []
    original = _front.FrontChannel._split_head

    def spy(self: _front.FrontChannel, line: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        calls.append(line)
        original(self, line, fields)

    _front.FrontChannel._split_head = spy  # type: ignore[method-assign]
    try:
        f = front()
        f.send(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: b \r\n\r\nGET /a HTTP/2.0\r\nHost: x\r\n\r\n")
    finally:
        _front.FrontChannel._split_head = original  # type: ignore[method-assign]
    assert calls == [b"GET /a HTTP/1.1", b"GET /a HTTP/2.0"]
    assert f.resource.seen[0].headers == [(b"host", b"x"), (b"x-a", b"b")]
    assert f.channel.refused and len(f.resource.seen) == 1
    assert b"HTTP/1.1 400 " in f.output()
