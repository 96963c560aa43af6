"""[tracing] through real processes: a gateway as users start it, a real backend that
records what it receives, and an OTLP/HTTP receiver (tests/otlp_receiver.py) decoding
what the gateway exports.

In-memory tests of the parsers, the config section and the tracer are in
tests/test_tracing_unit.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.h2client import H2Client
from tests.harness import (
    REPO,
    GatewayProcess,
    connect,
    env,
    free_port,
    gateway_config,
    send,
    start_gateway,
    table,
)
from tests.otlp_receiver import (
    CLIENT,
    INTERNAL,
    SERVER,
    Receiver,
    otlp_receiver,
    refused_collector,
    silent_collector,
)
from tests.recorder import Recorder, recording_backend
from twistedgw.pipeline import hash_password
from twistedgw.testing.devpki import DevPki

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
PASSWORD = "correct horse battery"


def traceparent(trace: str, sampled: bool) -> str:
    return f"00-{trace}-{PARENT}-{'01' if sampled else '00'}"


def received(recorder: Recorder, path: str, name: str) -> list[str]:
    """The values of header ``name`` the backend got with the request for ``path``."""
    with recorder.lock:
        seen = [s for s in recorder.seen if s.path == path]
    assert len(seen) == 1, [s.path for s in recorder.seen]
    return [v for k, v in seen[0].headers if k.lower() == name]


def access_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def start(
    directory: Path, text: str, port: int, importtime: bool = False
) -> GatewayProcess:
    argv = None
    if importtime:  # every module the process imports, written to its log
        argv = [sys.executable, "-X", "importtime", "-m", "twistedgw", "run",
                "--config", str(directory / "gateway.toml")]
    return start_gateway(directory, text, port, argv=argv)


@pytest.fixture
def collector() -> Iterator[Receiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with recording_backend() as recorder:
        yield recorder


def test_spans_of_a_real_gateway(
    tmp_path: Path, pki: DevPki, collector: Receiver, recorder: Recorder
) -> None:
    """A forwarded request, a refused one and one whose authentication waits on a
    Deferred (HTTP Basic: the password is checked off the reactor thread): their spans,
    links and attributes as the collector decodes them, the traceparent the backend
    got, and the access log's trace_id."""
    port = free_port()
    log = tmp_path / "access.jsonl"
    text = gateway_config(
        pki,
        [
            {"name": "shop", "version": "1", "context": "/shop", "backend": recorder.url,
             "mutual_ssl": "mandatory", "aliases": ["partner-root"]},
            {"name": "basic", "version": "1", "context": "/basic", "backend": recorder.url,
             "basic_auth": "mandatory"},
        ],
        port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "http2": True}],
        extra=table("basic_users", {"name": "alice", "password_hash": hash_password(PASSWORD)},
                    array=True)
        + table("access_log", {"path": str(log)})
        + table("tracing", {"otlp_endpoint": collector.url, "service_name": "edge-test",
                            "headers": {"X-Collector-Key": "k3y-for-the-collector"}}),
    )
    gw = start(tmp_path / "gw", text, port, importtime=True)
    try:
        # A client's trace context, not sampled: a direct client decides nothing (its
        # trace id is kept; ratio 1.0 samples it), and its copy never reaches the backend.
        conn = connect(port, pki, "partner-app")
        ok = send(conn, "/shop/items/7?token=SECRET-QUERY",
                  headers={"traceparent": traceparent(TRACE, False), "tracestate": "v=1"})
        assert ok.status == 200
        refused = send(connect(port, pki), "/shop/items/8")
        assert refused.status == 401
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        waited = send(connect(port, pki), "/basic/x", headers={"Authorization": f"Basic {auth}"})
        assert waited.status == 200
        over_h2 = H2Client(port, pki, "partner-app")
        try:
            assert over_h2.get("/shop/h2").status == 200
        finally:
            over_h2.close()

        # What the backend received: the same trace, its parent the gateway's client span.
        (sent,) = received(recorder, "/items/7?token=SECRET-QUERY", "traceparent")
        version, trace_id, parent_id, flags = sent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "01")
        assert parent_id != PARENT
        assert received(recorder, "/items/7?token=SECRET-QUERY", "tracestate") == ["v=1"]

        records = {line["path"]: line for line in access_lines(log)}
        assert records["/shop/items/7"]["trace_id"] == TRACE
        refused_trace = str(records["/shop/items/8"]["trace_id"])
        waited_trace = str(records["/basic/x"]["trace_id"])
        h2_trace = str(records["/shop/h2"]["trace_id"])
        assert len(refused_trace) == 32 and refused_trace != waited_trace

        spans = collector.wait_for(
            lambda got: {s.trace_id for s in got} >= {TRACE, refused_trace, waited_trace, h2_trace}
            and len(got) >= 8
        )
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
    assert gw.proc.returncode == 0

    # The forwarded request: a server span, child of the client's span, and a client
    # span under it whose id the backend got as its parent.
    ok_spans = {s.kind: s for s in collector.trace(TRACE)}
    assert set(ok_spans) == {SERVER, CLIENT}
    server, client = ok_spans[SERVER], ok_spans[CLIENT]
    assert server.parent_id == PARENT
    assert client.parent_id == server.span_id
    assert client.span_id == parent_id
    assert server.name == "GET /shop/*" and client.name == "GET"
    assert server.service == "edge-test"
    a = server.attributes
    assert a["http.request.method"] == "GET"
    assert a["url.path"] == "/shop/items/7" and a["url.scheme"] == "https"
    assert a["http.route"] == "/shop/*"
    assert a["http.response.status_code"] == 200
    assert a["network.protocol.version"] == "1.1"
    assert a["server.address"] == "localhost" and a["server.port"] == port
    assert a["client.address"] == "127.0.0.1"
    assert a["twistedgw.api"] == "shop:1"
    assert a["twistedgw.mtls.outcome"] == "verified"
    assert a["twistedgw.auth.schemes"] == ("mutual_ssl",)
    assert a["twistedgw.backend.endpoint"] == recorder.url
    assert a["twistedgw.backend.status_code"] == 200
    assert len(str(a["tls.client.hash.sha256"])) == 64
    c = client.attributes
    assert c["url.full"] == f"{recorder.url}/items/7"
    assert c["http.response.status_code"] == 200
    assert c["server.port"] == int(recorder.url.rsplit(":", 1)[1])

    # The refusal: the reason and the WSO2 error code the client got, no backend span.
    (refusal,) = collector.trace(refused_trace)
    body = refused.json()
    assert refusal.kind == SERVER and refusal.parent_id == ""
    assert refusal.attributes["http.response.status_code"] == 401
    assert refusal.attributes["twistedgw.refusal.code"] == body["code"]
    assert refusal.attributes["twistedgw.refusal.reason"] == body["description"]
    assert refusal.attributes["twistedgw.mtls.outcome"] == "none"

    # A scheme that answered with a Deferred has its own span under the server span.
    waited_spans = collector.trace(waited_trace)
    by_kind = {s.kind: s for s in waited_spans}
    assert set(by_kind) == {SERVER, INTERNAL, CLIENT}
    stage = by_kind[INTERNAL]
    assert stage.parent_id == by_kind[SERVER].span_id == by_kind[CLIENT].parent_id
    assert stage.attributes["twistedgw.plugin.stage"] == "authenticate"
    assert stage.attributes["twistedgw.plugin.outcome"] == "passed"
    assert by_kind[SERVER].attributes["twistedgw.auth.principals"] == ("basic:alice",)

    # HTTP/2 streams are traced alike.
    h2_server = next(s for s in collector.trace(h2_trace) if s.kind == SERVER)
    assert h2_server.attributes["network.protocol.version"] == "2"
    assert h2_server.attributes["url.path"] == "/shop/h2"

    # Never recorded: the query string, credentials. The exporter's own headers went to
    # the collector and nowhere else (not in the log).
    everything = repr([s.attributes for s in spans])
    assert "SECRET-QUERY" not in everything and auth not in everything
    assert all(h.get("x-collector-key") == "k3y-for-the-collector" for h in collector.headers)
    output = gw.output()
    assert "k3y-for-the-collector" not in output
    assert "opentelemetry" in output  # -X importtime: tracing on loads the SDK


