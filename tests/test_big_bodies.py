"""Big bodies stream through the real gateway (over TLS) with its memory flat.

1 GB each way (TWISTEDGW_BIG_BODY_MB overrides): about 13 s for all three on
two cores over loopback TLS, well inside a CI budget, so no smaller stand-in.
RSS is read from /proc/PID/status while the body is in flight. Uploads pass
through twisted.web's spool file (tempfile.gettempdir(), i.e. $TMPDIR) before
being streamed to the backend, so disk, not memory, holds them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.backend import pattern
from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, client_context, free_port, gateway_config, start_gateway
from tests.tlsabuse import rss_kb
from twistedgw.testing.devpki import DevPki

MB = 1024 * 1024
SIZE = int(os.environ.get("TWISTEDGW_BIG_BODY_MB", "1024")) * MB
RSS_GROWTH_LIMIT_KB = 40 * 1024


class RssSampler(threading.Thread):
    """Peak RSS of a process, sampled every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kb(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
       backend: BackendProcess) -> Iterator[GatewayProcess]:
    port = free_port()
    apis = [{"name": "big", "context": "/", "backend": backend.url,
             "max_body_bytes": 2 * SIZE}]
    process = start_gateway(tmp_path_factory.mktemp("big"),
                            gateway_config(pki, apis, port=port), port)
    try:
        yield process
    finally:
        process.stop()


def connection(gw: GatewayProcess, pki: DevPki) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", gw.port, context=client_context(pki),
                                       timeout=60)


def warm_up(gw: GatewayProcess, pki: DevPki) -> None:
    """A few MB each way first, so the baseline includes buffers every transfer needs."""
    conn = connection(gw, pki)
    conn.request("GET", "/bytes/4000000")
    conn.getresponse().read()
    conn.request("POST", "/up", body=b"w" * 4_000_000)
    conn.getresponse().read()
    conn.close()


def test_big_download_streams_with_flat_memory(gw: GatewayProcess, pki: DevPki) -> None:
    warm_up(gw, pki)
    base = rss_kb(gw.proc.pid)
    conn = connection(gw, pki)
    start = time.monotonic()
    with RssSampler(gw.proc.pid) as rss:
        conn.request("GET", f"/bytes/{SIZE}")
        response = conn.getresponse()
        assert response.status == 200
        received, digest = 0, hashlib.sha256()
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    elapsed = time.monotonic() - start
    conn.close()
    assert received == SIZE
    expected = hashlib.sha256()
    for offset in range(0, SIZE, 1 << 20):
        expected.update(pattern(offset, min(1 << 20, SIZE - offset)))
    assert digest.hexdigest() == expected.hexdigest()
    print(f"download {SIZE // MB} MB in {elapsed:.1f}s; gateway RSS {base} -> peak {rss.peak} kB")
    assert rss.peak - base < RSS_GROWTH_LIMIT_KB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_big_upload_streams_with_flat_memory(
    gw: GatewayProcess, pki: DevPki, chunked: bool
) -> None:
    warm_up(gw, pki)
    base = rss_kb(gw.proc.pid)
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    for _ in range(SIZE // len(block)):
        digest.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(SIZE // len(block)):
            yield block

    conn = connection(gw, pki)
    headers = {} if chunked else {"Content-Length": str(SIZE)}
    start = time.monotonic()
    with RssSampler(gw.proc.pid) as rss:
        conn.request("POST", "/upload", body=body(), headers=headers,
                     encode_chunked=chunked)
        response = conn.getresponse()
        reply = json.loads(response.read())
    elapsed = time.monotonic() - start
    conn.close()
    assert response.status == 200, reply
    assert reply["body_len"] == SIZE
    assert reply["body_sha256"] == digest.hexdigest()
    print(f"upload ({'chunked' if chunked else 'length'}) {SIZE // MB} MB in {elapsed:.1f}s; "
          f"gateway RSS {base} -> peak {rss.peak} kB")
    assert rss.peak - base < RSS_GROWTH_LIMIT_KB
