"""What every section's reader shares: ``TableReader`` and ``ProblemList``.

A reader reads one TOML table and knows its dotted path (``apis[2].tiers[0]``), so each
problem names the file and the key; problems are collected, never raised, so one pass
reports them all (``load_partial``). The helpers below read the kinds of value several
sections share (modes, header names, string lists, host patterns).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twistedgw import _hosts as hostnames

T = TypeVar("T")


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Mode(enum.Enum):
    """How an authentication scheme applies to an API (WSO2's words)."""

    MANDATORY = "mandatory"
    OPTIONAL = "optional"
    DISABLED = "disabled"


@dataclass
class ProblemList:
    """Problem lines, and the dotted keys they name (``Parsed.broken_keys``); and warnings:
    lines about what is valid but worth a look (``check`` prints them, start logs them)."""

    file: Path
    lines: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.file}: {where}: {message}")
        self.keys.add(where)

    def warn(self, where: str, message: str) -> None:
        line = f"{self.file}: {where}: {message}"
        if line not in self.warnings:
            self.warnings.append(line)


#: Keys whose values are secrets or hashes of them (``redis``: a URL may hold a password;
#: ``tracing.headers``: the exporter's API key), by name or by dotted path without indices: a
#: problem with one never quotes its value (problems go to ``check``'s output and the log).
SECRET_KEYS = frozenset(
    {"keystore_password", "truststore_password", "password_hash", "key_sha256", "redis",
     "tracing.headers"}
)
_INDEX = re.compile(r"\[\d+\]")


def is_secret(where: str) -> bool:
    """Whether the dotted key ``where`` (``apis[0].password_hash``) holds a secret."""
    plain = _INDEX.sub("", where)
    return plain in SECRET_KEYS or plain.rpartition(".")[2] in SECRET_KEYS

_EXCERPT = 60  # characters of a value a problem quotes


def quoted(value: Any) -> str:
    """``repr(value)`` cut short: a problem quotes a value, never a pasted certificate."""
    text = repr(value)
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


@dataclass
class TableReader:
    """Reads one table, remembering its dotted path, the problems and the keys seen."""

    file: Path
    table: dict[str, Any]
    path: str
    problems: ProblemList
    seen: set[str] = field(default_factory=set)

    def where(self, key: str) -> str:
        key = key_name(key)
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.add(self.where(key), message)

    def warning(self, key: str, message: str) -> None:
        self.problems.warn(self.where(key), message)

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        self.seen.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML integers are acceptable where a float is expected; bools are not ints here.
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(_type_name(k) for k in kinds)
            shown = "" if is_secret(self.where(key)) else " " + quoted(value)
            self.problem(key, f"expected {names}, got {_type_name(type(value))}{shown}")
            return default
        return value  # type: ignore[no-any-return]

    def required(self, key: str, kind: type[T]) -> T | None:
        if key not in self.table:
            self.seen.add(key)
            self.problem(key, "is required")
            return None
        return self.get(key, kind, None)  # type: ignore[arg-type]

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            listed = ", ".join(map(repr, choices))
            self.problem(key, f"must be one of {listed}, got {quoted(value)}")
            return default
        return value

    def positive(self, key: str, kind: type[T], default: T) -> T:
        value = self.get(key, kind, default)
        # TOML allows nan and inf; a nan timeout would corrupt the reactor's timer queue.
        if not value > 0 or value == float("inf"):  # type: ignore[operator]
            self.problem(key, f"must be positive, got {quoted(value)}")
            return default
        return value

    def path_value(self, key: str, *, must_exist: bool = True) -> Path | None:
        raw = self.get(key, str, None)  # type: ignore[arg-type]
        if raw is None:
            return None
        resolved = resolve(self.file, raw)
        if resolved is None:
            self.problem(key, f"not a usable path: {quoted(raw)}")
        elif must_exist and not resolved.exists():
            self.problem(key, f"file not found: {resolved}")
        return resolved

    def sub(self, key: str) -> TableReader:
        table = self.get(key, dict, {})
        return TableReader(self.file, table, self.where(key), self.problems)

    def tables(self, key: str) -> Iterator[TableReader]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            where = f"{self.where(key)}[{i}]"
            if not isinstance(item, dict):
                self.problems.add(where, "expected a table")
                continue
            yield TableReader(self.file, item, where, self.problems)

    def finish(self) -> None:
        for key in self.table:
            if key not in self.seen:
                self.problem(key, "unknown key")


def key_name(key: str) -> str:
    """``key`` as a problem names it: a quoted TOML key may hold anything, a line break
    too, so one that is empty, long or not printable is quoted and cut (the problem stays
    one short line)."""
    return key if key and len(key) <= 64 and key.isprintable() else quoted(key)


def resolve(file: Path, raw: str) -> Path | None:
    """``raw`` relative to the config file's folder; None if no file could have that name."""
    try:
        resolved = (file.parent / raw).resolve()
        resolved.exists()  # NUL bytes and over-long names fail here, not later
    except (ValueError, OSError):
        return None
    return resolved


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
        type(None): "nothing",
    }.get(kind, kind.__name__)


CONTEXT_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def read_mode(r: TableReader, key: str) -> Mode:
    return Mode(r.choice(key, tuple(m.value for m in Mode), Mode.DISABLED.value))


def header_name(r: TableReader, key: str, default: str | None) -> str | None:
    value = r.get(key, str, default)  # type: ignore[arg-type]
    if value is not None and not HEADER_RE.match(value):
        r.problem(key, f"not a valid HTTP header name: {quoted(value)}")
        return default
    return value


def string_list(r: TableReader, key: str) -> list[str] | None:
    if key not in r.table:
        r.seen.add(key)
        return None
    values = r.get(key, list, [])
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            r.problem(f"{key}[{i}]", f"expected a string, got {quoted(v)}")
        else:
            out.append(v)
    return out


def listed(r: TableReader, key: str, empty: str) -> list[str] | None:
    """``string_list``; a list written empty is a problem saying what it would do
    (``empty``): an empty allow-list is a mistake, never a silent "nothing passes"."""
    values = string_list(r, key)
    if values == [] and r.table.get(key) == []:
        r.problem(key, f"an empty list {empty}")
    return values


def host_patterns(r: TableReader, key: str) -> tuple[str, ...] | None:
    """``key`` as a list of host patterns (_hosts.py), each in its one spelling."""
    values = string_list(r, key)
    if values is None:
        return None
    if not values:
        r.problem(key, "an empty list matches no host; remove the key to match any host")
        return None
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            pat = hostnames.pattern(value)
        except hostnames.BadHost as e:
            r.problem(f"{key}[{i}]", str(e))
            continue
        if pat in out:
            r.problem(f"{key}[{i}]", f"{quoted(value)} is listed twice")
            continue
        out.append(pat)
    return tuple(out)
