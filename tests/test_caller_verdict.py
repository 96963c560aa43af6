"""A connection's later requests are judged exactly as its first (issue 27 items 3, 5).

The request path keeps per connection what it derives from the connection alone: the
caller (``http/_callers.py``) and, for pipelines whose verdict depends on the caller
alone (``Pipeline.per_caller``), the verdict and the header lines it forwards
(``http/_resource.CallerVerdict``). In memory (``bench/own_cost.py``'s harness: the real
front, request path and forwarder over in-memory transports), over APIs of each kind such
a pipeline has (mTLS mandatory or optional, aliases, identity rules, consumers) and every
``[identity] forward``, for callers that verify, fail and present nothing: the second
request of a connection gets the very backend head and answer a fresh connection's first
gets, without running the pipeline again; another connection of the same caller (one
that verified the same chain, or presented nothing) shares it (``callers.Shared``: one
verdict per caller and config, not a copy per idle connection, issue 27). Real-process
tests of the same:
``test_reload.py`` (a reload re-judges an open connection).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import frontkit
from twistedgw.http import _callers
from twistedgw.http import _verdicts as verdicts
from twistedgw.identity import Source, failed, no_certificate
from twistedgw.pipeline import _run
from twistedgw.testing.devpki import DevPki

REPO = Path(__file__).resolve().parent.parent

APIS = {
    "mandatory-aliases": 'mutual_ssl = "mandatory"\naliases = ["partner-root"]\n',
    "optional-any": 'mutual_ssl = "optional"\n',
    "identity-rules": (
        'mutual_ssl = "mandatory"\n'
        '[[apis.identities]]\nsubject = "CN=partner-app,O=twistedgw dev"\n'
    ),
    "consumers": 'mutual_ssl = "mandatory"\nconsumers = ["acme"]\n',
    # The backend's own Authorization (BackendCredentials), in place of the client's.
    "backend-credentials": (
        'mutual_ssl = "mandatory"\n[[apis.backend_credentials]]\nendpoint = "production"\n'
        'username = "svc"\npassword_file = "{password_file}"\n'
    ),
}
CONSUMERS = """
[[consumers]]
name = "acme"
[[consumers.certificates]]
subject = "CN=partner-app,O=twistedgw dev"
"""
FORWARD = {
    "none": "",
    "xfcc": '[identity]\nforward = "xfcc"\n',
    "rfc9440": '[identity]\nforward = "rfc9440"\n',
    "headers": (
        '[identity]\nforward = "headers"\n'
        '[identity.headers]\nsubject = "X-Client-Subject"\nsha256 = "X-Client-Sha256"\n'
        'san = "X-Client-San"\n'
    ),
}
# A client that forges what the gateway vouches for: none of it may reach the backend.
FORGED = (
    b"GET /bench/small?x=1 HTTP/1.1\r\nhost: localhost:8443\r\n"
    b"X-Forwarded-Client-Cert: Hash=forged\r\nClient-Cert: :Zm9yZ2Vk:\r\n"
    b"X-Consumer-Name: evil\r\nX-Client-Subject: CN=admin\r\nX-Other: kept\r\n"
    b"Authorization: Basic Zm9yZ2Vk\r\n\r\n"
)


def _same(answer: bytes) -> bytes:
    """An answer without its Date (the gateway's own errors carry the second's)."""
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


def _gateway(
    api: str, forward: str, pki: DevPki, tmp_path: Path, extra: str = ""
) -> tuple[Any, dict[str, Any]]:
    """The in-process gateway with ``api`` and ``forward``'s settings (and ``extra``
    config text), and the callers each test asks as: verified twice, failed, none."""
    own_cost = frontkit.own_cost()
    password = tmp_path / "backend-password"
    password.write_text("s3cret\n")
    apis = own_cost.API.split("mutual_ssl")[0] + APIS[api].format(password_file=password)
    extra = FORWARD[forward] + (CONSUMERS if api == "consumers" else "") + extra
    h = own_cost.Harness(tmp_path, apis=apis, extra=extra, pki=pki)
    expired = pki.issued["expired"].cert
    callers = {
        "partner": h.partner,
        "other": h.verified("other-app", "other-root"),
        "failed": failed(Source.HANDSHAKE, "certificate has expired", (expired,)),
        "none": no_certificate(),
    }
    return h, callers


@pytest.mark.parametrize("forward", sorted(FORWARD))
@pytest.mark.parametrize("api", sorted(APIS))
def test_a_connections_next_requests_are_judged_as_its_first(
    api: str, forward: str, pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_cost = frontkit.own_cost()
    h, callers = _gateway(api, forward, pki, tmp_path)
    runs: list[Any] = []
    run = _run.Pipeline.run
    monkeypatch.setattr(_run.Pipeline, "run", lambda self, call: runs.append(1) or run(self, call))
    for name, identity in callers.items():
        for request in (own_cost.REQUEST, FORGED):
            kept = h.connect(identity)
            first = h.exchange(kept, request)
            runs.clear()
            second = h.exchange(kept, request)
            assert runs == [], f"{name}: the pipeline ran again on the same connection"
            # Another connection of the same caller shares the verdict (callers.Shared),
            # except a failed handshake's: each such connection is judged on its own.
            other = h.exchange(h.connect(identity), request)
            assert runs == ([1] if name == "failed" else []), name
            runs.clear()
            _callers._shared = None  # nothing shared: a fresh connection judged afresh
            fresh = h.exchange(h.connect(identity), request)
            assert runs == [1]
            for got in (first, second, other):
                assert got[0] == fresh[0], name
                assert _same(got[1]) == _same(fresh[1]), name
            sent = first[0]
            assert b"forged" not in sent and b"evil" not in sent
            if forward == "headers":  # a configured identity header: the gateway's alone
                assert b"CN=admin" not in sent
            if request is FORGED and sent:
                assert b"\r\nX-Other: kept\r\n" in sent
                if api == "backend-credentials":  # svc:s3cret, never the client's
                    assert b"\r\nAuthorization: Basic c3ZjOnMzY3JldA==\r\n" in sent
                    assert b"Zm9yZ2Vk" not in sent
    # The verdicts differ by caller: the cache never answered one caller for another.
    statuses = {
        name: h.exchange(h.connect(identity))[1].split(b" ", 2)[1]
        for name, identity in callers.items()
    }
    assert statuses["partner"] == b"200"
    assert statuses["none"] != b"200" or api == "optional-any"


ASK = (
    b"GET /_twistedgw/authz HTTP/1.1\r\nhost: localhost:8443\r\n"
    b"X-Original-URI: /bench/small\r\nX-Original-Method: GET\r\n"
    b"X-Twistedgw-Nginx: answer\r\nX-Twistedgw-Api-Expected: bench%3A1\r\n"
    b"Authorization: Basic Zm9yZ2Vk\r\nCookie: session=c2VjcmV0\r\n\r\n"
)


@pytest.mark.parametrize("forward", ["none", "xfcc"])
@pytest.mark.parametrize("api", sorted(APIS))
def test_the_authz_endpoint_judges_a_verified_caller_again_as_at_first(
    api: str, forward: str, pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#26 per-decision: a pipeline whose verdict depends on the caller alone judges a
    verified caller once per config at the authz endpoint too; the next questions get the
    very answer a fresh judgement gives (identity headers, refusals, the record's caller),
    and what is kept holds nothing of the request that was asked about (its headers may
    carry anyone's credentials). A caller that failed or presented nothing is judged each
    time."""
    h, callers = _gateway(api, forward, pki, tmp_path, "[authz]\n")
    judged: list[Any] = []
    judge = _run.Pipeline.judge
    monkeypatch.setattr(_run.Pipeline, "judge",
                        lambda self, call: judged.append(call) or judge(self, call))
    answers = {}
    for name, identity in callers.items():
        _callers._shared = None
        first = h.exchange(h.connect(identity), ASK)[1]
        again = h.exchange(h.connect(identity), ASK)[1]
        assert len(judged) == (2 if name in ("failed", "none") else 1), name
        judged.clear()
        _callers._shared = None  # nothing kept: judged afresh
        fresh = h.exchange(h.connect(identity), ASK)[1]
        assert len(judged) == 1, name
        judged.clear()
        assert _same(first) == _same(again) == _same(fresh), name
        answers[name] = fresh.split(b" ", 2)[1]
        shared = _callers._shared
        assert shared is not None
        for entry in shared.judged.values():
            kept = entry[4]
            assert kept.request.headers.get(b"authorization") == (), name
            shown = repr(entry).encode()
            assert b"Zm9yZ2Vk" not in shown and b"c2VjcmV0" not in shown, name
    assert answers["partner"] == b"200"
    if api == "mandatory-aliases":  # a refusal kept is the refusal a fresh judgement gives
        assert answers["other"] == b"401", answers
    assert answers["none"] != b"200" or api == "optional-any"


