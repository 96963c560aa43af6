"""TLS hardening from outside testing (issue 17): the verdict cache, CA leaves, groups, profiles.

Against real gateway processes over real TLS; the configuration rules in process.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.backend_fixture import BackendProcess
from tests.e2e import context, get, running_gateway, tls_connect
from tests.harness import GatewayProcess, gateway_config, send
from tests.tlsabuse import rss_kb
from twistedgw import config as configmod
from twistedgw.config import ConfigError
from twistedgw.identity import ClientIdentity, Outcome, Source, failed
from twistedgw.testing.devpki import DevPki
from twistedgw.tls import CA_AS_CLIENT, ChainVerifier
from twistedgw.tls import _pki as pkimod
from twistedgw.tls._server import _VerdictCache

UNTRUSTED = "certificate is not issued by a trusted CA"


@pytest.fixture(scope="module")
def hardened_gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, backend: BackendProcess
) -> Iterator[GatewayProcess]:
    apis = [
        {
            "name": "strict",
            "context": "/strict",
            "backend": backend.url,
            "mutual_ssl": "mandatory",
            "aliases": ["partner-root", "pinned-client"],
        },
        {"name": "open", "context": "/open", "backend": backend.url},
    ]
    with running_gateway(tmp_path_factory.mktemp("hardened-gw"), pki, apis) as gw:
        yield gw


# --- 9. a CA certificate is not a client certificate --------------------------------------


def test_ca_certificate_is_refused_in_the_handshake_path(
    hardened_gateway: GatewayProcess, pki: DevPki
) -> None:
    """cA asserted, issued by a trusted root, presented with its key over real TLS: refused."""
    response = get(hardened_gateway.port, "/strict/x", pki, "ca-as-client")
    assert response.status == 401, response.body
    assert response.json()["description"] == CA_AS_CLIENT
    # The same gateway still accepts an end-entity certificate from that root.
    assert get(hardened_gateway.port, "/strict/x", pki, "partner-direct").status == 200


def test_both_paths_refuse_a_ca_leaf_with_the_same_words(pki: DevPki) -> None:
    issued = pki.issued["ca-as-client"]
    truststore = pkimod.load_truststore(pki.truststore_dir)
    header = ChainVerifier(truststore, cache_size=0).verify((issued.cert, *issued.chain))
    assert header.outcome is Outcome.FAILED
    assert header.reason == CA_AS_CLIENT


def test_a_trusted_ca_presented_as_the_leaf_is_refused(
    hardened_gateway: GatewayProcess, pki: DevPki, tmp_path: Path
) -> None:
    """PARTIAL_CHAIN anchors a truststore CA presented by itself; it is still no client."""
    root = pki.authorities["partner-root"]
    crt, key = tmp_path / "root.crt", tmp_path / "root.key"
    crt.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        root.key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.load_cert_chain(str(crt), str(key))
    conn = tls_connect(hardened_gateway.port, ctx)
    try:
        response = send(conn, "/strict/x")
    finally:
        conn.close()
    assert response.status == 401
    assert response.json()["description"] == CA_AS_CLIENT


# --- 2. the verdict cache cannot be filled by failed handshakes ----------------------------


def _self_signed(cn: str, key: ec.EllipticCurvePrivateKey, extra: bytes = b"") -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if extra:
        # A private, non-critical extension: bulk that any verifier must still parse.
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), extra),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


def _junk_chain(kilobytes: int = 90) -> bytes:
    """About ``kilobytes`` of certificates that chain to nothing (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    out = b""
    for i in range(kilobytes // 9):
        cert = _self_signed(f"junk {i}", key, b"\x04\x82\x23\x00" + bytes(9 * 1024 - 256))
        out += cert.public_bytes(serialization.Encoding.PEM)
    return out


def _hostile_clients(directory: Path, count: int) -> Iterator[ssl.SSLContext]:
    """Client contexts, each with a fresh self-signed leaf and the same ~90 kB junk chain.

    Every other one refuses session tickets over TLS 1.2, as a client that wants
    the server to keep its session (and the chain in it) would.
    """
    junk = _junk_chain()
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _self_signed(f"hostile {i}", key)
        crt, key_file = directory / "leaf.crt", directory / "leaf.key"
        crt.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + junk)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(crt), str(key_file))
        if i % 2:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.options |= ssl.OP_NO_TICKET
        yield ctx


