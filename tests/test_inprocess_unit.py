"""In-process resource backends in memory (#28 embedding): the twisted.web request the
resource gets, how its answer reaches the responder (framing, transforms, failures, a
client that leaves), loading ``resource:`` specs, and the config and runtime rules."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.web import resource, server

from twistedgw import config as configmod
from twistedgw.app import _runtime as runtime
from twistedgw.app import make_service
from twistedgw.config import ConfigError
from twistedgw.errors import GatewayError
from twistedgw.pipeline import Shared
from twistedgw.upstream import ForwardResult, ResourceBackend, ResourceError, load_resource
from twistedgw.wire import Connection, Exchange, Fields

H = list[tuple[bytes, bytes]]


class Responder:
    def __init__(self) -> None:
        self.started = self.finished = self.gone = self.aborted = False
        self.head: tuple[int, H, int | None] | None = None
        self.body = b""
        self.producer: Any = None
        self.on_gone: Any = None

    def start_response(self, status: int, headers: H, length: int | None,
                       reason: bytes | None = None) -> None:
        self.started = True
        self.head = (status, headers, length)

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = self.gone = True

    def register_producer(self, producer: Any) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def when_gone(self, callback: Any) -> None:
        self.on_gone = callback


def exchange(method: bytes = b"GET", target: bytes = b"/app/x", *, headers: H = (),  # type: ignore[assignment]
             secure: bool = True, client_ip: str | None = None) -> Exchange:
    peer = IPv4Address("TCP", "10.0.0.1", 50000)
    local = IPv4Address("TCP", "127.0.0.1", 8443)
    conn = Connection(peer, local, secure, None)
    ex = Exchange(method, target, b"HTTP/1.1", Fields(list(headers)), b"gw.example:8443", conn,
                  Responder(), None)  # type: ignore[arg-type]
    if client_ip is not None:
        ex.client_ip = client_ip
    return ex


class Seen(resource.Resource):
    """Answers JSON of what it saw."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return json.dumps({
            "prepath": [p.decode() for p in request.prepath],
            "postpath": [p.decode() for p in request.postpath],
            "uri": request.uri.decode(), "secure": request.isSecure(),
            "client": request.getClientAddress().host,
            "host": request.getHost().port, "hostname": request.getRequestHostname().decode(),
            "headers": [[n.decode(), v.decode()] for n, vs in
                        request.requestHeaders.getAllRawHeaders() for v in vs],
            "body": request.content.read().decode(), "args": {
                k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
        }).encode()


