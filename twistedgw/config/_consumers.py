"""``[[consumers]]``: applications, named by their API keys and certificate identity entries."""

from __future__ import annotations

import re
from dataclasses import dataclass

from twistedgw.config._apis import ApiConfig
from twistedgw.config._base import ProblemList, TableReader, quoted, string_list
from twistedgw.config._rules import IdentityRule, identity_entries

CONSUMER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Consumer:
    """An application (``[[consumers]]``): its API keys, basic users and certificate
    identity entries."""

    name: str
    api_keys: tuple[str, ...] = ()
    certificates: tuple[IdentityRule, ...] = ()
    basic_users: tuple[str, ...] = ()


def read_consumers(
    top: TableReader, key_names: set[str], user_names: set[str] | None = None
) -> list[Consumer]:
    """``[[consumers]]``: unique names, API keys and basic users that exist, certificate
    identity entries."""
    out: list[Consumer] = []
    names: set[str] = set()
    for r in top.tables("consumers"):
        name = r.required("name", str)
        if name is not None and not CONSUMER_NAME_RE.match(name):
            r.problem("name", f"must be 1-64 of A-Z a-z 0-9 . _ -, got {quoted(name)}")
            name = None
        elif name is not None and name in names:
            r.problem("name", f"duplicate consumer name {quoted(name)}")
            name = None
        keys = string_list(r, "api_keys") or []
        for i, key in enumerate(keys):
            if key not in key_names:
                listing = ", ".join(sorted(key_names)) or "none"
                r.problem(f"api_keys[{i}]", f"no [[api_keys]] entry is named {quoted(key)} "
                          f"(defined: {listing})")
        users = string_list(r, "basic_users") or []
        for i, user in enumerate(users):
            if user not in (user_names or ()):
                listing = ", ".join(sorted(user_names or ())) or "none"
                r.problem(f"basic_users[{i}]", f"no [[basic_users]] entry is named {quoted(user)} "
                          f"(defined: {listing})")
        certificates = identity_entries(r, "certificates")
        r.finish()
        if name is not None:
            names.add(name)
            out.append(Consumer(name, tuple(keys), tuple(certificates), tuple(users)))
    return out


def check_consumer_names(
    problems: ProblemList, apis: list[tuple[str, ApiConfig]], consumers: list[Consumer]
) -> None:
    """APIs and tiers may only name consumers that ``[[consumers]]`` defines."""
    known = {c.name for c in consumers}
    listing = ", ".join(sorted(known)) or "none"
    for where, api in apis:
        for i, name in enumerate(api.consumers or ()):
            if name not in known:
                problems.add(f"{where}.consumers[{i}]",
                             f"unknown consumer {quoted(name)} (defined: {listing})")
        for tier in api.tiers:
            if tier.consumer is not None and tier.consumer not in known:
                problems.add(f"{tier.where}.consumer",
                             f"unknown consumer {quoted(tier.consumer)} (defined: {listing})")
