"""[cluster]: tier limits shared in a real redis-server by workers and instances.

Every test runs real gateway processes against a real ``redis-server`` started
here (installed by ./run-tests when missing); FAIL, never skip, without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import TLSConnection, context, get, tls_connect
from tests.harness import (
    GatewayProcess,
    env,
    free_port,
    gateway_config,
    send,
    start_gateway,
    table,
)
from tests.lbsupport import start_haproxy
from tests.opskit import admin_get, read_json_lines, scrape, value, wait_until
from tests.redissupport import DelayingProxy, RedisProcess, start_redis
from twistedgw.pipeline import SCRIPT_SHA
from twistedgw.testing.devpki import DevPki

LIMIT = 6
TIERED = "/tiered/x"
OPEN = "/open/x"


def apis(backend: BackendProcess, limit: int = LIMIT) -> list[dict[str, Any]]:
    base = {"version": "1", "backend": backend.url}
    return [
        {**base, "name": "Tiered", "context": "/tiered", "mutual_ssl": "mandatory",
         "tiers": [{"alias": "partner-root", "requests_per_minute": limit}]},
        {**base, "name": "Open", "context": "/open", "mutual_ssl": "mandatory"},
    ]


def cluster(port: int, **values: Any) -> str:
    return table("cluster", {"redis": f"redis://127.0.0.1:{port}/0", **values})


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.kill()


class Gateways:
    def __init__(self, tmp_path: Path, pki: DevPki) -> None:
        self.tmp_path = tmp_path
        self.pki = pki
        self.started: list[GatewayProcess] = []

    def start(self, apis: list[dict[str, Any]], extra: str = "", *, admin: bool = True,
              workers: int = 1, connected: bool = True,
              api_keys: dict[str, str] | None = None) -> tuple[GatewayProcess, int]:
        port = free_port()
        admin_port = free_port()
        if admin:
            extra += table("admin", {"host": "127.0.0.1", "port": admin_port})
        text = gateway_config(self.pki, apis, port=port, extra=extra, api_keys=api_keys)
        if workers > 1:
            text = f"workers = {workers}\n" + text
        gw = start_gateway(self.tmp_path / f"gw{len(self.started)}", text, port,
                           wait_for=(admin_port,) if admin else ())
        self.started.append(gw)
        if admin:
            # Serving (all workers) and connected to Redis when there is a [cluster].
            wait_until(lambda: admin_get(admin_port, "/readyz")[0] == 200, 20, "ready")
            if "[cluster]" in extra and connected:
                wait_until(lambda: "connected" in admin_get(admin_port, "/readyz")[2], 20,
                           "the cluster store to connect")
        return gw, admin_port

    def stop(self) -> None:
        for gw in self.started:
            gw.stop()


@pytest.fixture
def gateways(tmp_path: Path, pki: DevPki) -> Iterator[Gateways]:
    g = Gateways(tmp_path, pki)
    try:
        yield g
    except BaseException:
        for gw in g.started:
            print(gw.output())
        raise
    finally:
        g.stop()


def statuses(port: int, pki: DevPki, n: int, path: str = TIERED,
             client: str = "partner-app") -> list[int]:
    return [get(port, path, pki, client).status for _ in range(n)]


def test_one_limit_across_two_workers(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    extra = cluster(redis.port) + table("access_log", {"path": str(log)})
    gw, admin = gateways.start(apis(backend), extra, workers=2)
    # One keep-alive connection to each worker (the access log names the pid).
    by_pid: dict[int, TLSConnection] = {}
    for n in range(1, 101):
        conn = tls_connect(gw.port, context(pki, "partner-app"))
        assert send(conn, OPEN).status == 200
        # The line is written once the response is sent, so it may trail the response.
        pid = wait_until(lambda n=n: len(lines := read_json_lines(log)) >= n and lines[n - 1],
                         what=f"access-log line {n}")["pid"]
        if pid in by_pid:
            conn.close()
        else:
            by_pid[pid] = conn
        if len(by_pid) == 2:
            break
    assert len(by_pid) == 2, "both workers should accept connections"
    conns = list(by_pid.values())
    got = [send(conns[i % 2], TIERED).status for i in range(3 * LIMIT)]
    for conn in conns:
        conn.close()
    assert got.count(200) == LIMIT and got.count(429) == 2 * LIMIT, got
    assert got[:LIMIT] == [200] * LIMIT
    tiered = wait_until(
        lambda: len(t := [e for e in read_json_lines(log) if e["path"] == TIERED]) == 3 * LIMIT
        and t,
        what="the tiered requests' access-log lines",
    )
    pids = {e["pid"] for e in tiered}
    assert len(pids) == 2, pids
    # The workers send their round trips to the parent in batches after the answer: the
    # parent's count may trail the access log by a message.
    def all_round_trips() -> dict[str, Any] | None:
        got = scrape(admin)
        counted = value(got, "twistedgw_cluster_store_round_trip_seconds_count")
        return got if counted == 3 * LIMIT else None

    metrics = wait_until(all_round_trips, what="every round trip in the parent's metrics")
    assert value(metrics, "twistedgw_cluster_store_round_trip_seconds_count") == 3 * LIMIT
    assert value(metrics, "twistedgw_cluster_store_errors_total", kind="down") == 0
    # Redis gone: the parent's /readyz says which workers cannot reach it, and the
    # workers' errors reach the parent's metrics.
    redis.kill()
    text = wait_until(lambda: (t := admin_get(admin, "/readyz")[2]).count("unavailable in worker")
                      == 2 and t, 10, "both workers to report")
    assert text.startswith("ready\n"), text
    assert get(gw.port, TIERED, pki, "partner-app").status == 200  # open
    wait_until(lambda: value(scrape(admin), "twistedgw_cluster_store_errors_total",
                             kind="down") >= 1, 10, "the error to be counted")


def haproxy_tcp(port: int, backends: list[int]) -> str:
    """HAProxy passing TLS through (mode tcp), round robin: each connection to the next."""
    servers = "".join(f"    server gw{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends))
    return (
        "global\n    maxconn 256\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n"
        f"frontend front\n    bind 127.0.0.1:{port}\n    default_backend gateways\n"
        f"backend gateways\n    balance roundrobin\n{servers}"
    )


def test_one_limit_across_two_instances_behind_haproxy(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
    tmp_path: Path,
) -> None:
    first, admin1 = gateways.start(apis(backend), cluster(redis.port))
    second, admin2 = gateways.start(apis(backend), cluster(redis.port))
    port = free_port()
    proxy = start_haproxy(tmp_path / "haproxy", haproxy_tcp(port, [first.port, second.port]),
                          port)
    try:
        got = statuses(port, pki, 3 * LIMIT)
        r = get(port, TIERED, pki, "partner-app")
    finally:
        proxy.stop()
    assert got.count(200) == LIMIT and got.count(429) == 2 * LIMIT, got
    assert r.status == 429 and r.json()["code"] == "900800"
    assert 1 <= int(r.header("retry-after") or "0") <= 60 // LIMIT + 1
    # Both instances answered: each checked its share in Redis.
    trips = [value(scrape(a), "twistedgw_cluster_store_round_trip_seconds_count")
             for a in (admin1, admin2)]
    assert sum(trips) == 3 * LIMIT + 1 and min(trips) >= LIMIT, trips


def test_consumer_tier_shared_by_two_instances(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
) -> None:
    """A consumer's one budget holds across instances, whatever credential it uses."""
    key = "acme-secret"
    api = {"version": "1", "backend": backend.url, "name": "Tiered", "context": "/tiered",
           "mutual_ssl": "optional", "api_key": "optional",
           "tiers": [{"consumer": "acme", "requests_per_minute": LIMIT}]}
    extra = cluster(redis.port) + table(
        "consumers", {"name": "acme", "api_keys": ["acme-key"]}, array=True)
    first, _ = gateways.start([api], extra, api_keys={"acme-key": key})
    second, _ = gateways.start([api], extra, api_keys={"acme-key": key})
    got = [get((first, second)[i % 2].port, TIERED, pki, headers={"apikey": key}).status
           for i in range(LIMIT + 2)]
    assert got == [200] * LIMIT + [429, 429], got
    r = get(second.port, TIERED, pki, headers={"apikey": key})
    assert r.status == 429 and "consumer's" in r.json()["description"]
    keys = redis.command("KEYS", "twistedgw:*")
    # One bucket per API (name:version), whatever context it shares (tier_bucket_key).
    assert keys == [b"twistedgw:Tiered:1\x00consumer:acme"], keys