class Text(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return self.body


def run(res: Any, ex: Exchange, target: bytes = b"resource:m:x/x", context: str = "/app",
        **kw: Any) -> list[ForwardResult]:
    done: list[ForwardResult] = []
    ResourceBackend(res, context, b"resource:m:x").forward(ex, target, on_done=done.append, **kw)
    return done


def answer(ex: Exchange) -> tuple[int, dict[str, str], bytes]:
    r: Any = ex.responder
    status, headers, length = r.head
    assert length is None or length == len(r.body) or ex.method == b"HEAD"
    return status, {n.decode().lower(): v.decode() for n, v in headers}, r.body


def test_the_request_a_resource_gets() -> None:
    ex = exchange(b"POST", headers=[(b"X-Client-Cert-Subject", b"CN=forged"),
                                    (b"Apikey", b"secret"), (b"Connection", b"close"),
                                    (b"Cookie", b"a=1"), (b"Content-Length", b"5")],
                  client_ip="203.0.113.9")
    body = BytesIO(b"hello")
    done = run(Seen(), ex, b"resource:m:x/a/b%20c?q=1&q=2&e=", body=body, body_size=5,
               add_headers=[(b"X-Client-Cert-Subject", b"CN=partner")],
               remove_headers={b"apikey"})
    status, headers, raw = answer(ex)
    seen = json.loads(raw)
    assert (status, done) == (200, [ForwardResult(200, len(raw), None)])
    assert headers["server"] == "twistedgw" and "date" in headers
    assert seen["prepath"] == ["app"] and seen["postpath"] == ["a", "b c"]
    assert seen["uri"] == "/app/a/b%20c?q=1&q=2&e=" and seen["args"] == {"q": ["1", "2"],
                                                                       "e": [""]}
    assert seen["secure"] and seen["client"] == "203.0.113.9" and seen["host"] == 8443
    assert seen["hostname"] == "gw.example" and seen["body"] == "hello"
    names = {n.lower(): v for n, v in seen["headers"]}
    # What a network backend would get: the gateway's identity header, not the client's;
    # the removed key gone; hop-by-hop gone; X-Forwarded-*; its own Content-Length.
    assert names["x-client-cert-subject"] == "CN=partner" and "apikey" not in names
    assert "connection" not in names and names["cookie"] == "a=1"
    assert names["x-forwarded-for"] == "203.0.113.9" and names["x-forwarded-proto"] == "https"
    assert names["x-forwarded-host"] == "gw.example:8443" and names["host"] == "gw.example:8443"
    assert names["content-length"] == "5"
    # The API at "/": everything is the postpath.
    ex = exchange()
    run(Seen(), ex, b"resource:m:x/", context="/")
    assert json.loads(answer(ex)[2])["prepath"] == []


def test_head_and_not_done_yet_and_transforms() -> None:
    ex = exchange(b"HEAD")
    run(Text(b"twelve bytes"), ex)
    status, headers, raw = answer(ex)
    assert (status, headers["content-length"] if "content-length" in headers else None,
            raw) == (200, None, b"")
    assert ex.responder.head[2] == 12  # type: ignore[attr-defined]

    held: list[Any] = []

    class Later(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            held.append(request)
            return server.NOT_DONE_YET

    ex = exchange()
    done = run(Later(), ex)
    assert not ex.responder.started and not done  # type: ignore[attr-defined]
    held[0].write(b"part 1, ")
    held[0].write(b"part 2")
    held[0].finish()
    assert answer(ex)[2] == b"part 1, part 2" and done == [ForwardResult(200, 14, None)]
    assert ex.responder.head[2] is None  # type: ignore[attr-defined]  # no length: chunked

    def transform(status: int, headers: H) -> GatewayError | None:
        headers.append((b"X-Added", b"1"))
        return None

    ex = exchange()
    run(Text(b"ok"), ex, on_answer=transform)
    assert answer(ex)[1]["x-added"] == "1"

    def failing(status: int, headers: H) -> GatewayError | None:
        return GatewayError(500, "500", "Internal Server Error", "plugin 'x' failed")

    ex = exchange()
    done = run(Text(b"ok"), ex, on_answer=failing)
    status, headers, raw = answer(ex)
    assert status == 500 and json.loads(raw)["description"] == "plugin 'x' failed"
    assert done == [ForwardResult(500, len(raw), "other")]


def test_failures_before_and_after_the_answer_started() -> None:
    class Boom(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            raise RuntimeError("do not show this")

    ex = exchange()
    done = run(Boom(), ex)
    status, headers, raw = answer(ex)
    assert status == 500 and json.loads(raw)["code"] == "101500" and b"show" not in raw
    assert headers["content-type"] == "application/json" and done[0].error_kind == "other"

    class Liar(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            request.setHeader(b"Content-Length", b"3")
            request.write(b"too long")
            request.finish()
            return server.NOT_DONE_YET

    ex = exchange()
    done = run(Liar(), ex)
    assert ex.responder.body == b"too" and ex.responder.aborted  # type: ignore[attr-defined]
    assert done == [ForwardResult(200, 3, "other")]

    class Short(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            request.setHeader(b"Content-Length", b"10")
            request.write(b"abc")
            request.finish()
            return server.NOT_DONE_YET

    ex = exchange()
    assert run(Short(), ex)[0].error_kind == "other"
    assert ex.responder.aborted  # type: ignore[attr-defined]


def test_a_client_that_leaves_is_told_to_the_resource() -> None:
    events: list[str] = []

    class Producer:
        def pauseProducing(self) -> None:
            events.append("pause")

        def resumeProducing(self) -> None:
            events.append("resume")

        def stopProducing(self) -> None:
            events.append("stop")

    class Hold(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            request.registerProducer(Producer(), True)
            request.write(b"first")
            request.notifyFinish().addErrback(lambda f: events.append("left"))
            return server.NOT_DONE_YET

    ex = exchange()
    done = run(Hold(), ex)
    r: Any = ex.responder
    assert isinstance(r.producer, Producer)  # the client's connection paces it
    r.on_gone()
    assert events == ["stop", "left"] and done == [ForwardResult(200, 5, "client_gone")]


def test_loading_resource_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_app.py").write_text("raise ValueError('no database')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_resource("tests.embedapp:root"), resource.Resource)
    klein = load_resource("tests.embedapp:app")  # a Klein app: its resource()
    assert type(klein).__name__ == "KleinResource"
    with pytest.raises(ResourceError, match="importing 'broken_app' failed: ValueError: no "
                                            "database"):
        load_resource("broken_app:root")
    with pytest.raises(ResourceError, match=r"has no attribute 'root\.child'"):
        load_resource("tests.embedapp:root.child")


BASE = """
[[listeners]]
port = 1
tls = false
"""


def test_config_and_runtime_rules(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"

    def write(*apis: str, extra: str = "") -> Path:
        path.write_text(extra + BASE + "".join(f"[[apis]]\n{a}\n" for a in apis))
        return path

    with pytest.raises(ConfigError) as e:
        configmod.load(write('name = "a"\ncontext = "/a"\nbackends = ["resource:m:x", '
                             '"http://b:1"]\n'))
    assert "(a resource: backend cannot be one of several)" in e.value.problems[0]
    bare = write('name = "orders"\ncontext = "/o"\nbackend = "resource:"\n')
    cfg = configmod.load(bare)
    assert cfg.apis[0].in_process and cfg.apis[0].backend == "resource:"
    # check (no service) warns; the service refuses; supplied, it serves.
    assert any("'resource:' is supplied by the application" in w
               for w in runtime.build(cfg).warnings)
    with pytest.raises(ConfigError, match=r"apis\[0\]\.backend: 'resource:' is supplied"):
        runtime.build(cfg, shared=Shared(connect=True))
    built = runtime.build(cfg, shared=Shared(connect=True, resources={"orders": Seen()}))
    assert built.served is not None and len(built.served.resources) == 1
    with pytest.raises(ConfigError, match="names 'ordres', but no API of that name"):
        runtime.build(cfg, shared=Shared(connect=True, resources={"orders": Seen(),
                                                                  "ordres": Seen()}))
    with pytest.raises(ConfigError, match="resources supplied in Python need workers = 1"):
        make_service(write('name = "orders"\ncontext = "/o"\nbackend = "resource:"\n',
                           extra="workers = 2\n"))
