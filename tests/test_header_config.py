"""Header-mode configuration: trust must be defined, and every error names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import env, gateway_config, table
from twistedgw import config
from twistedgw.app import _runtime as runtime
from twistedgw.config import ConfigError
from twistedgw.testing.devpki import DevPki

API = {
    "name": "a",
    "version": "1",
    "context": "/a",
    "backend": "http://127.0.0.1:1/a",
    "mutual_ssl": "mandatory",
}


def text(pki: DevPki, *, tls: bool, **mutual_ssl: Any) -> str:
    return gateway_config(
        pki,
        [API],
        port=9,
        listeners=[{"host": "127.0.0.1", "port": 9, "tls": tls}],
        tls=None if tls else {"certificate": None, "private_key": None},
        extra=table("mutual_ssl", mutual_ssl),
    )


def problems(pki: DevPki, tmp_path: Path, **kwargs: Any) -> list[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(text(pki, **kwargs))
    try:
        runtime.build(config.load(path))
    except ConfigError as e:
        return e.problems
    return []


def test_client_validation_needs_a_tls_listener(pki: DevPki, tmp_path: Path) -> None:
    found = problems(pki, tmp_path, tls=False, certificate_header="X-Cert",
                     load_balancer_aliases=["lb-ca"])
    assert len(found) == 1
    assert "gateway.toml: mutual_ssl.enable_client_validation:" in found[0]
    assert "no listener terminates TLS" in found[0]


def test_client_validation_needs_load_balancer_aliases(pki: DevPki, tmp_path: Path) -> None:
    found = problems(pki, tmp_path, tls=True, certificate_header="X-Cert")
    assert [p.split(": ", 2)[1] for p in found] == ["mutual_ssl.load_balancer_aliases"]


def test_no_client_validation_needs_trusted_proxies(pki: DevPki, tmp_path: Path) -> None:
    found = problems(pki, tmp_path, tls=False, certificate_header="X-Cert",
                     enable_client_validation=False)
    assert [p.split(": ", 2)[1] for p in found] == ["mutual_ssl.trusted_proxies"]


def test_unknown_load_balancer_alias(pki: DevPki, tmp_path: Path) -> None:
    found = problems(pki, tmp_path, tls=True, certificate_header="X-Cert",
                     load_balancer_aliases=["no-such-lb"])
    assert len(found) == 1
    assert "mutual_ssl.load_balancer_aliases: unknown truststore alias 'no-such-lb'" in found[0]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("header_encoding", "url", "must be one of"),
        ("trusted_proxies", ["10.0.0.0/33"], "not an IP network"),
        ("certificate_header", "X Cert", "not a valid HTTP header name"),
    ],
)
def test_bad_values_name_the_key(
    pki: DevPki, tmp_path: Path, key: str, value: Any, words: str
) -> None:
    settings: dict[str, Any] = {"certificate_header": "X-Cert", "enable_client_validation": False,
                                "trusted_proxies": ["127.0.0.1"], key: value}
    found = problems(pki, tmp_path, tls=False, **settings)
    assert any(f"mutual_ssl.{key}" in p and words in p for p in found), found


def test_valid_header_modes(pki: DevPki, tmp_path: Path) -> None:
    assert problems(pki, tmp_path, tls=True, certificate_header="X-Cert",
                    load_balancer_aliases=["lb-ca"]) == []
    assert problems(pki, tmp_path, tls=False, certificate_header="X-Cert",
                    enable_client_validation=False, trusted_proxies=["10.0.0.0/8"]) == []


@pytest.mark.parametrize(
    "header, encoding, chain",
    [
        ("Client-Cert", "auto", "Client-Cert-Chain"),
        ("X-Cert", "rfc9440", "Client-Cert-Chain"),
        ("X-Cert", "auto", None),
        ("X-Amzn-Mtls-Clientcert", "aws-alb", None),
    ],
)
def test_rfc9440_chain_header_default(
    pki: DevPki, tmp_path: Path, header: str, encoding: str, chain: str | None
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text(pki, tls=True, certificate_header=header, header_encoding=encoding,
                         load_balancer_aliases=["lb-ca"]))
    assert config.load(path).mutual_ssl.chain_header == chain


def test_check_command_refuses_with_exit_2(pki: DevPki, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text(pki, tls=False, certificate_header="X-Cert"))
    done = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(path)],
                          capture_output=True, text=True, env=env())
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert any("mutual_ssl.enable_client_validation" in line for line in lines)
    assert any("mutual_ssl.load_balancer_aliases" in line for line in lines)
