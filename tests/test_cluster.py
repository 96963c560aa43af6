"""[cluster]: tier limits shared in a real redis-server by workers and instances.

Every test runs real gateway processes against a real ``redis-server`` started
here (installed by ./run-tests when missing); FAIL, never skip, without it.
"""

from __future__ import annotations

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
from twistedgw.cluster import SCRIPT_SHA
from twistedgw.devpki import DevPki

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
              workers: int = 1) -> tuple[GatewayProcess, int]:
        port = free_port()
        admin_port = free_port()
        if admin:
            extra += table("admin", {"host": "127.0.0.1", "port": admin_port})
        text = gateway_config(self.pki, apis, port=port, extra=extra)
        if workers > 1:
            text = f"workers = {workers}\n" + text
        gw = start_gateway(self.tmp_path / f"gw{len(self.started)}", text, port,
                           wait_for=(admin_port,) if admin else ())
        self.started.append(gw)
        if admin:
            # Serving (all workers) and connected to Redis when there is a [cluster].
            wait_until(lambda: admin_get(admin_port, "/readyz")[0] == 200, 20, "ready")
            if "[cluster]" in extra:
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
    for _ in range(100):
        conn = tls_connect(gw.port, context(pki, "partner-app"))
        assert send(conn, OPEN).status == 200
        pid = read_json_lines(log)[-1]["pid"]
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
    pids = {e["pid"] for e in read_json_lines(log) if e["path"] == TIERED}
    assert len(pids) == 2, pids
    metrics = scrape(admin)
    assert value(metrics, "twistedgw_cluster_store_round_trip_seconds_count") == 3 * LIMIT
    assert value(metrics, "twistedgw_cluster_store_errors_total", kind="down") == 0


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
