"""Who is calling: per-API identity rules and consumers, as pipeline stages.

``IdentityRules`` is a certificate check: a verified certificate that matches
none of the API's ``[[apis.identities]]`` entries fails, like a revoked one,
and the ``mutual_ssl`` scheme refuses it with 401 900901. ``ConsumerMapping``
is the first authoriser: it names the caller's consumer (``[[consumers]]``)
from the credentials that passed and enforces the API's ``consumers`` list
with 403 900908. Tiers, identity forwarding (``X-Consumer-Name``), the access
log and metrics read ``call.consumer`` after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509
from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import ApiConfig, Consumer, IdentityRule, matches_any
from twistedgw.identity import reasons
from twistedgw.pipeline._call import Call, Refusal
from twistedgw.pipeline._interfaces import IAuthoriser, ICertificateCheck


class Directory:
    """The configured consumers, looked up by API key name, basic user or certificate, in
    config order."""

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._rank = {c.name: i for i, c in enumerate(consumers)}
        key_owners: dict[str, str] = {}
        for c in consumers:
            for key in c.api_keys:
                key_owners.setdefault(key, c.name)  # the first consumer in config order
        self.key_owners: Mapping[str, str] = key_owners
        user_owners: dict[str, str] = {}
        for c in consumers:
            for user in c.basic_users:
                user_owners.setdefault(user, c.name)
        self.user_owners: Mapping[str, str] = user_owners
        self._certificates = tuple((c.name, c.certificates) for c in consumers if c.certificates)

    def __bool__(self) -> bool:
        return bool(self._rank)

    def for_certificate(
        self, leaf: x509.Certificate, aliases: frozenset[str] = frozenset()
    ) -> str | None:
        """The first consumer one of whose certificate entries the leaf, verified under
        the truststore ``aliases``, matches."""
        for name, rules in self._certificates:
            if matches_any(rules, leaf, aliases):
                return name
        return None

    def first(self, names: Iterable[str | None]) -> str | None:
        """The configured consumer among ``names`` that comes first in config order."""
        best: str | None = None
        for name in names:
            if name is not None and name in self._rank:
                if best is None or self._rank[name] < self._rank[best]:
                    best = name
        return best


@implementer(ICertificateCheck)
class IdentityRules:
    """``[[apis.identities]]``: the verified leaf must match at least one entry.

    Runs after revocation (a revoked certificate keeps that reason) and leaves a
    certificate under none of the API's aliases alone, so the alias check's
    reason wins: rules narrow what the API already accepts.
    """

    def __init__(self, api: ApiConfig) -> None:
        self._rules: tuple[IdentityRule, ...] = api.identities
        self._aliases = api.aliases

    def check_certificate(self, call: Call) -> str | None:
        identity = call.identity
        if self._aliases is not None and not (identity.trust_aliases & self._aliases):
            return None
        leaf = identity.leaf
        if leaf is None or not matches_any(self._rules, leaf, identity.trust_aliases):
            return reasons.IDENTITY_RULES
        return None


@implementer(IAuthoriser)
class ConsumerMapping:
    """Names the caller's consumer and, when the API lists ``consumers``, enforces the list.

    A caller maps to the first consumer (config order) that a passing credential
    names: a certificate that passed this API's mTLS check and matches one of
    the consumer's certificate entries, an API key the consumer owns, or a
    scheme's own ``consumer`` (a token claim). Names that no ``[[consumers]]``
    entry defines are ignored, so logs and metric labels only ever carry
    configured names.
    """

    def __init__(self, api: ApiConfig, directory: Directory) -> None:
        self._directory = directory
        self._allowed = frozenset(api.consumers) if api.consumers is not None else None

    def authorise(self, call: Call) -> Refusal | None:
        directory = self._directory
        candidates: list[str | None] = list(call.presented_consumers)
        leaf = call.identity.leaf
        if call.mtls_passed and leaf is not None:
            candidates.append(directory.for_certificate(leaf, call.identity.trust_aliases))
        call.consumer = consumer = directory.first(candidates)
        allowed = self._allowed
        if allowed is None or consumer in allowed:
            return None
        if consumer is None:
            return Refusal(errors.consumer_forbidden("the caller is not a known consumer"))
        return Refusal(
            errors.consumer_forbidden(f"consumer {consumer!r} is not allowed on this API")
        )
