"""APIs served by a Twisted resource inside the gateway (#28 embedding), through real
processes: ``twistedgw run`` importing a plain twisted.web tree and a Klein app
(``backend = "resource:tests.embedapp:..."``, tests/embedapp.py), over HTTP/1.1 and
HTTP/2 with client certificates; ``check`` naming a module that does not import; and
``twistd -ny`` with a ``.tac`` handing ``make_service`` the application's own resource."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import context, get, tls_connect
from tests.h2client import H2Client
from tests.harness import (
    REPO,
    GatewayProcess,
    env,
    free_port,
    gateway_config,
    start_gateway,
    table,
)
from tests.opskit import wait_until
from twistedgw.testing.devpki import DevPki

APIS = [
    {"name": "app", "version": "1", "context": "/app",
     "backend": "resource:tests.embedapp:root", "mutual_ssl": "mandatory"},
    {"name": "klein", "version": "1", "context": "/shop/v1",
     "backend": "resource:tests.embedapp:app", "mutual_ssl": "optional", "api_key": "optional"},
]
IDENTITY = table("identity", {"forward": "headers"}) + table(
    "identity.headers", {"subject": "X-Client-Cert-Subject", "sha256": "X-Client-Cert-Sha256"})


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[GatewayProcess]:
    port = free_port()
    listeners = [{"host": "127.0.0.1", "port": port, "http2": True}]
    text = gateway_config(pki, APIS, port=port, listeners=listeners, api_keys={"shop": "k-1"},
                          extra=IDENTITY)
    started = start_gateway(tmp_path_factory.mktemp("inprocess"), text, port)
    try:
        yield started
    except BaseException:
        print(started.output())
        raise
    finally:
        started.stop()


def seen(response: Any) -> dict[str, Any]:
    assert response.status == 200, (response.status, response.body[:500])
    return json.loads(response.body)  # type: ignore[no-any-return]


def seen_state(gw: GatewayProcess, pki: DevPki) -> dict[str, Any]:
    """What tests/embedapp.py recorded in the gateway's process."""
    return seen(get(gw.port, "/app/left", pki, "partner-app"))


def headers_of(info: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in info["headers"] if n.lower() == name.lower()]


def test_plain_resource_behind_the_pipeline(gw: GatewayProcess, pki: DevPki) -> None:
    """The context is the prepath and the rest the postpath; the identity headers are set
    as for a network backend (and a client's forged copy dropped); isSecure, the client's
    address and the Host it used; a refused request never reaches the resource."""
    info = seen(get(gw.port, "/app/info/a/b%20c?x=1", pki, "partner-app",
                    headers={"X-Client-Cert-Subject": "CN=forged", "Connection": "keep-alive"}))
    assert info["prepath"] == ["app", "info"] and info["postpath"] == ["a", "b c"]
    assert info["uri"] == "/app/info/a/b%20c?x=1" and info["method"] == "GET"
    assert info["secure"] is True and info["client"] == "127.0.0.1"
    assert info["hostname"] == "localhost" and info["host"][1] == gw.port
    subjects = headers_of(info, "X-Client-Cert-Subject")
    assert len(subjects) == 1 and "partner-app" in subjects[0]
    assert headers_of(info, "X-Forwarded-Proto") == ["https"]
    assert headers_of(info, "X-Forwarded-For") == ["127.0.0.1"]
    assert headers_of(info, "Connection") == []  # hop-by-hop, as forwarding drops it
    refused = get(gw.port, "/app/info", pki)
    assert refused.status == 401 and refused.json()["code"] == "900902"
    later = seen(get(gw.port, "/app/later", pki, "partner-app", method="GET"))
    assert later["postpath"] == []
    posted = seen(get(gw.port, "/app/info", pki, "partner-app", method="POST",
                      body=b"z" * 70000))
    assert posted["body_len"] == 70000 and headers_of(posted, "Content-Length") == ["70000"]


def test_klein_app_over_http1_and_http2(gw: GatewayProcess, pki: DevPki) -> None:
    """Klein routes below the API's context, on HTTP/1.1 and on HTTP/2 streams (several on
    one connection), its Deferred answers included; the API key is removed before it."""
    one = seen(get(gw.port, "/shop/v1/items/42", pki, "partner-app", headers={"apikey": "k-1"}))
    assert one["item"] == "42" and one["clientproto"] == "HTTP/1.1"
    assert headers_of(one, "apikey") == []
    client = H2Client(gw.port, pki, "partner-app")
    try:
        ids = [client.start(f"/shop/v1/items/{n}") for n in range(5)]
        post = client.start("/shop/v1/items", method="POST", body=b"abc")
        client.wait([*ids, post])
        for n, stream in enumerate(ids):
            answer = seen(client.response(stream))
            assert answer["item"] == str(n) and answer["clientproto"] == "HTTP/2"
        created = client.response(post)
        assert created.status == 201 and json.loads(created.body) == {"created": 3}
        streamed = client.get("/app/stream/300000")
        assert streamed.status == 200 and streamed.body == b"x" * 300000
    finally:
        client.close()
    missing = get(gw.port, "/shop/v1/nothing", pki, "partner-app")
    assert missing.status == 404  # Klein's own 404: the API has no operations of its own


