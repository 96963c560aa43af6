"""The ``jwt`` scheme: OAuth2 access tokens (RFC 9068 style JWTs), optionally bound to
the caller's client certificate (RFC 8705 ``cnf."x5t#S256"``).

Signatures are checked by joserfc, never by hand; this module decides which key
may verify which token and checks the claims. Every failure is a plain reason
(``REASONS``) and a 401: ``900902`` when no token was presented, ``900901``
otherwise, with the RFC 6750 challenge. Nothing a client sends can raise out of
``authenticate``; only a token whose ``kid`` is unknown may wait, for the one
JWKS refetch allowed (bounded by ``jwks.FETCH_TIMEOUT``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from twistedgw.config import ApiConfig, GatewayConfig, JwtIssuer, Mode
from twistedgw.identity import ClientIdentity, Outcome
from twistedgw.pipeline import _jwks as jwks
from twistedgw.pipeline._call import Call, HeaderEdit, SchemeResult
from twistedgw.pipeline._interfaces import IRequestTransform, IScheme
from twistedgw.tls import PkiError, load_policy

log = Logger()

AUTHORIZATION = b"authorization"
MAX_TOKEN_BYTES = 8192
MAX_KID_LESS = 4  # keys tried for a token without a kid
VERIFIED_CACHE_SIZE = 1024  # per API: tokens whose signature verified

NO_TOKEN = "no access token was presented"  # noqa: S105 (a message)
EXPIRED = "token has expired"
NOT_YET_VALID = "token is not yet valid"
BAD_SIGNATURE = "token signature is not valid"
BAD_ISSUER = "token issuer is not accepted"
BAD_AUDIENCE = "token audience is not accepted"
BAD_ALGORITHM = "token algorithm is not allowed"
NOT_BOUND = "token is not bound to the presented certificate"
NO_CERTIFICATE = "token is bound to a certificate but none was presented"
NOT_A_JWT = "token is not a valid JWT"
BAD_KEYTYPE = "token keytype is neither PRODUCTION nor SANDBOX"

CHALLENGE_NONE = b"Bearer"
CHALLENGE_INVALID = b'Bearer error="invalid_token"'

MAX_AUTHORIZATION_BYTES = MAX_TOKEN_BYTES + 64
"""A longer ``Authorization`` value is not looked into: no token hides behind padding."""

_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE = {c: i for i, c in enumerate(_B64URL)}
# By a part's length mod 4: the bits of its last character that encode nothing, which
# the canonical (RFC 4648 3.5) encoding leaves zero. A length of 1 mod 4 is no encoding.
_UNUSED_BITS = {0: 0, 2: 0x0F, 3: 0x03}


class KeySource(Protocol):
    """Where an issuer's keys come from: a file read at load, or a ``JwksFetcher``."""

    @property
    def keys(self) -> jwks.KeySet | None: ...

    def refetch(self) -> Deferred[None] | None: ...


@dataclass(frozen=True)
class FixedKeys:
    """Keys read from a file when the config was loaded; a reload reads them again."""

    keys: jwks.KeySet | None

    def refetch(self) -> Deferred[None] | None:
        return None


@dataclass(frozen=True)
class Issuer:
    config: JwtIssuer
    source: KeySource


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature verified (kept by its SHA-256, never the token itself) and
    what its claims say that does not change with the time or the caller, worked out
    once: a reused token costs its hash, the time checks and the binding check."""

    issuer: Issuer
    keys: jwks.KeySet  # the key set in use when the signature verified
    claims: Mapping[str, Any]
    # ``_check_claims``'s checks in its order: a malformed claim (NOT_A_JWT), then the
    # times (exp, nbf, iat as numbers), then the audience (``aud_ok``)
    malformed: bool
    exp: float
    nbf: float | None
    iat: float | None
    aud_ok: bool
    principal: str
    consumer: str | None
    keytype: bool | str  # ``_sandbox``'s answer, or the reason it refuses the token


def _who(claims: Mapping[str, Any], cfg: JwtIssuer) -> tuple[str, str | None]:
    """The principal (``jwt:<issuer>:<sub>``) and the consumer (the configured claim, when
    a non-empty string) a token's claims name."""
    sub = claims.get("sub")
    principal = f"jwt:{cfg.name}:{sub}" if isinstance(sub, str) else f"jwt:{cfg.name}"
    consumer = None
    if cfg.consumer_claim is not None:
        named = claims.get(cfg.consumer_claim)
        consumer = named if isinstance(named, str) and named else None
    return principal, consumer


