"""``[[basic_users]]``: the users of HTTP Basic authentication, with password hashes only.

A password is never written in the config: ``password_hash`` is an argon2id PHC
string (``twistedgw hash-password`` makes one) or a bcrypt hash (``$2b$``, as
``htpasswd -B`` writes), both verified by a well-kept library
(``pipeline/_basic.py``). The cost a hash asks for is bounded here, because every
verification runs it: a hash that asked for gigabytes or minutes would let a few
callers stall the pool that checks passwords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twistedgw.config._base import TableReader, quoted

#: Bounds on what one verification may cost (argon2: KiB of memory, passes, lanes;
#: bcrypt: the log2 of its rounds). twistedgw hash-password writes m=65536, t=3, p=4.
ARGON2_MAX_MEMORY_KIB = 262_144  # 256 MiB
ARGON2_MAX_TIME_COST = 16
ARGON2_MAX_PARALLELISM = 16
BCRYPT_MAX_COST = 16  # 2^16 rounds: about 4 s on one core of today's servers

# A user name as RFC 7617 allows it (no ':'), without control characters or spaces at
# either end (a name that differs from another only there would be a trap).
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f:\s](?:[^\x00-\x1f\x7f:]{0,126}[^\x00-\x1f\x7f:\s])?$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class BasicUser:
    name: str
    password_hash: str = field(repr=False)  # never in a log line or a traceback's locals
    where: str = field(default="", compare=False)


def hash_problem(value: str) -> str | None:
    """Why ``value`` cannot be a ``password_hash`` (plain words), or None."""
    if value.startswith("$argon2"):
        import argon2

        try:
            params = argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            return "is not a valid argon2 PHC string (make one with `twistedgw hash-password`)"
        if params.type is not argon2.Type.ID:
            return (f"is an argon2{params.type.name.lower()} hash; only argon2id is accepted (make "
                    "one with `twistedgw hash-password`)")
        for what, got, most in (
            ("memory cost m", params.memory_cost, ARGON2_MAX_MEMORY_KIB),
            ("time cost t", params.time_cost, ARGON2_MAX_TIME_COST),
            ("parallelism p", params.parallelism, ARGON2_MAX_PARALLELISM),
        ):
            if got > most:
                return (f"asks for {what}={got}, over the {most} every check would have to "
                        "pay; hash the password again with `twistedgw hash-password`")
        return None
    if value.startswith("$2"):
        match = _BCRYPT_RE.match(value)
        if match is None:
            return "is not a valid bcrypt hash ($2b$NN$ and 53 characters)"
        cost = int(match.group(1))
        if not 4 <= cost <= BCRYPT_MAX_COST:
            return f"has bcrypt cost {cost}; it must be 4 to {BCRYPT_MAX_COST}"
        return None
    if value.startswith("$scrypt") or value.startswith("$7$"):
        return "is an scrypt hash, which is not accepted; use argon2id (`twistedgw hash-password`)"
    return (
        "must be an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash, made by "
        "`twistedgw hash-password`) or a bcrypt hash ($2b$...); a password is never written "
        "in the config"
    )


def read_basic_users(top: TableReader) -> tuple[list[BasicUser], set[str]]:
    """``[[basic_users]]``: the users, and every name given (for ``[[consumers]]``)."""
    users: list[BasicUser] = []
    names: set[str] = set()
    for r in top.tables("basic_users"):
        name = r.required("name", str)
        password_hash = r.required("password_hash", str)
        r.finish()
        if name is not None and not _NAME_RE.match(name):
            r.problem("name", "must be 1-128 characters, without ':' or control characters "
                              "and without spaces at either end")
            name = None
        elif name is not None and name in names:
            r.problem("name", f"duplicate basic user name {quoted(name)}")
            name = None
        if name is not None:
            names.add(name)
        if password_hash is not None:
            problem = hash_problem(password_hash)
            if problem is not None:
                r.problem("password_hash", problem)  # the value itself is never echoed
                password_hash = None
        if name is not None and password_hash is not None:
            users.append(BasicUser(name, password_hash, r.path))
    return users, names
