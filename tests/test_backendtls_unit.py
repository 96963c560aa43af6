"""twistedgw/backendtls.py in process: choosing a policy per backend URL, policy identity,
and how ``[backend_tls]`` is read (the real TLS is in test_backend_tls.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.config_cases import api
from tests.harness import gateway_config, table
from twistedgw import config as configmod
from twistedgw.app import _runtime as runtime
from twistedgw.config import BackendTlsConfig
from twistedgw.testing.devpki import DevPki, cert_pem
from twistedgw.tls import BackendPolicy, BackendTls
from twistedgw.tls import _backend as backendtls


def test_policy_for_picks_the_api_whose_backend_url_the_target_starts_with() -> None:
    default, a, ab, other = (BackendPolicy(server_name=n) for n in ("d", "a", "ab", "o"))
    tls = BackendTls(
        default,
        [
            ("https://h:1/a", a),
            ("https://h:1/ab", ab),
            ("https://other:2", other),
        ],
    )
    assert tls.policy_for(b"https://h:1/a/x") is a
    assert tls.policy_for(b"https://h:1/a") is a
    assert tls.policy_for(b"https://h:1/a?q=1") is a
    assert tls.policy_for(b"https://h:1/ab/x") is ab
    assert tls.policy_for(b"https://h:1/abc") is default  # not on a segment boundary
    assert tls.policy_for(b"https://other:2/anything?x") is other  # one setting per origin
    assert tls.policy_for(b"https://H:1/a/x") is default  # as configured, byte for byte
    assert tls.policy_for(b"https://unknown/") is default
    assert tls.policies == {default, a, ab, other}


def test_policies_are_equal_when_their_material_is(pki: DevPki, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    shutil.copy(pki.backend_ca, ca)
    settings = BackendTlsConfig(
        trusted_certificate=ca,
        certificate=pki.gateway_client_cert,
        private_key=pki.gateway_client_key,
    )
    first = backendtls.load_policy(settings, "backend_tls")
    again = backendtls.load_policy(settings, "backend_tls")
    assert first == again and hash(first) == hash(again)  # a no-op reload keeps the pool
    named = backendtls.load_policy(
        BackendTlsConfig(trusted_certificate=ca, server_name="localhost"), "backend_tls"
    )
    assert named != first
    ca.write_bytes(cert_pem(pki.authorities["server-root"].cert))  # rewritten in place
    assert backendtls.load_policy(settings, "backend_tls") != first
    assert BackendPolicy() == BackendPolicy()  # system trust, nothing else


def test_creator_checks_the_configured_name_and_is_built_once(pki: DevPki) -> None:
    plain = backendtls.load_policy(
        BackendTlsConfig(trusted_certificate=pki.backend_ca), "backend_tls"
    )
    creator = plain.creatorForNetloc(b"127.0.0.1", 8443)
    assert creator._hostname == "127.0.0.1"  # type: ignore[attr-defined]
    assert plain.creatorForNetloc(b"127.0.0.1", 8443) is creator
    named = backendtls.load_policy(
        BackendTlsConfig(trusted_certificate=pki.backend_ca, server_name="backend.internal"),
        "backend_tls",
    )
    assert named.creatorForNetloc(b"127.0.0.1", 8443)._hostname == "backend.internal"  # type: ignore[attr-defined]


def test_descriptions_never_carry_key_material(pki: DevPki) -> None:
    policy = backendtls.load_policy(
        BackendTlsConfig(
            trusted_certificate=pki.backend_ca,
            certificate=pki.gateway_client_cert,
            private_key=pki.gateway_client_key,
        ),
        "backend_tls",
    )
    for text in (policy.describe(), repr(policy)):
        assert "BEGIN" not in text and "PRIVATE" not in text
    assert "CN=twistedgw gateway" in policy.describe()


def test_relative_paths_per_api_tables_and_the_global_default(pki: DevPki) -> None:
    directory = pki.directory / "conf-backend-tls"
    directory.mkdir(exist_ok=True)
    path = directory / "gateway.toml"
    override = {
        "certificate": "../backend/gateway-client.crt",
        "private_key": "../backend/gateway-client.key",
    }
    path.write_text(
        gateway_config(
            pki,
            [
                api(mutual_ssl=None, aliases=None, backend="HTTPS://127.0.0.1:8443/a"),
                api(
                    name="b",
                    context="/b",
                    mutual_ssl=None,
                    aliases=None,
                    backend="https://127.0.0.1:8443/b",
                    backend_tls=override,
                ),
            ],
            port=0,
            extra=table("backend_tls", {"trusted_certificate": "../backend/backend-ca.crt"}),
        )
    )
    built = runtime.build(configmod.load(path))
    cfg = built.config
    a, b = cfg.apis
    assert a.backend == "https://127.0.0.1:8443/a"  # the scheme in lower case, as Agent needs
    assert cfg.backend_tls.trusted_certificate == pki.backend_ca
    assert cfg.backend_tls_for(a) is cfg.backend_tls
    own = cfg.backend_tls_for(b)
    assert own.certificate == pki.gateway_client_cert
    assert own.trusted_certificate is None  # the API's table replaces the global one
    assert built.backend_tls is not None
    first = built.backend_tls.policy_for(b"https://127.0.0.1:8443/a/x")
    second = built.backend_tls.policy_for(b"https://127.0.0.1:8443/b/x")
    assert first.trusted and first.client is None
    assert not second.trusted and second.client is not None