def _verified(issuer: Issuer, keys: jwks.KeySet, claims: Mapping[str, Any]) -> _Verified:
    """``_Verified`` of a token whose signature ``keys`` verified."""
    cfg = issuer.config
    malformed = False
    exp, nbf, iat = 0.0, None, None
    try:
        found = _number(claims, "exp")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        if found is None:
            raise _Fail(NOT_A_JWT)  # an access token must expire (RFC 9068 2.2)
        exp = found
    except _Fail:
        malformed = True
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    aud_ok = any(isinstance(a, str) and a in cfg.audiences for a in audiences)
    principal, consumer = _who(claims, cfg)
    keytype: bool | str
    try:
        keytype = _sandbox(claims)
    except _Fail as e:
        keytype = e.reason
    return _Verified(issuer, keys, claims, malformed, exp, nbf, iat, aud_ok, principal,
                     consumer, keytype)


class _Fail(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _b64decode(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _bearer_token(value: bytes) -> bytes:
    """The token of a ``Bearer`` credential (RFC 6750 2.1), checked as a JWS compact
    serialisation; ``_Fail(NOT_A_JWT)`` when the value holds none.

    No regular expression: ``Bearer`` + 16,000 spaces + ``x y`` once made one backtrack
    for seconds. The length is bounded first, and each step below is one linear pass.
    """
    if len(value) > MAX_AUTHORIZATION_BYTES:
        raise _Fail(NOT_A_JWT)
    rest = value[6:]  # after "bearer", which _is_bearer has checked
    token = rest.strip(b" ")
    if not rest.startswith(b" ") or len(token) > MAX_TOKEN_BYTES or not _compact(token):
        raise _Fail(NOT_A_JWT)  # also a JWE (five parts) and an unsigned "x.y." token
    return token


def _compact(token: bytes) -> bool:
    """Three non-empty parts of canonical base64url without padding (RFC 7515 7.1, 2).

    Standard base64 (``+``, ``/``), ``=`` padding and non-canonical last characters
    are refused: each would give one signed token several spellings.
    """
    parts = token.split(b".")
    if len(parts) != 3:
        return False
    for part in parts:
        if not part or part.translate(None, _B64URL):
            return False
        unused = _UNUSED_BITS.get(len(part) % 4)
        if unused is None or _B64URL_VALUE[part[-1]] & unused:
            return False
    return True


def _json_object(part: bytes) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(part))
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError):
        raise _Fail(NOT_A_JWT) from None
    if not isinstance(value, dict):
        raise _Fail(NOT_A_JWT)
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a float; a claim of another type, or one no float holds
    (JSON allows ``1e400`` as an integer: ``float()`` raises OverflowError), is no JWT."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Fail(NOT_A_JWT)
    try:
        number = float(value)
    except OverflowError:
        raise _Fail(NOT_A_JWT) from None
    if not math.isfinite(number):
        raise _Fail(NOT_A_JWT)
    return number


def certificate_thumbprint(identity: ClientIdentity) -> str | None:
    """RFC 8705's ``x5t#S256``: base64url (no padding) SHA-256 of the leaf's DER."""
    leaf = identity.leaf
    return _thumbprint(leaf) if leaf is not None else None


