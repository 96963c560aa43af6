"""Property tests: no token and no JWKS document can make the jwt scheme raise.

Arbitrary bearer values (random bytes, random JSON in JWS shape, real tokens
mutated) must end in a 401 Refusal, never a 5xx (``plugin_failed``) or an
exception; arbitrary JWKS documents must be refused with ``JwksError`` or give
a usable key set, and a fetched one must leave the scheme answering 401 or
passing a genuine token.
"""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from tests import jwtkit
from tests.harness import gateway_config, table
from twistedgw import config as configmod
from twistedgw.identity import no_certificate
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
GOOD = jwtkit.token(KEY)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_HEADER_KEYS = st.sampled_from(["alg", "kid", "typ", "crit", "cty", "jwk", "jku", "b64", "x5u"])
_CLAIM_KEYS = st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "cnf", "azp"])
_HEADERS = st.dictionaries(_HEADER_KEYS | st.text(max_size=5), _JSON, max_size=5).map(
    lambda h: {"alg": "ES256", "kid": "ec-1", **h} if len(h) % 2 else h
)
_CLAIMS = st.dictionaries(_CLAIM_KEYS | st.text(max_size=5), _JSON, max_size=8)


def _shaped(header: dict[str, Any], claims: dict[str, Any], sig: bytes) -> bytes:
    parts = (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(sig))
    return b".".join(parts)


def _mutated(index: int, byte: int) -> bytes:
    raw = bytearray(GOOD.encode())
    raw[index % len(raw)] = byte
    return bytes(raw)


_TOKENS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(_shaped, _HEADERS, _CLAIMS, st.binary(max_size=80)),
    st.builds(_mutated, st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
    st.lists(st.sampled_from([GOOD.encode(), b".", b"=", b"+", b"/", b"AAAA", b"e30"]),
             max_size=8).map(b"".join),
)


@pytest.fixture(scope="module")
def pipeline(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    tmp = tmp_path_factory.mktemp("jwtprop")
    path = jwtkit.write_jwks(tmp / "jwks.json", KEY)
    issuer = {"name": "idp", "issuer": jwtkit.ISSUER, "audiences": ["orders"], "jwks": str(path),
              "algorithms": ["ES256", "RS256", "PS256", "ES384", "EdDSA"]}
    api = {"name": "o", "context": "/o", "backend": "http://127.0.0.1:1", "jwt": "mandatory",
           "certificate_bound": "required", "mutual_ssl": "optional"}
    text = gateway_config(pki, [api], port=0, extra=table("jwt_issuers", issuer, array=True))
    cfg = configmod.parse(tomllib.loads(text), tmp / "g.toml")
    problems: list[str] = []
    built = compile_pipelines(cfg, problems)
    assert problems == []
    return built[cfg.apis[0]]


def _call(p: Pipeline, value: bytes) -> Call:
    headers = Headers({b"authorization": [value]})
    view = RequestView(b"GET", b"/o", None, HeaderView(headers), "127.0.0.1", True)
    return Call(view, p.api, no_certificate())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TOKENS, st.booleans())
def test_any_token_gets_a_401(pipeline: Pipeline, token: bytes, prefixed: bool) -> None:
    value = b"Bearer " + token if prefixed else token
    if b"\n" in value or b"\r" in value:
        value = value.replace(b"\n", b"").replace(b"\r", b"")
    out = pipeline.run(_call(pipeline, value))
    assert not isinstance(out, Deferred)  # file keys: never waits
    assert isinstance(out, Refusal), out
    assert out.error.status == 401 and out.error.code in ("900901", "900902")


_KEYISH = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["EC", "RSA", "OKP", "oct", "XYZ", ""]) | _JSON,
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "X25519"]) | _JSON,
        "x": st.binary(max_size=70).map(lambda b: _b64(b).decode()) | _JSON,
        "y": st.binary(max_size=70).map(lambda b: _b64(b).decode()) | _JSON,
        "n": st.binary(max_size=300).map(lambda b: _b64(b).decode()) | _JSON,
        "e": st.sampled_from(["AQAB", "Aw", "", "AA"]) | _JSON,
        "d": st.just("AAAA"),
        "kid": st.sampled_from(["ec-1", "k"]) | _JSON,
        "alg": st.sampled_from(["ES256", "RS256", "none", "HS256", "EdDSA"]) | _JSON,
        "use": st.sampled_from(["sig", "enc", "x"]) | _JSON,
        "key_ops": _JSON,
    },
)
_DOCS = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.lists(_KEYISH | st.just(KEY.public()), max_size=5).map(
        lambda keys: json.dumps({"keys": keys}).encode()
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCS)
def test_any_jwks_document_is_parsed_or_refused(doc: bytes) -> None:
    try:
        keys = jwks.parse_jwks(doc)
    except jwks.JwksError as e:
        assert str(e)
        return
    assert len(keys) >= 1
    for key in keys.keys:
        assert key.kty in ("RSA", "EC", "OKP")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(_DOCS)
