"""The plain words for why a client certificate failed.

Handshake and header certificates report the same words, so an operator reading
an error body or an access log cannot tell (and need not care) which path judged.
"""

NONE = "no client certificate was presented"
EXPIRED = "certificate has expired"
NOT_YET_VALID = "certificate is not yet valid"
UNTRUSTED = "certificate is not issued by a trusted CA"
WRONG_PURPOSE = "certificate is not allowed for client authentication"
REVOKED = "certificate has been revoked"
INVALID = "certificate is invalid"
NOT_FOR_API = "certificate is not associated with this API"
LOAD_BALANCER = "a load balancer's certificate does not identify a caller"
IDENTITY_RULES = "certificate does not match this API's identity rules"
