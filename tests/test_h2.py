"""HTTP/2 on a listener with ``http2 = true``: real clients (curl, nghttp, h2load, the
``h2`` library) and hand-written frames for the attacks, against real processes.

One gateway (tight limits, so each defence trips quickly) serves most tests; the
mandatory/optional matrix and the graceful stop have their own.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.backend import pattern
from tests.backend_fixture import BackendProcess
from tests.e2e import echoed, running_gateway
from tests.h2client import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Client,
    RawH2,
    settings_code,
    tls_socket,
)
from tests.harness import GatewayProcess, free_port, gateway_config, request, start_gateway
from tests.opskit import wait_until
from tests.test_mtls_matrix import (
    CERTIFICATES,
    EXTRA_APIS,
    KEY,
    KEYS,
    MODES,
    check,
    context_path,
    expected,
    key_headers,
    matrix_apis,
)
from tests.test_sni import PARTNERS, sni_table
from twistedgw.testing.devpki import DevPki

LIMITS = """
[limits]
max_header_bytes = 4096
idle_timeout = 2.0
h2_max_concurrent_streams = 8
h2_max_resets_per_second = 20
h2_max_control_frames_per_second = 40
h2_max_continuation_frames = 8
"""


def h2_listener(port: int) -> list[dict[str, object]]:
    return [{"host": "127.0.0.1", "port": port, "http2": True}]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("h2-gw")
    access = directory / "access.log"
    port = free_port()
    apis = [
        {"name": "open", "context": "/o", "backend": backend.url},
        {"name": "small", "context": "/small", "backend": backend.url, "max_body_bytes": 1000},
        {"name": "mtls", "context": "/m", "backend": backend.url, "mutual_ssl": "mandatory"},
    ]
    extra = LIMITS + f'\n[access_log]\npath = "{access}"\n'
    with running_gateway(
        directory, pki, apis, port=port, listeners=h2_listener(port), extra=extra
    ) as gw:
        yield gw


def access_entries(gw: GatewayProcess) -> list[dict[str, object]]:
    path = gw.config.parent / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged(gw: GatewayProcess, *paths: str, count: int) -> list[dict[str, object]]:
    """The access-log entries of ``paths`` once ``count`` of them are written: a record
    is logged when its request ends, which may be just after the client read the answer."""
    def entries() -> list[dict[str, object]]:
        found = [e for e in access_entries(gw) if e["path"] in paths]
        return found if len(found) >= count else []

    return wait_until(entries, what=f"{count} access-log entries of {paths}")


def still_serves(gw: GatewayProcess, pki: DevPki) -> None:
    """Another client is served after an attack."""
    client = H2Client(gw.port, pki)
    try:
        assert client.get("/o/after").status == 200
    finally:
        client.close()


# -- real clients ---------------------------------------------------------------


def curl(pki: DevPki, url: str, *args: str) -> tuple[str, str, str]:
    """(http version, status, body) as curl --http2 saw them."""
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(pki.server_ca), "-o", "-",
         "-w", "\n%{http_version} %{http_code}", *args, url],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    body, _, tail = out.rpartition("\n")
    version, status = tail.split()
    return version, status, body


def test_curl_http2_verdicts_and_identity(gw: GatewayProcess, pki: DevPki) -> None:
    base = f"https://localhost:{gw.port}"
    version, status, body = curl(pki, f"{base}/o/x?q=1")
    assert (version, status) == ("2", "200")
    assert json.loads(body)["path"] == "/x?q=1"
    version, status, body = curl(pki, f"{base}/m/y")
    assert (version, status) == ("2", "401")
    assert json.loads(body)["code"] == "900902"
    crt, key = pki.clients["partner-app"]
    version, status, body = curl(pki, f"{base}/m/y", "--cert", str(crt), "--key", str(key))
    assert (version, status) == ("2", "200")
    crt, key = pki.clients["intruder"]
    version, status, body = curl(pki, f"{base}/m/y", "--cert", str(crt), "--key", str(key))
    assert (version, status) == ("2", "401")
    assert json.loads(body)["code"] == "900901"
    entries = logged(gw, "/o/x", "/m/y", count=4)
    assert len(entries) == 4 and all(e["protocol"] == "HTTP/2" for e in entries)


def test_http1_clients_still_served_on_an_h2_listener(gw: GatewayProcess, pki: DevPki) -> None:
    sock = tls_socket(gw.port, pki, alpn=("http/1.1",))
    assert sock.selected_alpn_protocol() == "http/1.1"
    sock.close()
    response = request(gw.port, "/o/plain", pki)
    assert response.status == 200
    version, status, _ = subprocess.run(
        ["curl", "-sS", "--http1.1", "--cacert", str(pki.server_ca), "-o", "/dev/null",
         "-w", "%{http_version} %{http_code} x", f"https://localhost:{gw.port}/o/h1"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()
    assert (version, status) == ("1.1", "200")
    assert [e["protocol"] for e in logged(gw, "/o/h1", count=1)] == ["HTTP/1.1"]


def test_nghttp_many_streams_share_the_connection_verdict(
    gw: GatewayProcess, pki: DevPki
) -> None:
    crt, key = pki.clients["partner-app"]
    base = f"https://localhost:{gw.port}"
    out = subprocess.run(
        ["nghttp", "-n", "-s", "--cert", str(crt), "--key", str(key),
         *(f"{base}/m/n{i}" for i in range(5)), f"{base}/o/n"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    # nghttp -s prints one line per stream: the response headers it got, one connection.
    client = H2Client(gw.port, pki, "partner-app")
    try:
        ids = [client.start(f"/m/s{i}") for i in range(6)]
        client.wait(ids)
        assert [client.response(i).status for i in ids] == [200] * 6
    finally:
        client.close()
    client = H2Client(gw.port, pki)  # no certificate: every stream is refused alike
    try:
        ids = [client.start(f"/m/s{i}") for i in range(3)]
        client.wait(ids)
        assert {client.response(i).json()["code"] for i in ids} == {"900902"}
    finally:
        client.close()


def test_large_bodies_both_ways_through_the_windows(
    gw: GatewayProcess, pki: DevPki, tmp_path: Path
) -> None:
    """Bodies many times the 65,535-byte initial windows: an upload goes on as the
    gateway tops the stream's window up, a download as the client does; several streams
    of one connection at once (nghttp), each intact."""
    upload = tmp_path / "up.bin"
    upload.write_bytes(pattern(7, 700_000))
    version, status, body = curl(
        pki, f"https://localhost:{gw.port}/o/up", "--data-binary", f"@{upload}",
        "-H", "content-type: application/octet-stream",
    )
    assert (version, status) == ("2", "200")
    echo = json.loads(body)
    assert echo["body_len"] == 700_000
    assert echo["body_sha256"] == hashlib.sha256(pattern(7, 700_000)).hexdigest()
    out = subprocess.run(
        ["nghttp", "-n", "-s", *(f"https://localhost:{gw.port}/o/bytes/{n}"
                                 for n in (1_000_000, 300_000, 5))],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    client = H2Client(gw.port, pki)
    try:
        ids = [client.start(f"/o/bytes/{n}") for n in (2_000_000, 200_000, 70_000)]
        client.wait(ids, timeout=60)
        for stream_id, n in zip(ids, (2_000_000, 200_000, 70_000), strict=True):
            response = client.response(stream_id)
            assert response.status == 200 and response.body == pattern(0, n)
    finally:
        client.close()


def test_head_and_statuses_without_a_body(gw: GatewayProcess, pki: DevPki) -> None:
    """HEAD keeps the backend's content-length and carries no DATA; 204 and 304 carry
    none either; each stream ends."""
    client = H2Client(gw.port, pki)
    try:
        head = client.get("/o/bytes/100", method="HEAD")
        assert head.status == 200 and head.body == b""
        assert head.header("content-length") == "100"
        for status in (204, 304):
            response = client.get(f"/o/status/{status}")
            assert response.status == status and response.body == b""
        assert client.get("/o/bytes/100").body == pattern(0, 100)
    finally:
        client.close()


def test_h2load_many_streams(gw: GatewayProcess) -> None:
    out = subprocess.run(
        ["h2load", "-n", "300", "-c", "3", "-m", "8", f"https://localhost:{gw.port}/o/load"],
        capture_output=True, text=True, timeout=60,
    )
    assert "Application protocol: h2" in out.stdout, out.stdout + out.stderr
    assert re.search(r"requests: 300 total, 300 started, 300 done, 300 succeeded", out.stdout), (
        out.stdout
    )
    assert "status codes: 300 2xx" in out.stdout


def test_many_streams_reuse_the_kept_backend_connections(
    gw: GatewayProcess, backend: BackendProcess
) -> None:
    """80 streams in flight (10 connections x 8) against a backend answering in 50 ms: the
    pool's 64 kept connections carry them all, the requests beyond them waiting for one
    to finish (well within ``QUEUE_WAIT``), instead of a connection opened and closed per
    request beyond 64 (80 connections for these 400 requests before)."""
    def accepted() -> int:
        answer = request(backend.port, "/connections")
        assert answer.status == 200
        count: int = json.loads(answer.body)["accepted"]
        return count

    before = accepted()
    out = subprocess.run(
        ["h2load", "-n", "400", "-c", "10", "-m", "8",
         f"https://localhost:{gw.port}/o/slow/0.05"],
        capture_output=True, text=True, timeout=60,
    )
    assert "status codes: 400 2xx" in out.stdout, out.stdout + out.stderr
    opened = accepted() - before - 1  # (the count's own connection)
    assert opened <= 72, opened  # 64, and a little room for a loaded machine's spill


def test_http1_listener_does_not_offer_h2(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    apis = [{"name": "open", "context": "/o", "backend": backend.url}]
    with running_gateway(tmp_path, pki, apis) as gw:
        sock = tls_socket(gw.port, pki, alpn=("h2", "http/1.1"))
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.close()


# -- limits ------------------------------------------------------------------------


def test_body_limit_per_stream(gw: GatewayProcess, pki: DevPki) -> None:
    client = H2Client(gw.port, pki)
    try:
        ok = client.get("/small/a", method="POST", body=b"x" * 1000)
        assert ok.status == 200
        assert ok.json()["body_len"] == 1000
        # A content-length over the limit: 413 at once.
        big = client.get("/small/b", method="POST", body=b"x" * 5000)
        assert big.status == 413
        assert big.json()["code"] == "413"
        # No content-length: counted as DATA arrives.
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, [
            (b":method", b"POST"), (b":path", b"/small/c"), (b":scheme", b"https"),
            (b":authority", client.authority.encode())])
        from tests.h2client import _Stream

        client.streams[stream_id] = _Stream()
        for _ in range(3):
            client.conn.send_data(stream_id, b"y" * 600)
        client._flush()
        client.wait([stream_id])
        assert client.response(stream_id).status == 413
        # The connection serves on.
        assert client.get("/o/next").status == 200
    finally:
        client.close()
    kinds = [e["error"] for e in logged(gw, "/small/b", "/small/c", count=2)]
    assert kinds == ["body_too_large", "body_too_large"]


def test_concurrent_streams_bound(gw: GatewayProcess, pki: DevPki) -> None:
    client = H2Client(gw.port, pki)
    try:
        client.get("/o/first")
        assert client.remote_settings[settings_code("MAX_CONCURRENT_STREAMS")] == 8
    finally:
        client.close()
    raw = RawH2(gw.port, pki)
    try:
        # Nine streams opened and never finished (no END_STREAM): one more than allowed.
        frames = b"".join(
            raw.headers(1 + 2 * i, raw.block("/o/open"), end_stream=False) for i in range(9)
        )
        raw.send(frames)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code != 0
    finally:
        raw.close()
    still_serves(gw, pki)


def test_header_list_size_and_hpack_bomb(gw: GatewayProcess, pki: DevPki) -> None:
    client = H2Client(gw.port, pki)
    try:
        client.get("/o/first")
        assert client.remote_settings[settings_code("MAX_HEADER_LIST_SIZE")] == 4096
    finally:
        client.close()
    raw = RawH2(gw.port, pki)
    try:  # one header over the list size
        raw.send(raw.headers(1, raw.block("/o/big", [("x-big", "a" * 5000)])))
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    finally:
        raw.close()
    raw = RawH2(gw.port, pki)
    try:  # an HPACK bomb: one 3000-byte entry in the table, referenced 100 times
        block = raw.block("/o/bomb", [("x-bomb", "b" * 3000)] * 100)
        assert len(block) < 4096  # small on the wire, 300 kB decoded
        raw.send(raw.headers(1, block))
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        assert not any(isinstance(f, HeadersFrame) for f in raw.frames)
    finally:
        raw.close()
    still_serves(gw, pki)


def test_continuation_flood(gw: GatewayProcess, pki: DevPki) -> None:
    raw = RawH2(gw.port, pki)
    try:  # more CONTINUATION frames than h2_max_continuation_frames, tiny each
        block = raw.block("/o/cont")
        flood = raw.headers(1, block[:2], end_headers=False) + b"".join(
            raw.continuation(1, b"") for _ in range(50)
        )
        raw.send(flood)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    finally:
        raw.close()
    raw = RawH2(gw.port, pki)
    try:  # few frames, but more bytes than max_header_bytes before decoding
        flood = raw.headers(1, b"\x00" * 1000, end_headers=False) + b"".join(
            raw.continuation(1, b"\x00" * 1500) for _ in range(4)
        )
        raw.send(flood)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    finally:
        raw.close()
    still_serves(gw, pki)


def test_rapid_reset(gw: GatewayProcess, pki: DevPki) -> None:
    raw = RawH2(gw.port, pki)
    try:  # CVE-2023-44487: open and cancel streams at once, many per second
        frames = b"".join(
            raw.headers(1 + 2 * i, raw.block("/o/slow/5"), end_stream=True)
            + raw.rst(1 + 2 * i)
            for i in range(100)
        )
        raw.send(frames)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        raw.read(3.0)
        assert raw.closed
    finally:
        raw.close()
    # Under the limit, resets are fine.
    raw = RawH2(gw.port, pki)
    try:
        raw.send(b"".join(
            raw.headers(1 + 2 * i, raw.block("/o/slow/5")) + raw.rst(1 + 2 * i)
            for i in range(10)
        ))
        raw.read(1.0)
        assert not any(isinstance(f, GoAwayFrame) for f in raw.frames)
        assert not raw.closed
    finally:
        raw.close()
    still_serves(gw, pki)


@pytest.mark.parametrize("cause", ["window-overflow", "malformed"])
def test_resets_the_client_causes_count_as_its_own(
    gw: GatewayProcess, pki: DevPki, cause: str
) -> None:
    """CVE-2025-8671 ("MadeYouReset"): streams the gateway resets because of what the
    client sent (a stream window overflowed past 2^31-1, a malformed request) count
    against h2_max_resets_per_second (20 here) like the client's own RST_STREAM frames:
    past it, GOAWAY ENHANCE_YOUR_CALM, and the connection is closed."""
    raw = RawH2(gw.port, pki)
    try:
        # 64 in well under a second: whichever one-second windows they fall in, one
        # holds more than 20. Four streams at a time: within the 8 open at once.
        for first in range(1, 129, 8):
            for stream_id in range(first, first + 8, 2):
                if cause == "window-overflow":
                    raw.send(raw.headers(stream_id, raw.block("/o/slow/5"))
                             + raw.window_update(stream_id, 2**31 - 1))
                else:
                    raw.send(raw.headers(stream_id, raw.block("/o/m", [("x(y)", "1")])))
            raw.read(0.02)
            if raw.closed:
                break
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM, raw.frames
        resets = [f for f in raw.frames if isinstance(f, RstStreamFrame)]
        assert 0 < len(resets) < 64
        raw.read(3.0)
        assert raw.closed
    finally:
        raw.close()
    still_serves(gw, pki)


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_settings_and_ping_floods(gw: GatewayProcess, pki: DevPki, kind: str) -> None:
    raw = RawH2(gw.port, pki)
    try:
        frame = raw.settings_frame() if kind == "settings" else raw.ping_frame()
        raw.send(frame * 500)
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
        acks = [f for f in raw.frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
        assert len(acks) <= 41  # no more answers than the limit allows
    finally:
        raw.close()
    still_serves(gw, pki)


def test_closed_window_stream_reset_after_idle_timeout(gw: GatewayProcess, pki: DevPki) -> None:
    # The client never opens its window (initial window 0) but keeps the connection
    # alive with PINGs: the stream waiting to send is reset after idle_timeout (2 s).
    client = H2Client(gw.port, pki, settings={settings_code("INITIAL_WINDOW_SIZE"): 0})
    try:
        stream_id = client.start("/o/bytes/5000")
        started = pinged = time.monotonic()
        client.ping()
        while time.monotonic() - started < 8:
            if time.monotonic() - pinged > 0.3:  # a few a second, under the flood limit
                client.ping()
                pinged = time.monotonic()
            client.pump(0.1)
            if client.streams[stream_id].reset is not None:
                break
        waited = time.monotonic() - started
        assert client.streams[stream_id].reset is not None, "the stalled stream was not reset"
        assert 1.5 <= waited < 8
        assert client.terminated is None and not client.closed
        assert client.pings_acked > 0
    finally:
        client.close()


def test_target_checked_as_over_http1(gw: GatewayProcess, pki: DevPki) -> None:
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, raw.block("/o/a<b")))
        frames = raw.read(1.0)
        assert [f for f in frames if isinstance(f, HeadersFrame)], frames
        body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 1)
        assert json.loads(body)["code"] == "400"
        assert "0x3c" in json.loads(body)["description"]
        assert not raw.closed  # a stream's refusal, not the connection's
    finally:
        raw.close()


# -- the mandatory/optional matrix ----------------------------------------------------


@pytest.fixture(scope="module")
def matrix_gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    apis = matrix_apis(backend.url) + [dict(a, backend=backend.url) for a in EXTRA_APIS]
    port = free_port()
    with running_gateway(tmp_path_factory.mktemp("h2-matrix"), pki, apis, port=port,
                         api_keys={"app-one": KEY}, listeners=h2_listener(port)) as gw:
        yield gw


@pytest.mark.parametrize("cert", list(CERTIFICATES), ids=lambda c: c or "no-cert")
def test_matrix_over_h2(matrix_gw: GatewayProcess, pki: DevPki, cert: str | None) -> None:
    """Every (mutual_ssl, api_key, key) cell for one certificate: streams of one
    connection, which all share its certificate verdict."""
    client = H2Client(matrix_gw.port, pki, cert)
    try:
        cells = [(m, a, k) for m in MODES for a in MODES for k in KEYS]
        ids = []
        for mtls, api_key, key in cells:
            ids.append(client.start(
                f"{context_path(mtls, api_key)}/res/1?q=a%20b",
                headers=list(key_headers(key).items()),
            ))
            if len(ids) % 8 == 0:  # within the default 100 streams, but keep it modest
                client.wait(ids[-8:])
        client.wait(ids)
        for (mtls, api_key, key), stream_id in zip(cells, ids, strict=True):
            want = expected(mtls, api_key, cert, key)
            check(client.response(stream_id), want, f"/be/{mtls}/{api_key}/res/1?q=a%20b")
    finally:
        client.close()


def test_identity_forwarded_over_h2(matrix_gw: GatewayProcess, pki: DevPki) -> None:
    client = H2Client(matrix_gw.port, pki, "partner-app")
    try:
        response = client.get("/any/who")
        assert response.status == 200
        h1 = request(matrix_gw.port, "/any/who", pki, "partner-app")
        assert h1.status == 200
        # The same identity headers reach the backend over h2 as over HTTP/1.1.
        names = {n.lower() for n, _ in h1.json()["headers"]} - {"host", "x-forwarded-host"}
        for name in names:
            assert echoed(response, name) == echoed(h1, name), name
    finally:
        client.close()


# -- graceful stop -------------------------------------------------------------------


def test_graceful_stop_goaway_then_in_flight_finish(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    port = free_port()
    apis = [{"name": "open", "context": "/o", "backend": backend.url}]
    gw = start_gateway(
        tmp_path, gateway_config(pki, apis, port=port, listeners=h2_listener(port)), port
    )
    try:
        raw = RawH2(port, pki)
        raw.send(raw.headers(1, raw.block("/o/slow/1.5")))
        raw.read(0.5)
        gw.signal(signal.SIGTERM)
        goaway = raw.goaway(3.0)
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == 1
        # A stream opened after the GOAWAY is refused; the one in flight finishes.
        raw.send(raw.headers(3, raw.block("/o/late")))
        raw.read(5.0)
        assert any(
            isinstance(f, RstStreamFrame) and f.stream_id == 3 and f.error_code == REFUSED_STREAM
            for f in raw.frames
        ), raw.frames
        heads = [f for f in raw.frames if isinstance(f, HeadersFrame) and f.stream_id == 1]
        assert heads, raw.frames
        ended = [f for f in raw.frames if f.stream_id == 1 and "END_STREAM" in f.flags]
        assert ended, raw.frames
        assert raw.closed
        raw.close()
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()


# -- SNI, workers, reload --------------------------------------------------------------


def test_421_when_authority_and_sni_disagree(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    partners = pki.authorities["server-root"].server(PARTNERS).write(tmp_path, "partners")
    port = free_port()
    apis = [{"name": "open", "context": "/o", "backend": backend.url}]
    text = gateway_config(
        pki, apis, port=port, listeners=h2_listener(port),
        extra=sni_table(PARTNERS, partners),
    )
    gw = start_gateway(tmp_path, text, port)
    try:
        cases = [  # (SNI, :authority, status)
            ("localhost", "partners.example.com", 421),
            ("partners.example.com", "localhost", 421),
            ("partners.example.com", "partners.example.com", 200),
            ("localhost", "localhost", 200),
        ]
        for sni, authority, status in cases:
            client = H2Client(port, pki, server_name=sni, authority=authority)
            try:
                response = client.get("/o/who")
                assert response.status == status, (sni, authority, response.body)
                if status == 421:
                    assert response.json()["code"] == "421"
            finally:
                client.close()
    finally:
        gw.stop()


def test_workers_serve_h2(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> None:
    port = free_port()
    apis = [{"name": "open", "context": "/o", "backend": backend.url}]
    # workers is a top-level key: before the first table.
    text = "workers = 2\n" + gateway_config(pki, apis, port=port, listeners=h2_listener(port))
    gw = start_gateway(tmp_path, text, port)
    try:
        version, status, _ = curl(pki, f"https://localhost:{port}/o/w")
        assert (version, status) == ("2", "200")
    finally:
        gw.stop()


def test_reload_applies_to_new_streams_of_an_open_connection(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    port = free_port()
    before = [{"name": "open", "context": "/o", "backend": backend.url}]
    after = [*before, {"name": "new", "context": "/n", "backend": backend.url}]
    gw = start_gateway(
        tmp_path, gateway_config(pki, before, port=port, listeners=h2_listener(port)), port
    )
    try:
        client = H2Client(port, pki)
        try:
            assert client.get("/n/x").status == 404
            gw.config.write_text(
                gateway_config(pki, after, port=port, listeners=h2_listener(port))
            )
            gw.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "Reloaded" not in gw.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/n/x").status == 200
        finally:
            client.close()
    finally:
        gw.stop()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from twistedgw import config

    path = tmp_path / "gw.toml"
    path.write_text(
        "[[listeners]]\nport = 9443\ntls = false\nhttp2 = true\n\n"
        "[limits]\nh2_max_concurrent_streams = 0\nh2_max_resets_per_second = -1\n\n"
        '[[apis]]\nname = "a"\ncontext = "/a"\nbackend = "http://127.0.0.1:1"\n'
    )
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    problems = "\n".join(e.value.problems)
    assert f"{path}: listeners[0].http2: HTTP/2 is offered through TLS (ALPN) only" in problems
    assert f"{path}: limits.h2_max_concurrent_streams: must be positive" in problems
    assert f"{path}: limits.h2_max_resets_per_second: must be positive" in problems
    assert config.Listener().http2 is False  # HTTP/1.1 only unless asked
    assert config.Limits().h2_max_concurrent_streams == 100


def test_request_body_that_stops_arriving_gets_408(gw: GatewayProcess, pki: DevPki) -> None:
    # HEADERS without END_STREAM, then nothing on the stream; PINGs keep the connection
    # alive, so only the per-stream timer (idle_timeout, 2 s) ends it.
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, raw.block("/o/upload"), end_stream=False) + raw.data(1, b"x"))
        started = time.monotonic()
        body = b""
        while time.monotonic() - started < 8 and not body:
            raw.send(raw.ping_frame())
            raw.read(0.3)
            body = b"".join(
                f.data for f in raw.frames if isinstance(f, DataFrame) and f.stream_id == 1
            )
        assert body, raw.frames
        assert json.loads(body)["code"] == "408"
        assert time.monotonic() - started >= 1.5
        assert not raw.closed
    finally:
        raw.close()
    kinds = [e["error"] for e in logged(gw, "/o/upload", count=1)]
    assert kinds == ["body_timeout"]


def test_metrics_count_h2_requests(tmp_path: Path, pki: DevPki, backend: BackendProcess) -> None:
    from tests.harness import table
    from tests.opskit import scrape, value

    port, admin = free_port(), free_port()
    apis = [{"name": "open", "context": "/o", "backend": backend.url, "version": "1"},
            {"name": "mtls", "context": "/m", "backend": backend.url, "version": "1",
             "mutual_ssl": "mandatory"}]
    text = gateway_config(
        pki, apis, port=port, listeners=h2_listener(port),
        extra=table("admin", {"host": "127.0.0.1", "port": admin}),
    )
    gw = start_gateway(tmp_path, text, port, wait_for=(admin,))
    try:
        before = scrape(admin)
        client = H2Client(port, pki, "partner-app")
        try:
            ids = [client.start(p) for p in ("/o/a", "/o/b", "/m/c")]
            client.wait(ids)
        finally:
            client.close()
        client = H2Client(port, pki)
        try:
            assert client.get("/m/d").status == 401
        finally:
            client.close()
        after = scrape(admin)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("twistedgw_requests_total", api="open:1", status="200", consumer="none") == 2
        assert delta("twistedgw_requests_total", api="mtls:1", status="200", consumer="none") == 1
        assert delta("twistedgw_requests_total", api="mtls:1", status="401", consumer="none") == 1
        assert delta("twistedgw_client_cert_verifications_total",
                     source="handshake", result="verified", reason="") == 3
    finally:
        gw.stop()


# -- conformance (issue 23): raw frames; h2spec cases by name ----------------------------


def _read_until(raw: RawH2, done: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and not raw.closed and time.monotonic() < deadline:
        raw.read(0.2)


def test_h2spec_3_5_2_invalid_preface_goaway_and_close_at_once(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """h2spec http2/3.5/2: an invalid connection preface gets GOAWAY PROTOCOL_ERROR and the
    connection is closed at once, not held until idle_timeout (2 s here)."""
    started = time.monotonic()
    raw = RawH2(gw.port, pki, preface=b"INVALID CONNECTION PREFACE\r\n\r\n")
    try:
        raw.read(5.0)
        waited = time.monotonic() - started
        goaway = next((f for f in raw.frames if isinstance(f, GoAwayFrame)), None)
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR, raw.frames
        assert raw.closed and waited < 1.5, waited
    finally:
        raw.close()
    still_serves(gw, pki)


def test_h2spec_6_9_2_2_negative_window_then_window_update_resumes(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """h2spec http2/6.9.2/2: SETTINGS_INITIAL_WINDOW_SIZE lowered under what was sent makes
    the stream's window negative; once a WINDOW_UPDATE makes it positive, the rest of the
    response goes out."""
    initial = settings_code("INITIAL_WINDOW_SIZE")
    raw = RawH2(gw.port, pki, settings={initial: 3})
    try:
        raw.send(raw.headers(1, raw.block("/o/bytes/10")))
        _read_until(raw, lambda: len(raw.body(1)) >= 3)
        assert len(raw.body(1)) == 3, raw.frames
        raw.send(raw.settings_frame_with({initial: 2}))  # the window: 2 - 3 = -1
        raw.read(0.5)
        assert len(raw.body(1)) == 3  # nothing while it is negative
        raw.send(raw.window_update(1, 2))  # -1 + 2 = 1
        _read_until(raw, lambda: len(raw.body(1)) >= 4)
        assert len(raw.body(1)) == 4, raw.frames
        raw.send(raw.window_update(1, 100))
        _read_until(raw, lambda: raw.ended(1))
        assert raw.body(1) == pattern(0, 10) and raw.ended(1)
        assert not any(isinstance(f, GoAwayFrame) for f in raw.frames)
    finally:
        raw.close()


def _request(raw: RawH2, path: str = "/o/m") -> list[tuple[str, str]]:
    return [(":method", "GET"), (":path", path), (":scheme", "https"),
            (":authority", f"localhost:{raw.port}")]


# name -> the frames of stream 3, each malformed where RFC 9113 makes it a stream error
MALFORMED: dict[str, Callable[[RawH2], bytes]] = {
    "header-name-not-a-token": lambda r: r.headers(3, r.encode([*_request(r), ("x(y)", "1")])),
    "unknown-pseudo-header": lambda r: r.headers(3, r.encode([*_request(r), (":foo", "bar")])),
    "pseudo-header-after-a-header": lambda r: r.headers(
        3, r.encode([("accept", "*/*"), *_request(r)])
    ),
    "no-path": lambda r: r.headers(3, r.encode(_request(r)[:1] + _request(r)[2:])),
    "connection-header": lambda r: r.headers(
        3, r.encode([*_request(r), ("connection", "keep-alive")])
    ),
    "uppercase-header-name": lambda r: r.headers(3, r.encode([*_request(r), ("X-Up", "1")])),
    "te-not-trailers": lambda r: r.headers(3, r.encode([*_request(r), ("te", "gzip")])),
    "duplicate-method": lambda r: r.headers(3, r.encode([(":method", "GET"), *_request(r)])),
    "status-in-a-request": lambda r: r.headers(3, r.encode([*_request(r), (":status", "200")])),
    "value-with-surrounding-space": lambda r: r.headers(
        3, r.encode([*_request(r), ("x-a", " b")])
    ),
    # RFC 9113 §8.2.1 lets an intermediary refuse any CTL but HTAB: HTTP/1.1 answers 400
    "value-with-a-control-byte": lambda r: r.headers(
        3, r.encode([*_request(r), ("x-a", "a\x01b")])
    ),
    "value-with-del": lambda r: r.headers(3, r.encode([*_request(r), ("x-a", "a\x7fb")])),
    "path-with-a-control-byte": lambda r: r.headers(3, r.encode(_request(r, "/o/m\x1f"))),
    "pseudo-header-in-trailers": lambda r: r.headers(
        3, r.encode(_request(r, "/o/post")), end_stream=False
    ) + r.data(3, b"abc") + r.headers(3, r.encode([(":foo", "x")])),
    "second-headers-without-end-stream": lambda r: r.headers(
        3, r.encode(_request(r, "/o/post")), end_stream=False
    ) + r.headers(3, r.encode([("x-a", "b")]), end_stream=False),
    # h2spec http2/8.1.2.6/1 and /2: content-length against the DATA frames
    "content-length-over-data": lambda r: r.headers(
        3, r.encode([*_request(r, "/o/post"), ("content-length", "5")]), end_stream=False
    ) + r.data(3, b"abc", end_stream=True),
    "data-over-content-length": lambda r: r.headers(
        3, r.encode([*_request(r, "/o/post"), ("content-length", "2")]), end_stream=False
    ) + r.data(3, b"abc", end_stream=True),
    "content-length-without-data": lambda r: r.headers(
        3, r.encode([*_request(r, "/o/post"), ("content-length", "5")])
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_resets_only_its_stream(
    gw: GatewayProcess, pki: DevPki, case: str
) -> None:
    """RFC 9113 §8.1.1: a malformed request is a stream error: RST_STREAM PROTOCOL_ERROR on
    that stream; the connection's other streams (one in flight, one opened after) go on."""
    tracebacks = gw.output().count("Traceback")
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, raw.block("/o/slow/0.5")))
        raw.send(MALFORMED[case](raw))
        raw.send(raw.headers(5, raw.block("/o/after")))
        _read_until(raw, lambda: raw.ended(1) and raw.ended(5))
        assert raw.reset_code(3) == PROTOCOL_ERROR, raw.frames
        assert raw.status(3) is None  # reset, never answered nor forwarded
        assert not any(isinstance(f, GoAwayFrame) for f in raw.frames), raw.frames
        assert (raw.status(1), raw.status(5)) == (200, 200)
        assert not raw.closed
    finally:
        raw.close()
    assert gw.output().count("Traceback") == tracebacks


