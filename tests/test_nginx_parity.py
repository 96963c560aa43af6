"""Issue 26 through a real NGINX: what used to be handed to twistedgw whole now rides
NGINX's path (bearer tokens, hosts and SNI, several backends, tiers, header plugins,
HTTP/2), and every case gets the direct mode's status and error code.

One gateway (a direct TLS listener and the authz Unix socket) and one NGINX per variant
serve every test here, on a config that holds the example's APIs and one API per
feature; each behaviour is one test, asked both ways in the same run.
These tests FAIL (never skip) when nginx is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import jwtkit
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import Response
from tests.lbsupport import echoed_headers
from tests.test_nginx_fronted import Fronted, outcome, start_fronted
from twistedgw.testing.devpki import DevPki

TOKENS = "/tokens/items"

JWT_APIS = """
[[jwt_issuers]]
name = "idp"
issuer = "{issuer}"
jwks = "{jwks}"
audiences = ["{audience}"]
consumer_claim = "client_id"

[[consumers]]
name = "app-one"

[[apis]]
name = "Tokens"
version = "1"
context = "/tokens"
backend = "{backend}/tokens"
jwt = "mandatory"
"""


@pytest.fixture(scope="module")
def signing() -> jwtkit.SigningKey:
    return jwtkit.ec()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=["auth_request", "lua"])
def full(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         pki: DevPki, echo: BackendProcess, signing: jwtkit.SigningKey) -> Iterator[Fronted]:
    tmp = tmp_path_factory.mktemp(f"parity-{request.param}")
    jwks = jwtkit.write_jwks(tmp / "jwks.json", signing)
    extra = JWT_APIS.format(issuer=jwtkit.ISSUER, jwks=jwks, audience=jwtkit.AUDIENCE,
                            backend=echo.url)
    f = start_fronted(tmp, pki, echo, variant=request.param, extra=extra)
    yield f
    f.nginx.stop()
    f.gateway.stop()


def both(f: Fronted, path: str, client: str | None, headers: Any = ()
         ) -> tuple[Response, Response]:
    return f.direct(path, client, headers), f.via_nginx(path, client, headers)


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {value}"),)


def test_bearer_tokens_ride_nginxs_path(full: Fronted, signing: jwtkit.SigningKey) -> None:
    """Valid, expired, wrong audience, bound to this or another certificate, none: the
    direct mode's status, code and WWW-Authenticate, twice each (the second from the
    Lua variant's verdict cache). NGINX proxies the allowed ones itself: the backend
    sees no Authorization and the token's consumer. The Lua variant keeps a verdict
    under the token's SHA-256 (one question for a reused token, never past its exp);
    the auth_request variant asks on every request (its cache file would hold the key)."""
    partner = full.pki.clients["partner-direct"][0]
    now = int(time.time())
    tokens = {
        "valid": jwtkit.token(signing, jwtkit.claims(client_id="app-one")),
        "expired": jwtkit.token(signing, jwtkit.claims(exp=now - 3600, iat=now - 7200)),
        "audience": jwtkit.token(signing, jwtkit.claims(aud="someone-else")),
        "bound": jwtkit.token(signing, jwtkit.bound(partner)),
    }
    cases = [(None, ()), (None, bearer(tokens["valid"])), (None, bearer(tokens["expired"])),
             (None, bearer(tokens["audience"])), ("partner-direct", bearer(tokens["bound"])),
             ("other-app", bearer(tokens["bound"])), (None, bearer(tokens["bound"])),
             ("partner-direct", bearer(tokens["valid"])), (None, bearer("not.a.token"))]
    mismatches = []
    for _round in range(2):
        for client, headers in cases:
            direct, through = both(full, TOKENS, client, headers)
            got = (outcome(through), through.header("www-authenticate"))
            want = (outcome(direct), direct.header("www-authenticate"))
            if got != want:
                mismatches.append((client, headers, want, got))
    assert not mismatches, "\n".join(map(repr, mismatches))
    seen = echoed_headers(full.via_nginx(TOKENS, None, bearer(tokens["valid"])))
    assert "authorization" not in seen and seen["x-consumer-name"] == ["app-one"]
    # Caching: a reused token is judged once by the Lua variant, every time otherwise.
    fresh = jwtkit.token(signing, jwtkit.claims(exp=int(time.time()) + 3))
    full.wait_logged()
    before = full.authz_asked()
    for _ in range(3):
        assert full.via_nginx(TOKENS, None, bearer(fresh)).status == 200
    full.wait_logged()
    asked = full.authz_asked() - before
    assert asked == (1 if full.variant == "lua" else 3)
    # Never past the token's exp (3 s, under cache_seconds = 10): asked again after it.
    time.sleep(4)
    full.via_nginx(TOKENS, None, bearer(fresh))
    full.wait_logged()
    assert full.authz_asked() - before == asked + 1
