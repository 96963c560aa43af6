"""HTTP Basic authentication in memory: the config, the scheme, the pool's bound and cache.

The same rules through a real gateway process are in test_basic_auth.py. Here the
password checks run through a runner the test controls (``run=``), so the bound on
waiting checks, the sharing of one check by identical credentials and the cache's
expiry are reached without threads; the hashing itself is real (cheap parameters).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import pytest
from twisted.internet.defer import Deferred, succeed

from twistedgw import config as configmod
from twistedgw.config import BasicUser, Mode
from twistedgw.pipeline import HeaderEdit, Refusal, SchemeResult
from twistedgw.pipeline._basic import (
    BUSY,
    MALFORMED,
    NO_CREDENTIALS,
    NOT_VALID,
    SEVERAL,
    STRIP_BASIC_AUTHORIZATION,
    BasicAuth,
    PasswordChecks,
    verify_password,
)
from twistedgw.testing import fake_api, fake_call, pipeline, run
from twistedgw.testing.devpki import DevPki

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE_HASH = CHEAP.hash("wonderland")
BOB_HASH = bcrypt.hashpw(b"builder", bcrypt.gensalt(4)).decode()
USERS = (BasicUser("alice", ALICE_HASH), BasicUser("bob", BOB_HASH))
API = fake_api(basic_auth=Mode.MANDATORY, name='Pet "store"')


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Runner:
    """Holds each job until the test releases it (``go``), or runs it at once."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.jobs: list[tuple[Callable[[], bool], Deferred[bool]]] = []
        self.calls = 0

    def __call__(self, job: Callable[[], bool]) -> Deferred[bool]:
        self.calls += 1
        if not self.hold:
            return succeed(job())
        d: Deferred[bool] = Deferred()
        self.jobs.append((job, d))
        return d

    def go(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job, d in jobs:
            d.callback(job())


def scheme(runner: Runner, clock: Callable[[], float] | None = None, **kwargs: Any) -> BasicAuth:
    checks = PasswordChecks(run=runner, clock=clock or (lambda: 0.0), **kwargs)
    return BasicAuth(API, USERS, checks, owners={"alice": "acme"})


def judge(s: BasicAuth, *values: str) -> Any:
    return s.authenticate(fake_call(api=API, headers={"Authorization": list(values)}))


def settled(result: Any) -> SchemeResult:
    if isinstance(result, Deferred):
        out: list[SchemeResult] = []
        result.addCallback(out.append)
        assert out, "the check has not finished"
        return out[0]
    assert isinstance(result, SchemeResult)
    return result


# -- the hashes ---------------------------------------------------------------------


def test_verify_password_argon2id_and_bcrypt() -> None:
    assert verify_password(ALICE_HASH, b"wonderland")
    assert not verify_password(ALICE_HASH, b"Wonderland")
    assert verify_password(BOB_HASH, b"builder")
    assert not verify_password(BOB_HASH, b"builder2")
    assert not verify_password(BOB_HASH, b"x" * 100)  # over bcrypt's 72 bytes: no match
    assert not verify_password("$argon2id$broken", b"x")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (CHEAP.hash("x"), None),
        (BOB_HASH, None),
        (argon2.PasswordHasher(type=argon2.Type.I, memory_cost=8, time_cost=1,
                               parallelism=1).hash("x"), "argon2i hash; only argon2id"),
        ("$argon2id$v=19$m=1048576,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
         "memory cost m=1048576"),
        ("$argon2id$v=19$m=65536,t=99,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g",
         "time cost t=99"),
        ("$argon2id$nonsense", "not a valid argon2 PHC string"),
        ("$2b$31$" + "a" * 53, "bcrypt cost 31"),
        ("$2b$12$short", "not a valid bcrypt hash"),
        ("$scrypt$ln=16,r=8,p=1$c2FsdA$aGFzaA", "scrypt hash, which is not accepted"),
        ("hunter2", "a password is never written in the config"),
    ],
)
def test_password_hash_values(value: str, words: str | None) -> None:
    problem = configmod.hash_problem(value)
    if words is None:
        assert problem is None
    else:
        assert problem is not None and words in problem
        assert value not in problem  # the hash (or a pasted password) is never echoed


