"""What the gateway serves itself for some APIs, instead of forwarding as it is: the
response cache (``http/_cache.py``) and in-process backends (``upstream/_inprocess.py``:
a Twisted resource for the API's backend).

``Served`` is built with each Runtime (``app/_runtime.py``) and swapped with it on
reload; ``backend_for`` is the request path's one hook (``http/_resource._forward``):
for an API without either it is the forwarder, at the cost of one attribute read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twistedgw.http._cache import CachingBackend, ResponseStore

_RESOURCE = b"resource:"

if TYPE_CHECKING:
    from twistedgw.http._resource import Gateway, GatewayExchange
    from twistedgw.http._routing import Route


class Served:
    """One Runtime's response cache (None: no API caches) and in-process backends (by
    ``id`` of the API's config)."""

    __slots__ = ("cache", "resources")

    def __init__(self, cache: ResponseStore | None = None,
                 resources: Mapping[int, Any] | None = None) -> None:
        self.cache = cache
        self.resources = dict(resources or {})


def backend_for(gateway: Gateway, exchange: GatewayExchange, route: Route) -> Any:
    """What serves this allowed exchange: the forwarder or the API's in-process backend,
    with the API's cache in front of either."""
    routed = exchange.routed
    served = routed.runtime.served if routed is not None else None
    backend: Any = gateway.forwarder
    if served is None:
        return backend
    api = route.api
    if served.resources and route.backend_target.startswith(_RESOURCE) and not exchange.sandbox:
        # (A sandbox caller goes to the definition's sandbox endpoint, and an operation
        # with endpoints of its own to those: over the network.)
        backend = served.resources.get(id(api), backend)
    if api.response_cache is not None and served.cache is not None:
        backend = CachingBackend(served.cache, api.response_cache, backend, exchange)
    return backend