def test_a_malformed_header_value_is_neither_logged_nor_recorded(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """h2 words its refusals with the offending value (``Received header value surrounded by
    whitespace b'Bearer ...'``): an Authorization or Cookie value with a stray space or a
    control byte went into the log line and the access-log record of the malformed
    request. Keys and tokens are never logged: the record names the field, not its value."""
    secret = "Bearer s3cr3t-t0ken-value"
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, raw.encode([*_request(raw), ("authorization", secret + " ")])))
        raw.send(raw.headers(3, raw.encode([*_request(raw), ("cookie", "id=s3cr3t\x00")])))
        _read_until(raw, lambda: raw.ended(1) and raw.ended(3))
        assert raw.reset_code(1) == raw.reset_code(3) == PROTOCOL_ERROR, raw.frames
    finally:
        raw.close()
    wait_until(lambda: sum("malformed HTTP/2 request" in str(e.get("reason"))
                           for e in access_entries(gw)) >= 2, what="both records")
    assert "s3cr3t" not in gw.output()
    assert "s3cr3t" not in (gw.config.parent / "access.log").read_text()


def test_connection_errors_stay_goaway(gw: GatewayProcess, pki: DevPki) -> None:
    """An undecodable header block is a connection error (RFC 9113 §4.3): the HPACK
    context is lost, so GOAWAY COMPRESSION_ERROR."""
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, b"\xff\xff\xff\xff\x0f"))
        goaway = raw.goaway()
        assert goaway is not None and goaway.error_code == COMPRESSION_ERROR, raw.frames
    finally:
        raw.close()


