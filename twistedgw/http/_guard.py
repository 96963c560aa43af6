"""What every connection of the HTTP/1.1 front (http/_front.py) shares, and its refusals.

The grammar and framing rules (obsolete line folding, ``Transfer-Encoding`` other
than one ``chunked``, Content-Length with Transfer-Encoding, several or invalid
``Host`` headers, the origin-form target, the method rule, the chunked decoder and
its tiny-chunk bound) are ``twistedgw.wire``'s, the one parser the upstream client
reads backend responses with; HTTP/2 streams (http/_h2.py) share the target grammar,
the limits and the JSON refusals. Here:

* ``Guard``: the live gateway and the open-connection count of one ``Site``
  (``max_connections`` per process);
* the body is counted while it arrives (chunked too) and refused with 413 once
  over the API's ``max_body_bytes``, so nothing is ever forwarded partially;
* ``client_header_timeout`` bounds the whole header section (an inactivity
  timer reset by every byte never cuts a client dribbling headers byte by
  byte), ``handshake_timeout`` the TLS handshake;
* after a closing response the TCP connection is closed ``CLOSE_TIMEOUT``
  seconds later whatever the client does (``BoundedClose``): TLS would wait
  for the client's close_notify, and TCP for a client that reads nothing,
  with no timer.

Refusals are WSO2-style JSON written straight to the transport (the request has
not been dispatched yet) with ``Connection: close`` (``raw_response``). The
connection then lingers briefly (``LINGER_SECONDS``, at most ``LINGER_BYTES`` read),
discarding what the client still sends, because closing a socket with unread data
makes the kernel send a reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import RESPONSES

from twistedgw.config import Limits
from twistedgw.errors import GatewayError
from twistedgw.wire import (
    MIN_AVERAGE_CHUNK,
    SERVER,
    SMALL_CHUNKS_AFTER,
    header_too_large,
    target_problem,
    uri_too_long,
)
from twistedgw.wire import http_date as _http_date

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, Routed

#: Seconds a refused connection keeps reading (and discarding) before closing.
LINGER_SECONDS = 2.0

#: Seconds the gateway waits, after its close_notify (or, on plain HTTP, after
#: deciding to close), before it closes the TCP connection itself whatever the
#: client does; a client still reading a response gets more time while it makes
#: progress, one that reads nothing is aborted.
CLOSE_TIMEOUT = 3.0

#: The ``kind`` of every refusal made here, and ``client_timeout`` (a forwarded
#: response the client accepted nothing of for ``send_timeout``, upstream/_forward.py):
#: client errors, never backend errors.
CLIENT_ERROR_KINDS = frozenset(
    {"bad_request", "header_too_large", "body_too_large", "header_timeout", "body_timeout",
     "client_timeout"}
)

def request_timeout(description: str) -> GatewayError:
    return GatewayError(408, "408", "Request Timeout", description)


def raw_response(error: GatewayError) -> bytes:
    """A complete HTTP/1.1 response for ``error``, closing the connection."""
    body = error.body()
    phrase = RESPONSES.get(error.status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (error.status, phrase, len(body))
    )
    return head + body


@dataclass
class Guard:
    """What every connection of one Site shares: the live gateway and the open count."""

    gateway: Gateway
    open: int = 0
    refused_connections: int = 0

    def limits(self) -> Limits:
        # Read per connection, so a reload applies to new connections.
        return self.gateway.runtime.config.limits

    def route(
        self, target: bytes | None, method: bytes | None = None, host: bytes | None = None
    ) -> Routed | None:
        """Route ``target`` (and its ``Host``) once, under the Runtime in force now; the
        resource reuses it."""
        if target is None:
            return None
        from twistedgw.http._resource import route_request

        return route_request(self.gateway.runtime, target, method, host=host)


class BoundedClose:
    """The close after close_notify, bounded by ``CLOSE_TIMEOUT`` whatever the peer does.

    Mixed into the HTTP/1.1 front (``http/_front.FrontChannel``): call
    ``_start_closing`` right after asking the transport to close.
    """

    _closing_timer: IDelayedCall | None = None
    _closing_unsent = 0
    transport: Any
    callLater: Any

    def _start_closing(self, transport: Any) -> None:
        if self._closing_timer is None:
            self._closing_unsent = _unsent(_tcp(transport))
            self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)

    def _closing_check(self) -> None:
        self._closing_timer = None
        tcp = _tcp(self.transport)
        if tcp is None or getattr(tcp, "disconnected", True):
            return
        unsent = _unsent(tcp)
        if unsent and unsent < self._closing_unsent:
            # The client is reading what is left: give it time while it makes progress.
            self._closing_unsent = unsent
            self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)
            return
        if unsent or getattr(tcp, "disconnecting", False):
            # It reads nothing, or a TCP close did not finish: abort.
            tcp.abortConnection()
            return
        # Everything, close_notify included, has reached the kernel and the
        # client had CLOSE_TIMEOUT to answer: close TCP without its close_notify.
        tcp.loseConnection()
        self._closing_unsent = 0
        self._closing_timer = self.callLater(CLOSE_TIMEOUT, self._closing_check)


def _tcp(transport: Any) -> Any:
    """The TCP transport under ``transport`` (itself unless it is TLS)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport.transport
    return transport


def _unsent(tcp: Any) -> int:
    """Bytes a TCP transport holds that the kernel has not taken yet."""
    if tcp is None:
        return 0
    buffered = getattr(tcp, "dataBuffer", b"")
    return len(buffered) - getattr(tcp, "offset", 0) + getattr(tcp, "_tempDataLen", 0)


__all__ = [
    "CLIENT_ERROR_KINDS",
    "CLOSE_TIMEOUT",
    "LINGER_SECONDS",
    "MIN_AVERAGE_CHUNK",
    "SERVER",
    "SMALL_CHUNKS_AFTER",
    "BoundedClose",
    "Guard",
    "_http_date",
    "header_too_large",
    "raw_response",
    "request_timeout",
    "target_problem",
    "uri_too_long",
]
