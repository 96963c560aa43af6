"""Helpers for the load-balancer tests: header-mode gateways, real NGINX and HAProxy.

NGINX and HAProxy run as our own foreground processes (never system services),
with their configs, pid files and logs in a temporary directory and on free
loopback ports. Their site configs are the examples in ``conf/``, rendered by
replacing the example's paths and ports, so the examples are what the tests run.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, Response, client_context, wait_port
from twistedgw.testing.devpki import DevPki

CONF = REPO / "conf"
EXAMPLE_PKI = "/etc/twistedgw/pki"


# --------------------------------------------------------------------------- configs


def render(template: str, replacements: Mapping[str, str]) -> str:
    """``template`` with each key replaced; every key must occur (so a drifting example
    fails loudly instead of silently testing something else)."""
    for old, new in replacements.items():
        assert old in template, f"{old!r} not found in the example config"
        template = template.replace(old, new)
    return template


def example(relative: str) -> str:
    return (CONF / relative).read_text()


def prepare_lb_files(pki: DevPki) -> None:
    """The files the NGINX/HAProxy examples name that ``dev-pki`` does not write."""
    d = pki.directory
    trust = d / "truststore"
    (d / "client-cas.pem").write_bytes(
        (trust / "partner-root.pem").read_bytes() + (trust / "other-root.pem").read_bytes()
    )
    (d / "haproxy").mkdir(exist_ok=True)
    (d / "haproxy" / "server.pem").write_bytes(
        (d / "server.crt").read_bytes() + (d / "server.key").read_bytes()
    )
    (d / "haproxy" / "lb.pem").write_bytes(
        (d / "clients" / "lb.crt").read_bytes() + (d / "clients" / "lb.key").read_bytes()
    )


def mutual_ssl_table(**values: Any) -> str:
    from tests.harness import table

    return table("mutual_ssl", values)


# --------------------------------------------------------------------------- clients


def connect(
    port: int,
    *,
    pki: DevPki | None = None,
    client: str | None = None,
    tls: bool = False,
    source: str = "127.0.0.1",
    timeout: float = 30.0,
) -> http.client.HTTPConnection:
    """A connection to 127.0.0.1:``port`` from the loopback address ``source``.

    Loopback is all of 127/8 on Linux, so ``source`` lets one host play both a
    trusted proxy and a direct client.
    """
    if not tls:
        return http.client.HTTPConnection(
            "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
        )
    assert pki is not None
    ctx: ssl.SSLContext = client_context(pki, client)
    return http.client.HTTPSConnection(
        "127.0.0.1", port, context=ctx, timeout=timeout, source_address=(source, 0)
    )


def send(
    conn: http.client.HTTPConnection,
    path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    method: str = "GET",
) -> Response:
    conn.putrequest(method, path, skip_accept_encoding=True)
    items = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in items:
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    return Response(r.status, r.getheaders(), r.read())


def get(port: int, path: str, headers: Any = (), **kwargs: Any) -> Response:
    conn = connect(port, **kwargs)
    try:
        return send(conn, path, headers)
    finally:
        conn.close()


def echoed_headers(response: Response) -> dict[str, list[str]]:
    """The request headers the echo backend saw, by lower-case name."""
    assert response.status == 200, (response.status, response.body[:300])
    out: dict[str, list[str]] = {}
    for name, value in json.loads(response.body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def error(response: Response) -> tuple[int, str, str]:
    """(status, code, description) of a gateway JSON error."""
    assert response.header("content-type") == "application/json", response
    body = response.json()
    return response.status, body["code"], body["description"]


# --------------------------------------------------------------------------- processes


def require(binary: str) -> str:
    """The path of ``binary``; FAIL (never skip) when it is missing: CI must run these."""
    found = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/local/sbin") / binary)
         if p.exists()),
        None,
    )
    if found is None:
        pytest.fail(
            f"{binary} is not installed: the load-balancer tests run a real {binary} and must "
            f"not be skipped. Install it (./run-tests does: apt-get install {binary}).",
            pytrace=False,
        )
    return found


@dataclass
class ProxyProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    log: Path

    def output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        error_log = self.directory / "error.log"
        if error_log.exists():
            text += error_log.read_text(errors="replace")
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(name: str, argv: list[str], directory: Path, port: int) -> ProxyProcess:
    log = directory / f"{name}.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    process = ProxyProcess(name, proc, port, directory, log)
    try:
        wait_port(port, proc, timeout=20, log=log)
    except Exception as e:
        process.stop()
        raise RuntimeError(f"{name} did not start: {e}\n{process.output()}") from None
    return process


def start_nginx(directory: Path, site_conf: str, port: int) -> ProxyProcess:
    """Run NGINX in the foreground with ``site_conf`` included in its http {} block."""
    nginx = require("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "site.conf").write_text(site_conf)
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
{temp}
    include {directory / "site.conf"};
}}
"""
    )
    argv = [nginx, "-p", str(directory), "-c", str(directory / "nginx.conf"),
            "-e", str(directory / "error.log")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t refused the config:\n{check.stderr}")
    return _spawn("nginx", argv, directory, port)


def start_haproxy(directory: Path, cfg: str, port: int) -> ProxyProcess:
    """Run HAProxy in the foreground (-db) on ``cfg``."""
    haproxy = require("haproxy")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "haproxy.cfg"
    path.write_text(cfg)
    check = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c refused the config:\n{check.stdout}{check.stderr}")
    argv = [haproxy, "-db", "-f", str(path), "-p", str(directory / "haproxy.pid")]
    return _spawn("haproxy", argv, directory, port)
