"""[tracing] in memory: the W3C parsers, the config section, and the SDK-backed tracer
exporting to the SDK's in-memory exporter (spans, parents, sampling, the bounded queue).

The real-process tests (an OTLP/HTTP receiver, a gateway, a backend) are in
tests/test_tracing.py.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from zope.interface import implementer

from twistedgw import config as configmod
from twistedgw import errors
from twistedgw.config import ConfigError, Mode, MutualSslConfig, TracingConfig
from twistedgw.identity import ClientIdentity, Outcome, Source
from twistedgw.pipeline import Call, IAuthoriser, IScheme, Refusal, SchemeResult
from twistedgw.testing import fake_api, fake_call, pipeline
from twistedgw.testing.devpki import DevPki
from twistedgw.tracing import (
    IncomingRequest,
    Verdict,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
    start_tracer,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{PARENT}-01".encode()


# -- traceparent / tracestate ---------------------------------------------------


def test_traceparent_valid() -> None:
    parsed = parse_traceparent([GOOD])
    assert parsed is not None
    assert parsed.trace_id == int(TRACE, 16) and parsed.span_id == int(PARENT, 16)
    assert parsed.sampled
    assert parse_traceparent([GOOD[:-2] + b"00"]).sampled is False  # type: ignore[union-attr]
    assert parse_traceparent([b"  " + GOOD + b"\t"]) is not None  # optional whitespace
    # A later version may append fields after a "-"; a version 00 parser reads the rest.
    later = parse_traceparent([b"cc" + GOOD[2:] + b"-what-the-future-holds"])
    assert later is not None and later.trace_id == int(TRACE, 16)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        GOOD[:-1],  # too short
        GOOD + b"-x",  # version 00 has exactly four fields
        b"ff" + GOOD[2:],  # version ff is invalid
        GOOD.upper(),  # lower-case hex only
        f"00-{'0' * 32}-{PARENT}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"00_{TRACE}-{PARENT}-01".encode(),
        f"00-{TRACE}-{PARENT}-1".encode(),
        f"00-{TRACE[:-1]}g-{PARENT}-01".encode(),
        b"cc" + GOOD[2:] + b"x",  # a later version's extra fields must follow a "-"
        b"cc" + GOOD[2:] + b"-" + b"a" * 300,  # longer than the bound
    ],
)
def test_traceparent_invalid_is_ignored(value: bytes) -> None:
    assert parse_traceparent([value]) is None


def test_traceparent_sent_twice_or_absent_is_ignored() -> None:
    assert parse_traceparent([GOOD, GOOD]) is None
    assert parse_traceparent(None) is None
    assert parse_traceparent([]) is None


def test_traceparent_huge_value_is_refused_by_its_length() -> None:
    assert parse_traceparent([GOOD + b"-" + b"0" * 10_000_000]) is None


@given(st.binary(max_size=400))
def test_traceparent_never_raises(value: bytes) -> None:
    parsed = parse_traceparent([value])
    if parsed is not None:
        assert len(value.strip(b" \t")) >= 55 and parsed.trace_id and parsed.span_id


def test_tracestate() -> None:
    assert parse_tracestate([b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]) == (
        ("congo", "t61rcWkgMzE"),
        ("rojo", "00f067aa0ba902b7"),
    )
    # several field lines join with commas; empty members are skipped
    assert parse_tracestate([b"a=1,,", b"t@vendor=x y"]) == (("a", "1"), ("t@vendor", "x y"))
    for bad in (
        [b"A=1"],  # upper-case key
        [b"a=1,a=2"],  # a key twice
        [b"a"],  # no value
        [b"a=1 ="],  # "=" in a value
        [b"a=" + b"x" * 600],  # longer than 512
        [b",".join(b"k%d=v" % i for i in range(33))],  # more than 32 members
    ):
        assert parse_tracestate(bad) is None, bad
    assert parse_tracestate(None) is None
    assert parse_tracestate([b" , "]) is None


def test_format_traceparent() -> None:
    assert format_traceparent(int(TRACE, 16), int(PARENT, 16), True) == GOOD


def test_whose_trace_context_is_trusted() -> None:
    """trusted_proxies' networks (an IPv4-mapped IPv6 peer too) and, with "unix", a
    Unix-socket listener; an empty list trusts nobody."""
    import ipaddress

    from twistedgw.http._callers import from_trusted_proxy
    from twistedgw.wire import Connection, Exchange, Fields

    def peer(address: object) -> Exchange:
        conn = Connection(address, None, False, None)  # type: ignore[arg-type]
        return Exchange(b"GET", b"/", b"HTTP/1.1", Fields([]), None, conn, None, None)  # type: ignore[arg-type]

    settings = MutualSslConfig(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    assert from_trusted_proxy(peer(IPv4Address("TCP", "10.1.2.3", 1)), settings)
    assert not from_trusted_proxy(peer(IPv4Address("TCP", "192.0.2.1", 1)), settings)
    assert from_trusted_proxy(peer(IPv6Address("TCP", "::ffff:10.0.0.1", 1)), settings)
    unix = peer(UNIXAddress(b"/run/gw.sock"))
    assert not from_trusted_proxy(unix, settings)
    assert from_trusted_proxy(unix, MutualSslConfig(trust_unix_socket=True))
    assert not from_trusted_proxy(peer(IPv4Address("TCP", "127.0.0.1", 1)), MutualSslConfig())


# -- the [tracing] section ------------------------------------------------------


def _raw(tracing: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": [{"host": "127.0.0.1", "port": 0, "tls": False}],
        "apis": [
            {
                "name": "a",
                "version": "1",
                "context": "/a",
                "backend": "http://127.0.0.1:1",
                "mutual_ssl": "disabled",
            }
        ],
        "tracing": tracing,
    }


def _problems(tracing: dict[str, Any], file: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        configmod.parse(_raw(tracing), file)
    return info.value.problems


def test_tracing_config(tmp_path: Path) -> None:
    file = tmp_path / "gw.toml"
    cfg = configmod.parse(_raw({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}), file)
    assert cfg.tracing == TracingConfig("http://127.0.0.1:4318/v1/traces")
    assert cfg.tracing.service_name == "twistedgw" and cfg.tracing.sample_ratio == 1.0
    cfg = configmod.parse(
        _raw(
            {
                "otlp_endpoint": "https://collector.example/v1/traces",
                "service_name": "edge",
                "sample_ratio": 0,
                "headers": {"X-Api-Key": "s3cret-value"},
                "max_queue_size": 100,
            }
        ),
        file,
    )
    assert cfg.tracing is not None
    assert cfg.tracing.headers == (("X-Api-Key", "s3cret-value"),)
    assert cfg.tracing.sample_ratio == 0.0 and cfg.tracing.max_queue_size == 100
    assert "s3cret" not in repr(cfg.tracing)
    no_tracing = _raw({})
    del no_tracing["tracing"]
    assert configmod.parse(no_tracing, file).tracing is None


@pytest.mark.parametrize(
    ("tracing", "key", "words"),
    [
        ({}, "tracing.otlp_endpoint", "is required"),
        ({"otlp_endpoint": "grpc://h:4317"}, "tracing.otlp_endpoint", "http:// or https://"),
        ({"otlp_endpoint": "http://u:p@h:4318/"}, "tracing.otlp_endpoint", "user:password"),
        ({"otlp_endpoint": "http://h:99999/"}, "tracing.otlp_endpoint", "not a URL"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "sample_ratio": 1.5}, "tracing.sample_ratio",
         "from 0 to 1"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "sample_ratio": "all"},
         "tracing.sample_ratio", "expected a number"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "service_name": ""}, "tracing.service_name",
         "non-empty"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "max_queue_size": 0},
         "tracing.max_queue_size", "positive"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "headers": {"Bad Name": "x"}},
         "tracing.headers.Bad Name", "header name"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "headers": {"K": "top\nsecret"}},
         "tracing.headers.K", "printable"),
        ({"otlp_endpoint": "http://collector:4318/", "headers": {"K": "topsecret"}},
         "tracing.headers", "in clear"),
        ({"otlp_endpoint": "http://127.0.0.1:4318/", "colour": "red"}, "tracing.colour",
         "unknown key"),
    ],
)
def test_tracing_config_problems(
    tracing: dict[str, Any], key: str, words: str, tmp_path: Path
) -> None:
    file = tmp_path / "gw.toml"
    problems = _problems(tracing, file)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{file}: {key}: "), problems
    assert words in problems[0]
    assert "secret" not in problems[0]  # header values are never echoed


def test_tracing_without_the_extra_is_a_config_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def no_sdk(name: str, *args: Any) -> Any:
        return None if name.startswith("opentelemetry") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_sdk)
    problems = _problems({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}, tmp_path / "g")
    assert len(problems) == 1 and "tracing.otlp_endpoint" in problems[0]
    assert "pip install 'twistedgw[tracing]'" in problems[0]


# -- the tracer, exporting in memory ---------------------------------------------


class NowReactor:
    """What the tracer asks of a reactor, run at once on the calling thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def callFromThread(self, f: Any, *args: Any) -> None:
        with self.lock:
            f(*args)

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        raise AssertionError("not used here")


