"""The combine rule (WSO2's) and the pipeline, in memory: no sockets, no processes."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import pytest
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twistedgw.config import ApiConfig, ApiKey, Mode
from twistedgw.identity import ClientIdentity, Outcome, Source, failed, no_certificate
from twistedgw.identity import _reasons as reasons
from twistedgw.pipeline import (
    Call,
    HeaderEdit,
    IAuthoriser,
    IRequestTransform,
    IScheme,
    Refusal,
    SchemeResult,
    compile_pipelines,
)
from twistedgw.pipeline._builtin import ApiKeys, MutualSsl
from twistedgw.testing import fake_call, fake_config, pipeline, run
from twistedgw.testing.devpki import DevPki

KEY = b"the-key"
KEYS = (ApiKey("app-one", hashlib.sha256(KEY).digest()),)
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


@dataclass(frozen=True)
class Allow:
    principals: tuple[str, ...]


@dataclass(frozen=True)
class Deny:
    error: object


def call_for(identity: ClientIdentity, key: bytes | None, a: ApiConfig) -> Call:
    headers = {"apikey": key.decode()} if key is not None else None
    return fake_call(api=a, identity=identity, headers=headers)


def decide(identity: ClientIdentity, key: bytes | None, a: ApiConfig) -> Allow | Deny:
    """The API's compiled pipeline (as the runtime builds it) on one request."""
    problems: list[str] = []
    built = compile_pipelines(fake_config([a], api_keys=KEYS), problems)
    assert not problems
    call = call_for(identity, key, a)
    outcome = run(built[a], call)
    if isinstance(outcome, Refusal):
        return Deny(outcome.error)
    return Allow(call.principals)


def denied(result: Allow | Deny) -> tuple[int, str, str]:
    assert isinstance(result, Deny), result
    error = result.error
    return error.status, error.code, error.description  # type: ignore[attr-defined]


EXPIRED = failed(Source.HANDSHAKE, reasons.EXPIRED)
NONE = no_certificate()


def test_builtin_schemes_provide_the_interface() -> None:
    verifyObject(IScheme, MutualSsl(api(mtls=MAND)))
    verifyObject(IScheme, ApiKeys(api(key=MAND), KEYS))


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
    a = api(key=MAND)
    auth = ApiKeys(a, KEYS)
    padded = fake_call(api=a, headers={"apikey": "  the-key "})
    assert auth.authenticate(padded) == SchemeResult(True, True, principal="apikey:app-one",
                                                     sandbox=False)
    result = auth.authenticate(fake_call(api=a, headers={"apikey": ["the-key", "the-key"]}))
    assert not result.passed and result.presented
    # The key is compared by digest: its digest is not a key.
    digest = hashlib.sha256(KEY).hexdigest()
    assert not auth.authenticate(fake_call(api=a, headers={"apikey": digest})).passed
    # The header name is case-insensitive, as HTTP says.
    assert auth.authenticate(fake_call(api=a, headers={"APIKEY": "the-key"})).passed


@implementer(IScheme)
class XTest:
    """A plugin scheme: passes when X-Test says yes."""

    name = "x_test"

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def authenticate(self, call: Call) -> SchemeResult:
        value = call.request.headers.first(b"x-test")
        if value is None:
            return SchemeResult(False, False, reason="no x-test", challenge=b"XTest")
        if value == b"yes":
            return SchemeResult(True, True, principal="x-test")
        return SchemeResult(False, True, reason="x-test says no", challenge=b"XTest error")


def test_a_plugin_scheme_joins_the_combine_rule() -> None:
    verifyObject(IScheme, XTest(OPT))
    a = api(mtls=OPT)
    p = pipeline([MutualSsl(a), XTest(OPT)], api=a)
    call = fake_call(api=a, headers={"x-test": "yes"})
    assert isinstance(run(p, call), HeaderEdit) and call.principals == ("x-test",)
    result = run(p, fake_call(api=a, headers={"x-test": "no"}))
    assert isinstance(result, Refusal)
    assert result.error.code == "900901"
    assert result.error.description == "x-test says no"
    assert result.headers == ((b"WWW-Authenticate", b"XTest error"),)
    p = pipeline([XTest(MAND)], api=api())
    result = run(p, fake_call(api=api()))
    assert isinstance(result, Refusal) and result.error.code == "900902"
    assert result.headers == ((b"WWW-Authenticate", b"XTest"),)


@implementer(IScheme)
class Later:
    """An asynchronous scheme: answers when the test fires its Deferred."""

    name = "later"
    mode = MAND

    def __init__(self) -> None:
        self.pending: list[Deferred[SchemeResult]] = []

    def authenticate(self, call: Call) -> Deferred[SchemeResult]:
        d: Deferred[SchemeResult] = Deferred()
        self.pending.append(d)
        return d


