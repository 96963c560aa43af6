"""The benchmark harness must keep working: one 1-second round of scenario 1.

Not a performance test (nothing is asserted about speed); it only proves that
``bench/run.py`` can still build its configs, start NGINX, HAProxy, wrk and the
gateway, measure, and write its report.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import env, free_port, wait_port
from twistedgw.testing import devpki

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("nginx", "haproxy", "wrk")),
    reason="the benchmark needs nginx, haproxy and wrk",
)


def test_bench_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = tmp_path.glob("*-smoke.json")
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    summary = row["summary"]
    assert summary["errors"] == 0
    assert summary["a"]["median"] > 0 and summary["b"]["median"] > 0
    assert list(tmp_path.glob("*-smoke.md"))


def test_minimal_proxy(tmp_path: Path, pki: devpki.DevPki, backend: BackendProcess) -> None:
    """bench/minimal_proxy.py (scenario 1m/1n's floor) keeps what its docstring says: a
    client certificate required, GET heads forwarded with X-Forwarded-For over one backend
    connection per client connection, anything else answered 400 and closed."""
    port = free_port()
    log = tmp_path / "minimal.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "minimal_proxy.py"), "--port", str(port),
             "--backend", f"127.0.0.1:{backend.port}", "--cert", str(pki.server_cert),
             "--key", str(pki.server_key), "--truststore", str(pki.truststore_dir),
             "--reactor-changes"],
            stdout=out, stderr=subprocess.STDOUT, env=env(),
        )
    try:
        wait_port(port, proc, log=log)
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        ctx.load_cert_chain(*(str(p) for p in pki.clients["partner-app"]))
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
        conn.request("GET", "/echo?x=1")
        answer = conn.getresponse()
        assert answer.status == 200
        echo = json.loads(answer.read())
        assert echo["path"] == "/echo?x=1"
        assert ["X-Forwarded-For", "127.0.0.1"] in echo["headers"]
        seen = []
        for _ in range(2):
            conn.request("GET", "/connections")
            seen.append(json.loads(conn.getresponse().read())["accepted"])
        assert seen[0] == seen[1]  # the same backend connection, kept
        conn.request("POST", "/echo", body=b"x")
        refused = conn.getresponse()
        assert refused.status == 400
        assert refused.read() == b""
        assert refused.will_close
        conn.close()
        bare = ssl.create_default_context(cafile=str(pki.server_ca))  # no client certificate
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    bare.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert s.recv(100) == b"", "answered without a client certificate"
                raise ConnectionError("closed without an alert")
    finally:
        proc.terminate()
        proc.wait(10)


def test_replay_authz(tmp_path: Path) -> None:
    """bench/replay_authz.py (scenario 8's floor rows) keeps what its docstring says: a
    question's first answer fetched from twistedgw's socket, the same question answered
    from then on with those bytes and without asking again, pipelined questions answered
    in order, a question with a body refused with 400 and a close."""
    gw_path, listen = tmp_path / "gw.sock", tmp_path / "ask.sock"
    asked: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(gw_path))
    server.listen(8)

    def gateway() -> None:  # a stand-in for twistedgw: one answer per connection
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                asked.append(data)
                body = b"n=%d" % len(asked)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Verdict: yes\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    threading.Thread(target=gateway, daemon=True).start()
    log = tmp_path / "replay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "replay_authz.py"), "--listen", str(listen),
             "--gateway", str(gw_path), "--reactor-changes"],
            stdout=out, stderr=subprocess.STDOUT, env=env(),
        )
    try:
        for _ in range(200):
            if listen.exists():
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        one = b"GET /authz HTTP/1.1\r\nHost: a\r\nX-Uri: /bench/small\r\n\r\n"
        two = b"GET /authz HTTP/1.1\r\nHost: a\r\nX-Uri: /key/small\r\n\r\n"
        first = b"HTTP/1.1 200 OK\r\nX-Verdict: yes\r\nContent-Length: 3\r\n\r\nn=1"
        second = b"HTTP/1.1 200 OK\r\nX-Verdict: yes\r\nContent-Length: 3\r\n\r\nn=2"

        def read(s: socket.socket, n: int) -> bytes:
            data = b""
            while len(data) < n:
                more = s.recv(65536)
                if not more:
                    break
                data += more
            return data

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(listen))
            s.sendall(one)
            assert read(s, len(first)) == first
            s.sendall(one + two + one)  # pipelined: answered in order, two asked once
            assert read(s, 3 * len(first)) == first + second + first
            s.sendall(b"POST /authz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            refused = read(s, 1 << 16)
            assert refused.startswith(b"HTTP/1.1 400 ")
        assert asked == [one, two]
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()