def parse(tmp_path: Path, text: str) -> configmod.Parsed:
    base = """
[[listeners]]
tls = false
[[apis]]
name = "a"
context = "/a"
backend = "http://127.0.0.1:1"
"""
    path = tmp_path / "gw.toml"
    path.write_text(base + text)
    return configmod.load_partial(path)


def test_config_users_consumers_and_api_keys(tmp_path: Path) -> None:
    parsed = parse(tmp_path, f"""
basic_auth = "mandatory"
[[basic_users]]
name = "alice"
password_hash = "{ALICE_HASH}"
[[basic_users]]
name = "alice"
password_hash = "{BOB_HASH}"
[[basic_users]]
name = "carol:x"
password_hash = "plain"
[[consumers]]
name = "acme"
basic_users = ["alice", "dave"]
""")
    lines = [p.split(": ", 1)[1] for p in parsed.problems]
    assert any(line.startswith("basic_users[1].name: duplicate basic user name") for line in lines)
    assert any(line.startswith("basic_users[2].name: must be 1-128") for line in lines)
    assert any(line.startswith("basic_users[2].password_hash: must be an argon2id")
               for line in lines)
    assert any("consumers[0].basic_users[1]: no [[basic_users]] entry is named 'dave'" in line
               for line in lines)
    assert len(lines) == 4, lines
    config = parsed.config
    assert config.apis[0].basic_auth is Mode.MANDATORY
    assert [u.name for u in config.basic_users] == ["alice"]
    assert config.consumers[0].basic_users == ("alice", "dave")
    assert ALICE_HASH not in repr(config.basic_users)


def test_config_basic_auth_needs_users(tmp_path: Path) -> None:
    parsed = parse(tmp_path, 'basic_auth = "optional"\n')
    assert [p.split(": ", 1)[1] for p in parsed.problems] == [
        "basic_users: an API uses basic_auth but no [[basic_users]] are defined"
    ]


# -- the scheme ---------------------------------------------------------------------


def test_right_password_passes_then_comes_from_the_cache() -> None:
    runner = Runner()
    s = scheme(runner)
    first = settled(judge(s, basic("alice", "wonderland")))
    assert first.passed and first.principal == "basic:alice" and first.consumer == "acme"
    assert runner.calls == 1
    again = judge(s, basic("alice", "wonderland"))
    assert isinstance(again, SchemeResult) and again.passed  # synchronous: no hash
    assert runner.calls == 1
    bob = settled(judge(s, basic("bob", "builder")))
    assert bob.passed and bob.principal == "basic:bob" and bob.consumer is None


def test_wrong_passwords_and_unknown_users_read_alike_and_are_never_cached() -> None:
    runner = Runner()
    s = scheme(runner)
    for _ in range(2):
        for user, password in (("alice", "nope"), ("mallory", "wonderland")):
            result = settled(judge(s, basic(user, password)))
            assert not result.passed and result.presented and result.reason == NOT_VALID
            assert result.challenge == b'Basic realm="Pet \\"store\\"", charset="UTF-8"'
    assert runner.calls == 4  # the unknown user was hashed too (timing), none remembered


@pytest.mark.parametrize(
    ("values", "reason", "presented"),
    [
        ((), NO_CREDENTIALS, False),
        (("Bearer abc.def.ghi",), NO_CREDENTIALS, False),
        (("Basic",), MALFORMED, True),
        (("Basic !!!!",), MALFORMED, True),
        (("Basic " + base64.b64encode(b"no-colon").decode(),), MALFORMED, True),
        (("Basic " + base64.b64encode(b":pw").decode(),), MALFORMED, True),
        (("Basic " + base64.b64encode(b"\xff\xfe:pw").decode(),), MALFORMED, True),
        (("Basic " + base64.b64encode(b"alice:" + b"x" * 2000).decode(),), MALFORMED, True),
        ((basic("alice", "wonderland"), basic("bob", "builder")), SEVERAL, True),
    ],
)
def test_what_is_refused_without_hashing(
    values: tuple[str, ...], reason: str, presented: bool
) -> None:
    runner = Runner()
    result = judge(scheme(runner), *values) if values else scheme(runner).authenticate(
        fake_call(api=API)
    )
    assert isinstance(result, SchemeResult)
    assert (result.passed, result.presented, result.reason) == (False, presented, reason)
    assert result.challenge is not None and result.challenge.startswith(b"Basic realm=")
    assert runner.calls == 0