def test_without_cluster_each_process_counts_on_its_own(
    gateways: Gateways, backend: BackendProcess, pki: DevPki, tmp_path: Path,
) -> None:
    """The per-process behaviour is unchanged: two instances, two buckets."""
    first, _ = gateways.start(apis(backend), admin=False)
    second, _ = gateways.start(apis(backend), admin=False)
    got = statuses(first.port, pki, LIMIT + 1) + statuses(second.port, pki, LIMIT + 1)
    assert got == ([200] * LIMIT + [429]) * 2, got
    # `check` says so when the workers of one instance would do the same.
    config = tmp_path / "workers.toml"
    config.write_text("workers = 2\n" + first.config.read_text())
    out = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(config)],
                         capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    assert "each worker counts on its own" in out.stderr
    assert "workers" in out.stderr and str(config) in out.stderr
    # With [cluster], no warning.
    config.write_text(config.read_text() + cluster(6379))
    out = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(config)],
                         capture_output=True, text=True, env=env())
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


@pytest.mark.parametrize("on_failure", ["open", "closed"])
def test_redis_killed_and_restarted_mid_load(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
    on_failure: str,
) -> None:
    gw, admin = gateways.start(apis(backend), cluster(redis.port, on_failure=on_failure))
    assert statuses(gw.port, pki, LIMIT + 1) == [200] * LIMIT + [429]
    redis.kill()
    wait_until(lambda: "unavailable" in admin_get(admin, "/readyz")[2], 10, "readyz to tell")
    status, _, text = admin_get(admin, "/readyz")
    assert status == 200 and f"on_failure = {on_failure}" in text, text
    if on_failure == "open":
        # Served without the limit while Redis is away.
        assert statuses(gw.port, pki, LIMIT + 2) == [200] * (LIMIT + 2)
    else:
        for _ in range(3):
            r = get(gw.port, TIERED, pki, "partner-app")
            assert r.status == 503, r.body
            assert r.json()["code"] == "101503"
            assert r.header("content-type") == "application/json"
    # APIs without tiers never depend on Redis.
    assert statuses(gw.port, pki, 3, OPEN) == [200] * 3
    assert value(scrape(admin), "twistedgw_cluster_store_errors_total", kind="down") >= 3
    # Logged, but not once per request.
    assert gw.output().count("Cluster store") <= 3, gw.output()

    redis.start()  # same port, empty
    wait_until(lambda: "connected" in admin_get(admin, "/readyz")[2], 15, "reconnection")
    assert statuses(gw.port, pki, LIMIT + 1) == [200] * LIMIT + [429]


