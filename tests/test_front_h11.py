"""Differential property tests (issues 14 and 27): the gateway's HTTP/1.1 framing
decisions (``twistedgw.wire``) against h11's, both directions. On generated request
streams, the byte-level front; on generated response streams, the upstream client's
backend connection. Where the gateway and h11 disagree about where a message ends or
what its body is, the gateway must have refused it (or, for a response, the
difference is its one documented tolerance, ``_tolerated``)."""

from __future__ import annotations

from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error as ierror
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.frontkit import front
from twistedgw.upstream import Upstream
from twistedgw.upstream._client import BackendCall, Origin, _Connection

_CL = [b"5", b"05", b"5, 5", b"+5", b"-1", b"0x5", b"", b"5 5", b"99999999999999999999",
       b"0", b"\x0b5", b"5\x0b"]
_TE = [b"chunked", b"Chunked", b"chunked, chunked", b"gzip, chunked", b"identity",
       b" chunked", b"chunked\x0b", b"chunk", b"chunked;q=1"]
_SIZE = [b"5", b"05", b"0x5", b"5 ", b"5;ext", b"5;a=\"b c\"", b"-5", b"ffffffffffffffffff",
         b"6", b"4", b" 5", b"5\t", b"+5"]
_NAMES = [b"Content-Length", b"Transfer-Encoding", b"content-length ", b"X-A", b"X A",
          b"Host", b"X_A", b"X-\x01", b"", b"Content-Length\t"]


_BYTES = [bytes([b]) for b in (0, 9, 10, 11, 13, 32, 34, 44, 58, 59, 0x7F, 0x80, 0xFF)] + [
    b"0", b"5", b"a", b"A", b"-", b"+", b"/", b"%"]


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD"]))
    target = draw(st.sampled_from([b"/a", b"/a?b=c", b"/x%20y", b"/"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    lines = [b"%s %s %s" % (method, target, version), b"Host: x"]
    body = b"hello"
    framing = draw(st.sampled_from(["cl", "te", "none", "both", "odd"]))
    chunked = False
    if framing in ("cl", "both"):
        lines.append(b"Content-Length: " + draw(st.sampled_from(_CL)))
        if draw(st.booleans()):
            lines.append(b"Content-Length: " + draw(st.sampled_from(_CL)))
    if framing in ("te", "both"):
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(_TE)))
        chunked = True
    if framing == "odd":
        lines.append(draw(st.sampled_from(_NAMES)) + b": " + draw(st.sampled_from(_CL + _TE)))
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(2, len(lines))), draw(st.sampled_from([b" folded", b"\tx"])))
    if chunked:
        size = draw(st.sampled_from(_SIZE))
        payload = b"%s\r\n%s\r\n0\r\n" % (size, body)
        if draw(st.booleans()):
            payload += b"X-Trailer: 1\r\n"
        payload += b"\r\n"
    elif framing == "none":
        payload = b""
    else:
        payload = body
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    data = head + payload
    if draw(st.integers(0, 6)) == 0:  # a bare LF or CR somewhere
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from([b"\n", b"\r", b"\r\n"])) + data[at + 1 :]
    for _ in range(draw(st.integers(0, 2))):  # any byte, anywhere: replaced or inserted
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.sampled_from(_BYTES))
        keep = draw(st.integers(0, 1))
        data = data[:at] + byte + data[at + keep :]
    return data