def test_scheme_name_is_case_insensitive() -> None:
    runner = Runner()
    value = basic("alice", "wonderland").replace("Basic", "bAsIc")
    assert settled(judge(scheme(runner), value)).passed


def test_the_cache_expires_and_a_changed_hash_matches_nothing() -> None:
    now = [0.0]
    runner = Runner()
    checks = PasswordChecks(run=runner, clock=lambda: now[0], cache_seconds=60)
    s = BasicAuth(API, USERS, checks)
    assert settled(judge(s, basic("alice", "wonderland"))).passed
    now[0] = 59.0
    assert isinstance(judge(s, basic("alice", "wonderland")), SchemeResult)
    now[0] = 61.0
    assert isinstance(judge(s, basic("alice", "wonderland")), Deferred)
    assert runner.calls == 2
    # A reload that changes alice's hash: the old success is not hers any more.
    changed = BasicAuth(API, (BasicUser("alice", CHEAP.hash("looking-glass")),), checks)
    result = settled(judge(changed, basic("alice", "wonderland")))
    assert not result.passed and runner.calls == 3


def test_the_cache_is_bounded() -> None:
    runner = Runner()
    users = tuple(BasicUser(f"u{i}", BOB_HASH) for i in range(5))
    checks = PasswordChecks(run=runner, cache_entries=3)
    s = BasicAuth(API, users, checks)
    for i in range(5):
        assert settled(judge(s, basic(f"u{i}", "builder"))).passed
    assert len(checks._cache) == 3
    assert isinstance(judge(s, basic("u4", "builder")), SchemeResult)  # kept
    assert isinstance(judge(s, basic("u0", "builder")), Deferred)  # dropped first


def test_over_the_bound_is_refused_at_once_and_identical_checks_share_one() -> None:
    runner = Runner(hold=True)
    s = scheme(runner, max_waiting=2)
    a1 = judge(s, basic("alice", "wonderland"))
    a2 = judge(s, basic("alice", "wonderland"))  # the same credentials: no second hash
    b = judge(s, basic("bob", "builder"))
    assert runner.calls == 2
    busy = judge(s, basic("alice", "other"))  # a third distinct check: over the bound
    assert isinstance(busy, SchemeResult) and not busy.passed and busy.reason == BUSY
    assert busy.error is not None and busy.error.status == 503
    runner.go()
    assert settled(a1).passed and settled(a2).passed and settled(b).passed
    again = judge(s, basic("alice", "other"))  # room again
    runner.go()
    assert settled(again).reason == NOT_VALID


def test_busy_answers_503_through_the_combine_rule() -> None:
    runner = Runner(hold=True)
    s = scheme(runner, max_waiting=0)
    outcome = run(pipeline([s], api=API), fake_call(api=API, headers={
        "Authorization": basic("alice", "wonderland")}))
    assert isinstance(outcome, Refusal)
    assert (outcome.error.status, outcome.error.code) == (503, "101503")
    assert outcome.headers == ()  # no challenge: the credentials were not judged
    wrong = Runner()
    outcome = run(pipeline([scheme(wrong)], api=API), fake_call(api=API, headers={
        "Authorization": basic("alice", "nope")}))
    assert isinstance(outcome, Refusal)
    assert (outcome.error.status, outcome.error.code) == (401, "900901")
    assert outcome.headers == ((b"WWW-Authenticate",
                                b'Basic realm="Pet \\"store\\"", charset="UTF-8"'),)


