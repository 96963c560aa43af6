"""Configuration loading in process: every problem on its own line, naming file and key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.config_cases import CASES, KEY, Case, api, good, line_says
from tests.harness import gateway_config
from twistedgw import config as configmod
from twistedgw.app import _runtime as runtime
from twistedgw.config import ConfigError, Mode
from twistedgw.testing.devpki import DevPki


def load_and_build(path: Path) -> runtime.Runtime:
    """As ``twistedgw check`` and ``run`` do: config and key-material problems together."""
    return runtime.load(path)


def match_lines(lines: list[str], expect: tuple[str, ...], file: Path) -> None:
    """Each problem line names the file, and each expected phrase has its own line."""
    assert len(lines) == len(expect), lines
    for line in lines:
        assert line.startswith(f"{file}: "), line
        assert "\n" not in line
    unmatched = list(lines)
    for words in expect:
        hits = [line for line in unmatched if line_says(line, words)]
        assert hits, f"no problem line says {words!r}: {lines}"
        unmatched.remove(hits[0])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_config(case: Case, pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = case.text(pki)
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_and_build(path)
    match_lines(info.value.problems, case.expect, path.resolve())


def test_good_config(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(good(pki))
    built = load_and_build(path)
    cfg = built.config
    assert [a.context for a in cfg.apis] == ["/petstore/1.0.5", "/orders"]
    assert cfg.apis[0].mutual_ssl is Mode.MANDATORY and cfg.apis[0].api_key is Mode.DISABLED
    assert cfg.apis[1].mutual_ssl is Mode.OPTIONAL and cfg.apis[1].api_key is Mode.MANDATORY
    assert cfg.apis[0].aliases == frozenset({"partner-root"})
    assert built.truststore is not None
    assert built.truststore.aliases == {"partner-root", "other-root", "pinned-client", "lb-ca"}
    assert built.server_tls is not None
    assert [k.name for k in cfg.api_keys] == ["app-one"]


def test_defaults_and_normalisation(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        gateway_config(
            pki,
            [api(context="/a/b/", backend="http://127.0.0.1:1/v2/", mutual_ssl=None, aliases=None)],
            port=0,
        )
    )
    cfg = configmod.load(path)
    (a,) = cfg.apis
    assert a.context == "/a/b"
    assert a.backend == "http://127.0.0.1:1/v2"
    assert a.mutual_ssl is Mode.DISABLED and a.api_key is Mode.DISABLED
    assert a.aliases is None  # absent = any trusted certificate
    assert cfg.tls.protocols == ("TLSv1.2", "TLSv1.3")


def test_relative_paths_are_relative_to_the_config_file(pki: DevPki) -> None:
    directory = pki.directory / "conf-rel"
    directory.mkdir(exist_ok=True)
    path = directory / "gateway.toml"
    tls = {
        "certificate": "../server.crt",
        "private_key": "../server.key",
        "truststore": "../truststore",
    }
    path.write_text(gateway_config(pki, [api()], port=0, tls=tls))
    built = load_and_build(path)
    assert built.config.tls.certificate == pki.server_cert
    assert built.config.tls.truststore == pki.truststore_dir


def test_pkcs12_stores_load(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    tls = {
        "certificate": None,
        "private_key": None,
        "keystore": str(pki.keystore_p12),
        "keystore_password": DevPki.P12_PASSWORD,
        "truststore": str(pki.truststore_p12),
        "truststore_password": DevPki.P12_PASSWORD,
    }
    path.write_text(gateway_config(pki, [api(aliases=["pinned-client"])], port=0, tls=tls))
    built = load_and_build(path)
    assert built.truststore is not None
    assert built.truststore.aliases == {"partner-root", "other-root", "pinned-client", "lb-ca"}
    assert built.keystore is not None
    assert built.keystore.cert == pki.issued["server"].cert


def test_api_key_is_stored_as_a_digest(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(good(pki))
    cfg = configmod.load(path)

    assert cfg.api_keys[0].sha256 == hashlib.sha256(KEY.encode()).digest()
    assert KEY not in path.read_text()


def test_a_partly_broken_config_is_read_as_far_as_possible(pki: DevPki, tmp_path: Path) -> None:
    """What ``runtime.load`` needs to check key material beside the config's problems."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        gateway_config(
            pki,
            [api(name=None), api(name="b", context="/b", mutual_ssl="sometimes")],
            port=0,
            tls={"truststore_password": 5},
            extra="[limits]\nmax_body_bytes = -1\nidle_timeout = 5\n",
        )
    )
    parsed = configmod.load_partial(path)
    assert parsed.broken_keys == {
        "apis[0].name", "apis[1].mutual_ssl", "tls.truststore_password", "limits.max_body_bytes"}
    assert len(parsed.problems) == 4
    assert all(line.startswith(f"{path.resolve()}: ") for line in parsed.problems)
    # A broken key holds its default; a broken API is left out, the others keep their place.
    assert parsed.api_paths == ("apis[1]",)
    assert [(a.context, a.mutual_ssl) for a in parsed.config.apis] == [("/b", Mode.DISABLED)]
    assert parsed.config.limits.max_body_bytes == configmod.Limits().max_body_bytes
    assert parsed.config.limits.idle_timeout == 5.0
    # broken(): the key itself, anything inside it, or a table holding it.
    assert parsed.broken("tls.truststore_password") and not parsed.broken("tls.truststore")
    assert parsed.broken("limits") and parsed.broken("apis[0]") and parsed.broken("apis")
    assert not parsed.broken("apis[1].aliases") and not parsed.broken("apis[0].nam")
    assert not parsed.broken("limits.max_body") and not parsed.broken("apis[1]x")
    with pytest.raises(ConfigError) as info:
        configmod.load(path)
    assert tuple(info.value.problems) == parsed.problems


def test_a_broken_table_breaks_every_key_in_it(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'tls = 5\n[[listeners]]\nport = 0\ntls = false\n'
        '[[apis]]\nname = "a"\ncontext = "/a"\nbackend = "http://127.0.0.1:1"\n'
        'aliases = ["nope"]\n'
    )
    parsed = configmod.load_partial(path)
    assert "tls" in parsed.broken_keys
    assert parsed.broken("tls.truststore") and parsed.broken("tls.crl[0]")
    assert not parsed.broken("tlsx") and not parsed.broken("backend_tls.certificate")
    # Only the config's own problems: nothing is blamed on the defaults left in place.
    with pytest.raises(ConfigError) as info:
        runtime.load(path)
    assert info.value.problems == [*parsed.problems]
