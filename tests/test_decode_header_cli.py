"""``twistedgw decode-header``: run as users run it, exit codes and output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import headerenc as enc
from tests.harness import env, gateway_config, table
from twistedgw.testing.devpki import DevPki


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twistedgw", "decode-header", *args],
        input=stdin, capture_output=True, text=True, env=env(), timeout=60,
    )


@pytest.fixture(scope="module")
def gateway_toml(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "gateway.toml"
    path.write_text(gateway_config(
        pki,
        [{"name": "a", "context": "/a", "backend": "http://127.0.0.1:1/a",
          "mutual_ssl": "mandatory"}],
        port=9,
        extra=table("mutual_ssl", {"certificate_header": "X-Amzn-Mtls-Clientcert",
                                   "load_balancer_aliases": ["lb-ca"]}),
    ))
    return path


def test_reports_each_certificate(pki: DevPki) -> None:
    chain = pki.issued["partner-app"].full_chain
    done = run(enc.aws_alb(chain))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("encoding: aws-alb\n")
    assert "certificate 1 of 2 (leaf)" in out and "certificate 2 of 2 (chain)" in out
    assert "subject: CN=partner-app,O=twistedgw dev" in out
    assert "issuer: CN=twistedgw dev partner issuing CA" in out
    for word in ("serial: ", "not before: ", "not after: ", "sha256: "):
        assert out.count(word) == 2
    fingerprint = __import__("hashlib").sha256(enc.der(chain[0])).hexdigest().upper()
    assert ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)) in out
    assert "verification" not in out  # no --config, no verdict


def test_reads_standard_input(pki: DevPki) -> None:
    done = run("-", stdin=enc.url_pem([pki.issued["partner-direct"].cert]) + "\n")
    assert done.returncode == 0 and done.stdout.startswith("encoding: url-pem\n")


def test_undecodable_is_one_line_and_exit_2() -> None:
    done = run("<definitely not a certificate>")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot decode header: ")
    assert "Traceback" not in done.stderr


def test_explicit_encoding_mismatch_names_the_likely_format(pki: DevPki) -> None:
    done = run("--encoding", "url-pem", enc.aws_alb([pki.issued["partner-direct"].cert]))
    assert done.returncode == 2
    assert "aws-alb" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_verifies_against_the_config_truststore(pki: DevPki, gateway_toml: Path) -> None:
    ok = run("--config", str(gateway_toml), enc.aws_alb(pki.issued["partner-app"].full_chain))
    assert ok.returncode == 0, ok.stderr
    assert "verification: verified (aliases: partner-root)" in ok.stdout
    expired = run("-c", str(gateway_toml), enc.url_pem(pki.issued["expired"].full_chain))
    assert expired.returncode == 1
    assert "verification: failed: certificate has expired" in expired.stdout
    untrusted = run("-c", str(gateway_toml), "-e", "base64-der",
                    enc.base64_der(pki.issued["intruder"].cert, quoted=True))
    assert untrusted.returncode == 1
    assert "verification: failed: certificate is not issued by a trusted CA" in untrusted.stdout


def test_bad_config_is_exit_2(tmp_path: Path, pki: DevPki) -> None:
    done = run("--config", str(tmp_path / "missing.toml"), enc.url_pem([pki.issued["lb"].cert]))
    assert done.returncode == 2
    assert "config file not found" in done.stderr and "Traceback" not in done.stderr


def test_pem_values_may_come_before_options_or_after_double_dash(
    pki: DevPki, gateway_toml: Path
) -> None:
    """PEM values start with '-----BEGIN', which must not be taken for an option."""
    value = enc.url_pem([pki.issued["partner-direct"].cert])
    after = run(value, "--config", str(gateway_toml))
    assert after.returncode == 0, after.stderr
    assert "verification: verified (aliases: partner-root)" in after.stdout
    dashed = run("--encoding", "url-pem", "--", value)
    assert dashed.returncode == 0 and dashed.stdout.startswith("encoding: url-pem\n")
    folded = run(enc.pem_folded([pki.issued["partner-direct"].cert], sep=" "))
    assert folded.returncode == 0 and folded.stdout.startswith("encoding: pem\n")
