"""Configuration: TOML (and OpenAPI definitions) -> an immutable model.

Every problem names the file and the dotted key; ``load_partial`` reports them all
in one pass. Nothing here touches certificates (``twistedgw.app`` loads those).
"""

from twistedgw.config._access_log import AccessLogConfig
from twistedgw.config._admin import AdminConfig
from twistedgw.config._api_keys import ApiKey
from twistedgw.config._apis import (
    BACKEND_MODES,
    CERTIFICATE_BOUND,
    RESOURCE,
    ApiConfig,
    PluginSpec,
    Tier,
)
from twistedgw.config._authz import AuthzConfig
from twistedgw.config._backend_tls import HOSTNAME_RE, BackendTlsConfig
from twistedgw.config._base import (
    CONTEXT_RE,
    HEADER_RE,
    ConfigError,
    Mode,
    ProblemList,
    TableReader,
)
from twistedgw.config._basic_users import BasicUser, hash_problem
from twistedgw.config._cluster import ON_FAILURE, ClusterConfig
from twistedgw.config._consumers import CONSUMER_NAME_RE, Consumer
from twistedgw.config._cors import CorsConfig, normal_origin
from twistedgw.config._errors import ERROR_STYLES, ErrorsConfig
from twistedgw.config._gateway import (
    GatewayConfig,
    Parsed,
    load,
    load_partial,
    parse,
    parse_partial,
)
from twistedgw.config._identity import IDENTITY_FORWARD, IdentityConfig
from twistedgw.config._jwt_issuers import DEFAULT_JWT_ALGORITHMS, JWT_ALGORITHMS, JwtIssuer
from twistedgw.config._limits import Limits
from twistedgw.config._listeners import Listener
from twistedgw.config._mutual_ssl import HEADER_ENCODINGS, MutualSslConfig
from twistedgw.config._nginx import NginxConfig
from twistedgw.config._openapi import (
    describe_security,
    operation_config,
    operation_key,
    route_rows,
    security_changes,
    variant,
    variants,
    with_variants,
)
from twistedgw.config._operations import UNLIMITED, Operation, ResourceThrottle, Security
from twistedgw.config._response_cache import ApiCache, ResponseCacheConfig
from twistedgw.config._rules import IdentityRule, matches_any, parse_rule
from twistedgw.config._throttling import TIME_UNITS, ThrottlingPolicy, policy_table
from twistedgw.config._tls import (
    CLIENT_CERTIFICATE,
    DEFAULT_CIPHERS,
    REVOCATION_MODES,
    TLS_PROFILES,
    TLS_PROTOCOLS,
    SniEntry,
    TlsConfig,
    ocsp_origin,
)
from twistedgw.config._tracing import TracingConfig

__all__ = [
    "BACKEND_MODES",
    "CERTIFICATE_BOUND",
    "CLIENT_CERTIFICATE",
    "CONSUMER_NAME_RE",
    "CONTEXT_RE",
    "DEFAULT_CIPHERS",
    "DEFAULT_JWT_ALGORITHMS",
    "ERROR_STYLES",
    "HEADER_ENCODINGS",
    "HEADER_RE",
    "HOSTNAME_RE",
    "IDENTITY_FORWARD",
    "JWT_ALGORITHMS",
    "ON_FAILURE",
    "RESOURCE",
    "REVOCATION_MODES",
    "TIME_UNITS",
    "TLS_PROFILES",
    "TLS_PROTOCOLS",
    "UNLIMITED",
    "AccessLogConfig",
    "AdminConfig",
    "ApiCache",
    "ApiConfig",
    "ApiKey",
    "AuthzConfig",
    "BackendTlsConfig",
    "BasicUser",
    "ClusterConfig",
    "ConfigError",
    "Consumer",
    "CorsConfig",
    "ErrorsConfig",
    "GatewayConfig",
    "IdentityConfig",
    "IdentityRule",
    "JwtIssuer",
    "Limits",
    "Listener",
    "Mode",
    "MutualSslConfig",
    "NginxConfig",
    "Operation",
    "Parsed",
    "PluginSpec",
    "ProblemList",
    "ResourceThrottle",
    "ResponseCacheConfig",
    "Security",
    "SniEntry",
    "TableReader",
    "ThrottlingPolicy",
    "Tier",
    "TlsConfig",
    "TracingConfig",
    "describe_security",
    "hash_problem",
    "load",
    "load_partial",
    "matches_any",
    "normal_origin",
    "ocsp_origin",
    "operation_config",
    "operation_key",
    "parse",
    "parse_partial",
    "parse_rule",
    "policy_table",
    "route_rows",
    "security_changes",
    "variant",
    "variants",
    "with_variants",
]