@implementer(IAuthoriser, IRequestTransform)
class Recorder:
    """Records the order stages run in; refuses when told to."""

    name = "recorder"

    def __init__(self, log: list[str], refuse: bool = False) -> None:
        self.log = log
        self.refuse = refuse

    def authorise(self, call: Call) -> Refusal | None:
        self.log.append("authorise")
        if self.refuse:
            from twistedgw import errors

            return Refusal(errors.forbidden("no"))
        return None

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        self.log.append("transform")
        edit.set(b"X-Seen", b"1")


def test_stages_run_in_order_and_a_refusal_ends_the_pipeline() -> None:
    log: list[str] = []
    a = api()
    outcome = run(pipeline([Recorder(log)], api=a), fake_call(api=a))
    assert log == ["authorise", "transform"]
    assert isinstance(outcome, HeaderEdit) and outcome.set_values[b"x-seen"] == (b"X-Seen", b"1")
    log.clear()
    refused = run(pipeline([Recorder(log, refuse=True)], api=a), fake_call(api=a))
    assert log == ["authorise"] and isinstance(refused, Refusal)
    assert refused.error.status == 403


def test_all_synchronous_stages_create_no_deferred(verified: ClientIdentity) -> None:
    a = api(mtls=MAND, key=OPT)
    p = pipeline([MutualSsl(a), ApiKeys(a, KEYS), Recorder([])], api=a)
    outcome = p.run(call_for(verified, KEY, a))
    assert isinstance(outcome, HeaderEdit)


def test_an_async_scheme_suspends_and_resumes() -> None:
    later = Later()
    log: list[str] = []
    a = api()
    outcome = pipeline([later, Recorder(log)], api=a).run(fake_call(api=a))
    assert isinstance(outcome, Deferred) and log == []
    results: list[object] = []
    outcome.addCallback(results.append)
    later.pending[0].callback(SchemeResult(True, True, principal="later"))
    assert log == ["authorise", "transform"] and isinstance(results[0], HeaderEdit)
    # An async refusal ends it the same way.
    later = Later()
    log.clear()
    outcome = pipeline([later, Recorder(log)], api=a).run(fake_call(api=a))
    assert isinstance(outcome, Deferred)
    outcome.addCallback(results.append)
    later.pending[0].callback(SchemeResult(False, True, reason="later says no"))
    assert log == [] and isinstance(results[-1], Refusal)
    assert results[-1].error.description == "later says no"  # type: ignore[attr-defined]


@implementer(IAuthoriser)
class Broken:
    name = "broken"

    def __init__(self, how: str) -> None:
        self.how = how

    def authorise(self, call: Call) -> object:
        if self.how == "raise":
            raise RuntimeError("boom")
        if self.how == "fail":
            return "yes"  # neither None nor a Refusal: a plugin bug
        d: Deferred[None] = Deferred()
        d.errback(RuntimeError("async boom"))
        return d


@pytest.mark.parametrize("how", ["raise", "fail", "errback"])
def test_a_failing_plugin_answers_500_naming_it(how: str) -> None:
    log: list[str] = []
    a = api()
    outcome = run(pipeline([Broken(how), Recorder(log)], api=a), fake_call(api=a))
    assert isinstance(outcome, Refusal) and log == []
    assert outcome.error.status == 500
    assert outcome.error.body() == (
        b'{"code": "500", "message": "Internal Server Error", '
        b'"description": "plugin \'broken\' failed"}'
    )


def test_a_plugin_never_forwards_what_the_schemes_refused() -> None:
    """Authentication runs before any plugin's authoriser or transform."""
    log: list[str] = []
    a = api(key=MAND)
    p = pipeline([ApiKeys(a, KEYS), Recorder(log)], api=a)
    assert isinstance(run(p, fake_call(api=a)), Refusal) and log == []
    assert isinstance(run(p, fake_call(api=a, headers={"apikey": "the-key"})), HeaderEdit)


def test_an_async_stage_already_fired_stays_cheap() -> None:
    @implementer(IAuthoriser)
    class Fired:
        name = "fired"

        def authorise(self, call: Call) -> Deferred[None]:
            return succeed(None)

    a = api()
    assert isinstance(run(pipeline([Fired()], api=a), fake_call(api=a)), HeaderEdit)


def test_mutual_ssl_answers_each_subject_its_own_principal(pki: DevPki) -> None:
    """MutualSsl reuses one immutable result per subject: never another caller's."""
    root = pki.authorities["partner-root"].cert
    scheme = MutualSsl(api(mtls=MAND))
    seen = []
    for name in ("partner-app", "partner-direct", "partner-app"):
        chain = (*pki.issued[name].full_chain, root)
        identity = ClientIdentity(
            Source.HANDSHAKE, Outcome.VERIFIED, chain, frozenset({"partner-root"})
        )
        result = scheme.authenticate(fake_call(api=api(mtls=MAND), identity=identity))
        assert result.passed and result.principal == identity.subject
        seen.append(result.principal)
    assert seen[0] == seen[2] != seen[1]
    assert scheme.authenticate(fake_call(api=api(mtls=MAND), identity=no_certificate())) == (
        SchemeResult(False, False, reason=reasons.NONE)
    )
