"""twistedgw vs NGINX, side by side in one run: ``python3 bench/run.py [--quick|--smoke]``.

Both proxies terminate mutual TLS with the same certificates and forward to the
same static NGINX backend (``return 200``) over keep-alive connections. Runs are
interleaved (A B, B A, ...) over several rounds; the report gives each system's
median and range and the median and range of the per-round ratios, because
absolute numbers drift on a shared machine while same-run ratios hold.

Load: ``wrk`` (HTTP/1.1 keep-alive, plain) -> a local HAProxy that originates TLS
with the client certificate -> the proxy under test. See bench/README.md for why.
Cores: the proxy under test is pinned to the last core, everything else
(wrk, HAProxy, the backend, the Python clients) to the other one(s).

Only 127.0.0.1 is used; every run is bounded in time; every process started
here is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twistedgw.testing import devpki  # noqa: E402

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
CORE_PROXY = str(NCPU - 1)
CORE_LOAD = "0" if NCPU == 1 else ",".join(str(i) for i in range(NCPU - 1))
ALB_HEADER = "X-Amzn-Mtls-Clientcert"
CLIENT = "partner-app"  # chains through an intermediate it sends itself


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def _raise_nofile() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        """The process and its children (NGINX's workers)."""
        pids = [self.popen.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.popen.pid:
                pids.append(int(stat.parent.name))
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(name: str, argv: list[str], core: str, work: Path, port: int | None,
          env: dict[str, str] | None = None, timeout: float = 30) -> Proc:
    log = work / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(pinned(core, argv), stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=work, preexec_fn=_raise_nofile)
    proc = Proc(name, popen, log)
    if port is not None:
        try:
            wait_port(port, popen, log, timeout)
        except Exception:
            proc.stop()
            raise
    return proc


def cpu0_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the load-generator cores."""
    busy = total = 0
    cores = {f"cpu{c}" for c in CORE_LOAD.split(",")}
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in cores:
            values = [int(v) for v in parts[1:]]
            idle = values[3] + values[4]
            busy += sum(values) - idle
            total += sum(values)
    return busy, total


# -- configs -----------------------------------------------------------------


def nginx_backend_conf(work: Path, port: int, port2: int | None = None) -> str:
    """The static backend; ``port2`` a second address of it (scenario 8's two backends)."""
    second = f"\n    listen 127.0.0.1:{port2} backlog=4096;" if port2 else ""
    return f"""
worker_processes 1;
user root;
pid {work}/backend.pid;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  default_type application/octet-stream;
  sendfile on;
  server {{
    listen 127.0.0.1:{port} backlog=4096;{second}
    location = /small {{ default_type text/plain; return 200 "ok\\n"; }}
    location /files/ {{ alias {work}/www/; }}
  }}
}}
"""


def nginx_proxy_conf(work: Path, name: str, pki: devpki.DevPki, port: int, backend: int) -> str:
    trust = work / f"{name}-trust.pem"
    trust.write_text("".join(p.read_text() for p in sorted(pki.truststore_dir.glob("*.pem"))))
    return f"""
worker_processes 1;
worker_rlimit_nofile 20000;
user root;
pid {work}/{name}.pid;
events {{ worker_connections 12000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 64;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {pki.server_cert};
    ssl_certificate_key {pki.server_key};
    ssl_client_certificate {trust};
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.2 TLSv1.3;
    # The same pool tuning as `twistedgw nginx-config` renders (session 8): it saves the
    # bare NGINX ~800 instructions per request too, so the fronted rows are not flattered.
    request_pool_size 16k;
    location /bench/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"""


def h2_gateway_conf(pki: devpki.DevPki, port: int, backend: int) -> str:
    """Scenario 9: twistedgw with ``http2 = true``; h2load presents no client certificate,
    so the API has mutual_ssl disabled (as NGINX's server has no ssl_verify_client)."""
    return f"""
[[listeners]]
host = "127.0.0.1"
port = {port}
http2 = true

[tls]
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"

[limits]
idle_timeout = 900.0
client_header_timeout = 900.0
max_connections = 20000

[[apis]]
name = "bench"
version = "1"
context = "/bench"
backend = "http://127.0.0.1:{backend}"
"""


def nginx_h2_conf(work: Path, name: str, pki: devpki.DevPki, port: int, backend: int) -> str:
    """Scenario 9: NGINX serving HTTP/2 (``listen ... http2``, which NGINX 1.25.1+ spells
    ``http2 on`` and still accepts with a warning), the same backend, no client certificate."""
    return f"""
worker_processes 1;
worker_rlimit_nofile 20000;
user root;
pid {work}/{name}.pid;
events {{ worker_connections 12000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 64;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;  # "http2 on;" from NGINX 1.25.1
    ssl_certificate {pki.server_cert};
    ssl_certificate_key {pki.server_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location /bench/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"""


def gateway_conf(pki: devpki.DevPki, port: int, backend: int, *, header_mode: bool,
                 jwks: Path | None = None, tracing: str = "", local: bool = False,
                 aliases: tuple[str, ...] = ("partner-root",)) -> str:
    listener = f'[[listeners]]\nhost = "127.0.0.1"\nport = {port}\n'
    if header_mode:
        listener += "tls = false\n"
    text = listener + f"""
[tls]
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
truststore = "{pki.truststore_dir}"

[limits]
idle_timeout = 900.0
client_header_timeout = 900.0
max_connections = 20000

[[apis]]
name = "bench"
version = "1"
context = "/bench"
backend = "http://127.0.0.1:{backend}"
mutual_ssl = "mandatory"
aliases = {json.dumps(list(aliases))}
"""
    if header_mode:
        text += f"""
[mutual_ssl]
certificate_header = "{ALB_HEADER}"
header_encoding = "aws-alb"
enable_client_validation = false
trusted_proxies = ["127.0.0.1/32"]
"""
    if local:  # scenario E: the same answer from a Twisted resource inside the gateway
        text += """
[[apis]]
name = "local"
version = "1"
context = "/local"
backend = "resource:inprocess_app:root"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
"""
    if jwks is not None:  # scenario 7: the same backend behind mTLS + a JWT
        text += f"""
[[apis]]
name = "jwt"
version = "1"
context = "/jwt"
backend = "http://127.0.0.1:{backend}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
jwt = "mandatory"

[[jwt_issuers]]
name = "bench"
issuer = "https://idp.bench"
jwks = "{jwks}"
audiences = ["bench"]
"""
    return text + tracing


def otlp_sink() -> tuple[str, Callable[[], None]]:
    """A collector that takes every OTLP/HTTP export and answers 200 (scenario 10): the
    gateway pays for making, queueing, encoding and sending its spans, nothing more."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces", stop


def tracing_conf(url: str, ratio: float) -> str:
    return f'\n[tracing]\notlp_endpoint = "{url}"\nsample_ratio = {ratio}\n'


def jwt_setup(work: Path, pki: devpki.DevPki) -> tuple[Path, dict[str, str]]:
    """A JWKS file (one P-256 and one RSA-2048 key) and tokens for scenario 7: ES256,
    ES256 bound to the load client's certificate (RFC 8705), RS256; valid for 4 hours."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from joserfc import jwk, jwt

    ec = jwk.ECKey.generate_key("P-256", private=True, parameters={"kid": "ec"})
    rsa = jwk.RSAKey.generate_key(2048, private=True, parameters={"kid": "rsa"})
    path = work / "jwks.json"
    path.write_text(json.dumps({"keys": [ec.as_dict(private=False),
                                         rsa.as_dict(private=False)]}))
    leaf = x509.load_pem_x509_certificate(pki.clients[CLIENT][0].read_bytes())
    x5t = base64.urlsafe_b64encode(
        hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
    ).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": "https://idp.bench", "aud": "bench", "sub": "bench", "iat": now,
              "exp": now + 4 * 3600}
    tokens = {
        "es256": jwt.encode({"alg": "ES256", "kid": "ec"}, claims, ec),
        "bound": jwt.encode({"alg": "ES256", "kid": "ec"},
                            {**claims, "cnf": {"x5t#S256": x5t}}, ec),
        "rs256": jwt.encode({"alg": "RS256", "kid": "rsa"}, claims, rsa),
    }
    return path, tokens


#: Scenario 8's API key (its SHA-256 is in the config) and the SNI entry's host.
FRONTED_KEY = "bench-key"
PARTNERS = "partners.example.com"


def fronted_gateway_conf(work: Path, name: str, pki: devpki.DevPki, port: int, backend: int,
                         cache_seconds: int, *, backend2: int | None = None,
                         jwks: Path | None = None, sni: tuple[Path, Path] | None = None
                         ) -> str:
    """The NGINX-fronted mode: twistedgw on a Unix socket, NGINX on ``port``; one API per
    row of issue 26's table: mTLS only (/bench), an API key (/key), a bearer token (/jwt),
    two backends load_balance (/pool), hosts under an SNI entry (/shop), tiers (/metered,
    a limit no run reaches: every request is counted)."""
    import hashlib

    text = f"""
[[listeners]]
endpoint = "unix:{work}/{name}.sock"
group = "{os.getgid()}"
tls = false

[tls]
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
truststore = "{pki.truststore_dir}"
"""
    if sni is not None:
        text += f"""
[[tls.sni]]
hosts = ["{PARTNERS}"]
certificate = "{sni[0]}"
private_key = "{sni[1]}"
"""
    text += f"""
[mutual_ssl]
certificate_header = "X-SSL-Client-Cert"
header_encoding = "url-pem"
enable_client_validation = false
trusted_proxies = ["unix"]
intermediates = "{pki.directory / 'intermediates.pem'}"

[authz]
cache_seconds = {cache_seconds}

[nginx]
listen = "127.0.0.1:{port}"
authz = "unix:{work}/{name}.sock"
cache_path = "{work}/{name}-cache"

[limits]
idle_timeout = 900.0
client_header_timeout = 900.0
max_connections = 20000

[[apis]]
name = "bench"
version = "1"
context = "/bench"
backend = "http://127.0.0.1:{backend}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]

[[api_keys]]
name = "bench-app"
key_sha256 = "{hashlib.sha256(FRONTED_KEY.encode()).hexdigest()}"

[[apis]]
name = "key"
version = "1"
context = "/key"
backend = "http://127.0.0.1:{backend}"
api_key = "mandatory"

[[apis]]
name = "metered"
version = "1"
context = "/metered"
backend = "http://127.0.0.1:{backend}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
tiers = [{{ alias = "partner-root", requests_per_minute = 100000000 }}]
"""
    if backend2 is not None:
        text += f"""
[[apis]]
name = "pool"
version = "1"
context = "/pool"
backends = ["http://127.0.0.1:{backend}", "http://127.0.0.1:{backend2}"]
"""
    if sni is not None:
        text += f"""
[[apis]]
name = "shop"
version = "1"
context = "/shop"
hosts = ["{PARTNERS}"]
backend = "http://127.0.0.1:{backend}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
"""
    if jwks is not None:
        text += f"""
[[apis]]
name = "jwt"
version = "1"
context = "/jwt"
backend = "http://127.0.0.1:{backend}"
jwt = "mandatory"

[[jwt_issuers]]
name = "bench"
issuer = "https://idp.bench"
jwks = "{jwks}"
audiences = ["bench"]
"""
    return text


def fronted_nginx_conf(work: Path, name: str, include: Path, modules: tuple[str, ...] = ()
                       ) -> str:
    temps = "\n".join(f"  {kind}_temp_path {work}/{name}-{kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    loads = "".join(f"load_module {m};\n" for m in modules)
    return f"""{loads}
pcre_jit on;
worker_processes 1;
worker_rlimit_nofile 20000;
user root;
pid {work}/{name}.pid;
events {{ worker_connections 12000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
{temps}
  include {include};
}}
"""


@dataclass
class Group:
    """Processes that together are the system under test (NGINX + twistedgw)."""

    name: str
    members: list[Proc]

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.members)

    def rss_kib(self) -> int:
        return sum(p.rss_kib() for p in self.members)

    def stop(self) -> None:
        for p in reversed(self.members):
            p.stop()


@dataclass
class Frontend:
    """One HAProxy listen section: plain HTTP in, the proxy under test out."""

    name: str
    port: int
    target: int
    mode: str  # "keepalive" | "full" | "resume" | "plain" | "fleet" | "fleet12"
    pki: devpki.DevPki | None = None
    sni: str = "localhost"  # the server name HAProxy sends and verifies
    fleet: tuple[Path, ...] = ()  # "fleet*": one HAProxy server (client certificate) each


def haproxy_conf(work: Path, fronts: list[Frontend]) -> str:
    text = f"""
global
    nbthread 1
    maxconn 9000
    pidfile {work}/haproxy.pid
    tune.ssl.cachesize 100000
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    maxconn 9000
"""
    for f in fronts:
        tls = ""
        if f.pki is not None:
            tls = (f" ca-file {f.pki.server_ca} verify required verifyhost {f.sni}"
                   f" sni str({f.sni}) alpn http/1.1")
        lines = [f"listen {f.name}", f"    bind 127.0.0.1:{f.port}"]
        if f.mode in ("keepalive", "plain"):
            lines.append("    http-reuse always")
        else:  # a new TCP+TLS connection to the proxy for every request
            lines += ["    option http-server-close", "    http-reuse never"]
        if f.fleet:
            # A fleet of clients, each with its own certificate: one server line each,
            # taken in turn, a full handshake every time (2d, 2e).
            lines.append("    balance roundrobin")
            extra = " no-ssl-reuse" + (" ssl-max-ver TLSv1.2" if f.mode == "fleet12" else "")
            servers = [f"server c{i} 127.0.0.1:{f.target} maxconn 20000 ssl crt {pem}{tls}"
                       f"{extra}" for i, pem in enumerate(f.fleet)]
        else:
            server = f"server s 127.0.0.1:{f.target} maxconn 20000"
            if f.pki is not None:
                pem = work / f"haproxy-client-{f.pki.directory.name}.pem"
                crt, key = f.pki.clients[CLIENT]
                pem.write_text(crt.read_text() + key.read_text())
                server += f" ssl crt {pem}{tls}"
            if f.mode == "full":
                server += " no-ssl-reuse"
            servers = [server]
        text += "\n".join([*lines, *("    " + x for x in servers)]) + "\n"
    return text


FLEET_SIZE = 2048
"""Distinct client certificates in the fleet scenarios (2d, 2e): more chains than the
gateway's verdict cache keeps (8 MiB, ~1,500 RSA chains), so taken in turn every full
handshake verifies a chain the cache has not seen, as with a fleet of real clients."""

FLEET_ALIAS = "bench-fleet-root"


def make_fleet(work: Path, pki: devpki.DevPki, count: int = FLEET_SIZE) -> tuple[Path, ...]:
    """RSA-2048 client certificates from an RSA root and intermediate (the root goes into
    ``pki``'s truststore as ``FLEET_ALIAS``): one PEM per client (leaf, intermediate, key),
    as HAProxy's ``crt`` takes them. Keys come from a pool of 16 (an RSA key takes ~0.1 s
    to make); every leaf is new, and a leaf is what the verdict cache is keyed by."""
    root = devpki.Authority.root("bench fleet root", "rsa")
    issuing = root.intermediate("bench fleet issuing CA")
    (pki.truststore_dir / f"{FLEET_ALIAS}.pem").write_bytes(devpki.cert_pem(root.cert))
    directory = work / "fleet"
    directory.mkdir()
    keys = [devpki.new_key("rsa") for _ in range(16)]
    paths = []
    for i in range(count):
        issued = issuing.issue(f"fleet-client-{i}", key=keys[i % len(keys)])
        path = directory / f"client-{i}.pem"
        path.write_bytes(devpki.cert_pem(*issued.full_chain) + devpki.key_pem(issued.key))
        paths.append(path)
    return tuple(paths)


# -- the bench ---------------------------------------------------------------


def generate_pki(directory: Path, key_type: devpki.KeyType) -> devpki.DevPki:
    """A dev PKI whose *server* key is ``key_type`` (clients and CAs stay ECDSA).

    The RSA case issues an RSA-2048 server certificate from the (ECDSA) server
    root: the handshake then costs an RSA-2048 signature on the server, which is
    what the scenario compares. (devpki.generate(..., "rsa") cannot always meet
    its own rule that every certificate's base64 holds '+', '/' and '=':
    RSA signatures have a fixed length, so a certificate's length mod 3 rarely
    changes between attempts.)
    """
    pki = devpki.generate(directory, "ec")
    if key_type == "ec":
        return pki
    server = pki.authorities["server-root"].server(("localhost",), key_type="rsa")
    crt, key = server.write(directory, "server-rsa")
    return dataclasses.replace(pki, server_cert=crt, server_key=key)


@dataclass
class Profile:
    rounds: int
    duration: float
    warmup: float
    sweep: tuple[int, ...]
    sweep_duration: float
    latency_duration: float
    idle_count: int
    stream_bytes: int
    scenarios: tuple[str, ...]
    fronted_rows: str = "abcdefg"  # scenario 8's rows to run (--fronted-rows)


ALL = ("keepalive", "handshake", "header", "large", "sweep", "latency", "memory", "jwt",
       "nginx-fronted", "h2", "tracing", "inprocess", "minimal")

PROFILES = {
    "full": Profile(5, 10, 2, (1, 8, 32, 128), 5, 15, 5000, 1 << 30, ALL),
    "quick": Profile(3, 5, 1, (1, 8, 32, 128), 3, 8, 5000, 1 << 30, ALL),
    "smoke": Profile(1, 1, 0, (), 0, 0, 0, 0, ("keepalive",)),
}


@dataclass
class Bench:
    work: Path
    profile: Profile
    rate: float
    baseline: Path | None = None  # another twistedgw source tree to compare against
    procs: dict[str, Any] = field(default_factory=dict)  # Proc or Group
    ports: dict[str, int] = field(default_factory=dict)
    pkis: dict[str, devpki.DevPki] = field(default_factory=dict)
    fronts: dict[str, Frontend] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # scenarios 7 and 8
    stop_sink: Callable[[], None] | None = None  # scenario 10's collector
    jwks: Path | None = None
    partners: tuple[Path, Path] | None = None  # scenario 8's SNI entry
    fleet: tuple[Path, ...] = ()  # scenarios 2d, 2e

    # setup

    def setup(self) -> None:
        www = self.work / "www"
        www.mkdir()
        (www / "64k").write_bytes(os.urandom(64 * 1024))
        (www / "1m").write_bytes(os.urandom(1024 * 1024))
        if self.profile.stream_bytes:
            with (www / "stream").open("wb") as f:  # sparse: no disk, nothing cached
                f.truncate(self.profile.stream_bytes)
        self.pkis["ec"] = generate_pki(self.work / "pki-ec", "ec")
        aliases: tuple[str, ...] = ("partner-root",)
        if "handshake" in self.profile.scenarios:
            self.pkis["rsa"] = generate_pki(self.work / "pki-rsa", "rsa")
            self.fleet = make_fleet(self.work, self.pkis["ec"])
            aliases += (FLEET_ALIAS,)
        backend = self.ports["backend"] = free_port()
        self.ports["backend2"] = free_port()
        conf = self.work / "backend.conf"
        conf.write_text(nginx_backend_conf(self.work, backend, self.ports["backend2"]))
        self.procs["backend"] = start(
            "backend", ["nginx", "-c", str(conf), "-p", str(self.work), "-e",
                        str(self.work / "backend-error.log"), "-g", "daemon off;"],
            CORE_LOAD, self.work, backend)
        gateway_env = dict(os.environ)
        gateway_env["PYTHONPATH"] = os.pathsep.join((str(REPO), str(HERE)))  # inprocess_app
        systems = [("gw-ec", "ec", False), ("ngx-ec", "ec", False)]
        if "handshake" in self.profile.scenarios:
            systems += [("gw-rsa", "rsa", False), ("ngx-rsa", "rsa", False)]
        if "header" in self.profile.scenarios:
            systems += [("gw-hdr", "ec", True)]
        if self.baseline is not None:  # rows 1b/1c, and 2a-2e against it with handshakes
            systems += [("gw-base", "ec", False)]
            if "handshake" in self.profile.scenarios:
                systems += [("gw-rsa-base", "rsa", False)]
        tracing: dict[str, str] = {}
        if "tracing" in self.profile.scenarios:  # scenario 10: [tracing] at ratio 0 and 1
            url, self.stop_sink = otlp_sink()
            tracing = {"gw-tr0": tracing_conf(url, 0.0), "gw-tr1": tracing_conf(url, 1.0)}
            systems += [("gw-tr0", "ec", False), ("gw-tr1", "ec", False)]
        jwks = None
        if "jwt" in self.profile.scenarios:
            jwks, self.tokens = jwt_setup(self.work, self.pkis["ec"])
            self.jwks = jwks
        fronts: list[Frontend] = []
        for name, kind, header in systems:
            pki = self.pkis[kind]
            port = self.ports[name] = free_port()
            if name.startswith("gw"):
                conf = self.work / f"{name}.toml"
                conf.write_text(gateway_conf(
                    pki, port, backend, header_mode=header,
                    jwks=jwks if name == "gw-ec" else None, tracing=tracing.get(name, ""),
                    local=name == "gw-ec" and "inprocess" in self.profile.scenarios,
                    aliases=aliases if kind == "ec" else aliases[:1]))
                argv = [sys.executable, "-m", "twistedgw", "run", "--config", str(conf)]
                env = gateway_env
                if name in ("gw-base", "gw-rsa-base"):
                    env = {**gateway_env, "PYTHONPATH": str(self.baseline)}
                self.procs[name] = start(name, argv, CORE_PROXY, self.work, port, env)
            else:
                conf = self.work / f"{name}.conf"
                conf.write_text(nginx_proxy_conf(self.work, name, pki, port, backend))
                argv = ["nginx", "-c", str(conf), "-p", str(self.work), "-e",
                        str(self.work / f"{name}-error.log"), "-g", "daemon off;"]
                self.procs[name] = start(name, argv, CORE_PROXY, self.work, port)
            handshakes = ["full", "resume", "fleet", "fleet12"] if self.fleet else []
            modes = ["plain"] if header else ["keepalive"] if name in (
                "gw-tr0", "gw-tr1") else (
                ["keepalive", *handshakes] if kind == "ec" else ["full"])
            for mode in modes:
                f = Frontend(f"{name}-{mode}", free_port(), port, mode,
                             None if header else pki,
                             fleet=self.fleet if mode.startswith("fleet") else ())
                fronts.append(f)
                self.fronts[f.name] = f
        if "minimal" in self.profile.scenarios:
            # Scenario 1m/1n: the stack's floor (bench/minimal_proxy.py), the same server
            # certificate and truststore as gw-ec, with twistedgw run's reactor changes.
            pki = self.pkis["ec"]
            port = self.ports["min"] = free_port()
            argv = [sys.executable, str(HERE / "minimal_proxy.py"), "--port", str(port),
                    "--backend", f"127.0.0.1:{backend}", "--cert", str(pki.server_cert),
                    "--key", str(pki.server_key), "--truststore", str(pki.truststore_dir),
                    "--reactor-changes"]
            self.procs["min"] = start("min", argv, CORE_PROXY, self.work, port, gateway_env)
            f = Frontend("min-keepalive", free_port(), port, "keepalive", pki)
            fronts.append(f)
            self.fronts[f.name] = f
        if "nginx-fronted" in self.profile.scenarios:
            if not self.tokens:
                self.jwks, self.tokens = jwt_setup(self.work, self.pkis["ec"])
            pki = self.pkis["ec"]
            self.partners = pki.authorities["server-root"].server((PARTNERS,)).write(
                self.work, "partners")
            for name, cache_seconds, variant in FRONTED:
                port = self.ports[name] = free_port()
                self.procs[name] = self.start_fronted(name, port, backend, cache_seconds,
                                                      gateway_env, variant)
                for front, sni in (("keepalive", "localhost"), ("sni", PARTNERS)):
                    f = Frontend(f"{name}-{front}", free_port(), port, "keepalive", pki, sni)
                    fronts.append(f)
                    self.fronts[f.name] = f
        if "h2" in self.profile.scenarios:  # h2load speaks TLS itself: no HAProxy front
            pki = self.pkis["ec"]
            names = ["gw-h2", "ngx-h2"] + (["gw-h2-base"] if self.baseline is not None else [])
            for name in names:
                port = self.ports[name] = free_port()
                if name.startswith("gw"):
                    conf = self.work / f"{name}.toml"
                    conf.write_text(h2_gateway_conf(pki, port, backend))
                    argv = [sys.executable, "-m", "twistedgw", "run", "--config", str(conf)]
                    env = gateway_env
                    if name == "gw-h2-base":
                        env = {**gateway_env, "PYTHONPATH": str(self.baseline)}
                    self.procs[name] = start(name, argv, CORE_PROXY, self.work, port, env)
                else:
                    conf = self.work / f"{name}.conf"
                    conf.write_text(nginx_h2_conf(self.work, name, pki, port, backend))
                    argv = ["nginx", "-c", str(conf), "-p", str(self.work), "-e",
                            str(self.work / f"{name}-error.log"), "-g", "daemon off;"]
                    self.procs[name] = start(name, argv, CORE_PROXY, self.work, port)
        conf = self.work / "haproxy.cfg"
        conf.write_text(haproxy_conf(self.work, fronts))
        # With the fleets, HAProxy loads a certificate and key per client per front end.
        self.procs["haproxy"] = start("haproxy", ["haproxy", "-db", "-f", str(conf)],
                                      CORE_LOAD, self.work, fronts[0].port, timeout=600)

    def start_fronted(self, name: str, port: int, backend: int, cache_seconds: int,
                      env: dict[str, str], variant: str = "auth_request") -> Group:
        """twistedgw on a Unix socket and NGINX on the include rendered from its TOML."""
        from twistedgw import config as configmod
        from twistedgw.app import nginx as nginxconf

        pki = self.pkis["ec"]
        toml = self.work / f"{name}.toml"
        text = fronted_gateway_conf(
            self.work, name, pki, port, backend, cache_seconds,
            backend2=self.ports["backend2"], jwks=self.jwks, sni=self.partners)
        toml.write_text(text)
        sock = self.work / f"{name}.sock"
        replay = name.endswith("-floor")  # twistedgw behind bench/replay_authz.py
        gw_toml, gw_sock = toml, sock
        if replay:
            gw_sock = self.work / f"{name}-gw.sock"
            gw_toml = self.work / f"{name}-gw.toml"
            gw_toml.write_text(text.replace(f'endpoint = "unix:{sock}"',
                                            f'endpoint = "unix:{gw_sock}"', 1))
        argv = [sys.executable, "-m", "twistedgw", "run", "--config", str(gw_toml)]
        members = [start(f"{name}-gw", argv, CORE_PROXY, self.work, None, env)]
        if replay:
            argv = [sys.executable, str(HERE / "replay_authz.py"), "--listen", str(sock),
                    "--gateway", str(gw_sock), "--reactor-changes"]
            members.append(start(f"{name}-replay", argv, CORE_PROXY, self.work, None, env))
        for proc, path in zip(members, (gw_sock, sock), strict=False):
            deadline = time.monotonic() + 30
            while not path.exists():
                if time.monotonic() > deadline or proc.popen.poll() is not None:
                    for m in members:
                        m.stop()
                    raise RuntimeError(f"{name}: {proc.name} did not listen:\n"
                                       f"{proc.log.read_text()}")
                time.sleep(0.05)
        include = self.work / f"{name}-site.conf"
        bundle = self.work / f"{name}-truststore.pem"
        rendered = nginxconf.render(configmod.load(toml), str(bundle), variant=variant,
                                    lua_dir=str(nginxconf.lua_source().parent))
        include.write_text(rendered.text)
        bundle.write_bytes(rendered.truststore_pem or b"")
        conf = self.work / f"{name}-nginx.conf"
        modules = nginxconf.LUA_MODULES if variant == "lua" else ()
        conf.write_text(fronted_nginx_conf(self.work, name, include, modules))
        try:
            ngx = start(f"{name}-nginx", ["nginx", "-c", str(conf), "-p", str(self.work), "-e",
                                          str(self.work / f"{name}-error.log"),
                                          "-g", "daemon off;"], CORE_PROXY, self.work, port)
        except Exception:
            for m in members:
                m.stop()
            raise
        return Group(name, [*members, ngx])

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self.stop_sink is not None:
            self.stop_sink()

    # measuring

    def wrk(self, front: str, path: str, conns: int, duration: float,
            headers: tuple[str, ...] = ()) -> dict[str, Any]:
        f = self.fronts[front]
        proxy = self.procs[front.rsplit("-", 1)[0]]
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
                "--timeout", "10s"]
        for h in headers:
            argv += ["-H", h]
        argv.append(f"http://127.0.0.1:{f.port}{path}")
        cpu_before, load_before = proxy.cpu_seconds(), cpu0_busy()
        t0 = time.monotonic()
        out = subprocess.run(pinned(CORE_LOAD, argv), capture_output=True, text=True,
                             timeout=duration + 60, check=False).stdout
        wall = time.monotonic() - t0
        cpu = proxy.cpu_seconds() - cpu_before
        load_after = cpu0_busy()
        result = parse_wrk(out)
        result["proxy_cpu"] = round(cpu / wall, 3)
        span = load_after[1] - load_before[1]
        result["load_core_busy"] = round((load_after[0] - load_before[0]) / span, 3) if span else 0
        result["rps_per_cpu"] = round(result["rps"] / max(cpu / wall, 1e-6), 1)
        if result.get("non_2xx"):
            result["non_2xx_sample"] = sample_answer(f.port, path, headers)
        return result

    def h2load(self, name: str, path: str, conns: int, streams: int,
               duration: float) -> dict[str, Any]:
        """h2load (HTTP/2 over TLS, ``streams`` concurrent streams per connection)."""
        proxy = self.procs[name]
        argv = ["h2load", "-t1", f"-c{conns}", f"-m{streams}",
                f"-D{max(1, round(duration))}", f"https://127.0.0.1:{self.ports[name]}{path}"]
        cpu_before = proxy.cpu_seconds()
        t0 = time.monotonic()
        out = subprocess.run(pinned(CORE_LOAD, argv), capture_output=True, text=True,
                             timeout=duration + 60, check=False).stdout
        wall = time.monotonic() - t0
        cpu = proxy.cpu_seconds() - cpu_before
        result = parse_h2load(out)
        result["proxy_cpu"] = round(cpu / wall, 3)
        result["rps_per_cpu"] = round(result["rps"] / max(cpu / wall, 1e-6), 1)
        return result

    def compare(self, a: Callable[[], dict[str, Any]], b: Callable[[], dict[str, Any]],
                key: str = "rps") -> dict[str, Any]:
        """Interleave a and b over the profile's rounds: A B, B A, A B, ..."""
        if self.profile.warmup:
            a(), b()
        runs_a: list[dict[str, Any]] = []
        runs_b: list[dict[str, Any]] = []
        for i in range(self.profile.rounds):
            if i % 2 == 0:
                runs_a.append(a())
                runs_b.append(b())
            else:
                runs_b.append(b())
                runs_a.append(a())
        return summarise(runs_a, runs_b, key)


def sample_answer(port: int, path: str, headers: tuple[str, ...]) -> str:
    """One answer from the front wrk just loaded, kept in the report as evidence when wrk
    counted answers that were not 2xx (wrk counts them; it does not say which)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for h in headers:
            name, _, value = h.partition(":")
            conn.putheader(name.strip(), value.strip())
        conn.endheaders()
        r = conn.getresponse()
        return f"{r.status} {r.reason}: {r.read()[:300]!r}"
    except (OSError, http.client.HTTPException) as e:
        return f"no answer: {e!r}"
    finally:
        conn.close()


def parse_wrk(out: str) -> dict[str, Any]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    def ms(value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s|m)", value)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
        return float(m.group(1)) * scale

    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(num(r"(\d+) requests in")),
        "non_2xx": int(num(r"Non-2xx or 3xx responses: (\d+)")),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50_ms": ms(lat.get("50", "")),
        "p99_ms": ms(lat.get("99", "")),
    }


def parse_h2load(out: str) -> dict[str, Any]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {
        "rps": num(r"finished in [\d.]+\w+, ([\d.]+) req/s"),
        "requests": int(num(r"requests: \d+ total, \d+ started, (\d+) done")),
        "non_2xx": sum(int(x) for x in codes.groups()[1:]) if codes else 0,
        "failures": int(num(r"(\d+) failed")) + int(num(r"(\d+) errored")),
        "protocol": "h2" if "Application protocol: h2" in out else "?",
    }


def summarise(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], key: str
              ) -> dict[str, Any]:
    va = [r[key] for r in runs_a]
    vb = [r[key] for r in runs_b]
    ratios = [x / y if y else float("nan") for x, y in zip(va, vb, strict=True)]
    return {
        "a": {"median": statistics.median(va), "min": min(va), "max": max(va), "runs": runs_a},
        "b": {"median": statistics.median(vb), "min": min(vb), "max": max(vb), "runs": runs_b},
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                  "rounds": ratios},
        "errors": sum(r.get("non_2xx", 0) + r.get("socket_errors", 0) + r.get("failures", 0)
                      for r in runs_a + runs_b),
        "rps_per_cpu_ratio": _cpu_ratio(runs_a, runs_b),
    }


def _cpu_ratio(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]]) -> float | None:
    if not all("rps_per_cpu" in r for r in runs_a + runs_b):
        return None
    a = statistics.median(r["rps_per_cpu"] for r in runs_a)
    b = statistics.median(r["rps_per_cpu"] for r in runs_b)
    return a / b if b else None


def _cpu_ratio_range(s: dict[str, Any]) -> tuple[float, float] | None:
    """The per-round per-proxy-CPU ratios' (min, max): the spread a figure is quoted with."""
    pairs = zip(s["a"].get("runs", []), s["b"].get("runs", []), strict=False)
    ratios = [a["rps_per_cpu"] / b["rps_per_cpu"] for a, b in pairs
              if a.get("rps_per_cpu") and b.get("rps_per_cpu")]
    return (min(ratios), max(ratios)) if ratios else None


# -- scenarios ---------------------------------------------------------------


def alb_header(pki: devpki.DevPki) -> str:
    crt, _key = pki.clients[CLIENT]
    return f"{ALB_HEADER}: {quote(crt.read_text(), safe='+/=')}"


def scenario_h2(b: Bench) -> list[dict[str, Any]]:
    d = b.profile.duration
    s = b.compare(lambda: b.h2load("gw-h2", "/bench/small", 8, 32, d),
                  lambda: b.h2load("ngx-h2", "/bench/small", 8, 32, d))
    rows = [row("9 HTTP/2 (h2load), small, 8 conns x 32 streams", "twistedgw", "NGINX", s,
                "req/s", ">=", 0.15, per_cpu=True)]
    if "gw-h2-base" in b.procs:
        base = b.compare(lambda: b.h2load("gw-h2", "/bench/small", 8, 32, d),
                         lambda: b.h2load("gw-h2-base", "/bench/small", 8, 32, d))
        rows.append(row("9b HTTP/2 (h2load), this tree vs --baseline", "twistedgw", "baseline",
                        base, "req/s", None, None))
    return rows


def scenario_keepalive(b: Bench) -> list[dict[str, Any]]:
    d = b.profile.duration
    s = b.compare(lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d),
                  lambda: b.wrk("ngx-ec-keepalive", "/bench/small", 32, d))
    rows = [row("1 keep-alive, small, 32 conns", "twistedgw", "NGINX", s, "req/s", ">=", 0.3,
                per_cpu=True)]
    if "gw-base-keepalive" in b.fronts:
        base = b.compare(lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d),
                         lambda: b.wrk("gw-base-keepalive", "/bench/small", 32, d))
        rows.append(row("1b keep-alive, this tree vs --baseline", "twistedgw", "baseline",
                        base, "req/s", None, None))
        before = b.compare(lambda: b.wrk("gw-base-keepalive", "/bench/small", 32, d),
                           lambda: b.wrk("ngx-ec-keepalive", "/bench/small", 32, d))
        rows.append(row("1c keep-alive, --baseline vs NGINX (the figure before)", "baseline",
                        "NGINX", before, "req/s", None, None))
    return rows


