"""The lean backend client (twistedgw/upstream.py).

Pure parsing and chunk decoding, the connection protocol over an in-memory
transport (retry of a dead pooled connection, early answers, pacing), and a
real gateway-side forwarder against a scripted raw-socket backend for the
responses a well-behaved echo backend never sends.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error as ierror
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.test_forward import call, start_harness
from twistedgw.upstream import (
    BackendCall,
    NoResponse,
    ResponseHead,
    Truncated,
    Upstream,
    UpstreamError,
    parse_origin,
)
from twistedgw.upstream._client import _Connection
from twistedgw.wire import BadResponseHead, ChunkedDecoder, Framing, MalformedChunks
from twistedgw.wire import _abnf as wire_names
from twistedgw.wire._response import parse_response_head as _parse_head

# -- parsing -----------------------------------------------------------------


def test_head_with_repeated_headers_and_length() -> None:
    parsed = _parse_head(
        b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\nSet-Cookie: b=2",
        False,
    )
    assert parsed is not None
    head = parsed
    assert (head.code, head.phrase, head.length, head.body_length, head.keep_alive) == (
        201, b"Created", 5, 5, True)
    assert [v for n, v in head.headers if n == b"Set-Cookie"] == [b"a=1", b"b=2"]


def test_interim_responses_are_skipped_but_upgrades_refused() -> None:
    assert _parse_head(b"HTTP/1.1 100 Continue", False) is None
    assert _parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>", False) is None
    with pytest.raises(BadResponseHead, match="upgrades"):
        _parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket", False)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 200 OK\r\n folded: value",
        b"HTTP/1.1 200 OK\r\nNo-Colon",
        b"HTTP/1.1 200 OK\r\nBad Name: x",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
        # CTLs in a value: a NUL, a bare CR, a bare LF, in the first or a later line
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b",
        b"HTTP/1.1 200 OK\r\nX-A: ok\r\nX-B: a\rb",
        b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nX-B: ok",
        b"HTTP/1.1 200 OK\r\nX-A: a\r",
        # the status line too: its phrase is relayed to the client
        b"HTTP/1.1 200 O\nK\r\nContent-Length: 0",
        b"HTTP/1.1 200 O\rK\r\nContent-Length: 0",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b",
        # a coding the client could not undo once Transfer-Encoding is dropped
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ],
)
def test_invalid_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(BadResponseHead):
        _parse_head(raw, False)


def test_framing_rules() -> None:
    def framing(raw: bytes, head_only: bool = False) -> tuple[Framing, int, bool]:
        parsed = _parse_head(raw, head_only)
        assert parsed is not None
        return parsed.framing, parsed.body_length, parsed.keep_alive

    length, chunked, close, none = (
        Framing.LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE, Framing.NONE)
    # identical duplicate lengths are one length
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3") == (
        length, 3, True)
    # chunked wins over a length, and the connection is not reused afterwards
    assert framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3") == (
        chunked, 0, False)
    # no length: read until close, never reuse
    assert framing(b"HTTP/1.1 200 OK") == (close, 0, False)
    assert framing(b"HTTP/1.0 200 OK\r\nContent-Length: 2") == (length, 2, False)
    assert framing(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2") == (
        length, 2, False)
    # HEAD and 204/304 have no body whatever the headers say; nor has a length of 0
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 99", head_only=True) == (none, 0, True)
    assert framing(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99") == (none, 0, True)
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 0") == (none, 0, True)


def _chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailers + b"\r\n"


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    trailers=st.sampled_from([b"", b"X-Checksum: abc\r\n"]),
)
def test_chunk_decoder_reassembles_any_split(
    pieces: list[bytes], cuts: list[int], trailers: bytes
) -> None:
    wire = _chunked(pieces, trailers) + b"EXTRA"
    decoder = ChunkedDecoder(refuse_tiny_chunks=False)
    body, extra, pos = b"", None, 0
    sizes = iter(cuts)
    while pos < len(wire) and extra is None:
        step = next(sizes, len(wire))
        out, extra = decoder.feed(wire[pos : pos + step])
        body += out
        pos += step
    assert extra is not None and body == b"".join(pieces)
    assert extra + wire[pos:] == b"EXTRA"


@pytest.mark.parametrize("wire", [b"zz\r\n", b"5\r\nhelloXX", b"1" * 20 + b"\r\n", b"-1\r\n",
                                  b"5\nhello\n0\n\n"])
def test_chunk_decoder_refuses_garbage(wire: bytes) -> None:
    with pytest.raises(MalformedChunks):
        ChunkedDecoder(refuse_tiny_chunks=False).feed(wire)


def test_a_response_of_many_small_chunks_is_relayed() -> None:
    """The tiny-chunk rule is the request side's (a CPU bound on what clients send): a
    backend streaming small events is relayed whatever its chunk sizes."""
    decoder = ChunkedDecoder(refuse_tiny_chunks=False)
    body, rest = decoder.feed(b"1\r\nx\r\n" * 5000 + b"0\r\n\r\n")
    assert body == b"x" * 5000 and rest == b""


def test_origins() -> None:
    o = parse_origin(b"https://Example.COM", None)
    assert (o.scheme, o.host, o.port, o.host_header) == (b"https", b"example.com", 443,
                                                         b"example.com")
    assert parse_origin(b"http://[::1]:8080", None).host_header == b"[::1]:8080"
    with pytest.raises(ValueError):
        parse_origin(b"ftp://x", None)


# -- the connection protocol in memory ----------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []
        self.data: list[bytes] = []
        self.ended = 0
        self.failures: list[UpstreamError] = []

    def response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def response_data(self, data: bytes) -> None:
        self.data.append(data)

    def response_end(self) -> None:
        self.ended += 1

    def response_failed(self, error: UpstreamError) -> None:
        self.failures.append(error)


class _Pool(Upstream):
    """An Upstream whose new connections are in-memory and recorded."""

    def __init__(self) -> None:
        super().__init__(MemoryReactorClock())
        self.made: list[tuple[_Connection, StringTransport]] = []

    def _connect(self, call: BackendCall) -> None:
        conn = _Connection(self, call.origin)
        transport = StringTransport()
        conn.makeConnection(transport)
        self.made.append((conn, transport))
        conn.start(call, reused=False)


ORIGIN = parse_origin(b"http://127.0.0.1:9", None)
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_keep_alive_connection_is_parked_and_reused() -> None:
    pool, first, second = _Pool(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, first)
    conn, transport = pool.made[0]
    assert transport.value() == GET
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert first.ended == 1 and first.data == [b"ok"] and not first.failures
    pool.request(ORIGIN, b"GET", GET, None, second)
    assert len(pool.made) == 1  # the same connection carried the second request
    conn.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert second.ended == 1 and second.heads[0].code == 204


def test_dead_pooled_connection_is_retried_once_for_idempotent_requests() -> None:
    pool, first, second = _Pool(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, first)
    conn, _ = pool.made[0]
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    pool.request(ORIGIN, b"GET", GET, None, second)  # on the parked connection
    conn.connectionLost(Failure(ierror.ConnectionDone()))  # the backend had closed it
    assert len(pool.made) == 2 and not second.failures  # retried on a new connection
    pool.made[1][0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert second.ended == 1


def test_a_post_on_a_dead_pooled_connection_is_not_retried() -> None:
    pool, first, second = _Pool(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, first)
    conn, _ = pool.made[0]
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    pool.request(ORIGIN, b"POST", b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", None, second)
    conn.connectionLost(Failure(ierror.ConnectionDone()))
    assert len(pool.made) == 1
    assert isinstance(second.failures[0], NoResponse)


def test_truncated_body_fails_and_close_delimited_body_ends() -> None:
    pool, cut, whole = _Pool(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, cut)
    conn, _ = pool.made[0]
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connectionLost(Failure(ierror.ConnectionLost()))
    assert isinstance(cut.failures[0], Truncated) and cut.ended == 0

    pool.request(ORIGIN, b"GET", GET, None, whole)
    conn, _ = pool.made[1]
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    conn.connectionLost(Failure(ierror.ConnectionDone()))
    assert whole.ended == 1 and b"".join(whole.data) == b"all of it"


def test_an_answer_before_the_upload_ends_stops_the_upload_and_the_reuse() -> None:
    import io

    pool, rec = _Pool(), Recorder()
    body = io.BytesIO(b"x" * 1_000_000)
    pool.request(ORIGIN, b"POST", b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", body, rec)
    conn, transport = pool.made[0]
    assert transport.producer is not None  # the body pump is feeding the socket
    conn.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert rec.heads[0].code == 413 and rec.ended == 1
    assert transport.producer is None and transport.disconnecting  # not parked
    assert not pool._idle.get(ORIGIN.key)


def test_cancel_is_silent_and_closes_the_connection() -> None:
    pool, rec = _Pool(), Recorder()
    c = pool.request(ORIGIN, b"GET", GET, None, rec)
    conn, transport = pool.made[0]
    c.cancel()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert (rec.heads, rec.ended, rec.failures) == ([], 0, [])
    assert transport.disconnecting


def test_pause_and_resume_drive_the_backend_transport() -> None:
    pool, rec = _Pool(), Recorder()
    c = pool.request(ORIGIN, b"GET", GET, None, rec)
    _, transport = pool.made[0]
    c.pause()
    assert transport.producerState == "paused"
    c.resume()
    assert transport.producerState == "producing"


# -- against a real forwarder and a scripted backend ----------------------------


@pytest.fixture
def scripted() -> Iterator[Callable[[bytes], int]]:
    """A one-shot raw backend: answers every connection with the given bytes."""
    sockets: list[socket.socket] = []

    def start(reply: bytes) -> int:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        sockets.append(srv)

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(reply)
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return int(srv.getsockname()[1])

    yield start
    for s in sockets:
        s.close()


def _forward_once(tmp_path: Path, port: int, path: str = "/x") -> Any:
    harness = start_harness(tmp_path, f"http://127.0.0.1:{port}")
    try:
        return call(harness.port, "GET", path)
    finally:
        harness.stop()


def test_interim_100_then_chunked_with_trailers_is_relayed(
    tmp_path: Path, scripted: Callable[[bytes], int]
) -> None:
    port = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        b"X-A: 1\r\n\r\n" + _chunked([b"hello ", b"chunked ", b"world"], b"X-Sum: 1\r\n")
    )
    reply = _forward_once(tmp_path, port)
    assert reply.status == 200 and reply.body == b"hello chunked world"


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 2x0 Nope\r\n\r\n", b"SMTP ready\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"],
    ids=["bad-status", "not-http", "two-lengths"],
)
def test_invalid_backend_response_gives_503(
    tmp_path: Path, scripted: Callable[[bytes], int], reply: bytes
) -> None:
    result = _forward_once(tmp_path, scripted(reply))
    assert result.status == 503
    assert result.json()["code"] == "101503"
    assert result.json()["description"] == "backend sent an invalid response"


def test_broken_chunked_body_aborts_the_client(
    tmp_path: Path, scripted: Callable[[bytes], int]
) -> None:
    port = scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloZZ")
    harness = start_harness(tmp_path, f"http://127.0.0.1:{port}")
    try:
        with socket.create_connection(("127.0.0.1", harness.port), timeout=10) as s:
            s.sendall(b"GET /broken HTTP/1.1\r\nHost: gw\r\n\r\n")
            seen, reset = b"", False
            try:
                while chunk := s.recv(65536):
                    seen += chunk
            except ConnectionResetError:
                reset = True  # aborted: what arrived before the RST may be lost
        # The connection was cut without the last chunk, so no client can take
        # the body as complete.
        assert reset or (seen.startswith(b"HTTP/1.1 200") and not seen.endswith(b"0\r\n\r\n"))
        assert harness.result_for("/broken")["error_kind"] == "reset"
    finally:
        harness.stop()


def _exchange(fields: list[tuple[bytes, bytes]], host: bytes | None) -> Any:
    from twisted.internet.address import IPv4Address

    from twistedgw.wire import Connection, Exchange, Fields

    conn = Connection(IPv4Address("TCP", "192.0.2.7", 1234), None, False, None)
    return Exchange(b"GET", b"/a", b"HTTP/1.1", Fields(fields), host, conn, None, None)  # type: ignore[arg-type]


def _head_for(values: list[bytes], add: list[tuple[bytes, bytes]]) -> bytes:
    from twistedgw.upstream._client import Origin
    from twistedgw.upstream._forward import build_request_head

    exchange = _exchange(
        [(b"Host", b"gw.example"), *((b"X-V", v) for v in values)], b"gw.example"
    )
    origin = Origin(b"http", b"127.0.0.1", 8080, b"127.0.0.1:8080", None)
    return build_request_head(exchange, origin, b"/a", add_headers=add)


def test_a_backend_target_with_a_control_byte_or_space_is_refused_each_byte() -> None:
    """``_request_head`` refuses a target holding any byte ``_UNSAFE_TARGET`` matches (a
    control, space or DEL: a backend would read it as the request line's end), checked
    by one table translation: every byte value, alone and inside a path."""
    import re

    from twistedgw.upstream._client import Origin
    from twistedgw.upstream._forward import NO_EDITS, _request_head

    unsafe = re.compile(rb"[\x00-\x20\x7f]")
    exchange = _exchange([(b"Host", b"gw.example")], b"gw.example")
    origin = Origin(b"http", b"127.0.0.1", 8080, b"127.0.0.1:8080", None)
    for value in range(256):
        for target in (b"/a" + bytes([value]) + b"b", bytes([value])):
            if unsafe.search(target):
                with pytest.raises(ValueError, match="target"):
                    _request_head(exchange, origin, target, None, NO_EDITS)
            else:
                assert _request_head(exchange, origin, target, None, NO_EDITS).startswith(
                    b"GET " + target + b" HTTP/1.1\r\n"
                )


def test_a_clean_request_head_is_built_exactly() -> None:
    assert _head_for([b"one", b"two"], [(b"X-Id", b"7")]) == (
        b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-V: one\r\nX-V: two\r\n"
        b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: gw.example\r\nX-Id: 7\r\n\r\n"
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\x00", b" "]), max_size=5).map(
        b"".join
    ),
    st.booleans(),
)
def test_no_value_carries_a_line_break_or_nul_to_the_backend(value: bytes, added: bool) -> None:
    """The head is checked once and values rewritten only when the check fails: either
    way every CR, LF and NUL of a value (client's or added) leaves as a space."""
    add = [(b"X-Id", value)] if added else []
    head = _head_for([value], add)
    safe = value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")
    lines = head.split(b"\r\n")
    assert b"\x00" not in head and all(b"\r" not in x and b"\n" not in x for x in lines)
    assert any(x.startswith(b"X-V: ") for x in lines)
    if added:
        assert b"X-Id: " + safe in lines


def test_a_backend_target_with_a_control_byte_or_space_is_refused_whatever_else_it_holds(
) -> None:
    """The backend head is never written with a target holding a CTL, a space or DEL (each
    byte of ``_UNSAFE_TARGET``, anywhere in it); every other byte passes."""
    from twistedgw.upstream._client import Origin
    from twistedgw.upstream._forward import build_request_head

    exchange = _exchange([(b"Host", b"gw.example")], b"gw.example")
    origin = Origin(b"http", b"127.0.0.1", 8080, b"127.0.0.1:8080", None)
    for byte in [*range(0x21), 0x7F]:
        for target in (b"/a%cb" % byte, b"%c/a" % byte, b"/a?q=%c" % byte):
            with pytest.raises(ValueError, match="invalid request target"):
                build_request_head(exchange, origin, target)
    fine = b"/" + bytes(b for b in range(0x21, 0x100) if b != 0x7F)
    assert build_request_head(exchange, origin, fine).startswith(b"GET " + fine + b" HTTP/1.1")


# -- per-request caches (CHANGELOG.md 0.4.0, fifth round) --------------------------


def _head_removing(remove: set[bytes] | frozenset[bytes]) -> bytes:
    from twistedgw.upstream._client import Origin
    from twistedgw.upstream._forward import build_request_head

    exchange = _exchange([(name, b"v") for name in (b"X-One", b"X-Two", b"X-Three")], None)
    origin = Origin(b"http", b"127.0.0.1", 8080, b"127.0.0.1:8080", None)
    return build_request_head(exchange, origin, b"/a", remove_headers=remove)


def test_each_strip_list_drops_its_own_names_whatever_was_cached_before() -> None:
    """The drop set is cached per strip list: one list's names never leak into another's."""
    from twistedgw.upstream import _forward

    first = _head_removing({b"X-ONE"})  # not lower case: lowered once, when cached
    assert b"X-One" not in first and b"X-Two: v" in first and b"X-Three: v" in first
    second = _head_removing(frozenset({b"x-two", b"x-three"}))
    assert b"X-One: v" in second and b"X-Two" not in second and b"X-Three" not in second
    assert _head_removing({b"X-ONE"}) == first
    for n in range(_forward._DROP_SETS_MAX + 10):  # bounded, however many lists
        _head_removing({b"x-%d" % n})
    assert len(_forward._drop_sets) <= _forward._DROP_SETS_MAX
    assert _head_removing(set()).count(b": v\r\n") == 3


def test_a_remembered_valid_header_name_never_admits_an_invalid_one() -> None:
    """A name remembered as valid (the request parser's set) never makes a response's
    bad field line pass: responses match their lines whole (``FIELD_LINES``)."""
    ok = _parse_head(b"HTTP/1.1 200 OK\r\nX-Name: 1\r\nContent-Length: 0", False)
    assert ok is not None and ok.headers == [(b"X-Name", b"1"), (b"Content-Length", b"0")]
    assert wire_names.valid_name(b"X-Name") and b"X-Name" in wire_names._seen_names
    for bad in (b"X-Name : 1", b"X Name: 1", b"X-Name\x00: 1", b": 1"):
        with pytest.raises(BadResponseHead):
            _parse_head(b"HTTP/1.1 200 OK\r\n" + bad + b"\r\nContent-Length: 0", False)
    for n in range(wire_names.SEEN_NAMES_MAX + 10):
        wire_names.valid_name(b"x-%d" % n)
    assert len(wire_names._seen_names) <= wire_names.SEEN_NAMES_MAX


def test_the_forwarders_one_timer_fires_each_deadline_on_time() -> None:
    """``_Deadlines``: one reactor call for every exchange's backend timeout, each fired
    at its own deadline (not before, not late); when nothing waits, the call left fires
    once, runs nothing and leaves none pending (no call made and cancelled per request)."""
    from twistedgw.upstream._forward import _Deadlines

    clock = MemoryReactorClock()
    deadlines = _Deadlines(clock)
    fired: list[tuple[str, float]] = []

    class Exchange:
        def __init__(self, name: str, then: Callable[[], None] | None = None) -> None:
            self.name, self.then = name, then

        def _timed_out(self) -> None:
            fired.append((self.name, clock.seconds()))
            if self.then is not None:
                self.then()

    a, b, c = Exchange("a"), Exchange("b"), Exchange("c")
    deadlines.arm(a, 5)  # type: ignore[arg-type]
    deadlines.arm(b, 3)  # type: ignore[arg-type]
    deadlines.arm(c, 10)  # type: ignore[arg-type]
    assert len([d for d in clock.getDelayedCalls() if d.active()]) == 1
    clock.advance(1)
    deadlines.arm(b, 3)  # re-armed: now due at 4
    deadlines.disarm(a)  # finished: never fires
    clock.advance(2.75)
    assert fired == []
    d = Exchange("d")
    e = Exchange("e", then=lambda: deadlines.arm(d, 20))  # type: ignore[arg-type]
    deadlines.arm(e, 0.5)  # type: ignore[arg-type]  # due at 4.25
    for _ in range(8):
        clock.advance(0.25)
    assert fired == [("b", 4.0), ("e", 4.25)]
    clock.advance(4.25)  # c (due at 10) is not held back by d (armed at 4.25, due at 24.25)
    assert fired[-1] == ("c", 10.0)
    deadlines.disarm(d)  # type: ignore[arg-type]
    assert len([call for call in clock.getDelayedCalls() if call.active()]) <= 1
    for _ in range(3):  # one request at a time: no call is made or cancelled for it
        deadlines.arm(d, 20)  # type: ignore[arg-type]
        deadlines.disarm(d)  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) <= 1
    clock.advance(30)
    assert fired[-1] == ("c", 10.0)
    assert not [call for call in clock.getDelayedCalls() if call.active()]


def test_cached_connection_tokens_and_the_single_length_shortcut_decide_as_before() -> None:
    for _ in range(2):  # the second time from the cache
        keep = _parse_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5",
                           False)
        close = _parse_head(b"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nContent-Length: 5",
                            False)
        assert keep is not None and close is not None
        assert keep.keep_alive is True
        assert keep.connection_tokens == frozenset({b"keep-alive"})
        assert close.keep_alive is False
        assert close.connection_tokens == frozenset({b"close", b"x-a"})
    listed = _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5 , 5", False)
    assert listed is not None and listed.body_length == 5
    for bad in (b"5, 6", b"5,", b"-5", b"5 5"):
        with pytest.raises(BadResponseHead, match="Content-Length"):
            _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + bad, False)


