"""Throttling policies in memory: the config, which policy applies, the stage and its buckets.

The same rules through real gateway processes (and a real redis-server) are in
test_throttling.py. Here the buckets are this process's ``TierThrottle`` on a
clock the test moves, and requests are routed by the real ``Router`` to the
pipelines ``compile_pipelines`` builds, so the API-level bucket shared by every
operation and the operations' own buckets are seen as the gateway would use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_basic_auth_unit import NGINX_FRONTED, nginx_block
from twistedgw import config as configmod
from twistedgw.app._cli import warnings
from twistedgw.config import ResourceThrottle, operation_config, operation_key, variants
from twistedgw.http._routing import Router
from twistedgw.pipeline import Refusal, Shared, compile_pipelines
from twistedgw.pipeline import _tiers as tiers
from twistedgw.testing import fake_call
from twistedgw.testing.devpki import DevPki

POLICIES = """
[[throttling_policies]]
name = "3PerMin"
count = 3
unit_time = 1
time_unit = "min"

[[throttling_policies]]
name = "2PerHour"
count = 2
time_unit = "hour"
"""


def definition(api_tier: str | None) -> str:
    """A petstore as WSO2's policies_sample.yaml writes it (API and resource level)."""
    top = f"x-wso2-throttling-tier: {api_tier}\n" if api_tier else ""
    return f"""\
openapi: 3.0.0
info: {{title: Swagger Petstore New, version: 1.0.0}}
x-wso2-basePath: /petstore/{'a' if api_tier else 'r'}
x-wso2-production-endpoints:
  urls: [http://127.0.0.1:1/v2]
x-wso2-disable-security: true
{top}paths:
  "/pet/findByStatus":
    get:
      x-wso2-throttling-tier: 3PerMin
      responses: {{'200': {{description: ok}}}}
  "/pet/{{petId}}":
    parameters: [{{name: petId, in: path, required: true, schema: {{type: integer}}}}]
    get:
      x-throttling-tier: 2PerHour
      responses: {{'200': {{description: ok}}}}
    put:
      x-throttling-tier: Unlimited
      responses: {{'200': {{description: ok}}}}
  "/store/inventory":
    get:
      responses: {{'200': {{description: ok}}}}
"""


def parse(
    tmp_path: Path, text: str, files: dict[str, str] | None = None, head: str = ""
) -> configmod.Parsed:
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "gw.toml"
    path.write_text(head + "[[listeners]]\ntls = false\n" + text)
    return configmod.load_partial(path)


def problems(parsed: configmod.Parsed) -> list[str]:
    return [line.split(": ", 1)[1] for line in parsed.problems]


# -- the config ---------------------------------------------------------------------


def test_policies_are_read_and_checked(tmp_path: Path) -> None:
    parsed = parse(tmp_path, """
[[apis]]
name = "a"
context = "/a"
backend = "http://127.0.0.1:1"
throttling_tier = "10kPerMin"
[[throttling_policies]]
name = "10kPerMin"          # replaces the built-in one, as editing policies.yaml would
count = 7
unit_time = 30
time_unit = "sec"
[[throttling_policies]]
name = "weekly"
count = 1
unit_time = 1
time_unit = "week"
[[throttling_policies]]
name = "Unlimited"
count = 1
[[throttling_policies]]
name = "nocount"
[[throttling_policies]]
name = "10kPerMin"
count = 1
""")
    assert problems(parsed) == [
        "throttling_policies[1].time_unit: must be one of 'sec', 'min', 'hour', 'day', got "
        "'week' (for a week, write unit_time = 7 and time_unit = \"day\")",
        "throttling_policies[2].name: 'Unlimited' means no limit and cannot be defined",
        "throttling_policies[3].count: is required",
        "throttling_policies[4].name: duplicate throttling policy name '10kPerMin'",
    ]
    table = configmod.policy_table(parsed.config.throttling_policies)
    assert table["10kPerMin"].describe() == "7 requests per 30 sec"
    assert table["10kPerMin"].period_seconds == 30
    assert (table["50kPerMin"].count, table["20kPerMin"].count) == (50_000, 20_000)
    assert parsed.config.apis[0].throttling_tier == "10kPerMin"