@pytest.mark.parametrize("forward", sorted(FORWARD))
@pytest.mark.parametrize("api", ["consumers", "mandatory-aliases"])
def test_an_uncached_allows_answer_block_is_the_answer_its_fields_make(
    api: str, forward: str, pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#26 per-decision: with ``cache_seconds = 0`` an allow's answer fields (identity
    headers, the consumer, ``no-store``) go out as one block made once per config, API,
    caller and asker (``verdicts.allow_block``); the answer is the very one the header
    list gives (the path a front without ``respond_block`` takes), and the pipeline still
    judges every question its pipeline is not per-caller for."""
    h, callers = _gateway(api, forward, pki, tmp_path, "[authz]\ncache_seconds = 0\n")
    made: list[bytes | None] = []
    block = verdicts.allow_block
    monkeypatch.setattr(verdicts, "allow_block", lambda *a: made.append(block(*a)) or made[-1])
    partner = callers["partner"]
    first = h.exchange(h.connect(partner), ASK)[1]
    again = h.exchange(h.connect(partner), ASK)[1]
    assert len(made) == 2 and made[0] is not None and made[0] is made[1]  # made once
    monkeypatch.setattr(verdicts, "allow_block", lambda *a: None)
    _callers._shared = None  # (else the judgement kept would answer with its block)
    listed = h.exchange(h.connect(partner), ASK)[1]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
    assert _same(first) == _same(again) == _same(listed)
    # The rendered config's question: X-Accel-Expires: 0 keeps it out of NGINX's cache;
    # no Server, Date nor Cache-Control (NGINX reads none of them).
    assert b"\r\nX-Accel-Expires: 0\r\n" in first
    for name in (b"server:", b"date:", b"cache-control:"):
        assert name not in first.lower(), (name, first)
    if api == "consumers":
        assert b"\r\nx-consumer-name: acme\r\n" in first
    if forward != "none":
        assert b"\r\nx-twistedgw-set-" in first


def test_an_answer_block_refuses_a_value_that_would_split_the_head(
    pki: DevPki, tmp_path: Path
) -> None:
    """A consumer's name comes from a token's claim: one with a CR or LF gets no block
    (the header list's path makes them spaces), and a config reload's new config gets
    its own block, never the old config's."""
    h, callers = _gateway("mandatory-aliases", "xfcc", pki, tmp_path, "[authz]\n")
    config = h.gateway.runtime.config
    api = config.apis[0]
    partner = callers["partner"]
    asker = verdicts.asker(b"answer", False)
    assert verdicts.allow_block(config, api, partner, asker, None, "a\r\nX-Evil: 1") is None
    assert verdicts.allow_block(config, api, partner, asker, None, "a\x00") is None
    kept = verdicts.allow_block(config, api, partner, asker, None, "acme")
    assert kept is not None and b"\r\nx-consumer-name: acme" in kept
    assert b"x-twistedgw-set-x-forwarded-client-cert: " in kept
    reloaded = replace(config, identity=replace(config.identity, forward="none"))
    fresh = verdicts.allow_block(reloaded, api, partner, asker, None, "acme")
    assert fresh is not None and b"x-twistedgw-set-" not in fresh


def test_the_authz_question_is_not_routed_as_an_apis_request(
    pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#26 per-decision: a question whose target is ``[authz] path`` itself (what NGINX
    asks) skips the router (no API's context holds that path: routing would find none);
    any other spelling of it is routed as before, and the answers are the same."""
    from twistedgw.app._runtime import authz_target
    from twistedgw.config import AuthzConfig
    from twistedgw.http import Router
    from twistedgw.http._resource import route_request

    h, callers = _gateway("consumers", "none", pki, tmp_path, "[authz]\ncache_seconds = 0\n")
    runtime = h.gateway.runtime
    assert runtime.authz_target == b"/_twistedgw/authz"
    routed: list[bytes] = []
    parts = Router.parts
    monkeypatch.setattr(
        Router, "parts", lambda self, *a: routed.append(a[2]) or parts(self, *a))  # target
    skipped = h.exchange(h.connect(callers["partner"]), ASK)[1]
    assert skipped.startswith(b"HTTP/1.1 200 OK\r\n") and routed == []
    other = ASK.replace(b"GET /_twistedgw/authz ", b"GET /_twistedgw/./authz ", 1)
    asked = h.exchange(h.connect(callers["partner"]), other)[1]
    assert routed == [b"/_twistedgw/./authz"] and _same(asked) == _same(skipped)
    # What routing gives that target: no route, the path itself, no query.
    full = route_request(runtime, b"/_twistedgw/authz", b"GET", host=b"localhost:8443")
    assert (full.route, full.path, full.raw_path, full.query, full.problem) == (
        None, b"/_twistedgw/authz", b"/_twistedgw/authz", None, None)
    config = runtime.config
    context = config.apis[0].context  # the router matches contexts whatever their case
    for path, target in [
        (context.upper() + "/authz", None), ("/a/../authz", None), ("/a//authz", None),
        ("/x?y", None), ("/_tgw/authz", b"/_tgw/authz"),
    ]:
        assert authz_target(replace(config, authz=AuthzConfig(path=path))) == target, path
    assert authz_target(replace(config, authz=None)) is None


@pytest.mark.parametrize("cache", ["0", "60"])
def test_a_repeated_judgement_answers_with_the_block_kept_with_it(
    cache: str, pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#26 per-decision (session 10): a per-caller judgement kept at the authz endpoint
    carries the answer block of its allow to an ``answer`` asker when that allow may not
    be cached (``cache_seconds = 0``): a repeated question is answered from it without
    ``_allow``, byte for byte as the first; a cacheable allow (its lifetime depends on
    the time) and a question of another asker still go through ``_allow``."""
    from twistedgw.http import _resource

    h, callers = _gateway("consumers", "xfcc", pki, tmp_path,
                          f"[authz]\ncache_seconds = {cache}\n")
    allowed: list[object] = []
    allow = _resource._allow
    monkeypatch.setattr(_resource, "_allow",
                        lambda *a, **k: allowed.append(a) or allow(*a, **k))
    _callers._shared = None
    partner = callers["partner"]
    first = h.exchange(h.connect(partner), ASK)[1]
    again = h.exchange(h.connect(partner), ASK)[1]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
    assert _same(first) == _same(again)
    assert len(allowed) == (1 if cache == "0" else 2)
    shared = _callers._shared
    assert shared is not None
    (entry,) = shared.judged.values()
    assert (entry[6] is not None) == (cache == "0")
    if cache == "0":
        assert entry[6] is not None and entry[6] in first
    plain = ASK.replace(b"X-Twistedgw-Nginx: answer\r\n", b"")  # another asker
    allowed.clear()
    h.exchange(h.connect(partner), plain)
    h.exchange(h.connect(partner), plain)
    assert len(allowed) == 2
