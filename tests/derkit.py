"""Certificates whose DER OpenSSL accepts and cryptography does not (or reads lazily).

OpenSSL and cryptography's Rust parser disagree on some encodings: an extension
whose ``critical`` FALSE is written out (DER omits a DEFAULT value), a BOOLEAN TRUE
encoded as 0x01, a PrintableString holding ``@``; and cryptography reads a subject
only when asked, so a TeletexString of control bytes loads and then raises. A client
can present any of these. Here a certificate is taken apart as a tree of DER TLVs,
edited and signed again by a key of the test's (so a CA's signature still holds).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

#: A node: (tag, bytes) for a primitive, (tag, [nodes]) for a constructed one.
Node = list[Any]


def parse(der: bytes, pos: int = 0, end: int | None = None) -> list[Node]:
    end = len(der) if end is None else end
    out: list[Node] = []
    while pos < end:
        tag, length = der[pos], der[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(der[pos : pos + size], "big")
            pos += size
        out.append([tag, parse(der, pos, pos + length) if tag & 0x20 else der[pos : pos + length]])
        pos += length
    return out


def serialise(nodes: list[Node]) -> bytes:
    out = b""
    for tag, value in nodes:
        body = serialise(value) if isinstance(value, list) else value
        size = len(body)
        length = (
            bytes([size]) if size < 0x80
            else bytes([0x80 | (size.bit_length() + 7) // 8])
            + size.to_bytes((size.bit_length() + 7) // 8, "big")
        )
        out += bytes([tag]) + length + body
    return out


def resigned(cert: x509.Certificate, key: Any, edit: Any) -> bytes:
    """``cert``'s DER with ``edit(tbs_nodes)`` applied, signed again with ``key`` (the
    issuer's: EC or RSA with SHA-256, as the dev PKI signs)."""
    tree = parse(cert.public_bytes(serialization.Encoding.DER))
    tbs_nodes = tree[0][1][0][1]
    edit(tbs_nodes)
    tbs = serialise([tree[0][1][0]])
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    tree[0][1][2] = [0x03, b"\x00" + signature]
    return serialise(tree)


def _extensions(tbs: list[Node]) -> list[Node]:
    return next(node for node in tbs if node[0] == 0xA3)[1][0][1]


def explicit_critical_false(tbs: list[Node]) -> None:
    """Write out ``critical`` FALSE in the first extension that leaves it to its default
    (cryptography: EncodedDefault)."""
    plain = next(ext[1] for ext in _extensions(tbs) if ext[1][1][0] != 0x01)
    plain.insert(1, [0x01, b"\x00"])


def teletex_subject(tbs: list[Node]) -> None:
    """The subject's first attribute as a TeletexString of control bytes: loads, and
    raises when the subject is read."""
    subject = tbs[5] if tbs[0][0] == 0xA0 else tbs[4]
    subject[1][0][1][0][1][1] = [0x14, b"\x00\xff\r\n"]


def _oid_der(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    out = b""
    for value in (40 * first + second, *rest):
        chunk = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            chunk.insert(0, 0x80 | (value & 0x7F))
        out += bytes(chunk)
    return out


def duplicated(oid: x509.ObjectIdentifier) -> Any:
    """An edit: the extension ``oid`` written twice (RFC 5280 4.2 forbids it; OpenSSL
    loads it, cryptography raises ``DuplicateExtension`` when the extensions are read)."""
    wanted = _oid_der(oid.dotted_string)

    def edit(tbs: list[Node]) -> None:
        extensions = _extensions(tbs)
        at = next(i for i, ext in enumerate(extensions) if ext[1][0][1] == wanted)
        extensions.insert(at + 1, extensions[at])

    return edit
