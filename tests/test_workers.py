"""workers = 2: both processes serve the same socket; the parent supervises them."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, free_port, gateway_config, request, table
from tests.opskit import admin_get, json_lines, scrape, value, wait_until
from twistedgw.testing.devpki import DevPki


def _config(pki: DevPki, backend: BackendProcess, port: int, admin: int, alias: str) -> str:
    apis = [{"name": "echo", "version": "1", "context": "/echo", "backend": backend.url,
             "mutual_ssl": "mandatory", "aliases": [alias]}]
    extra = table("admin", {"host": "127.0.0.1", "port": admin}) + table(
        "access_log", {"path": "-"})
    return "workers = 2\nshutdown_timeout = 10\n" + gateway_config(
        pki, apis, port=port, extra=extra)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_pids(gw: GatewayProcess) -> list[int]:
    return [int(p) for p in re.findall(r"Started worker \d+ \(pid (\d+)\)", gw.output())]


def test_two_workers_serve_restart_reload_and_stop(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki
) -> None:
    port, admin = free_port(), free_port()
    gw = gateway([], config_text=_config(pki, backend, port, admin, "partner-root"), port=port,
                 wait_for=(admin,))
    wait_until(lambda: value(scrape(admin), "twistedgw_workers_ready") == 2, what="2 workers")
    assert admin_get(admin, "/readyz")[0] == 200
    first = _worker_pids(gw)
    assert len(first) == 2

    # Both workers accept on the shared socket: their pids both show in the access log.
    sent = 0
    while sent < 300:
        assert request(gw.port, "/echo/w", pki, "partner-app").status == 200
        sent += 1
        if sent % 10 == 0 and len({x["pid"] for x in json_lines(gw.output())}) == 2:
            break
    assert {x["pid"] for x in json_lines(gw.output())} == set(first)
    # ... and the parent's metrics count the requests of both.
    wait_until(lambda: value(scrape(admin), "twistedgw_requests_total", api="echo:1",
                             status="200", consumer="none") == sent,
               what=f"{sent} requests counted")

    # A worker that dies is replaced; the other keeps serving meanwhile.
    os.kill(first[0], signal.SIGKILL)
    assert request(gw.port, "/echo/meanwhile", pki, "partner-app").status == 200
    wait_until(lambda: len(_worker_pids(gw)) == 3, what="a replacement worker")
    wait_until(lambda: value(scrape(admin), "twistedgw_workers_ready") == 2, what="2 workers")
    assert value(scrape(admin), "twistedgw_worker_restarts_total") == 1
    assert "died (signal 9)" in gw.output()

    # A bad config is refused by the parent, once; the workers keep serving.
    gw.config.write_text("workers = [")
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "Reload refused" in gw.output(), what="the refusal")
    assert gw.output().count("Reload refused") == 1
    assert request(gw.port, "/echo/still", pki, "partner-app").status == 200
    assert value(scrape(admin), "twistedgw_config_reloads_total", result="failure") == 1

    # SIGHUP to the parent reaches every worker.
    gw.config.write_text(_config(pki, backend, port, admin, "other-root"))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.output().count("Reloaded ") >= 3, what="parent + 2 worker reloads")
    for _ in range(20):
        assert request(gw.port, "/echo/new-alias", pki, "other-app").status == 200

    # SIGTERM: a slow request in flight still completes; everyone exits, status 0.
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        r=request(gw.port, "/echo/slow/1.5", pki, "other-app")), daemon=True)
    thread.start()
    time.sleep(0.5)
    gw.signal(signal.SIGTERM)
    thread.join(15)
    assert result["r"].status == 200
    assert gw.proc.wait(15) == 0
    workers = _worker_pids(gw)
    wait_until(lambda: not any(_alive(p) for p in workers), timeout=5, what="workers gone")


def test_workers_leave_when_the_parent_is_killed(
    gateway: Callable[..., GatewayProcess], backend: BackendProcess, pki: DevPki
) -> None:
    port, admin = free_port(), free_port()
    gw = gateway([], config_text=_config(pki, backend, port, admin, "partner-root"), port=port,
                 wait_for=(admin,))
    wait_until(lambda: len(_worker_pids(gw)) == 2, what="2 workers")
    workers = _worker_pids(gw)
    gw.proc.kill()
    gw.proc.wait(5)
    wait_until(lambda: not any(_alive(p) for p in workers), timeout=10, what="orphans gone")
