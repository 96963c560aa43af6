"""The jwt scheme, its config and the JWKS fetcher, in memory (no sockets).

The same rules through real processes are in test_jwt.py; here every branch is
reached quickly: each refusal reason, kid lookup and refetch, binding, the
Authorization transform, JWKS documents refused, and the fetcher's schedule
on a ``MemoryReactorClock``.
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from tests import jwtkit
from tests.cputime import least_cpu
from tests.harness import gateway_config
from twistedgw import config as configmod
from twistedgw.identity import ClientIdentity, Outcome, Source, failed, no_certificate
from twistedgw.pipeline import (
    Call,
    HeaderEdit,
    HeaderView,
    Pipeline,
    Refusal,
    RequestView,
    Shared,
    compile_pipelines,
)
from twistedgw.pipeline import _jwks as jwks
from twistedgw.testing.devpki import DevPki

KEY = jwtkit.ec("ec-1")
OTHER = jwtkit.ec("ec-2")


def load(pki: DevPki, tmp_path: Path, api: Mapping[str, Any], issuer: Mapping[str, Any],
         **kwargs: Any) -> configmod.GatewayConfig:
    base: dict[str, Any] = {
        "name": "orders", "context": "/orders", "backend": "http://127.0.0.1:1/",
        "jwt": "mandatory",
    }
    base.update(api)
    iss: dict[str, Any] = {"name": "idp", "issuer": jwtkit.ISSUER, "audiences": ["orders"]}
    if "jwks_url" not in issuer:
        iss["jwks"] = str(jwtkit.write_jwks(tmp_path / "jwks.json", KEY))
    iss.update(issuer)
    iss = {k: v for k, v in iss.items() if v is not None}
    from tests.harness import table

    text = gateway_config(pki, [base], port=0, extra=table("jwt_issuers", iss, array=True),
                          **kwargs)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return configmod.parse(tomllib.loads(text), path)


def pipeline_of(config: configmod.GatewayConfig, shared: Shared | None = None) -> Pipeline:
    problems: list[str] = []
    built = compile_pipelines(config, problems, shared=shared or Shared())
    assert problems == []
    return built[config.apis[0]]


def leaf(pki: DevPki, name: str = "partner-app") -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.clients[name][0].read_bytes())


def verified(cert: x509.Certificate) -> ClientIdentity:
    return ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, (cert,), frozenset({"partner-root"}))


def call_for(config: configmod.GatewayConfig, headers: Mapping[bytes, list[bytes]] | None = None,
             identity: ClientIdentity | None = None) -> Call:
    view = RequestView(b"GET", b"/orders/x", None, HeaderView(Headers(dict(headers or {}))),
                       "127.0.0.1", True)
    return Call(view, config.apis[0], identity or no_certificate())


def bearer(tok: str) -> dict[bytes, list[bytes]]:
    return {b"authorization": [f"Bearer {tok}".encode()]}


def run(p: Pipeline, call: Call) -> Refusal | HeaderEdit:
    out = p.run(call)
    assert not isinstance(out, Deferred)
    return out


def refused(out: object, code: str, description: str, challenge: bytes) -> None:
    assert isinstance(out, Refusal), out
    assert (out.error.status, out.error.code) == (401, code)
    assert out.error.description == description
    assert out.headers == ((b"WWW-Authenticate", challenge),)


INVALID = b'Bearer error="invalid_token"'


@pytest.fixture
def cfg(pki: DevPki, tmp_path: Path) -> configmod.GatewayConfig:
    return load(pki, tmp_path, {}, {})


def test_valid_token_passes_and_authorization_is_removed(cfg: configmod.GatewayConfig) -> None:
    call = call_for(cfg, bearer(jwtkit.token(KEY, jwtkit.claims(azp="acme"))))
    out = run(pipeline_of(cfg), call)
    assert isinstance(out, HeaderEdit)
    assert b"authorization" in out.removed
    assert call.principals == ("jwt:idp:alice",)
    assert call.claims is not None and call.claims["sub"] == "alice"


def test_forward_authorization_keeps_the_header(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, {"forward_authorization": True}, {})
    out = run(pipeline_of(cfg), call_for(cfg, bearer(jwtkit.token(KEY))))
    assert isinstance(out, HeaderEdit) and b"authorization" not in out.removed


def test_consumer_claim(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, {}, {"consumer_claim": "azp"})
    call = call_for(cfg, bearer(jwtkit.token(KEY, jwtkit.claims(azp="acme"))))
    assert isinstance(run(pipeline_of(cfg), call), HeaderEdit)
    assert call.presented_consumers == ("acme",)


def test_no_token(cfg: configmod.GatewayConfig) -> None:
    p = pipeline_of(cfg)
    refused(run(p, call_for(cfg)), "900902", "no access token was presented", b"Bearer")
    # Another scheme's Authorization is not a bearer token.
    basic = {b"authorization": [b"Basic YTpi"]}
    refused(run(p, call_for(cfg, basic)), "900902", "no access token was presented", b"Bearer")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: jwtkit.token(KEY, jwtkit.claims(exp=1000)), "token has expired"),
        (lambda: jwtkit.token(OTHER, kid="ec-1"), "token signature is not valid"),
        (lambda: jwtkit.token(KEY)[:-4] + "AAAA", "token signature is not valid"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(iss="https://evil")),
         "token issuer is not accepted"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(iss=None)), "token issuer is not accepted"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(aud="billing")),
         "token audience is not accepted"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(aud=None)), "token audience is not accepted"),
        (lambda: jwtkit.token(jwtkit.ec("ec-1", "P-384")), "token algorithm is not allowed"),
        (lambda: jwtkit.token(jwtkit.rsa("ec-1")), "token algorithm is not allowed"),
        (lambda: jwtkit.unsigned(jwtkit.claims()), "token is not a valid JWT"),
        (lambda: jwtkit.unsigned(jwtkit.claims()) + "c2ln", "token algorithm is not allowed"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(exp=None)), "token is not a valid JWT"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(exp="soon")), "token is not a valid JWT"),
        (lambda: jwtkit.raw_token(KEY, {"alg": "ES256", "kid": "ec-1", "crit": ["x"], "x": 1},
                                   jwtkit.claims()), "token is not a valid JWT"),
        (lambda: jwtkit.token(KEY, cty="JWT"), "token is not a valid JWT"),
        (lambda: jwtkit.token(KEY, jwtkit.claims(nbf=2**40)), "token is not yet valid"),
        (lambda: "a.b", "token is not a valid JWT"),
        (lambda: "a.b.c.d.e", "token is not a valid JWT"),
        (lambda: "!!!.@@@.###", "token is not a valid JWT"),
        (lambda: "x" * 20000, "token is not a valid JWT"),
    ],
)
def test_refusals(cfg: configmod.GatewayConfig, make: Any, reason: str) -> None:
    p = pipeline_of(cfg)
    tok = make()
    for _ in range(2):  # the second from the verified-token cache, when it verified
        refused(run(p, call_for(cfg, bearer(tok))), "900901", reason, INVALID)


def test_leeway(pki: DevPki, tmp_path: Path) -> None:
    import time

    cfg = load(pki, tmp_path, {}, {"leeway_seconds": 60})
    p = pipeline_of(cfg)
    ok = jwtkit.token(KEY, jwtkit.claims(exp=int(time.time()) - 30, nbf=int(time.time()) + 30))
    assert isinstance(run(p, call_for(cfg, bearer(ok))), HeaderEdit)
    late = jwtkit.token(KEY, jwtkit.claims(exp=int(time.time()) - 90))
    refused(run(p, call_for(cfg, bearer(late))), "900901", "token has expired", INVALID)


def test_algorithm_must_be_configured(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, {}, {"algorithms": ["RS256"]})
    refused(run(pipeline_of(cfg), call_for(cfg, bearer(jwtkit.token(KEY)))),
            "900901", "token algorithm is not allowed", INVALID)


def test_token_without_kid_tries_fitting_keys(pki: DevPki, tmp_path: Path) -> None:
    nokid = jwtkit.ec(None)
    path = jwtkit.write_jwks(tmp_path / "two.json", OTHER, nokid)
    cfg = load(pki, tmp_path, {}, {"jwks": str(path)})
    assert isinstance(run(pipeline_of(cfg), call_for(cfg, bearer(jwtkit.token(nokid)))),
                      HeaderEdit)


@pytest.mark.parametrize(
    ("bound", "identity", "make", "reason"),
    [
        ("when_claimed", "same", "bound", None),
        ("when_claimed", "other", "bound", "token is not bound to the presented certificate"),
        ("when_claimed", "none", "bound",
         "token is bound to a certificate but none was presented"),
        ("when_claimed", "failed", "bound", "token is bound to a certificate but the presented "
         "one was refused: the certificate has been revoked"),
        ("when_claimed", "none", "plain", None),
        ("required", "same", "bound", None),
        ("required", "same", "plain", "token is not bound to the presented certificate"),
        ("off", "other", "bound", None),
        ("off", "none", "bound", None),
    ],
)
def test_certificate_binding(pki: DevPki, tmp_path: Path, bound: str, identity: str,
                             make: str, reason: str | None) -> None:
    cfg = load(pki, tmp_path, {"certificate_bound": bound}, {})
    cert = leaf(pki)
    who = {
        "same": verified(cert),
        "other": verified(leaf(pki, "partner-rsa")),
        "none": no_certificate(),
        "failed": failed(Source.HANDSHAKE, "the certificate has been revoked", (cert,)),
    }[identity]
    body = jwtkit.bound(cert) if make == "bound" else jwtkit.claims()
    p, tok = pipeline_of(cfg), jwtkit.token(KEY, body)
    for _ in range(2):  # the second from the verified-token cache
        out = run(p, call_for(cfg, bearer(tok), who))
        if reason is None:
            assert isinstance(out, HeaderEdit)
        else:
            refused(out, "900901", reason, INVALID)


def test_optional_jwt_beside_mutual_ssl(pki: DevPki, tmp_path: Path) -> None:
    """The WSO2 rule: with both optional, either passing is enough; a bad token alone fails."""
    cfg = load(pki, tmp_path, {"jwt": "optional", "mutual_ssl": "optional"}, {})
    p = pipeline_of(cfg)
    assert isinstance(run(p, call_for(cfg, identity=verified(leaf(pki)))), HeaderEdit)
    assert isinstance(run(p, call_for(cfg, bearer(jwtkit.token(KEY)))), HeaderEdit)
    out = run(p, call_for(cfg, bearer(jwtkit.token(KEY, jwtkit.claims(exp=5)))))
    assert isinstance(out, Refusal) and out.error.code == "900901"
    assert (b"WWW-Authenticate", INVALID) in out.headers


def test_authz_judge_applies_the_same_rules(cfg: configmod.GatewayConfig) -> None:
    p = pipeline_of(cfg)
    out = p.judge(call_for(cfg, bearer(jwtkit.token(KEY, jwtkit.claims(aud="x")))))
    assert isinstance(out, Refusal) and out.error.description == "token audience is not accepted"
    ok = p.judge(call_for(cfg, bearer(jwtkit.token(KEY))))
    assert isinstance(ok, HeaderEdit) and not ok  # judged only: no transform ran


# --------------------------------------------------------------------------- config


def check(pki: DevPki, tmp_path: Path, api: Mapping[str, Any], issuer: Mapping[str, Any],
          extra: str = "") -> list[str]:
    base: dict[str, Any] = {
        "name": "orders", "context": "/orders", "backend": "http://127.0.0.1:1/", "jwt": "optional",
    }
    base.update(api)
    from tests.harness import table

    text = gateway_config(pki, [base], port=0, extra=table("jwt_issuers", issuer, array=True)
                          + extra)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    parsed = configmod.parse_partial(tomllib.loads(text), path)
    problems = list(parsed.problems)
    if not problems:
        compile_pipelines(parsed.config, problems)
    return [p.split(": ", 1)[1] for p in problems]


@pytest.mark.parametrize(
    ("api", "issuer", "expect"),
    [
        ({}, {"name": "idp", "issuer": "i", "jwks_url": "https://x/j"},
         ["jwt_issuers[0].audiences: is required"]),
        ({}, {"name": "idp", "issuer": "i", "audiences": ["a"]},
         ["jwt_issuers[0].jwks: give exactly one of jwks (a file) and jwks_url"]),
        ({}, {"name": "idp", "issuer": "i", "audiences": ["a"], "jwks_url": "http://idp.example/j"},
         ["jwt_issuers[0].jwks_url: must be an https:// URL (http:// only to a loopback"]),
        ({}, {"name": "idp", "issuer": "i", "audiences": ["a"],
              "jwks_url": "https://u:secret@idp.example/j"},
         ["jwt_issuers[0].jwks_url: must not carry a fragment or a user:password"]),
        ({}, {"name": "idp", "issuer": "i", "audiences": ["a"], "jwks_url": "https://x/j",
              "algorithms": ["HS256", "none", "RS512"]},
         ["jwt_issuers[0].algorithms[0]: 'HS256' cannot be configured",
          "jwt_issuers[0].algorithms[1]: 'none' cannot be configured",
          "jwt_issuers[0].algorithms[2]: unknown algorithm 'RS512'"]),
        ({}, {"name": "idp", "issuer": "i", "audiences": ["a"], "jwks_url": "https://x/j",
              "leeway_seconds": -1, "colour": "red", "jwks_refresh_seconds": 0.1},
         ["jwt_issuers[0].jwks_refresh_seconds: must be at least 1 (second), got 0.1",
          "jwt_issuers[0].leeway_seconds: must be between 0 and 3600",
          "jwt_issuers[0].colour: unknown key"]),
        ({"jwt_issuers": ["nope"], "certificate_bound": "always", "jwt": "sometimes"},
         {"name": "idp", "issuer": "i", "audiences": ["a"], "jwks_url": "https://x/j"},
         ["apis[0].jwt: must be one of 'mandatory', 'optional', 'disabled', got 'sometimes'",
          "apis[0].certificate_bound: must be one of 'required', 'when_claimed', 'off'",
          "apis[0].jwt_issuers[0]: unknown issuer 'nope' (the [[jwt_issuers]] are: idp)"]),
    ],
)
def test_config_problems(pki: DevPki, tmp_path: Path, api: dict[str, Any],
                         issuer: dict[str, Any], expect: list[str]) -> None:
    got = check(pki, tmp_path, api, issuer)
    assert len(got) == len(expect), got
    for line, words in zip(got, expect, strict=True):
        assert line.startswith(words), (line, words)


def test_jwt_without_issuers_is_a_problem(pki: DevPki, tmp_path: Path) -> None:
    text = gateway_config(pki, [{"name": "o", "context": "/o", "backend": "http://127.0.0.1:1",
                                 "jwt": "mandatory"}], port=0)
    parsed = configmod.parse_partial(tomllib.loads(text), tmp_path / "g.toml")
    assert [p.split(": ", 1)[1] for p in parsed.problems] == [
        "apis[0].jwt: JWT is enabled but no [[jwt_issuers]] are defined"
    ]


BAD_JWKS: list[tuple[Any, str]] = [
    ("not json", "not JSON"),
    ({"keys": "x"}, 'not a JWKS: expected a JSON object with a "keys" list'),
    ({"keys": []}, "has no public signing key"),
    ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "is a symmetric key"),
    ({"keys": [dict(KEY.key.as_dict(private=True), kid="p")]}, "holds a private part (d)"),
    ({"keys": [{"kty": "EC", "crv": "secp256k1", "x": "a", "y": "b"}]}, "is on curve"),
    ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}, "is not a valid JWK"),
    ({"keys": [dict(KEY.public(), alg="RS256")]}, "which does not fit a EC key"),
    ({"keys": [KEY.public(), KEY.public()]}, "two keys have kid 'ec-1'"),
    ({"keys": [jwtkit.rsa("small", 1024).public()]}, "is a 1024-bit RSA key"),
]


@pytest.mark.parametrize(("doc", "says"), BAD_JWKS)
def test_bad_jwks_file_is_a_check_error(pki: DevPki, tmp_path: Path, doc: Any, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    got = check(pki, tmp_path, {},
                {"name": "idp", "issuer": "i", "audiences": ["a"], "jwks": str(path)})
    assert len(got) == 1 and got[0].startswith("jwt_issuers[0].jwks: "), got
    assert says in got[0], got


# --------------------------------------------------------------------------- the fetcher


class FakeGet:
    """Answers fetches from a queue the test controls; records each request."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.calls = 0

    def __call__(self, url: str, policy: object) -> Deferred[bytes]:
        self.calls += 1
        d: Deferred[bytes] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, *keys: jwtkit.SigningKey) -> None:
        self.pending.pop(0).callback(json.dumps(jwtkit.jwks_doc(*keys)).encode())

    def fail(self, error: Exception) -> None:
        self.pending.pop(0).errback(error)


