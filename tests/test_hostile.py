"""Path tricks and request smuggling against the real gateway process.

A protected API (``/secret``, mandatory API key) sits next to an open
catch-all API (``/``); both forward to a backend that records every request,
so the tests can prove what was forwarded, with which path, and what never was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.harness import GatewayProcess, free_port, gateway_config, request, start_gateway
from tests.rawhttp import exchange
from tests.recorder import Recorder, recording_backend
from twistedgw.http import normalise
from twistedgw.testing.devpki import DevPki

KEY = "s3cret-key"


@dataclass
class Env:
    gw: GatewayProcess
    rec: Recorder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[Env]:
    with recording_backend() as rec:
        port = free_port()
        apis = [
            {"name": "secret", "context": "/secret", "backend": rec.url + "/s",
             "api_key": "mandatory"},
            {"name": "open", "context": "/", "backend": rec.url + "/open"},
        ]
        text = gateway_config(pki, apis, port=port, api_keys={"app": KEY},
                              listeners=[{"host": "127.0.0.1", "port": port, "tls": False}])
        gw = start_gateway(tmp_path_factory.mktemp("hostile"), text, port)
        try:
            yield Env(gw, rec)
        finally:
            gw.stop()


# Each raw path reaches the protected API once normalised; the backend must get
# "/s" + the rest of the normalised path, whatever spelling the client used.
PROTECTED_SPELLINGS = [
    ("/secret/data", "/s/data"),
    ("/x/../secret/data", "/s/data"),
    ("/open/../secret/data", "/s/data"),
    ("//secret//data", "/s/data"),
    ("/./secret/./data", "/s/data"),
    ("/SECRET/data", "/s/data"),
    ("/Secret/Data", "/s/Data"),
    ("/secret;jsessionid=1/data", "/s/data"),
    ("/secret/data;x=1", "/s/data"),
    ("/%73ecret/data", "/s/data"),
    ("/%73%65%63%72%65%74/data", "/s/data"),
    ("/open/%2e%2e/secret/data", "/s/data"),
    ("/open/%2E%2E/secret/data", "/s/data"),
    ("/open/.%2E/secret/data", "/s/data"),
    ("/%2E/secret/data", "/s/data"),
    ("/x/y/../../secret/data?a=1&b=%2F", "/s/data?a=1&b=%2F"),
]


@pytest.mark.parametrize(("raw", "backend_path"), PROTECTED_SPELLINGS)
def test_path_tricks_cannot_reach_the_protected_api_without_a_key(
    env: Env, raw: str, backend_path: str
) -> None:
    env.rec.clear()
    r = request(env.gw.port, raw)
    assert r.status == 401, (raw, r.body)
    assert r.json()["code"] == "900902"
    assert env.rec.paths() == [], f"{raw} was forwarded without a key"


@pytest.mark.parametrize(("raw", "backend_path"), PROTECTED_SPELLINGS)
def test_backend_receives_exactly_the_normalised_path(
    env: Env, raw: str, backend_path: str
) -> None:
    env.rec.clear()
    r = request(env.gw.port, raw, headers={"apikey": KEY})
    assert r.status == 200, (raw, r.body)
    assert env.rec.paths() == [backend_path]
    path, _, query = raw.partition("?")
    clean = normalise(path.encode()).decode()
    assert backend_path == "/s" + clean[len("/secret"):] + (f"?{query}" if query else "")


@pytest.mark.parametrize(
    ("raw", "backend_path"),
    [
        ("/foo//bar/./baz;p=1", "/open/foo/bar/baz"),
        ("/foo/bar/../baz/", "/open/foo/baz/"),
        ("/secretive/x", "/open/secretive/x"),  # a prefix, not the /secret context
        ("/%7Euser/a%20b", "/open/~user/a%20b"),
    ],
)
def test_open_api_receives_the_normalised_path(env: Env, raw: str, backend_path: str) -> None:
    env.rec.clear()
    r = request(env.gw.port, raw)
    assert r.status == 200, (raw, r.body)
    assert env.rec.paths() == [backend_path]


@pytest.mark.parametrize(
    "raw",
    [
        "/secret%2Fdata",
        "/open%2F..%2Fsecret/data",
        "/open/..%2Fsecret/data",
        "/%2e%2e/secret/data",
        "/../secret/data",
        "/secret%5Cdata",
        "/secret%00/data",
        "/secret%3Bx/data",
        "/secret%2",
        "/secret/%zz",
    ],
)
def test_unsafe_paths_are_refused_with_400(env: Env, raw: str) -> None:
    env.rec.clear()
    r = exchange(env.gw.port, f"GET {raw} HTTP/1.1\r\nHost: x\r\napikey: {KEY}\r\n\r\n".encode())
    assert r.status == 400, (raw, r.head)
    assert r.json()["code"] == "400"
    assert env.rec.paths() == []


# -- request smuggling -------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


SMUGGLING = {
    "cl-then-te": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(SMUGGLED),
    "te-then-cl": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n" + _chunked(SMUGGLED),
    "duplicate-cl-same": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "duplicate-cl-differ": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 41\r\n\r\nhello" + SMUGGLED,
    "cl-list": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "cl-negative": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "cl-hex": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
    "cl-space-inside": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0\r\n\r\nhello",
    "cl-name-space": b"POST /sm HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
    "te-identity": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "te-list": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    + _chunked(b"hello"),
    "te-twice": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"hello"),
    "te-http10": b"POST /sm HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunked(b"hello"),
    "te-obs-fold": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
    + _chunked(SMUGGLED),
    "obs-fold": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n",
    "bare-lf-in-value": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: 41\r\n\r\n"
    + SMUGGLED,
    "bare-cr-in-value": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "nul-in-value": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare-lf-line-ends": b"GET /sm HTTP/1.1\nHost: x\n\n",
    "two-hosts": b"GET /sm HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-chunk-size": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST /sm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"-5\r\nhello\r\n0\r\n\r\n",
    "header-no-colon": b"GET /sm HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
    "bad-request-line": b"GET  /sm HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_attempts_get_a_json_400_and_are_never_forwarded(env: Env, name: str) -> None:
    env.rec.clear()
    r = exchange(env.gw.port, SMUGGLING[name])
    assert r.status == 400, (name, r.head)
    assert r.header("content-type") == "application/json"
    assert r.json()["code"] == "400"
    assert r.header("connection") == "close"
    assert env.rec.paths() == [], f"{name}: forwarded {env.rec.paths()}"


def test_valid_framing_is_still_forwarded(env: Env) -> None:
    """The control: the same requests, framed correctly, reach the backend intact."""
    env.rec.clear()
    r = exchange(env.gw.port, b"POST /ok1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert r.status == 200 and r.json()["body_len"] == 5
    r = exchange(
        env.gw.port,
        b"POST /ok2 HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n"
        + _chunked(b"hello world"),
    )
    assert r.status == 200 and r.json()["body_len"] == 11
    assert env.rec.paths() == ["/open/ok1", "/open/ok2"]