def scenario_minimal(b: Bench) -> list[dict[str, Any]]:
    """The stack's floor in the same run: bench/minimal_proxy.py (TLS with a required client
    certificate, a head read, one persistent backend connection per client, a relay; no
    routing, policy, metrics, timers or limits) against NGINX and against twistedgw, keep-alive
    as scenario 1. It asks for /small: with no routing, the target goes to the backend as
    it came (NGINX and twistedgw strip /bench)."""
    d = b.profile.duration
    s = b.compare(lambda: b.wrk("min-keepalive", "/small", 32, d),
                  lambda: b.wrk("ngx-ec-keepalive", "/bench/small", 32, d))
    rows = [row("1m minimal Twisted proxy vs NGINX, keep-alive, small, 32 conns", "minimal",
                "NGINX", s, "req/s", None, None)]
    s = b.compare(lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d),
                  lambda: b.wrk("min-keepalive", "/small", 32, d))
    rows.append(row("1n twistedgw vs the minimal Twisted proxy, keep-alive, small, 32 conns",
                    "twistedgw", "minimal", s, "req/s", None, None))
    return rows


def scenario_tracing(b: Bench) -> list[dict[str, Any]]:
    """[tracing] against no tracing, keep-alive as scenario 1, each pair interleaved."""
    d = b.profile.duration
    rows = []
    for name, label in (("gw-tr0", "10 [tracing] sample_ratio 0.0 vs off"),
                        ("gw-tr1", "10b [tracing] sample_ratio 1.0 vs off")):
        s = b.compare(lambda n=name: b.wrk(f"{n}-keepalive", "/bench/small", 32, d),
                      lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d))
        rows.append(row(label, "tracing", "off", s, "req/s", None, None))
    return rows


