"""The reactor ``twistedgw run`` installs: Twisted's epoll reactor, minus a per-event cost.

Twisted's reactor runs every read and write event inside ``log.callWithLogger``: it
asks the socket for its log prefix and pushes a legacy log context (a dict copied
and merged, on a thread-local stack) so that *legacy* ``twisted.python.log`` calls
made while handling the event are stamped with that prefix as their ``system``.
The gateway logs through ``twisted.logger``, whose events never read that context,
so for the gateway's own TCP sockets (its listeners, its client connections, its
backend connections) the context costs ~4 us per event (two to four events per
proxied request: about 2-3% of a keep-alive request's instructions, bench/callgrind.py)
and buys nothing. ``GatewayReactor`` dispatches those events directly and keeps
Twisted's behaviour for every other selectable (the waker, process pipes, stdio).

What changes for those sockets: a legacy ``log.msg`` or ``log.err`` made while one of
them is handled (Twisted's own report of an exception raised by a protocol's
``dataReceived``, say) carries ``system`` "-" instead of the socket's prefix. An
exception that escapes the dispatch itself is still logged with the prefix, as
``callWithLogger`` would, and the other events of the same poll are still handled.

Only ``twistedgw run`` (and its worker processes) use it (``adopt``); an application
that embeds the gateway keeps its own reactor. The private names it relies on are in
``twistedgw/_twisted.py``.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import tcp, unix
from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: no epoll, Twisted's default reactor is used
    EPollReactor = None  # type: ignore[assignment,misc]


QUIET_TYPES: frozenset[type] = frozenset(
    {tcp.Server, tcp.Client, tcp.Port, unix.Server, unix.Port}
)
"""The selectables whose events run without the legacy log context: the TCP and Unix
stream sockets (listeners, client and backend connections; Unix for a gateway behind
NGINX)."""


if EPollReactor is not None:

    class GatewayReactor(EPollReactor):  # type: ignore[misc,valid-type]
        """``EPollReactor`` whose TCP sockets' events run without the legacy log context."""

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout,
                                           len(self._selectables))
            except OSError as e:
                if e.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # removed by an earlier event of this poll
                if type(selectable) in QUIET_TYPES:
                    try:
                        dispatch(selectable, fd, event)
                    except KeyboardInterrupt:
                        raise
                    except BaseException:
                        _report(selectable)
                else:
                    log.callWithLogger(selectable, dispatch, selectable, fd, event)

        doIteration = doPoll


def _report(selectable: Any) -> None:
    """Log an exception that escaped an event's dispatch, with the socket's prefix as
    its ``system`` (what ``callWithLogger`` does)."""
    try:
        system = selectable.logPrefix()
    except BaseException:
        system = "(buggy logPrefix method)"
    log.err(system=system)


def adopt(reactor: Any) -> bool:
    """Make ``reactor``, Twisted's epoll reactor, a ``GatewayReactor``; False (and
    nothing changed) for any other reactor.

    The reactor is installed before the gateway can choose one (txredisapi, which
    ``pipeline/_cluster.py`` imports, imports ``twisted.internet.reactor``), so the
    running instance's class is switched instead: ``GatewayReactor`` adds no state
    and only overrides methods. Called before ``reactor.run()``."""
    if EPollReactor is None or type(reactor) is not EPollReactor:
        return False
    reactor.__class__ = GatewayReactor
    return True