def test_producers_failures_and_a_client_that_leaves(gw: GatewayProcess, pki: DevPki) -> None:
    """A push producer paused by a client that stops reading (and finishing once it
    reads), twisted.web's static.File (a pull producer) with its Content-Length; a
    resource that raises answers the gateway's JSON 500 (nothing of the exception), one
    that fails mid-answer has its connection aborted; a client that leaves is told to
    the resource through notifyFinish."""
    conn = tls_connect(gw.port, context(pki, "partner-app"))
    try:
        conn.putrequest("GET", "/app/stream/8000000")
        conn.endheaders()
        time.sleep(0.5)  # the client reads nothing: the producer must be paused, not buffered
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200 and len(body) == 8000000
    finally:
        conn.close()
    assert seen_state(gw, pki)["pauses"][-1] > 0
    file = get(gw.port, "/app/file/200000", pki, "partner-app")
    assert file.status == 200 and file.body == b"y" * 200000
    assert file.header("Content-Length") == "200000"
    boom = get(gw.port, "/app/boom", pki, "partner-app")
    assert boom.status == 500 and boom.json()["code"] == "101500"
    assert b"secret" not in boom.body
    conn = tls_connect(gw.port, context(pki, "partner-app"))
    try:
        conn.putrequest("GET", "/app/boom-late")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(Exception):  # noqa: B017 (IncompleteRead or a reset)
            response.read()
    finally:
        conn.close()
    raw = tls_connect(gw.port, context(pki, "partner-app"))
    raw.putrequest("GET", "/app/hold")
    raw.endheaders()
    time.sleep(0.3)
    raw.sock.close()
    wait_until(lambda: "/app/hold" in seen_state(gw, pki)["left"],
               what="the resource to hear the client leave")


def test_check_names_a_resource_that_does_not_import(tmp_path: Path, pki: DevPki) -> None:
    apis = [{"name": "a", "context": "/a", "backend": "resource:tests.no_such_module:root"},
            {"name": "b", "context": "/b", "backend": "resource:tests.embedapp:missing"},
            {"name": "c", "context": "/c", "backend": "resource:tests.embedapp:LEFT"},
            {"name": "d", "context": "/d", "backend": "resource:"},
            {"name": "e", "context": "/e", "backend": "resource:not a spec"}]
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(pki, apis, port=free_port()))
    done = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(path)],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    said = done.stderr
    assert ("apis[4].backend: 'resource:not a spec': write resource:package.module:attribute "
            "(a Twisted resource to import), or resource: alone for one the embedding "
            "application supplies") in said
    assert "apis[0].backend: cannot import 'tests.no_such_module': No module named " in said
    assert "apis[1].backend: 'tests.embedapp' has no attribute 'missing'" in said
    assert ("apis[2].backend: tests.embedapp:LEFT is not a twisted.web resource (IResource) "
            "nor a Klein app, but list") in said
    # A bare resource: is the embedding application's to supply: check warns (run refuses:
    # test_twistd_tac_supplies_the_resource).
    assert "apis[3].backend" not in said
    path.write_text(gateway_config(pki, apis[3:4], port=free_port()))
    done = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(path)],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "twistedgw: warning: " in done.stderr and "apis[0].backend: 'resource:' is " \
        "supplied by the application that embeds twistedgw" in done.stderr


TAC = """\
import os
import signal

from twisted.application import service
from twisted.internet import reactor
from twisted.web import resource, static

import twistedgw

application = service.Application("orders-app")

# The application's own resource, served in process behind the gateway's checks.
orders = resource.Resource()
orders.putChild(b"hello", static.Data(b"hello from the application", "text/plain"))

gateway = twistedgw.make_service(os.environ["TWISTEDGW_CONFIG"], resources={"orders": orders})
gateway.setServiceParent(application)
signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload))
"""


def test_twistd_tac_supplies_the_resource(tmp_path: Path, pki: DevPki,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``twistd -ny`` a .tac that hands make_service its own resource for the API whose
    backend is ``resource:``; mutual TLS in front of it; it survives a reload."""
    port = free_port()
    apis = [{"name": "orders", "context": "/orders", "backend": "resource:",
             "mutual_ssl": "mandatory"}]
    directory = tmp_path / "gw"
    directory.mkdir()
    (directory / "app.tac").write_text(TAC)
    monkeypatch.setenv("TWISTEDGW_CONFIG", str(directory / "gateway.toml"))
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile=", "--logfile=-", "-y", str(directory / "app.tac")]
    gw = start_gateway(directory, gateway_config(pki, apis, port=port), port, argv=argv)
    try:
        ok = get(port, "/orders/hello", pki, "partner-app")
        assert ok.status == 200 and ok.body == b"hello from the application"
        assert get(port, "/orders/hello", pki).status == 401
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "Reloaded " in gw.output(), what="the reload")
        assert get(port, "/orders/hello", pki, "partner-app").body == b"hello from the application"
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
    # twistedgw run has nothing to supply it with: refused, naming the key.
    done = subprocess.run([sys.executable, "-m", "twistedgw", "run", "--config",
                           str(directory / "gateway.toml")], capture_output=True, text=True,
                          env=env(), timeout=60, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "apis[0].backend: 'resource:' is supplied by the application that embeds " \
           "twistedgw" in done.stderr


def test_each_worker_imports_the_resource(tmp_path: Path, pki: DevPki) -> None:
    """workers = 2: the parent hands the listener to two worker processes, each of which
    imports the resource itself and serves the API."""
    port = free_port()
    apis = [{"name": "app", "context": "/app", "backend": "resource:tests.embedapp:root",
             "mutual_ssl": "mandatory"}]
    text = "workers = 2\n" + gateway_config(pki, apis, port=port)
    gw = start_gateway(tmp_path / "gw", text, port)
    try:
        wait_until(lambda: gw.output().count("Started worker") >= 2, what="two workers")
        for _ in range(4):
            ok = get(port, "/app/ok", pki, "partner-app")
            assert ok.status == 200 and ok.body == b"ok"
        assert get(port, "/app/ok", pki).status == 401
    except BaseException:
        print(gw.output())
        raise
    finally:
        gw.stop()