def test_authority_and_host_must_agree(gw: GatewayProcess, pki: DevPki) -> None:
    """A Host header naming another host than :authority makes the request malformed
    (RFC 9113 §8.3.1): that stream is reset, it is never routed, the connection serves on."""
    raw = RawH2(gw.port, pki)
    try:
        raw.send(raw.headers(1, raw.block("/o/x", [("host", "elsewhere.example")])))
        raw.send(raw.headers(3, raw.block("/o/y")))
        _read_until(raw, lambda: raw.ended(3))
        assert raw.reset_code(1) == PROTOCOL_ERROR and raw.status(1) is None, raw.frames
        assert raw.status(3) == 200
        assert not any(isinstance(f, GoAwayFrame) for f in raw.frames)
    finally:
        raw.close()


def test_connect_405_and_methods_not_upper_case_400(gw: GatewayProcess, pki: DevPki) -> None:
    """CONNECT (extended CONNECT with :protocol too: RFC 8441 is not offered) is answered
    405, a method that is not upper case 400, as over HTTP/1.1; the connection serves on."""
    raw = RawH2(gw.port, pki)
    authority = f"localhost:{raw.port}"
    try:
        raw.send(raw.headers(1, raw.encode(
            [(":method", "CONNECT"), (":authority", "example.com:443")]), end_stream=False))
        raw.send(raw.headers(3, raw.encode(
            [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
             (":path", "/o/ws"), (":authority", authority)]), end_stream=False))
        raw.send(raw.headers(5, raw.encode(
            [(":method", "get"), (":path", "/o/x"), (":scheme", "https"),
             (":authority", authority)])))
        raw.send(raw.headers(7, raw.encode(
            [(":method", "Post"), (":path", "/o/x"), (":scheme", "https"),
             (":authority", authority)])))
        raw.send(raw.headers(9, raw.block("/o/ok")))
        _read_until(raw, lambda: all(raw.ended(i) for i in (1, 3, 5, 7, 9)))
        assert [raw.status(i) for i in (1, 3, 5, 7, 9)] == [405, 405, 400, 400, 200], raw.frames
        for i, code in ((1, "405"), (3, "405"), (5, "400"), (7, "400")):
            assert json.loads(raw.body(i))["code"] == code
        assert not any(isinstance(f, GoAwayFrame) for f in raw.frames)
        # RFC 8441 is not offered: SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8) absent or 0.
        settings = [f for f in raw.frames if isinstance(f, SettingsFrame) and "ACK" not in f.flags]
        assert settings and settings[0].settings.get(0x8, 0) == 0
    finally:
        raw.close()