@pytest.mark.parametrize("on_failure", ["open", "closed"])
def test_slow_redis_answers_within_timeout_and_never_holds_up_other_apis(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
    on_failure: str,
) -> None:
    proxy = DelayingProxy(redis.port)
    try:
        extra = table("cluster", {"redis": f"redis://127.0.0.1:{proxy.port}/0",
                                  "timeout": 0.05, "on_failure": on_failure})
        gw, admin = gateways.start(apis(backend), extra)
        assert statuses(gw.port, pki, 2) == [200, 200]
        proxy.delay = 0.4
        for _ in range(3):
            started = time.monotonic()
            r = get(gw.port, TIERED, pki, "partner-app")
            took = time.monotonic() - started
            assert r.status == (200 if on_failure == "open" else 503), r.body
            assert took < 0.35, took  # the timeout, not Redis's pace
        for _ in range(3):
            started = time.monotonic()
            assert get(gw.port, OPEN, pki, "partner-app").status == 200
            assert time.monotonic() - started < 0.35
        metrics = scrape(admin)
        assert value(metrics, "twistedgw_cluster_store_errors_total", kind="timeout") >= 3
        proxy.delay = 0.0
        # Late answers were spent in Redis (the 3 timed-out checks) ; the store recovers.
        wait_until(lambda: get(gw.port, TIERED, pki, "partner-direct").status == 200, 15,
                   "answers in time again")
    finally:
        proxy.close()


def test_script_flush_reloads_the_script_and_keys_expire(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
) -> None:
    gw, admin = gateways.start(apis(backend), cluster(redis.port, key_prefix="gwtest:"))
    assert statuses(gw.port, pki, 2) == [200, 200]
    assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == [1]
    assert redis.command("SCRIPT", "FLUSH") == "OK"
    assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == [0]
    # The count carries on exactly: the script is loaded again, no error, no lost request.
    assert statuses(gw.port, pki, LIMIT - 1) == [200] * (LIMIT - 2) + [429]
    assert redis.command("SCRIPT", "EXISTS", SCRIPT_SHA) == [1]
    assert value(scrape(admin), "twistedgw_cluster_store_errors_total", kind="error") == 0
    # One key per (API, certificate), each with an expiry no longer than a refill.
    statuses(gw.port, pki, 1, client="partner-direct")
    keys = redis.command("KEYS", "gwtest:*")
    assert len(keys) == 2, keys
    for key in keys:
        ttl = redis.command("PTTL", key)
        assert 0 < ttl <= 61_000, (key, ttl)
    assert redis.command("DBSIZE") == 2