@pytest.mark.parametrize(
    ("host", "kind"),
    [("127.0.0.1", TCP4ClientEndpoint), ("[::1]", TCP6ClientEndpoint),
     ("backend.example", HostnameEndpoint)],
)
def test_an_ip_literal_backend_is_connected_to_without_name_resolution(
    host: str, kind: type
) -> None:
    """``HostnameEndpoint`` resolves even an IP literal in the reactor's thread pool and
    builds a class per connect: a burst of requests past the idle pool (HTTP/2's streams)
    paid that per connection. An IP-literal origin gets a plain TCP endpoint."""
    reactor = MemoryReactorClock()
    pool = Upstream(reactor)
    origin = parse_origin(f"http://{host}:9".encode(), None)
    assert type(pool._endpoint(origin)) is kind
    if kind is not HostnameEndpoint:
        pool.request(origin, b"GET", GET, None, Recorder())
        assert [(h, p) for h, p, *_ in reactor.tcpClients] == [(host.strip("[]"), 9)]


# -- the pool's bound: a request waits for a kept connection --------------------


def _made(reactor: MemoryReactorClock, index: int) -> tuple[_Connection, StringTransport]:
    """Complete the ``index``-th connect the pool asked ``reactor`` for (in memory)."""
    factory = reactor.tcpClients[index][2]
    wrapper = factory.buildProtocol(None)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    conn = wrapper._wrappedProtocol
    assert isinstance(conn, _Connection)
    return conn, transport


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_request_beyond_the_kept_connections_waits_for_one_instead_of_opening_one() -> None:
    """HTTP/2 puts hundreds of requests in flight on a few client connections: those
    beyond the connections the pool keeps (all busy) wait for the first to finish, in
    order, instead of each opening a connection closed again after its response."""
    reactor = MemoryReactorClock()
    pool = Upstream(reactor, max_idle_per_origin=2)
    recs = [Recorder() for _ in range(4)]
    for rec in recs:
        pool.request(ORIGIN, b"GET", GET, None, rec)
    assert len(reactor.tcpClients) == 2  # two connections, two requests waiting
    (a, ta), (b, tb) = _made(reactor, 0), _made(reactor, 1)
    ta.clear()
    a.dataReceived(OK)  # the first answer: its connection takes the oldest waiting one
    assert recs[0].data == [b"ok"] and ta.value() == GET and not ta.disconnecting
    tb.clear()
    b.dataReceived(OK)
    assert recs[1].data == [b"ok"] and tb.value() == GET
    a.dataReceived(OK)
    b.dataReceived(OK)
    assert [r.data for r in recs] == [[b"ok"]] * 4 and not any(r.failures for r in recs)
    assert len(reactor.tcpClients) == 2 and len(pool._idle[ORIGIN.key]) == 2
    assert not pool._waiting


