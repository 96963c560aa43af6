"""twistedgw.http."""

from twistedgw.http._guard import CLIENT_ERROR_KINDS, SERVER, Guard, target_problem
from twistedgw.http._resource import Gateway, GatewayResource, RequestRecord
from twistedgw.http._routing import BadPath, Router, authz_path, normalise, split_target

__all__ = [
    "CLIENT_ERROR_KINDS",
    "SERVER",
    "BadPath",
    "Gateway",
    "GatewayResource",
    "Guard",
    "RequestRecord",
    "Router",
    "authz_path",
    "normalise",
    "split_target",
    "target_problem",
]
