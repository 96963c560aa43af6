"""What a newcomer hit (issue 17, item 14): the CLI and the README, as users meet them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import docpages
from tests import headerenc as enc
from tests.harness import REPO, env, free_port, gateway_config, request, start_gateway
from twistedgw import __version__
from twistedgw.app import _cli as cli
from twistedgw.identity import _reasons as reasons
from twistedgw.testing.devpki import DevPki


def twistedgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twistedgw", *args], capture_output=True,
                          text=True, env=env(), timeout=60)


def test_version() -> None:
    done = twistedgw("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"twistedgw {__version__}"


def test_check_prints_the_effective_listeners_and_counts_in_words(
    pki: DevPki, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.toml"
    api = {"name": "a", "context": "/a", "backend": "http://127.0.0.1:1"}
    path.write_text(gateway_config(pki, [api], port=0, listeners=[{"host": "127.0.0.1"}]))
    done = twistedgw("check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{path}: OK (1 API, 1 listener)"
    assert lines[1:] == ["  listens on https 127.0.0.1:9095"]  # no port: the default


def test_decode_header_into_a_closed_pipe_exits_quietly(pki: DevPki) -> None:
    """``twistedgw decode-header ... | head``: the reader is gone before we write."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "twistedgw", "decode-header", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )
    assert proc.stdout is not None
    proc.stdout.close()  # long before the interpreter has started and decoded
    _, err = proc.communicate(enc.aws_alb(pki.issued["partner-app"].full_chain).encode(),
                              timeout=60)
    assert proc.returncode == cli.EXIT_PIPE_CLOSED == 141
    assert err == b""


def test_url_pem_on_base64_der_names_base64_der(pki: DevPki) -> None:
    done = twistedgw("decode-header", "-e", "url-pem", enc.base64_der(pki.issued["pinned"].cert))
    assert done.returncode == 2
    assert "looks like base64-der" in done.stderr
    assert "AWS ALB" not in done.stderr


def test_demo_says_it_runs_in_the_foreground_and_how_to_stop(
    pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "example"
    shutil.copytree(REPO / "conf" / "example", directory,
                    ignore=shutil.ignore_patterns("pki"))
    shutil.copytree(pki.directory, directory / "pki")
    served: list[object] = []
    monkeypatch.setattr(cli, "serve", lambda cfg, before_run=None: served.append(cfg) or 0)
    assert cli.main(["demo", "--directory", str(directory)]) == 0
    out = capsys.readouterr().out
    assert served, "the demo did not start the gateway"
    assert "foreground" in out and "Ctrl-C" in out


def test_error_reference_lists_every_error_description() -> None:
    errors = " ".join(docpages.page("reference/errors.md").split())
    words = [v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)]
    words += ["no API key was presented", "API key is not valid"]
    missing = [w for w in words if f"`{w}" not in errors]
    assert not missing


def test_architecture_page_names_every_module() -> None:
    layout = docpages.section("explanation/architecture.md", "## Layout")
    modules = sorted(p.name for p in (REPO / "twistedgw").rglob("*.py")
                     if not p.name.startswith("__") and "plugins" not in p.parts[-2:-1])
    modules += sorted(p.name + "/" for p in (REPO / "twistedgw").iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    missing = [m for m in modules if not re.search(rf"(?<![\w.]){re.escape(m)}(?!\w)", layout)]
    assert not missing


def test_docs_say_python3() -> None:
    for doc in (REPO / "README.md", REPO / "bench" / "README.md", *docpages.DOCS.rglob("*.md")):
        text = doc.read_text()
        assert not re.search(r"(?<![\w`/])python (?:bench|-m|\S+\.py)", text), doc


def test_dev_pki_says_what_it_wrote_and_the_password(tmp_path: Path) -> None:
    """Issue 23 item 13: every file it wrote (the PKCS#12 stores too) and their password."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    out = tmp_path / "pki"
    done = twistedgw("dev-pki", str(out))
    assert done.returncode == 0, done.stderr
    said = done.stdout
    for entry in sorted(out.iterdir()):
        assert entry.name in said, entry.name
    for crt in sorted((out / "clients").glob("*.crt")):
        assert re.search(rf"^\s+{re.escape(crt.stem)}\s+\S", said, re.M), crt.stem
    found = re.search(r'password of keystore\.p12 and truststore\.p12: "([^"]+)"', said)
    assert found is not None, said
    password = found.group(1).encode()
    key, cert, _ = pkcs12.load_key_and_certificates((out / "keystore.p12").read_bytes(), password)
    assert key is not None and cert is not None
    assert pkcs12.load_pkcs12((out / "truststore.p12").read_bytes(), password).additional_certs


def test_demo_ports_can_be_changed(pki: DevPki, tmp_path: Path) -> None:
    """``twistedgw demo --port P --backend-port B`` (issue 23 item 13): the gateway listens
    on P, the sample backend on B, and the demo's APIs reach it there."""
    directory = tmp_path / "example"
    shutil.copytree(REPO / "conf" / "example", directory, ignore=shutil.ignore_patterns("pki"))
    shutil.copytree(pki.directory, directory / "pki")
    port, backend_port = free_port(), free_port()
    argv = [sys.executable, "-m", "twistedgw", "demo", "--directory", str(directory),
            "--port", str(port), "--backend-port", str(backend_port)]
    gw = start_gateway(directory, (directory / "gateway.toml").read_text(), port, argv=argv,
                       wait_for=[backend_port])
    try:
        r = request(port, "/petstore/1.0.5/pet/1", pki, "partner-app")
        assert r.status == 200, (r, gw.output())
        assert f"sample backend on 127.0.0.1:{backend_port}" in gw.output()
        assert f"https://localhost:{port}/petstore" in gw.output()
        assert request(port, "/petstore/1.0.5/pet/1", pki).status == 401
    finally:
        assert gw.stop() == 0