@functools.lru_cache(maxsize=1024)
def _thumbprint(leaf: x509.Certificate) -> str:
    # Remembered: the same client certificate comes with request after request.
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@implementer(IScheme)
class JwtScheme:
    """Bearer JWTs from the API's issuers; joins the WSO2 combine rule as ``jwt``."""

    name = "jwt"

    def __init__(
        self,
        api: ApiConfig,
        issuers: Sequence[Issuer],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.mode = api.jwt
        self._bound = api.certificate_bound
        self._header = api.auth_header.lower().encode()  # x-wso2-auth-header, else Authorization
        self._by_iss = {i.config.issuer: i for i in issuers}
        self._now = now
        # Tokens whose signature verified, by SHA-256 of the token: a client
        # sends the same token until it expires, and the signature check is most of
        # the cost. Claims and binding are checked on every request all the same.
        self._verified: dict[bytes, _Verified] = {}

    def authenticate(self, call: Call) -> SchemeResult | Deferred[SchemeResult]:
        sent = call.request.headers.get(self._header)
        if len(sent) == 1 and sent[0][:7].lower() == b"bearer ":  # the usual: one token
            values: Sequence[bytes] = sent
        else:
            values = [v for v in sent if _is_bearer(v)]
        if not values:
            return SchemeResult(False, False, reason=NO_TOKEN, challenge=CHALLENGE_NONE)
        try:
            if len(values) > 1:
                raise _Fail(NOT_A_JWT)
            value = values[0]
            if len(value) <= MAX_AUTHORIZATION_BYTES and value[6:7] == b" ":
                # A token seen before: ``_bearer_token``'s checks passed on the same bytes
                # (the same SHA-256), so they are not run again.
                hit = self._verified.get(_digest(value[6:].strip(b" ")))
                # Only while the key set it verified against is still the one in use.
                if hit is not None and hit.issuer.source.keys is hit.keys:
                    return self._accept_verified(call, hit)
            token = _bearer_token(value)
            header, claims, issuer = self._parse(token)
            found = self._candidates(token, header, issuer, refetch=True)
            if isinstance(found, Deferred):
                return found.addCallback(
                    lambda _: self._retry(call, token, header, claims, issuer)
                )
            return self._finish(call, token, header, claims, issuer, found)
        except _Fail as e:
            return _failed(e.reason)

    def _retry(
        self,
        call: Call,
        token: bytes,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        issuer: Issuer,
    ) -> SchemeResult:
        try:
            found = self._candidates(token, header, issuer, refetch=False)
            assert not isinstance(found, Deferred)
            return self._finish(call, token, header, claims, issuer, found)
        except _Fail as e:
            return _failed(e.reason)

    def _parse(self, token: bytes) -> tuple[dict[str, Any], dict[str, Any], Issuer]:
        head_b64, body_b64, _sig = token.split(b".")
        header = _json_object(head_b64)
        claims = _json_object(body_b64)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _Fail(NOT_A_JWT)
        # No extension is understood (RFC 7515 4.1.11), and a nested token is not an
        # access token; keys named in the token itself (jwk, jku, x5u) are never used.
        if "crit" in header or str(header.get("cty", "")).upper() == "JWT":
            raise _Fail(NOT_A_JWT)
        if "kid" in header and not isinstance(header["kid"], str):
            raise _Fail(NOT_A_JWT)
        iss = claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _Fail(BAD_ISSUER)
        if alg not in issuer.config.algorithms:
            raise _Fail(BAD_ALGORITHM)
        return header, claims, issuer

    def _candidates(
        self, token: bytes, header: Mapping[str, Any], issuer: Issuer, *, refetch: bool
    ) -> list[jwks.VerifyKey] | Deferred[None]:
        alg: str = header["alg"]
        kid = header.get("kid")
        keys = issuer.source.keys
        if kid is not None:
            key = keys.by_kid.get(kid) if keys is not None else None
            if key is None:
                if refetch:
                    waiting = issuer.source.refetch()
                    if waiting is not None:
                        return waiting
                raise _Fail(BAD_SIGNATURE)
            if not jwks.key_fits(alg, key):
                raise _Fail(BAD_ALGORITHM)
            return [key]
        # Without a kid, every key that fits is tried, but no more than MAX_KID_LESS:
        # a kid-less token must not cost a signature check per key of a large set.
        found = [k for k in keys.keys if jwks.key_fits(alg, k)] if keys is not None else []
        found = found[:MAX_KID_LESS]
        if not found:
            if refetch and (keys is None or not keys.keys):
                waiting = issuer.source.refetch()
                if waiting is not None:
                    return waiting
            raise _Fail(BAD_SIGNATURE)
        return found

    def _finish(
        self,
        call: Call,
        token: bytes,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        issuer: Issuer,
        keys: list[jwks.VerifyKey],
    ) -> SchemeResult:
        alg: str = header["alg"]
        key_set = issuer.source.keys
        if not any(_verifies(token, alg, key) for key in keys):
            raise _Fail(BAD_SIGNATURE)
        frozen = MappingProxyType(dict(claims))
        if key_set is not None:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[_digest(token)] = _verified(issuer, key_set, frozen)
        return self._accept(call, frozen, issuer)

    def _accept_verified(self, call: Call, hit: _Verified) -> SchemeResult:
        """``_accept`` for a token verified before: the same checks in the same order,
        on what ``_verified`` worked out of its claims."""
        if hit.malformed:
            raise _Fail(NOT_A_JWT)
        now = self._now()
        leeway = hit.issuer.config.leeway_seconds
        if now > hit.exp + leeway:
            raise _Fail(EXPIRED)
        nbf, iat = hit.nbf, hit.iat
        if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
            raise _Fail(NOT_YET_VALID)
        if not hit.aud_ok:
            raise _Fail(BAD_AUDIENCE)
        claims = hit.claims
        if self._bound != "off" and (self._bound == "required" or "cnf" in claims):
            self._check_binding(claims, call.identity)
        keytype = hit.keytype
        if type(keytype) is str:
            raise _Fail(keytype)
        return SchemeResult(True, True, hit.principal, None, None, hit.consumer, claims, None,
                            keytype is True)

    def _accept(
        self, call: Call, claims: Mapping[str, Any], issuer: Issuer
    ) -> SchemeResult:
        """The checks that depend on the time and on the caller, not on the signature."""
        self._check_claims(claims, issuer.config)
        self._check_binding(claims, call.identity)
        principal, consumer = _who(claims, issuer.config)
        return SchemeResult(True, True, principal=principal, consumer=consumer, claims=claims,
                            sandbox=_sandbox(claims))

    def _check_claims(self, claims: Mapping[str, Any], cfg: JwtIssuer) -> None:
        now = self._now()
        leeway = cfg.leeway_seconds
        exp = _number(claims, "exp")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        if exp is None:
            raise _Fail(NOT_A_JWT)  # an access token must expire (RFC 9068 2.2)
        if now > exp + leeway:
            raise _Fail(EXPIRED)
        if (nbf is not None and now + leeway < nbf) or (iat is not None and now + leeway < iat):
            raise _Fail(NOT_YET_VALID)
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in cfg.audiences for a in audiences):
            raise _Fail(BAD_AUDIENCE)

    def _check_binding(self, claims: Mapping[str, Any], identity: ClientIdentity) -> None:
        if self._bound == "off":
            return
        if "cnf" not in claims:
            if self._bound == "required":
                raise _Fail(NOT_BOUND)
            return
        # A present cnf is a binding, or a broken token: never "not bound" (RFC 8705 3.1).
        cnf = claims["cnf"]
        wanted = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(wanted, str) or not wanted:
            raise _Fail(NOT_A_JWT)
        if identity.outcome is Outcome.NONE:
            raise _Fail(NO_CERTIFICATE)
        if not identity.verified:
            raise _Fail(
                f"token is bound to a certificate but the presented one was refused: "
                f"{identity.reason or 'not valid'}"
            )
        have = certificate_thumbprint(identity) or ""
        if not hmac.compare_digest(have.encode(), wanted.encode("utf-8", "replace")):
            raise _Fail(NOT_BOUND)


