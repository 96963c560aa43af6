"""Bad configurations and the problems the gateway must report for them.

Shared by test_config.py (in process) and test_cli.py (``twistedgw check`` and
``run`` as real processes). Each case gives the config text and, for every
problem line expected, the key (or words) that line must name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness import gateway_config
from twistedgw.testing.devpki import DevPki

KEY = "cli-key"


def api(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "petstore",
        "version": "1.0.5",
        "context": "/petstore/1.0.5",
        "backend": "http://127.0.0.1:8080/v2",
        "mutual_ssl": "mandatory",
        "aliases": ["partner-root"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def good(pki: DevPki) -> str:
    return gateway_config(
        pki,
        [api(), api(name="orders", context="/orders", mutual_ssl="optional", api_key="mandatory")],
        port=0,
        api_keys={"app-one": KEY},
    )


def empty_dir(pki: DevPki) -> Path:
    directory = pki.directory / "empty-truststore"
    directory.mkdir(exist_ok=True)
    return directory


@dataclass(frozen=True)
class Case:
    name: str
    text: Callable[[DevPki], str | None]  # None: the config file does not exist
    # One entry per problem line: the words that line must contain ("…" separates
    # phrases that must all appear, in order).
    expect: tuple[str, ...]


def line_says(line: str, words: str) -> bool:
    position = 0
    for phrase in words.split(" … "):
        found = line.find(phrase, position)
        if found < 0:
            return False
        position = found + len(phrase)
    return True


CASES: list[Case] = [
    Case(
        "bad-enum",
        lambda p: gateway_config(p, [api(mutual_ssl="required")], port=0),
        ("apis[0].mutual_ssl: must be one of 'mandatory', 'optional', 'disabled', got 'required'",),
    ),
    Case(
        "bad-enum-api-key",
        lambda p: gateway_config(p, [api(api_key="yes")], port=0, api_keys={"a": KEY}),
        ("apis[0].api_key: must be one of",),
    ),
    Case("missing-config-file", lambda p: None, ("config file not found",)),
    Case(
        "missing-certificate-file",
        lambda p: gateway_config(p, [api()], port=0, tls={"certificate": "no-such.crt"}),
        ("tls.certificate: file not found",),
    ),
    Case(
        "missing-truststore",
        lambda p: gateway_config(p, [api()], port=0, tls={"truststore": "no-such-dir"}),
        ("tls.truststore: file not found",),
    ),
    Case(
        "duplicate-context",
        lambda p: gateway_config(p, [api(), api(name="again", context="/petstore/1.0.5/")], port=0),
        ("apis[1].context: duplicate context '/petstore/1.0.5' (also used by apis[0])",),
    ),
    Case(
        "unknown-alias",
        lambda p: gateway_config(p, [api(aliases=["partner-root", "ballerina"])], port=0),
        ("apis[0].aliases: unknown truststore alias 'ballerina'",),
    ),
    Case(
        "empty-aliases",
        lambda p: gateway_config(p, [api(aliases=[])], port=0),
        ("apis[0].aliases: an empty list lets no certificate pass",),
    ),
    Case(
        "unknown-key",
        lambda p: gateway_config(p, [api(mutal_ssl="mandatory")], port=0),
        ("apis[0].mutal_ssl: unknown key",),
    ),
    Case(
        "unknown-table",
        lambda p: gateway_config(p, [api()], port=0, extra="[limitz]\nmax_body_bytes = 1\n"),
        ("limitz: unknown key",),
    ),
    Case(
        "bad-toml",
        lambda p: gateway_config(p, [api()], port=0) + "\n[[apis]\nname = \n",
        ("invalid TOML",),
    ),
    Case(
        "toml-nested-too-deeply",  # tomllib recursed until RecursionError: a traceback
        lambda p: gateway_config(p, [api()], port=0) + "x = " + "[" * 600 + "]" * 600 + "\n",
        ("invalid TOML: arrays or tables nested too deeply",),
    ),
    Case(
        "header-mode-without-lb-aliases",
        lambda p: gateway_config(
            p, [api()], port=0, extra='[mutual_ssl]\ncertificate_header = "X-SSL-CERT"\n'
        ),
        ("mutual_ssl.load_balancer_aliases: is required",),
    ),
    Case(
        "header-mode-without-trusted-proxies",
        lambda p: gateway_config(
            p,
            [api()],
            port=0,
            extra='[mutual_ssl]\ncertificate_header = "X-SSL-CERT"\n'
            "enable_client_validation = false\n",
        ),
        ("mutual_ssl.trusted_proxies: is required",),
    ),
    Case(
        "wrong-type",
        lambda p: gateway_config(p, [api()], port=0).replace("port = 0", 'port = "9095"'),
        ("listeners[0].port: expected an integer",),
    ),
    Case(
        "old-tls-protocol",
        lambda p: gateway_config(p, [api()], port=0, tls={"protocols": ["TLSv1.1", "TLSv1.2"]}),
        ("tls.protocols: allowed values are TLSv1.2, TLSv1.3",),
    ),
    Case(
        "wrong-p12-password",
        lambda p: gateway_config(
            p,
            [api()],
            port=0,
            tls={"truststore": str(p.truststore_p12), "truststore_password": "wrong"},
        ),
        ("tls.truststore: … truststore_password is wrong",),
    ),
    Case(
        "key-does-not-match-certificate",
        lambda p: gateway_config(
            p, [api()], port=0, tls={"certificate": str(p.clients["partner-app"][0])}
        ),
        ("the private key does not match the certificate",),
    ),
    Case(
        "truststore-without-certificates",
        lambda p: gateway_config(p, [api()], port=0, tls={"truststore": str(empty_dir(p))}),
        ("tls.truststore: … contains no certificates",),
    ),
    Case(
        "api-key-without-keys",
        lambda p: gateway_config(p, [api(api_key="mandatory")], port=0),
        ("api_keys: an API uses api_key but no [[api_keys]] are defined",),
    ),
    Case(
        "mtls-without-truststore",
        lambda p: gateway_config(p, [api()], port=0, tls={"truststore": None}),
        ("tls.truststore: APIs with mutual_ssl need a truststore",),
    ),
    Case(
        "backend-tls-missing-ca-file",
        lambda p: gateway_config(
            p, [api()], port=0, extra='[backend_tls]\ntrusted_certificate = "no-such-ca.pem"\n'
        ),
        ("backend_tls.trusted_certificate: file not found",),
    ),
    Case(
        "backend-tls-ca-is-not-a-certificate",
        lambda p: gateway_config(
            p,
            [api()],
            port=0,
            extra=f'[backend_tls]\ntrusted_certificate = "{p.gateway_client_key}"\n',
        ),
        ("backend_tls.trusted_certificate: … no PEM or DER certificate in it",),
    ),
    Case(
        "backend-tls-certificate-without-private-key",
        lambda p: gateway_config(
            p,
            [
                api(
                    backend="https://127.0.0.1:8443",
                    backend_tls={"certificate": str(p.gateway_client_cert)},
                )
            ],
            port=0,
        ),
        ("apis[0].backend_tls.private_key: certificate and private_key go together",),
    ),
    Case(
        "backend-tls-key-does-not-match",
        lambda p: gateway_config(
            p,
            [api()],
            port=0,
            extra=f'[backend_tls]\ncertificate = "{p.gateway_client_cert}"\n'
            f'private_key = "{p.backend_key}"\n',
        ),
        ("backend_tls.private_key: … the private key does not match the certificate",),
    ),
    Case(
        "backend-tls-on-an-http-backend",
        lambda p: gateway_config(
            p, [api(backend_tls={"trusted_certificate": str(p.backend_ca)})], port=0
        ),
        ("apis[0].backend_tls: applies to https:// backends only",),
    ),
    Case(
        "backend-tls-bad-server-name",
        lambda p: gateway_config(
            p, [api()], port=0, extra='[backend_tls]\nserver_name = "two words"\n'
        ),
        ("backend_tls.server_name: must be a host name or an IP address",),
    ),
    Case(
        "backend-tls-cannot-be-switched-off",
        lambda p: gateway_config(p, [api()], port=0, extra="[backend_tls]\nverify = false\n"),
        ("backend_tls.verify: unknown key",),
    ),
    Case(
        "backend-tls-same-backend-different-settings",
        lambda p: gateway_config(
            p,
            [
                api(backend="https://127.0.0.1:8443/v2"),
                api(
                    name="b",
                    context="/b",
                    backend="https://127.0.0.1:8443/v2/b",
                    backend_tls={"server_name": "localhost"},
                ),
            ],
            port=0,
        ),
        ("apis[1].backend_tls: the backend URL … lies under that of apis[0]",),
    ),
    # The 10 ms rule is kept at the largest header size allowed (#22).
    Case(
        "header-limit-above-64-kib",
        lambda p: gateway_config(p, [api()], port=0, extra="[limits]\nmax_header_bytes = 65537\n"),
        ("limits.max_header_bytes: must be at most 65536 (64 KiB), got 65537",),
    ),
    # Config and key-material problems in one pass: the key material that does not
    # depend on a broken key is still loaded and checked.
    Case(
        "bad-limit-and-unknown-alias",
        lambda p: gateway_config(
            p, [api(aliases=["partner-root", "ballerina"])], port=0,
            extra="[limits]\nmax_body_bytes = -1\n",
        ),
        (
            "limits.max_body_bytes: must be positive, got -1",
            "apis[0].aliases: unknown truststore alias 'ballerina'",
        ),
    ),
    Case(
        "unknown-alias-keeps-its-api-index-after-a-broken-api",
        lambda p: gateway_config(
            p,
            [api(name=None), api(name="b", context="/b", tiers=[{"alias": "nope",
                                                                  "requests_per_minute": 5}])],
            port=0,
        ),
        ("apis[0].name: is required", "apis[1].tiers: unknown truststore alias 'nope'"),
    ),
    Case(
        "bad-enum-and-wrong-keystore-password",
        lambda p: gateway_config(
            p,
            [api(mutual_ssl="required")],
            port=0,
            tls={"certificate": None, "private_key": None, "keystore": str(p.keystore_p12),
                 "keystore_password": "wrong"},
        ),
        ("apis[0].mutual_ssl: must be one of", "keystore_password is wrong"),
    ),
    Case(
        "bad-server-name-and-unreadable-backend-ca",
        lambda p: gateway_config(
            p,
            [api(backend="https://127.0.0.1:8443", backend_tls={"server_name": "two words"})],
            port=0,
            extra=f'[backend_tls]\ntrusted_certificate = "{p.gateway_client_key}"\n',
        ),
        (
            "apis[0].backend_tls.server_name: must be a host name",
            "backend_tls.trusted_certificate: … no PEM or DER certificate in it",
        ),
    ),
    Case(
        "broken-truststore-keys-are-not-blamed-twice",
        lambda p: gateway_config(
            p,
            [api(aliases=["ballerina"])],
            port=0,
            tls={"truststore": str(p.truststore_p12), "truststore_password": 1234},
            extra="[limits]\nidle_timeout = 0\n",
        ),
        # No truststore could be read without its password: no alias can be judged.
        ("tls.truststore_password: expected a string", "limits.idle_timeout: must be positive"),
    ),
    Case(
        "identity-rules-and-consumers",
        lambda p: gateway_config(
            p,
            [
                api(
                    identities=[
                        {"sha256": "zz"},
                        {"subject": "garbage"},
                        {"policy_oid": "1.2.x"},
                        {"colour": "blue"},
                        {},
                        {"san_uri": "spiffe://a/*/b"},
                        {"san_dns": "a..b"},
                        {"spki_sha256": "!"},
                        {"san_email": "nobody"},
                        {"issuer": "XY=1"},
                        {"common_name": "fine", "san_uri": "spiffe://fine.example/*"},
                    ],
                    consumers=["acme", "initech"],
                    tiers=[
                        {"alias": "partner-root", "consumer": "acme", "requests_per_minute": 5},
                        {"consumer": "hooli", "requests_per_minute": 5},
                        {"consumer": "acme", "requests_per_minute": 5},
                    ],
                ),
                api(name="b", context="/b", mutual_ssl="disabled", api_key="mandatory",
                    identities=[{"common_name": "x"}], consumers=[]),
            ],
            port=0,
            api_keys={"app-one": KEY},
            extra='[[consumers]]\nname = "acme corp"\n\n'
            '[[consumers]]\nname = "acme"\napi_keys = ["app-one", "app-two"]\n'
            'certificates = [{ issuer = "CN=x,,O=y" }]\n\n'
            '[[consumers]]\nname = "acme"\n',
        ),
        (
            "apis[0].identities[0].sha256: must be a SHA-256 fingerprint",
            "apis[0].identities[1].subject: 'garbage' is not TYPE=value",
            "apis[0].identities[2].policy_oid: must be a dotted OID",
            "apis[0].identities[3].colour: unknown key",
            "apis[0].identities[4]: an identity entry needs at least one of",
            "apis[0].identities[5].san_uri: '*' is allowed only as a final '/*'",
            "apis[0].identities[6].san_dns: must be a DNS name",
            "apis[0].identities[7].spki_sha256: must be the base64 SHA-256",
            "apis[0].identities[8].san_email: must be an e-mail address",
            "apis[0].identities[9].issuer: unknown attribute type 'XY'",
            "apis[0].tiers[0].alias: give exactly one of alias … or consumer",
            "apis[1].identities: identity rules apply to client certificates, but this API "
            "has mutual_ssl disabled",
            "apis[1].consumers: an empty list lets no caller through",
            "consumers[0].name: must be 1-64 of A-Z a-z 0-9 . _ -, got 'acme corp'",
            "consumers[1].api_keys[1]: no [[api_keys]] entry is named 'app-two'",
            "consumers[1].certificates[0].issuer: has an empty part",
            "consumers[2].name: duplicate consumer name 'acme'",
            "apis[0].consumers[1]: unknown consumer 'initech' (defined: acme)",
            "apis[0].tiers[1].consumer: unknown consumer 'hooli'",
        ),
    ),
    Case(
        "several-problems",
        lambda p: gateway_config(
            p,
            [
                api(mutual_ssl="sometimes"),
                api(name="b", context="/b"),
                api(name="c", context="/b"),
                api(name="d", context="/d", colour="blue"),
            ],
            port=0,
            tls={"private_key": "missing.key"},
        ),
        (
            "tls.private_key: file not found",
            "apis[0].mutual_ssl: must be one of",
            "apis[2].context: duplicate context '/b'",
            "apis[3].colour: unknown key",
        ),
    ),
    Case(
        "jwt-issuer-problems-and-a-jwks-with-a-private-key",
        lambda p: gateway_config(
            p,
            [api(jwt="mandatory", jwt_issuers=["idp", "nobody"], certificate_bound="maybe")],
            port=0,
            extra=_jwt_issuers(p),
        ),
        (
            "apis[0].certificate_bound: must be one of 'required', 'when_claimed', 'off'",
            "apis[0].jwt_issuers[1]: unknown issuer 'nobody' (the [[jwt_issuers]] are: idp, "
            "other)",
            "jwt_issuers[0].jwks: … holds a private part (d); publish only public keys",
            "jwt_issuers[1].algorithms[0]: 'HS256' cannot be configured",
            "jwt_issuers[1].audiences: is required",
        ),
    ),
]


def _jwt_issuers(p: DevPki) -> str:
    """An issuer whose JWKS file publishes a private key, and one with config problems."""
    import json

    from joserfc import jwk

    from tests.harness import table

    leaked = p.directory / "leaked-jwks.json"
    key = jwk.ECKey.generate_key("P-256", private=True)
    leaked.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    return table(
        "jwt_issuers",
        {"name": "idp", "issuer": "https://idp.example", "audiences": ["a"], "jwks": str(leaked)},
        array=True,
    ) + table(
        "jwt_issuers",
        {"name": "other", "issuer": "https://other.example", "jwks_url": "https://o.example/j",
         "algorithms": ["HS256"]},
        array=True,
    )
