"""Differential property test (issue 14): the byte-level front's framing decisions
against h11's on generated request streams. Where the two disagree about where a
request ends or what its body is, the front must have refused the connection."""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.frontkit import front

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
