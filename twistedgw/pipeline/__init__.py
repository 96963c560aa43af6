"""The per-API request pipeline and the interfaces plugins implement.

A request, once routed, runs through its API's ``Pipeline``: certificate
checks, authentication (schemes combined the WSO2 way), authorisation, request
transforms; then the front forwards it and runs the response transforms.
Built-in rules and third-party plugins use the same interfaces.
"""

from twistedgw.pipeline._basic import hash_password
from twistedgw.pipeline._builtin import (
    API_KEY_HEADER,
    METHOD_OVERRIDE_HEADERS,
    TIER_LIMIT,
    TIERS,
    method_override_headers,
    protected_headers,
)
from twistedgw.pipeline._call import (
    Call,
    HeaderEdit,
    HeaderView,
    Refusal,
    RequestView,
    ResponseEdit,
    SchemeResult,
)
from twistedgw.pipeline._cluster import EXPIRE_MS, PERIOD_MS, SCRIPT, SCRIPT_SHA, RedisTierStore
from twistedgw.pipeline._compile import Shared, compile_pipelines
from twistedgw.pipeline._discovery import Installed, installed
from twistedgw.pipeline._interfaces import (
    IAuthoriser,
    ICertificateCheck,
    IGatewayPlugin,
    IRequestTransform,
    IResponseTransform,
    IScheme,
)
from twistedgw.pipeline._jwks import JwksCollector
from twistedgw.pipeline._options import Options, PluginConfigError, PluginContext
from twistedgw.pipeline._run import Named, Outcome, Pipeline, combine
from twistedgw.pipeline._tiers import Limit, tier_bucket_key

__all__ = [
    "API_KEY_HEADER",
    "EXPIRE_MS",
    "METHOD_OVERRIDE_HEADERS",
    "PERIOD_MS",
    "SCRIPT",
    "SCRIPT_SHA",
    "TIERS",
    "TIER_LIMIT",
    "Call",
    "HeaderEdit",
    "HeaderView",
    "IAuthoriser",
    "ICertificateCheck",
    "IGatewayPlugin",
    "IRequestTransform",
    "IResponseTransform",
    "IScheme",
    "Installed",
    "JwksCollector",
    "Limit",
    "Named",
    "Options",
    "Outcome",
    "Pipeline",
    "PluginConfigError",
    "PluginContext",
    "RedisTierStore",
    "Refusal",
    "RequestView",
    "ResponseEdit",
    "SchemeResult",
    "Shared",
    "combine",
    "compile_pipelines",
    "hash_password",
    "installed",
    "method_override_headers",
    "protected_headers",
    "tier_bucket_key",
]
