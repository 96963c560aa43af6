"""HTTP Basic authentication through a real gateway process and the real echo backend.

The users' hashes are made by ``twistedgw hash-password`` (a real process reading
the password from standard input); one API comes from an OpenAPI definition in
WSO2 Microgateway's shape (``securitySchemes`` ``type: http, scheme: basic``),
another from TOML (``basic_auth = "optional"`` beside an API key), and the authz
endpoint judges both. The pool, its bound and the cache are tested in memory
(test_basic_auth_unit.py).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend_fixture import BackendProcess
from tests.e2e import echoed, get
from tests.harness import (
    GatewayProcess,
    Response,
    env,
    free_port,
    gateway_config,
    start_gateway,
    table,
)
from tests.opskit import read_json_lines
from twistedgw.pipeline._basic import verify_password
from twistedgw.testing.devpki import DevPki

AUTHZ = "/_twistedgw/authz"
KEY = "a-key-for-orders"
PASSWORD = "wonder land ünïcode"
BOB_PASSWORD = "builder-b0b"


def definition(backend: str) -> str:
    """The petstore as a Microgateway 3.x project writes a Basic-authenticated API."""
    return f"""\
openapi: 3.0.1
info:
  title: Swagger Petstore
  version: 1.0.5
x-wso2-basePath: /petstore/{{version}}
x-wso2-production-endpoints:
  urls:
    - {backend}/v2
security:
  - mybasic: []
paths:
  /pet/{{petId}}:
    get:
      parameters:
        - {{name: petId, in: path, required: true, schema: {{type: integer}}}}
      responses:
        '200': {{description: a pet}}
  /store/inventory:
    get:
      x-wso2-disable-security: true
      responses:
        '200': {{description: open to all}}
components:
  securitySchemes:
    mybasic:
      type: http
      scheme: basic