def url_setup(pki: DevPki, tmp_path: Path) -> tuple[configmod.GatewayConfig, Pipeline,
                                                    FakeGet, Clock, Shared]:
    cfg = load(pki, tmp_path, {}, {"jwks_url": "https://idp.example/jwks.json",
                                   "jwks_refresh_seconds": 60})
    get, clock = FakeGet(), Clock()
    shared = Shared(jwks=jwks.JwksFetchers(clock=clock, get=get))
    return cfg, pipeline_of(cfg, shared), get, clock, shared


def test_fetcher_refreshes_refetches_once_per_30s_and_keeps_the_last_good_set(
    pki: DevPki, tmp_path: Path
) -> None:
    cfg, p, get, clock, shared = url_setup(pki, tmp_path)
    assert get.calls == 1  # fetched at start
    get.answer(KEY)
    assert isinstance(run(p, call_for(cfg, bearer(jwtkit.token(KEY)))), HeaderEdit)

    # A new kid: the request waits for one refetch, which brings the key.
    waiting = p.run(call_for(cfg, bearer(jwtkit.token(OTHER))))
    assert isinstance(waiting, Deferred) and get.calls == 2
    second = p.run(call_for(cfg, bearer(jwtkit.token(OTHER))))  # joins the same fetch
    assert isinstance(second, Deferred) and get.calls == 2
    get.answer(KEY, OTHER)
    assert isinstance(waiting.result, HeaderEdit) and isinstance(second.result, HeaderEdit)

    # Another unknown kid within 30 s: no refetch, refused at once.
    out = run(p, call_for(cfg, bearer(jwtkit.token(jwtkit.ec("ec-3")))))
    refused(out, "900901", "token signature is not valid", INVALID)
    assert get.calls == 2

    # 30 s later another unknown kid may fetch again.
    clock.advance(31)
    again = p.run(call_for(cfg, bearer(jwtkit.token(jwtkit.ec("ec-4")))))
    assert isinstance(again, Deferred) and get.calls == 3
    get.answer(KEY, OTHER)
    assert isinstance(again.result, Refusal)

    # The periodic refresh fails: the last good set stays in use.
    clock.advance(60)
    assert get.calls == 4
    get.fail(ConnectionRefusedError())
    fetcher = next(iter(shared.jwks))
    assert fetcher.stale and fetcher.failures == 1 and len(fetcher.keys or ()) == 2
    assert isinstance(run(p, call_for(cfg, bearer(jwtkit.token(OTHER)))), HeaderEdit)

    # A refused document (a private key published) is a failure too.
    clock.advance(60)
    get.pending.pop(0).callback(json.dumps({"keys": [KEY.key.as_dict(private=True)]}).encode())
    assert fetcher.failures == 2 and "private part" in (fetcher.last_error or "")
    assert isinstance(run(p, call_for(cfg, bearer(jwtkit.token(KEY)))), HeaderEdit)

    # Metrics say so.
    families = {f.name: f for f in jwks.JwksCollector(lambda: list(shared.jwks)).collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    url = "https://idp.example/jwks.json"
    assert samples[("twistedgw_jwks_stale", (("url", url),))] == 1
    assert samples[("twistedgw_jwks_fetches_total", (("result", "failure"), ("url", url)))] == 2
    assert samples[("twistedgw_jwks_keys", (("url", url),))] == 2


def test_fetcher_down_at_start_then_up(pki: DevPki, tmp_path: Path) -> None:
    cfg, p, get, clock, _shared = url_setup(pki, tmp_path)
    get.fail(ConnectionRefusedError())
    waiting = p.run(call_for(cfg, bearer(jwtkit.token(KEY))))  # no keys yet: one refetch
    assert isinstance(waiting, Deferred) and get.calls == 2
    get.fail(ConnectionRefusedError())
    refused(waiting.result, "900901", "token signature is not valid", INVALID)
    out = run(p, call_for(cfg, bearer(jwtkit.token(KEY))))  # within 30 s: no other
    refused(out, "900901", "token signature is not valid", INVALID)
    clock.advance(31)
    waiting = p.run(call_for(cfg, bearer(jwtkit.token(KEY))))
    assert isinstance(waiting, Deferred)
    get.answer(KEY)
    assert isinstance(waiting.result, HeaderEdit)


def test_fetchers_survive_a_recompile(pki: DevPki, tmp_path: Path) -> None:
    cfg, _p, get, _clock, shared = url_setup(pki, tmp_path)
    get.answer(KEY)
    p2 = pipeline_of(cfg, shared)  # a reload: same URL, same fetcher, no new fetch
    assert get.calls == 1
    assert isinstance(run(p2, call_for(cfg, bearer(jwtkit.token(KEY)))), HeaderEdit)


def test_fetch_that_raises_or_finishes_at_once(pki: DevPki, tmp_path: Path) -> None:
    calls: list[str] = []

    def boom(url: str, policy: object) -> Deferred[bytes]:
        calls.append(url)
        if len(calls) == 1:
            raise OSError("no route")
        return succeed(json.dumps(jwtkit.jwks_doc(KEY)).encode())

    clock = Clock()
    fetcher = jwks.JwksFetcher("https://x/j", clock=clock, get=boom)
    fetcher.start()
    assert fetcher.stale and fetcher.keys is None
    clock.advance(31)
    d = fetcher.refetch()
    assert d is not None and d.called and fetcher.keys is not None and not fetcher.stale
    fetcher.stop()


def test_a_hanging_fetch_does_not_hold_a_request_past_the_wait_limit(
    pki: DevPki, tmp_path: Path
) -> None:
    cfg, p, get, clock, _shared = url_setup(pki, tmp_path)
    get.answer(KEY)
    waiting = p.run(call_for(cfg, bearer(jwtkit.token(OTHER))))
    assert isinstance(waiting, Deferred) and not waiting.called
    clock.advance(jwks.WAIT_LIMIT)
    refused(waiting.result, "900901", "token signature is not valid", INVALID)
    get.answer(KEY, OTHER)  # arrives late: used by the next request
    assert isinstance(run(p, call_for(cfg, bearer(jwtkit.token(OTHER)))), HeaderEdit)


def test_a_config_in_force_without_the_url_stops_its_fetcher(pki: DevPki,
                                                              tmp_path: Path) -> None:
    cfg, _p, get, clock, shared = url_setup(pki, tmp_path)
    get.answer(KEY)
    shared.in_force(cfg)  # e.g. a reload of another config was refused: keep fetching
    clock.advance(60)
    assert get.calls == 2
    get.answer(KEY)
    other = load(pki, tmp_path, {}, {})  # the issuer now reads a file
    pipeline_of(other, shared)
    shared.in_force(other)
    clock.advance(3600)
    assert get.calls == 2  # no periodic fetch any more
    pipeline_of(cfg, shared)  # named again: fetched again at once
    assert get.calls == 3
    shared.stop()  # shutdown: no fetch scheduled any more
    get.answer(KEY)
    clock.advance(3600)
    assert get.calls == 3


def test_a_token_without_kid_tries_at_most_four_keys(pki: DevPki, tmp_path: Path) -> None:
    keys = [jwtkit.ec(f"k{i}") for i in range(6)]
    path = jwtkit.write_jwks(tmp_path / "six.json", *keys)
    cfg = load(pki, tmp_path, {}, {"jwks": str(path)})
    p = pipeline_of(cfg)
    fourth = jwtkit.token(jwtkit.SigningKey(None, "ES256", keys[3].key))
    fifth = jwtkit.token(jwtkit.SigningKey(None, "ES256", keys[4].key))
    assert isinstance(run(p, call_for(cfg, bearer(fourth))), HeaderEdit)
    refused(run(p, call_for(cfg, bearer(fifth))), "900901", "token signature is not valid",
            INVALID)


def test_verified_tokens_are_cached_but_claims_and_keys_are_rechecked(
    pki: DevPki, tmp_path: Path
) -> None:
    from twistedgw.pipeline import _jwt

    cfg, _p, get, clock, shared = url_setup(pki, tmp_path)
    get.answer(KEY)
    fetcher = next(iter(shared.jwks))
    issuer = _jwt.Issuer(cfg.jwt_issuers[0], fetcher)
    now = [1_000_000.0]
    scheme = _jwt.JwtScheme(cfg.apis[0], [issuer], now=lambda: now[0])
    tok = jwtkit.token(KEY, jwtkit.claims(iat=1_000_000, exp=1_000_100))
    calls: list[Any] = []
    real = _jwt._verifies

    def counting(*args: Any) -> bool:
        calls.append(args)
        return real(*args)

    _jwt._verifies = counting  # type: ignore[assignment]
    try:
        first = scheme.authenticate(call_for(cfg, bearer(tok)))
        again = scheme.authenticate(call_for(cfg, bearer(tok)))
        assert getattr(first, "passed", False) and getattr(again, "passed", False)
        assert len(calls) == 1  # the second request used the cache
        # The binding still depends on the caller, the expiry on the time.
        bound = jwtkit.token(KEY, jwtkit.bound(leaf(pki), iat=1_000_000, exp=1_000_100))
        assert getattr(scheme.authenticate(call_for(cfg, bearer(bound), verified(leaf(pki)))),
                       "passed", False)
        rsa = verified(leaf(pki, "partner-rsa"))
        other = scheme.authenticate(call_for(cfg, bearer(bound), rsa))
        assert getattr(other, "reason", None) == "token is not bound to the presented certificate"
        now[0] += 200
        late = scheme.authenticate(call_for(cfg, bearer(tok)))
        assert getattr(late, "reason", None) == "token has expired"
        now[0] -= 200
        # The IdP drops the key: the cached verdict no longer counts.
        clock.advance(60)
        get.answer(OTHER)
        gone = scheme.authenticate(call_for(cfg, bearer(tok)))
        if isinstance(gone, Deferred):  # the unknown kid asks for a refetch
            get.answer(OTHER)
            gone = gone.result
        assert getattr(gone, "reason", None) == "token signature is not valid"
    finally:
        _jwt._verifies = real  # type: ignore[assignment]


# --------------------------------------------------------------------------- hostile tokens


def _signed_over(key: jwtkit.SigningKey, head: str, body: str) -> str:
    """A token validly signed over exactly ``head.body`` (whatever their encoding)."""
    from joserfc.jws import JWSRegistry

    signature = JWSRegistry.algorithms[key.alg].sign(f"{head}.{body}".encode(), key.key)
    return f"{head}.{body}.{jwtkit.b64url(signature)}"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**309], ids=["1e400", "-1e400", "1e309"])