@pytest.mark.parametrize(
    ("tier", "words"),
    [
        ("Gold", "'Gold' is a subscription policy in WSO2 Microgateway"),
        ("Unauthenticated", "'Unauthenticated' is a subscription policy"),
        ("50PerMin", "'50PerMin' is an application policy in WSO2 Microgateway"),
        ("10kPerMn", "unknown throttling policy '10kPerMn' (defined: 10kPerMin, 20kPerMin, "
                     "50kPerMin, Unlimited)"),
    ],
)
def test_unknown_and_caller_policies_are_refused(tmp_path: Path, tier: str, words: str) -> None:
    toml = parse(tmp_path, f"""
[[apis]]
name = "a"
context = "/a"
backend = "http://127.0.0.1:1"
throttling_tier = "{tier}"
""")
    found = problems(toml)
    assert len(found) == 1 and found[0].startswith(f"apis[0].throttling_tier: {words}"), found
    spec = definition(None).replace("x-wso2-throttling-tier: 3PerMin",
                                    f"x-wso2-throttling-tier: {tier}")
    from_definition = parse(tmp_path, '[[apis]]\nopenapi = "d.yaml"\n' + POLICIES,
                            {"d.yaml": spec})
    found = problems(from_definition)
    assert len(found) == 1 and found[0].startswith(
        f"apis[0].openapi: {tmp_path / 'd.yaml'}: "
        f"#/paths/~1pet~1findByStatus/get/x-wso2-throttling-tier: {words.split(' (')[0]}"
    ), found


def test_a_caller_policy_name_can_be_defined(tmp_path: Path) -> None:
    parsed = parse(tmp_path, """
[[apis]]
name = "a"
context = "/a"
backend = "http://127.0.0.1:1"
throttling_tier = "Gold"
[[throttling_policies]]
name = "Gold"
count = 5000
""")
    assert parsed.problems == ()


def test_both_extension_names_must_agree_and_be_names(tmp_path: Path) -> None:
    spec = definition("10kPerMin").replace(
        "x-wso2-throttling-tier: 10kPerMin", "x-wso2-throttling-tier: 10kPerMin\n"
        "x-throttling-tier: 20kPerMin").replace("x-throttling-tier: Unlimited",
                                                "x-throttling-tier: 7")
    found = problems(parse(tmp_path, '[[apis]]\nopenapi = "d.yaml"\n' + POLICIES,
                           {"d.yaml": spec}))
    prefix = f"apis[0].openapi: {tmp_path / 'd.yaml'}: "
    assert sorted(found) == sorted([
        prefix + "#/x-wso2-throttling-tier: x-wso2-throttling-tier '10kPerMin' and "
                 "x-throttling-tier '20kPerMin' name different policies; keep one",
        prefix + "#/paths/~1pet~1{petId}/put/x-throttling-tier: expected a throttling policy "
                 "name, got 7",
    ])


# -- which policy applies -----------------------------------------------------------


def apis(tmp_path: Path, extra: str = "") -> tuple[configmod.ApiConfig, ...]:
    parsed = parse(tmp_path, '[[apis]]\nopenapi = "r.yaml"\n[[apis]]\nopenapi = "a.yaml"\n'
                   + POLICIES + extra,
                   {"r.yaml": definition(None), "a.yaml": definition("10kPerMin")})
    assert parsed.problems == ()
    return parsed.config.apis


def test_operation_policies_and_the_api_level_one_wins(tmp_path: Path) -> None:
    resource, api_level = apis(tmp_path)
    assert resource.throttling_tier is None and api_level.throttling_tier == "10kPerMin"
    ops = {(op.method, op.template): op for op in resource.operations or ()}
    find = operation_config(resource, ops[("GET", "/pet/findByStatus")])
    assert find.resource_throttle == ResourceThrottle("3PerMin", "GET", "/pet/findByStatus")
    assert operation_key(resource, ops[("PUT", "/pet/{petId}")]) is None  # Unlimited
    assert operation_key(resource, ops[("GET", "/store/inventory")]) is None
    assert len(variants(resource)) == 2  # the two operations with a policy
    # The API names a policy: it applies to every operation, whose own are dropped.
    assert all(operation_key(api_level, op) is None for op in api_level.operations or ())
    assert variants(api_level) == []


def test_check_warns_of_dropped_operation_policies_and_workers(tmp_path: Path) -> None:
    parsed = parse(tmp_path, '[[apis]]\nopenapi = "a.yaml"\n' + POLICIES,
                   {"a.yaml": definition("10kPerMin")}, head="workers = 2\n")
    found = warnings(parsed.config)
    assert any("2 workers and throttling policies without [cluster]" in w for w in found)
    dropped = [w for w in found if "is not applied" in w]
    assert len(dropped) == 3, found  # 3PerMin, 2PerHour and Unlimited
    assert any("#/paths/~1pet~1findByStatus/get/x-wso2-throttling-tier: the operation's "
               "throttling policy '3PerMin' is not applied: the API's '10kPerMin'" in w
               for w in dropped)


# -- the stage, through routing -----------------------------------------------------


class Gateway:
    """The config's pipelines and router, with buckets on a clock the test moves."""

    def __init__(self, config: configmod.GatewayConfig) -> None:
        self.now = 0.0
        shared = Shared(throttle=tiers.TierThrottle(clock=lambda: self.now))
        found: list[str] = []
        self.pipelines = compile_pipelines(config, found, shared=shared)
        assert found == []
        self.router = Router(config.apis, self.pipelines)

    def send(self, method: str, path: str, *, authz: bool = False) -> Any:
        route = self.router.route(path.encode(), None, method.encode())
        assert route is not None and route.pipeline is not None and route.unmatched is None
        call = fake_call(method=method.encode(), path=path.encode(), api=route.security_api)
        return (route.pipeline.judge if authz else route.pipeline.run)(call)


