"""The gateway's own CPU per keep-alive request, in process: no kernel, TLS or reactor.

    python3 bench/own_cost.py [--requests 20000] [--rounds 5] [--profile] [--gc]
    valgrind --tool=callgrind --callgrind-out-file=OUT.%p python3 bench/own_cost.py \
        --requests 2000 --callgrind   # instructions per request: OUT's "totals" / 2000

Runs ``bench/run.py``'s keep-alive request (``GET /bench/small`` on an API with
``mutual_ssl = "mandatory"``, the metrics observer on, no access log) through the real
request path: the HTTP/1.1 front (``http/_front.FrontChannel``) parses the request bytes,
routes, resolves the caller, runs the API's pipeline, the forwarder builds the backend
request and writes it on a pooled backend connection (``upstream/_client``), which is
handed the backend's response bytes (NGINX's, as ``bench/run.py``'s backend sends them);
the response is relayed to the client and the request counted. The transports are
in-memory (``StringTransport``); the client connection stands for a TLS one whose
handshake verified the ``partner-app`` chain. What this leaves out (TLS records,
sockets, the reactor) is what ``bench/profile.py`` and ``bench/split.py`` add.

It reports the process CPU time per request (median and min..max over the rounds),
the cyclic GC's collections per 1,000 requests (and ``--gc``: the objects they found
unreachable, which only a reference cycle leaves), and with ``--profile`` cProfile's
top functions. A figure to compare trees in the same run (``PYTHONPATH=TREE``), not an
absolute one.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds a profile.py, which would shadow the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from twistedgw import config as configmod  # noqa: E402
from twistedgw.app import _runtime as runtimemod  # noqa: E402
from twistedgw.app._observe import Metrics  # noqa: E402
from twistedgw.http import Gateway, GatewayResource  # noqa: E402
from twistedgw.http import _front as front  # noqa: E402
from twistedgw.identity import ClientIdentity, Outcome, Source  # noqa: E402
from twistedgw.testing import devpki  # noqa: E402
from twistedgw.upstream import Forwarder, ForwardSettings, parse_origin  # noqa: E402
from twistedgw.upstream import _client as client  # noqa: E402

REQUEST = b"GET /bench/small HTTP/1.1\r\nhost: localhost:8443\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 14:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)
BACKEND = "http://127.0.0.1:9"


class _Transport(StringTransport):
    """The client's transport; ``getHandle`` is TLS's (None: no memory BIOs to free)."""

    def getHandle(self) -> None:
        return None


API = f"""
[[apis]]
name = "bench"
version = "1"
context = "/bench"
backend = "{BACKEND}"
mutual_ssl = "mandatory"
aliases = ["partner-root"]
"""


class Client:
    """One client connection to the front (its transport stands for a TLS one)."""

    def __init__(self, harness: Harness, identity: ClientIdentity | None) -> None:
        self.channel = front.FrontChannel(harness.guard)
        self.channel.site = harness.site
        self.channel.callLater = harness.clock.callLater
        self.transport = _Transport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
        )
        # The verdict the connection's handshake recorded (what ServerTLS keeps).
        harness.identities[self.transport] = identity or harness.partner
        self.channel.makeConnection(self.transport)
        conn = self.channel._conn
        assert conn is not None
        conn.secure = True  # as over TLS: the verdict above is the connection's


class Harness:
    """Client connections and one backend connection, driven by hand.

    ``apis`` (TOML: ``[[apis]]`` tables, ``backend = BACKEND``) and ``extra`` (more
    sections) make the config; ``client`` is a connection whose handshake verified the
    ``partner-app`` chain, ``connect(identity)`` opens another."""

    def __init__(
        self, work: Path, apis: str = API, extra: str = "", pki: devpki.DevPki | None = None
    ) -> None:
        pki = self.pki = pki or devpki.generate(work / "pki")
        conf = work / "gw.toml"
        conf.write_text(f"""
[[listeners]]
host = "127.0.0.1"
port = 8443

