"""The byte-level HTTP/1.1 front (http/_front.py, issue 14) in memory: keep-alive,
pipelining, HEAD, 100-continue, back-pressure, timers and the one-write response head.
The same behaviours against a real gateway process are in test_front.py,
test_hostile.py and test_limits.py."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.frontkit import Recorder, answer, front
from twistedgw.config import Limits
from twistedgw.http._front import EAGER_READ, LINGER_BYTES
from twistedgw.http._guard import LINGER_SECONDS
from twistedgw.wire import Exchange, answer_headers


def _statuses(out: bytes) -> list[bytes]:
    return [line.split(b" ")[1] for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [s.target for s in f.resource.seen] == [b"/1"]  # the second waits
    answer(f.resource.held.pop(), b"one", length=None)
    assert [s.target for s in f.resource.seen] == [b"/1", b"/2"]
    answer(f.resource.held.pop(), b"two", length=None)
    out = f.output()
    assert out.index(b"one") < out.index(b"two")
    assert not f.transport.disconnecting  # keep-alive


def test_the_response_head_leaves_in_one_write_with_the_first_body_bytes() -> None:
    f = front(resource=Recorder(hold=True))
    writes: list[bytes] = []
    original = f.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    f.transport.write = write  # type: ignore[method-assign]
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    answer(f.resource.held.pop(), b"hello")
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhello")
    assert b"Server: twistedgw\r\n" in writes[0]


def test_no_length_means_chunked_on_1_1_and_close_on_1_0() -> None:
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    answer(f.resource.held.pop(), b"abc", length=None)
    assert f.output().endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /a HTTP/1.0\r\n\r\n")
    answer(f.resource.held.pop(), b"abc", length=None)
    assert f.output().startswith(b"HTTP/1.0 200 OK\r\n") and f.output().endswith(b"\r\n\r\nabc")
    assert f.transport.disconnecting


def test_head_answers_carry_no_body() -> None:
    f = front(resource=Recorder(answer=b"hello"))
    f.send(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
    out = f.output()
    assert b"Content-Length: 5\r\n" in out and out.endswith(b"\r\n\r\n")


def test_connection_close_closes_after_the_response() -> None:
    f = front()
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n")
    assert b"Connection: close\r\n" in f.output()
    assert f.transport.disconnecting


def test_expect_100_continue_is_answered_before_the_body() -> None:
    f = front()
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert f.output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    f.send(b"hello")
    assert f.resource.seen[0].body == b"hello"


def test_a_body_over_the_limit_is_refused_before_100_continue() -> None:
    f = front(Limits(max_body_bytes=4))
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert f.output().startswith(b"HTTP/1.1 413 ")
    assert f.resource.seen == []


def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    f = front(Limits(max_body_bytes=100))
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    f.send(b"40\r\n" + b"x" * 64 + b"\r\n")
    assert f.output() == b""
    f.send(b"40\r\n" + b"x" * 64 + b"\r\n")
    assert f.output().startswith(b"HTTP/1.1 413 ")
    assert f.resource.seen == [] and f.records[0].error_kind == "body_too_large"


def test_reading_stops_while_output_waits_and_resumes_after() -> None:
    f = front()
    f.channel.pauseProducing()  # the transport's buffer is full
    assert f.transport.producerState == "paused"
    f.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert f.resource.seen == []  # not even parsed
    f.channel.resumeProducing()
    assert f.transport.producerState == "producing"
    assert [s.target for s in f.resource.seen] == [b"/1"]


def test_pipelined_bytes_beyond_a_bound_pause_reading() -> None:
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    f.send(b"GET /2 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * EAGER_READ + b"\r\n\r\n")
    assert f.transport.producerState == "paused"
    f.resource.held.pop().responder.finish()
    assert f.transport.producerState == "producing"


def test_idle_mid_request_is_a_408_and_idle_between_requests_closes() -> None:
    limits = Limits(idle_timeout=5.0, client_header_timeout=60.0)
    f = front(limits)
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe")
    f.clock.advance(4.0)
    f.send(b"l")  # activity pushes the timer back
    f.clock.advance(4.0)
    assert f.output() == b""
    f.clock.advance(1.5)
    assert f.output().startswith(b"HTTP/1.1 408 ")
    f = front(limits)
    f.clock.advance(5.5)
    assert f.output() == b"" and f.transport.disconnecting


def test_a_dribbled_header_section_is_cut_at_the_header_timeout() -> None:
    f = front(Limits(idle_timeout=60.0, client_header_timeout=3.0))
    for _ in range(5):
        f.send(b"G")
        f.clock.advance(0.5)
    f.clock.advance(1.0)
    assert f.output().startswith(b"HTTP/1.1 408 ")
    assert f.records[0].error_kind == "header_timeout"


def test_a_client_that_leaves_is_reported_to_the_exchange() -> None:
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange = f.resource.held.pop()
    gone: list[bool] = []
    exchange.responder.when_gone(lambda: gone.append(True))
    f.channel.connectionLost()
    assert gone == [True] and exchange.responder.gone
    exchange.responder.write(b"late")  # ignored, no error
    assert f.channel.guard.open == 0


def test_a_head_answer_keeps_the_length_the_resource_set() -> None:
    class Head(Recorder):
        def respond(self, exchange: Exchange) -> None:
            exchange.responder.start_response(200, answer_headers(), 42)
            exchange.responder.finish()

    f = front(resource=Head())
    f.send(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Content-Length: 42\r\n" in f.output()


def test_http_1_0_keeps_alive_only_when_asked_and_the_answer_has_a_length() -> None:
    f = front()
    f.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: keep-alive\r\n" in f.output() and not f.transport.disconnecting
    f.transport.clear()
    f.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert f.output().startswith(b"HTTP/1.0 200 OK\r\n")
    assert [s.target for s in f.resource.seen] == [b"/a", b"/b"]
    f = front()
    f.send(b"GET /a HTTP/1.0\r\n\r\n")  # not asked: closed after the answer
    assert b"keep-alive" not in f.output() and f.transport.disconnecting
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    answer(f.resource.held.pop(), b"no length", length=None)  # the body ends with the connection
    assert b"keep-alive" not in f.output() and f.transport.disconnecting


def test_an_open_channel_keeps_its_fields_out_of_its_instance_dict() -> None:
    """One FrontChannel per open connection: its fields are slots, so what is left in its
    instance dict (transport, site, ...) stays under the 30 keys past which CPython stops
    sharing a dict's keys (~1.5 KiB more per idle connection)."""
    f = front(resource=Recorder(hold=True))
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert f.resource.held
    fields = vars(f.channel)
    assert "_buf" not in fields and "_idle_timer" not in fields
    assert len(fields) < 12, sorted(fields)