def refused(outcome: Any) -> tuple[int, str, str, bytes] | None:
    if not isinstance(outcome, Refusal):
        return None
    error = outcome.error
    assert dict(outcome.headers).keys() == {b"Retry-After"}
    return error.status, error.code, error.message, dict(outcome.headers)[b"Retry-After"]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    parsed = parse(tmp_path, '[[apis]]\nopenapi = "r.yaml"\n[[apis]]\nopenapi = "a.yaml"\n'
                   + POLICIES
                   + '[[apis]]\nname = "t"\ncontext = "/t"\nbackend = "http://127.0.0.1:1"\n'
                   'throttling_tier = "2PerHour"\n',
                   {"r.yaml": definition(None), "a.yaml": definition("3PerMin")})
    assert parsed.problems == ()
    yield Gateway(parsed.config)


def test_resource_level_policies_count_per_operation(gateway: Gateway) -> None:
    for _ in range(3):
        assert refused(gateway.send("GET", "/petstore/r/pet/findByStatus")) is None
    assert refused(gateway.send("GET", "/petstore/r/pet/findByStatus")) == (
        429, "900802", "Resource level throttle out", b"20")
    # Other operations: their own policy, or none.
    for _ in range(2):
        assert refused(gateway.send("GET", "/petstore/r/pet/7")) is None
    assert refused(gateway.send("GET", "/petstore/r/pet/8")) == (
        429, "900802", "Resource level throttle out", b"1800")  # 2 an hour: one per 30 min
    for _ in range(10):
        assert refused(gateway.send("PUT", "/petstore/r/pet/7")) is None  # Unlimited
        assert refused(gateway.send("GET", "/petstore/r/store/inventory")) is None
    gateway.now += 20.0  # one token back (3 a minute)
    assert refused(gateway.send("GET", "/petstore/r/pet/findByStatus")) is None
    assert refused(gateway.send("GET", "/petstore/r/pet/findByStatus")) is not None


def test_api_level_policy_is_shared_by_every_operation(gateway: Gateway) -> None:
    assert refused(gateway.send("GET", "/petstore/a/pet/findByStatus")) is None
    assert refused(gateway.send("PUT", "/petstore/a/pet/1")) is None
    assert refused(gateway.send("GET", "/petstore/a/store/inventory")) is None
    outcome = gateway.send("GET", "/petstore/a/pet/1")
    assert refused(outcome) == (429, "900800", "Message throttled out", b"20")
    assert isinstance(outcome, Refusal)
    assert outcome.error.description == (
        "the API's limit of 3 requests per 1 min (policy '3PerMin') was exceeded")
    # The authz endpoint judges (and counts) the same way.
    gateway.now += 20.0
    assert refused(gateway.send("GET", "/petstore/a/pet/1", authz=True)) is None
    assert refused(gateway.send("GET", "/petstore/a/pet/1", authz=True))[:2] == (
        429, "900800")


def test_toml_api_level_policy(gateway: Gateway) -> None:
    assert [refused(gateway.send("GET", "/t/x")) for _ in range(2)] == [None, None]
    assert refused(gateway.send("POST", "/t/y")) == (
        429, "900800", "Message throttled out", b"1800")


def test_a_policy_bucket_refills_over_its_own_period() -> None:
    clock = [0.0]
    store = tiers.TierThrottle(clock=lambda: clock[0])
    day = tiers.Limit(b"k", 4, period_seconds=86_400)
    assert [store.take_limit(day) for _ in range(4)] == [None] * 4
    assert store.take_limit(day) == pytest.approx(21_600.0)
    clock[0] = 21_600.0
    assert store.take_limit(day) is None


# -- NGINX-fronted ------------------------------------------------------------------


def test_nginx_sends_throttled_apis_down_the_gateway_path(tmp_path: Path, pki: DevPki) -> None:
    from twistedgw.app import nginx as nginxconf
    from twistedgw.http import _verdicts as verdicts

    path = tmp_path / "gw.toml"
    (tmp_path / "r.yaml").write_text(definition(None))
    path.write_text(NGINX_FRONTED + f"""
[tls]
truststore = "{pki.truststore_dir}"
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
[[apis]]
openapi = "r.yaml"
{POLICIES}""")
    cfg = configmod.load(path)
    text = nginxconf.render(cfg).text
    block = nginx_block(text, "Swagger Petstore New:1.0.0")
    assert "# Throttling policies (x-wso2-throttling-tier) count every request" in block
    assert "auth_request" not in block
    assert "auth_request" in nginx_block(text, "Public:1")
    assert not verdicts.api_cacheable(cfg, cfg.apis[1])