def test_a_waiting_request_gets_its_own_connection_after_queue_wait() -> None:
    """A slow backend's busy connections delay the others by at most ``QUEUE_WAIT``."""
    from twistedgw.upstream._client import QUEUE_WAIT

    reactor = MemoryReactorClock()
    pool = Upstream(reactor, max_idle_per_origin=1)
    slow, waiting, cancelled = Recorder(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, slow)
    gone = pool.request(ORIGIN, b"GET", GET, None, cancelled)
    reactor.advance(QUEUE_WAIT / 2)
    pool.request(ORIGIN, b"GET", GET, None, waiting)
    gone.cancel()  # a waiting request cancelled (its client left): never sent
    assert len(reactor.tcpClients) == 1
    reactor.advance(QUEUE_WAIT / 2)
    assert len(reactor.tcpClients) == 1  # the cancelled one: no connection
    reactor.advance(QUEUE_WAIT / 2)
    assert len(reactor.tcpClients) == 2  # the other waited QUEUE_WAIT: one of its own
    conn, transport = _made(reactor, 1)
    assert transport.value() == GET
    conn.dataReceived(OK)
    assert waiting.data == [b"ok"] and cancelled.data == [] and not cancelled.failures
    assert not pool._waiting and pool._spiller is None  # nothing left to wait for


