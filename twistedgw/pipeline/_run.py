"""An API's compiled pipeline and the loop that runs a request through it.

Stages, in order: guards (the transports an API is served over), certificate checks
(revocation, identity rules), authenticate
(every scheme, combined by the WSO2 rule), authorise, request transforms. Then
the HTTP front forwards, runs the response transforms on the answer and
observes. A pipeline is built once per API when a config is loaded and never
changes; a reload builds new ones.

The loop stays synchronous while every stage answers synchronously, so the
common path creates no Deferred; the first stage that returns one suspends the
loop, which resumes where it stopped when that Deferred fires.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedgw import errors
from twistedgw.config import ApiConfig, Mode
from twistedgw.identity import failed
from twistedgw.pipeline._call import Call, HeaderEdit, Refusal, ResponseEdit, SchemeResult
from twistedgw.pipeline._interfaces import (
    IAuthoriser,
    ICertificateCheck,
    IRequestTransform,
    IResponseTransform,
    IScheme,
)
from twistedgw.tracing import StageSpan

log = Logger()
_MANDATORY = Mode.MANDATORY  # a module constant: the enum attribute lookup is per request
# A waiting stage's kind, for its span, from the factory that built its step (the
# closure's qualified name): nothing is stored per step for the path that never waits.
_KINDS = {
    "_check_step": "check",
    "_authenticate_step": "authenticate",
    "_authorise_step": "authorise",
    "_transform_step": "transform_request",
}

#: What a finished run gives the front: refuse, or forward with these header edits.
Outcome: TypeAlias = Refusal | HeaderEdit
_Step = Callable[[Call, HeaderEdit], Any]


@dataclass(frozen=True)
class Named:
    """A stage object and the plugin name that answers for it in errors and logs."""

    name: str
    stage: Any
    in_authz: bool = True  # also runs on the authz endpoint (NGINX auth_request and peers)
    # Schemes with the same group form one level of the WSO2 rule (the application level:
    # any one of them passes it); None: a level of its own.
    group: str | None = None

    @functools.cached_property
    def alone(self) -> tuple[str, ...]:
        """``(name,)``, built once: a single scheme's ``Call.passed_schemes``."""
        return (self.name,)


def plugin_refusal(name: str) -> Refusal:
    return Refusal(errors.plugin_failed(name))


@dataclass(frozen=True)
class Pipeline:
    """One API's stages, fixed at config load."""

    api: ApiConfig
    checks: tuple[Named, ...] = ()  # ICertificateCheck
    # IAuthoriser stages that run before anything else (x-wso2-transports): a request the
    # API does not serve is refused before its credentials are looked at.
    guards: tuple[Named, ...] = ()
    schemes: tuple[Named, ...] = ()  # IScheme, disabled ones left out
    authorisers: tuple[Named, ...] = ()  # IAuthoriser
    request_transforms: tuple[Named, ...] = ()  # IRequestTransform
    response_transforms: tuple[Named, ...] = ()  # IResponseTransform
    # Every stage is a built-in whose answer depends on the caller alone (its identity,
    # whether a load balancer spoke for it, the API): no request header, no time, no
    # state that changes, no Deferred. The request path then runs it once per connection
    # and caller (``http/_resource.CallerVerdict``). Set by ``compile_pipelines`` only.
    per_caller: bool = False

    def __post_init__(self) -> None:
        for group, iface in (
            (self.guards, IAuthoriser),
            (self.checks, ICertificateCheck),
            (self.schemes, IScheme),
            (self.authorisers, IAuthoriser),
            (self.request_transforms, IRequestTransform),
            (self.response_transforms, IResponseTransform),
        ):
            for named in group:
                if not iface.providedBy(named.stage):
                    raise TypeError(f"{named.name!r} does not provide {iface.__name__}")
        steps: list[tuple[str, _Step, bool]] = []
        for named in self.guards:
            steps.append((named.name, _authorise_step(named.stage), named.in_authz))
        for named in self.checks:
            steps.append((named.name, _check_step(named.stage), named.in_authz))
        if self.schemes:
            steps.append(("authentication", _authenticate_step(self.schemes), True))
        for named in self.authorisers:
            steps.append((named.name, _authorise_step(named.stage), named.in_authz))
        for named in self.request_transforms:
            steps.append((named.name, _transform_step(named.stage), False))
        # Frozen, but derived once here rather than per request.
        object.__setattr__(self, "_steps", tuple((n, s) for n, s, _a in steps))
        object.__setattr__(self, "_authz_steps", tuple((n, s) for n, s, a in steps if a))


    def run(self, call: Call) -> Outcome | Deferred[Outcome]:
        """Every stage before forwarding; a ``Refusal`` or the edits to forward with."""
        return _loop(self._steps, call, HeaderEdit(), 0)  # type: ignore[attr-defined]

    def judge(self, call: Call) -> Outcome | Deferred[Outcome]:
        """The stages that decide (for the authz endpoint): no transforms, nothing forwarded."""
        return _loop(self._authz_steps, call, HeaderEdit(), 0)  # type: ignore[attr-defined]

    def transform_response(self, call: Call, response: ResponseEdit) -> Refusal | None:
        """Run the response transforms on ``response``; a Refusal if one of them raised."""
        for named in self.response_transforms:
            try:
                named.stage.transform_response(call, response)
            except Exception:
                log.failure("plugin {plugin!r} failed", plugin=named.name)
                return plugin_refusal(named.name)
        return None


