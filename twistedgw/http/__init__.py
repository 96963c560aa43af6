"""twistedgw.http."""

from twistedgw.http import _verdicts as verdicts
from twistedgw.http._cache import ResponseStore
from twistedgw.http._front import serve_http1
from twistedgw.http._guard import CLIENT_ERROR_KINDS, SERVER, Guard, target_problem
from twistedgw.http._h2 import H2Factory
from twistedgw.http._resource import (
    Gateway,
    GatewayExchange,
    GatewayResource,
    RequestCounter,
    RequestRecord,
)
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
    "H2Factory",
    "RequestCounter",
    "RequestRecord",
    "ResponseStore",
    "Router",
    "Served",
    "authz_path",
    "normalise",
    "serve_http1",
    "split_target",
    "target_problem",
    "verdicts",
    "web_exchange",
]