def test_a_closed_or_failed_connection_lets_a_waiting_request_connect() -> None:
    """The bound counts open connections: one that closes (a response with
    ``Connection: close``) or a connect that fails makes room at once."""
    reactor = MemoryReactorClock()
    pool = Upstream(reactor, max_idle_per_origin=1)
    first, second, third = Recorder(), Recorder(), Recorder()
    pool.request(ORIGIN, b"GET", GET, None, first)
    pool.request(ORIGIN, b"GET", GET, None, second)
    pool.request(ORIGIN, b"GET", GET, None, third)
    conn, transport = _made(reactor, 0)
    transport.clear()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert first.data == [b"ok"] and transport.disconnecting and transport.value() == b""
    conn.connectionLost(Failure(ierror.ConnectionDone()))
    assert len(reactor.tcpClients) == 2  # the second connects now
    connector = reactor.connectors[1] if reactor.connectors else None
    factory = reactor.tcpClients[1][2]
    factory.clientConnectionFailed(connector, Failure(ierror.ConnectionRefusedError()))
    assert second.failures and len(reactor.tcpClients) == 3  # and the third after it
    conn, transport = _made(reactor, 2)
    conn.dataReceived(OK)
    assert third.data == [b"ok"] and pool._open == {ORIGIN.key: 1}