BAD_AUTHORITIES = ["evil.example/x", "a b", "...", "", "a@evil.example", "x,y", "[::1"]


def test_authority_validated_and_never_copied_unvalidated(
    gw: GatewayProcess, pki: DevPki
) -> None:
    """:authority (or Host, without one) must name a host (RFC 3986 reg-name or IP literal,
    optional port), on every listener: 400 otherwise, and never forwarded; a valid one
    reaches the backend as X-Forwarded-Host."""
    raw = RawH2(gw.port, pki)
    try:
        ids = []
        for i, authority in enumerate(BAD_AUTHORITIES):
            stream_id = 1 + 2 * i
            ids.append(stream_id)
            raw.send(raw.headers(stream_id, raw.encode(
                [(":method", "GET"), (":path", "/o/a"), (":scheme", "https"),
                 (":authority", authority)])))
        host_only = 1 + 2 * len(ids)
        raw.send(raw.headers(host_only, raw.encode(
            [(":method", "GET"), (":path", "/o/a"), (":scheme", "https"),
             ("host", "evil.example/x")])))
        good = host_only + 2
        raw.send(raw.headers(good, raw.block("/o/a")))
        _read_until(raw, lambda: all(raw.ended(i) for i in (*ids, host_only, good)))
        for stream_id, authority in zip([*ids, host_only], [*BAD_AUTHORITIES, "host"],
                                        strict=True):
            assert raw.status(stream_id) == 400, (authority, raw.status(stream_id))
            assert json.loads(raw.body(stream_id))["code"] == "400"
        assert raw.status(good) == 200
        echo = json.loads(raw.body(good))
        forwarded = [v for n, v in echo["headers"] if n.lower() == "x-forwarded-host"]
        assert forwarded == [f"localhost:{gw.port}"]
    finally:
        raw.close()