class Counts:
    def __init__(self) -> None:
        self.dropped = 0
        self.exported = 0
        self.failed = 0

    def spans_dropped(self, count: int) -> None:
        self.dropped += count

    def spans_exported(self, count: int, ok: bool) -> None:
        if ok:
            self.exported += count
        else:
            self.failed += count


def tracer_for(
    exporter: SpanExporter, ratio: float = 1.0, queue: int = 2048, counts: Counts | None = None
) -> Any:
    """A tracer whose export thread wakes only for a full batch or ``flush()``."""
    cfg = TracingConfig("http://127.0.0.1:9/v1/traces", sample_ratio=ratio, max_queue_size=queue)
    return start_tracer(
        cfg, NowReactor(), counts or Counts(), exporter=exporter, schedule_delay_millis=600_000
    )


def incoming(
    traceparent: bytes | None = None, *, trusted: bool = False, tracestate: bytes | None = None
) -> IncomingRequest:
    return IncomingRequest(
        method=b"GET",
        path=b"/a/items/7",
        secure=True,
        version=b"HTTP/1.1",
        host=b"gw.example:8443",
        client="192.0.2.7",
        trusted=trusted,
        traceparent=[traceparent] if traceparent is not None else None,
        tracestate=[tracestate] if tracestate is not None else None,
        user_agent=b"curl/8",
    )


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


