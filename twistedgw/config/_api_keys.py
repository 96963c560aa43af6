"""``[[api_keys]]``: API keys, kept as SHA-256 digests only."""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader, quoted

#: WSO2's key types: a sandbox key goes to the API's sandbox endpoints.
KEY_TYPES = ("production", "sandbox")


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes
    sandbox: bool = False  # keytype = "sandbox"


def read_api_keys(top: TableReader) -> tuple[list[ApiKey], set[str]]:
    """``[[api_keys]]``: the keys, and every name given (for ``[[consumers]]`` to refer to)."""
    keys = []
    key_names: set[str] = set()
    for r in top.tables("api_keys"):
        name = r.required("name", str)
        digest = r.required("key_sha256", str)
        keytype = r.get("keytype", str, "production")
        if keytype.lower() not in KEY_TYPES:
            r.problem("keytype", f"must be 'production' or 'sandbox', got {quoted(keytype)}")
            keytype = "production"
        r.finish()
        if digest is not None:
            try:
                raw_digest = bytes.fromhex(digest)
                if len(raw_digest) != 32:
                    raise ValueError
            except ValueError:
                r.problem("key_sha256", "must be 64 hex characters (the SHA-256 of the key)")
                continue
            if name is not None:
                if name in key_names:
                    r.problem("name", f"duplicate API key name {quoted(name)}")
                key_names.add(name)
                keys.append(ApiKey(name, raw_digest, keytype.lower() == "sandbox"))
    return keys, key_names
