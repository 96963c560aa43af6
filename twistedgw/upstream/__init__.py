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
from twistedgw.upstream._inprocess import (
    ResourceBackend,
    ResourceError,
    ResourceRequest,
    as_resource,
    load_resource,
)

__all__ = [
    "TOKEN",
    "BackendCall",
    "ForwardResult",
    "ForwardSettings",
    "Forwarder",
    "NoResponse",
    "ResourceBackend",
    "ResourceError",
    "ResourceRequest",
    "ResponseHead",
    "Truncated",
    "Upstream",
    "UpstreamError",
    "as_resource",
    "load_resource",
    "parse_origin",
]
