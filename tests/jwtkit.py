"""Signing keys, JWKS documents, tokens and RFC 8705 thumbprints for the JWT tests.

Keys are generated per test session in memory (joserfc); only public JWKS
documents are ever written to disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jwk, jws

ISSUER = "https://idp.example"
AUDIENCE = "orders"


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    alg: str
    key: Any  # a joserfc private key

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.key.as_dict(private=False))
        if self.kid is not None:
            doc["kid"] = self.kid
        doc["use"] = "sig"
        return doc


def ec(kid: str | None = "ec-1", crv: str = "P-256") -> SigningKey:
    return SigningKey(kid, "ES256" if crv == "P-256" else "ES384",
                      jwk.ECKey.generate_key(crv, private=True))


def rsa(kid: str | None = "rsa-1", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, "RS256", jwk.RSAKey.generate_key(bits, private=True))


def ed(kid: str | None = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", jwk.OKPKey.generate_key("Ed25519", private=True))


def jwks_doc(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public() for k in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks_doc(*keys)))
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def token(key: SigningKey, payload: Mapping[str, Any] | None = None, *,
          alg: str | None = None, **header: Any) -> str:
    """A compact JWS signed by ``key`` (``alg`` may be forced to test refusals)."""
    head: dict[str, Any] = {"typ": "at+jwt", "alg": alg or key.alg}
    if key.kid is not None:
        head["kid"] = key.kid
    head.update(header)
    head = {k: v for k, v in head.items() if v is not None}
    body = json.dumps(dict(payload if payload is not None else claims())).encode()
    signed: str = jws.serialize_compact(head, body, key.key, algorithms=[head["alg"]])
    return signed


def raw_token(key: SigningKey, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """Signed like ``token`` but with any header at all (joserfc refuses to make some)."""
    from joserfc.jws import JWSRegistry

    head = b64url(json.dumps(dict(header)).encode())
    body = b64url(json.dumps(dict(payload)).encode())
    signature = JWSRegistry.algorithms[header["alg"]].sign(f"{head}.{body}".encode(), key.key)
    return f"{head}.{body}.{b64url(signature)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: Mapping[str, Any], **header: Any) -> str:
    head = {"alg": "none", **header}
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(dict(payload)).encode())}."


def x5t(cert_or_path: x509.Certificate | Path) -> str:
    """RFC 8705 ``x5t#S256`` of a certificate."""
    cert = (
        x509.load_pem_x509_certificate(cert_or_path.read_bytes())
        if isinstance(cert_or_path, Path)
        else cert_or_path
    )
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def bound(cert: x509.Certificate | Path, **overrides: Any) -> dict[str, Any]:
    return claims(cnf={"x5t#S256": x5t(cert)}, **overrides)


# --------------------------------------------------------------------------- a JWKS server


@dataclass
class JwksServer:
    """A local HTTP server for one JWKS document, counting fetches; ``down`` answers 503."""

    document: bytes = b'{"keys": []}'
    down: bool = False
    hits: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    https: bool = False

    def set(self, *keys: SigningKey) -> None:
        self.document = json.dumps(jwks_doc(*keys)).encode()

    @property
    def url(self) -> str:
        if self.https:  # the certificate names localhost
            return f"https://localhost:{self.port}/jwks.json"
        return f"http://127.0.0.1:{self.port}/jwks.json"


@contextmanager
def jwks_server(*keys: SigningKey, tls: tuple[Path, Path] | None = None) -> Iterator[JwksServer]:
    """Serve ``keys`` as a JWKS on loopback; over HTTPS with ``tls`` = (cert, key) files."""
    state = JwksServer(https=tls is not None)
    state.set(*keys)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.hits += 1
                down, body = state.down, state.document
            if down:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/jwk-set+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