def _loop(
    steps: Sequence[tuple[str, _Step]], call: Call, edit: HeaderEdit, start: int
) -> Outcome | Deferred[Outcome]:
    for index in range(start, len(steps)):
        name, step = steps[index]
        try:
            result = step(call, edit)
        except Exception:
            log.failure("plugin {plugin!r} failed", plugin=name)
            return plugin_refusal(name)
        if result is None:
            continue
        if isinstance(result, Deferred):
            return _suspend(result, steps, call, edit, index, name)
        return _refusal(result, name)
    return edit


def _refusal(result: object, name: str) -> Refusal:
    if isinstance(result, Refusal):
        return result
    log.error("plugin {plugin!r} answered {result!r}, not None or a Refusal", plugin=name,
              result=result)
    return plugin_refusal(name)


def _suspend(
    pending: Deferred[Any],
    steps: Sequence[tuple[str, _Step]],
    call: Call,
    edit: HeaderEdit,
    index: int,
    name: str,
) -> Deferred[Outcome]:
    span: StageSpan | None = None
    trace = call.trace
    if trace is not None:
        kind = _KINDS.get(steps[index][1].__qualname__.partition(".")[0], "plugin")
        if kind != "authenticate":  # each scheme that waits has a span of its own
            span = trace.stage(name, kind)

    def resumed(result: object) -> Outcome | Deferred[Outcome]:
        if span is not None:
            span.end("passed" if result is None else "refused")
        if result is not None:
            return _refusal(result, name)
        return _loop(steps, call, edit, index + 1)

    def crashed(failure: Failure) -> Refusal:
        if span is not None:
            span.end("failed")
        log.failure("plugin {plugin!r} failed", failure, plugin=name)
        return plugin_refusal(name)

    # Errors of later steps are caught in _loop; only this step's failure lands here.
    return pending.addCallbacks(resumed, crashed)


# -- the step kinds -------------------------------------------------------------


def _check_step(check: Any) -> _Step:
    def step(call: Call, edit: HeaderEdit) -> Any:
        identity = call.identity
        if not identity.verified or call.api.mutual_ssl is Mode.DISABLED:
            return None
        reason = check.check_certificate(call)
        if isinstance(reason, Deferred):
            return reason.addCallback(_apply_reason, call)
        return _apply_reason(reason, call)

    return step


def _apply_reason(reason: str | None, call: Call) -> None:
    if reason is not None:
        identity = call.identity
        call.identity = failed(identity.source, reason, identity.chain)


def _authorise_step(authoriser: Any) -> _Step:
    def step(call: Call, edit: HeaderEdit) -> Any:
        return authoriser.authorise(call)

    return step


def _transform_step(transform: Any) -> _Step:
    def step(call: Call, edit: HeaderEdit) -> Any:
        result = transform.transform_request(call, edit)
        if isinstance(result, Deferred):
            return result.addCallback(lambda _: None)
        return None

    return step


def _authenticate_step(schemes: tuple[Named, ...]) -> _Step:
    def step(call: Call, edit: HeaderEdit) -> Any:
        results: list[Any] = []
        waiting = False
        for named in schemes:
            try:
                result = named.stage.authenticate(call)
            except Exception:
                log.failure("plugin {plugin!r} failed", plugin=named.name)
                return plugin_refusal(named.name)
            if type(result) is not SchemeResult and isinstance(result, Deferred):
                waiting = True
                if call.trace is not None:
                    result.addBoth(_scheme_span_ends, call.trace.stage(named.name, "authenticate"))
            results.append(result)
        if not waiting:
            return combine(schemes, results, call)
        pending = [r if isinstance(r, Deferred) else _now(r) for r in results]

        def crashed(failure: Failure) -> Refusal:
            # gatherResults wraps the first failure; find whose it was.
            for named, r in zip(schemes, results, strict=True):
                if isinstance(r, Deferred) and r.called and isinstance(r.result, Failure):
                    r.addErrback(lambda _: None)
                    log.failure("plugin {plugin!r} failed", failure, plugin=named.name)
                    return plugin_refusal(named.name)
            log.failure("authentication failed", failure)
            return plugin_refusal("authentication")

        return gatherResults(pending, consumeErrors=True).addCallbacks(
            lambda done: combine(schemes, done, call), crashed
        )

    return step