def scenario_inprocess(b: Bench) -> list[dict[str, Any]]:
    """The same gateway, the same mTLS API settings, the same answer: from a Twisted
    resource inside the gateway (A) or from the loopback NGINX backend (B), interleaved.
    Requests per second of the gateway's CPU (the backend's own CPU is not counted)."""
    d = b.profile.duration
    s = b.compare(lambda: b.wrk("gw-ec-keepalive", "/local/small", 32, d),
                  lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d), key="rps_per_cpu")
    return [row("E keep-alive, in-process resource vs loopback backend, 32 conns",
                "in-process", "loopback", s, "req/s per gateway CPU", None, None)]


HANDSHAKES = [
    ("2a new TLS conn/request, full handshake, ECDSA P-256", "full", "ec", 0.9),
    ("2b new TLS conn/request, full handshake, RSA-2048", "full", "rsa", 0.9),
    ("2c new TLS conn/request, session resumption (tickets), ECDSA", "resume", "ec", 0.8),
    (f"2d full handshake, a fleet of {FLEET_SIZE} RSA-2048 client certificates in turn "
     "(cold verdict cache), ECDSA server", "fleet", "ec", None),
    ("2e the same over TLS 1.2", "fleet12", "ec", None),
]


def scenario_handshake(b: Bench) -> list[dict[str, Any]]:
    d = b.profile.duration
    rows = []
    for label, mode, kind, target in HANDSHAKES:
        s = b.compare(lambda m=mode, k=kind: b.wrk(f"gw-{k}-{m}", "/bench/small", 32, d),
                      lambda m=mode, k=kind: b.wrk(f"ngx-{k}-{m}", "/bench/small", 32, d))
        rows.append(row(label, "twistedgw", "NGINX", s, "req/s",
                        ">=" if target else None, target))
    if b.baseline is None:
        return rows
    # Issue 27's handshake target: no worse than the same-run baseline minus 10%.
    for label, mode, kind, _target in HANDSHAKES:
        base = "gw-base" if kind == "ec" else f"gw-{kind}-base"
        s = b.compare(lambda m=mode, k=kind: b.wrk(f"gw-{k}-{m}", "/bench/small", 32, d),
                      lambda m=mode, n=base: b.wrk(f"{n}-{m}", "/bench/small", 32, d))
        code, _, what = label.partition(" ")
        rows.append(row(f"{code}/base this tree vs --baseline: {what}", "twistedgw",
                        "baseline", s, "req/s", ">=", 0.9))
    return rows


