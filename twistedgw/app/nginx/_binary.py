"""The NGINX binary: where it is, its version, ``nginx -t`` on a rendered include, and
whether it can run the Lua variant (``--variant auto``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Debian's libnginx-mod-http-lua (and the NDK it needs): loaded by the minimal nginx.conf
#: that ``nginx -t`` runs on, when they exist (OpenResty has the module built in).
LUA_MODULES = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
)
_VERSION = re.compile(r"nginx/(\d+)\.(\d+)\.(\d+)")
_TIMEOUT = 30.0


def nginx_binary(name: str = "nginx") -> str | None:
    """The NGINX binary ``name`` names (a path, or a name looked up on PATH and in the
    sbin directories that are often not on a user's PATH); None if there is none."""
    if "/" in name:
        return name if Path(name).is_file() else None
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name,
                          Path("/usr/local/openresty/nginx/sbin") / name) if p.is_file()),
        None,
    )


def version(binary: str) -> tuple[int, int, int] | None:
    """``nginx -v``'s version (NGINX writes it on standard error); None if unreadable."""
    try:
        result = subprocess.run([binary, "-v"], capture_output=True, text=True,
                                timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(result.stderr + result.stdout)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def lua_modules(binary: str) -> tuple[str, ...]:
    """The dynamic modules a minimal nginx.conf must load for the Lua module: Debian's,
    when they exist; none for a binary with the module built in (OpenResty)."""
    del binary
    return tuple(m for m in LUA_MODULES if Path(m).exists())


@dataclass(frozen=True)
class Probe:
    """What ``--variant auto`` found: the variant to render and why."""

    variant: str | None  # "lua" | "auth_request"; None: no usable binary
    why: str


_LUA_STUB = """
lua_shared_dict twistedgw_probe 1m;
server {
    listen 127.0.0.1:1;
    location / {
        access_by_lua_block { local ffi = require("ffi") }
    }
}
"""


def probe(binary_name: str) -> Probe:
    """``nginx -t`` on a stub config that uses ``access_by_lua_block``: ``lua`` when the
    binary accepts it, ``auth_request`` when it runs but has no Lua module."""
    binary = nginx_binary(binary_name)
    if binary is None:
        return Probe(None, f"no NGINX binary {binary_name!r} (on PATH or in /usr/sbin)")
    with tempfile.TemporaryDirectory(prefix="twistedgw-probe-") as tmp:
        stub = Path(tmp) / "probe.conf"
        stub.write_text(_LUA_STUB)
        ok, message = nginx_test(stub, lua_modules(binary), binary=binary)
        if ok:
            return Probe("lua", f"{binary} runs access_by_lua_block (nginx -t on a stub)")
        plain = Path(tmp) / "plain.conf"
        plain.write_text("server { listen 127.0.0.1:1; }\n")
        ok_plain, plain_message = nginx_test(plain, (), binary=binary)
    if ok_plain:
        return Probe("auth_request", f"{binary} has no Lua module ({_first_line(message)})")
    return Probe(None, f"{binary} -t fails on a stub config: {_first_line(plain_message)}")


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), text).strip()


def nginx_test(include: Path, modules: Sequence[str] = (), *, binary: str | None = None
               ) -> tuple[bool, str]:
    """``nginx -t`` on a minimal nginx.conf whose ``http {}`` holds only ``include``.

    ``nginx -t`` creates the ``proxy_cache_path`` directory; the test runs on a copy
    whose cache lives in a temporary directory, so checking needs no privilege and
    leaves nothing behind (the real directory is created when NGINX starts).
    """
    binary = binary or nginx_binary()
    if binary is None:
        return False, "nginx is not installed (needed for --check)"
    with tempfile.TemporaryDirectory(prefix="twistedgw-nginx-") as tmp:
        d = Path(tmp)
        text = re.sub(
            r"^proxy_cache_path \S+", f"proxy_cache_path {d / 'cache'}", include.read_text(),
            flags=re.MULTILINE,
        )
        copy = d / include.name
        copy.write_text(text)
        temps = "\n".join(
            f"    {kind}_temp_path {d / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = d / "nginx.conf"
        loads = "".join(f"load_module {m};\n" for m in modules)
        conf.write_text(
            f"{loads}pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'};\n"
            f"events {{ }}\nhttp {{\n    access_log off;\n{temps}\n"
            f"    include {copy.resolve()};\n}}\n"
        )
        try:
            result = subprocess.run(
                [binary, "-t", "-q", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                capture_output=True, text=True, timeout=_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"{binary}: {e}"
    return result.returncode == 0, (result.stderr or result.stdout).strip()