def test_garbage_answers_are_counted_and_served_per_on_failure(
    gateways: Gateways, backend: BackendProcess, pki: DevPki,
) -> None:
    """Something that is not Redis on the port: never ready, requests served (open)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff garbage\r\n")
            except OSError:
                pass
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        port_gw = free_port()
        admin = free_port()
        extra = cluster(port) + table("admin", {"host": "127.0.0.1", "port": admin})
        gw = start_gateway(gateways.tmp_path / "garbage",
                           gateway_config(pki, apis(backend), port=port_gw, extra=extra),
                           port_gw, wait_for=(admin,))
        gateways.started.append(gw)
        assert statuses(gw.port, pki, LIMIT + 2) == [200] * (LIMIT + 2)
        status, _, text = admin_get(admin, "/readyz")
        assert status == 200 and "unavailable" in text, text
        assert value(scrape(admin), "twistedgw_cluster_store_errors_total", kind="down") >= 1
        assert "Traceback" not in gw.output()
    finally:
        server.close()


# --------------------------------------------------------------------------- config


def _load(tmp_path: Path, pki: DevPki, cluster_text: str) -> Any:
    from twistedgw import config as configmod

    path = tmp_path / "c.toml"
    path.write_text(gateway_config(pki, [{"name": "A", "version": "1", "context": "/a",
                                          "backend": "http://127.0.0.1:1"}],
                                   port=1, extra=cluster_text))
    return configmod.load_partial(path)


def test_cluster_config_values(tmp_path: Path, pki: DevPki) -> None:
    parsed = _load(tmp_path, pki, table("cluster", {
        "redis": "redis://app:s3cret@cache.example:6380/3", "key_prefix": "gw1:",
        "timeout": 0.2, "on_failure": "closed"}))
    assert parsed.problems == ()
    c = parsed.config.cluster
    assert (c.scheme, c.host, c.port, c.db, c.username, c.password) == (
        "redis", "cache.example", 6380, 3, "app", "s3cret")
    assert (c.key_prefix, c.timeout, c.on_failure) == ("gw1:", 0.2, "closed")
    assert "s3cret" not in c.describe() and "s3cret" not in repr(c)
    unix = _load(tmp_path, pki, table("cluster", {"redis": "unix:///run/redis/redis.sock?db=2"}))
    assert unix.problems == ()
    assert (unix.config.cluster.path, unix.config.cluster.db) == ("/run/redis/redis.sock", 2)
    defaults = _load(tmp_path, pki, table("cluster", {"redis": "rediss://127.0.0.1"}))
    d = defaults.config.cluster
    assert (d.scheme, d.port, d.db, d.key_prefix, d.timeout, d.on_failure) == (
        "rediss", 6379, 0, "twistedgw:", 0.05, "open")
    assert _load(tmp_path, pki, "").config.cluster is None


@pytest.mark.parametrize(("values", "key", "words"), [
    ({}, "cluster.redis", "is required"),
    ({"redis": "http://127.0.0.1:6379"}, "cluster.redis", "expected redis://"),
    ({"redis": "redis://127.0.0.1:99999"}, "cluster.redis", "expected redis://"),
    ({"redis": "redis://127.0.0.1/zero"}, "cluster.redis", "must be a number"),
    ({"redis": "unix://relative.sock"}, "cluster.redis", "expected redis://"),
    ({"redis": "redis://127.0.0.1", "on_failure": "fail"}, "cluster.on_failure",
     "must be one of 'open', 'closed'"),
    ({"redis": "redis://127.0.0.1", "timeout": 0}, "cluster.timeout", "must be positive"),
    ({"redis": "redis://127.0.0.1", "timeout": "fast"}, "cluster.timeout", "expected"),
    ({"redis": "redis://127.0.0.1", "ttl": 5}, "cluster.ttl", "unknown key"),
    ({"redis": "redis://127.0.0.1", "trusted_certificate": "c.toml"},
     "cluster.trusted_certificate", "only to a rediss://"),
    ({"redis": "rediss://127.0.0.1", "certificate": "c.toml"}, "cluster.private_key",
     "go together"),
])
def test_cluster_config_problems_name_file_and_key(
    tmp_path: Path, pki: DevPki, values: dict[str, Any], key: str, words: str
) -> None:
    parsed = _load(tmp_path, pki, table("cluster", values))
    expected = f"{tmp_path / 'c.toml'}: {key}: "
    assert any(p.startswith(expected) and words in p for p in parsed.problems), parsed.problems


# --------------------------------------------------------------------------- in memory


def test_tiers_stage_with_a_deferred_store(pki: DevPki) -> None:
    """The Tiers stage spends from the store ``limit_for`` names and passes a Deferred
    through: a wait becomes 429 + Retry-After, StoreUnavailable (closed) 503 101503."""
    from twisted.internet.defer import Deferred, fail, succeed

    from twistedgw.config import Tier
    from twistedgw.identity import ClientIdentity, Outcome, Source
    from twistedgw.pipeline import Refusal
    from twistedgw.pipeline import _tiers as tiers
    from twistedgw.pipeline._builtin import Tiers

    class Store:
        def __init__(self, *answers: Any) -> None:
            self.answers = list(answers)
            self.seen: list[tiers.Limit] = []

        def take_limit(self, limit: tiers.Limit) -> Any:
            self.seen.append(limit)
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    leaf = pki.issued["partner-app"].cert
    identity = ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, (leaf,),
                              frozenset({"partner-root"}))

    class Call:
        mtls_passed = True
        consumer = None
        api = type("Api", (), {"context": "/t", "label": "T:1",
                               "tiers": (Tier("partner-root", 30),)})()

    call = Call()
    call.identity = identity  # type: ignore[attr-defined]
    never: Deferred[Any] = Deferred()
    store = Store(None, 1.2, succeed(None), succeed(7.5),
                  fail(tiers.StoreUnavailable("down")), tiers.StoreUnavailable("down"), never)
    stage = Tiers(store)
    assert stage.authorise(call) is None  # type: ignore[arg-type]
    assert store.seen[0].requests_per_minute == 30
    assert store.seen[0].key.startswith(b"T:1\x00leaf:")  # the API's name:version
    refused = stage.authorise(call)  # type: ignore[arg-type]
    assert isinstance(refused, Refusal) and refused.error.status == 429
    assert refused.headers == ((b"Retry-After", b"2"),)
    results: list[Any] = []
    for _ in range(4):
        d = stage.authorise(call)  # type: ignore[arg-type]
        if isinstance(d, Deferred):
            d.addBoth(results.append)
        else:
            results.append(d)
    assert results[0] is None
    assert results[1].error.status == 429 and results[1].headers == ((b"Retry-After", b"8"),)
    for r in results[2:]:
        assert isinstance(r, Refusal)
        assert (r.error.status, r.error.code) == (503, "101503")
    # Until Redis answers (or the store's timeout fires) the request waits.
    pending = stage.authorise(call)  # type: ignore[arg-type]
    assert isinstance(pending, Deferred) and not pending.called
    never.callback(None)
    assert pending.called
    # Not mTLS-authenticated, or no tier: no round trip at all.
    call.mtls_passed = False  # type: ignore[misc]
    assert stage.authorise(call) is None  # type: ignore[arg-type]
    assert len(store.seen) == 7


def test_in_process_store_is_unchanged() -> None:
    from twistedgw.pipeline import _tiers as tiers

    now = [0.0]
    throttle = tiers.TierThrottle(clock=lambda: now[0])
    limit = tiers.Limit(b"k", 6)
    assert [throttle.take_limit(limit) for _ in range(7)][:6] == [None] * 6
    assert throttle.take_limit(limit) == pytest.approx(10.0)
    now[0] += 10.0
    assert throttle.take_limit(limit) is None


def test_verdict_reads_only_the_scripts_answer() -> None:
    from twistedgw.pipeline._cluster import _verdict

    assert _verdict([1, 0]) is None
    assert _verdict([0, 2_500_000]) == 2.5
    assert _verdict([0, 0]) == 1e-06  # never "retry now"
    for garbage in ([2, 0], [0, -1], [1], "OK", None, [b"1", b"0"], [True, 0]):
        assert isinstance(_verdict(garbage), str), garbage


def test_unix_socket_and_rediss_with_a_client_certificate(
    gateways: Gateways, backend: BackendProcess, pki: DevPki, tmp_path: Path,
) -> None:
    """Both other transports reach the same buckets: a unix socket and verified TLS."""
    sock = tmp_path / "r" / "redis.sock"
    tls_port = free_port()
    server = start_redis(
        tmp_path / "r", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--tls-port", str(tls_port), "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.truststore_dir / "partner-root.pem"),
        "--tls-auth-clients", "yes", tls_port=tls_port,
    )
    try:
        crt, key = pki.clients["partner-direct"]
        tls = table("cluster", {"redis": f"rediss://127.0.0.1:{tls_port}/0",
                                "trusted_certificate": str(pki.server_ca),
                                "certificate": str(crt), "private_key": str(key)})
        unix = table("cluster", {"redis": f"unix://{sock}?db=0"})
        over_tls, _ = gateways.start(apis(backend), tls)
        over_unix, _ = gateways.start(apis(backend), unix)
        got = statuses(over_tls.port, pki, LIMIT // 2) + statuses(over_unix.port, pki, LIMIT)
        assert got == [200] * LIMIT + [429] * (LIMIT // 2), got
        # A server whose certificate the CA did not sign is refused (never "connected").
        wrong = table("cluster", {"redis": f"rediss://127.0.0.1:{tls_port}/0",
                                  "trusted_certificate": str(pki.truststore_dir / "lb-ca.pem"),
                                  "certificate": str(crt), "private_key": str(key)})
        gw, admin = gateways.start(apis(backend), wrong, connected=False)
        assert statuses(gw.port, pki, LIMIT + 1) == [200] * (LIMIT + 1)  # open: served
        status, _, text = admin_get(admin, "/readyz")
        assert status == 200 and "unavailable" in text, text
    finally:
        server.kill()


def test_reload_that_changes_cluster_reconnects(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
    tmp_path: Path,
) -> None:
    import signal

    other = start_redis(tmp_path / "other")
    try:
        gw, admin = gateways.start(apis(backend), cluster(redis.port))
        assert statuses(gw.port, pki, LIMIT + 1) == [200] * LIMIT + [429]
        gw.config.write_text(gw.config.read_text().replace(
            f"127.0.0.1:{redis.port}/0", f"127.0.0.1:{other.port}/0"))
        gw.signal(signal.SIGHUP)
        wait_until(lambda: f":{other.port}/0: connected" in admin_get(admin, "/readyz")[2], 15,
                   "the new store to connect")
        # Counted in the new Redis (fresh), and the old connection is closed.
        assert statuses(gw.port, pki, LIMIT + 1) == [200] * LIMIT + [429]
        assert len(other.command("KEYS", "twistedgw:*")) == 1
        wait_until(lambda: b"connected_clients:1\r" in redis.command("INFO", "clients"), 10,
                   "the old connection to close")
        # A reload that keeps [cluster] keeps the connection (and the buckets).
        gw.signal(signal.SIGHUP)
        wait_until(lambda: gw.output().count("Reloaded") == 2, 10, "the second reload")
        assert statuses(gw.port, pki, 1) == [429]
        assert "cluster#warn" not in gw.output(), gw.output()  # no error on the way
        # A refused reload (here: a bad key beside a changed [cluster]) keeps the store.
        good = gw.config.read_text()
        gw.config.write_text(good.replace(f"127.0.0.1:{other.port}/0",
                                          f"127.0.0.1:{redis.port}/0") + "bogus = 1\n")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "Reload refused" in gw.output(), 10, "the refusal")
        assert statuses(gw.port, pki, 1) == [429]  # still counted in the other Redis
        assert f":{other.port}/0: connected" in admin_get(admin, "/readyz")[2]
        # ... and the connection the refused config opened is closed again.
        wait_until(lambda: b"connected_clients:1\r" in redis.command("INFO", "clients"), 10,
                   "the refused config's connection to close")
    finally:
        other.kill()


def test_tiercheck_bench_runs(tmp_path: Path) -> None:
    """bench/tiercheck.py keeps working (nothing asserted about speed)."""
    out = tmp_path / "tiercheck.json"
    proc = subprocess.run(
        [sys.executable, "bench/tiercheck.py", "--checks", "300", "--in-flight", "8",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=env(),
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["in_process"]["cpu_us_per_check"] > 0
    assert data["redis"]["concurrent_checks"] == 300
    assert data["redis"]["round_trip_median_us"] > 0


def test_store_timeout_noscript_garbage_in_memory() -> None:
    """RedisTierStore's request path against a scripted connection and a fake clock."""
    import txredisapi
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from twistedgw.config import ClusterConfig
    from twistedgw.pipeline import _cluster as cluster
    from twistedgw.pipeline import _tiers as tiers

    class Conn:
        connected = 1

        def __init__(self) -> None:
            self.sent: list[tuple[Any, ...]] = []
            self.pending: list[Deferred[Any]] = []

        def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
            self.sent.append(args + tuple(kwargs.values()))
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d

    class Observer:
        def __init__(self) -> None:
            self.errors: list[str] = []
            self.trips: list[float] = []
            self.states: list[str | None] = []

        def cluster_error(self, kind: str) -> None:
            self.errors.append(kind)

        def cluster_round_trip(self, seconds: float) -> None:
            self.trips.append(seconds)

        def cluster_state(self, problem: str | None) -> None:
            self.states.append(problem)

    def make(on_failure: str) -> tuple[Any, Conn, Observer, Clock]:
        clock = Clock()
        observer = Observer()
        settings = ClusterConfig(redis="redis://x", timeout=0.05, on_failure=on_failure)
        store = cluster.RedisTierStore(settings, clock, observer=observer, endpoint=object())
        conn = Conn()
        store._conn = conn
        return store, conn, observer, clock

    limit = tiers.Limit(b"/t\x00leaf:k", 60)
    results: list[Any] = []
    store, conn, observer, clock = make("open")
    # Allowed, throttled (Retry-After from the script's microseconds).
    store.take_limit(limit).addBoth(results.append)
    store.take_limit(limit).addBoth(results.append)
    assert b"EVALSHA" in conn.sent[0][-1] and b"twistedgw:/t\x00leaf:k" in conn.sent[0][-1]
    conn.pending[0].callback([1, 0])
    conn.pending[1].callback([0, 1_500_000])
    assert results == [None, 1.5] and len(observer.trips) == 2
    # No answer within the timeout: served (open), counted; the late answer is ignored.
    store.take_limit(limit).addBoth(results.append)
    clock.advance(0.049)
    assert len(results) == 2
    clock.advance(0.002)
    assert results[2] is None and observer.errors == ["timeout"]
    conn.pending[2].callback([0, 5])
    assert len(results) == 3
    # NOSCRIPT (SCRIPT FLUSH): EVAL with the script, within the same timeout.
    store.take_limit(limit).addBoth(results.append)
    conn.pending[3].errback(txredisapi.ResponseError("NOSCRIPT No matching script."))
    assert conn.sent[4][0] == "EVAL" and conn.sent[4][1] == cluster.SCRIPT
    conn.pending[4].callback([1, 0])
    assert results[3] is None and store.script_reloads == 1 and observer.errors == ["timeout"]
    # Garbage and Redis errors: counted by kind, served.
    for answer in ("OK", txredisapi.ResponseError("ERR something")):
        store.take_limit(limit).addBoth(results.append)
        d = conn.pending[-1]
        d.errback(answer) if isinstance(answer, Exception) else d.callback(answer)
    assert results[4:] == [None, None] and observer.errors == ["timeout", "garbage", "error"]
    assert store._in_flight == 0

    # Closed: the same failures refuse (StoreUnavailable), synchronously when not connected.
    store, conn, observer, clock = make("closed")
    store.take_limit(limit).addBoth(results.append)
    clock.advance(0.06)
    assert isinstance(results[-1].value, tiers.StoreUnavailable)
    store._conn = None
    with pytest.raises(tiers.StoreUnavailable):
        store.take_limit(limit)
    assert observer.errors == ["timeout", "down"]
    # Too many in flight: fail fast rather than queue without bound.
    store._conn = conn
    store._in_flight = cluster.MAX_IN_FLIGHT
    with pytest.raises(tiers.StoreUnavailable):
        store.take_limit(limit)
    assert observer.errors[-1] == "overload"
    assert "on_failure = closed" in store.describe()


