"""What the gateway serves itself for some APIs, instead of forwarding as it is: the
response cache (``http/_cache.py``) and, later, in-process backends.

``Served`` is built with each Runtime (``app/_runtime.py``) and swapped with it on
reload; ``backend_for`` is the request path's one hook (``http/_resource._forward``):
for an API without either it is the forwarder, at the cost of one attribute read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twistedgw.http._cache import CachingBackend, ResponseStore

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, GatewayExchange
    from twistedgw.http._routing import Route


class Served:
    """One Runtime's response cache (None: no API caches)."""

    __slots__ = ("cache",)

    def __init__(self, cache: ResponseStore | None = None) -> None:
        self.cache = cache


def backend_for(gateway: Gateway, exchange: GatewayExchange, route: Route) -> Any:
    """What serves this allowed exchange: the forwarder, or the API's cache in front of it."""
    routed = exchange.routed
    served = routed.runtime.served if routed is not None else None
    backend: Any = gateway.forwarder
    if served is None:
        return backend
    api = route.api
    if api.response_cache is not None and served.cache is not None:
        backend = CachingBackend(served.cache, api.response_cache, backend, exchange)
    return backend
