"""twistedgw.upstream."""

from twistedgw.upstream._client import (
    TOKEN,
    BackendCall,
    NoResponse,
    ResponseHead,
    Truncated,
    Upstream,
    UpstreamError,
    parse_origin,
)
from twistedgw.upstream._forward import Forwarder, ForwardResult, ForwardSettings

__all__ = [
    "TOKEN",
    "BackendCall",
    "ForwardResult",
    "ForwardSettings",
    "Forwarder",
    "NoResponse",
    "ResponseHead",
    "Truncated",
    "Upstream",
    "UpstreamError",
    "parse_origin",
]
