"""The HTTP front's pure logic in memory: the chunked decoder (``wire.ChunkedDecoder``,
shared with the upstream client), the request-target grammar and the bounded close
(issue 17). The same behaviours against a real gateway process are in test_front.py."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError

from tests import frontkit
from twistedgw.config import Limits
from twistedgw.http import Guard, target_problem
from twistedgw.http import _guard as guard
from twistedgw.http._front import FrontChannel
from twistedgw.wire import ChunkedDecoder, MalformedChunks, TinyChunks

# -- the chunked decoder -------------------------------------------------------


def _decode(cls: Any, reads: list[bytes]) -> tuple[bytes, bytes | None]:
    """Feed ``reads`` to a decoder: the body, and what followed it (None: unfinished).
    ``cls`` is ours, or twisted.web's callback-style decoder for comparison."""
    data: list[bytes] = []
    done: list[bytes] = []
    if cls is ChunkedDecoder:
        decoder = ChunkedDecoder()
        for i, read in enumerate(reads):
            body, rest = decoder.feed(read)
            data.append(body)
            if rest is not None:  # what follows the body is the next request's
                return b"".join(data), rest + b"".join(reads[i + 1 :])
        return b"".join(data), None
    web = cls(data.append, done.append)
    for i, read in enumerate(reads):
        try:
            web.dataReceived(read)
        except _MalformedChunkedDataError as e:
            raise MalformedChunks(str(e)) from None
        if done:
            return b"".join(data), done[0] + b"".join(reads[i + 1 :])
    return b"".join(data), None


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


_CHUNKS = st.lists(st.binary(min_size=1, max_size=300), max_size=20)
_EXT = st.sampled_from([b"", b";a=b", b';name="q s"', b";x"])
_TRAILERS = st.lists(st.sampled_from([b"X-T: 1", b"Digest: abc=="]), max_size=2)


@settings(max_examples=400, deadline=None)
@given(_CHUNKS, _EXT, _TRAILERS, st.binary(max_size=20), st.lists(st.integers(0, 10_000)))
def test_valid_bodies_decode_as_twisted_web_decodes_them(
    chunks: list[bytes], ext: bytes, trailers: list[bytes], after: bytes, cuts: list[int]
) -> None:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
    body += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n" + after
    reads = _split(body, cuts)
    ours = _decode(ChunkedDecoder, reads)
    assert ours == (b"".join(chunks), after)
    assert ours == _decode(_ChunkedTransferDecoder, reads)


_GARBAGE = st.lists(
    st.sampled_from([b"1", b"a", b"F", b"0", b"\r\n", b"\r", b"\n", b"x", b";e", b" ", b"-",
                     b"+", b"0x", b"\x00", b"ffffffffffffffffff", b"\r\n\r\n"]),
    max_size=30,
).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(_GARBAGE, st.lists(st.integers(0, 200)))
def test_any_input_is_refused_or_decoded_exactly_as_twisted_web_does(
    raw: bytes, cuts: list[int]
) -> None:
    """Never a different body than twisted.web's decoder sees: the same bytes, or a
    refusal (this decoder is stricter about trailers and size lengths)."""
    reads = _split(raw, cuts)
    try:
        ours = _decode(ChunkedDecoder, reads)
    except MalformedChunks:
        return
    try:
        theirs = _decode(_ChunkedTransferDecoder, reads)
    except MalformedChunks:
        pytest.fail(f"accepted {raw!r}, which twisted.web refuses")
    if ours[1] is not None:
        assert ours == theirs
    else:  # unfinished: whatever data was delivered is a prefix of twisted.web's
        assert theirs[0].startswith(ours[0])


@pytest.mark.parametrize(
    "raw",
    [b"5\r\nhello\r\n0\r\nX: a\nb\r\n\r\n", b"5\r\nhello\r\n0\r\nX: \x00\r\n\r\n",
     b"5\r\nhelloXY", b"z\r\n", b"5 \r\nhello\r\n", b"+5\r\nhello\r\n",
     b"1" * 17 + b"\r\n", b"5;" + b"e" * 1100 + b"\r\n"],
)
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedChunks):
        _decode(ChunkedDecoder, [raw])