@implementer(IScheme)
class WaitingScheme:
    name = "waiting_scheme"
    mode = Mode.MANDATORY

    def __init__(self) -> None:
        self.pending: list[Deferred[SchemeResult]] = []

    def authenticate(self, call: Call) -> Deferred[SchemeResult]:
        d: Deferred[SchemeResult] = Deferred()
        self.pending.append(d)
        return d


@implementer(IAuthoriser)
class WaitingAuthoriser:
    name = "waiting_authoriser"

    def __init__(self) -> None:
        self.pending: list[Deferred[Refusal | None]] = []

    def authorise(self, call: Call) -> Deferred[Refusal | None]:
        d: Deferred[Refusal | None] = Deferred()
        self.pending.append(d)
        return d


def test_spans_parents_and_attributes(pki: DevPki) -> None:
    """Server span, a child per waiting plugin and per backend attempt, all under it,
    with explicit parents: the stages fire later, from outside any span context."""
    exporter = InMemorySpanExporter()
    tracer = tracer_for(exporter)
    trace = tracer.start(incoming(GOOD))
    scheme, authoriser = WaitingScheme(), WaitingAuthoriser()
    target = pipeline([scheme, authoriser])
    issued = pki.issued["partner-app"]
    identity = ClientIdentity(
        Source.HANDSHAKE, Outcome.VERIFIED, (*issued.full_chain,), frozenset({"partner-root"})
    )
    call = fake_call(api=target.api, identity=identity)
    call.trace = trace
    outcome = target.run(call)
    assert isinstance(outcome, Deferred)
    scheme.pending[0].callback(SchemeResult(True, True, principal="apikey:app-one"))
    authoriser.pending[0].callback(None)
    backend = trace.backend(b"GET", b"http://127.0.0.1:8081/v2/items/7?secret=1")
    first = backend.headers
    backend.end(None, "refused")  # the first backend could not be reached
    backend = trace.backend(b"GET", b"http://127.0.0.1:8082/v2/items/7?secret=1")
    backend.end(200, None)
    assert call.passed_schemes == ("waiting_scheme",)
    trace.end(
        200,
        None,
        api="a:1",
        route="/a/items/{id}",
        verdict=Verdict(identity, "acme", call.principals, call.passed_schemes),
    )
    tracer.flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 5
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    assert server.name == "GET /a/items/{id}"
    # The client's span is the parent; its trace id is kept (a sampled flag from a
    # client that is not a trusted proxy decides nothing: ratio 1.0 here).
    assert server.context.trace_id == int(TRACE, 16)
    assert server.parent is not None and server.parent.span_id == int(PARENT, 16)
    assert server.parent.is_remote
    for span in spans:
        assert span.context.trace_id == int(TRACE, 16)
        if span is not server:
            assert span.parent is not None and span.parent.span_id == server.context.span_id
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/a/items/7"
    assert attributes["url.scheme"] == "https"
    assert attributes["http.route"] == "/a/items/{id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["network.protocol.version"] == "1.1"
    assert attributes["server.address"] == "gw.example" and attributes["server.port"] == 8443
    assert attributes["client.address"] == "192.0.2.7"
    assert attributes["twistedgw.api"] == "a:1"
    assert attributes["twistedgw.consumer"] == "acme"
    assert attributes["twistedgw.mtls.outcome"] == "verified"
    assert attributes["twistedgw.auth.schemes"] == ("waiting_scheme",)
    assert attributes["twistedgw.auth.principals"] == ("apikey:app-one",)
    assert attributes["twistedgw.backend.endpoint"] == "http://127.0.0.1:8082"
    assert attributes["twistedgw.backend.status_code"] == 200
    assert attributes["tls.client.hash.sha256"] == identity.leaf_sha256().upper()  # type: ignore[union-attr]
    stages = by_name([s for s in spans if s.kind is SpanKind.INTERNAL])
    assert stages["plugin waiting_scheme"].attributes["twistedgw.plugin.stage"] == "authenticate"  # type: ignore[index]
    assert stages["plugin waiting_scheme"].attributes["twistedgw.plugin.outcome"] == "passed"  # type: ignore[index]
    assert stages["plugin waiting_authoriser"].attributes["twistedgw.plugin.stage"] == "authorise"  # type: ignore[index]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert [c.attributes["server.port"] for c in clients] == [8081, 8082]  # type: ignore[index]
    failed, answered = clients
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "refused"  # type: ignore[index]
    assert answered.attributes["http.request.resend_count"] == 1  # type: ignore[index]
    assert answered.attributes["url.full"] == "http://127.0.0.1:8082/v2/items/7"  # type: ignore[index]
    assert answered.attributes["http.response.status_code"] == 200  # type: ignore[index]
    # The backend gets the client span's context, never the caller's traceparent.
    assert first[0] == (
        b"traceparent",
        format_traceparent(int(TRACE, 16), failed.context.span_id, True),
    )
    text = repr([dict(s.attributes or {}) for s in spans])
    assert "secret" not in text  # the query string is never recorded


