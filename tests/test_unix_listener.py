"""Issue 22 item 1: the Unix socket NGINX asks twistedgw on is the trust boundary.

With ``trusted_proxies = ["unix"]`` whoever connects to a Unix-socket listener is
believed about the caller's certificate. Twisted made that socket world-writable
(0666, systemd's too when adopted), so any local account could claim to be any
partner. These tests connect as other users (the suite runs as root: ``setpriv``
to ``nobody``), against a real gateway, created and systemd-inherited sockets.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import env, free_port, gateway_config, start_gateway, table
from tests.opskit import wait_until
from twistedgw import config as configmod
from twistedgw.testing.devpki import DevPki

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
NOBODY = pwd.getpwnam("nobody")
WWW_DATA = grp.getgrnam("www-data")
# Runs as another user, with the system's Python (the suite's venv may not be theirs to
# read): connect, ask the authz endpoint with a certificate header, print the status.
CLIENT = r"""
import socket, sys
path, cert = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
except PermissionError:
    print("EACCES")
    sys.exit(3)
s.sendall(b"GET /_twistedgw/authz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
          b"X-Original-URI: /mtls/x\r\nX-SSL-Client-Cert: " + cert.encode() + b"\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split(b"\r\n", 1)[0].decode())
"""


def as_user(uid: int, groups: list[int], path: Path, cert: str) -> str:
    """Run CLIENT as ``uid`` (primary group nogroup) with only ``groups`` besides."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to connect as another user"
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    out = subprocess.run(
        [setpriv, f"--reuid={uid}", f"--regid={NOBODY.pw_gid}", *group_args,
         "/usr/bin/python3", "-c", CLIENT, str(path), cert],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode in (0, 3), out.stderr
    return out.stdout.strip()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is root's alone, which would
    refuse them before the socket's own permissions are ever tested), not writable by them."""
    directory = Path(tempfile.mkdtemp(prefix="twistedgw-unix-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def fronted(pki: DevPki, backend: BackendProcess, port: int, endpoint: str,
            trusted: str = "unix", **listener: str) -> str:
    apis = [{"name": "Mtls", "version": "1", "context": "/mtls", "backend": backend.url,
             "mutual_ssl": "mandatory", "aliases": ["partner-root"]}]
    return gateway_config(
        pki, apis, port=port,
        listeners=[{"host": "127.0.0.1", "port": port},
                   {"endpoint": endpoint, "tls": False, **listener}],
        extra=table("mutual_ssl", {
            "certificate_header": "X-SSL-Client-Cert", "header_encoding": "url-pem",
            "enable_client_validation": False, "trusted_proxies": [trusted],
        }) + table("authz", {"path": "/_twistedgw/authz"}),
    )


def test_only_the_listeners_group_may_connect_and_be_trusted(
    pki: DevPki, backend: BackendProcess, shared_dir: Path
) -> None:
    """The attack: a local account connects and sends a partner's *public* certificate.
    Now the socket is 0660 root:www-data: nobody gets EACCES, a www-data member is served;
    with "unix:uid=www-data" only that user's connections are believed (SO_PEERCRED)."""
    sock = shared_dir / "authz.sock"
    port = free_port()
    text = fronted(pki, backend, port, f"unix:{sock}", group="www-data")
    gw = start_gateway(shared_dir / "gw", text, port)
    try:
        wait_until(sock.exists, what="the Unix socket")  # the TCP port may come first
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert st.st_gid == WWW_DATA.gr_gid
        cert = quote(pki.clients["partner-direct"][0].read_text(), safe="")
        assert as_user(NOBODY.pw_uid, [], sock, cert) == "EACCES"
        assert as_user(NOBODY.pw_uid, [WWW_DATA.gr_gid], sock, cert) == "HTTP/1.1 200 OK"

        # Only www-data's own connections: a member of its group is a direct client now
        # (its header ignored: no certificate, 401), the user itself is believed.
        (shared_dir / "gw" / "gateway.toml").write_text(
            text.replace('trusted_proxies = ["unix"]', 'trusted_proxies = ["unix:uid=www-data"]'))
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "Reloaded" in gw.output(), what="the reload")
        www = pwd.getpwnam("www-data")
        assert as_user(NOBODY.pw_uid, [WWW_DATA.gr_gid], sock, cert).startswith("HTTP/1.1 401")
        assert as_user(www.pw_uid, [WWW_DATA.gr_gid], sock, cert) == "HTTP/1.1 200 OK"
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
    assert not sock.exists()  # it made the file: it removes it


def run_refused(config: Path, argv: list[str] | None = None, timeout: float = 30) -> str:
    out = subprocess.run(
        argv or [sys.executable, "-m", "twistedgw", "run", "--config", str(config)],
        capture_output=True, text=True, env=env(), timeout=timeout,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    return text


def test_a_world_writable_directory_is_refused_at_start(
    pki: DevPki, backend: BackendProcess, shared_dir: Path
) -> None:
    """Sticky or not (/tmp): another user could replace the socket there."""
    shared_dir.chmod(0o1777)
    sock = shared_dir / "authz.sock"
    config = shared_dir / "gateway.toml"
    config.write_text(fronted(pki, backend, free_port(), f"unix:{sock}", group="www-data"))
    text = run_refused(config)
    assert f"its directory {shared_dir} is world-writable (mode 1777)" in text, text
    assert not sock.exists()


@pytest.mark.skipif(not Path(ACTIVATE).exists(), reason="systemd-socket-activate not installed")
def test_an_inherited_socket_keeps_its_mode_and_a_world_writable_one_is_refused(
    pki: DevPki, backend: BackendProcess, shared_dir: Path
) -> None:
    """systemd owns the socket (twistedgw-authz.socket: SocketMode=0660): Twisted's
    adoption made it 0666. It stays as systemd made it, through the parent and two
    workers; one that lets others connect is refused, with no traceback."""
    sock = shared_dir / "authz.sock"
    port = free_port()
    config = shared_dir / "gateway.toml"
    config.write_text("workers = 2\n" + fronted(
        pki, backend, port, "systemd:domain=UNIX:index=0", group="www-data"))

    def activate(mode: int) -> subprocess.Popen[bytes]:
        log = (shared_dir / f"gw-{mode:o}.log").open("wb")
        proc = subprocess.Popen(
            [ACTIVATE, "-l", str(sock), "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED",
             sys.executable, "-m", "twistedgw", "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=shared_dir)
        wait_until(sock.exists, what="systemd-socket-activate's socket")
        os.chown(sock, -1, WWW_DATA.gr_gid)
        sock.chmod(mode)
        import socket as socketmod

        with socketmod.socket(socketmod.AF_UNIX) as s:  # root: starts the gateway
            s.connect(str(sock))
        return proc

    proc = activate(0o666)
    try:
        assert proc.wait(30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (shared_dir / "gw-666.log").read_text()
    assert "other users may connect to it (mode 0666)" in text, text
    assert "Traceback" not in text, text
    sock.unlink()

    proc = activate(0o660)
    try:
        wait_until(lambda: "Worker 2" in (shared_dir / "gw-660.log").read_text()
                   and "serving" in (shared_dir / "gw-660.log").read_text(), 30,
                   "both workers")
        time.sleep(0.5)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        cert = quote(pki.clients["partner-direct"][0].read_text(), safe="")
        assert as_user(NOBODY.pw_uid, [], sock, cert) == "EACCES"
        assert as_user(NOBODY.pw_uid, [WWW_DATA.gr_gid], sock, cert) == "HTTP/1.1 200 OK"
    except BaseException:
        print((shared_dir / "gw-660.log").read_text())
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    # The socket is systemd's (here systemd-socket-activate's): the gateway, its parent
    # and workers alike, leaves the file behind (_unixsockets.UnixPort.owns_file).
    assert sock.exists()


def problems(text: str) -> list[str]:
    return list(configmod.parse_partial(tomllib.loads(text), Path("/etc/gw.toml")).problems)


BASE = """
[tls]
certificate = "c.pem"
private_key = "k.pem"
truststore = "t"
[[apis]]
name = "a"
context = "/a"
backend = "http://127.0.0.1:1"
[mutual_ssl]
certificate_header = "X-SSL-Client-Cert"
enable_client_validation = false
"""


@pytest.mark.parametrize(("listener", "trusted", "expected"), [
    ('endpoint = "unix:/run/gw/authz.sock"', '["unix"]',
     '/etc/gw.toml: listeners[0].group: is required on Unix-socket listeners when '
     'mutual_ssl.trusted_proxies has "unix"'),
    ('endpoint = "unix:@authz"\ngroup = "www-data"', '["unix:uid=www-data"]',
     "/etc/gw.toml: listeners[0].endpoint: an abstract Unix socket has no file permissions"),
    ('host = "127.0.0.1"\ngroup = "www-data"', '["10.0.0.0/8"]',
     "/etc/gw.toml: listeners[0].group: applies to Unix-socket listeners only"),
    ('endpoint = "unix:/run/gw/a.sock"\ngroup = "no-such-group-x"', '["unix"]',
     "/etc/gw.toml: listeners[0].group: no such group: 'no-such-group-x'"),
    ('endpoint = "unix:/run/gw/a.sock:mode=666"\ngroup = "www-data"', '["unix"]',
     "/etc/gw.toml: listeners[0].endpoint: mode=666 lets users other than the socket's"),
    ('endpoint = "unix:/run/gw/a.sock:colour=red"', '["10.0.0.0/8"]',
     "/etc/gw.toml: listeners[0].endpoint: unknown part 'colour'"),
    ('endpoint = "unix:/run/gw/a.sock"\ngroup = "www-data"', '["unix:uid=no-such-user-x"]',
     "/etc/gw.toml: mutual_ssl.trusted_proxies[0]: no such user: 'no-such-user-x'"),
    ('endpoint = "unix:/run/gw/a.sock"\ngroup = "www-data"', '["unix:gid=33"]',
     '/etc/gw.toml: mutual_ssl.trusted_proxies[0]: expected "unix" or "unix:uid=USER"'),
    ('endpoint = "unix:/run/gw/a.sock"\ngroup = "www-data"', '["unix", "unix:uid=33"]',
     '/etc/gw.toml: mutual_ssl.trusted_proxies: give either "unix"'),
])
def test_config_problems_name_the_file_and_key(listener: str, trusted: str,
                                               expected: str) -> None:
    text = f"[[listeners]]\ntls = false\n{listener}\n" + BASE + f"trusted_proxies = {trusted}\n"
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_good_unix_listeners() -> None:
    text = ('[[listeners]]\ntls = false\nendpoint = "unix:/run/gw/a.sock:mode=600"\n'
            'group = "www-data"\n[[listeners]]\ntls = false\n'
            'endpoint = "systemd:domain=UNIX:index=0"\n' + BASE
            + 'trusted_proxies = ["unix:uid=www-data", "unix:uid=0"]\n')
    parsed = configmod.parse_partial(tomllib.loads(text), Path("/etc/gw.toml"))
    assert not [p for p in parsed.problems if "listeners" in p or "trusted" in p], parsed.problems
    lb = parsed.config.mutual_ssl
    assert lb.trust_unix_socket and lb.unix_peer_uids == {pwd.getpwnam("www-data").pw_uid, 0}
    unix = parsed.config.listeners[0].unix
    assert unix is not None and unix.mode == 0o600 and unix.address == "/run/gw/a.sock"


def test_unix_endpoint_strings_fail_only_with_value_error() -> None:
    """Whatever follows "unix:", the reader says what is wrong (a config problem) or
    parses it; nothing else escapes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from twistedgw import _unixsockets as unixsockets

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("/a@:=\\\x00m0o6de7lckfibtr"), max_size=40))
    def check(rest: str) -> None:
        try:
            parsed = unixsockets.parse("unix:" + rest)
        except ValueError:
            return
        assert parsed.address and not parsed.mode & ~0o660

    check()