def _sandbox(claims: Mapping[str, Any]) -> bool:
    """WSO2's ``keytype`` claim: SANDBOX sends the request to the sandbox endpoints;
    PRODUCTION, or no claim, to production. Any other value is refused rather than
    guessed at (the Microgateway sends it to sandbox or production depending on which
    endpoints the API has)."""
    keytype = claims.get("keytype")
    if keytype is None:
        return False
    spelled = keytype.strip().upper() if isinstance(keytype, str) else None
    if spelled not in ("PRODUCTION", "SANDBOX"):
        raise _Fail(BAD_KEYTYPE)
    return spelled == "SANDBOX"


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _is_bearer(value: bytes) -> bool:
    return value[:7].lower() == b"bearer " or value.strip().lower() == b"bearer"


def _verifies(token: bytes, alg: str, key: jwks.VerifyKey) -> bool:
    try:
        jws.deserialize_compact(token, key.key, algorithms=[alg])
    except Exception:  # joserfc's errors, and whatever a hostile signature provokes
        return False
    return True


def _failed(reason: str) -> SchemeResult:
    return SchemeResult(False, True, reason=reason, challenge=CHALLENGE_INVALID)


@implementer(IRequestTransform)
class StripAuthorization:
    """The bearer token is for the gateway: the backend gets no ``Authorization`` (or the
    header ``x-wso2-auth-header`` names) unless the API says ``forward_authorization``."""

    def __init__(self, header: bytes = AUTHORIZATION) -> None:
        self._header = header

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        edit.remove(self._header)


