"""``twistedgw nginx-config`` as users run it: from an installed (non-editable) package.

A wheel of this tree is built once per session (from a copy of the tracked files, so
the worktree gets no build directories) and installed into a temporary venv whose
only other path is the test venv's site-packages (for the dependencies): the CLI then
imports twistedgw from the wheel, so the Lua module must ship as package data.
These tests FAIL (never skip) when nginx is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import REPO
from tests.lbsupport import EXAMPLE_PKI, example, render, require
from twistedgw.testing.devpki import DevPki


@dataclass
class Installed:
    venv: Path
    site: Path  # the venv's own site-packages (the wheel's files)

    @property
    def twistedgw(self) -> Path:
        return self.venv / "bin" / "twistedgw"

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return subprocess.run([str(self.twistedgw), *args], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                             check=True).stdout.decode().split("\0")
    source = root / "src"
    for name in filter(None, tracked):
        path = REPO / name
        if path.is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(path.read_bytes())
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(root / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((root / "dist").glob("twistedgw-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    # The dependencies from the test venv, after the venv's own site-packages (a .pth
    # line adds the directory only: its own .pth files, e.g. an editable install of
    # twistedgw, are not read).
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the test venv's twistedgw (seen through the .pth) is neither
    # "already satisfied" nor uninstalled.
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--ignore-installed", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    yield Installed(venv, site)


def _config(directory: Path, pki: DevPki) -> Path:
    text = render(example("nginx-fronted/gateway.toml"), {EXAMPLE_PKI: str(pki.directory)})
    path = directory / "gateway.toml"
    path.write_text(text)
    return path


def test_lua_variant_from_an_installed_package(
    installed: Installed, tmp_path: Path, pki: DevPki
) -> None:
    """`--variant auto` (the default) finds this NGINX's Lua module and renders the lua
    variant, copying the Lua module that ships in the wheel beside the include, which
    `nginx -t` accepts; every API's way is printed with its reason."""
    require("nginx")
    config = _config(tmp_path, pki)
    out = tmp_path / "conf.d" / "twistedgw.conf"
    out.parent.mkdir()
    r = installed.run("nginx-config", "--config", str(config), "--output", str(out),
                      "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lua = out.parent / "twistedgw_verdicts.lua"
    shipped = installed.site / "twistedgw" / "app" / "nginx" / "twistedgw_verdicts.lua"
    assert shipped.exists() and lua.read_bytes() == shipped.read_bytes()
    text = out.read_text()
    assert "access_by_lua_block" in text and f'"{out.parent}/?.lua;;"' in text
    assert r.stdout.startswith("variant lua: ")
    assert f"{out}: nginx -t OK" in r.stdout
    for line in ("Swagger Petstore:1.0.5 (/petstore/1.0.5): NGINX's path, Lua",
                 "Orders:v1 (/orders/v1): NGINX's path, Lua", "Public:1 (/public): NGINX's path"):
        assert line in r.stdout, r.stdout
    # Without --output the include points at the module inside the installed package,
    # and the report goes to standard error (standard output is the include).
    r = installed.run("nginx-config", "--config", str(config), "--variant", "lua",
                      cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f'"{shipped.parent}/?.lua;;"' in r.stdout
    assert "Public:1 (/public): NGINX's path" in r.stderr
    assert all(line.startswith("#") for line in r.stdout.splitlines()
               if "NGINX's path" in line)  # in the include only as comments


def test_auto_without_a_lua_module_renders_auth_request(
    installed: Installed, tmp_path: Path, pki: DevPki
) -> None:
    """An NGINX without the Lua module (here: this NGINX run without loading it) makes
    `auto` choose auth_request; a binary that is not there is an error asking for
    --variant, with no traceback."""
    nginx = require("nginx")
    config = _config(tmp_path, pki)
    stock = tmp_path / "stock-nginx"
    # The real binary, never loading a dynamic module: a stock NGINX without Lua.
    stock.write_text(f"""#!/bin/sh
for a in "$@"; do last="$a"; done
conf=""
prev=""
for a in "$@"; do [ "$prev" = "-c" ] && conf="$a"; prev="$a"; done
if [ -n "$conf" ]; then
    grep -v '^load_module' "$conf" > "$conf.stock" && mv "$conf.stock" "$conf"
fi
exec {nginx} "$@"
""")
    stock.chmod(0o755)
    text = config.read_text().replace(
        'cache_path = "/var/cache/nginx/twistedgw"',
        f'cache_path = "/var/cache/nginx/twistedgw"\nbinary = "{stock}"')
    config.write_text(text)
    r = installed.run("nginx-config", "--config", str(config), "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "auth_request /_twistedgw_nginx/authz/0;" in r.stdout
    assert "variant auth_request: " in r.stderr and "no Lua module" in r.stderr
    config.write_text(text.replace(str(stock), str(tmp_path / "no-such-nginx")))
    r = installed.run("nginx-config", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert "--variant lua or --variant auth_request" in r.stderr
    assert "Traceback" not in r.stderr
