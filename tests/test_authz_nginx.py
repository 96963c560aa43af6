"""The auth_request bypass (issue 17, item 4) against a real NGINX and gateway.

NGINX (conf/nginx/twistedgw.conf) asks twistedgw's authz endpoint about
``$request_uri`` and then forwards that raw URI to the backend under
``location /orders/``. The gateway used to judge the normalised path:
``/orders/admin/..;/public/`` was judged as an open API nested in ``/orders``
(200), and the backend received ``/orders/admin/..;/public/``, which a prefix
router (or Tomcat, for which ``..;`` is ``..`` only after routing) serves as the
admin page. Now every such spelling is refused with 403 and nothing is forwarded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.backend_fixture import BackendProcess
from tests.harness import GatewayProcess, Response, free_port, start_gateway
from tests.lbsupport import (
    EXAMPLE_PKI,
    ProxyProcess,
    error,
    example,
    get,
    prepare_lb_files,
    render,
    start_nginx,
)
from twistedgw.testing.devpki import DevPki

AUTHZ = "/_twistedgw/authz"

# An open API nested in the protected /orders context: what the attack reaches for.
OPEN_API = """
[[apis]]
name = "Orders public"
version = "v1"
context = "/orders/public"
backend = "{url}/orders/public"
"""

ATTACKS = [
    "/orders/admin/..;/public/",  # the report, in this config's names
    "/orders/admin/..;/..;/orders/public/",
    "/orders/admin/.;x/..;/public/x",
    "/orders/admin;x/../public/",
    "/orders/admin/../public/",
    "/orders/admin/./../public/?a=1",
    "/orders/admin/%2e%2e/public/",
    "/orders/admin/%2E%2e/public/",
    "/orders/admin/.%2e/public/",
    "/orders/%70ublic/",  # a raw prefix router does not see 'public' here
    "/orders//public/",
    "/orders/public;jsessionid=1/",
]


@dataclass
class Setup:
    nginx: ProxyProcess
    gateway: GatewayProcess
    backend: BackendProcess
    pki: DevPki

    def through_nginx(self, path: str) -> Response:
        return get(self.nginx.port, path, pki=self.pki, client=None, tls=True)

    def backend_requests(self) -> int:
        """Requests the backend received before this question (which counts next time)."""
        port = int(self.backend.url.rsplit(":", 1)[1])
        r = get(port, "/requests")
        return int(json.loads(r.body)["requests"])

    def forwarded_since(self, before: int) -> int:
        return self.backend_requests() - before - 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
          backend: BackendProcess) -> Iterator[Setup]:
    prepare_lb_files(pki)
    gw_port, port = free_port(), free_port()
    gateway_text = render(example("nginx/gateway.toml"), {
        EXAMPLE_PKI: str(pki.directory),
        "port = 9443": f"port = {gw_port}",
        '"http://127.0.0.1:8080/v2"': f'"{backend.url}/v2"',
        '"http://127.0.0.1:8080/orders"': f'"{backend.url}/orders"',
    }) + OPEN_API.format(url=backend.url)
    site = render(example("nginx/twistedgw.conf"), {
        EXAMPLE_PKI: str(pki.directory),
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server 127.0.0.1:9443;": f"server 127.0.0.1:{gw_port};",
        "proxy_pass http://127.0.0.1:8080;": f"proxy_pass {backend.url};",
    })
    gateway = start_gateway(tmp_path_factory.mktemp("gw-authz"), gateway_text, gw_port)
    try:
        nginx = start_nginx(tmp_path_factory.mktemp("nginx-authz"), site, port)
        yield Setup(nginx, gateway, backend, pki)
        nginx.stop()
    finally:
        gateway.stop()


def test_the_open_and_the_protected_api_through_nginx(setup: Setup) -> None:
    """The setup the attack needs: without a certificate the nested open API passes
    auth_request and reaches the backend; the rest of /orders does not."""
    r = setup.through_nginx("/orders/public/x?y=1")
    assert r.status == 200, r
    assert json.loads(r.body)["path"] == "/orders/public/x?y=1"
    before = setup.backend_requests()
    assert setup.through_nginx("/orders/admin/x").status == 401
    assert setup.forwarded_since(before) == 0
    assert setup.through_nginx("/orders/public/").status == 200
    assert setup.forwarded_since(before + 1) == 1  # the count sees a forwarded request


@pytest.mark.parametrize("path", ATTACKS)
def test_dot_segment_spellings_are_refused_and_nothing_is_forwarded(
    setup: Setup, path: str
) -> None:
    before = setup.backend_requests()
    r = setup.through_nginx(path)
    assert r.status == 403, (r.status, r.body[:300])
    assert b'"path"' not in r.body
    assert setup.forwarded_since(before) == 0, "the request reached the backend"
    assert "auth request unexpected status" not in setup.nginx.output()


@pytest.mark.parametrize("path", ATTACKS)
def test_the_authz_endpoint_answers_the_gateway_json(setup: Setup, path: str) -> None:
    """What NGINX got from twistedgw: 403 900908 saying why, not a verdict on another path."""
    r = get(setup.gateway.port, AUTHZ, {"X-Original-URI": path}, pki=setup.pki,
            client=None, tls=True)
    status, code, description = error(r)
    assert (status, code) == (403, "900908")
    assert "the proxy forwards it as sent" in description
