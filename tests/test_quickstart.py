"""scripts/venv, the install path of both quick-start commands: its refusals.

The happy path (create .venv, install, run) is what ./run-tests itself does on
every CI run; here, the cases a newcomer's machine hits: no Python, a Python
older than 3.11, a Python that cannot make a venv on a system without apt-get.
Each runs a copy of the script in a temporary tree, so no real .venv is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.harness import REPO


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "venv", tmp_path / "scripts" / "venv")
    return tmp_path


def _fake_python(path: Path, version: tuple[int, int], ensurepip: bool) -> Path:
    """A stand-in interpreter answering the script's three questions."""
    major, minor = version
    ok = 0 if version >= (3, 11) else 1
    path.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = -V ]; then echo "Python {major}.{minor}.0"; exit 0; fi\n'
        f'case "$*" in *version_info*) exit {ok};; *ensurepip*) exit {0 if ensurepip else 1};;'
        " esac\nexit 3\n"
    )
    path.chmod(0o755)
    return path


def _run(tree: Path, python: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", str(tree / "scripts" / "venv")], capture_output=True, text=True, env=env,
        timeout=60,
    )


def test_no_python(tmp_path: Path) -> None:
    r = _run(_tree(tmp_path), "/nonexistent/python3")
    assert r.returncode == 1
    assert "twistedgw needs Python >= 3.11" in r.stderr
    assert not (tmp_path / ".venv").exists()


def test_python_too_old(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    old = _fake_python(tmp_path / "python3.9", (3, 9), ensurepip=True)
    r = _run(tree, str(old))
    assert r.returncode == 1
    assert "Python 3.9.0" in r.stderr and "needs Python >= 3.11" in r.stderr
    assert "PYTHON=" in r.stderr
    assert not (tree / ".venv").exists()


def test_no_venv_support_and_no_apt(tmp_path: Path) -> None:
    """Without ensurepip and without apt-get there is nothing to install: say so."""
    tree = _tree(tmp_path)
    bare = _fake_python(tmp_path / "python3", (3, 12), ensurepip=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    r = _run(tree, str(bare), path=str(bin_dir))
    assert r.returncode == 1, r
    assert "cannot create a virtual environment" in r.stderr
    assert not (tree / ".venv").exists()


def test_commands_are_executable_and_share_the_venv() -> None:
    """run-demo and run-tests install through scripts/venv (one install path)."""
    for name in ("run-demo", "run-tests", "scripts/venv"):
        assert os.access(REPO / name, os.X_OK), name
    assert "scripts/venv\n" in (REPO / "run-demo").read_text()
    assert "scripts/venv test\n" in (REPO / "run-tests").read_text()
    assert "pip install" not in (REPO / "run-tests").read_text()
