"""Identity rules and consumers in memory: the matcher, its parser, and the pipeline stages.

The end-to-end behaviour (real TLS, real processes) is in test_consumers.py;
here every edge of the matching rules is pinned down cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from tests.harness import gateway_config, table
from twistedgw import config as configmod
from twistedgw.config._rules import KEYS, IdentityRule, facts, parse_dn, parse_rule
from twistedgw.identity import ClientIdentity, Outcome, Source
from twistedgw.identity import _reasons as reasons
from twistedgw.pipeline import Call, HeaderEdit, HeaderView, Refusal, RequestView, compile_pipelines
from twistedgw.pipeline import _tiers as tiers
from twistedgw.pipeline._compile import Shared
from twistedgw.testing.devpki import IDENTITY_POLICY_OID, DevPki

# --------------------------------------------------------------------------- the matcher


def rule(**values: str) -> IdentityRule:
    problems: list[tuple[str, str]] = []
    compiled = parse_rule(values, lambda k, m: problems.append((k, m)))
    assert compiled is not None, problems
    return compiled


def problems_of(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    assert parse_rule(values, lambda k, m: problems.append((k, m))) is None
    return problems


def cert(pki: DevPki, name: str) -> x509.Certificate:
    return pki.issued[name].cert


def spki_b64(c: x509.Certificate) -> str:
    der = c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_sha256_ignores_colons_and_case(pki: DevPki) -> None:
    app = cert(pki, "identity-app")
    digest = hashlib.sha256(app.public_bytes(serialization.Encoding.DER)).hexdigest()
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert rule(sha256=digest).matches(app)
    assert rule(sha256=colons).matches(app)
    assert not rule(sha256=colons).matches(cert(pki, "identity-renewed"))


def test_spki_survives_renewal_with_the_same_key(pki: DevPki) -> None:
    app, renewed = cert(pki, "identity-app"), cert(pki, "identity-renewed")
    assert app != renewed
    pin = rule(spki_sha256=spki_b64(app))
    assert pin.matches(app) and pin.matches(renewed)
    assert not pin.matches(cert(pki, "partner-app"))


def test_subject_and_issuer_compare_as_names(pki: DevPki) -> None:
    app = cert(pki, "identity-app")
    assert app.subject.rfc4514_string() == "CN=identity-app,O=twistedgw dev"
    for written in (
        "CN=identity-app,O=twistedgw dev",
        "cn=IDENTITY-APP, o=TwistedGW  Dev",  # type names and values: any case; spaces
        "2.5.4.3=identity-app,2.5.4.10=twistedgw dev",  # dotted OIDs
        "CN=identity\\2Dapp,O=twistedgw\\ dev",  # escapes
    ):
        assert rule(subject=written).matches(app), written
    # Attribute order as written: the same attributes the other way round are another name.
    assert not rule(subject="O=twistedgw dev,CN=identity-app").matches(app)
    assert not rule(subject="CN=identity-app").matches(app)  # a name, not a substring
    assert not rule(subject="CN=identity-app,O=twistedgw dev,C=DE").matches(app)
    issuer = "CN=twistedgw dev partner issuing CA,O=twistedgw dev"
    assert rule(issuer=issuer).matches(app)
    assert not rule(issuer=issuer).matches(cert(pki, "partner-direct"))
    assert not rule(subject=issuer).matches(app)


def test_multi_valued_rdn_is_a_set() -> None:
    assert parse_dn("CN=a+O=b,C=US") == parse_dn("O=B + CN=A, C=us")
    assert parse_dn("CN=a+O=b,C=US") != parse_dn("CN=a,O=b,C=US")


def test_common_name(pki: DevPki) -> None:
    assert rule(common_name="identity-app").matches(cert(pki, "identity-app"))
    assert rule(common_name="Identity-App").matches(cert(pki, "identity-app"))
    assert not rule(common_name="identity").matches(cert(pki, "identity-app"))


def test_san_dns_wildcard_is_one_label(pki: DevPki) -> None:
    app = cert(pki, "identity-app")  # DNS SAN api.partner.example
    assert rule(san_dns="api.partner.example").matches(app)
    assert rule(san_dns="API.Partner.Example.").matches(app)
    assert rule(san_dns="*.partner.example").matches(app)
    assert not rule(san_dns="partner.example").matches(app)
    assert not rule(san_dns="*.api.partner.example").matches(app)
    # The CN is not a DNS SAN.
    assert not rule(san_dns="identity-app").matches(app)


def test_san_dns_wildcard_edges() -> None:
    from twistedgw.config._rules import _dns_matches

    assert _dns_matches("*.partner.example", "a.partner.example")
    assert not _dns_matches("*.partner.example", "a.b.partner.example")
    assert not _dns_matches("*.partner.example", ".partner.example")
    assert not _dns_matches("*.partner.example", "partner.example")
    assert not _dns_matches("a.partner.example", "*.partner.example")


def test_san_uri_exact_and_prefix(pki: DevPki) -> None:
    app = cert(pki, "identity-app")  # spiffe://partner.example/ns/prod/sa/billing
    assert rule(san_uri="spiffe://partner.example/ns/prod/sa/billing").matches(app)
    assert not rule(san_uri="spiffe://partner.example/ns/prod/sa/bill").matches(app)
    assert rule(san_uri="spiffe://partner.example/*").matches(app)
    assert rule(san_uri="spiffe://partner.example/ns/prod/*").matches(app)
    assert not rule(san_uri="spiffe://partner.example/ns/dev/*").matches(app)
    assert not rule(san_uri="spiffe://partner.exam/*").matches(app)
    assert not rule(san_uri="spiffe://partner.example/ns/prod/sa/billing/*").matches(app)


def test_san_uri_prefix_edges() -> None:
    from twistedgw.config._rules import _uri_matches

    prefix = "spiffe://acme.example/*"
    assert _uri_matches(prefix, "spiffe://acme.example/a")
    assert not _uri_matches(prefix, "spiffe://acme.example/")  # nothing under it
    assert not _uri_matches(prefix, "spiffe://acme.example")
    assert not _uri_matches(prefix, "spiffe://acme.example.evil/a")
    assert not _uri_matches("spiffe://acme.example/ns/a/*", "spiffe://acme.example/ns/a/../b")
    assert not _uri_matches(prefix, "spiffe://acme.example/./a")


def test_san_email_and_policy(pki: DevPki) -> None:
    app = cert(pki, "identity-app")
    assert rule(san_email="billing@partner.example").matches(app)
    assert rule(san_email="billing@PARTNER.example").matches(app)  # the domain's case
    assert not rule(san_email="Billing@partner.example").matches(app)  # not the local part's
    assert not rule(san_email="billing@other.example").matches(app)
    assert rule(policy_oid=IDENTITY_POLICY_OID).matches(app)
    assert not rule(policy_oid="1.3.6.1.4.1.55555.1.2").matches(app)
    assert not rule(policy_oid=IDENTITY_POLICY_OID).matches(cert(pki, "partner-app"))


def test_every_key_of_an_entry_must_hold(pki: DevPki) -> None:
    app = cert(pki, "identity-app")
    both = rule(san_dns="*.partner.example", policy_oid=IDENTITY_POLICY_OID)
    assert both.matches(app)
    assert not both.matches(cert(pki, "identity-renewed"))  # the DNS SAN, but no policy


def test_facts_are_computed_once_per_certificate(pki: DevPki) -> None:
    app = cert(pki, "identity-app")
    assert facts(app) is facts(app)


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"sha256": "zz"}, "sha256", "64 hex digits"),
        ({"sha256": "ab" * 31}, "sha256", "64 hex digits"),
        ({"spki_sha256": "not base64!"}, "spki_sha256", "base64 SHA-256"),
        ({"spki_sha256": base64.b64encode(b"x" * 20).decode()}, "spki_sha256", "base64 SHA-256"),
        ({"subject": "garbage"}, "subject", "is not TYPE=value"),
        ({"subject": "CN=a,XY=b"}, "subject", "unknown attribute type 'XY'"),
        ({"subject": ""}, "subject", "is empty"),
        ({"issuer": "CN=a\\"}, "issuer", "lone backslash"),
        ({"issuer": "CN=#0403616263"}, "issuer", "hex-encoded"),
        ({"issuer": "CN="}, "issuer", "empty value"),
        ({"common_name": " "}, "common_name", "is empty"),
        ({"san_dns": "a..b"}, "san_dns", "must be a DNS name"),
        ({"san_dns": "a.*.example"}, "san_dns", "must be a DNS name"),
        ({"san_dns": "*.example"}, "san_dns", "must be a DNS name"),
        ({"san_uri": "no-scheme"}, "san_uri", "absolute URI"),
        ({"san_uri": "spiffe://a/*/b"}, "san_uri", "final '/*'"),
        ({"san_uri": "spiffe://a*"}, "san_uri", "final '/*'"),
        ({"san_email": "nobody"}, "san_email", "e-mail address"),
        ({"policy_oid": "1.2.x"}, "policy_oid", "dotted OID"),
        ({"policy_oid": "01.2"}, "policy_oid", "dotted OID"),
        ({"policy_oid": "1.40"}, "policy_oid", "dotted OID"),
        ({"colour": "blue"}, "colour", "unknown key"),
        ({"sha256": 5}, "sha256", "expected a string"),
        ({}, "", "needs at least one of"),
    ],
)
def test_malformed_values_name_the_key(values: dict[str, Any], key: str, words: str) -> None:
    (found,) = problems_of(values)
    assert found[0] == key
    assert words in found[1], found[1]


def test_every_problem_of_an_entry_at_once() -> None:
    found = problems_of({"sha256": "zz", "policy_oid": "x", "san_dns": "ok.example", "k": "v"})
    assert sorted(k for k, _m in found) == ["k", "policy_oid", "sha256"]


# --------------------------------------------------------------------------- the stages


SECRET = "acme-secret"


def load(pki: DevPki, tmp_path: Path, apis: list[dict[str, Any]], extra: str = "") -> Any:
    text = gateway_config(
        pki, apis, port=0, api_keys={"acme-key": SECRET, "loose-key": "loose"}, extra=extra
    )
    return configmod.parse(tomllib.loads(text), tmp_path / "gateway.toml")


CONSUMERS = (
    table("consumers", {"name": "acme", "api_keys": ["acme-key"],
                        "certificates": [{"san_uri": "spiffe://acme.example/*"}]}, array=True)
    + table("consumers", {"name": "globex",
                          "certificates": [{"san_uri": "spiffe://globex.example/*"}]}, array=True)
    + table("consumers", {"name": "partners", "api_keys": ["acme-key"],
                          "certificates": [{"issuer": "CN=twistedgw dev partner issuing CA, "
                                                      "O=twistedgw dev"}]}, array=True)
)


def api(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1", "context": f"/{name}",
            "backend": "http://127.0.0.1:1", **extra}


def verified(pki: DevPki, name: str, aliases: frozenset[str] = frozenset({"partner-root"}),
             source: Source = Source.HANDSHAKE) -> ClientIdentity:
    return ClientIdentity(source, Outcome.VERIFIED, pki.issued[name].full_chain, aliases)


def call_for(cfg: Any, context: str, identity: ClientIdentity,
             headers: Mapping[str, str] | None = None) -> Call:
    raw = Headers()
    for k, v in (headers or {}).items():
        raw.addRawHeader(k.encode(), v.encode())
    api_cfg = next(a for a in cfg.apis if a.context == context)
    view = RequestView(b"GET", context.encode() + b"/x", None, HeaderView(raw), "127.0.0.1", True)
    return Call(view, api_cfg, identity)


def run(cfg: Any, call: Call, shared: Shared | None = None) -> Refusal | HeaderEdit:
    problems: list[str] = []
    pipelines = compile_pipelines(cfg, problems, shared=shared)
    assert problems == []
    outcome = pipelines[call.api].run(call)
    assert isinstance(outcome, (Refusal, HeaderEdit))
    return outcome


def refusal(outcome: Refusal | HeaderEdit) -> tuple[int, str, str, str]:
    assert isinstance(outcome, Refusal), outcome
    e = outcome.error
    return e.status, e.code, e.message, e.description


def test_identity_rules_fail_the_certificate(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("ids", mutual_ssl="mandatory", identities=[{"san_dns": "*.partner.example"},
                                                       {"common_name": "partner-direct"}]),
        api("aliased", mutual_ssl="mandatory", aliases=["other-root"],
            identities=[{"common_name": "nobody"}]),
    ])
    assert isinstance(run(cfg, call_for(cfg, "/ids", verified(pki, "identity-app"))), HeaderEdit)
    assert isinstance(run(cfg, call_for(cfg, "/ids", verified(pki, "partner-direct"))),
                      HeaderEdit)
    mismatch = call_for(cfg, "/ids", verified(pki, "partner-app"))
    assert refusal(run(cfg, mismatch)) == (
        401, "900901", "Invalid Credentials", "certificate does not match this API's identity rules"
    )
    assert mismatch.identity.outcome is Outcome.FAILED
    assert mismatch.identity.reason == reasons.IDENTITY_RULES
    # Header certificates are judged alike.
    header = call_for(cfg, "/ids", verified(pki, "partner-app", source=Source.HEADER))
    assert refusal(run(cfg, header))[3] == reasons.IDENTITY_RULES
    # The alias check comes first: its reason, not the rules', for a certificate of another CA.
    assert refusal(run(cfg, call_for(cfg, "/aliased", verified(pki, "partner-app"))))[3] == (
        reasons.NOT_FOR_API
    )


def test_consumer_by_certificate_and_key_in_config_order(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("open-mtls", mutual_ssl="optional", api_key="optional"),
        api("acl", mutual_ssl="optional", api_key="optional", consumers=["acme"]),
    ], extra=CONSUMERS)
    # acme-app's URI matches acme; its issuer matches partners too: acme comes first.
    c = call_for(cfg, "/open-mtls", verified(pki, "acme-app"))
    edit = run(cfg, c)
    assert c.consumer == "acme"
    assert isinstance(edit, HeaderEdit)
    assert edit.set_values[b"x-consumer-name"] == (b"X-Consumer-Name", b"acme")
    # partner-app matches only the issuer of partners.
    c = call_for(cfg, "/open-mtls", verified(pki, "partner-app"))
    run(cfg, c)
    assert c.consumer == "partners"
    # globex-app chains to other-root: the API takes any trusted certificate.
    c = call_for(cfg, "/open-mtls", verified(pki, "globex-app", frozenset({"other-root"})))
    run(cfg, c)
    assert c.consumer == "globex"
    # The key belongs to acme (and to partners, later in config order).
    c = call_for(cfg, "/open-mtls", ClientIdentity(Source.HANDSHAKE, Outcome.NONE),
                 {"apikey": SECRET})
    run(cfg, c)
    assert c.consumer == "acme"
    # A key no consumer owns: authenticated, but no consumer; a forged header is dropped.
    c = call_for(cfg, "/open-mtls", ClientIdentity(Source.HANDSHAKE, Outcome.NONE),
                 {"apikey": "loose", "X-Consumer-Name": "acme"})
    edit = run(cfg, c)
    assert c.consumer is None
    assert isinstance(edit, HeaderEdit)
    assert b"x-consumer-name" in edit.removed and b"x-consumer-name" not in edit.set_values


def test_consumer_acl(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("acl", mutual_ssl="optional", api_key="optional", consumers=["acme"]),
    ], extra=CONSUMERS)
    assert isinstance(run(cfg, call_for(cfg, "/acl", verified(pki, "acme-app"))), HeaderEdit)
    globex = call_for(cfg, "/acl", verified(pki, "globex-app", frozenset({"other-root"})))
    assert refusal(run(cfg, globex)) == (
        403, "900908", "Resource Forbidden", "consumer 'globex' is not allowed on this API"
    )
    nobody = call_for(cfg, "/acl", ClientIdentity(Source.HANDSHAKE, Outcome.NONE),
                      {"apikey": "loose"})
    assert refusal(run(cfg, nobody)) == (
        403, "900908", "Resource Forbidden", "the caller is not a known consumer"
    )
    # Authentication still comes first: no credentials at all is a 401.
    assert refusal(run(cfg, call_for(cfg, "/acl", ClientIdentity(Source.HANDSHAKE,
                                                                  Outcome.NONE))))[0] == 401


def test_certificate_counts_only_when_it_passed_this_api(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("keys-only", api_key="mandatory", consumers=["acme"]),
        api("partner-only", mutual_ssl="optional", api_key="optional", aliases=["partner-root"],
            consumers=["globex"]),
    ], extra=CONSUMERS)
    # A verified acme certificate on an API without mTLS names nobody; the key does.
    c = call_for(cfg, "/keys-only", verified(pki, "acme-app"), {"apikey": "loose"})
    assert refusal(run(cfg, c))[3] == "the caller is not a known consumer"
    # globex's certificate is not under this API's alias: it did not pass, names nobody.
    c = call_for(cfg, "/partner-only", verified(pki, "globex-app", frozenset({"other-root"})),
                 {"apikey": "loose"})
    assert refusal(run(cfg, c))[3] == "the caller is not a known consumer"


def test_scheme_consumers_that_are_not_configured_are_ignored(pki: DevPki,
                                                              tmp_path: Path) -> None:
    from twistedgw.pipeline._consumers import ConsumerMapping, Directory

    cfg = load(pki, tmp_path, [api("acl", consumers=["acme"])], extra=CONSUMERS)
    stage = ConsumerMapping(cfg.apis[0], Directory(cfg.consumers))
    c = call_for(cfg, "/acl", ClientIdentity(Source.HANDSHAKE, Outcome.NONE))
    c.presented_consumers = ("stranger", "globex", "acme")
    assert isinstance(stage.authorise(c), type(None))
    assert c.consumer == "acme"  # first in config order, whatever order schemes said
    c.presented_consumers = ("stranger",)
    assert refusal(stage.authorise(c) or HeaderEdit())[3] == "the caller is not a known consumer"
    assert c.consumer is None


def test_tiers_by_consumer_share_one_bucket(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("tiered", mutual_ssl="optional", api_key="optional", tiers=[
            {"consumer": "acme", "requests_per_minute": 2},
            {"alias": "partner-root", "requests_per_minute": 100},
        ]),
    ], extra=CONSUMERS)
    now = [1000.0]
    shared = Shared(throttle=tiers.TierThrottle(clock=lambda: now[0]))
    none = ClientIdentity(Source.HANDSHAKE, Outcome.NONE)
    # acme by certificate, then by key: one budget of 2.
    assert isinstance(run(cfg, call_for(cfg, "/tiered", verified(pki, "acme-app")), shared),
                      HeaderEdit)
    assert isinstance(run(cfg, call_for(cfg, "/tiered", none, {"apikey": SECRET}), shared),
                      HeaderEdit)
    over = run(cfg, call_for(cfg, "/tiered", none, {"apikey": SECRET}), shared)
    assert refusal(over)[:2] == (429, "900800")
    assert refusal(over)[3] == "the consumer's tier limit was exceeded"
    assert isinstance(over, Refusal) and dict(over.headers)[b"Retry-After"] == b"30"
    # partners' certificate falls to the alias tier: a bucket of its own.
    assert isinstance(run(cfg, call_for(cfg, "/tiered", verified(pki, "partner-app")), shared),
                      HeaderEdit)
    now[0] += 30  # one token back
    assert isinstance(run(cfg, call_for(cfg, "/tiered", verified(pki, "acme-app")), shared),
                      HeaderEdit)


def test_tier_selection_and_keys(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [
        api("t", mutual_ssl="optional", tiers=[
            {"alias": "other-root", "requests_per_minute": 1},
            {"consumer": "acme", "requests_per_minute": 2},
            {"alias": "partner-root", "requests_per_minute": 3},
        ]),
    ], extra=CONSUMERS)
    a = cfg.apis[0]
    acme = verified(pki, "acme-app")
    assert tiers.tier_for(a, acme, "acme") == a.tiers[1]  # config order: consumer before alias
    assert tiers.tier_for(a, acme, None) == a.tiers[2]
    assert tiers.tier_for(a, None, "acme") == a.tiers[1]
    assert tiers.tier_for(a, None, "globex") is None
    assert tiers.bucket_key(a.tiers[1], acme) == b"consumer:acme"
    key = tiers.bucket_key(a.tiers[2], acme)
    assert key is not None and key.startswith(b"leaf:")
    assert tiers.bucket_key(a.tiers[2], None) is None


# --------------------------------------------------------------------------- observe


def test_access_log_and_metric_label_carry_only_configured_consumers(
    pki: DevPki, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from twistedgw.app import Metrics, access_entry
    from twistedgw.http import RequestRecord

    cfg = load(pki, tmp_path, [api("a")], extra=CONSUMERS)
    metrics = Metrics(lambda: SimpleNamespace(config=cfg, keystore=None,  # type: ignore[arg-type,return-value]
                                              truststore=None))

    def record(consumer: str | None) -> RequestRecord:
        return RequestRecord(0.0, 0.001, "127.0.0.1", "GET", "/a/x", cfg.apis[0], 200, 2, None,
                             consumer=consumer)

    for consumer in ("acme", "acme", None, "made-up-by-a-plugin"):
        metrics.observe(record(consumer))

    def count(consumer: str) -> float | None:
        return metrics.registry.get_sample_value(
            "twistedgw_requests_total", {"api": "a:1", "status": "200", "consumer": consumer}
        )

    assert count("acme") == 2
    assert count("none") == 2
    assert count("made-up-by-a-plugin") is None
    assert access_entry(record("acme"))["consumer"] == "acme"
    assert access_entry(record(None))["consumer"] is None


def test_revoked_stays_revoked_and_rules_see_header_certificates(pki: DevPki,
                                                                  tmp_path: Path) -> None:
    """Revocation runs first: its reason wins over the identity rules'."""

    class Revoker:
        def check(self, chain: tuple[x509.Certificate, ...]) -> str | None:
            return reasons.REVOKED if chain[0].subject == cert(pki, "identity-app").subject \
                else None

    cfg = load(pki, tmp_path, [api("ids", mutual_ssl="mandatory",
                                   identities=[{"common_name": "partner-direct"}])])
    pipelines = compile_pipelines(cfg, [], revocation=Revoker())
    c = call_for(cfg, "/ids", verified(pki, "identity-app"))
    assert refusal(pipelines[c.api].run(c))[3] == reasons.REVOKED  # type: ignore[arg-type]
    c = call_for(cfg, "/ids", verified(pki, "partner-app"))
    assert refusal(pipelines[c.api].run(c))[3] == reasons.IDENTITY_RULES  # type: ignore[arg-type]
    c = call_for(cfg, "/ids", verified(pki, "partner-direct"))
    assert isinstance(pipelines[c.api].run(c), HeaderEdit)


