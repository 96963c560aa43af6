"""Reading a plugin's config table: typed look-ups, every problem at once, unknown keys refused.

A plugin's problems appear in ``twistedgw check`` beside the rest, with dotted
keys such as ``apis[2].plugins[0].set``, so plugins report them the same way
as the gateway's own config reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twistedgw.config import ApiConfig, GatewayConfig, ProblemList, TableReader

T = TypeVar("T")



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


class Options(TableReader):
    """A plugin's table, read with the gateway's own config reader (``get``, ``required``,
    ``choice``, ``positive``; the same type rules and messages), then ``finish``, which
    refuses unknown keys and raises ``PluginConfigError`` with every problem."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        super().__init__(Path("plugin"), dict(table), "", ProblemList(Path("plugin")), {"name"})
        self.reported: list[tuple[str, str]] = []  # (key relative to the table, message)

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def problem(self, key: str, message: str) -> None:
        self.reported.append((key, message))

    def finish(self) -> None:
        super().finish()
        if self.reported:
            raise PluginConfigError(self.reported)