def scenario_header(b: Bench) -> list[dict[str, Any]]:
    d = b.profile.duration
    header = alb_header(b.pkis["ec"])
    s = b.compare(lambda: b.wrk("gw-hdr-plain", "/bench/small", 32, d, (header,)),
                  lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d))
    return [row("3 header mode (ALB header, plain HTTP) vs direct mTLS", "twistedgw header",
                "twistedgw direct", s, "req/s", ">=", 0.9)]


def scenario_jwt(b: Bench) -> list[dict[str, Any]]:
    """The cost of a JWT on top of mTLS: the same gateway, backend and connections."""
    d = b.profile.duration
    rows = []
    for label, token in [
        ("7a mTLS + JWT (ES256) vs mTLS only, keep-alive 32 conns", "es256"),
        ("7b mTLS + certificate-bound JWT (ES256, RFC 8705) vs mTLS only", "bound"),
        ("7c mTLS + JWT (RS256) vs mTLS only", "rs256"),
    ]:
        header = f"Authorization: Bearer {b.tokens[token]}"
        s = b.compare(
            lambda h=header: b.wrk("gw-ec-keepalive", "/jwt/small", 32, d, (h,)),
            lambda: b.wrk("gw-ec-keepalive", "/bench/small", 32, d),
        )
        rows.append(row(label, "twistedgw JWT", "twistedgw mTLS", s, "req/s", None, None))
    return rows