def test_refusal_is_on_the_server_span() -> None:
    exporter = InMemorySpanExporter()
    tracer = tracer_for(exporter)
    trace = tracer.start(incoming())
    trace.end(
        401,
        None,
        api="a:1",
        verdict=Verdict(None),
        refusal=errors.invalid_credentials("the API key is not valid"),
    )
    tracer.flush()
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["twistedgw.refusal.code"] == "900901"
    assert attributes["twistedgw.refusal.message"] == "Invalid Credentials"
    assert attributes["twistedgw.refusal.reason"] == "the API key is not valid"
    assert attributes["http.response.status_code"] == 401
    assert span.status.status_code is not StatusCode.ERROR  # a 4xx is the client's error
    assert span.parent is None  # no traceparent: the gateway starts the trace


def test_waiting_stage_that_refuses_or_fails() -> None:
    exporter = InMemorySpanExporter()
    tracer = tracer_for(exporter)
    trace = tracer.start(incoming())
    authoriser = WaitingAuthoriser()
    target = pipeline([authoriser])
    call = fake_call(api=target.api)
    call.trace = trace
    target.run(call)
    authoriser.pending[0].callback(Refusal(errors.forbidden("no")))
    call2 = fake_call(api=target.api)
    call2.trace = trace
    target.run(call2)
    authoriser.pending[1].errback(RuntimeError("boom"))
    trace.end(403, None)
    tracer.flush()
    outcomes = [
        s.attributes["twistedgw.plugin.outcome"]  # type: ignore[index]
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.INTERNAL
    ]
    assert outcomes == ["refused", "failed"]


def test_sampling_trusted_proxy_vs_other_clients() -> None:
    """Ratio 0: the gateway samples nothing of its own, yet a trusted proxy's sampled
    flag is followed; an untrusted client's sampled flag is not, but its trace id is kept."""
    exporter = InMemorySpanExporter()
    tracer = tracer_for(exporter, ratio=0.0)
    trusted = tracer.start(incoming(GOOD, trusted=True, tracestate=b"vendor=abc"))
    trusted_backend = trusted.backend(b"GET", b"http://127.0.0.1:1/x")
    trusted_backend.end(200, None)
    trusted.end(200, None)
    untrusted = tracer.start(incoming(GOOD, trusted=False, tracestate=b"vendor=xyz"))
    untrusted_backend = untrusted.backend(b"GET", b"http://127.0.0.1:1/x")
    untrusted_backend.end(200, None)
    untrusted.end(200, None)
    root = tracer.start(incoming())
    root.end(200, None)
    unsampled_parent = tracer_for(exporter, ratio=1.0).start(
        incoming(GOOD[:-2] + b"00", trusted=True)
    )
    unsampled_parent.end(200, None)
    tracer.flush()
    spans = exporter.get_finished_spans()
    assert {s.kind for s in spans} == {SpanKind.SERVER, SpanKind.CLIENT}
    assert len(spans) == 2  # only the trusted proxy's trace
    assert untrusted.trace_id == TRACE and trusted.trace_id == TRACE
    # What the backends were told: sampled for the trusted one, not for the other.
    assert trusted_backend.headers[0][1].endswith(b"-01")
    assert untrusted_backend.headers[0][1].endswith(b"-00")
    assert untrusted_backend.headers[0][1].startswith(f"00-{TRACE}-".encode())
    assert dict(trusted_backend.headers)[b"tracestate"] == b"vendor=abc"
    assert dict(untrusted_backend.headers)[b"tracestate"] == b"vendor=xyz"
    assert root.trace_id != TRACE and len(root.trace_id) == 32