@pytest.mark.parametrize(
    "raw",
    [b"5\nhello\n0\n\n", b"5\n", b"5;ext\n", b"5\r\nhello\r\n0\n", b"0\r\n\n",
     b"0\r\nX-T: 1\n", b"5\r\nhello\r\n0\r\nX-T: 1\nY: 2\r\n\r\n"],
)
def test_a_bare_lf_in_a_chunk_line_is_refused_as_soon_as_it_arrives(raw: bytes) -> None:
    """Issue 23 item 6: ``5\nhello\n0\n\n`` got no answer until a timeout; refused as
    soon as the LF is in, with nothing more to come."""
    with pytest.raises(MalformedChunks):
        ChunkedDecoder().feed(raw)


def test_many_tiny_chunks_are_refused_after_the_documented_count() -> None:
    tiny = b"1\r\nx\r\n" * (guard.SMALL_CHUNKS_AFTER - 1)
    data, done = _decode(ChunkedDecoder, [tiny])  # just under the count: fine
    assert len(data) == guard.SMALL_CHUNKS_AFTER - 1 and done is None
    with pytest.raises(TinyChunks):
        _decode(ChunkedDecoder, [tiny + b"1\r\nx\r\n" * 10_000])
    # Chunks averaging the documented size pass, however many.
    fair = b"%x\r\n%s\r\n" % (guard.MIN_AVERAGE_CHUNK, b"y" * guard.MIN_AVERAGE_CHUNK)
    data, done = _decode(ChunkedDecoder, [fair * 20_000 + b"0\r\n\r\n"])
    assert len(data) == 20_000 * guard.MIN_AVERAGE_CHUNK and done == b""


def test_tiny_chunks_are_refused_before_the_rest_of_the_read_is_parsed() -> None:
    """The limit is checked inside the hot loop, not once per 64 KiB read."""
    decoder = ChunkedDecoder()
    with pytest.raises(TinyChunks):
        decoder.feed(b"1\r\nx\r\n" * 20_000)
    assert decoder.chunks < guard.SMALL_CHUNKS_AFTER + 300


# -- the request-target grammar --------------------------------------------------

# RFC 3986 / 9112, written out independently of http/_guard.py.
_UNRESERVED = r"A-Za-z0-9\-._~"
_PCHAR = rf"(?:[{_UNRESERVED}!$&'()*+,;=:@]|%[0-9A-Fa-f]{{2}})"
_ORIGIN_FORM = re.compile(rf"(?:/{_PCHAR}*)+(?:\?(?:{_PCHAR}|[/?])*)?".encode())


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.binary(min_size=1, max_size=40),
    st.lists(st.sampled_from([b"/", b"?", b"%", b"%4", b"%41", b"a", b"#", b"\x7f", b"\xb0",
                              b"[", b"{", b'"', b"*", b":", b"@", b";"]), min_size=1,
             max_size=15).map(b"".join),
))
def test_target_grammar_matches_rfc_3986_origin_form(target: bytes) -> None:
    assert (target_problem(target) is None) == bool(_ORIGIN_FORM.fullmatch(target))


# -- the bounded close -------------------------------------------------------------


class FakeTCP:
    """The parts of a TCP transport the close watchdog reads."""

    def __init__(self, unsent: int) -> None:
        self.dataBuffer = b"x" * unsent
        self.offset = 0
        self._tempDataLen = 0
        self.disconnected = False
        self.disconnecting = False
        self.aborted = False
        self.connected = True

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.aborted = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


def _channel(tcp: FakeTCP) -> tuple[FrontChannel, Clock]:
    clock = Clock()
    gateway: Any = SimpleNamespace(runtime=SimpleNamespace(config=SimpleNamespace(
        limits=Limits())))
    channel = FrontChannel(Guard(gateway))
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    channel._network = tcp
    channel.transport = tcp  # type: ignore[assignment]
    return channel, clock


def test_a_close_the_client_never_reads_is_aborted() -> None:
    tcp = FakeTCP(unsent=30_000)
    channel, clock = _channel(tcp)
    channel.loseConnection()
    clock.advance(guard.CLOSE_TIMEOUT - 0.1)
    assert not tcp.aborted
    clock.advance(0.2)
    assert tcp.aborted


