"""Per-API plugins through real gateway processes: a third-party plugin found on
PYTHONPATH, the two shipped header plugins, and a plugin that fails.

The in-memory pipeline tests (ordering, async stages, the combine rule) are in
test_policy.py; these check what only a real process shows: discovery with
``twisted.plugin``, per-API configuration, ``check`` output and the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import echoed, get
from tests.harness import GatewayProcess, env, free_port, gateway_config, start_gateway
from twistedgw.testing.devpki import DevPki

TAGGER = '''
"""A third-party plugin: tags forwarded requests, refuses ones that say X-Block."""
from twisted.plugin import IPlugin
from zope.interface import implementer

from twistedgw import errors
from twistedgw.pipeline import IAuthoriser, IGatewayPlugin, IRequestTransform, Refusal


@implementer(IAuthoriser, IRequestTransform)
class Tagger:
    def __init__(self, tag):
        self.tag = tag.encode()

    def authorise(self, call):
        if b"x-block" in call.request.headers:
            return Refusal(errors.forbidden("blocked by the tagger"))
        return None

    def transform_request(self, call, edit):
        edit.set(b"X-Tag", self.tag)
        if call.request.headers.first(b"x-explode") is not None:
            raise RuntimeError("the tagger exploded")


@implementer(IPlugin, IGatewayPlugin)
class TaggerPlugin:
    name = "tagger"
    description = "Tags forwarded requests."

    def configure(self, options, context):
        tag = options.required("tag", str)
        options.finish()
        return Tagger(tag)


tagger = TaggerPlugin()
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on PYTHONPATH holding twistedgw/plugins/tagger.py (no __init__.py)."""
    site = tmp_path / "site"
    drop = site / "twistedgw" / "plugins"
    drop.mkdir(parents=True)
    (drop / "tagger.py").write_text(textwrap.dedent(TAGGER))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    yield site


def start(tmp_path: Path, pki: DevPki, apis: list[dict[str, Any]], **kw: Any) -> GatewayProcess:
    port = free_port()
    return start_gateway(tmp_path / "gw", gateway_config(pki, apis, port=port, **kw), port)


def twistedgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twistedgw", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )


