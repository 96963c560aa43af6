"""Graceful stop: let in-flight requests finish, close keep-alive connections, then go.

Only connections are tracked, not requests: an HTTP/1.1 channel with an exchange
in ``requests`` is busy (its answer awaited, or its body still arriving), one without
is idle. That needs nothing from the request factory or the resource, so it
keeps working whatever the rest of the pipeline does.

An upgraded connection (a WebSocket, ``upgraded`` on its channel) stays busy until it
closes; when the drain timeout passes, it is closed with a ``1001`` Close frame each
way (``Tunnel.shutdown``) and given ``UPGRADED_GRACE`` to go before the abort.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()

POLL_SECONDS = 0.05
#: After the drain timeout, how long upgraded connections (WebSockets) closed with a
#: ``1001`` Close frame get to send it and close before everything left is aborted.
UPGRADED_GRACE = 1.0


def _channel(protocol: Any) -> Any:
    # An http2 listener's connection is a wrapper (http/_h2.NegotiatingChannel): the
    # HTTP/1.1 front, or the HTTP/2 connection it handed over to.
    return getattr(protocol, "_channel", protocol)


def _closed(protocol: Any) -> bool:
    """Whether a tracked connection is gone: its socket's transport was disconnected."""
    transport = getattr(_channel(protocol), "transport", None)
    if transport is None:
        return True
    lower = getattr(transport, "transport", None) or transport  # TCP, under TLS or not
    return bool(getattr(lower, "disconnected", False))


def _busy(protocol: Any) -> bool:
    return bool(getattr(_channel(protocol), "requests", None))


def _settled(protocol: Any) -> bool:
    """No request left and nothing of the last response still buffered in this process.

    Such a connection only waits for the peer's close_notify or FIN, which a
    client need not ever send, so the stop does not wait for it.
    """
    if _busy(protocol):
        return False
    transport = getattr(_channel(protocol), "transport", None)
    lower = getattr(transport, "transport", None)  # the TCP transport under TLS
    for t in (transport, lower):
        if t is None:
            continue
        if (
            getattr(t, "_appSendBuffer", None)
            or getattr(t, "dataBuffer", None)
            or getattr(t, "_tempDataBuffer", None)
        ):
            return False
    return True


class ConnectionTracker:
    """The open connections of one ``Site``, so a stop can drain them."""

    def __init__(self) -> None:
        # A plain set: a connection leaves it from its own connectionLost (``forget``),
        # without a wrapper around it (a closure and a bound method, ~0.4 KiB per open
        # connection) or a weak reference with a callback (~0.1 KiB). One whose loss was
        # not reported leaves at the next look (``open``): it is closed.
        self.connections: set[Any] = set()
        self.draining = False

    def track(self, protocol: Any) -> None:
        self.connections.add(protocol)

    def forget(self, protocol: Any) -> None:
        """``protocol``'s connection is gone (its ``connectionLost``)."""
        self.connections.discard(protocol)

    def open(self) -> list[Any]:
        """The tracked connections still open (the closed ones are forgotten)."""
        closed = [p for p in self.connections if _closed(p)]
        self.connections.difference_update(closed)
        return [p for p in self.connections if not _closed(p)]

    def busy(self) -> int:
        return sum(1 for p in self.open() if _busy(p))

    def _sweep(self) -> None:
        """Close idle connections; make busy ones close after their current response."""
        for protocol in self.open():
            channel = _channel(protocol)
            transport = getattr(channel, "transport", None)
            if transport is None:
                continue
            graceful = getattr(channel, "graceful_close", None)
            if graceful is not None:  # HTTP/2: GOAWAY, in-flight streams finish (http/_h2.py)
                graceful()
                continue
            if not _busy(protocol):
                # The channel's own loseConnection: it unregisters itself as the
                # transport's producer first, without which TLS never closes.
                lose = getattr(channel, "loseConnection", transport.loseConnection)
                lose()
                continue
            # An answer not yet started says ``Connection: close`` (http/_front.py).
            channel.persistent = False

    def _close_upgraded(self) -> int:
        """Close every upgraded connection (``1001`` each way); how many there were."""
        closed = 0
        for protocol in self.open():
            tunnel = getattr(_channel(protocol), "upgraded", None)
            if tunnel is not None and not tunnel.done:
                tunnel.shutdown()
                closed += 1
        return closed

    def drain(self, reactor: Any, timeout: float) -> defer.Deferred[None]:
        """Fires when every connection has closed, or after ``timeout`` seconds when
        whatever is left has been aborted. Call after the listeners stopped."""
        self.draining = True
        done: defer.Deferred[None] = defer.Deferred()
        deadline = reactor.seconds() + timeout
        busy = self.busy()
        if busy:
            log.info(
                "Stopping: waiting up to {timeout}s for {n} in-flight request(s)",
                timeout=timeout,
                n=busy,
            )

        def tick() -> None:
            self._sweep()
            still_open = self.open()
            if all(_settled(p) for p in still_open):
                for protocol in still_open:
                    transport = getattr(_channel(protocol), "transport", None)
                    if transport is not None:
                        transport.abortConnection()
                reactor.callLater(0, done.callback, None)
                return
            if reactor.seconds() >= deadline:
                closed = self._close_upgraded()
                if closed:
                    log.info(
                        "shutdown_timeout ({timeout}s) reached: closing {n} WebSocket(s) (1001)",
                        timeout=timeout,
                        n=closed,
                    )
                    grace = reactor.seconds() + UPGRADED_GRACE
                    reactor.callLater(POLL_SECONDS, wait_upgraded, grace)
                    return
                abort_all()
                return
            reactor.callLater(POLL_SECONDS, tick)

        def wait_upgraded(until: float) -> None:
            if reactor.seconds() < until and any(
                getattr(_channel(p), "upgraded", None) is not None for p in self.open()
            ):
                reactor.callLater(POLL_SECONDS, wait_upgraded, until)
                return
            abort_all()

        def abort_all() -> None:
            left = self.busy()
            if left:
                log.warn(
                    "shutdown_timeout ({timeout}s) reached: aborting {n} unfinished request(s)",
                    timeout=timeout,
                    n=left,
                )
            for protocol in self.open():
                transport = getattr(_channel(protocol), "transport", None)
                if transport is not None:
                    transport.abortConnection()
            # Aborted connections report connectionLost on the next reactor turn.
            reactor.callLater(0, done.callback, None)

        tick()
        return done


def stop_once(
    reactor: Any,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Make ``signals`` start one graceful stop; a repeat (an impatient operator, or
    Ctrl-C reaching every process of the group) is logged, not an error.

    Call once the reactor runs (``callWhenRunning``), after Twisted installed its own.
    """
    stopping = [False]

    def stop() -> None:
        with contextlib.suppress(ReactorNotRunning):
            reactor.stop()

    def handler(number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if stopping[0]:
            log.info("Received {signal} again: still stopping gracefully", signal=name)
            return
        stopping[0] = True
        log.info("Received {signal}: stopping gracefully", signal=name)
        reactor.callFromThread(stop)

    for sig in signals:
        signal.signal(sig, handler)