def test_a_close_the_client_is_still_reading_gets_time_while_it_progresses() -> None:
    tcp = FakeTCP(unsent=30_000)
    channel, clock = _channel(tcp)
    channel.loseConnection()
    for left in (20_000, 10_000, 5_000):
        tcp.dataBuffer = b"x" * left
        clock.advance(guard.CLOSE_TIMEOUT)
        assert not tcp.aborted
    clock.advance(guard.CLOSE_TIMEOUT)  # no progress this time
    assert tcp.aborted


def test_all_sent_the_tcp_connection_is_closed_then_aborted_if_it_lingers() -> None:
    tcp = FakeTCP(unsent=0)  # TLS: close_notify sent, waiting for the client's
    channel, clock = _channel(tcp)
    channel.loseConnection()
    tcp.disconnecting = False  # as TLS leaves TCP while it waits for close_notify
    clock.advance(guard.CLOSE_TIMEOUT)
    assert tcp.disconnecting and not tcp.aborted  # an orderly TCP close first
    clock.advance(guard.CLOSE_TIMEOUT)
    assert tcp.aborted


def test_no_timer_outlives_the_connection() -> None:
    tcp = FakeTCP(unsent=100)
    channel, clock = _channel(tcp)
    channel.loseConnection()
    tcp.disconnected = True
    clock.advance(guard.CLOSE_TIMEOUT)
    assert not tcp.aborted and not clock.getDelayedCalls()


# -- the request line's method and the Host (issue 23 items 1 and 5) ------------------


@pytest.mark.parametrize(
    ("method", "status"),
    [(b"GET", None), (b"PROPFIND", None), (b"VERSION-CONTROL", None), (b"M_X", None),
     (b"CONNECT", 405), (b"get", 400), (b"Get", 400), (b"GET1", 400), (b"G=T", 400),
     (b"G T", 400), (b"", 400)],
)
def test_one_method_rule_for_both_http_versions(method: bytes, status: int | None) -> None:
    from twistedgw.wire import method_refusal

    refusal = method_refusal(method)
    assert (refusal.status if refusal is not None else None) == status


@pytest.mark.parametrize(
    ("value", "name"),
    [(b"example.com", "example.com"), (b"Example.COM.:8443", "example.com"),
     (b"[::1]:443", "::1"), (b"[2001:DB8::1]", "2001:db8::1"), (b"192.0.2.1:80", "192.0.2.1"),
     (b"host:", "host"), (b"_srv.example", "_srv.example"), (b"evil.example/x", None),
     (b"a b", None), (b"...", None), (b"", None), (b"a@evil.example", None), (b"x,y", None),
     (b"[::1", None), (b"::1", None), (b"[fe80::1%25eth0]", None), (b"-a.example", None),
     (b"a:99999999", None), (b"\xc3\xa9.example", None), (b" a.example", None),
     (b"[::1]x", None), (b"a" * 64 + b".example", None)],
)
def test_the_host_validator(value: bytes, name: str | None) -> None:
    from twistedgw import _hosts

    if name is None:
        with pytest.raises(_hosts.BadHost):
            _hosts.from_header(value)
    else:
        assert _hosts.from_header(value) == name