def test_sampling_follows_trusted_proxies_only(
    tmp_path: Path, pki: DevPki, collector: Receiver, recorder: Recorder
) -> None:
    """sample_ratio 0: the gateway samples nothing of its own; a trusted proxy's sampled
    context is followed (parent-based), any other client's decision is not, though its
    trace id is kept and passed on."""
    port = free_port()
    text = gateway_config(
        pki,
        [{"name": "api", "version": "1", "context": "/api", "backend": recorder.url}],
        port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
        extra=table("mutual_ssl", {"trusted_proxies": ["127.0.0.1/32"]})
        + table("tracing", {"otlp_endpoint": collector.url, "sample_ratio": 0.0}),
    )
    trusted_trace, untrusted_trace, unsampled_trace = (
        f"{n:032x}" for n in (0x1111, 0x2222, 0x3333)
    )

    def get(path: str, source: str, context: str | None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                          source_address=(source, 0))
        headers = {"traceparent": context} if context else {}
        assert send(conn, path, headers=headers).status == 200
        conn.close()

    gw = start(tmp_path / "gw", text, port)
    try:
        get("/api/untrusted", "127.0.0.2", traceparent(untrusted_trace, True))
        get("/api/unsampled", "127.0.0.1", traceparent(unsampled_trace, False))
        get("/api/none", "127.0.0.2", None)
        get("/api/trusted", "127.0.0.1", traceparent(trusted_trace, True))
        # Spans leave in the order they ended: once the last request's are in, any
        # earlier request's would be too.
        spans = collector.wait_for(lambda got: len([s for s in got if s.kind == CLIENT]) >= 1)
        time.sleep(1.5)  # and one more export period, for anything still on its way
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
    spans = list(collector.spans)
    assert {s.trace_id for s in spans} == {trusted_trace}
    server = next(s for s in spans if s.kind == SERVER)
    assert server.parent_id == PARENT
    # Every backend got the trace id it was sent, with the gateway's decision.
    for path, trace, flags in (  # the backend sees the path after the API's context
        ("/trusted", trusted_trace, "01"),
        ("/untrusted", untrusted_trace, "00"),
        ("/unsampled", unsampled_trace, "00"),
    ):
        (value,) = received(recorder, path, "traceparent")
        assert value.startswith(f"00-{trace}-") and value.endswith(f"-{flags}"), (path, value)
    (value,) = received(recorder, "/none", "traceparent")
    assert value.endswith("-00")


