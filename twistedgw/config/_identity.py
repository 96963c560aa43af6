"""``[identity]``: how the caller's certificate identity is forwarded to backends."""

from __future__ import annotations

from dataclasses import dataclass

from twistedgw.config._base import TableReader, header_name

IDENTITY_FORWARD = ("none", "xfcc", "rfc9440", "headers")


@dataclass(frozen=True)
class IdentityConfig:
    forward: str = "none"
    headers: tuple[tuple[str, str], ...] = ()  # (field, header name)


def read_identity(a: TableReader) -> IdentityConfig:
    fwd = a.choice("forward", IDENTITY_FORWARD, "none")
    hdrs = a.sub("headers")
    pairs = []
    for k in list(hdrs.table):
        name = header_name(hdrs, k, None)
        if name:
            pairs.append((k, name))
    allowed_fields = {"subject", "issuer", "serial", "sha256", "cert", "san"}
    for k, _ in pairs:
        if k not in allowed_fields:
            hdrs.problem(k, f"unknown identity field; use one of {sorted(allowed_fields)}")
    if fwd == "headers" and not pairs:
        a.problem(
            "headers", 'forward = "headers" needs at least one header in [identity.headers]'
        )
    identity = IdentityConfig(forward=fwd, headers=tuple(pairs))
    a.finish()
    return identity
