"""Throttling policies (``x-wso2-throttling-tier``) through real gateway processes.

Definitions are written here as WSO2 Microgateway's ``policies_sample.yaml`` writes
them (an API-level tier, resource-level tiers), with policies in
``[[throttling_policies]]`` the way a project's ``policies.yaml`` holds them. One
gateway serves the in-process case (and its authz endpoint); two gateways share
a real ``redis-server`` for ``[cluster]`` (FAIL, never skip, without it).
Which policy applies, and the buckets' arithmetic, are tested in memory
(test_throttling_unit.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import get
from tests.harness import GatewayProcess, Response, free_port, gateway_config, start_gateway, table
from tests.opskit import admin_get, wait_until
from tests.redissupport import RedisProcess, start_redis
from twistedgw.testing.devpki import DevPki

AUTHZ = "/_twistedgw/authz"
POLICIES = (
    table("throttling_policies", {"name": "3PerMin", "count": 3, "unit_time": 1,
                                  "time_unit": "min"}, array=True)
    + table("throttling_policies", {"name": "2PerHour", "count": 2, "time_unit": "hour"},
            array=True)
)


def definition(backend: str, base: str, api_tier: str | None) -> str:
    top = f"x-wso2-throttling-tier: {api_tier}\n" if api_tier else ""
    return f"""\
openapi: 3.0.0
info:
  title: Swagger Petstore {base}
  version: 1.0.0
x-wso2-basePath: /{base}/v1
x-wso2-production-endpoints:
  urls:
    - {backend}/v2
x-wso2-disable-security: true
{top}paths:
  "/pet/findByStatus":
    get:
      x-wso2-throttling-tier: 3PerMin
      responses:
        '200': {{description: pets}}
  "/pet/{{petId}}":
    parameters:
      - {{name: petId, in: path, required: true, schema: {{type: integer}}}}
    get:
      responses:
        '200': {{description: a pet}}
"""


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("throttling")
    (directory / "resource.yaml").write_text(definition(backend.url, "resource", None))
    (directory / "api.yaml").write_text(definition(backend.url, "api", "3PerMin"))
    apis = [
        {"openapi": "resource.yaml"},
        {"openapi": "api.yaml"},
        {"name": "orders", "context": "/orders", "backend": backend.url,
         "throttling_tier": "2PerHour"},
    ]
    port = free_port()
    text = gateway_config(pki, apis, port=port, extra=POLICIES + table("authz", {"path": AUTHZ}))
    process = start_gateway(directory, text, port)
    try:
        yield process
    except BaseException:
        print(process.output())
        raise
    finally:
        process.stop()


def throttled(r: Response) -> tuple[int, str, str, int]:
    body = r.json()
    retry = r.header("Retry-After")
    assert retry is not None and retry.isdigit(), r.headers
    return r.status, body["code"], body["message"], int(retry)


def test_resource_level_policy(gw: GatewayProcess, pki: DevPki) -> None:
    port = gw.port
    got = [get(port, "/resource/v1/pet/findByStatus", pki).status for _ in range(3)]
    assert got == [200, 200, 200]
    r = get(port, "/resource/v1/pet/findByStatus", pki)
    status, code, message, retry = throttled(r)
    assert (status, code, message) == (429, "900802", "Resource level throttle out")
    assert 1 <= retry <= 20
    assert r.json()["description"] == (
        "the limit of 3 requests per 1 min on GET /pet/findByStatus (policy '3PerMin') "
        "was exceeded")
    # An operation without a policy of its own is not limited by another's.
    assert [get(port, "/resource/v1/pet/1", pki).status for _ in range(5)] == [200] * 5


def test_api_level_policy_covers_every_operation_and_the_authz_endpoint(
    gw: GatewayProcess, pki: DevPki
) -> None:
    port = gw.port
    assert get(port, "/api/v1/pet/findByStatus", pki).status == 200
    assert get(port, "/api/v1/pet/1", pki).status == 200
    judged = {"X-Original-URI": "/api/v1/pet/2", "X-Original-Method": "GET"}
    r = get(port, AUTHZ, pki, headers=judged)
    assert r.status == 200 and r.header("X-Accel-Expires") == "0"  # counted, never cached
    for r in (get(port, "/api/v1/pet/findByStatus", pki), get(port, AUTHZ, pki, headers=judged)):
        status, code, message, retry = throttled(r)
        assert (status, code, message) == (429, "900800", "Message throttled out")
        assert 1 <= retry <= 20


def test_toml_api_level_policy(gw: GatewayProcess, pki: DevPki) -> None:
    assert [get(gw.port, "/orders/x", pki).status for _ in range(2)] == [200, 200]
    status, code, _message, retry = throttled(get(gw.port, "/orders/y", pki))
    assert (status, code) == (429, "900800")
    assert 1700 <= retry <= 1800  # 2 an hour: the next one in half an hour


def test_one_policy_shared_by_two_instances_in_redis(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    redis: RedisProcess = start_redis(tmp_path / "redis")
    started: list[GatewayProcess] = []
    try:
        apis = [{"name": "orders", "version": "v1", "context": "/orders",
                 "backend": backend.url, "throttling_tier": "2PerHour"}]
        for n in range(2):
            port, admin = free_port(), free_port()
            extra = POLICIES + table("cluster", {"redis": f"redis://127.0.0.1:{redis.port}/0"}) \
                + table("admin", {"host": "127.0.0.1", "port": admin})
            started.append(start_gateway(tmp_path / f"gw{n}", gateway_config(
                pki, apis, port=port, extra=extra), port, wait_for=(admin,)))
            wait_until(lambda a=admin: "connected" in admin_get(a, "/readyz")[2], 20,
                       "the cluster store to connect")
        first, second = started
        assert get(first.port, "/orders/a", pki).status == 200
        assert get(second.port, "/orders/b", pki).status == 200
        for gateway in (first, second):
            status, code, _message, retry = throttled(get(gateway.port, "/orders/c", pki))
            assert (status, code) == (429, "900800")
            assert 1700 <= retry <= 1800
        key = b"twistedgw:orders:v1\x00policy:api"
        assert redis.command("KEYS", "twistedgw:*") == [key]
        # The bucket lives as long as the policy's period (an hour), not a tier's minute.
        assert 3_590_000 <= redis.command("PTTL", key) <= 3_601_000
    except BaseException:
        for gateway in started:
            print(gateway.output())
        raise
    finally:
        for gateway in started:
            gateway.stop()
        redis.kill()