def test_a_refused_request_body_is_never_read(gw: GatewayProcess, pki: DevPki) -> None:
    """Issue 22 item 4 over HTTP/2: the verdict comes from the head. A client with no
    certificate POSTs 9 MiB to an mTLS-mandatory API: its stream gets no WINDOW_UPDATE
    (no more than the initial 65,535 bytes ever arrive), it is answered 401 and reset
    (RST_STREAM NO_ERROR) without the body being read; an allowed upload's window is
    opened as it arrives."""
    raw = RawH2(gw.port, pki)
    try:
        head = raw.encode([(":method", "POST"), (":path", "/m/upload"), (":scheme", "https"),
                           (":authority", f"localhost:{gw.port}"),
                           ("content-length", str(9 << 20))])
        raw.send(raw.headers(1, head, end_stream=False) + raw.data(1, b"x" * 16384) * 3)
        _read_until(raw, lambda: raw.reset_code(1) is not None)
        assert raw.status(1) == 401 and json.loads(raw.body(1))["code"] == "900902"
        assert raw.reset_code(1) == 0, raw.frames  # NO_ERROR: stop sending, no fault
        assert not [f for f in raw.frames if isinstance(f, WindowUpdateFrame) and f.stream_id == 1]
        head = raw.encode([(":method", "POST"), (":path", "/o/upload"), (":scheme", "https"),
                           (":authority", f"localhost:{gw.port}"),
                           ("content-length", str(3 * 40000))])
        raw.send(raw.headers(3, head, end_stream=False))
        for i in range(3):  # 40,000 bytes at a time, each within the window granted
            raw.send(b"".join(raw.data(3, b"y" * 10000, end_stream=i == 2 and j == 3)
                              for j in range(4)))
            _read_until(raw, lambda i=i: raw.ended(3) or len(
                [f for f in raw.frames if isinstance(f, WindowUpdateFrame) and f.stream_id == 3]
            ) > i)
        _read_until(raw, lambda: raw.ended(3))
        assert raw.status(3) == 200, raw.frames
        assert json.loads(raw.body(3))["body_len"] == 120000
    finally:
        raw.close()
    kinds = [e["status"] for e in logged(gw, "/m/upload", count=1)]
    assert kinds == [401]