def test_the_one_match_request_parse_reads_every_head_as_the_piece_by_piece_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``parse_request_fields`` checks a usual head with one match (``REQUEST_HEAD``) and
    any other piece by piece: both read every head alike and refuse the same ones, with
    the same status, reason and request line."""
    import itertools

    from twistedgw.wire import WireError, _request

    firsts = [b"GET / HTTP/1.1", b"POST /a?x=1&y=2 HTTP/1.0", b"get /a HTTP/1.1",
              b"CONNECT /a HTTP/1.1", b"GET a HTTP/1.1", b"GET /a HTTP/1.2", b"GET  /a HTTP/1.1",
              b"GET /a\x01 HTTP/1.1", b"PATCH /%zz HTTP/1.1", b"TRACE /%41 HTTP/1.1",
              b"GET /" + b"a" * 90 + b" HTTP/1.1"]
    fields = [b"Host: x", b"host:localhost:8443 ", b"Host: bad host", b"Content-Length: 3",
              b"Content-Length: 3,3", b"Transfer-Encoding: chunked", b"Connection: close",
              b"Connection: Keep-Alive", b"Expect: 100-continue", b"X Bad: 1", b" Fold: x",
              b"X-A: a\x01", b"X-B: \tv\t", b"NoColon", b""]

    def parse(raw: bytes, limit: int) -> object:
        try:
            head = _request.parse_request_head(raw, limit)
        except WireError as e:
            return (e.error.status, e.error.description, e.kind, e.line)
        return [getattr(head, name) for name in head.__slots__ if name != "fields"] + [
            head.fields.pairs, head.fields.clean, head.fields.index()]

    # Long heads (an authz question's certificate header): checked by ``_long_head``'s
    # passes, not the one match; the long value first, last, or the only field.
    pad = b"X-SSL-Client-Cert: " + b"-----BEGIN%20CERTIFICATE-----%0AMIIC" * 20
    heads = [first + b"".join(b"\r\n" + f for f in chosen) + tail
             for first in firsts
             for chosen in [*itertools.combinations(fields, 2),
                            *((pad, f) for f in fields), *((f, pad) for f in fields)]
             for tail in (b"", b"\r\nHost: y", b"\nX: y", b"\r\nX-Pad: \x7f",
                          b"\r\nx-ssl-client-cert: again")]
    assert sum(len(raw) > _request.LONG_HEAD for raw in heads) > 1000
    limits = (8192, 1000, 100)
    matched = sum(_request.REQUEST_HEAD.fullmatch(raw) is not None for raw in heads)
    long = sum(len(raw) > _request.LONG_HEAD and _request._long_head(raw) is not None
               for raw in heads)
    fast = [parse(raw, limit) for raw in heads for limit in limits]
    monkeypatch.setattr(_request, "REQUEST_HEAD", re.compile(rb"(?!)(x)(x)(x)(x)"))
    monkeypatch.setattr(_request, "_long_head", lambda head: None)
    assert fast == [parse(raw, limit) for raw in heads for limit in limits]
    assert matched > 100 and long > 100


def test_the_usual_head_is_read_and_forwarded_as_the_line_by_line_parse_does(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front takes a usual head (``wire.USUAL_REQUEST_HEAD``: Host first, no field
    that frames a body or that the forwarder drops) from one match, its fields made only
    when read, and the forwarder copies its other lines as they came: for every head,
    the exchange the request path sees, what the backend is sent and what the client
    gets are what ``parse_request_fields`` and the line-by-line copy make of it."""
    import itertools
    from pathlib import Path

    from twistedgw.http import _front
    from twistedgw.wire import USUAL_REQUEST_HEAD

    own_cost = frontkit.own_cost()
    harness = own_cost.Harness(Path(tmp_path))
    seen: list[object] = []
    handle = harness.site.resource.handle

    def handle_and_look(exchange: Any) -> None:
        seen.append((exchange.method, exchange.target, exchange.version, exchange.host,
                     exchange.fields.pairs, exchange.fields.clean, exchange.body is None,
                     exchange.channel.persistent))
        handle(exchange)

    harness.site.resource.handle = handle_and_look
    firsts = [b"GET /bench/a HTTP/1.1", b"POST /bench/a?x=1 HTTP/1.0", b"get /bench HTTP/1.1",
              b"DELETE /bench/%41 HTTP/1.1"]
    fields = [b"Host: localhost", b"host:  localhost:8443 ", b"HOST: bad host", b"Host: a_b",
              b"User-Agent: curl/8.5.0", b"Accept: */*", b"X-Client-Cert: forged", b"x_y: 1",
              b"X-A:  spaced ", b"X-B:tight", b"X-E: ", b"X-T: a \t b", b"Content-Length: 0",
              b"Connection: close", b"te: trailers", b"X-Forwarded-For: 192.0.2.1",
              b"Cookie: " + b"c" * 9000, b"Host: again", b"X-Ctl: a\x01"]
    heads = [first + b"".join(b"\r\n" + f for f in chosen) + b"\r\n\r\n"
             for first in firsts
             for n in (1, 2, 3)
             for chosen in itertools.combinations(fields, n)
             if n < 3 or chosen[0] == fields[0]]
    date = re.compile(rb"\r\nDate: [^\r]*")

    def run() -> list[object]:
        seen.clear()
        out: list[object] = []
        for head in heads:
            sent, answer = harness.exchange(harness.connect(), head)
            out.append((sent, date.sub(b"", answer)))
        return [*out, *seen]

    usual = sum(USUAL_REQUEST_HEAD.fullmatch(head[:-4]) is not None for head in heads)
    fast = run()
    monkeypatch.setattr(_front, "USUAL_REQUEST_HEAD", re.compile(rb"(?!)()()()()()()"))
    assert fast == run()
    assert usual > 60


