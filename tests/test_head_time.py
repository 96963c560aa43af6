"""Issue 22 item 4: a request is judged when its head is in, before its body is read.

The attack: a client with no certificate sends ``POST`` with a 9 MiB
``Content-Length`` to an mTLS-mandatory API. The gateway used to answer
``100 Continue``, read the whole body into a temporary file, and only then answer
401. Now the head is judged at once: the 401 ``900902`` comes without
``100 Continue``, the body is neither read (the gateway's read syscalls stay far
below its size) nor spooled (no temporary file appears in the gateway's
``TMPDIR``, an empty directory of the test's), and the connection closes after a
short linger. The authz endpoint (NGINX ``auth_request``) answers the same way.
An allowed upload still streams through, its spool where ``TMPDIR`` says: the
control that shows the file check sees a spool when there is one.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import (
    GatewayProcess,
    client_context,
    free_port,
    gateway_config,
    start_gateway,
    table,
)
from tests.rawhttp import RawResponse, read_response
from twistedgw.testing.devpki import DevPki

MiB = 1024 * 1024
BIG = 9 * MiB
#: What the gateway may read of a refused upload: what arrived with the head, and what
#: it discards while it lingers (http/_front.LINGER_BYTES), plus TLS framing.
READ_BOUND = 1 * MiB


@dataclass
class Env:
    gw: GatewayProcess
    tmpdir: Path
    pki: DevPki

    @property
    def pid(self) -> int:
        return self.gw.proc.pid


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
        backend: BackendProcess) -> Iterator[Env]:
    spool_dir = tmp_path_factory.mktemp("gateway-tmp")  # the gateway's TMPDIR, empty
    port = free_port()
    apis = [
        {"name": "mtls", "context": "/mtls", "backend": backend.url, "mutual_ssl": "mandatory"},
        {"name": "open", "context": "/open", "backend": backend.url},
    ]
    extra = table("authz", {"path": "/_authz"})
    text = gateway_config(pki, apis, port=port, extra=extra)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(spool_dir))
        gw = start_gateway(tmp_path_factory.mktemp("head-time"), text, port)
    try:
        yield Env(gw, spool_dir, pki)
    finally:
        gw.stop()


def read_bytes(pid: int) -> int:
    """Bytes the process's read syscalls returned so far (sockets included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


class SpoolWatch(threading.Thread):
    """Samples the gateway's open files every 5 ms for one under its TMPDIR (a
    ``TemporaryFile`` is unlinked at once: only /proc/PID/fd still names it)."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        prefix = str(self.env.tmpdir)
        while not self.done.wait(0.005):
            fds = f"/proc/{self.env.pid}/fd"
            for fd in os.listdir(fds):
                try:
                    link = os.readlink(f"{fds}/{fd}")
                except OSError:
                    continue
                if link.startswith(prefix):
                    self.seen.add(link)
            self.seen.update(os.listdir(self.env.tmpdir))

    def __enter__(self) -> SpoolWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def connect(env: Env) -> ssl.SSLSocket:
    import socket

    sock = socket.create_connection(("127.0.0.1", env.gw.port), timeout=10)
    return client_context(env.pki).wrap_socket(sock, server_hostname="localhost")  # no cert


def head(path: str, *, expect: bool, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {BIG}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "") + extra + "\r\n"
    ).encode()


def offer_the_rest(sock: ssl.SSLSocket, seconds: float) -> int:
    """Try to send the rest of the body for ``seconds``; the bytes the socket took."""
    sock.settimeout(0.5)
    sent = 0
    deadline = time.monotonic() + seconds
    block = b"x" * 65536
    while time.monotonic() < deadline and sent < BIG:
        try:
            sent += sock.send(block)
        except (TimeoutError, ssl.SSLWantWriteError):
            continue
        except (OSError, ssl.SSLError):
            break  # the gateway closed: done
    return sent


def refused_upload(env: Env, path: str, *, expect: bool, extra: str = "") -> RawResponse:
    before = read_bytes(env.pid)
    with SpoolWatch(env) as watch:
        sock = connect(env)
        try:
            sock.sendall(head(path, expect=expect, extra=extra))
            if not expect:
                sock.sendall(b"x" * 65536)  # the body starts, as clients without Expect do
            sock.settimeout(5)
            first = sock.recv(65536)
            sock.settimeout(None)
            assert not first.startswith(b"HTTP/1.1 100"), first  # never 100 Continue
            response = read_response(_Prefixed(sock, first), timeout=5)
            assert b"Connection: close" in response.head
            offer_the_rest(sock, 3.0)  # the gateway lingers, then closes
        finally:
            sock.close()
    assert watch.seen == set(), f"the gateway spooled the refused body: {watch.seen}"
    read = read_bytes(env.pid) - before
    assert read < READ_BOUND, f"the gateway read {read} bytes of a refused {BIG}-byte body"
    assert list(env.tmpdir.iterdir()) == []
    return response


class _Prefixed:
    """A socket whose first bytes were already received (read_response reads through it)."""

    def __init__(self, sock: ssl.SSLSocket, first: bytes) -> None:
        self.sock = sock
        self.first = first

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def recv(self, size: int) -> bytes:
        if self.first:
            data, self.first = self.first, b""
            return data
        return self.sock.recv(size)


@pytest.mark.parametrize("expect", [True, False], ids=["expect-100-continue", "no-expect"])
def test_an_unauthenticated_upload_is_refused_without_reading_or_spooling_it(
    env: Env, expect: bool
) -> None:
    response = refused_upload(env, "/mtls/upload", expect=expect)
    assert response.status == 401
    assert response.json()["code"] == "900902"


def test_the_authz_endpoint_judges_at_head_time_too(env: Env) -> None:
    response = refused_upload(
        env, "/_authz", expect=True, extra="X-Original-URI: /mtls/upload\r\n"
    )
    assert response.status == 401
    assert response.json()["code"] == "900902"


def test_an_allowed_upload_is_read_after_100_continue_and_spooled(env: Env) -> None:
    """The control: an open API's upload gets 100 Continue, is spooled in TMPDIR (the
    watch sees it) and reaches the backend whole."""
    sock = connect(env)
    try:
        with SpoolWatch(env) as watch:
            sock.sendall(head("/open/upload", expect=True).replace(
                str(BIG).encode(), str(2 * MiB).encode()))
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"y" * MiB)
            time.sleep(0.3)  # half of it in: spooled beyond 100 kB
            sock.sendall(b"y" * MiB)
            response = read_response(sock, timeout=10)
    finally:
        sock.close()
    assert response.status == 200
    assert response.json()["body_len"] == 2 * MiB
    assert watch.seen, "the watch never saw the allowed upload's spool"
