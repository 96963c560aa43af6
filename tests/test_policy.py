"""The combine rule (WSO2's), in memory: no sockets, no processes."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from twisted.web.http_headers import Headers
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twistedgw import reasons
from twistedgw.config import ApiConfig, ApiKey, Mode
from twistedgw.devpki import DevPki
from twistedgw.identity import ClientIdentity, Outcome, Source, failed, no_certificate
from twistedgw.policy import (
    Allow,
    ApiKeyAuthenticator,
    AuthContext,
    Deny,
    IAuthenticator,
    MutualSslAuthenticator,
    Policy,
    SchemeResult,
)

KEY = b"the-key"
KEYS = [ApiKey("app-one", hashlib.sha256(KEY).digest())]
MAND, OPT, OFF = Mode.MANDATORY, Mode.OPTIONAL, Mode.DISABLED


def api(mtls: Mode = OFF, key: Mode = OFF, aliases: frozenset[str] | None = None) -> ApiConfig:
    return ApiConfig(
        name="t",
        version="1",
        context="/t",
        backend="http://127.0.0.1:1",
        mutual_ssl=mtls,
        aliases=frozenset({"partner-root"}) if aliases is None else aliases,
        api_key=key,
    )


@pytest.fixture(scope="module")
def verified(pki: DevPki) -> ClientIdentity:
    issued = pki.issued["partner-app"]
    root = pki.authorities["partner-root"].cert
    return ClientIdentity(
        Source.HANDSHAKE,
        Outcome.VERIFIED,
        (*issued.full_chain, root),
        frozenset({"partner-root"}),
    )


def policy() -> Policy:
    return Policy([MutualSslAuthenticator(), ApiKeyAuthenticator(KEYS)])


def headers(key: bytes | None) -> Headers:
    h = Headers()
    if key is not None:
        h.addRawHeader(b"apikey", key)
    return h


def decide(identity: ClientIdentity, key: bytes | None, a: ApiConfig) -> Allow | Deny:
    return policy().decide(AuthContext(identity, headers(key)), a)


def denied(result: Allow | Deny) -> tuple[int, str, str]:
    assert isinstance(result, Deny), result
    return result.error.status, result.error.code, result.error.description


EXPIRED = failed(Source.HANDSHAKE, reasons.EXPIRED)
NONE = no_certificate()


def test_authenticators_provide_the_interface() -> None:
    verifyObject(IAuthenticator, MutualSslAuthenticator())
    verifyObject(IAuthenticator, ApiKeyAuthenticator(KEYS))


def test_open_api_allows_anything(verified: ClientIdentity) -> None:
    for identity in (verified, EXPIRED, NONE):
        for key in (KEY, b"wrong", None):
            assert decide(identity, key, api()) == Allow(())


def test_mandatory_mtls(verified: ClientIdentity) -> None:
    a = api(mtls=MAND)
    allowed = decide(verified, None, a)
    assert isinstance(allowed, Allow)
    assert allowed.principals == ("CN=partner-app,O=twistedgw dev",)
    assert denied(decide(NONE, KEY, a)) == (401, "900902", reasons.NONE)
    assert denied(decide(EXPIRED, KEY, a)) == (401, "900901", reasons.EXPIRED)


def test_alias_must_be_in_chain(verified: ClientIdentity) -> None:
    assert denied(decide(verified, None, api(mtls=MAND, aliases=frozenset({"other-root"})))) == (
        401,
        "900901",
        reasons.NOT_FOR_API,
    )
    # An API with no aliases accepts any verified certificate.
    no_aliases = dataclasses.replace(api(mtls=MAND), aliases=None)
    assert isinstance(decide(verified, None, no_aliases), Allow)
    # A verified certificate whose chain holds no truststore alias passes only when
    # the API does not name aliases.
    anonymous = dataclasses.replace(verified, trust_aliases=frozenset())
    assert denied(decide(anonymous, None, api(mtls=MAND)))[2] == reasons.NOT_FOR_API


def test_optional_alone_behaves_as_mandatory(verified: ClientIdentity) -> None:
    a = api(mtls=OPT)
    assert isinstance(decide(verified, None, a), Allow)
    assert denied(decide(NONE, None, a)) == (401, "900902", reasons.NONE)
    assert denied(decide(EXPIRED, None, a)) == (401, "900901", reasons.EXPIRED)
    k = api(key=OPT)
    assert isinstance(decide(NONE, KEY, k), Allow)
    assert denied(decide(NONE, None, k)) == (401, "900902", "no API key was presented")
    assert denied(decide(NONE, b"nope", k)) == (401, "900901", "API key is not valid")


def test_optional_mtls_with_mandatory_key_needs_only_the_key(verified: ClientIdentity) -> None:
    a = api(mtls=OPT, key=MAND)
    assert decide(NONE, KEY, a) == Allow(("apikey:app-one",))
    assert decide(EXPIRED, KEY, a) == Allow(("apikey:app-one",))
    both = decide(verified, KEY, a)
    assert isinstance(both, Allow)
    assert set(both.principals) == {"apikey:app-one", "CN=partner-app,O=twistedgw dev"}
    # A valid certificate does not stand in for the mandatory key.
    assert denied(decide(verified, None, a)) == (401, "900902", "no API key was presented")
    assert denied(decide(verified, b"nope", a)) == (401, "900901", "API key is not valid")


def test_mandatory_mtls_with_optional_key_needs_only_the_certificate(
    verified: ClientIdentity,
) -> None:
    a = api(mtls=MAND, key=OPT)
    assert isinstance(decide(verified, None, a), Allow)
    assert isinstance(decide(verified, b"wrong", a), Allow)
    assert denied(decide(NONE, KEY, a)) == (401, "900902", reasons.NONE)
    assert denied(decide(EXPIRED, KEY, a)) == (401, "900901", reasons.EXPIRED)


def test_both_mandatory_reports_the_first_failure(verified: ClientIdentity) -> None:
    a = api(mtls=MAND, key=MAND)
    assert isinstance(decide(verified, KEY, a), Allow)
    assert denied(decide(EXPIRED, None, a)) == (401, "900901", reasons.EXPIRED)
    assert denied(decide(NONE, b"wrong", a)) == (401, "900902", reasons.NONE)
    assert denied(decide(verified, b"wrong", a)) == (401, "900901", "API key is not valid")
    assert denied(decide(verified, None, a)) == (401, "900902", "no API key was presented")


def test_both_optional_presented_beats_missing(verified: ClientIdentity) -> None:
    """When nothing passes, a scheme that was tried and failed makes it 'Invalid'."""
    a = api(mtls=OPT, key=OPT)
    assert isinstance(decide(verified, None, a), Allow)
    assert isinstance(decide(NONE, KEY, a), Allow)
    assert isinstance(decide(EXPIRED, KEY, a), Allow)
    assert isinstance(decide(verified, b"wrong", a), Allow)
    # A bad certificate and no key: Invalid, and the description names only the certificate.
    assert denied(decide(EXPIRED, None, a)) == (401, "900901", reasons.EXPIRED)
    # No certificate and a wrong key: Invalid, naming only the key.
    assert denied(decide(NONE, b"wrong", a)) == (401, "900901", "API key is not valid")
    # Both presented and wrong: both named.
    status, code, description = denied(decide(EXPIRED, b"wrong", a))
    assert (status, code) == (401, "900901")
    assert reasons.EXPIRED in description and "API key is not valid" in description
    # Nothing presented: Missing, naming both.
    status, code, description = denied(decide(NONE, None, a))
    assert (status, code) == (401, "900902")
    assert reasons.NONE in description and "no API key was presented" in description


def test_api_key_checks() -> None:
    auth = ApiKeyAuthenticator(KEYS)
    a = api(key=MAND)
    ctx = AuthContext(NONE, headers(b"  " + KEY + b" "))
    assert auth.authenticate(ctx, a) == SchemeResult(True, True, principal="apikey:app-one")
    two = Headers({b"apikey": [KEY, KEY]})
    result = auth.authenticate(AuthContext(NONE, two), a)
    assert not result.passed and result.presented
    # The key is compared by digest: its digest is not a key.
    digest = headers(hashlib.sha256(KEY).hexdigest().encode())
    assert not auth.authenticate(AuthContext(NONE, digest), a).passed
    # The header name is case-insensitive, as HTTP says.
    upper = Headers()
    upper.addRawHeader(b"APIKEY", KEY)
    assert auth.authenticate(AuthContext(NONE, upper), a).passed


@implementer(IAuthenticator)
class AlwaysHeader:
    """A plugin scheme: passes when X-Test says yes."""

    name = "x_test"

    def __init__(self, mode: Mode) -> None:
        self._mode = mode

    def mode(self, api: ApiConfig) -> Mode:
        return self._mode

    def authenticate(self, context: AuthContext, api: ApiConfig) -> SchemeResult:
        value = context.headers.getRawHeaders(b"x-test")
        if not value:
            return SchemeResult(False, False, reason="no x-test")
        if value[0] == b"yes":
            return SchemeResult(True, True, principal="x-test")
        return SchemeResult(False, True, reason="x-test says no")


def test_a_plugin_scheme_joins_the_combine_rule() -> None:
    verifyObject(IAuthenticator, AlwaysHeader(OPT))
    p = Policy([MutualSslAuthenticator(), ApiKeyAuthenticator(KEYS), AlwaysHeader(OPT)])
    a = api(mtls=OPT)
    yes = Headers({b"x-test": [b"yes"]})
    no = Headers({b"x-test": [b"no"]})
    assert p.decide(AuthContext(NONE, yes), a) == Allow(("x-test",))
    result = p.decide(AuthContext(NONE, no), a)
    assert isinstance(result, Deny)
    assert result.error.code == "900901"
    assert result.error.description == "x-test says no"
    p = Policy([MutualSslAuthenticator(), AlwaysHeader(MAND)])
    result = p.decide(AuthContext(NONE, Headers()), api())
    assert isinstance(result, Deny) and result.error.code == "900902"
