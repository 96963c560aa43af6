"""The response cache in memory (#25 item 8): what may be kept and for how long, the keys
(one caller never sees another's answer), the bounds, hits and misses through the hook,
and the settings as the readers take them ([apis.response_cache], x-wso2-response-cache)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.configtext import SHOP, load, problems
from twistedgw.config import ApiCache, ConfigError, ResponseCacheConfig
from twistedgw.http import _cache as cache
from twistedgw.upstream import ForwardResult
from twistedgw.wire import Fields

H = list[tuple[bytes, bytes]]


def h(*pairs: tuple[str, str]) -> H:
    return [(n.encode(), v.encode()) for n, v in pairs]


def test_lifetime_follows_cache_control_capped_by_the_timeout() -> None:
    assert cache.lifetime(h(), 300) == 300  # nothing said: the API's timeout (API Manager's way)
    assert cache.lifetime(h(("Cache-Control", "max-age=60")), 300) == 60
    assert cache.lifetime(h(("Cache-Control", "max-age=6000")), 300) == 300
    assert cache.lifetime(h(("Cache-Control", 'public, max-age=600, S-MaxAge="30"')), 300) == 30
    for never in ("no-store", "private", "no-cache", 'private="x", max-age=60', "max-age=0",
                  "max-age=soon", "max-age=-1"):
        assert cache.lifetime(h(("Cache-Control", never)), 300) is None, never
    assert cache.lifetime(h(("Vary", "Accept, *")), 300) is None
    assert cache.lifetime(h(("Set-Cookie", "a=1")), 300) is None
    dated = ("Date", "Sun, 06 Dec 2026 10:00:00 GMT")
    assert cache.lifetime(h(dated, ("Expires", "Sun, 06 Dec 2026 10:01:00 GMT")), 300) == 60
    assert cache.lifetime(h(dated, ("Expires", "0")), 300) is None  # invalid: already stale
    assert cache.lifetime(h(dated, ("Expires", "Sun, 06 Dec 2026 09:00:00 GMT")), 300) is None
    assert cache.vary_names(h(("Vary", "Accept-Encoding, accept"), ("vary", "X-A"))) == (
        b"accept", b"accept-encoding", b"x-a")
    assert cache.initial_age(h(("Age", "12"))) == 12 and cache.initial_age(h(("Age", "x"))) == 0


def test_requests_that_pass_by() -> None:
    assert cache.request_cacheable(b"GET", Fields([]), 0)
    assert cache.request_cacheable(b"HEAD", Fields([]), 0)
    assert not cache.request_cacheable(b"POST", Fields([]), 0)
    assert not cache.request_cacheable(b"GET", Fields([]), 10)  # a GET with a body
    assert not cache.request_cacheable(b"GET", Fields([(b"Range", b"bytes=0-1")]), 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(body: bytes, clock: Clock, ttl: float = 60, size: int | None = None) -> cache.Stored:
    return cache.Stored((), body, clock.now, clock.now + ttl, 0,
                        size if size is not None else len(body))


def test_store_bounds_lru_and_expiry() -> None:
    clock = Clock()
    store = cache.ResponseStore(ResponseCacheConfig(max_entries=2, max_bytes=100,
                                                    max_entry_bytes=60), clock)
    nothing = Fields([])
    assert store.put(("a",), (), nothing, stored(b"a", clock, size=10))
    assert store.put(("b",), (), nothing, stored(b"b", clock, size=10))
    assert store.get(("a",), nothing) is not None  # a is now the most recently used
    assert store.put(("c",), (), nothing, stored(b"c", clock, size=10))
    assert store.get(("b",), nothing) is None and len(store) == 2  # b went first
    assert not store.put(("d",), (), nothing, stored(b"d", clock, size=61))  # over one entry
    assert store.put(("e",), (), nothing, stored(b"e", clock, size=55))
    assert store.put(("f",), (), nothing, stored(b"f", clock, size=55))
    assert store.bytes <= 100 and store.get(("e",), nothing) is None  # bytes bound
    clock.now += 61
    assert store.get(("f",), nothing) is None and len(store) == 0 and store.bytes == 0


def test_store_keeps_variants_by_vary_headers() -> None:
    clock = Clock()
    store = cache.ResponseStore(ResponseCacheConfig(), clock)
    json_ = Fields([(b"Accept", b"application/json")])
    xml = Fields([(b"accept", b"text/xml")])
    store.put(("p",), (b"accept",), json_, stored(b"{}", clock))
    assert store.get(("p",), xml) is None
    store.put(("p",), (b"accept",), xml, stored(b"<x/>", clock))
    got_json, got_xml = store.get(("p",), json_), store.get(("p",), xml)
    assert got_json is not None and got_json.body == b"{}"
    assert got_xml is not None and got_xml.body == b"<x/>"
    # The backend now varies on another header: the old variants go.
    tenant = Fields([(b"X-Tenant", b"acme")])
    store.put(("p",), (b"x-tenant",), tenant, stored(b"t", clock))
    assert len(store) == 1 and store.get(("p",), xml) is None
    found = store.get(("p",), tenant)
    assert found is not None and found.body == b"t"


def exchange(**kw: Any) -> Any:
    identity = SimpleNamespace(verified=True, leaf=object(), leaf_sha256=lambda: kw.get(
        "cert", "aa"))
    call = SimpleNamespace(consumer=kw.get("consumer"), principals=kw.get("principals", ()),
                           identity=identity, sandbox=kw.get("sandbox", False))
    fields = Fields([(n.encode(), v.encode()) for n, v in kw.get("headers", [])])
    return SimpleNamespace(
        call=call, fields=fields, method=kw.get("method", b"GET"), api=kw.get("api", "api"),
        host=b"gw.example", secure=True, cache=None,
        routed=SimpleNamespace(path=b"/shop/items", query=kw.get("query")),
        responder=Responder(),
    )


def test_caller_key_tells_callers_apart() -> None:
    def key(**kw: Any) -> tuple[Any, ...]:
        return cache.caller_key(exchange(**kw), (), ())

    assert key(consumer="acme") != key(consumer="globex")
    assert key(cert="aa") != key(cert="bb")
    assert key(principals=("apikey:one",)) != key(principals=("apikey:two",))
    assert key(headers=[("Cookie", "s=1")]) != key(headers=[("Cookie", "s=2")])
    assert key(headers=[("Authorization", "Bearer x")]) != key()
    assert key(sandbox=True) != key()  # the sandbox endpoint answers it
    # What the backend does not receive is not the caller's: a removed Authorization.
    ex = exchange(headers=[("Authorization", "Bearer x")])
    assert cache.caller_key(ex, (), {b"authorization"}) == key()
    # ... and what the gateway sets instead is.
    assert cache.caller_key(ex, [(b"Authorization", b"Basic b")], ()) != key()


def test_caller_key_of_a_connection_verdict() -> None:
    """A request judged by its connection's verdict (no Call) keys its caller as the
    Call did; two callers' verdicts never share a key."""
    def by_verdict(**kw: Any) -> tuple[Any, ...]:
        ex = exchange(**kw)
        ex.verdict, ex.call = ex.call, None
        return cache.caller_key(ex, (), ())

    assert by_verdict(consumer="acme") == cache.caller_key(exchange(consumer="acme"), (), ())
    assert by_verdict(consumer="acme") != by_verdict(consumer="globex")
    assert by_verdict(cert="aa") != by_verdict(cert="bb")