def scenario_large(b: Bench) -> list[dict[str, Any]]:
    d = b.profile.duration
    rows = []
    for size, conns in (("64k", 32), ("1m", 8)):
        s = b.compare(lambda z=size, c=conns: b.wrk("gw-ec-keepalive", f"/bench/files/{z}", c, d),
                      lambda z=size, c=conns: b.wrk("ngx-ec-keepalive", f"/bench/files/{z}", c, d))
        rows.append(row(f"4 keep-alive, {size.upper()}iB responses, {conns} conns", "twistedgw",
                        "NGINX", s, "req/s", None, None))
    return rows


#: Scenario 8's fronted pairs (NGINX + twistedgw): each variant warm (cache_seconds 10)
#: and cold (0: a decision per request).
FRONTED = (("fr-lua", 10, "lua"), ("fr-auth", 10, "auth_request"),
           ("fr-lua-cold", 0, "lua"), ("fr-auth-cold", 0, "auth_request"),
           ("fr-lua-floor", 0, "lua"), ("fr-auth-floor", 0, "auth_request"))

#: The rows that ask on every request, each also run against its floor: the same NGINX
#: and the same questions, answered by bench/replay_authz.py (twistedgw's answer, kept
#: the first time and replayed) instead of a decision: what any Python answerer costs.
FLOOR_ROWS = {("c", "auth_request"), ("f", "auth_request"), ("g", "lua"),
              ("g", "auth_request")}

