"""twistedgw.identity."""

from twistedgw.identity import _forwarding as forwarding
from twistedgw.identity import _reasons as reasons
from twistedgw.identity._identity import (
    ClientIdentity,
    Outcome,
    Source,
    failed,
    fingerprint,
    no_certificate,
)
from twistedgw.identity._lbheader import (
    ENCODINGS,
    MAX_CERTIFICATES,
    MAX_VALUE_LENGTH,
    DecodedHeader,
    HeaderDecodeError,
    decode,
    sniff,
)
from twistedgw.identity._reasons import EXPIRED, INVALID, NOT_YET_VALID, UNTRUSTED, WRONG_PURPOSE

__all__ = [
    "ENCODINGS",
    "EXPIRED",
    "INVALID",
    "MAX_CERTIFICATES",
    "MAX_VALUE_LENGTH",
    "NOT_YET_VALID",
    "UNTRUSTED",
    "WRONG_PURPOSE",
    "ClientIdentity",
    "DecodedHeader",
    "HeaderDecodeError",
    "Outcome",
    "Source",
    "decode",
    "failed",
    "fingerprint",
    "forwarding",
    "no_certificate",
    "reasons",
    "sniff",
]
