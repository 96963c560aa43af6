"""Start the gateway as users do (a real process) and talk real TLS to it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twistedgw.testing.devpki import DevPki

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def table(name: str, values: Mapping[str, Any], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return head + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"


def gateway_config(
    pki: DevPki,
    apis: Iterable[Mapping[str, Any]],
    *,
    port: int,
    api_keys: Mapping[str, str] | None = None,
    tls: Mapping[str, Any] | None = None,
    extra: str = "",
    listeners: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """A TOML config text. ``api_keys`` maps name -> the key itself (hashed here)."""
    import hashlib

    tls_values = {
        "certificate": str(pki.server_cert),
        "private_key": str(pki.server_key),
        "truststore": str(pki.truststore_dir),
    }
    tls_values.update(tls or {})
    tls_values = {k: v for k, v in tls_values.items() if v is not None}
    text = ""
    for listener in listeners or [{"host": "127.0.0.1", "port": port}]:
        text += table("listeners", listener, array=True)
    text += table("tls", tls_values)
    for api in apis:
        text += table("apis", api, array=True)
    for name, key in (api_keys or {}).items():
        text += table(
            "api_keys",
            {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest()},
            array=True,
        )
    return text + extra


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    log: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_gateway(
    directory: Path, config_text: str, port: int, *, argv: list[str] | None = None,
    wait_for: Iterable[int] = (),
) -> GatewayProcess:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text(config_text)
    log = directory / "gateway.log"
    command = argv or [sys.executable, "-m", "twistedgw", "run", "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env(),
                                cwd=directory)
    gw = GatewayProcess(proc, port, config, log)
    try:
        for p in (port, *wait_for):
            wait_port(p, proc, log=log)
    except Exception:
        gw.stop()
        raise
    return gw


def client_context(pki: DevPki, client: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the gateway and presents ``client``'s certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    if client is not None:
        crt, key = pki.clients[client]
        ctx.load_cert_chain(str(crt), str(key))
    return ctx


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, pki: DevPki | None = None, client: str | None = None,
            timeout: float = 30.0) -> http.client.HTTPConnection:
    if pki is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return http.client.HTTPSConnection("localhost", port, context=client_context(pki, client),
                                       timeout=timeout)


def send(conn: http.client.HTTPConnection, path: str, method: str = "GET",
         headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
         body: bytes | None = None) -> Response:
    conn.putrequest(method, path, skip_accept_encoding=True)
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    for k, v in items:
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    return Response(r.status, r.getheaders(), r.read())


def request(port: int, path: str, pki: DevPki | None = None, client: str | None = None,
            **kwargs: Any) -> Response:
    conn = connect(port, pki, client)
    try:
        return send(conn, path, **kwargs)
    finally:
        conn.close()