#: Issue 26's table: (row, front, path, headers, target lua, target auth_request).
FRONTED_ROWS = (
    ("mTLS only", "keepalive", "/bench/small", (), 0.9, 0.85),
    ("API key", "keepalive", "/key/small", (f"apikey: {FRONTED_KEY}",), 0.9, 0.85),
    ("JWT, a token reused", "keepalive", "/jwt/small", ("jwt",), 0.85, 0.5),
    ("two backends, load_balance", "keepalive", "/pool/small", (), 0.85, 0.8),
    ("hosts + an SNI entry", "sni", "/shop/small", (f"Host: {PARTNERS}",), 0.85, 0.8),
    ("tiers (every request counted)", "keepalive", "/metered/small", (), 0.6, 0.5),
    ("cache_seconds = 0 (a decision per request)", "cold", "/bench/small", (), 0.5, 0.5),
)


def scenario_fronted(b: Bench) -> list[dict[str, Any]]:
    """Issue 26's table: NGINX carrying the traffic and asking twistedgw (each variant),
    against a bare NGINX doing the same mTLS termination and proxying, in the same run,
    both on the proxy core; keep-alive, small responses, 32 connections, warm verdicts."""
    d = b.profile.duration
    rows = []
    for letter, (label, front, path, headers, lua_target, ar_target) in zip(
        "abcdefg", FRONTED_ROWS, strict=True
    ):
        if letter not in b.profile.fronted_rows:
            continue
        hdrs = tuple(f"Authorization: Bearer {b.tokens['es256']}" if h == "jwt" else h
                     for h in headers)
        for variant, group, target in (("lua", "fr-lua", lua_target),
                                       ("auth_request", "fr-auth", ar_target)):
            name = f"{group}-cold-keepalive" if front == "cold" else f"{group}-{front}"
            s = b.compare(lambda n=name, p=path, h=hdrs: b.wrk(n, p, 32, d, h),
                          lambda: b.wrk("ngx-ec-keepalive", "/bench/small", 32, d))
            rows.append(row(f"8{letter} {label}, {variant}", f"NGINX+{variant} + twistedgw",
                            "bare NGINX mTLS", s, "req/s", ">=", target, per_cpu=True))
            if (letter, variant) not in FLOOR_ROWS:
                continue
            floor = f"{group}-floor-{'sni' if front == 'sni' else 'keepalive'}"
            s = b.compare(lambda n=floor, p=path, h=hdrs: b.wrk(n, p, 32, d, h),
                          lambda: b.wrk("ngx-ec-keepalive", "/bench/small", 32, d))
            rows.append(row(f"8{letter}/floor the same questions answered by a replay, "
                            f"{variant}", f"NGINX+{variant} + replay", "bare NGINX mTLS", s,
                            "req/s", None, None, per_cpu=True))
    return rows