[tls]
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
truststore = "{pki.truststore_dir}"
{apis}
{extra}
""")
        built = runtimemod.build(configmod.load(conf))
        assert built.server_tls is not None and built.truststore is not None
        self.truststore = built.truststore
        self.partner = self.verified("partner-app", "partner-issuing", "partner-root")
        self.identities: dict[object, ClientIdentity] = {}
        identities = self.identities
        built.server_tls.identity_for = (  # type: ignore[method-assign]
            lambda transport: identities[transport]
        )
        self.clock = Clock()
        forwarder = Forwarder(self.clock, ForwardSettings())
        self.gateway = Gateway(built, forwarder)
        self.metrics = Metrics(lambda: built)
        self.gateway.counter = self.metrics  # as the service does
        self.site = Site(GatewayResource(self.gateway))
        self.guard = front.serve_http1(self.site, self.gateway)
        self.client = self.connect()
        self.channel, self.transport = self.client.channel, self.client.transport
        # One idle backend connection in the pool, as after the first request.
        upstream = forwarder._upstream
        origin = parse_origin(BACKEND.encode(), None)
        self.backend = client._Connection(upstream, origin)
        self.backend_transport = StringTransport()
        self.backend.makeConnection(self.backend_transport)
        upstream.park(self.backend)

    def verified(self, leaf: str, *cas: str) -> ClientIdentity:
        """The verdict of a handshake that verified ``leaf``'s chain through ``cas``."""
        chain = (self.pki.issued[leaf].cert, *(self.pki.authorities[a].cert for a in cas))
        return ClientIdentity(
            Source.HANDSHAKE, Outcome.VERIFIED, chain, self.truststore.aliases_in_chain(chain)
        )

    def connect(self, identity: ClientIdentity | None = None) -> Client:
        return Client(self, identity)

    def exchange(self, client: Client, request: bytes = REQUEST) -> tuple[bytes, bytes]:
        """One request on ``client``: what the backend was sent (it answers ``RESPONSE``)
        and what the client got."""
        client.channel.dataReceived(request)
        sent = self.backend_transport.value()
        self.backend_transport.clear()
        if sent:
            self.backend.dataReceived(RESPONSE)
        answer = client.transport.value()
        client.transport.clear()
        return sent, answer

    def one(self) -> None:
        self.channel.dataReceived(REQUEST)
        self.backend_transport.clear()
        self.backend.dataReceived(RESPONSE)
        self.transport.clear()

    def check(self) -> None:
        sent, answer = self.exchange(self.client)
        assert sent.startswith(b"GET /small HTTP/1.1\r\n"), sent
        assert answer.startswith(b"HTTP/1.1 200 "), answer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--gc", action="store_true", help="count what the collector frees")
    p.add_argument(
        "--callgrind", action="store_true",
        help="under valgrind --tool=callgrind: zero the counters before the measured "
        "requests and dump them after (instructions per request = the dump's total / N)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="twistedgw-own-") as tmp:
        h = Harness(Path(tmp))
        h.check()
        for _ in range(1000):
            h.one()
        figures: list[float] = []
        collections: list[float] = []
        found: list[int] = []
        if args.gc:
            gc.callbacks.append(
                lambda phase, info: found.append(info["collected"]) if phase == "stop" else None
            )
        if args.callgrind:
            import os
            import subprocess

            def control(flag: str) -> None:
                subprocess.run(["callgrind_control", flag, str(os.getpid())], check=True,
                               capture_output=True, timeout=120)

            control("-z")
            for _ in range(args.requests):
                h.one()
            control("-d")
            print(f"callgrind: {args.requests} requests dumped")
            return 0
        for _ in range(args.rounds):
            before = sum(s["collections"] for s in gc.get_stats())
            t0 = time.process_time()
            for _ in range(args.requests):
                h.one()
            figures.append(1e6 * (time.process_time() - t0) / args.requests)
            after = sum(s["collections"] for s in gc.get_stats())
            collections.append(1000 * (after - before) / args.requests)
        print(f"{statistics.median(figures):.1f} µs per request "
              f"({min(figures):.1f}..{max(figures):.1f}, {args.rounds} rounds of "
              f"{args.requests}); GC collections per 1,000 requests: "
              f"{statistics.median(collections):.1f}")
        if args.gc:
            total = args.rounds * args.requests
            print(f"objects the collector freed per request: {sum(found) / total:.2f}")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.requests):
                h.one()
            prof.disable()
            stats: Any = pstats.Stats(prof)
            stats.sort_stats("tottime").print_stats(40)
        h.check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
