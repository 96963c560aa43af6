"""Reading a plugin's config table: typed look-ups, every problem at once, unknown keys refused.

A plugin's problems appear in ``twistedgw check`` beside the rest, with dotted
keys such as ``apis[2].plugins[0].set``, so plugins report them the same way
as the gateway's own config reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from twistedgw.config import ApiConfig, GatewayConfig

T = TypeVar("T")

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


class PluginConfigError(Exception):
    """A plugin table is wrong: ``problems`` are (key, message), keys relative to the table."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))
        self.problems = problems


@dataclass(frozen=True)
class PluginContext:
    """What a plugin may know when it is configured: its API and the whole gateway config."""

    api: ApiConfig
    config: GatewayConfig


class Options:
    """A plugin's table. Read every key with ``get``/``required``, then call ``finish``."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self._table = table
        self._seen: set[str] = {"name"}
        self.problems: list[tuple[str, str]] = []

    def __contains__(self, key: str) -> bool:
        return key in self._table

    def problem(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def get(self, key: str, kind: type[T], default: T) -> T:
        self._seen.add(key)
        if key not in self._table:
            return default
        value = self._table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.problem(
                key,
                f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}",
            )
            return default
        return value

    def required(self, key: str, kind: type[T]) -> T | None:
        if key not in self._table:
            self._seen.add(key)
            self.problem(key, "is required")
            return None
        return self.get(key, kind, None)  # type: ignore[arg-type]

    def finish(self) -> None:
        """Refuse unknown keys and raise ``PluginConfigError`` if anything was wrong."""
        for key in self._table:
            if key not in self._seen:
                self.problem(key, "unknown key")
        if self.problems:
            raise PluginConfigError(self.problems)