def _hostile_round(port: int, contexts: Iterator[ssl.SSLContext], count: int) -> None:
    for _ in range(count):
        ctx = next(contexts)
        conn = tls_connect(port, ctx)
        try:
            response = send(conn, "/strict/x")
        finally:
            conn.close()
        assert response.status == 401
        assert response.json()["description"] == UNTRUSTED


def test_failed_handshakes_with_huge_chains_do_not_grow_memory(
    hardened_gateway: GatewayProcess, pki: DevPki, tmp_path: Path
) -> None:
    """Each handshake: a new self-signed leaf and ~90 kB of junk. RSS from /proc stays flat.

    Before the fix every verdict was kept with the chain as presented: ~110 kB
    per handshake, so these 600 handshakes grew the gateway by ~65 MiB.
    """
    warmup, measured = 60, 600
    contexts = _hostile_clients(tmp_path, warmup + measured)
    pid = hardened_gateway.proc.pid
    _hostile_round(hardened_gateway.port, contexts, warmup)  # allocator pools, code paths
    before = rss_kb(pid)
    started = time.monotonic()
    _hostile_round(hardened_gateway.port, contexts, measured)
    grown = rss_kb(pid) - before
    print(f"{measured} hostile handshakes in {time.monotonic() - started:.1f}s: RSS +{grown} kB")
    assert grown < 12 * 1024, f"RSS grew by {grown} kB over {measured} hostile handshakes"
    # Legitimate callers, fresh and resumed, are judged as before.
    assert get(hardened_gateway.port, "/strict/x", pki, "partner-app").status == 200
    assert get(hardened_gateway.port, "/strict/x", pki, "intruder").status == 401


def test_resumed_failed_session_keeps_its_words(
    hardened_gateway: GatewayProcess, pki: DevPki
) -> None:
    """A failed verdict is not cached with its chain, but a resumed session still says why."""
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = context(pki, "expired", max_version=version)
        first = tls_connect(hardened_gateway.port, ctx)
        try:
            r1 = send(first, "/strict/r")
            session = first.sock.session
        finally:
            first.close()
        second = tls_connect(hardened_gateway.port, ctx, session=session)
        try:
            r2 = send(second, "/strict/r")
            assert second.sock.session_reused
        finally:
            second.close()
        assert r1.status == r2.status == 401
        assert r1.json()["description"] == r2.json()["description"] == "certificate has expired"


# --- 10. key exchange groups and the TLS profile --------------------------------------------


def _handshake_with_group(port: int, pki: DevPki, group: str) -> bool:
    """A TLS 1.3 handshake from a client that offers ``group`` only.

    pyOpenSSL with OpenSSL's group list, not the ssl module: in some Pythons (Debian 12's
    python3, 3.11.2) ``SSLContext.set_ecdh_curve`` goes through ``EC_KEY_new_by_curve_name``,
    which knows no X25519 or X448 ("unknown group"), so the test could not even start."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from twistedgw import _twisted

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.load_verify_locations(str(pki.server_ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
    assert lib.SSL_CTX_set1_curves_list(_twisted.ssl_ctx(ctx), group.encode()) == 1, group
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Blocking for OpenSSL's own reads, which the kernel still bounds to 10 s.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        try:
            conn.do_handshake()
        except SSL.Error:
            return False
        conn.shutdown()
        return True


def test_only_mozilla_groups_are_offered(hardened_gateway: GatewayProcess, pki: DevPki) -> None:
    """TLS 1.3, where the group is free of the certificate's curve (in TLS 1.2 a client
    must also accept the ECDSA certificate's curve, P-256, so one-group clients say less)."""
    offered = {
        group: _handshake_with_group(hardened_gateway.port, pki, group)
        for group in ("X25519", "prime256v1", "secp384r1", "secp521r1", "X448")
    }
    assert offered == {
        "X25519": True,
        "prime256v1": True,
        "secp384r1": True,
        "secp521r1": False,
        "X448": False,
    }


def _load(tmp_path: Path, pki: DevPki, tls: dict[str, Any]) -> configmod.GatewayConfig:
    path = tmp_path / "gateway.toml"
    api = {"name": "open", "context": "/open", "backend": "http://127.0.0.1:9"}
    path.write_text(gateway_config(pki, [api], port=9095, tls=tls))
    return configmod.load(path)