class Responder:
    def __init__(self) -> None:
        self.started = self.finished = self.gone = False
        self.head: tuple[int, H, int | None] | None = None
        self.body = b""

    def start_response(self, status: int, headers: H, length: int | None,
                       reason: bytes | None = None) -> None:
        self.started = True
        self.head = (status, headers, length)

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.gone = True

    def register_producer(self, producer: Any) -> None:
        pass

    def unregister_producer(self) -> None:
        pass

    def when_gone(self, callback: Any) -> None:
        pass


class Backend:
    """Answers every forwarded request as a backend would through the forwarder: the
    answer's headers go through ``on_answer`` (the transforms), then the responder."""

    def __init__(self, headers: H, body: bytes = b"hello", status: int = 200) -> None:
        self.headers, self.body, self.status = headers, body, status
        self.calls = 0

    def forward(self, exchange: Any, target: bytes, *, on_done: Any = None,
                on_answer: Any = None, **kw: Any) -> None:
        self.calls += 1
        headers = [(b"Server", b"twistedgw"), *self.headers]
        if on_answer is not None:
            on_answer(self.status, headers)
        r = exchange.responder
        r.start_response(self.status, headers, len(self.body))
        r.write(self.body)
        r.finish()
        if on_done is not None:
            on_done(ForwardResult(self.status, len(self.body), None))


MINUTE = ApiCache(60)


def serve(store: cache.ResponseStore, backend: Backend, settings: ApiCache = MINUTE,
          **kw: Any) -> tuple[Any, list[ForwardResult]]:
    ex = exchange(**kw)
    done: list[ForwardResult] = []

    def transform(status: int, headers: H) -> None:
        headers.append((b"X-Transformed", b"1"))

    cache.CachingBackend(store, settings, backend, ex).forward(
        ex, b"http://b/items", on_done=done.append, on_answer=transform)
    return ex, done


