"""Embed twistedgw in an existing Twisted application: ``twistd -ny conf/embed.tac``.

The gateway is one service among the application's own; it starts, reloads and
stops gracefully with them. TWISTEDGW_CONFIG names the gateway's config file.
"""

import os
import signal

from twisted.application import internet, service
from twisted.internet import reactor
from twisted.web import resource, server, static

import twistedgw

application = service.Application("my-application")

# The application's own services, e.g. an internal status page ...
status = resource.Resource()
status.putChild(b"", static.Data(b"my application is up\n", "text/plain"))
internet.TCPServer(
    int(os.environ.get("STATUS_PORT", "8081")), server.Site(status), interface="127.0.0.1"
).setServiceParent(application)

# ... and the gateway, from its TOML config (a loaded GatewayConfig works too).
gateway = twistedgw.make_service(os.environ.get("TWISTEDGW_CONFIG", "/etc/twistedgw/gateway.toml"))
gateway.setServiceParent(application)

# twistd stops services gracefully on SIGTERM; SIGHUP reload is the application's choice.
signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload))
