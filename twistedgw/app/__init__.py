"""The application: the Runtime snapshot, the service, worker processes, admin
listener, metrics and access log, and the command line.

``make_service`` is what embedding applications and the twistd plugin call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twistedgw.app import _runtime as runtime
from twistedgw.app._admin import AdminService
from twistedgw.app._cli import main
from twistedgw.app._diagnose import decode_header_report
from twistedgw.app._observe import Metrics, access_entry, reason_label
from twistedgw.app._runtime import Runtime
from twistedgw.app._service import GatewayService, gather_listening
from twistedgw.app._workers import Supervisor
from twistedgw.config import RESOURCE, ConfigError, GatewayConfig


def make_service(
    config: GatewayConfig | str | Path,
    reactor: Any = None,
    *,
    resources: Mapping[str, Any] | None = None,
) -> GatewayService | Supervisor:
    """Build the gateway service from a config (or a path to one).

    Raises ``ConfigError`` for any configuration problem. Add the result to an
    application with ``setServiceParent``. Both kinds have ``reload()`` (call it
    on SIGHUP) and stop gracefully with the application.

    ``resources`` maps API names (or ``name:version``) to the Twisted resources (or Klein
    apps) that serve the APIs whose config says ``backend = "resource:"``: the
    application's own objects, behind each API's pipeline (docs/how-to/embedding.md).
    """
    if not isinstance(config, GatewayConfig):
        # Config and key-material problems together, as ``twistedgw check`` reports them.
        config = runtime.load(config).config
    if config.workers > 1:
        supplied = [f"apis[{i}].backend" for i, api in enumerate(config.apis)
                    if api.backend == RESOURCE]
        if resources or supplied:
            where = supplied[0] if supplied else "workers"
            raise ConfigError([
                f"{config.source}: {where}: resources supplied in Python need workers = 1 "
                "(worker processes are started afresh and import their own: write "
                'backend = "resource:package.module:attribute")'])
        return Supervisor(config, reactor)
    return GatewayService(config, reactor, resources=resources)


__all__ = [
    "AdminService",
    "GatewayService",
    "Metrics",
    "Runtime",
    "Supervisor",
    "access_entry",
    "decode_header_report",
    "gather_listening",
    "main",
    "make_service",
    "reason_label",
]