# --------------------------------------------------------------------------- properties

_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="CNOU=,+\\#\"'<>; .*/:@0123456789abcdefABCDEF-_", max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), raw=_TEXT)
def test_any_value_compiles_or_names_its_key(key: str, raw: str) -> None:
    """Operator input never raises: a rule, or problems naming the key."""
    problems: list[tuple[str, str]] = []
    compiled = parse_rule({key: raw}, lambda k, m: problems.append((k, m)))
    if compiled is None:
        assert problems and all(k == key for k, _m in problems)
    else:
        assert problems == []


@settings(max_examples=200, deadline=None)
@given(raw=_TEXT)
def test_a_compiled_rule_never_raises_when_matching(raw: str, pki: DevPki) -> None:
    for key in KEYS:
        compiled = parse_rule({key: raw}, lambda k, m: None)
        if compiled is not None:
            for name in ("identity-app", "partner-app", "pinned"):
                compiled.matches(cert(pki, name))


# --------------------------------------------------------------------------- alias (#22 item 7)


def test_alias_key_holds_only_under_that_truststore_entry(pki: DevPki) -> None:
    acme = rule(alias="partner-root", san_uri="spiffe://acme.example/*")
    leaf = cert(pki, "acme-app")
    assert acme.matches(leaf, frozenset({"partner-root"}))
    assert not acme.matches(leaf, frozenset({"other-root"}))  # the same names, another CA
    assert not acme.matches(leaf)
    assert not acme.by_names_alone
    assert rule(san_uri="spiffe://acme.example/*").by_names_alone
    assert not rule(sha256="00" * 32).by_names_alone
    assert problems_of({"alias": " partner-root"})[0][0] == "alias"