def test_a_unix_socket_connections_heads_are_not_tried_as_the_usual_head(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NGINX in front (a Unix-socket connection) sends X-Forwarded-For with every request,
    which no usual head has, after its certificate header: the front does not try the
    usual head's match there (failing past ~1-2 KB of certificate, it cost more than the
    decision); the head is parsed line by line and answered alike. A TCP connection's
    usual head is still taken from the match."""
    from pathlib import Path

    from twisted.internet.address import UNIXAddress
    from twisted.internet.testing import StringTransport

    from twistedgw.http import _front

    own_cost = frontkit.own_cost()
    harness = own_cost.Harness(Path(tmp_path))
    tried: list[bytes] = []
    usual = _front.USUAL_REQUEST_HEAD

    class Spy:
        def fullmatch(self, buf: bytes, *span: int) -> Any:
            tried.append(buf)
            return usual.fullmatch(buf, *span)

    monkeypatch.setattr(_front, "USUAL_REQUEST_HEAD", Spy())
    over_tcp = harness.exchange(harness.connect())
    assert len(tried) == 1 and over_tcp[1].startswith(b"HTTP/1.1 200 "), over_tcp
    tried.clear()

    def over_unix(tried_too: bool = False) -> bytes:
        channel = _front.FrontChannel(harness.guard)
        channel.site = harness.site
        channel.callLater = harness.clock.callLater
        transport = StringTransport(peerAddress=UNIXAddress(None),
                                    hostAddress=UNIXAddress(b"/run/twistedgw.sock"))
        harness.identities[transport] = harness.partner
        channel.makeConnection(transport)
        if tried_too:  # as if it had an address: the match is tried
            assert channel._conn is not None
            channel._conn.client_ip = "unix"
        channel.dataReceived(own_cost.REQUEST)
        return re.sub(rb"\r\nDate: [^\r]*", b"", transport.value())

    skipped = over_unix()
    assert tried == [] and skipped.startswith(b"HTTP/1.1 "), skipped
    assert over_unix(tried_too=True) == skipped and len(tried) == 1


def test_the_usual_heads_hosts_are_kept_by_their_bytes_bounded_and_never_refusals(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front judges a usual head's Host once per value (issue 27): a plain dict from
    the bytes as sent to ``_hosts.from_header``'s answer, so each value gets its own
    answer (a Host that differs by a byte is judged again); a refused value is never
    kept (it is read line by line, which refuses it, every time); the dict is emptied
    when full, so unique values cannot grow memory."""
    from pathlib import Path

    from twistedgw.http import _front

    own_cost = frontkit.own_cost()
    harness = own_cost.Harness(Path(tmp_path))
    monkeypatch.setattr(_front, "_HOST_NAMES_MAX", 3)
    _front._host_names.clear()

    def status(host: bytes) -> bytes:
        request = b"GET /bench/small HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        return harness.exchange(harness.connect(), request)[1].split(b"\r\n", 1)[0]

    assert status(b"localhost:8443").startswith(b"HTTP/1.1 200 ")
    assert status(b"LocalHost.").startswith(b"HTTP/1.1 200 ")
    assert _front._host_names == {b"localhost:8443": "localhost", b"LocalHost.": "localhost"}
    for refused in (b"localhost:99999999", b"1:2:3", b"", b"a..b"):
        assert status(refused).startswith(b"HTTP/1.1 400 "), refused
        assert status(refused).startswith(b"HTTP/1.1 400 "), refused  # again: judged again
        assert refused not in _front._host_names
    assert len(_front._host_names) == 2
    assert status(b"[::1]").startswith(b"HTTP/1.1 200 ")
    assert _front._host_names[b"[::1]"] == "::1" and len(_front._host_names) == 3
    assert status(b"127.0.0.1:1").startswith(b"HTTP/1.1 200 ")  # full: emptied first
    assert _front._host_names == {b"127.0.0.1:1": "127.0.0.1"}