def _burst(port: int, pki: DevPki, connections: int, pipelined: int) -> list[int]:
    """Open ``connections`` TLS connections, then send ``pipelined`` requests on each at
    once, so the gateway reads them in one long reactor iteration; every status read."""
    import socket
    import ssl

    ctx = context(pki, "partner-app")
    socks: list[ssl.SSLSocket] = []
    try:
        for _ in range(connections):
            raw = socket.create_connection(("127.0.0.1", port), timeout=60)
            socks.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        wire = b"GET " + TIERED.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for sock in socks:
            sock.sendall(wire * pipelined)
        got: list[int] = []
        for sock in socks:
            buffered = sock.makefile("rb")
            for _ in range(pipelined):
                status_line = buffered.readline()
                if not status_line:
                    break  # a refusal closes the connection
                got.append(int(status_line.split()[1]))
                length = 0
                while (line := buffered.readline()) not in (b"\r\n", b""):
                    name, _, raw_value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(raw_value)
                buffered.read(length)
        return got
    finally:
        for sock in socks:
            sock.close()


def test_a_burst_never_opens_the_limit_while_redis_answers(
    gateways: Gateways, redis: RedisProcess, backend: BackendProcess, pki: DevPki,
) -> None:
    """Issue 22 item 5: hundreds of connections with pipelined requests make one reactor
    iteration longer than ``timeout``; Redis answered in time, so ``on_failure = "open"``
    must not serve them: at most the limit gets through, as in any other load."""
    limit = 10
    gw, admin = gateways.start(apis(backend, limit), cluster(redis.port, on_failure="open"))
    got = _burst(gw.port, pki, connections=250, pipelined=4)
    assert got.count(200) <= limit, (got.count(200), len(got))
    assert set(got) <= {200, 429}, sorted(set(got))
    # Once the burst is over, Redis's shared bucket is the one in force again.
    assert get(gw.port, TIERED, pki, "partner-app").status == 429
    # Every check was answered by Redis in time or timed out on the live connection
    # (answered from the gateway's own bucket); never "down".
    metrics = scrape(admin)
    trips = value(metrics, "twistedgw_cluster_store_round_trip_seconds_count")
    timeouts = value(metrics, "twistedgw_cluster_store_errors_total", kind="timeout")
    assert trips + timeouts == len(got) + 1, (trips, timeouts)
    assert value(metrics, "twistedgw_cluster_store_errors_total", kind="down") == 0