def test_the_one_match_parse_reads_every_head_as_the_line_by_line_one() -> None:
    """``parse_response_head`` checks a usual head with one match (``RESPONSE_HEAD``) and
    reads any other line by line (``_parse_lines``): both read every head alike, refuse
    the same ones for the same reason, and the relayed block drops what the list does."""
    from twistedgw.upstream._forward import relay_block, response_headers
    from twistedgw.wire import _response

    statuses = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content",
                b"HTTP/1.1 304", b"HTTP/1.1 200 ", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 S",
                b"HTTP/1.1 099 x", b"HTTP/1.2 200 OK", b"HTTP/1.1  200 OK", b"HTTP/1.1 200\tOK",
                b"HTTP/1.1 200 O\x01K", b"http/1.1 200 OK", b"HTTP/1.1 200 \x80\xff"]
    lines = [b"Content-Length: 3", b"content-length:3 ", b"CONTENT-LENGTH: 3, 3",
             b"Content-Length: 3,4", b"Transfer-Encoding: chunked", b"transfer-encoding: gzip",
             b"Connection: close, X-A", b"connection: Keep-Alive", b"Server: nginx",
             b"Date: today", b"X-A:  v \t", b"Te: x", b" Folded: x", b"X Bad: 1", b": v",
             b"X-Ctl: a\x01", b"X-Del: \x7f", b"NoColon", b"", b"Keep-Alive: timeout=5"]
    seen_fast = 0
    for n, status in enumerate(statuses):
        for i in range(len(lines)):
            for j in range(i, len(lines), 3):
                for sep in (b"\r\n", b"\n"):
                    raw = status + b"\r\n" + lines[i] + sep + lines[j] + b"\r\n" + lines[n]
                    outcomes = []
                    for parse in (_response.parse_response_head, _response._parse_lines):
                        try:
                            outcomes.append(parse(raw, n == 3))
                        except BadResponseHead as e:
                            outcomes.append(str(e))
                    assert outcomes[0] == outcomes[1], raw
                    head = outcomes[0]
                    if isinstance(head, tuple):
                        seen_fast += _response.RESPONSE_HEAD.fullmatch(raw) is not None
                        block = relay_block(head)
                        if block is not None:
                            listed, _ = response_headers(head, False)
                            relayed = [(name, value.strip(b" \t")) for name, _, value in (
                                line.partition(b":") for line in block.split(b"\r\n")[1:])]
                            assert [name for name, _ in relayed] == [
                                name for name, _ in listed], raw
    assert seen_fast >= 50


