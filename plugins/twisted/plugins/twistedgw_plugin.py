"""twistd plugin: ``twistd -n twistedgw --config FILE``.

(The gateway's own per-API plugins live in ``twistedgw.plugins``, not here.)
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path to the gateway's TOML configuration."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "twistedgw"
    description = "API gateway with per-API mutual TLS."
    options = Options

    def makeService(self, options: Options) -> Any:
        import signal
        import sys

        from twistedgw.app import make_service
        from twistedgw.config import ConfigError

        try:
            svc = make_service(options["config"])
        except ConfigError as e:
            for line in e.problems:
                print(f"twistedgw: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        from twisted.internet import reactor

        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(svc.reload))  # type: ignore[attr-defined]
        return svc


serviceMaker = GatewayServiceMaker()