def scenario_sweep(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": list(b.profile.sweep), "twistedgw": [], "nginx": []}
    for c in b.profile.sweep:
        for sysname, key in (("gw-ec", "twistedgw"), ("ngx-ec", "nginx")):
            b.wrk(f"{sysname}-keepalive", "/bench/small", c, 1)  # warm-up at this concurrency
            r = b.wrk(f"{sysname}-keepalive", "/bench/small", c, b.profile.sweep_duration)
            out[key].append(r["rps"])
    return out


def client_argv(b: Bench, mode: str, port: int, *extra: str) -> list[str]:
    pki = b.pkis["ec"]
    crt, key = pki.clients[CLIENT]
    return pinned(CORE_LOAD, [sys.executable, str(HERE / "clients.py"), mode, "--port",
                              str(port), "--cert", str(crt), "--key", str(key), "--ca",
                              str(pki.server_ca), *extra])


def scenario_latency(b: Bench) -> list[dict[str, Any]]:
    def run(name: str) -> dict[str, Any]:
        argv = client_argv(b, "latency", b.ports[name], "--path", "/bench/small", "--rate",
                           str(b.rate), "--duration", str(b.profile.latency_duration),
                           "--conns", "16")
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=b.profile.latency_duration + 90)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    s = b.compare(lambda: run("gw-ec"), lambda: run("ngx-ec"), key="p99_ms")
    s50 = summarise(s["a"]["runs"], s["b"]["runs"], "p50_ms")
    return [
        row(f"5 latency p50 at {b.rate:g} req/s open loop, 16 conns", "twistedgw", "NGINX", s50,
            "ms", None, None),
        row(f"5 latency p99 at {b.rate:g} req/s open loop, 16 conns", "twistedgw", "NGINX", s,
            "ms", "<=", 1.5),
    ]


def idle_rss(b: Bench, name: str) -> dict[str, Any]:
    proxy = b.procs[name]
    before = proxy.rss_kib()
    argv = client_argv(b, "idle", b.ports[name], "--path", "/bench/small", "--count",
                       str(b.profile.idle_count), "--hold", "300")
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              preexec_fn=_raise_nofile)
    assert client.stdout is not None and client.stdin is not None
    summary: dict[str, Any] = {}
    try:
        for line in client.stdout:
            if line.startswith("{"):
                summary = json.loads(line)
            if line.strip() == "READY":
                break
        time.sleep(1.0)
        after = proxy.rss_kib()
    finally:
        client.stdin.close()
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    opened = max(1, int(summary.get("open", 0)))
    time.sleep(1.0)  # let the proxy notice the closes
    return {"rss_before_kib": before, "rss_after_kib": after, **summary,
            "kib_per_conn": round((after - before) / opened, 1)}


def stream_rss(b: Bench, name: str) -> dict[str, Any]:
    proxy = b.procs[name]
    pki = b.pkis["ec"]
    crt, key = pki.clients[CLIENT]
    port = b.ports[name]
    before = proxy.rss_kib()
    peak = before
    argv = pinned(CORE_LOAD, [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
        "--max-time", "300", "--cert", str(crt), "--key", str(key), "--cacert",
        str(pki.server_ca), "--resolve", f"localhost:{port}:127.0.0.1",
        f"https://localhost:{port}/bench/files/stream"])
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    while client.poll() is None:
        peak = max(peak, proxy.rss_kib())
        time.sleep(0.05)
    out = (client.stdout.read() if client.stdout else "").split()
    status, size, seconds = [*out, "0", "0", "0"][:3]
    return {"rss_before_kib": before, "rss_peak_kib": peak,
            "growth_mib": round((peak - before) / 1024, 1), "status": int(status),
            "bytes": int(size), "seconds": float(seconds),
            "mib_per_s": round(int(size) / 1048576 / max(float(seconds), 1e-6), 1)}


def scenario_memory(b: Bench) -> list[dict[str, Any]]:
    rows = []
    # Streaming first: after 5,000 idle connections the gateway's heap has slack
    # (CPython keeps freed memory), which would hide the growth we want to see.
    stream = {n: stream_rss(b, n) for n in ("gw-ec", "ngx-ec")}
    idle = {n: idle_rss(b, n) for n in ("gw-ec", "ngx-ec")}
    rows.append(single(f"6a RSS per idle TLS connection ({b.profile.idle_count} conns)",
                       idle, "kib_per_conn", "KiB", "<=", 32.0))
    rows.append(single(f"6b RSS growth streaming {b.profile.stream_bytes >> 20} MiB", stream,
                       "growth_mib", "MiB", "<", 10.0))
    rows.append(single("6b streaming throughput", stream, "mib_per_s", "MiB/s", None, None))
    return rows


# -- report ------------------------------------------------------------------


def row(label: str, a: str, b: str, s: dict[str, Any], unit: str, op: str | None,
        target: float | None, per_cpu: bool = False) -> dict[str, Any]:
    """A compared row. With ``per_cpu`` the target is held to the per-proxy-CPU ratio (as
    issues 26 and 27 state theirs), else to the plain ratio."""
    met = None
    r = s.get("rps_per_cpu_ratio") if per_cpu else s["ratio"]["median"]
    if target is not None and r is not None:
        met = r >= target if op == ">=" else r <= target if op == "<=" else r < target
    shown = f"{op} {target:g}x{' per proxy CPU' if per_cpu else ''}" if target is not None else ""
    return {"scenario": label, "a_name": a, "b_name": b, "unit": unit, "summary": s,
            "target": shown, "met": met}


