"""Real NGINX and real HAProxy in front of twistedgw, and the AWS ALB example config.

Everything runs from the examples in ``conf/`` (rendered with this run's paths and
free loopback ports): NGINX and HAProxy terminate the client's mTLS and pass the
certificate in a header; twistedgw trusts that header only from them. NGINX talks
to twistedgw both ways the issue allows: over TLS presenting the ``lb``
certificate, and over plain HTTP from ``trusted_proxies``.

These tests FAIL (never skip) when nginx or haproxy is missing: CI must run them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import headerenc as enc
from tests.backend_fixture import BackendProcess, start_backend
from tests.harness import GatewayProcess, Response, free_port, start_gateway
from tests.lbsupport import (
    EXAMPLE_PKI,
    ProxyProcess,
    echoed_headers,
    error,
    example,
    get,
    prepare_lb_files,
    render,
    start_haproxy,
    start_nginx,
)
from twistedgw.identity import _reasons as reasons
from twistedgw.testing.devpki import DevPki

PET = "/petstore/1.0.5/pet/1?x=1"
HEADER = "X-SSL-Client-Cert"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    backend = start_backend(tmp_path_factory.mktemp("echo"))
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def lb_pki(pki: DevPki) -> DevPki:
    prepare_lb_files(pki)
    return pki


def gateway_toml(relative: str, pki: DevPki, echo: BackendProcess, port: int) -> str:
    text = render(example(relative), {
        EXAMPLE_PKI: str(pki.directory),
        "port = 9443": f"port = {port}",
        '"http://127.0.0.1:8080/v2"': f'"{echo.url}/v2"',
    })
    return text.replace('"http://127.0.0.1:8080/orders"', f'"{echo.url}/orders"')


def start_gw(tmp: pytest.TempPathFactory, name: str, text: str, port: int
             ) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp.mktemp(name), text, port)
    yield process
    process.stop()


@dataclass
class Front:
    """A proxy in front of a gateway; ``get`` goes through the proxy with mTLS."""

    proxy: ProxyProcess
    gateway: GatewayProcess
    pki: DevPki

    def get(self, path: str, client: str | None, headers: dict[str, str] | None = None
            ) -> Response:
        return get(self.proxy.port, path, headers or {}, pki=self.pki, client=client, tls=True)


# --------------------------------------------------------------------------- NGINX


def nginx_site(pki: DevPki, echo: BackendProcess, port: int, gw_port: int, *, plain: bool) -> str:
    text = render(example("nginx/twistedgw.conf"), {
        EXAMPLE_PKI: str(pki.directory),
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server 127.0.0.1:9443;": f"server 127.0.0.1:{gw_port};",
        "proxy_pass http://127.0.0.1:8080;": f"proxy_pass {echo.url};",
    })
    if plain:  # NGINX -> twistedgw over plain HTTP, trusted by source address
        text = render(text, {"proxy_pass https://twistedgw": "proxy_pass http://twistedgw"})
    return text


def nginx_gateway_plain(pki: DevPki, echo: BackendProcess, port: int) -> str:
    return render(gateway_toml("nginx/gateway.toml", pki, echo, port), {
        "# NGINX's upstream": "\ntls = false",
        "enable_client_validation = true ": (
            'enable_client_validation = false\ntrusted_proxies = ["127.0.0.1/32"]\n# '),
    })


@pytest.fixture(scope="module", params=["tls", "plain"])
def nginx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          lb_pki: DevPki, echo: BackendProcess) -> Iterator[Front]:
    plain = request.param == "plain"
    gw_port, port = free_port(), free_port()
    text = (nginx_gateway_plain(lb_pki, echo, gw_port) if plain
            else gateway_toml("nginx/gateway.toml", lb_pki, echo, gw_port))
    gateways = start_gw(tmp_path_factory, f"gw-nginx-{request.param}", text, gw_port)
    gateway = next(gateways)
    try:
        proxy = start_nginx(tmp_path_factory.mktemp(f"nginx-{request.param}"),
                            nginx_site(lb_pki, echo, port, gw_port, plain=plain), port)
        yield Front(proxy, gateway, lb_pki)
        proxy.stop()
    finally:
        next(gateways, None)


def test_nginx_passes_the_certificate_and_twistedgw_judges_it(nginx: Front) -> None:
    for client in ("partner-direct", "pinned"):
        r = nginx.get(PET, client)
        seen = echoed_headers(r)
        assert json.loads(r.body)["path"] == "/v2/pet/1?x=1"
        assert HEADER.lower() not in seen  # stripped by twistedgw before the backend
    assert error(nginx.get(PET, "other-app")) == (401, "900901", reasons.NOT_FOR_API)
    assert error(nginx.get(PET, "intruder")) == (401, "900901", reasons.UNTRUSTED)
    assert error(nginx.get(PET, None)) == (401, "900902", reasons.NONE)


def test_nginx_refuses_expired_certificates_itself(nginx: Front) -> None:
    """Documented in conf/nginx: optional_no_ca tolerates unknown CAs, not expiry."""
    r = nginx.get(PET, "expired")
    assert r.status == 400 and b"SSL certificate error" in r.body


def test_forged_header_through_nginx_does_not_win(nginx: Front) -> None:
    forged = {HEADER: enc.url_pem([nginx.pki.issued["partner-direct"].cert])}
    # No certificate: NGINX sends no header at all (proxy_set_header with an empty
    # value), so the client's copy never reaches twistedgw.
    assert error(nginx.get(PET, None, forged)) == (401, "900902", reasons.NONE)
    # With its own certificate, the caller is judged by that, not by its claim.
    assert error(nginx.get(PET, "other-app", forged)) == (401, "900901", reasons.NOT_FOR_API)


def test_nginx_keepalive_upstream_judges_every_request(nginx: Front) -> None:
    """NGINX reuses upstream connections across clients; identity is per request."""
    for _ in range(3):
        assert nginx.get(PET, "partner-direct").status == 200
        assert error(nginx.get(PET, "other-app"))[2] == reasons.NOT_FOR_API
        assert error(nginx.get(PET, None))[1] == "900902"


def test_nginx_auth_request(nginx: Front) -> None:
    r = nginx.get("/orders/list?status=open", "partner-direct")
    seen = echoed_headers(r)  # NGINX proxied to the backend itself
    assert json.loads(r.body)["path"] == "/orders/list?status=open"
    assert seen["x-client-subject"] == ["CN=partner-direct,O=twistedgw dev"]
    assert HEADER.lower() not in seen
    forged = {HEADER: enc.url_pem([nginx.pki.issued["partner-direct"].cert])}
    for client, headers in [("other-app", {}), ("pinned", {}), (None, {}), (None, forged),
                            ("other-app", forged), ("intruder", {})]:
        refused = nginx.get("/orders/list", client, headers)
        assert refused.status == 401, (client, refused.status)
        assert b'"path"' not in refused.body  # the backend was never reached
    assert "auth request unexpected status" not in nginx.proxy.output()


# --------------------------------------------------------------------------- HAProxy


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory, lb_pki: DevPki,
            echo: BackendProcess) -> Iterator[Front]:
    gw_port, port = free_port(), free_port()
    gateways = start_gw(tmp_path_factory, "gw-haproxy",
                        gateway_toml("haproxy/gateway.toml", lb_pki, echo, gw_port), gw_port)
    gateway = next(gateways)
    try:
        cfg = render(example("haproxy/twistedgw.cfg"), {
            EXAMPLE_PKI: str(lb_pki.directory),
            "bind :443 ": f"bind 127.0.0.1:{port} ",
            "server gw1 127.0.0.1:9443 ": f"server gw1 127.0.0.1:{gw_port} ",
        })
        proxy = start_haproxy(tmp_path_factory.mktemp("haproxy"), cfg, port)
        yield Front(proxy, gateway, lb_pki)
        proxy.stop()
    finally:
        next(gateways, None)


def test_haproxy_passes_base64_der_and_twistedgw_judges_it(haproxy: Front) -> None:
    for client in ("partner-direct", "pinned"):
        seen = echoed_headers(haproxy.get(PET, client))
        assert HEADER.lower() not in seen
    # crt-ignore-err all: every certificate reaches twistedgw, which says what is wrong.
    for client, reason in [("expired", reasons.EXPIRED), ("not-yet-valid", reasons.NOT_YET_VALID),
                           ("intruder", reasons.UNTRUSTED), ("other-app", reasons.NOT_FOR_API),
                           ("server-only", reasons.WRONG_PURPOSE)]:
        assert error(haproxy.get(PET, client)) == (401, "900901", reason), client
    assert error(haproxy.get(PET, None)) == (401, "900902", reasons.NONE)


def test_haproxy_sends_the_leaf_only(haproxy: Front) -> None:
    """ssl_c_der is the leaf: a certificate from an intermediate that is not in the
    truststore cannot chain (documented in conf/README.md)."""
    assert error(haproxy.get(PET, "partner-app")) == (401, "900901", reasons.UNTRUSTED)


def test_forged_header_through_haproxy_does_not_win(haproxy: Front) -> None:
    forged = {HEADER: enc.base64_der(haproxy.pki.issued["partner-direct"].cert)}
    assert error(haproxy.get(PET, None, forged)) == (401, "900902", reasons.NONE)
    assert error(haproxy.get(PET, "other-app", forged)) == (401, "900901", reasons.NOT_FOR_API)
    # The same forged header sent straight to twistedgw, bypassing HAProxy: ignored.
    direct = get(haproxy.gateway.port, PET, forged, pki=haproxy.pki, client="other-app",
                 tls=True)
    assert error(direct) == (401, "900901", reasons.NOT_FOR_API)


# --------------------------------------------------------------------------- AWS ALB


@pytest.fixture(scope="module")
def alb_gateway(tmp_path_factory: pytest.TempPathFactory, pki: DevPki,
                echo: BackendProcess) -> Iterator[GatewayProcess]:
    port = free_port()
    text = render(example("aws-alb/gateway.toml"), {
        EXAMPLE_PKI: str(pki.directory),
        'host = "0.0.0.0"\nport = 9090': f'host = "127.0.0.1"\nport = {port}',
        '["10.0.0.0/24", "10.0.1.0/24"]': '["127.0.0.2/32"]',
        '"http://127.0.0.1:8080/v2"': f'"{echo.url}/v2"',
    })
    yield from start_gw(tmp_path_factory, "gw-alb", text, port)


@pytest.mark.parametrize("raw", ["+/=", "+/"], ids=["alb-raw", "aws-example-%3D"])
def test_aws_alb_passthrough_header(alb_gateway: GatewayProcess, pki: DevPki, raw: str) -> None:
    """The header that breaks a plain URL-decode (wso2/api-manager#3058) passes here."""
    value = enc.aws_alb(pki.issued["partner-app"].full_chain, raw=raw)
    assert "+" in value
    alb = {"X-Amzn-Mtls-Clientcert": value}
    seen = echoed_headers(get(alb_gateway.port, PET, alb, source="127.0.0.2"))
    assert "x-amzn-mtls-clientcert" not in seen
    # From anywhere but the ALB's subnets the header is ignored.
    assert error(get(alb_gateway.port, PET, alb, source="127.0.0.1")) == (
        401, "900902", reasons.NONE)


def test_aws_alb_header_bad_certificates(alb_gateway: GatewayProcess, pki: DevPki) -> None:
    def judged(name: str) -> tuple[int, str, str]:
        value = enc.aws_alb(pki.issued[name].full_chain)
        return error(get(alb_gateway.port, PET, {"X-Amzn-Mtls-Clientcert": value},
                         source="127.0.0.2"))

    assert judged("expired") == (401, "900901", reasons.EXPIRED)
    assert judged("other-app") == (401, "900901", reasons.NOT_FOR_API)
    assert judged("intruder") == (401, "900901", reasons.UNTRUSTED)
    # What a decoder that reads '+' as a space would have been given: refused, not 5xx.
    broken = enc.aws_alb(pki.issued["partner-app"].full_chain).replace("+", " ")
    status, code, description = error(get(alb_gateway.port, PET,
                                           {"X-Amzn-Mtls-Clientcert": broken},
                                           source="127.0.0.2"))
    assert (status, code) == (401, "900901")
    assert description.startswith("certificate header could not be decoded")


def test_example_configs_pass_check(pki: DevPki, tmp_path: Path) -> None:
    """``twistedgw check`` accepts every example gateway config as shipped (paths aside)."""
    import subprocess
    import sys

    from tests.harness import env

    for relative in ("nginx/gateway.toml", "haproxy/gateway.toml", "aws-alb/gateway.toml"):
        path = tmp_path / relative.replace("/", "-")
        path.write_text(render(example(relative), {EXAMPLE_PKI: str(pki.directory)}))
        done = subprocess.run([sys.executable, "-m", "twistedgw", "check", "--config", str(path)],
                              capture_output=True, text=True, env=env())
        assert done.returncode == 0, (relative, done.stderr)