def test_profile_defaults_to_intermediate(tmp_path: Path, pki: DevPki) -> None:
    cfg = _load(tmp_path, pki, {})
    assert cfg.tls.profile == "intermediate"
    assert cfg.tls.protocols == ("TLSv1.2", "TLSv1.3")
    # Under intermediate, protocols and ciphers written out replace the profile's.
    cfg = _load(tmp_path, pki, {"protocols": ["TLSv1.3"], "ciphers": "ECDHE-RSA-AES128-GCM-SHA256"})
    assert cfg.tls.protocols == ("TLSv1.3",)
    assert cfg.tls.ciphers == "ECDHE-RSA-AES128-GCM-SHA256"


def test_modern_is_tls13_only(tmp_path: Path, pki: DevPki) -> None:
    assert _load(tmp_path, pki, {"profile": "modern"}).tls.protocols == ("TLSv1.3",)
    written = {"profile": "modern", "protocols": ["TLSv1.3"]}
    assert _load(tmp_path, pki, written).tls.protocols == ("TLSv1.3",)


@pytest.mark.parametrize(
    ("tls", "keys"),
    [
        ({"profile": "modern", "protocols": ["TLSv1.2", "TLSv1.3"]}, ["tls.protocols"]),
        ({"profile": "modern", "ciphers": "ECDHE-RSA-AES128-GCM-SHA256"}, ["tls.ciphers"]),
        (
            {"profile": "modern", "protocols": ["TLSv1.2"], "ciphers": "HIGH"},
            ["tls.protocols", "tls.ciphers"],
        ),
        ({"profile": "old"}, ["tls.profile"]),
    ],
)
def test_modern_refuses_keys_that_contradict_it(
    tmp_path: Path, pki: DevPki, tls: dict[str, Any], keys: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, pki, tls)
    problems = info.value.problems
    assert len(problems) == len(keys), problems
    path = (tmp_path / "gateway.toml").resolve()
    for line, key in zip(problems, keys, strict=True):
        assert line.startswith(f"{path}: {key}"), line


def test_modern_gateway_refuses_tls12(
    tmp_path: Path, pki: DevPki, backend: BackendProcess
) -> None:
    apis = [{"name": "open", "context": "/open", "backend": backend.url}]
    with running_gateway(tmp_path, pki, apis, tls={"profile": "modern"}) as gw:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            tls_connect(gw.port, ctx, timeout=10).close()
        conn = tls_connect(gw.port, ssl.create_default_context(cafile=str(pki.server_ca)))
        try:
            assert conn.sock.version() == "TLSv1.3"
            assert send(conn, "/open/x").status == 200
        finally:
            conn.close()


# --- the cache's bounds, in memory ------------------------------------------------------------


def test_verdict_cache_is_bounded_in_bytes_and_failures_never_evict(pki: DevPki) -> None:
    now = [0.0]
    cache = _VerdictCache(max_bytes=5000, max_failed=2, failed_ttl=60.0, clock=lambda: now[0])
    ok = [
        ClientIdentity(Source.HANDSHAKE, Outcome.VERIFIED, (pki.issued[n].cert,))
        for n in ("partner-app", "partner-direct", "partner-rsa", "other-app", "pinned")
    ]
    for identity in ok:
        cache.put(identity)
        assert cache.bytes <= cache.max_bytes
    assert cache.get(ok[0].chain[0]) is None  # least recently used, evicted by size
    assert cache.get(ok[-1].chain[0]) is ok[-1]
    kept = cache.bytes
    # Failed handshakes: only a reason each, in their own bounded map.
    leaves = [_self_signed(f"f{i}", ec.generate_private_key(ec.SECP256R1())) for i in range(5)]
    for leaf in leaves:
        cache.put(failed(Source.HANDSHAKE, UNTRUSTED, (leaf, *[pki.issued["lb"].cert] * 50)))
    assert cache.bytes == kept
    assert cache.get(ok[-1].chain[0]) is ok[-1]
    assert cache.get(leaves[0]) is None  # beyond max_failed
    resumed = cache.get(leaves[-1])
    assert resumed is not None and resumed.reason == UNTRUSTED
    assert resumed.chain == (leaves[-1],)  # the leaf only, not what was presented
    now[0] = 61.0
    assert cache.get(leaves[-1]) is None  # failed reasons expire