def single(label: str, values: dict[str, dict[str, Any]], key: str, unit: str, op: str | None,
           target: float | None) -> dict[str, Any]:
    """A row whose target is absolute (on twistedgw's own value), NGINX shown for scale."""
    gw, ngx = values["gw-ec"][key], values["ngx-ec"][key]
    met = None
    if target is not None:
        met = gw <= target if op == "<=" else gw < target
    s = {"a": {"median": gw, "min": gw, "max": gw, "runs": [values["gw-ec"]]},
         "b": {"median": ngx, "min": ngx, "max": ngx, "runs": [values["ngx-ec"]]},
         "ratio": {"median": gw / ngx if ngx else float("nan"), "min": None, "max": None},
         "errors": 0}
    return {"scenario": label, "a_name": "twistedgw", "b_name": "NGINX", "unit": unit,
            "summary": s, "target": f"{op} {target:g} {unit} (absolute)" if target else "",
            "met": met}


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v != v:
        return "nan"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# twistedgw vs NGINX — {meta['started']} ({meta['profile']})",
        "",
        f"{meta['rounds']} interleaved rounds of {meta['duration']} s; proxy under test on "
        f"core {CORE_PROXY}, load (wrk, HAProxy, backend, clients) on core(s) {CORE_LOAD}; "
        f"1 worker each. Values: median (min..max over rounds). Ratio = A/B per round.",
        "",
        "| scenario | A | A median (range) | B | B median (range) | ratio median (range) "
        "| A/B per proxy-CPU | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["summary"]
        a, b, q = s["a"], s["b"], s["ratio"]
        rng = (f" ({fmt(q['min'])}..{fmt(q['max'])})" if q.get("min") is not None else "")
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        cpu = s.get("rps_per_cpu_ratio")
        spread = _cpu_ratio_range(s) if "runs" in a and "runs" in b else None
        cpu_text = "" if cpu is None else f"{cpu:.3f}" + (
            f" ({spread[0]:.3f}..{spread[1]:.3f})" if spread else "")
        lines.append(
            f"| {r['scenario']} | {r['a_name']} | {fmt(a['median'])} {r['unit']} "
            f"({fmt(a['min'])}..{fmt(a['max'])}) | {r['b_name']} | {fmt(b['median'])} "
            f"({fmt(b['min'])}..{fmt(b['max'])}) | **{q['median']:.3f}**{rng} | "
            f"{cpu_text} | {r['target']} | {met} |"
        )
        if s.get("errors"):
            lines[-1] += f" ⚠ {s['errors']} errors"
            samples = {x["non_2xx_sample"] for x in a.get("runs", []) + b.get("runs", [])
                       if x.get("non_2xx_sample")}
            if samples:
                lines[-1] += " (one answer: " + "; ".join(sorted(samples)) + ")"
    if meta.get("resumption"):
        lines += ["", f"Resumption probe (a second connection offering the first's ticket): "
                  f"{meta['resumption']}"]
    lines += ["", "CPU: `proxy_cpu` (share of one core used by the proxy under test) and "
              "`load_core_busy` per run are in the JSON file. When NGINX's proxy_cpu is well "
              "under 1.0 the load side, not NGINX, was the limit, and the plain ratio flatters "
              "twistedgw; the per-proxy-CPU column corrects for that."]
    return "\n".join(lines) + "\n"


def plot(sweep: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("twistedgw", "twistedgw (1 process)"), ("nginx", "NGINX (1 worker)")):
        ax.plot(sweep["concurrency"], sweep[key], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent keep-alive connections")
    ax.set_ylabel("requests/s (small responses, mTLS)")
    ax.set_title("Proxied mTLS throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def probe_resumption(b: Bench) -> str:
    """Does each server resume a TLS 1.3 session from its ticket? (Python's ssl client.)"""
    import ssl

    pki = b.pkis["ec"]
    crt, key = pki.clients[CLIENT]
    out = []
    for name in ("gw-ec", "ngx-ec"):
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        ctx.load_cert_chain(str(crt), str(key))
        session = None
        reused = False
        statuses = []
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", b.ports[name]), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                s.sendall(b"GET /bench/small HTTP/1.1\r\nHost: localhost\r\n"
                          b"Connection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                statuses.append(data.split(b" ", 2)[1].decode())
                reused = s.session_reused
                session = s.session
        out.append(f"{name}: resumed={reused}, statuses={','.join(statuses)}")
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="3 rounds of 5 s (about 6 minutes)")
    g.add_argument("--smoke", action="store_true", help="1 round, 1 s, keep-alive only")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--fronted-rows", default="abcdefg",
                   help="scenario 8's rows to run, e.g. cfg (the rows deciding per request)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--rate", type=float, default=400.0, help="open-loop rate for scenario 5")
    p.add_argument("--idle-count", type=int)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--label", default="", help="a suffix for the result file names")
    p.add_argument("--keep-work", action="store_true", help="keep configs and logs")
    p.add_argument("--baseline", type=Path,
                   help="another twistedgw source tree (e.g. a git worktree of an older commit): "
                        "scenarios 1, 2 and 9 also compare this tree against it, interleaved, "
                        "same run")
    args = p.parse_args(argv)
    for tool in ("nginx", "haproxy", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = PROFILES[mode]
    if args.scenarios:
        wanted = tuple(s.strip() for s in args.scenarios.split(","))
        unknown = set(wanted) - set(ALL)
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        profile.scenarios = wanted
    profile.rounds = args.rounds or profile.rounds
    profile.fronted_rows = args.fronted_rows
    profile.duration = args.duration or profile.duration
    profile.idle_count = args.idle_count or profile.idle_count
    work = Path(tempfile.mkdtemp(prefix="twistedgw-bench-"))
    bench = Bench(work, profile, args.rate, args.baseline.resolve() if args.baseline else None)
    started = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "started": started, "profile": mode, "rounds": profile.rounds,
        "duration": profile.duration, "cpu_count": NCPU, "core_proxy": CORE_PROXY,
        "core_load": CORE_LOAD, "python": platform.python_version(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name")), "?"),
        "git": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip(),
    }
    sweep = None
    stop_timer = threading.Timer(3600, lambda: os.kill(os.getpid(), signal.SIGTERM))
    stop_timer.daemon = True
    stop_timer.start()
    try:
        bench.setup()
        for name, fn in (("keepalive", scenario_keepalive), ("handshake", scenario_handshake),
                         ("header", scenario_header), ("large", scenario_large),
                         ("sweep", None), ("latency", scenario_latency),
                         ("memory", scenario_memory), ("jwt", scenario_jwt),
                         ("nginx-fronted", scenario_fronted), ("h2", scenario_h2),
                         ("tracing", scenario_tracing), ("inprocess", scenario_inprocess),
                         ("minimal", scenario_minimal)):
            if name == "sweep" and name in profile.scenarios and profile.sweep:
                print("-- sweep", file=sys.stderr, flush=True)
                sweep = scenario_sweep(bench)
            elif fn is not None and name in profile.scenarios:
                print(f"-- {name}", file=sys.stderr, flush=True)
                new = fn(bench)
                rows += new
                for r in new:
                    print(f"   {r['scenario']}: ratio {r['summary']['ratio']['median']:.3f}",
                          file=sys.stderr, flush=True)
        if "handshake" in profile.scenarios:
            meta["resumption"] = probe_resumption(bench)
    finally:
        bench.stop()
        stop_timer.cancel()
        if args.keep_work:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{started}-{mode}" + (f"-{args.label}" if args.label else "")
    md = markdown(rows, meta)
    if sweep is not None:
        meta["sweep"] = sweep
        png = args.out / f"{stem}-concurrency.png"
        if plot(sweep, png):
            md += f"\n![throughput vs concurrency]({png.name})\n"
        md += "\n| concurrency | " + " | ".join(str(c) for c in sweep["concurrency"]) + " |\n"
        md += "|---|" + "---|" * len(sweep["concurrency"]) + "\n"
        for key in ("twistedgw", "nginx"):
            md += f"| {key} req/s | " + " | ".join(fmt(v) for v in sweep[key]) + " |\n"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"written: {args.out / stem}.md/.json", file=sys.stderr)
    bad = sum(r["summary"].get("errors", 0) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