_VALUE_BYTES = st.sampled_from(
    [b"a", b" ", b"\t", b"\x00", b"\x01", b"\x0b", b"\x0c", b"\r", b"\x1f", b"\x7f", b"\xe9"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_VALUE_BYTES, max_size=6).map(b"".join), min_size=1, max_size=4))
def test_a_ctl_in_any_header_value_is_refused_and_only_then(values: list[bytes]) -> None:
    """The head is searched for CTLs once and the per-value search skipped when none is
    found: the outcome must be the per-value rule's (any CTL but HTAB in a value: 400)."""
    f = front()
    head = b"".join(b"X-%d: %s\r\n" % (i, v) for i, v in enumerate(values))
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    bad = any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", v) for v in values)
    assert f.output().startswith(b"HTTP/1.1 400 " if bad else b"HTTP/1.1 200 "), values


# -- judged at head time (issue 22 item 4) ------------------------------------------


class Judge(Recorder):
    """A handler that judges from the head alone: refuses at once, or holds the verdict
    (``pending``) until the test allows or refuses it."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.pending: list[Exchange] = []

    def handle(self, exchange: Exchange) -> None:
        if self.refuse:
            answer(exchange, b'{"code":"900902"}', status=401)
        else:
            self.pending.append(exchange)

    def allow(self) -> None:
        super().handle(self.pending.pop())


BIG_POST = (b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 9437184\r\n\r\n")


def test_a_refusal_reads_no_body_sends_no_100_continue_and_closes_after_a_linger() -> None:
    f = front(resource=Judge(refuse=True))
    f.send(BIG_POST)
    out = f.output()
    assert out.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in out
    assert b"Connection: close\r\n" in out
    assert not f.transport.disconnecting  # lingering: reads and discards what comes
    f.send(b"x" * 1000)
    assert f.output() == out  # discarded, never parsed as a request
    f.send(b"x" * LINGER_BYTES)  # past the bound: reading stops
    assert f.transport.producerState == "paused"
    f.clock.advance(LINGER_SECONDS)
    assert f.transport.disconnecting


def test_while_the_verdict_is_pending_the_body_is_not_read() -> None:
    judge = Judge()
    f = front(resource=judge)
    f.send(BIG_POST.replace(b"9437184", b"5"))
    assert judge.pending and f.output() == b""  # no 100 Continue before the allow
    assert f.transport.producerState == "paused"  # the body stays in the client's socket
    judge.allow()
    assert f.output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert f.transport.producerState == "producing"
    f.send(b"hello")
    assert [s.body for s in judge.seen] == [b"hello"]
    assert f.output().endswith(b"\r\n\r\nok") and not f.transport.disconnecting


def test_a_refused_request_whose_body_is_all_in_keeps_the_connection() -> None:
    f = front(resource=Judge(refuse=True))
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
           b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n"
           b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert f.output().count(b"HTTP/1.1 401 ") == 3
    assert b"Connection: close" not in f.output() and not f.transport.disconnecting


def test_a_pending_verdict_whose_client_left_answers_nothing() -> None:
    judge = Judge()
    f = front(resource=judge)
    f.send(BIG_POST)
    exchange = judge.pending[0]
    f.channel.connectionLost()
    assert exchange.responder.gone
    judge.allow()  # the verdict arrives late: nothing is read or written
    assert judge.seen == [] and f.output() == b""


def test_an_idle_connection_keeps_no_address_objects_or_request_line() -> None:
    """What an idle keep-alive connection holds (bench/idle_memory.py, issue 27): the
    client's address as a string only (the address objects are asked of the transport
    when read) and nothing of the request it answered."""
    f = front(resource=Recorder(hold=True))
    conn = f.channel._conn
    assert conn is not None and conn.client_ip == "127.0.0.1"
    assert conn._peer is None and conn._local is None
    f.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert f.channel._line == (b"GET", b"/a")  # the request's, while it is in flight
    answer(f.resource.held.pop())
    assert f.channel._line is None
    assert conn._peer is None and conn._local is None
    assert (conn.peer.host, conn.peer.port) == ("127.0.0.1", 50000)  # type: ignore[union-attr]
    assert (conn.local.host, conn.local.port) == ("127.0.0.1", 443)  # type: ignore[union-attr]


def test_one_object_per_request_sets_every_field_and_drops_its_self_reference() -> None:
    """The front's exchange is its own responder and body source (issue 27 item 1): every
    field of ``GatewayExchange`` is set by its one ``__init__`` (a request with a body;
    the answer's framing fields when it starts), and once its answer ends it refers to
    itself no more (no reference cycle per request for the collector)."""
    from twistedgw.http._front import _H1Exchange

    recorder = Recorder(hold=True)
    f = front(resource=recorder)
    f.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    exchange = recorder.held[0]
    assert type(exchange) is _H1Exchange
    assert exchange.responder is exchange and exchange.body is exchange
    answer_fields = {"_head", "_chunked", "_silent"}
    slots = [name for cls in type(exchange).__mro__ for name in getattr(cls, "__slots__", ())]
    for name in slots:
        if name not in answer_fields:
            getattr(exchange, name)  # AttributeError: a field the __init__ left unset
    exchange.write(b"early")  # before the answer starts: nothing, and no error
    exchange.start_response(200, [], 2)
    for name in slots:
        getattr(exchange, name)  # AttributeError: a field the answer's start left unset
    exchange.write(b"ok")
    exchange.finish()
    out = f.output()
    assert out.endswith(b"\r\n\r\nok")
    assert exchange.responder is not exchange and exchange.body is not exchange
    assert exchange.responder.finished and exchange.responder.gone
    exchange.responder.write(b"late")  # what answers after the end changes nothing
    exchange.body.read(lambda body, size: None)
    assert f.output() == out
