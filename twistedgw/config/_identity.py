"""``[identity]``: how the caller's certificate identity is forwarded to backends."""

from __future__ import annotations

from dataclasses import dataclass

IDENTITY_FORWARD = ("none", "xfcc", "rfc9440", "headers")


@dataclass(frozen=True)
class IdentityConfig:
    forward: str = "none"
    headers: tuple[tuple[str, str], ...] = ()  # (field, header name)