def _scheme_span_ends(result: Any, span: StageSpan) -> Any:
    """End a waiting scheme's span with what it answered; pass the answer on unchanged."""
    if isinstance(result, Failure):
        span.end("failed")
    else:
        span.end("passed" if getattr(result, "passed", False) else "refused")
    return result


def _now(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


def combine(
    schemes: Sequence[Named], results: Sequence[SchemeResult], call: Call
) -> Refusal | None:
    """The WSO2 rule: every mandatory level must pass; with none mandatory, one optional
    level must.

    A level is one scheme, or a group of schemes of which any one passes (WSO2's
    application level, ``application_security``). So ``mutual_ssl = "optional"``
    alone behaves as mandatory; optional mTLS beside a mandatory API key needs only
    the key; mandatory mTLS beside a mandatory group of JWT and API key needs the
    certificate and either credential. What passed is recorded on ``call``
    (principals, whether mTLS passed, consumers, claims); a refusal carries the
    challenges of the schemes that failed.
    """
    if len(schemes) == 1:  # most APIs: one scheme, whatever its mode, decides alone
        return _one_scheme(schemes[0], results[0], call)
    levels: dict[object, list[tuple[Named, SchemeResult]]] = {}
    for named, result in zip(schemes, results, strict=True):
        levels.setdefault(named.group or named, []).append((named, result))
    any_mandatory = False
    any_optional_passed = False
    for members in levels.values():
        passed = any(result.passed for _named, result in members)
        if members[0][0].stage.mode is _MANDATORY:
            if not passed:  # the first failing mandatory level answers
                failed = [result for _named, result in members]
                if len(failed) == 1:
                    return _refuse(_error(failed[0]), failed)
                return _refuse_all(failed)
            any_mandatory = True
        elif passed:
            any_optional_passed = True
    if not any_mandatory and not any_optional_passed:
        return _refuse_all(list(results))
    principals: list[str] = []
    consumers: list[str] = []
    ordered = sorted(zip(schemes, results, strict=True),  # mandatory levels' first
                     key=lambda pair: pair[0].stage.mode is not _MANDATORY)
    call.passed_schemes = tuple(named.name for named, result in ordered if result.passed)
    key_types = {r.sandbox for r in results if r.passed and r.sandbox is not None}
    if len(key_types) > 1:  # which endpoints would it go to?
        return _refuse(errors.invalid_credentials(
            "a production and a sandbox credential were offered together"), ())
    call.sandbox = True in key_types
    for named, result in ordered:
        if not result.passed:
            continue
        if result.principal:
            principals.append(result.principal)
        if result.consumer:
            consumers.append(result.consumer)
        if named.name == "mutual_ssl":
            call.mtls_passed = True
        if result.claims is not None and call.claims is None:
            call.claims = result.claims
    call.principals = tuple(principals)
    call.presented_consumers = tuple(consumers)
    return None


def _refuse_all(results: Sequence[SchemeResult]) -> Refusal:
    """None of ``results`` passed: invalid credentials if any was presented, else missing
    (or the error of a scheme that could not judge what was presented)."""
    presented = [r for r in results if r.presented]
    unjudged = next((r.error for r in presented if r.error is not None), None)
    if unjudged is not None:
        return _refuse(unjudged, ())
    if presented:
        return _refuse(errors.invalid_credentials(_reasons_of(presented)), presented)
    return _refuse(errors.missing_credentials(_reasons_of(results)), results)


def _one_scheme(named: Named, result: SchemeResult, call: Call) -> Refusal | None:
    """``combine`` for a single scheme: mandatory or optional, it must pass (the
    refusal is the one ``combine`` gives: its reason, its challenge)."""
    if not result.passed:
        return _refuse(_error(result), (result,))
    principal, consumer = result.principal, result.consumer
    call.passed_schemes = named.alone
    call.sandbox = result.sandbox is True
    call.principals = (principal,) if principal else ()
    call.presented_consumers = (consumer,) if consumer else ()
    if named.name == "mutual_ssl":
        call.mtls_passed = True
    if result.claims is not None and call.claims is None:
        call.claims = result.claims
    return None


def _refuse(error: errors.GatewayError, failed_results: Sequence[SchemeResult]) -> Refusal:
    challenges = tuple(
        (b"WWW-Authenticate", r.challenge) for r in failed_results if r.challenge is not None
    )
    return Refusal(error, challenges)


def _error(result: SchemeResult) -> errors.GatewayError:
    if result.error is not None:
        return result.error
    reason = result.reason or "authentication failed"
    if result.presented:
        return errors.invalid_credentials(reason)
    return errors.missing_credentials(reason)


def _reasons_of(results: Sequence[SchemeResult]) -> str:
    return "; ".join(r.reason or "authentication failed" for r in results)
