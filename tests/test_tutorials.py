"""The tutorials, run as a newcomer runs them: every shell block marked tested.

A tutorial page marks what the test does with HTML comments (invisible on the page; see
docs/contributing.md, "Tested blocks"):

- ``<!-- tested -->`` before a ```` ```sh ```` block: run it. A page's tested blocks run
  in order in one bash (``set -euo pipefail``), in an empty directory, with a fresh venv
  of this repository (``pip install .``, made once per test session) first on ``PATH``,
  as after ``. .venv/bin/activate``. Ports 8080, 9090, 9443 and 9901 are replaced by free
  ones.
- ``<!-- file: PATH -->`` before any block: write its text to PATH (relative to that
  directory) before the next tested block runs, as a reader would with an editor.
- ``<!-- output -->`` before a block: each of its lines must appear in what the tested
  block before it printed, in order (``...`` in a line matches anything).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import docpages
from tests.harness import REPO, free_port

# The tutorials' own ports, each replaced by a free one (4318: an OTLP/HTTP collector).
PORTS = (8080, 9090, 9443, 9901, 4318)


@dataclass
class Step:
    script: str = ""
    files: list[tuple[str, str]] = field(default_factory=list)  # written before the script
    expected: list[str] = field(default_factory=list)  # lines its output must contain


def _shown(text: str) -> str:
    """``text`` without ````-fenced examples (contributing.md shows the markers in them)."""
    return re.sub(r"^````.*?^````", "", text, flags=re.S | re.M)


def steps(text: str) -> list[Step]:
    """The tested blocks of a page, with the files to write and the output to expect."""
    text = _shown(text)
    out: list[Step] = []
    pending: list[tuple[str, str]] = []
    pattern = re.compile(r"^<!-- (tested|output|file: (\S+)) -->\n```(\w*)[^\n]*\n(.*?)^```",
                         re.S | re.M)
    for m in pattern.finditer(text):
        kind, path, language, body = m.group(1), m.group(2), m.group(3), m.group(4)
        if kind == "tested":
            assert language == "sh", f"a tested block must be sh, not {language!r}"
            out.append(Step(body, pending))
            pending = []
        elif kind == "output":
            assert out, "an output block before any tested block"
            out[-1].expected += [line for line in body.splitlines() if line.strip()]
        else:
            pending.append((path, body))
    assert not pending, "a file block after the last tested block is never used"
    return out


def _tested_pages() -> list[str]:
    return sorted(str(p.relative_to(docpages.DOCS)) for p in docpages.DOCS.rglob("*.md")
                  if re.search(r"^<!-- tested -->$", _shown(p.read_text()), re.M))


@pytest.fixture(scope="session")
def tutorial_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with this repository installed as a user installs it (``pip install .``),
    once per session: the tutorials must not lean on the test run's own environment."""
    venv = tmp_path_factory.mktemp("tutorial") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-4000:]
    return venv


def _matches(expected: list[str], printed: str) -> list[str]:
    """The expected lines not found, in order, among the printed ones."""
    lines = printed.splitlines()
    at, missing = 0, []
    for want in expected:
        regex = re.compile(".*".join(re.escape(part) for part in want.strip().split("...")))
        for i in range(at, len(lines)):
            if regex.search(lines[i]):
                at = i + 1
                break
        else:
            missing.append(want)
    return missing


def run_page(page: str, venv: Path, work: Path) -> None:
    text = docpages.page(page)
    ports = {p: free_port() for p in PORTS}

    def ported(s: str) -> str:
        for old, new in ports.items():
            s = re.sub(rf"(?<![\d.]){old}(?!\d)", str(new), s)
        return s

    work.mkdir(parents=True, exist_ok=True)
    script = ["set -euo pipefail"]
    page_steps = steps(text)
    for n, step in enumerate(page_steps):
        for path, body in step.files:
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(ported(body))
        script += [f"printf '\\n@@step {n}@@\\n'", ported(step.script)]
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(venv),
        "HOME": str(work),
        "LANG": "C.UTF-8",
    }
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        printed, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:  # whatever the blocks left running (a gateway, a backend)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if timed_out:
        printed, _ = proc.communicate()
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                   for p in sorted(work.glob("*.log")))
    assert not timed_out and proc.returncode == 0, (
        f"{page} {'timed out' if timed_out else 'failed'}:\n{printed[-6000:]}{logs}")
    outputs = re.split(r"^@@step (\d+)@@$", printed, flags=re.M)
    by_step = {int(outputs[i]): outputs[i + 1] for i in range(1, len(outputs), 2)}
    for n, step in enumerate(page_steps):
        missing = _matches([ported(line) for line in step.expected], by_step.get(n, ""))
        assert not missing, (page, n, missing, by_step.get(n, ""))


def test_the_first_tutorial_is_tested_end_to_end() -> None:
    """The first mTLS API tutorial: PKI, gateway, curl with and without a certificate, stop."""
    page = "tutorials/first-mtls-api.md"
    assert page in _tested_pages()
    scripts = "\n".join(step.script for step in steps(docpages.page(page)))
    for command in ("twistedgw dev-pki", "twistedgw run", "--cert ", "kill $GATEWAY"):
        assert command in scripts, command


@pytest.mark.parametrize("page", _tested_pages())
def test_tutorial_runs_as_written(page: str, tutorial_venv: Path, tmp_path: Path) -> None:
    run_page(page, tutorial_venv, tmp_path / "work")


def test_the_plugin_tutorial_packages_installs_and_loads_its_plugin() -> None:
    """The plugin guide's distribution (its pyproject.toml) is built and installed into the
    tutorial venv, then loaded by a real gateway that the requests go through."""
    page_steps = steps(docpages.page("tutorials/writing-a-plugin.md"))
    files = dict(f for step in page_steps for f in step.files)
    assert "tenant-plugin/pyproject.toml" in files
    assert "tenant-plugin/src/twistedgw/plugins/tenant.py" in files
    scripts = "\n".join(step.script for step in page_steps)
    for command in ("pip install --quiet ./tenant-plugin", "twistedgw plugins",
                    "twistedgw run", "curl ", "kill $GATEWAY"):
        assert command in scripts, command