def test_a_third_party_plugin_on_pythonpath_is_configured_per_api(
    plugin_path: Path, tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    apis = [
        {"name": "Tagged", "version": "1", "context": "/tagged", "backend": backend.url,
         "plugins": [{"name": "tagger", "tag": "blue"}]},
        {"name": "Plain", "version": "1", "context": "/plain", "backend": backend.url},
    ]
    gw = start(tmp_path, pki, apis)
    try:
        tagged = get(gw.port, "/tagged/x", pki)
        assert tagged.status == 200
        assert echoed(tagged, "X-Tag") == ["blue"]
        # A client cannot pre-seed the value: set replaces it.
        forged = get(gw.port, "/tagged/x", pki, headers={"X-Tag": "red"})
        assert echoed(forged, "X-Tag") == ["blue"]
        plain = get(gw.port, "/plain/x", pki)
        assert plain.status == 200 and echoed(plain, "X-Tag") == []
        blocked = get(gw.port, "/tagged/x", pki, headers={"X-Block": "1"})
        assert blocked.status == 403
        assert blocked.json()["description"] == "blocked by the tagger"
        # A plugin that raises: 500 naming it, nothing forwarded, one traceback, still serving.
        before = backend_requests(backend)
        boom = get(gw.port, "/tagged/x", pki, headers={"X-Explode": "1"})
        assert boom.status == 500
        assert boom.json() == {
            "code": "500",
            "message": "Internal Server Error",
            "description": "plugin 'tagger' failed",
        }
        assert backend_requests(backend) == before + 1  # + the first /requests itself
        assert get(gw.port, "/tagged/x", pki).status == 200
        log = gw.output()
        assert log.count("RuntimeError: the tagger exploded") == 1  # one traceback
    finally:
        gw.stop()


def backend_requests(backend: BackendProcess) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(backend.url + "/requests", timeout=10) as r:
        return int(json.loads(r.read())["requests"])


def test_plugins_command_lists_installed_plugins_and_where_from(plugin_path: Path) -> None:
    done = twistedgw("plugins")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tagger = [line for line in lines if line.startswith("tagger ")]
    origin = plugin_path / "twistedgw" / "plugins" / "tagger.py"
    assert len(tagger) == 1 and str(origin) in tagger[0]
    assert any(line.startswith("request-headers ") for line in lines)
    assert any(line.startswith("response-headers ") for line in lines)
    assert any(line.startswith("mutual_ssl ") and "built-in" in line for line in lines)


def test_check_reports_plugin_problems_with_dotted_keys(
    plugin_path: Path, tmp_path: Path, pki: DevPki
) -> None:
    apis = [{"name": "A", "version": "1", "context": "/a", "backend": "http://127.0.0.1:1"}]
    plugins = textwrap.dedent("""
        [[apis.plugins]]
        name = "tagger"             # tag missing
        [[apis.plugins]]
        name = "no-such-plugin"
        [[apis.plugins]]
        name = "request-headers"
        set = { "Content-Length" = "1", "X-Ok" = "1" }
        remove = ["X-Forwarded-Client-Cert"]
        colour = "red"
        [[apis.plugins]]
        name = "response-headers"
        set = { "Bad Name" = "x" }
        """)
    config = tmp_path / "gateway.toml"
    text = gateway_config(pki, apis, port=free_port())
    config.write_text("workers = 0\n" + text + plugins)
    done = twistedgw("check", "--config", str(config))
    assert done.returncode == 2
    err = done.stderr
    assert "Traceback" not in err
    assert f"{config}: apis[0].plugins[0].tag: is required" in err
    assert "apis[0].plugins[1].name: unknown plugin 'no-such-plugin' (installed: " in err
    assert "request-headers" in err.split("unknown plugin")[1].splitlines()[0]
    assert "tagger" in err.split("unknown plugin")[1].splitlines()[0]
    assert "apis[0].plugins[2].set.Content-Length: 'Content-Length' is the gateway's own" in err
    assert "apis[0].plugins[2].remove[0]: 'X-Forwarded-Client-Cert' is the gateway's own" in err
    assert "apis[0].plugins[2].colour: unknown key" in err
    assert "apis[0].plugins[3].set.Bad Name: not a valid header name" in err
    # ... and the rest of the config's problems in the same pass.
    assert "workers: must be positive" in err


def test_shipped_header_plugins_end_to_end(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    plugins = [
        {"name": "request-headers", "set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
        {"name": "response-headers", "set": {"Strict-Transport-Security": "max-age=63072000"},
         "remove": ["X-Backend-Secret"]},
    ]
    apis = [
        {"name": "H", "version": "1", "context": "/h", "backend": backend.url,
         "plugins": plugins},
        {"name": "M", "version": "1", "context": "/m", "backend": backend.url,
         "mutual_ssl": "mandatory", "plugins": plugins},
    ]
    gw = start(tmp_path, pki, apis)
    try:
        r = get(gw.port, "/h/headers?set=X-Backend-Secret:s3cret", pki,
                headers={"X-Debug": "1", "X-Env": "dev"})
        assert r.status == 200
        assert echoed(r, "X-Env") == ["prod"]
        assert echoed(r, "X-Debug") == []
        assert r.header("Strict-Transport-Security") == "max-age=63072000"
        assert r.header("X-Backend-Secret") is None
        # Refusals are answers too: the response transforms apply to them.
        refused = get(gw.port, "/m/x", pki)
        assert refused.status == 401
        assert refused.header("Strict-Transport-Security") == "max-age=63072000"
        # And a verified caller passes, with both transforms.
        ok = get(gw.port, "/m/x", pki, client="partner-app")
        assert ok.status == 200 and echoed(ok, "X-Env") == ["prod"]
    finally:
        gw.stop()
