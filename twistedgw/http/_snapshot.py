"""What the HTTP front reads of the Runtime, as a Protocol.

The Runtime (config + key material + compiled pipelines, swapped whole on
reload) is built by the application layer (``twistedgw.app``), which sits
above the front; the front only reads it, so it names the shape it needs
instead of importing the layer that builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twistedgw.config import GatewayConfig
    from twistedgw.http._routing import Router
    from twistedgw.http._served import Served
    from twistedgw.tls import ChainVerifier, ServerTLS


class Snapshot(Protocol):
    """One consistent view of the config in force, for one request."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def router(self) -> Router: ...

    @property
    def server_tls(self) -> ServerTLS | None: ...

    @property
    def header_verifier(self) -> ChainVerifier | None: ...

    @property
    def served(self) -> Served | None: ...

    @property
    def authz_target(self) -> bytes | None:
        """The authz endpoint's path when the front may skip routing a request target
        equal to it (no API's context holds it; app/_runtime.py ``authz_target``)."""