def test_huge_time_claims_are_not_a_jwt(cfg: configmod.GatewayConfig, claim: str,
                                        value: int) -> None:
    """#22 item 8: an integer too large for a float once raised OverflowError (a 500)."""
    tok = jwtkit.raw_token(KEY, {"alg": "ES256", "kid": "ec-1"}, jwtkit.claims(**{claim: value}))
    p = pipeline_of(cfg)
    for _ in range(2):  # and again, from the verified-token cache
        refused(run(p, call_for(cfg, bearer(tok))), "900901", "token is not a valid JWT", INVALID)


def _b64std(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("form", ["padded-head", "padded-body", "standard-alphabet"])
def test_jws_parts_must_be_base64url_without_padding(cfg: configmod.GatewayConfig,
                                                     form: str) -> None:
    """#22 item 11: RFC 7515 compact serialisation is base64url with no ``=`` padding."""
    head = json.dumps({"alg": "ES256", "kid": "ec-1"}).encode()
    # A claim whose JSON encodes with '+' and '/' in standard base64 and '-'/'_' in base64url.
    body = json.dumps(jwtkit.claims(note="??>>??>>~~~")).encode()
    if form == "padded-head":
        head += b" " * (3 - len(head) % 3 + 1)  # a length that needs padding
        h, b = _b64std(head).replace("+", "-").replace("/", "_"), jwtkit.b64url(body)
        assert h.endswith("=")
    elif form == "padded-body":
        body += b" " * (3 - len(body) % 3 + 1)
        h, b = jwtkit.b64url(head), base64.urlsafe_b64encode(body).decode()
        assert b.endswith("=")
    else:
        h, b = jwtkit.b64url(head), _b64std(body).rstrip("=")
        assert "+" in b or "/" in b
    tok = _signed_over(KEY, h, b)
    refused(run(pipeline_of(cfg), call_for(cfg, bearer(tok))), "900901",
            "token is not a valid JWT", INVALID)


@pytest.mark.parametrize("cnf", ["abc", {"x5t#S256": None}, {}, [], 7, {"x5t#S256": 5}])
@pytest.mark.parametrize("bound", ["when_claimed", "required"])
def test_malformed_cnf_is_an_invalid_token(pki: DevPki, tmp_path: Path, cnf: Any,
                                           bound: str) -> None:
    """#22 item 11: a present ``cnf`` other than ``{"x5t#S256": "<string>"}`` is no "not bound"."""
    cfg = load(pki, tmp_path, {"certificate_bound": bound}, {})
    tok = jwtkit.token(KEY, jwtkit.claims(cnf=cnf))
    out = run(pipeline_of(cfg), call_for(cfg, bearer(tok), verified(leaf(pki))))
    refused(out, "900901", "token is not a valid JWT", INVALID)


def test_non_canonical_base64url_is_refused(cfg: configmod.GatewayConfig) -> None:
    """#22 item 11: a last character with unused bits set decodes to the same bytes, so one
    signed token would have several spellings; RFC 4648 3.5's canonical form only."""
    good = jwtkit.token(KEY)
    p = pipeline_of(cfg)
    assert isinstance(run(p, call_for(cfg, bearer(good))), HeaderEdit)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    parts = good.split(".")
    changed = 0
    for i, part in enumerate(parts):
        unused = {2: 0x0F, 3: 0x03}.get(len(part) % 4)
        if unused is None:
            continue
        last = alphabet.index(part[-1])
        twin = part[:-1] + alphabet[last | 1]  # the same bytes, a set unused bit
        assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(part + "==")
        forged = ".".join([*parts[:i], twin, *parts[i + 1 :]])
        refused(run(p, call_for(cfg, bearer(forged))), "900901", "token is not a valid JWT",
                INVALID)
        changed += 1
    assert changed  # an ES256 signature is 86 characters: at least that part qualifies


HOSTILE_AUTHORIZATION = [
    b"Bearer" + b" " * 16000 + b"x y",  # #22 item 2: quadratic in the old scheme regex
    b"Bearer" + b" " * 16000 + b"x" + b" " * 300 + b"y",
    b"Bearer " + b"a." * 8000 + b" z",
    b"Bearer " + b"a" * 16000 + b". .",
    b"bearer" + b" \t" * 8000,
]


@pytest.mark.parametrize("value", HOSTILE_AUTHORIZATION, ids=range(len(HOSTILE_AUTHORIZATION)))
def test_hostile_bearer_values_are_refused_in_linear_time(cfg: configmod.GatewayConfig,
                                                          value: bytes) -> None:
    """The scheme and token are found without backtracking, and the value's length is
    bounded before anything else (the 10 ms rule; test_reactor_budget.py times it through a
    real gateway)."""
    p = pipeline_of(cfg)
    outs: list[Any] = []

    def refuse() -> None:
        outs.append(run(p, call_for(cfg, {b"authorization": [value]})))

    spent = least_cpu(refuse, 0.01)
    for out in outs:
        refused(out, "900901", "token is not a valid JWT", INVALID)
    assert spent < 0.01, f"{spent * 1000:.1f} ms for a {len(value)}-byte Authorization"


@pytest.mark.parametrize(
    "spelling", ["Bearer {}", "bearer {}", "BEARER {}", "Bearer   {}   ", "Bearer {} "]
)
def test_bearer_spellings_that_hold_a_token(cfg: configmod.GatewayConfig, spelling: str) -> None:
    tok = jwtkit.token(KEY)
    call = call_for(cfg, {b"authorization": [spelling.format(tok).encode()]})
    assert isinstance(run(pipeline_of(cfg), call), HeaderEdit)


def test_jwks_url_is_logged_and_labelled_without_its_query() -> None:
    """A JWKS URL may carry a key (``?api_key=...``) or user info: log lines and metric
    labels show its scheme, host, port and path only, as upstream log lines do."""
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    secret = "https://reader:pw-0ne@idp.example:8443/t1/jwks.json?api_key=S3CRET#x"
    twin = "https://idp.example:8443/t1/jwks.json?api_key=OTHER"
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        get, clock = FakeGet(), Clock()
        fetchers = jwks.JwksFetchers(clock=clock, get=get)
        fetcher = fetchers.get(secret, None, 60)
        fetchers.get(twin, None, 60)
        get.fail(ConnectionRefusedError())  # no key set yet: logged
        get.answer(KEY)  # the twin (never logged)
        clock.advance(60)
        get.answer(KEY)  # fetched again: logged
        get.answer(KEY)
        clock.advance(60)
        get.fail(ConnectionRefusedError())  # the last good set kept: logged
        get.answer(KEY)
    finally:
        globalLogPublisher.removeObserver(events)  # type: ignore[arg-type]
    said = [formatEvent(e) for e in events if "JWKS" in str(e.get("log_format", ""))]
    where = "https://idp.example:8443/t1/jwks.json"
    assert len(said) == 3 and all(line.split()[1].rstrip(":") == where for line in said), said
    assert fetcher.url == secret  # still fetched whole
    labels = {s.labels["url"] for f in jwks.JwksCollector(lambda: list(fetchers)).collect()
              for s in f.samples}
    assert labels == {where, f"{where} (2)"}
    for text in (*said, *labels):
        assert "S3CRET" not in text and "OTHER" not in text and "pw-0ne" not in text
    assert jwks.loggable("https://[::1]:9/j?k=v") == "https://[::1]:9/j"
    assert jwks.loggable("http://[::1/j") == "<unparsable URL>"