"""


def hash_password(password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twistedgw", "hash-password"],
        input=password + "\n", capture_output=True, text=True, env=env(), timeout=60,
    )


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[tuple[GatewayProcess, Path]]:
    directory = tmp_path_factory.mktemp("basic")
    (directory / "petstore.yaml").write_text(definition(backend.url))
    made = hash_password(PASSWORD)
    assert made.returncode == 0, made.stderr
    alice_hash = made.stdout.strip()
    bob_hash = hash_password(BOB_PASSWORD).stdout.strip()
    port = free_port()
    log = directory / "access.jsonl"
    apis = [
        {"openapi": "petstore.yaml"},
        {"name": "orders", "context": "/orders", "backend": backend.url,
         "basic_auth": "optional", "api_key": "optional"},
    ]
    text = gateway_config(
        pki, apis, port=port, api_keys={"orders-key": KEY},
        extra=table("basic_users", {"name": "alice", "password_hash": alice_hash}, array=True)
        + table("basic_users", {"name": "bob", "password_hash": bob_hash}, array=True)
        + table("consumers", {"name": "acme", "basic_users": ["alice"]}, array=True)
        + table("authz", {"path": AUTHZ})
        + table("access_log", {"path": str(log)}),
    )
    process = start_gateway(directory, text, port)
    try:
        yield process, log
    except BaseException:
        print(process.output())
        raise
    finally:
        process.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def error(r: Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status, body["code"], body["description"]


def test_hash_password_reads_stdin_never_argv() -> None:
    made = hash_password("s3cret")
    assert made.returncode == 0
    phc = made.stdout.strip()
    assert phc.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(phc, b"s3cret") and not verify_password(phc, b"s3cret\n")
    empty = hash_password("")
    assert empty.returncode == 1 and "empty" in empty.stderr
    argv = subprocess.run(
        [sys.executable, "-m", "twistedgw", "hash-password", "s3cret"],
        capture_output=True, text=True, env=env(), timeout=60,
    )
    assert argv.returncode == 2 and "unrecognized arguments" in argv.stderr


def test_definition_basic_scheme(gw: tuple[GatewayProcess, Path], pki: DevPki) -> None:
    port = gw[0].port
    for _ in range(2):  # the second time from the cache of successful checks
        r = get(port, "/petstore/1.0.5/pet/7", pki, headers=basic("alice", PASSWORD))
        assert r.status == 200, r.body
        assert r.json()["path"] == "/v2/pet/7"
        assert echoed(r, "Authorization") == []  # the password never reaches the backend
        assert echoed(r, "X-Consumer-Name") == ["acme"]
    r = get(port, "/petstore/1.0.5/pet/7", pki, headers=basic("bob", BOB_PASSWORD))
    assert r.status == 200 and echoed(r, "X-Consumer-Name") == []
    challenge = 'Basic realm="Swagger Petstore", charset="UTF-8"'
    for headers in (basic("alice", "wrong"), basic("mallory", PASSWORD)):
        r = get(port, "/petstore/1.0.5/pet/7", pki, headers=headers)
        assert error(r) == (401, "900901", "user name or password is not valid")
        assert r.header_all("WWW-Authenticate") == [challenge]
    r = get(port, "/petstore/1.0.5/pet/7", pki)
    assert error(r) == (401, "900902", "no Basic credentials were presented")
    assert r.header_all("WWW-Authenticate") == [challenge]
    r = get(port, "/petstore/1.0.5/pet/7", pki, headers={"Authorization": "Basic not-base64!"})
    assert error(r) == (401, "900901", "Basic credentials are malformed")
    r = get(port, "/petstore/1.0.5/store/inventory", pki)  # x-wso2-disable-security
    assert r.status == 200


def test_toml_basic_auth_beside_an_api_key(gw: tuple[GatewayProcess, Path], pki: DevPki) -> None:
    port = gw[0].port
    r = get(port, "/orders/list", pki, headers=basic("bob", BOB_PASSWORD))
    assert r.status == 200 and echoed(r, "Authorization") == []
    r = get(port, "/orders/list", pki, headers={"apikey": KEY})
    assert r.status == 200
    r = get(port, "/orders/list", pki, headers=basic("bob", "wrong"))
    assert error(r)[:2] == (401, "900901")
    r = get(port, "/orders/list", pki)
    assert error(r)[:2] == (401, "900902")
    assert r.header_all("WWW-Authenticate") == ['Basic realm="orders", charset="UTF-8"']


def test_authz_endpoint_judges_basic(gw: tuple[GatewayProcess, Path], pki: DevPki) -> None:
    port = gw[0].port
    judged = {"X-Original-URI": "/petstore/1.0.5/pet/1", "X-Original-Method": "GET"}
    r = get(port, AUTHZ, pki, headers={**judged, **basic("alice", PASSWORD)})
    assert r.status == 200
    assert r.header("X-Twistedgw-Principal") == "basic:alice"
    assert r.header("X-Consumer-Name") == "acme"
    assert r.header("X-Accel-Expires") == "0"  # a password's verdict is never cached
    r = get(port, AUTHZ, pki, headers={**judged, **basic("alice", "wrong")})
    assert error(r)[:2] == (401, "900901")
    assert r.header_all("WWW-Authenticate") == ['Basic realm="Swagger Petstore", charset="UTF-8"']


def test_passwords_and_hashes_are_never_logged(
    gw: tuple[GatewayProcess, Path], pki: DevPki
) -> None:
    process, log = gw
    get(process.port, "/petstore/1.0.5/pet/2", pki, headers=basic("alice", "a-wrong-guess"))
    records = read_json_lines(log)
    assert {"acme", None} <= {rec["consumer"] for rec in records}  # the log is written
    assert any(rec["status"] == 401 for rec in records)
    everything = process.output() + log.read_text() + process.config.read_text().split(
        "[[basic_users]]")[0]
    for secret in (PASSWORD, BOB_PASSWORD, "a-wrong-guess",
                   base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), "$argon2id$"):
        assert secret not in everything
