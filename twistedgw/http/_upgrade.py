"""WebSockets through the gateway: the opening handshake judged, forwarded, then relayed.

An API accepts WebSocket opening handshakes (RFC 6455 4.1) only where it says so
(``[[apis]] websocket = true``, or ``x-twistedgw-websocket: true`` on an OpenAPI
``get`` operation), as NGINX proxies upgrades only where configured and Kong and
Envoy per route. Elsewhere ``Upgrade`` is a hop-by-hop field like any other:
dropped, and the request forwarded as a plain one.

A handshake to such an API (``wanted``: ``Upgrade`` names ``websocket``, on the
HTTP/1.1 front, the only one that offers switching: HTTP/2 refuses ``Upgrade`` and
does not offer RFC 8441's extended CONNECT) runs the API's whole pipeline first,
judged at head time like every request; a refusal is the usual JSON answer and no
upgrade. Once allowed, its shape is checked (``handshake_problem``: 400 otherwise,
with ``Sec-WebSocket-Version: 13``), and it is forwarded with ``Upgrade:
websocket`` and ``Connection: Upgrade`` (every other hop-by-hop field still
dropped). A ``101`` from the backend (``upstream/_tunnel.check_switch``) is sent
to the client after the API's response transforms, and a ``Tunnel`` relays the
connection both ways until either side closes; any other answer is relayed as a
normal response. The handshake is recorded as a request when the 101 is sent (the
metrics count it and its latency; the access log writes nothing yet), and the
connection once, when it closes (``RequestRecord.websocket``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twistedgw import errors
from twistedgw.errors import GatewayError
from twistedgw.upstream import ClientEnd, Tunnel, TunnelStats, upgrade_protocols
from twistedgw.wire import answer_headers, connection_tokens

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, GatewayExchange
    from twistedgw.http._routing import Route

#: What a malformed handshake's 400 carries (RFC 6455 4.4: the version served).
VERSION_HEADER = ((b"Sec-WebSocket-Version", b"13"),)
#: Kept for the upgrade request only (the forwarder drops the client's own).
_UPGRADE = ((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))
#: Never copied from a response transform's edit into the 101 (the gateway sets them).
_SWITCH_FIELDS = frozenset({b"upgrade", b"connection", b"content-length", b"transfer-encoding"})

Refuse = Callable[..., None]  # http/_resource.answer_error
OnSwitch = Callable[[list[tuple[bytes, bytes]], bytes, Any], None]


def accepts(route: Route) -> bool:
    """Whether the route's API (or operation) accepts WebSocket handshakes."""
    if route.api.websocket:
        return True
    operation = route.operation
    return operation is not None and operation.websocket


def wanted(exchange: GatewayExchange, route: Route) -> bool:
    """Whether ``exchange`` is a WebSocket handshake to be forwarded as an upgrade: its
    API accepts them, it names ``websocket`` in ``Upgrade``, and its front can switch."""
    if not accepts(route) or route.backend_target.startswith(b"resource:"):
        return False  # (an in-process backend has no connection to switch: check says so)
    upgrade = exchange.fields.getRawHeaders(b"upgrade")
    return (
        upgrade is not None
        and b"websocket" in upgrade_protocols(upgrade)
        and hasattr(exchange.responder, "switch_protocols")
    )


def handshake_problem(exchange: GatewayExchange) -> GatewayError | None:
    """A 400 for an opening handshake that is not RFC 6455's (4.1, 4.2.1), else None."""
    words = None
    fields = exchange.fields
    key = fields.getRawHeaders(b"sec-websocket-key") or []
    version = fields.getRawHeaders(b"sec-websocket-version") or []
    if exchange.version != b"HTTP/1.1":
        words = "must be an HTTP/1.1 request"
    elif exchange.method != b"GET":
        words = "must be a GET request"
    elif exchange.body is not None:
        words = "must not have a body"
    elif b"upgrade" not in connection_tokens(fields.getRawHeaders(b"connection") or ()):
        words = "needs 'Connection: Upgrade'"
    elif len(key) != 1 or not _valid_key(key[0]):
        words = "needs one Sec-WebSocket-Key: 16 bytes in base64"
    elif version != [b"13"]:
        words = "needs 'Sec-WebSocket-Version: 13', the version served"
    if words is None:
        return None
    return errors.bad_request(f"a WebSocket opening handshake {words}")


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def prepare(
    gateway: Gateway,
    exchange: GatewayExchange,
    add_headers: list[tuple[bytes, bytes]],
    refuse: Refuse,
) -> OnSwitch | None:
    """Allowed: check the handshake's shape (else answer 400 through ``refuse`` and return
    None), add ``Upgrade`` and ``Connection`` to ``add_headers``, and return what takes the
    exchange over on the backend's 101 (the forwarder's ``on_switch``)."""
    problem = handshake_problem(exchange)
    if problem is not None:
        refuse(gateway, exchange, problem, VERSION_HEADER)
        return None
    add_headers.extend(_UPGRADE)
    routed = exchange.routed
    limits = (routed.runtime if routed is not None else gateway.runtime).config.limits

    def switched(fields: list[tuple[bytes, bytes]], rest: bytes, conn: Any) -> None:
        _switched(gateway, exchange, fields, rest, conn, limits)

    return switched


def _one_line(value: bytes) -> bytes:
    return value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")


def switch_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The ``101`` sent to the client: ``headers`` (end-to-end), then the upgrade's own."""
    lines = [b"HTTP/1.1 101 Switching Protocols"]
    lines.extend(
        b"%s: %s" % (_one_line(n), _one_line(v))
        for n, v in headers
        if n.lower() not in _SWITCH_FIELDS
    )
    lines.extend(b"%s: %s" % pair for pair in _UPGRADE)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _switched(
    gateway: Gateway,
    exchange: GatewayExchange,
    fields: list[tuple[bytes, bytes]],
    rest: bytes,
    conn: Any,
    limits: Any,
) -> None:
    """The backend switched: answer the client's ``101`` and relay (or, if a response
    transform refuses, its error; if the client left, nothing)."""
    responder = exchange.responder
    if responder.gone:
        conn.abort()
        exchange.record(gateway, 499, 0, "client_gone")
        return
    headers = answer_headers()
    headers.extend(fields)
    refused = exchange.transform_answer(101, headers)
    if refused is not None:
        conn.abort()
        body = refused.body()
        out = [*answer_headers(), (b"Content-Type", errors.JSON_TYPE)]
        responder.start_response(refused.status, out, len(body))
        responder.write(body)
        responder.finish()
        exchange.record(gateway, refused.status, len(body), "other")
        return
    head = switch_head(headers)

    def ended(stats: TunnelStats) -> None:
        exchange.record(gateway, 101, stats.sent, websocket=stats)

    tunnel = Tunnel(
        conn,
        idle_timeout=limits.websocket_idle_timeout,
        buffer_bytes=limits.websocket_buffer_bytes,
        on_end=ended,
    )
    switch = responder.switch_protocols  # type: ignore[attr-defined]  # ``wanted`` checked it
    taken: tuple[ClientEnd, bytes] | None = switch(head, tunnel)
    if taken is None:  # the connection is closing (a graceful stop, a refusal)
        conn.abort()
        exchange.record(gateway, 499, 0, "client_gone")
        return
    client, client_rest = taken
    responder.when_gone(tunnel.client_lost)
    exchange.record(gateway, 101, len(head), websocket=TunnelStats(0, 0, None, None))
    tunnel.start(client, client_rest, rest)