def test_untrusted_sampling_is_the_gateways_draw() -> None:
    """At ratio 0.5 an untrusted client's requests are sampled about half the time,
    whatever its flag, and with a trace id it chose."""
    exporter = InMemorySpanExporter()
    tracer = tracer_for(exporter, ratio=0.5)
    decisions = []
    for _ in range(400):
        trace = tracer.start(incoming(GOOD, trusted=False))
        decisions.append(trace.backend(b"GET", b"http://h/").headers[0][1].endswith(b"-01"))
    assert 100 < sum(decisions) < 300


class BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_full_queue_drops_and_counts() -> None:
    """A collector that does not answer: the export thread waits, at most
    ``max_queue_size`` spans wait behind it, the rest are dropped and counted."""
    exporter = BlockingExporter()
    counts = Counts()
    tracer = tracer_for(exporter, queue=4, counts=counts)
    for _ in range(4):  # a full batch: the export thread takes it and blocks
        tracer.start(incoming()).end(200, None)
    assert exporter.entered.wait(10)
    for _ in range(16):
        tracer.start(incoming()).end(200, None)
    assert counts.dropped == 12
    exporter.release.set()
    tracer.flush()
    assert len(exporter.spans) == 8
    assert counts.exported == 8 and counts.failed == 0


def test_failed_exports_are_counted() -> None:
    class Failing(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.FAILURE

    counts = Counts()
    tracer = tracer_for(Failing(), counts=counts)
    tracer.start(incoming()).end(200, None)
    tracer.flush()
    assert counts.failed == 1 and counts.exported == 0


def test_fake_api_has_no_tracing_by_default() -> None:
    assert fake_call(api=fake_api()).trace is None


def test_worker_span_counts_reach_the_parents_metrics() -> None:
    """With workers, each worker's tracer reports to the parent over the event pipe;
    the parent's metrics (the only registry) sum them."""
    import json

    from prometheus_client import generate_latest
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from twistedgw.app._observe import Metrics
    from twistedgw.app._workers import Supervisor, _ParentLink

    clock = Clock()
    link = _ParentLink(clock)
    link.makeConnection(StringTransport())
    link.spans_dropped(3)
    link.spans_exported(5, True)
    link.spans_exported(2, False)
    link.spans_dropped(1)
    clock.advance(0)
    message = json.loads(link.transport.value())  # type: ignore[attr-defined]
    assert message == {"td": 4, "tx": [5, 2]}

    class Parent:
        metrics = Metrics(lambda: None)

    Supervisor.event(Parent(), None, message)  # type: ignore[arg-type]
    text = generate_latest(Parent.metrics.registry).decode()
    assert "twistedgw_tracing_spans_dropped_total 4.0" in text
    assert 'twistedgw_tracing_spans_exported_total{result="success"} 5.0' in text
    assert 'twistedgw_tracing_spans_exported_total{result="failure"} 2.0' in text


def test_the_gateways_span_attributes_are_documented() -> None:
    """Every twistedgw.* attribute a span can carry is in the tracing page, and the page
    names no other; the tracer's source sets no other."""
    import re

    from tests import docpages
    from twistedgw.tracing._otel import GATEWAY_ATTRIBUTES

    page = docpages.page("how-to/tracing.md")
    documented = set(re.findall(r"`(twistedgw\.[a-z_.]*[a-z_])`", page))
    assert documented == GATEWAY_ATTRIBUTES
    source = (Path(__file__).parent.parent / "twistedgw/tracing/_otel.py").read_text()
    used = set(re.findall(r'"(twistedgw\.[a-z_.]+)"', source))
    assert used == GATEWAY_ATTRIBUTES