def test_basic_authorization_is_stripped_bearer_is_not() -> None:
    for value, stripped in ((basic("a", "b"), True), ("basic x", True),
                            ("Bearer abc", False), ("Basically", False)):
        edit = HeaderEdit()
        STRIP_BASIC_AUTHORIZATION.transform_request(
            fake_call(api=API, headers={"Authorization": value}), edit
        )
        assert (b"authorization" in edit.removed) is stripped, value


NGINX_FRONTED = """
[[listeners]]
endpoint = "unix:/run/twistedgw/authz.sock"
group = "www-data"
tls = false
[mutual_ssl]
certificate_header = "X-SSL-Client-Cert"
header_encoding = "url-pem"
enable_client_validation = false
trusted_proxies = ["unix"]
[authz]
path = "/_twistedgw/authz"
cache_seconds = 10
[nginx]
listen = "443"
server_name = "_"
authz = "unix:/run/twistedgw/authz.sock"
cache_path = "/var/cache/nginx/twistedgw"
[[apis]]
name = "Public"
version = "1"
context = "/public"
backend = "http://127.0.0.1:8080"
"""


def nginx_block(text: str, label: str) -> str:
    block = text[text.index(f"# {label}: "):]
    return block[:block.index("\n    }\n")]


def test_nginx_sends_basic_apis_down_the_gateway_path(tmp_path: Path, pki: DevPki) -> None:
    """NGINX must not cache a verdict keyed without the password, nor forward it: a Basic
    API takes the gateway path, saying why in the rendered file; others keep the fast
    path. The authz endpoint never lets a Basic verdict be cached."""
    from twistedgw.app import nginx as nginxconf
    from twistedgw.http import _verdicts as verdicts

    path = tmp_path / "gw.toml"
    path.write_text(NGINX_FRONTED + f"""
[tls]
truststore = "{pki.truststore_dir}"
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
[[apis]]
name = "Users"
version = "1"
context = "/users"
backend = "http://127.0.0.1:8080"
basic_auth = "mandatory"
[[basic_users]]
name = "alice"
password_hash = "{ALICE_HASH}"
""")
    cfg = configmod.load(path)
    text = nginxconf.render(cfg).text
    users = nginx_block(text, "Users:1")
    assert "# Basic authentication: twistedgw checks the password and removes Authorization" \
        in users
    assert "proxy_pass http://twistedgw_authz$request_uri;" in users
    assert "auth_request" not in users
    assert "auth_request" in nginx_block(text, "Public:1")
    assert not verdicts.api_cacheable(cfg, cfg.apis[1])
    assert verdicts.api_cacheable(cfg, cfg.apis[0])


def test_definitions_name_basic_as_wso2_does(tmp_path: Path) -> None:
    """``type: http, scheme: basic`` (any case) and ``basic_auth`` in
    ``x-wso2-application-security`` both mean [[basic_users]]; ``routes`` shows it."""
    (tmp_path / "a.yaml").write_text("""\
openapi: 3.0.1
info: {title: A, version: '1'}
x-wso2-basePath: /b
x-wso2-production-endpoints: {urls: ['http://127.0.0.1:1']}
x-wso2-application-security:
  security-types: [basic_auth, api_key]
paths:
  /x:
    get:
      responses: {'200': {description: ok}}
  /y:
    get:
      security: [{mybasic: []}]
      responses: {'200': {description: ok}}
components:
  securitySchemes:
    mybasic: {type: http, scheme: Basic}
""")
    parsed = parse(tmp_path, f"""
[[apis]]
openapi = "a.yaml"
[[api_keys]]
name = "k"
key_sha256 = "{'0' * 64}"
[[basic_users]]
name = "alice"
password_hash = "{ALICE_HASH}"
""")
    assert parsed.problems == ()
    api = parsed.config.apis[1]
    assert (api.basic_auth, api.api_key) == (Mode.OPTIONAL, Mode.OPTIONAL)
    rows = {(method, path): schemes for _h, method, path, _a, schemes
            in configmod.route_rows([api])}
    assert rows[("GET", "/b/x")] == "api_key:optional basic_auth:optional"
    assert rows[("GET", "/b/y")] == "basic_auth:mandatory"