def test_any_fetched_jwks_leaves_the_scheme_answering(pki: DevPki, tmp_path: Path,
                                                      doc: bytes) -> None:
    issuer = {"name": "idp", "issuer": jwtkit.ISSUER, "audiences": ["orders"],
              "jwks_url": "https://idp.example/j"}
    api = {"name": "o", "context": "/o", "backend": "http://127.0.0.1:1", "jwt": "mandatory"}
    text = gateway_config(pki, [api], port=0, extra=table("jwt_issuers", issuer, array=True))
    cfg = configmod.parse(tomllib.loads(text), tmp_path / "g.toml")

    def get(url: str, policy: object) -> Deferred[bytes]:
        return succeed(doc)

    problems: list[str] = []
    shared = Shared(jwks=jwks.JwksFetchers(clock=Clock(), get=get))
    p = compile_pipelines(cfg, problems, shared=shared)[cfg.apis[0]]
    for value in (GOOD, jwtkit.token(KEY, kid=None), "x.y.z"):
        out = p.run(_call(p, b"Bearer " + value.encode()))
        if isinstance(out, Deferred):  # a refetch within the same instant is refused
            out = out.result
        assert isinstance(out, Refusal | HeaderEdit), out
        if isinstance(out, Refusal):
            assert out.error.status == 401, out


# -- validly signed tokens ------------------------------------------------------------

_NUMBERS = st.sampled_from([10**400, -(10**400), 10**309, 2**63, -1, 0, 1.5, 1e308, -1e308])
_CLAIM_VALUE = _JSON | _NUMBERS | st.just(float("nan")) | st.just(float("inf"))
_SIGNED_CLAIMS = st.fixed_dictionaries(
    {},
    optional={name: _CLAIM_VALUE for name in ("iss", "aud", "exp", "nbf", "iat", "sub", "cnf",
                                              "azp", "keytype")},
).map(lambda changed: {**jwtkit.claims(azp="partner"), **changed})


@pytest.fixture(scope="module")
def claims_pipeline(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """jwt mandatory, tokens bound when they claim it, the consumer named by ``azp``."""
    tmp = tmp_path_factory.mktemp("jwtclaims")
    path = jwtkit.write_jwks(tmp / "jwks.json", KEY)
    issuer = {"name": "idp", "issuer": jwtkit.ISSUER, "audiences": [jwtkit.AUDIENCE],
              "jwks": str(path), "consumer_claim": "azp"}
    api = {"name": "o", "context": "/o", "backend": "http://127.0.0.1:1", "jwt": "mandatory",
           "mutual_ssl": "optional"}
    extra = table("jwt_issuers", issuer, array=True) + table(
        "consumers", {"name": "partner"}, array=True)
    text = gateway_config(pki, [api], port=0, extra=extra)
    cfg = configmod.parse(tomllib.loads(text), tmp / "g.toml")
    problems: list[str] = []
    built = compile_pipelines(cfg, problems)
    assert problems == []
    return built[cfg.apis[0]]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SIGNED_CLAIMS)
def test_any_claims_in_a_signed_token_pass_or_get_a_401(
    claims_pipeline: Pipeline, claims: dict[str, Any]
) -> None:
    """A token the issuer really signed, with any value at any claim the scheme reads
    (#22 item 8 was ``exp`` = 10**400 answering 500): it passes, or it is a 401."""
    token = jwtkit.raw_token(KEY, {"alg": "ES256", "kid": "ec-1"}, claims)
    seen = []
    for _ in range(2):  # and again, from the verified-token cache: the same answer
        out = claims_pipeline.run(_call(claims_pipeline, b"Bearer " + token.encode()))
        assert isinstance(out, Refusal | HeaderEdit), out
        if isinstance(out, Refusal):
            assert out.error.status == 401 and out.error.code == "900901", out
            seen.append(out.error.description)
        else:
            seen.append("allowed")
    assert seen[0] == seen[1], seen