def _h11(data: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
    """The requests h11 reads from ``data``, and whether it stopped on an error."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")  # EOF: nothing more is coming
    out: list[tuple[bytes, bytes, bytes]] = []
    current: list[bytes] = []
    body: list[bytes] = []
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(
                event, h11.ConnectionClosed
            ):
                return out, False
            if isinstance(event, h11.Request):
                current = [event.method, event.target]
                body = []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                out.append((current[0], current[1], b"".join(body)))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                if current[0] != b"HEAD":
                    conn.send(h11.Data(data=b"ok"))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out, False
                conn.start_next_cycle()
    except h11.RemoteProtocolError:
        return out, True


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_request(), min_size=1, max_size=3), st.integers(1, 64))
def test_where_h11_and_the_front_disagree_the_front_refuses(
    requests: list[bytes], read_size: int
) -> None:
    data = b"".join(requests)
    f = front()
    for i in range(0, len(data), read_size):
        f.send(data[i : i + read_size])
    ours = [(s.method, s.target, s.body) for s in f.resource.seen]
    theirs, _h11_error = _h11(data)
    # Every request the front dispatched, h11 read the same way, at the same place.
    assert ours == theirs[: len(ours)], (data, ours, theirs)
    if len(ours) < len(theirs):
        # h11 read further: the front stopped because it refused (or the connection was
        # closing after a response that ends it, as h11's would).
        assert f.channel.refused or not f.channel.persistent, (data, ours, theirs)


def test_the_generator_reaches_both_outcomes() -> None:
    """The control: the property above is not vacuous (valid and refused streams)."""
    good = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    f = front()
    f.send(good)
    assert [(s.method, s.body) for s in f.resource.seen] == [(b"POST", b"hello")]
    assert _h11(good) == ([(b"POST", b"/a", b"hello")], False)
    bad = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
    f = front()
    f.send(bad)
    assert f.channel.refused and f.resource.seen == []
    assert _h11(bad)[1]


# -- the backend side: response streams ------------------------------------------------

_STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified",
           b"HTTP/1.0 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 ", b"HTTP/1.1 200",
           b"HTTP/1.1 2000 OK", b"HTTP/2 200 OK", b"HTTP/1.1 200 O\x01K"]
_RESPONSE_CL = [b"5", b"05", b"5, 5", b"+5", b"-1", b"", b"5 5", b"0", b"4", b"6",
                b"99999999999999999999"]
_RESPONSE_TE = [b"chunked", b"Chunked", b"gzip, chunked", b"identity", b"chunked, gzip",
                b" chunked", b"chunk"]


@st.composite
def _response(draw: st.DrawFn) -> bytes:
    lines = [draw(st.sampled_from(_STATUS))]
    body = b"hello"
    framing = draw(st.sampled_from(["cl", "te", "none", "both", "odd"]))
    chunked = False
    if framing in ("cl", "both"):
        lines.append(b"Content-Length: " + draw(st.sampled_from(_RESPONSE_CL)))
        if draw(st.booleans()):
            lines.append(b"Content-Length: " + draw(st.sampled_from(_RESPONSE_CL)))
    if framing in ("te", "both"):
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(_RESPONSE_TE)))
        chunked = True
    if framing == "odd":
        lines.append(draw(st.sampled_from(_NAMES)) + b": "
                     + draw(st.sampled_from(_RESPONSE_CL + _RESPONSE_TE)))
    if draw(st.integers(0, 4)) == 0:
        lines.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from([b" folded", b"\tx"])))
    if chunked:
        size = draw(st.sampled_from(_SIZE))
        payload = b"%s\r\n%s\r\n0\r\n" % (size, body)
        if draw(st.booleans()):
            payload += b"X-Trailer: 1\r\n"
        payload += b"\r\n"
    else:
        payload = body
    data = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    if draw(st.integers(0, 6)) == 0:  # a bare LF or CR somewhere
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from([b"\n", b"\r", b"\r\n"])) + data[at + 1 :]
    for _ in range(draw(st.integers(0, 2))):  # any byte, anywhere: replaced or inserted
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.sampled_from(_BYTES))
        keep = draw(st.integers(0, 1))
        data = data[:at] + byte + data[at + keep :]
    if draw(st.integers(0, 3)) == 0:  # an interim response first
        data = b"HTTP/1.1 100 Continue\r\n\r\n" + data
    return data


class _Handler:
    """What the backend connection reports for one request."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: list[bytes] = []
        self.ended = False
        self.failed: Any = None

    def response_head(self, head: Any) -> None:
        self.status = head.code

    def response_data(self, data: bytes) -> None:
        self.body.append(data)

    def response_end(self) -> None:
        self.ended = True

    def response_failed(self, error: Any) -> None:
        self.failed = error


def _gateway_reads(data: bytes, method: bytes, read_size: int) -> tuple[int, bytes] | None:
    """The first response the upstream client reads from ``data`` then EOF (None: it
    refused the response or found it cut short)."""
    upstream = Upstream(MemoryReactorClock())
    origin = Origin(b"http", b"backend", 80, b"backend", None)
    conn = _Connection(upstream, origin)
    conn.makeConnection(StringTransport())
    handler = _Handler()
    call = BackendCall(upstream, origin, method, b"", None, handler)
    conn.start(call, reused=False)
    for i in range(0, len(data), read_size):
        if handler.ended or handler.failed is not None:
            break
        conn.dataReceived(data[i : i + read_size])
    if not handler.ended and handler.failed is None:
        conn.connectionLost(Failure(ierror.ConnectionDone()))
    if not handler.ended or handler.status is None:
        return None
    return handler.status, b"".join(handler.body)


def _h11_reads(data: bytes, method: bytes) -> tuple[int, bytes] | None:
    """The first final response h11 reads from ``data`` then EOF (None: an error)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "backend")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status: int | None = None
    body: list[bytes] = []
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                return status, b"".join(body)
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


def _tolerated(data: bytes) -> bool:
    """The one way the gateway reads more responses than h11 (RFC 9110 8.6 allows it):
    a Content-Length given as a list, or repeated, of one value."""
    head = data.partition(b"\r\n\r\n")[2] if data.startswith(b"HTTP/1.1 100") else data
    head = head.partition(b"\r\n\r\n")[0].lower()
    return b"content-length: 5, 5" in head or head.count(b"content-length:") > 1


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_response(), st.sampled_from([b"GET", b"HEAD"]), st.integers(1, 64))
def test_where_h11_and_the_upstream_client_disagree_the_client_refuses(
    data: bytes, method: bytes, read_size: int
) -> None:
    ours = _gateway_reads(data, method, read_size)
    if ours is None:
        return  # refused or cut short: nothing relayed as complete
    theirs = _h11_reads(data, method)
    if theirs is None:
        assert _tolerated(data), (data, ours)
        return
    assert ours == theirs, (data, ours, theirs)


def test_the_response_generator_reaches_both_outcomes() -> None:
    """The control: the property above is not vacuous (valid and refused responses)."""
    good = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert _gateway_reads(good, b"GET", 3) == _h11_reads(good, b"GET") == (200, b"hello")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert _gateway_reads(chunked, b"GET", 7) == (200, b"hello")
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
    assert _gateway_reads(bad, b"GET", 64) is None and _h11_reads(bad, b"GET") is None
