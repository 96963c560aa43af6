"""twistedgw.tls."""

from twistedgw.tls._backend import BackendPolicy, BackendTls, load_policy
from twistedgw.tls._backend import build as build_backend_tls
from twistedgw.tls._chains import (
    CA_AS_CLIENT,
    EXPIRED,
    FAILED_TTL,
    INVALID,
    NOT_YET_VALID,
    UNTRUSTED,
    WRONG_PURPOSE,
    ChainVerifier,
)
from twistedgw.tls._pki import (
    KeyStore,
    PkiError,
    TrustEntry,
    TrustStore,
    describe_certificate,
    load_keystore_p12,
    load_keystore_pem,
    load_pem_certificates,
    load_truststore,
)
from twistedgw.tls._revocation import (
    UNAVAILABLE,
    CrlError,
    CrlStore,
    OcspClient,
    RevocationChecker,
    Status,
    load_crls,
)
from twistedgw.tls._revocation import build as build_revocation
from twistedgw.tls._server import (
    HandshakeRecords,
    ServerTLS,
    ServerTLSFactory,
    SniServer,
    server_name,
    sni_entry,
)

__all__ = [
    "CA_AS_CLIENT",
    "EXPIRED",
    "FAILED_TTL",
    "INVALID",
    "NOT_YET_VALID",
    "UNAVAILABLE",
    "UNTRUSTED",
    "WRONG_PURPOSE",
    "BackendPolicy",
    "BackendTls",
    "ChainVerifier",
    "CrlError",
    "CrlStore",
    "HandshakeRecords",
    "KeyStore",
    "OcspClient",
    "PkiError",
    "RevocationChecker",
    "ServerTLS",
    "ServerTLSFactory",
    "SniServer",
    "Status",
    "TrustEntry",
    "TrustStore",
    "build_backend_tls",
    "build_revocation",
    "describe_certificate",
    "load_crls",
    "load_keystore_p12",
    "load_keystore_pem",
    "load_pem_certificates",
    "load_policy",
    "load_truststore",
    "server_name",
    "sni_entry",
]