def test_hits_misses_age_and_head() -> None:
    clock = Clock()
    store = cache.ResponseStore(ResponseCacheConfig(), clock)
    backend = Backend(h(("Cache-Control", "max-age=30"), ("Age", "5")))
    first, done = serve(store, backend)
    assert first.cache == "miss" and backend.calls == 1 and done[0].status == 200
    clock.now += 10
    second, done = serve(store, backend)
    assert second.cache == "hit" and backend.calls == 1
    status, headers, length = second.responder.head
    assert (status, length, second.responder.body) == (200, 5, b"hello")
    assert (b"Age", b"15") in headers  # the backend's 5 and 10 here
    assert headers.count((b"X-Transformed", b"1")) == 1  # transforms run again, once
    assert done == [ForwardResult(200, 5, None)]
    head, _ = serve(store, backend, method=b"HEAD")
    assert head.cache == "hit" and head.responder.body == b"" and head.responder.head[2] == 5
    # Another caller, another query: misses.
    assert serve(store, backend, consumer="other")[0].cache == "miss"
    assert serve(store, backend, query=b"page=2")[0].cache == "miss"
    clock.now += 16  # 5 + 10 + 16 > 30
    assert serve(store, backend)[0].cache == "miss"


def test_answers_in_flight_are_bounded_and_released() -> None:
    """Copies of answers still streaming count against max_bytes too, and are let go
    however the exchange ends (a client that leaves never finishes its answer)."""
    clock = Clock()
    store = cache.ResponseStore(ResponseCacheConfig(max_bytes=90, max_entry_bytes=60), clock)

    class Held(Backend):
        def forward(self, exchange: Any, target: bytes, *, on_done: Any = None,
                    on_answer: Any = None, **kw: Any) -> None:
            self.done = on_done
            on_answer(200, [])
            exchange.responder.start_response(200, [], None)
            exchange.responder.write(b"x" * 50)

    first, second = Held(h()), Held(h())
    serve(store, first)
    assert store.pending == 50
    serve(store, second, query=b"2")
    assert store.pending == 50  # the second copy would pass max_bytes: not kept
    first.done(ForwardResult(499, 50, "client_gone"))  # its client left
    assert store.pending == 0 and len(store) == 0


def test_what_is_never_kept() -> None:
    clock = Clock()
    bounds = ResponseCacheConfig(max_entry_bytes=10)
    for backend in (Backend(h(("Cache-Control", "private"))), Backend(h(), status=404),
                    Backend(h(), body=b"x" * 11)):
        store = cache.ResponseStore(bounds, clock)
        serve(store, backend)
        assert serve(store, backend)[0].cache == "miss" and len(store) == 0
    # A HEAD miss is forwarded and keeps nothing (it has no body to keep).
    store = cache.ResponseStore(bounds, clock)
    backend = Backend(h())
    assert serve(store, backend, method=b"HEAD")[0].cache == "miss" and len(store) == 0


BASE = SHOP


def test_toml_settings(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + "[apis.response_cache]\ntimeout_seconds = 60\n"
                                "[response_cache]\nmax_entries = 10\nmax_bytes = 4096\n"
                                "max_entry_bytes = 1024\n")
    assert cfg.apis[0].response_cache == ApiCache(60)
    assert cfg.response_cache == ResponseCacheConfig(10, 4096, 1024)
    assert load(tmp_path, BASE + "[apis.response_cache]\n").apis[0].response_cache == ApiCache(300)
    assert load(tmp_path, BASE + "[apis.response_cache]\nenabled = false\n").apis[
        0].response_cache is None
    assert problems(tmp_path, BASE + "[apis.response_cache]\ntimeout_seconds = 0\n"
                    "[response_cache]\n"
                    "max_bytes = 10\n") == [
        "apis[0].response_cache.timeout_seconds: must be positive, got 0",
        "response_cache.max_entry_bytes: is larger than max_bytes (10): no answer that large "
        "could be kept"]


DEFINITION = """\
openapi: 3.0.0
info: {{title: Shop, version: "1"}}
x-wso2-basePath: /shop
x-wso2-production-endpoints: {{urls: ["http://127.0.0.1:9/"]}}
security: []
x-wso2-response-cache: {cache}
paths:
  /items:
    get: {{responses: {{'200': {{description: ok}}}}}}
"""


def test_x_wso2_response_cache(tmp_path: Path) -> None:
    def read(cache_yaml: str, toml: str = "") -> Any:
        (tmp_path / "shop.yaml").write_text(DEFINITION.format(cache=cache_yaml))
        try:
            return load(tmp_path, BASE.split("[[apis]]")[0]
                        + '[[apis]]\nopenapi = "shop.yaml"\n' + toml).apis[0].response_cache
        except ConfigError as e:
            return [p.split(": #", 1)[1] for p in e.problems]

    # API Manager's documented shape, and its default of 300 seconds.
    assert read("{enabled: true, cacheTimeoutInSeconds: 400}") == ApiCache(400)
    assert read("{enabled: true}") == ApiCache(300)
    assert read("{enabled: false, cacheTimeoutInSeconds: 400}") is None
    # The TOML table overrides the definition's.
    assert read("{enabled: true}", "response_cache = {enabled = false}\n") is None
    assert read("{cacheTimeoutInSeconds: 30}") == [
        "/x-wso2-response-cache/enabled: expected true or false, got None"]
    assert read("{enabled: true, cacheTimeoutInSeconds: -5}") == [
        "/x-wso2-response-cache/cacheTimeoutInSeconds: expected seconds (an integer > 0), got -5"]
