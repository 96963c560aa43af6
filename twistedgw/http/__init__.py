"""twistedgw.http."""

from twistedgw.http._cache import ResponseStore
from twistedgw.http._guard import CLIENT_ERROR_KINDS, SERVER, Guard, target_problem
from twistedgw.http._resource import Gateway, GatewayExchange, GatewayResource, RequestRecord
from twistedgw.http._routing import BadPath, Router, authz_path, normalise, split_target
from twistedgw.http._served import Served
from twistedgw.http._webexchange import web_exchange

__all__ = [
    "CLIENT_ERROR_KINDS",
    "SERVER",
    "BadPath",
    "Gateway",
    "GatewayExchange",
    "GatewayResource",
    "Guard",
    "RequestRecord",
    "ResponseStore",
    "Router",
    "Served",
    "authz_path",
    "normalise",
    "split_target",
    "target_problem",
    "web_exchange",
]