def test_consumer_alias_in_the_pipeline(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(pki, tmp_path, [api("open-mtls", mutual_ssl="optional")], extra=table(
        "consumers", {"name": "acme", "certificates": [
            {"alias": "partner-root", "san_uri": "spiffe://acme.example/*"}]}, array=True))
    c = call_for(cfg, "/open-mtls", verified(pki, "acme-app"))
    run(cfg, c)
    assert c.consumer == "acme"
    # The same SAN from a certificate that verified under another alias: no consumer.
    c = call_for(cfg, "/open-mtls", verified(pki, "acme-app", frozenset({"other-root"})))
    run(cfg, c)
    assert c.consumer is None


def _check(pki: DevPki, tmp_path: Path, extra: str, tls: dict[str, Any] | None = None,
           apis: list[dict[str, Any]] | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) as ``twistedgw check`` gives them, file name dropped."""
    from twistedgw.app import _runtime as runtime

    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(pki, apis or [api("a", mutual_ssl="optional")], port=1,
                                   tls=tls, extra=extra))
    try:
        built = runtime.load(path)
    except configmod.ConfigError as e:
        return [p.split(": ", 1)[1] for p in e.problems], []
    return [], [w.split(": ", 1)[1] for w in built.warnings]


def test_check_warns_about_consumers_named_by_names_alone(pki: DevPki, tmp_path: Path) -> None:
    loose = table("consumers", {"name": "acme", "certificates": [
        {"san_uri": "spiffe://acme.example/*"}, {"alias": "partner-root", "common_name": "x"},
        {"spki_sha256": spki_b64(cert(pki, "acme-app"))}]}, array=True)
    problems, warnings = _check(pki, tmp_path, loose)
    assert problems == []
    # The dev truststore trusts three issuers (partner-root, other-root, lb-ca); the
    # self-signed pinned-client is pinned. Only the entry with names alone is named.
    assert warnings == [
        "consumers[0].certificates[0]: consumer 'acme' is identified by names alone "
        "(san_uri = 'spiffe://acme.example/*') while 3 issuers are trusted (lb-ca, other-root, "
        "partner-root): a certificate any of them issues with these names maps to it; add "
        'alias = "<issuer>" (or sha256 / spki_sha256)'
    ]
    # With one issuer there is nothing to confuse.
    only = tmp_path / "one"
    only.mkdir()
    (only / "partner-root.pem").write_bytes(
        (pki.truststore_dir / "partner-root.pem").read_bytes())
    assert _check(pki, tmp_path, loose, tls={"truststore": str(only)}) == ([], [])


def test_unknown_aliases_are_check_errors(pki: DevPki, tmp_path: Path) -> None:
    extra = table("consumers", {"name": "acme", "certificates": [
        {"alias": "nope", "san_uri": "spiffe://acme.example/*"}]}, array=True)
    problems, _ = _check(pki, tmp_path, extra, tls={"pinned_aliases": ["partner-root", "gone"]},
                         apis=[api("a", mutual_ssl="optional", identities=[{"alias": "nope2"}])])
    listing = "(the truststore has: lb-ca, other-root, partner-root, pinned-client)"
    assert problems == [
        f"apis[0].identities[0].alias: unknown truststore alias 'nope2' {listing}",
        f"tls.pinned_aliases[1]: unknown truststore alias 'gone' {listing}",
        f"consumers[0].certificates[0].alias: unknown truststore alias 'nope' {listing}",
    ]
    problems, _ = _check(pki, tmp_path, "", tls={"pinned_aliases": ["lb-ca", "lb-ca"]})
    assert problems == ["tls.pinned_aliases[1]: 'lb-ca' is listed twice"]