def _metric(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_collector_never_delays_a_request(
    kind: str, tmp_path: Path, pki: DevPki, recorder: Recorder
) -> None:
    """A collector that refuses connections, or accepts and never answers (the exporter
    waits up to its 10-second timeout): requests keep flowing, none waits on the export
    thread, spans beyond max_queue_size are dropped and counted, and a graceful stop
    does not wait for the collector."""
    with silent_collector() as silent:
        url = refused_collector() if kind == "refused" else silent
        port, admin = free_port(), free_port()
        text = gateway_config(
            pki,
            [{"name": "api", "version": "1", "context": "/api", "backend": recorder.url}],
            port=port,
            listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
            extra=table("admin", {"port": admin})
            + table("tracing", {"otlp_endpoint": url, "max_queue_size": 16}),
        )
        gw = start(tmp_path / "gw", text, port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            slowest, count = 0.0, 0
            until = time.monotonic() + 3.0  # past the first export (after 1 s)
            while time.monotonic() < until:
                began = time.monotonic()
                assert send(conn, f"/api/{count}").status == 200
                slowest = max(slowest, time.monotonic() - began)
                count += 1
            # The exporter holds each attempt for up to 10 s; a request that waited on it
            # would take that long. (A bound, not a benchmark: bench/ measures cost.)
            assert slowest < 2.5, slowest
            assert count > 16
            assert _metric(admin, "twistedgw_tracing_spans_dropped_total") > 0
            assert _metric(admin, "twistedgw_tracing_spans_exported_total") == 0
            began = time.monotonic()
            code = gw.stop(timeout=20)
            stopped_in = time.monotonic() - began
        except BaseException:
            print(gw.output())
            raise
        finally:
            gw.stop()
    assert code == 0, gw.output()
    assert stopped_in < 8, stopped_in  # the flush at stop is bounded (2 s), not 10 s


def test_no_opentelemetry_without_tracing(
    tmp_path: Path, pki: DevPki, recorder: Recorder
) -> None:
    """A gateway without [tracing] never imports OpenTelemetry, not even while serving
    (-X importtime lists every module the process imports; the first test here shows
    the same listing naming it when tracing is on)."""
    port = free_port()
    text = gateway_config(
        pki,
        [{"name": "api", "version": "1", "context": "/api", "backend": recorder.url}],
        port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False}],
    )
    gw = start(tmp_path / "gw", text, port, importtime=True)
    try:
        conn = connect(port)
        response = send(conn, "/api/x", headers={"traceparent": traceparent(TRACE, True)})
        assert response.status == 200
    finally:
        gw.stop()
    output = gw.output()
    assert "import time:" in output and "twistedgw.http._resource" in output
    assert "opentelemetry" not in output
    # Tracing off: the client's traceparent is an ordinary header, passed on as sent.
    assert received(recorder, "/x", "traceparent") == [traceparent(TRACE, True)]


def test_tracing_without_the_extra_is_a_check_error(tmp_path: Path, pki: DevPki) -> None:
    """Where twistedgw[tracing] is not installed (here: an opentelemetry package that
    cannot be imported shadows the real one), check says what to install."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        gateway_config(
            pki,
            [{"name": "api", "version": "1", "context": "/api",
              "backend": "http://127.0.0.1:9"}],
            port=free_port(),
            extra=table("tracing", {"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"}),
        )
    )
    environment = env()
    environment["PYTHONPATH"] = f"{tmp_path / 'shadow'}:{REPO}"
    done = subprocess.run(
        [sys.executable, "-m", "twistedgw", "check", "--config", str(config)],
        capture_output=True, text=True, env=environment, timeout=60,
    )
    assert done.returncode == 2, done
    assert f"{config}: tracing.otlp_endpoint: tracing needs" in done.stderr
    assert "pip install 'twistedgw[tracing]'" in done.stderr
    assert "Traceback" not in done.stderr