def test_a_late_timer_loses_to_a_received_reply_and_falls_back_to_own_bucket() -> None:
    """The two rules behind the burst test, in memory: the timer decides only after the
    reactor's next poll (a reply read meanwhile wins), and an unanswered check on a
    live connection spends from this process's bucket, which also counts what Redis
    allowed here, instead of opening the gate."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from twistedgw.config import ClusterConfig
    from twistedgw.pipeline import _cluster as cluster
    from twistedgw.pipeline import _tiers as tiers

    class ReactorClock(Clock):
        """Runs only the calls due when advanced, as ``runUntilCurrent`` does: a call
        made meanwhile waits for the next advance (after the reactor's next poll)."""

        def advance(self, amount: float) -> None:
            self.rightNow += amount
            for call in sorted(self.calls, key=lambda c: c.getTime()):
                if call.getTime() <= self.rightNow and call in self.calls:
                    self.calls.remove(call)
                    call.called = 1
                    call.func(*call.args, **call.kw)

    class Conn:
        connected = 1

        def __init__(self) -> None:
            self.pending: list[Deferred[Any]] = []

        def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d

    errors: list[str] = []

    class Observer:
        def cluster_error(self, kind: str) -> None:
            errors.append(kind)

        def cluster_round_trip(self, seconds: float) -> None:
            pass

        def cluster_state(self, problem: str | None) -> None:
            pass

    clock = ReactorClock()
    settings = ClusterConfig(redis="redis://x", timeout=0.05, on_failure="open")
    store = cluster.RedisTierStore(settings, clock, observer=Observer(), endpoint=object())
    store.local = tiers.TierThrottle(clock=clock.seconds)
    conn = Conn()
    store._conn = conn
    limit = tiers.Limit(b"/t\x00leaf:k", 3)
    results: list[Any] = []

    # The timer is due, but the reply is read before the reactor's next timed calls.
    store.take_limit(limit).addBoth(results.append)
    clock.advance(0.06)
    assert results == []
    conn.pending[-1].callback([0, 2_000_000])
    clock.advance(0)
    assert results == [2.0] and errors == []

    # Redis allows two here, in time: this process's bucket counts them.
    for _ in range(2):
        store.take_limit(limit).addBoth(results.append)
        conn.pending[-1].callback([1, 0])
    assert results[1:] == [None, None]
    # Two checks unanswered on the live connection: one token left here, then none.
    store.take_limit(limit).addBoth(results.append)
    store.take_limit(limit).addBoth(results.append)
    clock.advance(0.06)
    clock.advance(0)
    assert results[3] is None and isinstance(results[4], float) and results[4] > 0, results
    assert errors == ["timeout", "timeout"]
    # Their late replies change nothing; Redis counted them.
    conn.pending[-1].callback([1, 0])
    conn.pending[-2].callback([1, 0])
    assert len(results) == 5 and store._in_flight == 0

    # The connection gone by then: on_failure's answer (open: served without a limit).
    store.take_limit(limit).addBoth(results.append)
    store._conn = None
    clock.advance(0.06)
    clock.advance(0)
    assert results[5] is None and errors[-1] == "timeout"
