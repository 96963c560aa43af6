"""``[limits]``: sizes and timeouts that bound what one client can make the gateway hold."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twistedgw.config._base import TableReader


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16384
    max_body_bytes: int = 10 * 1024 * 1024
    client_header_timeout: float = 10.0
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0
    max_connections: int = 10000
    backend_connect_timeout: float = 5.0
    backend_timeout: float = 60.0
    # Seconds a response may wait on a client that accepts none of it (NGINX's send_timeout).
    send_timeout: float = 60.0
    # HTTP/2 defences (http/_h2.py): streams open at once per connection; resets, and
    # SETTINGS/PING frames, a client may send per second before GOAWAY; CONTINUATION
    # frames one header block may span.
    h2_max_concurrent_streams: int = 100
    h2_max_resets_per_second: int = 100
    h2_max_control_frames_per_second: int = 100
    h2_max_continuation_frames: int = 32
    # WebSockets (http/_upgrade.py): after the 101, the longest time with no byte relayed
    # either way (replaces backend_timeout), and the bytes waiting for one receiver past
    # which the sender is no longer read (per direction).
    websocket_idle_timeout: float = 300.0
    websocket_buffer_bytes: int = 64 * 1024


MAX_HEADER_BYTES = 65536
"""The largest ``max_header_bytes`` allowed: the 10 ms rule (no request-path input holds
the reactor longer) is kept, and tested, at this size."""


def read_limits(r: TableReader) -> Limits:
    d = Limits()
    out = Limits(
        max_header_bytes=r.positive("max_header_bytes", int, d.max_header_bytes),
        max_body_bytes=r.positive("max_body_bytes", int, d.max_body_bytes),
        client_header_timeout=r.positive("client_header_timeout", float, d.client_header_timeout),
        idle_timeout=r.positive("idle_timeout", float, d.idle_timeout),
        handshake_timeout=r.positive("handshake_timeout", float, d.handshake_timeout),
        max_connections=r.positive("max_connections", int, d.max_connections),
        backend_connect_timeout=r.positive(
            "backend_connect_timeout", float, d.backend_connect_timeout
        ),
        backend_timeout=r.positive("backend_timeout", float, d.backend_timeout),
        send_timeout=r.positive("send_timeout", float, d.send_timeout),
        h2_max_concurrent_streams=r.positive(
            "h2_max_concurrent_streams", int, d.h2_max_concurrent_streams
        ),
        h2_max_resets_per_second=r.positive(
            "h2_max_resets_per_second", int, d.h2_max_resets_per_second
        ),
        h2_max_control_frames_per_second=r.positive(
            "h2_max_control_frames_per_second", int, d.h2_max_control_frames_per_second
        ),
        h2_max_continuation_frames=r.positive(
            "h2_max_continuation_frames", int, d.h2_max_continuation_frames
        ),
        websocket_idle_timeout=r.positive(
            "websocket_idle_timeout", float, d.websocket_idle_timeout
        ),
        websocket_buffer_bytes=r.positive(
            "websocket_buffer_bytes", int, d.websocket_buffer_bytes
        ),
    )
    if out.max_header_bytes > MAX_HEADER_BYTES:
        r.problem("max_header_bytes", f"must be at most {MAX_HEADER_BYTES} (64 KiB), got "
                  f"{out.max_header_bytes}")
        out = dataclasses.replace(out, max_header_bytes=d.max_header_bytes)
    r.finish()
    return out
