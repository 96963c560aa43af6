"""twistedgw.tls."""

from twistedgw.tls._backend import BackendPolicy, BackendTls, load_policy
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
from twistedgw.tls._pki import TrustEntry, TrustStore, load_truststore
from twistedgw.tls._revocation import (
    UNAVAILABLE,
    CrlStore,
    OcspClient,
    RevocationChecker,
    Status,
    load_crls,
)
from twistedgw.tls._server import HandshakeRecords, ServerTLS

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
    "CrlStore",
    "HandshakeRecords",
    "OcspClient",
    "RevocationChecker",
    "ServerTLS",
    "Status",
    "TrustEntry",
    "TrustStore",
    "load_crls",
    "load_policy",
    "load_truststore",
]
