"""``[[throttling_policies]]`` and the policies APIs and operations name (WSO2's
``x-wso2-throttling-tier``): one limit shared by every caller of an API or operation.

The fields are those of a Microgateway 3.x project's ``policies.yaml`` (``count``,
``unitTime``, ``timeUnit``), spelt the TOML way. The Microgateway's default resource
policies are built in, with its numbers (``distribution/resources/definitions/
policies.yaml`` of wso2/product-microgateway 3.2.x); a ``[[throttling_policies]]``
entry of the same name replaces one, as editing that file would. ``Unlimited`` means
no limit, as in the Microgateway. Its application and subscription policies limit a
caller's application or subscription, which twistedgw does not have: naming one is a
``check`` error that says so, unless the config defines a policy of that name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from twistedgw.config._apis import ApiConfig
from twistedgw.config._base import ProblemList, TableReader, quoted
from twistedgw.config._operations import UNLIMITED

#: Seconds per ``time_unit``.
TIME_UNITS = {"sec": 1, "min": 60, "hour": 3_600, "day": 86_400}
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class ThrottlingPolicy:
    """``count`` requests per ``unit_time`` ``time_unit``, for all callers together."""

    name: str
    count: int
    unit_time: int = 1
    time_unit: str = "min"
    where: str = field(default="", compare=False)  # its dotted key; "" = built in

    @property
    def period_seconds(self) -> int:
        return self.unit_time * TIME_UNITS[self.time_unit]

    def describe(self) -> str:
        return f"{self.count} requests per {self.unit_time} {self.time_unit}"


#: The Microgateway's default resource policies (policies.yaml, resourcePolicies).
BUILT_IN = (
    ThrottlingPolicy("50kPerMin", 50_000),
    ThrottlingPolicy("20kPerMin", 20_000),
    ThrottlingPolicy("10kPerMin", 10_000),
)
#: Its default application and subscription policies: a caller's, not an API's.
APPLICATION_POLICIES = ("50PerMin", "20PerMin", "10PerMin")
SUBSCRIPTION_POLICIES = ("Gold", "Silver", "Bronze", "Unauthenticated", "Default")


def read_throttling_policies(top: TableReader) -> list[ThrottlingPolicy]:
    """``[[throttling_policies]]``: unique names, positive counts, known time units."""
    out: list[ThrottlingPolicy] = []
    names: set[str] = set()
    for r in top.tables("throttling_policies"):
        name = r.required("name", str)
        count = r.positive("count", int, 0) if "count" in r.table else None
        if count is None:
            r.problem("count", "is required")
        unit_time = r.positive("unit_time", int, 1)
        written = r.get("time_unit", str, "min")
        unit: str | None = written
        if written not in TIME_UNITS:
            hint = {"week": 7, "month": 30, "year": 365}.get(written)
            extra = f" (for a {written}, write unit_time = {hint} and time_unit = \"day\")" \
                if hint is not None else ""
            r.problem("time_unit", f"must be one of 'sec', 'min', 'hour', 'day', got "
                                   f"{quoted(written)}{extra}")
            unit = None
        r.finish()
        if name is not None and not _NAME_RE.match(name):
            r.problem("name", f"must be 1-64 of A-Z a-z 0-9 . _ -, got {quoted(name)}")
            name = None
        elif name == UNLIMITED:
            r.problem("name", f"{quoted(UNLIMITED)} means no limit and cannot be defined")
            name = None
        elif name is not None and name in names:
            r.problem("name", f"duplicate throttling policy name {quoted(name)}")
            name = None
        if name is not None:
            names.add(name)
        if name is not None and count and unit is not None:
            out.append(ThrottlingPolicy(name, count, unit_time, unit, r.path))
    return out


def policy_table(defined: Sequence[ThrottlingPolicy]) -> dict[str, ThrottlingPolicy]:
    """Every policy an API may name: the built-in ones, replaced by those defined."""
    table = {p.name: p for p in BUILT_IN}
    table.update((p.name, p) for p in defined)
    return table


def policy_problem(name: str, table: Mapping[str, ThrottlingPolicy]) -> str | None:
    """Why an API or operation cannot name ``name``, or None."""
    if name == UNLIMITED or name in table:
        return None
    kind = ("an application" if name in APPLICATION_POLICIES
            else "a subscription" if name in SUBSCRIPTION_POLICIES else None)
    known = ", ".join(sorted([*table, UNLIMITED]))
    if kind is not None:
        return (f"{quoted(name)} is {kind} policy in WSO2 Microgateway, which limits each caller's "
                "application or subscription; twistedgw has neither, so an API or operation "
                "names a resource policy (one limit for all its callers): define "
                f"[[throttling_policies]] name = {quoted(name)} to use that name, or name one of: "
                f"{known}")
    return f"unknown throttling policy {quoted(name)} (defined: {known})"


def throttling_links(
    problems: ProblemList,
    apis: Sequence[tuple[str, ApiConfig]],
    policies: Sequence[ThrottlingPolicy],
) -> None:
    """Every policy an API or one of its operations names must exist."""
    table = policy_table(policies)
    for where, api in apis:
        if api.throttling_tier is not None:
            problem = policy_problem(api.throttling_tier, table)
            if problem is not None:
                _report(problems, where, api, api.throttling_from, problem)
        for op in api.operations or ():
            if op.throttling_tier is not None:
                problem = policy_problem(op.throttling_tier, table)
                if problem is not None:
                    _report(problems, where, api, op.throttling_from, problem)


def _report(
    problems: ProblemList, where: str, api: ApiConfig, pointer: str, problem: str
) -> None:
    """A TOML key's problem under its dotted key; a definition's under ``openapi``, with
    the file and the JSON pointer of the extension that named the policy."""
    if pointer and api.openapi is not None:
        problems.add(f"{where}.openapi", f"{api.openapi.file}: {pointer}: {problem}")
    else:
        problems.add(f"{where}.throttling_tier", problem)