STRIP_AUTHORIZATION = StripAuthorization()


def strip_for(api: ApiConfig) -> StripAuthorization:
    """The transform that removes ``api``'s bearer token header."""
    header = api.auth_header.lower().encode()
    return STRIP_AUTHORIZATION if header == AUTHORIZATION else StripAuthorization(header)


def issuers_of(
    config: GatewayConfig, problems: list[str], fetchers: jwks.JwksFetchers
) -> dict[str, Issuer]:
    """Every ``[[jwt_issuers]]`` with its keys: files read now (problems name the key),
    URLs handed to their fetcher, which ``Shared`` keeps across reloads."""
    out: dict[str, Issuer] = {}
    used = any(api.jwt is not Mode.DISABLED for api in config.apis)
    policy = None
    for cfg in config.jwt_issuers:
        source: KeySource
        if cfg.jwks is not None:
            try:
                source = FixedKeys(jwks.load_file(cfg.jwks))
            except jwks.JwksError as e:
                problems.append(f"{config.source}: {cfg.where}.jwks: {e}")
                source = FixedKeys(None)
        else:
            assert cfg.jwks_url is not None
            if not used:
                source = FixedKeys(None)  # nothing would ask; fetch nothing
            else:
                if policy is None and cfg.jwks_url.startswith("https://"):
                    try:
                        policy = load_policy(config.backend_tls, "backend_tls")
                    except PkiError:
                        policy = None  # already reported by runtime's backend TLS check
                source = fetchers.get(cfg.jwks_url, policy, cfg.jwks_refresh_seconds)
        out[cfg.name] = Issuer(cfg, source)
    return out


def jwks_urls(config: GatewayConfig) -> list[str]:
    """The JWKS URLs ``config`` fetches (none when no API uses jwt)."""
    if not any(api.jwt is not Mode.DISABLED for api in config.apis):
        return []
    return [i.jwks_url for i in config.jwt_issuers if i.jwks_url is not None]


def scheme_for(api: ApiConfig, issuers: Mapping[str, Issuer]) -> JwtScheme:
    names = api.jwt_issuers if api.jwt_issuers is not None else tuple(issuers)
    return JwtScheme(api, [issuers[n] for n in names if n in issuers])
