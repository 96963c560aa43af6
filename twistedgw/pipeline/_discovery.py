"""Finding the installed plugins with ``twisted.plugin``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from twisted.plugin import getCache

from twistedgw.pipeline._interfaces import IGatewayPlugin


@dataclass(frozen=True)
class Installed:
    """One plugin found on ``sys.path``."""

    name: str
    description: str
    origin: str  # the file it was loaded from
    plugin: Any  # provides IGatewayPlugin


def installed() -> list[Installed]:
    """Every plugin in the ``twistedgw.plugins`` package path, in discovery order.

    Called at start, ``check`` and reload (never per request): a plugin
    installed since the last reload is found by the next one.
    """
    import twistedgw.plugins

    found = []
    for module_name, dropin in sorted(getCache(twistedgw.plugins).items()):
        for cached in dropin.plugins:
            if not any(iface.isOrExtends(IGatewayPlugin) for iface in cached.provided):
                continue
            plugin = cached.load()
            if not IGatewayPlugin.providedBy(plugin):
                continue
            module = sys.modules.get(dropin.moduleName) or sys.modules.get(module_name)
            origin = getattr(module, "__file__", None) or dropin.moduleName
            found.append(
                Installed(
                    str(getattr(plugin, "name", "")),
                    str(getattr(plugin, "description", "")),
                    str(origin),
                    plugin,
                )
            )
    return found
