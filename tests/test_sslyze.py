"""sslyze against real gateways: Mozilla's intermediate (default) and modern profiles.

sslyze cannot share the gateway's environment (it pins cryptography below what
pyOpenSSL 26 needs), so it runs as its own program: ``$TWISTEDGW_SSLYZE``, or
``sslyze`` on PATH, or ``.venv-sslyze/bin/sslyze`` in the repository (made by
``python3 -m venv .venv-sslyze && .venv-sslyze/bin/pip install sslyze``). These
tests FAIL (never skip) when it is missing. Each scan takes a few seconds and
is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import running_gateway
from tests.harness import REPO, GatewayProcess
from twistedgw.testing.devpki import DevPki

SCAN_TIMEOUT = 180.0


def sslyze() -> str:
    candidates = [
        os.environ.get("TWISTEDGW_SSLYZE"),
        shutil.which("sslyze"),
        str(REPO / ".venv-sslyze" / "bin" / "sslyze"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        "sslyze is not installed: the TLS profile tests run it and must not be skipped. "
        "Install it in its own environment (python3 -m venv .venv-sslyze && "
        ".venv-sslyze/bin/pip install sslyze) or set TWISTEDGW_SSLYZE.",
        pytrace=False,
    )


def _interpreter(script: str) -> str:
    """The Python that runs the sslyze script (its shebang), to read sslyze's own profiles."""
    first = Path(script).resolve().read_bytes().split(b"\n", 1)[0]
    assert first.startswith(b"#!"), f"{script} is not a Python script"
    return first[2:].decode().strip().split()[0]


def mozilla_profile(name: str) -> dict[str, object]:
    """Mozilla's configuration ``name`` exactly as the installed sslyze checks it."""
    code = (
        "import importlib.resources as r, json, sys\n"
        "files = sorted(f for f in r.files('sslyze.mozilla_tls_profile').iterdir()"
        " if f.name.endswith('.json'))\n"
        "print(json.dumps(json.loads(files[-1].read_text())['configurations'][sys.argv[1]]))\n"
    )
    out = subprocess.run(
        [_interpreter(sslyze()), "-c", code, name],
        capture_output=True,
        check=True,
        timeout=60,
    )
    profile: dict[str, object] = json.loads(out.stdout)
    return profile


def scan(port: int, pki: DevPki, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sslyze(), "--certinfo_ca_file", str(pki.server_ca), *args, f"localhost:{port}"],
        capture_output=True,
        timeout=SCAN_TIMEOUT,
    )
    return result.returncode, result.stdout.decode(errors="replace") + result.stderr.decode(
        errors="replace"
    )


def _gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess, profile: str
) -> Iterator[GatewayProcess]:
    apis = [{"name": "open", "context": "/open", "backend": backend.url}]
    tls = {"profile": profile} if profile != "intermediate" else {}
    with running_gateway(tmp_path_factory.mktemp(f"sslyze-{profile}"), pki, apis, tls=tls) as gw:
        yield gw


@pytest.fixture(scope="module")
def intermediate_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path_factory, pki, backend, "intermediate")


@pytest.fixture(scope="module")
def modern_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path_factory, pki, backend, "modern")


def test_default_is_mozilla_intermediate(intermediate_gateway: GatewayProcess, pki: DevPki) -> None:
    rc, output = scan(intermediate_gateway.port, pki, "--mozilla_config=intermediate")
    assert rc == 0 and "OK - Compliant" in output, output


def test_modern_profile_is_mozilla_modern_but_for_the_dev_certificate_lifetime(
    modern_gateway: GatewayProcess, pki: DevPki, tmp_path: Path
) -> None:
    """Mozilla's modern, with only the certificate lifespan relaxed to the dev certificate's.

    Modern wants certificates of at most 90 days; the dev PKI issues a year.
    """
    profile = mozilla_profile("modern")
    leaf = pki.issued["server"].cert
    lifespan = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert isinstance(profile["maximum_certificate_lifespan"], int)
    assert lifespan > profile["maximum_certificate_lifespan"]  # so the relaxation is needed
    profile["maximum_certificate_lifespan"] = lifespan
    custom = tmp_path / "modern-but-lifespan.json"
    custom.write_text(json.dumps(profile))
    rc, output = scan(modern_gateway.port, pki, f"--custom_tls_config={custom}")
    assert rc == 0 and "OK - Compliant" in output, output


def test_intermediate_gateway_is_not_modern(
    intermediate_gateway: GatewayProcess, pki: DevPki
) -> None:
    """The check has teeth: the default profile (TLS 1.2 too) fails Mozilla's modern."""
    rc, output = scan(intermediate_gateway.port, pki, "--mozilla_config=modern")
    assert rc != 0 and "tls_versions" in output, output
