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
from twistedgw.upstream._forward import (
    NO_EDITS,
    Forwarder,
    ForwardResult,
    ForwardSettings,
    HeadEdits,
)
from twistedgw.upstream._inprocess import (
    ResourceBackend,
    ResourceError,
    ResourceRequest,
    as_resource,
    load_resource,
)
from twistedgw.upstream._tunnel import (
    ClientEnd,
    FrameScanner,
    Tunnel,
    TunnelStats,
    upgrade_protocols,
)

__all__ = [
    "NO_EDITS",
    "TOKEN",
    "BackendCall",
    "ClientEnd",
    "ForwardResult",
    "ForwardSettings",
    "Forwarder",
    "FrameScanner",
    "HeadEdits",
    "NoResponse",
    "ResourceBackend",
    "ResourceError",
    "ResourceRequest",
    "ResponseHead",
    "Truncated",
    "Tunnel",
    "TunnelStats",
    "Upstream",
    "UpstreamError",
    "as_resource",
    "load_resource",
    "parse_origin",
    "upgrade_protocols",
]
