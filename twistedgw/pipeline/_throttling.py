"""Throttling policies (``x-wso2-throttling-tier``): one limit for all callers of an API,
or of one operation, as WSO2's API and resource-level throttling.

The policy's bucket is kept where tier buckets are (``tiers.TierStore``: this
process's, or Redis's with ``[cluster]``), keyed by the API's ``name:version`` and
``policy:api`` or ``policy:resource:<METHOD> <template>``, so the operations of an API
share its API-level bucket and each throttled operation has its own. When the API
names a policy, its operations' own are not applied (``config.operation_key``), as
in the Microgateway. Over the limit: 429 with ``Retry-After`` and WSO2's codes,
``900800`` "Message throttled out" (API) or ``900802`` "Resource level throttle out"
(operation).

The stage runs after every other authoriser (consumers, plugins, per-caller tiers):
only requests the API would serve are counted, and a caller already over its own tier
does not spend the budget every caller shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred
from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import UNLIMITED, ApiConfig, ThrottlingPolicy
from twistedgw.pipeline import _tiers as tiers
from twistedgw.pipeline._builtin import _store_failed, _store_unavailable
from twistedgw.pipeline._call import Call, Refusal
from twistedgw.pipeline._interfaces import IAuthoriser


def policy_key(api: ApiConfig, which: bytes) -> bytes:
    """A policy's bucket: the API's ``name:version``, then what it counts (spelled by
    ``tiers.tier_bucket_key``, as every bucket is)."""
    return tiers.tier_bucket_key(api.label, b"policy:" + which)


@implementer(IAuthoriser)
class PolicyThrottle:
    """Spends one token of the API's (or the operation's) policy per request."""

    def __init__(
        self,
        store: tiers.TierStore,
        limit: tiers.Limit,
        error: Callable[[str], errors.GatewayError],
        description: str,
    ) -> None:
        self._store = store
        self.limit = limit
        self._error = error
        self.description = description

    def authorise(self, call: Call) -> Refusal | Deferred[Refusal | None] | None:
        try:
            wait = self._store.take_limit(self.limit)
        except tiers.StoreUnavailable as e:
            return _store_unavailable(e)
        if isinstance(wait, Deferred):
            return wait.addCallbacks(self._answer, _store_failed)
        return self._answer(wait)

    def _answer(self, wait: float | None) -> Refusal | None:
        if wait is None:
            return None
        return Refusal(
            self._error(self.description), ((b"Retry-After", tiers.retry_after(wait)),)
        )


def policy_stage(
    api: ApiConfig, policies: Mapping[str, ThrottlingPolicy], store: tiers.TierStore
) -> PolicyThrottle | None:
    """The stage for the policy that applies to ``api`` (an API, or an operation's
    variant); None when none does (no policy, ``Unlimited``, or one ``check`` refused)."""
    if api.throttling_tier is not None:
        policy = policies.get(api.throttling_tier)
        if api.throttling_tier == UNLIMITED or policy is None:
            return None
        return PolicyThrottle(
            store,
            _limit(policy_key(api, b"api"), policy),
            errors.throttled,
            f"the API's limit of {policy.describe()} (policy {policy.name!r}) was exceeded",
        )
    resource = api.resource_throttle
    if resource is None:
        return None
    policy = policies.get(resource.policy)
    if policy is None:
        return None
    return PolicyThrottle(
        store,
        _limit(policy_key(api, b"resource:" + resource.resource.encode()), policy),
        errors.resource_throttled,
        f"the limit of {policy.describe()} on {resource.resource} (policy {policy.name!r}) "
        "was exceeded",
    )


def _limit(key: bytes, policy: ThrottlingPolicy) -> tiers.Limit:
    return tiers.Limit(key, policy.count, period_seconds=policy.period_seconds)