def _grid_heads() -> list[bytes]:
    """Heads of every status and field line of the one-match test, two lines at a time,
    and usual backend heads with their near misses (a name's case, its colon, a value)."""
    statuses = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content",
                b"HTTP/1.1 304", b"HTTP/1.1 200 ", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 S",
                b"HTTP/1.1 099 x", b"HTTP/1.2 200 OK", b"HTTP/1.1 200\tOK", b"HTTP/1.1 404 Nope"]
    lines = [b"Content-Length: 3", b"content-length:3 ", b"CONTENT-LENGTH: 3, 3",
             b"Content-Length: 3,4", b"Content-Length: +3", b"Content-Length: 0",
             b"Content-Length: 1234567890123456789", b"Transfer-Encoding: chunked",
             b"Connection: close, X-A", b"Connection: keep-alive", b"connection:  Upgrade ",
             b"Server: nginx", b"Date: today", b"Date:", b"X-A:  v \t", b"Te: x",
             b" Folded: x", b"X Bad: 1", b"X-Ctl: a\x01", b"NoColon", b"Keep-Alive: t=5"]
    heads = []
    for status in statuses:
        for i in range(len(lines)):
            for j in range(len(lines)):
                heads.append(status + b"\r\n" + lines[i] + b"\r\n" + lines[j])
    usual = [
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 14:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive",
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b"ETag: \"x\"\r\nDate: Sun, 06 Dec 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2",
        b"HTTP/1.1 200 OK\r\nA: 1\r\nServer: s\r\nB: 2\r\nKeep-Alive: t\r\nC: 3\r\n"
        b"Upgrade: h2c\r\nD: 4\r\nContent-Length: 5\r\nE: 5",
    ]
    heads += usual
    for head in usual:
        for old, new in [(b"Content-Length: ", b"content-length: "),
                         (b"Content-Length: ", b"Content-Length : "),
                         (b"Content-Length: ", b"Content-Length: 3, "),
                         (b"Content-Length: ", b"Content-Length: -"),
                         (b"Connection: keep-alive", b"Connection: close"),
                         (b"Connection: keep-alive", b"Connection: X-Secret"),
                         (b"Connection: keep-alive", b"Connection: keep-alive\r\n Folded"),
                         (b"Connection: keep-alive", b"Connection: a\x7fb"),
                         (b"Connection: keep-alive", b"Connection: keep-alive\r\nConnection: x"),
                         (b"Date: ", b"Date:\x00"), (b"Date: ", b"Date: \r"),
                         (b"\r\nContent-Type", b"\nContent-Type"),
                         (b"HTTP/1.1 200 OK", b"HTTP/1.1 204 OK"),
                         (b"HTTP/1.1 200 OK", b"HTTP/1.1 103 Early"),
                         (b"HTTP/1.1 200 OK", b"HTTP/1.1 101 Up"),
                         (b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"),
                         (b"HTTP/1.1 200 OK", b"HTTP/1.1 200"),
                         (b"HTTP/1.1 ", b"HTTP/1.1  "),
                         (b"\r\nContent-Length: 12", b"\r\nContent-Length: 12\r\n"
                          b"Content-Length: 13"),
                         (b"\r\nContent-Length: 12", b"\r\nContent-Length: 12\r\n"
                          b"Transfer-Encoding: chunked")]:
            heads.append(head.replace(old, new, 1))
    return heads


def _outcome(raw: bytes, head_only: bool) -> ResponseHead | str | None:
    try:
        return _parse_head(raw, head_only)
    except BadResponseHead as e:
        return str(e)


def test_a_response_shape_reads_every_head_as_the_general_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``ResponseShape`` (a parser made for one layout of field names, learnt from a
    head the general parser read) reads a head of its layout exactly as
    ``parse_response_head`` does, with the relayed lines ``relay_block`` cuts from it,
    and no other head (None: the general parser reads it). Every shape the heads teach is
    tried on every head, valid or not, as a HEAD answer and not."""
    import time

    from twistedgw.upstream._forward import relay_block
    from twistedgw.wire import learn_shape

    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.0)  # one Date for both ways
    heads = _grid_heads()
    outcomes = {(raw, head_only): _outcome(raw, head_only)
                for raw in heads for head_only in (False, True)}
    shapes = {}
    for (_, head_only), head in outcomes.items():
        if isinstance(head, tuple) and not head_only:
            learn_shape(head)  # the first sighting makes none
            shape = learn_shape(head)
            if shape is not None:
                shapes[shape.names] = shape
    assert len(shapes) >= 40
    read = 0
    for shape in shapes.values():
        for (raw, head_only), expected in outcomes.items():
            got = shape.parse(raw, head_only)
            if got is None:
                continue
            read += 1
            assert isinstance(expected, tuple), raw
            assert got[:8] == expected[:8] and expected.relayed is None, raw
            assert got.relayed == relay_block(expected), raw
            # As a connection reads it: the head, its CRLFCRLF and a body, in one read.
            assert shape.read(raw + b"\r\n\r\nok\r\n\r\n", head_only) == got, raw
            assert shape.end == len(raw) + 4
    assert read >= len(shapes) * 2  # each shape reads at least its head, HEAD or not
    # A layout with more runs of relayed lines than a shape keeps, or without one
    # Content-Length, makes none (the general parser reads it every time).
    many = b"HTTP/1.1 200 OK" + b"".join(
        b"\r\nX-%d: 1\r\nServer: s" % n for n in range(5)) + b"\r\nContent-Length: 0"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    for raw in (many, chunked):
        head = _parse_head(raw, False)
        assert head is not None and learn_shape(head) is None and learn_shape(head) is None
    # A head of many lines or bytes is not even remembered (its names would be kept).
    from twistedgw.wire import _response

    sighted = set(_response._sighted)
    for raw in (b"HTTP/1.1 200 OK" + b"".join(b"\r\nX-%d: 1" % n for n in range(40))
                + b"\r\nContent-Length: 0",
                b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 5000 + b"\r\nContent-Length: 0"):
        head = _parse_head(raw, False)
        assert head is not None and learn_shape(head) is None and learn_shape(head) is None
    assert _response._sighted == sighted


def test_a_backend_connection_reads_its_usual_layout_with_its_shape() -> None:
    """The third response of one layout on a connection is read by the layout's shape
    (learnt on the second sighting); one of another layout, or an invalid one, still by
    the general parser, which refuses what it always refused."""
    layout = (b"HTTP/1.1 200 OK\r\nServer: s\r\nX-Shape-Test: %d\r\nContent-Length: 2\r\n"
              b"Connection: keep-alive\r\n\r\nok")
    pool = _Pool()
    recorders = []
    for n in range(3):
        recorder = Recorder()
        recorders.append(recorder)
        pool.request(ORIGIN, b"GET", GET, None, recorder)
        conn, _ = pool.made[0]
        conn.dataReceived(layout % n)
    assert [r.data for r in recorders] == [[b"ok"]] * 3 and len(pool.made) == 1
    assert conn._shape is not None and recorders[1].heads[0].relayed is None
    relayed = recorders[2].heads[0].relayed  # read by the shape: its relayed lines
    assert relayed is not None and relayed.startswith(b"\r\nServer: twistedgw\r\nDate: ")
    assert relayed.endswith(b"\r\nX-Shape-Test: 2") and b"Connection" not in relayed
    chunked = Recorder()
    pool.request(ORIGIN, b"GET", GET, None, chunked)
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"2\r\nok\r\n0\r\n\r\n")
    assert chunked.data == [b"ok"] and chunked.ended == 1 and len(pool.made) == 1
    conflicting = Recorder()
    pool.request(ORIGIN, b"GET", GET, None, conflicting)
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nServer: s\r\nX-Shape-Test: 3\r\nContent-Length: 2"
                      b"\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok")
    assert conflicting.failures and "invalid" in str(conflicting.failures[0])
    large = Recorder()  # on a new connection (the conflict closed that one)
    pool.request(ORIGIN, b"GET", GET, None, large)
    conn, _ = pool.made[1]
    conn._shape = pool.made[0][0]._shape  # the layout, known here too
    conn.dataReceived((layout % 4).replace(b": 4", b": " + b"4" * 70_000))
    assert large.failures and "too large" in str(large.failures[0])


def test_a_forwarding_sets_every_field_of_the_backend_call_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forwarding is its own first ``BackendCall`` (issue 27 item 1) but sets that
    call's fields itself, without ``BackendCall.__init__`` (a call per request): what a
    cancel reads when it is made, what the pool reads when it is sent, ``queued_at``
    when it waits for a kept connection. A field added to ``BackendCall`` must be set
    there too, or the first attempt fails on it."""
    from types import SimpleNamespace

    from twistedgw.upstream import ForwardSettings
    from twistedgw.upstream._client import BackendCall
    from twistedgw.upstream._forward import Forwarder, _Forwarding

    forwarder = Forwarder(MemoryReactorClock(), ForwardSettings(max_persistent_per_host=1))
    pool = forwarder._upstream
    pool._open[ORIGIN.key] = 1  # the one kept connection is busy: the request waits
    exchange = _exchange([(b"Host", b"gw")], b"gw")
    gone: list[Any] = []
    exchange.responder = SimpleNamespace(when_gone=gone.append)
    with pytest.raises(TypeError):  # made by ``Forwarder.relay`` only
        _Forwarding()
    sent: list[str] = []
    real_send = _Forwarding._send

    def send(forwarding: _Forwarding, first: bool) -> None:
        for name in ("method", "handler", "cancelled", "conn", "_connecting"):
            getattr(forwarding, name)  # AttributeError: a field a cancel reads, left unset
        sent.append("first" if first else "again")
        real_send(forwarding, first)

    monkeypatch.setattr(_Forwarding, "_send", send)
    forwarder.relay(exchange, b"http://127.0.0.1:9/", None, 0, (), (), None, None, None, (),
                    None, None, None, None, None)
    assert sent == ["first"]
    forwarding = pool._waiting[ORIGIN.key][0]
    assert isinstance(forwarding, _Forwarding) and forwarding.handler is forwarding
    assert gone == [forwarding._client_left]
    for name in BackendCall.__slots__:
        getattr(forwarding, name)  # AttributeError: a field the forwarding left unset
    forwarding.cancel()
    assert forwarding.cancelled and pool._next_waiting(ORIGIN.key) is None


def test_the_named_tuple_fields_the_request_path_reads_by_index_are_where_it_reads_them() -> None:
    """3.11 reads a NamedTuple field by name through the generic attribute path, so the
    once-per-request reads index them (issue 27): a field moved must move those reads."""
    from twistedgw.http._callers import ConnectionCaller
    from twistedgw.http._resource import CallerVerdict
    from twistedgw.upstream._forward import ForwardResult, HeadEdits
    from twistedgw.wire import ResponseHead

    # upstream/_client.py ``dataReceived``, upstream/_forward.py ``response_whole``
    assert ResponseHead._fields[:2] == ("code", "phrase")
    assert ResponseHead._fields[4:] == (
        "length", "framing", "body_length", "keep_alive", "relayed"
    )
    # upstream/_forward.py ``_request_head``
    assert HeadEdits._fields[:2] == ("drop", "block")
    # http/_resource.py ``serve_exchange`` and ``forwarded``
    assert CallerVerdict._fields[:4] == ("pipeline", "caller", "refusal", "edits")
    assert CallerVerdict._fields[6:8] == ("identity", "consumer")  # ``record``
    assert CallerVerdict._fields[9] == "sandbox"
    assert ConnectionCaller._fields[0] == "direct"
    assert ForwardResult._fields == ("status", "bytes_sent", "error_kind")


def test_relay_reports_three_values_and_forward_a_forward_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Forwarder.relay`` (the request path's call) reports the end through ``on_done``
    with a ``ForwardResult``'s three values, no tuple (issue 27: a tuple and a frame to
    unpack it per request); ``forward`` keeps its contract (in-process backends, the
    cache, embedders): its ``on_done`` gets one ``ForwardResult``. Both ends are seen:
    a client gone while waiting, and the usual whole answer through the HTTP/1.1 front
    (``GatewayExchange.forwarded`` records what the relay reported)."""
    from types import SimpleNamespace

    from tests import frontkit
    from twistedgw.http._resource import GatewayExchange
    from twistedgw.upstream import ForwardResult, ForwardSettings
    from twistedgw.upstream._forward import Forwarder

    forwarder = Forwarder(MemoryReactorClock(), ForwardSettings(max_persistent_per_host=1))
    pool = forwarder._upstream
    pool._open[ORIGIN.key] = 1  # the one kept connection is busy: the requests wait
    done: list[object] = []
    for how in ("relay", "forward"):
        exchange = _exchange([(b"Host", b"gw")], b"gw")
        left: list[Any] = []
        exchange.responder = SimpleNamespace(when_gone=left.append)
        if how == "relay":
            forwarder.relay(exchange, b"http://127.0.0.1:9/", None, 0, (), (),
                            lambda *values: done.append(values), None, None, (), None,
                            None, None, None, None)
        else:
            forwarder.forward(exchange, b"http://127.0.0.1:9/", on_done=done.append)
        left[0]()  # the client leaves while the request waits for the connection
    assert done[0] == (499, 0, "client_gone") and type(done[0]) is tuple
    assert done[1] == ForwardResult(499, 0, "client_gone")
    assert type(done[1]) is ForwardResult

    own_cost = frontkit.own_cost()
    harness = own_cost.Harness(tmp_path)
    recorded: list[tuple[int, int, str | None]] = []
    record = GatewayExchange.record

    def spy(self: GatewayExchange, gateway: Any, status: int, sent: int,
            kind: str | None = None, *rest: Any, **named: Any) -> None:
        recorded.append((status, sent, kind))
        record(self, gateway, status, sent, kind, *rest, **named)

    monkeypatch.setattr(GatewayExchange, "record", spy)
    answer = harness.exchange(harness.connect())[1]
    assert answer.startswith(b"HTTP/1.1 200 ")
    body = answer.partition(b"\r\n\r\n")[2]
    assert recorded == [(200, len(body), None)] and body
