"""The reactor ``twistedgw run`` uses: Twisted's epoll reactor, minus two per-event costs.

**No legacy log context per event.** Twisted's reactor runs every read and write
event inside ``log.callWithLogger``: it asks the socket for its log prefix and pushes
a legacy log context (a dict copied and merged, on a thread-local stack) so that
*legacy* ``twisted.python.log`` calls made while handling the event are stamped with
that prefix as their ``system``. The gateway logs through ``twisted.logger``, whose
events never read that context, so for the gateway's own sockets (its listeners, its
client connections, its backend connections) the context costs ~4 us per event and
buys nothing (5% of a keep-alive request's instructions, bench/callgrind.py).
``GatewayReactor`` dispatches those events directly and keeps
Twisted's behaviour for every other selectable (the waker, process pipes, stdio).

What changes for those sockets: a legacy ``log.msg`` or ``log.err`` made while one of
them is handled (Twisted's own report of an exception raised by a protocol's
``dataReceived``, say) carries ``system`` "-" instead of the socket's prefix. An
exception that escapes the dispatch itself is still logged with the prefix, as
``callWithLogger`` would, and the other events of the same poll are still handled.

**A write goes out at once when nothing is queued.** Twisted's ``FileDescriptor.write``
queues every write and registers the socket for writability; the next reactor turn sends
it and unregisters the socket: two ``epoll_ctl`` calls, an event and a turn of latency
per write, two writes per proxied request (the backend request, the response). The
gateway's TCP connections (``GatewayServer`` from its listeners, ``GatewayClient`` to
its backends) and its Unix-socket ones (``GatewayUnixServer``: NGINX asking the authz
endpoint, plain HTTP/1.1 kept alive) try ``send()`` first when nothing is queued and
queue only what the kernel did not take. Everything else stays Twisted's: order (a write
behind queued bytes is queued), pull producers (their writes are queued: Twisted asks
for more once the queue drains), ``loseConnection`` and half-close, errors (the bytes
are queued, so Twisted's ``doWrite`` meets the error and closes as usual), and
**back-pressure**: at most ``bufferSize`` (64 KiB, counted in 256-byte units) is sent
directly per reactor event of the socket; past that, its streaming producer is paused,
as Twisted pauses it once 64 KiB are queued, and resumed by the next ``doWrite``.

That bound is what an earlier attempt (``send_now``, CHANGELOG 0.4.0) lacked and why it
stalled TLS handshakes in a soak: with every answer leaving at once, the HTTP front
never saw its output back up, so one read of 64 KiB of pipelined requests from a client
that never reads was answered whole, ~2,000 responses and 0.3-2.4 s of one reactor
event on a loaded machine, while every other connection (handshakes in flight with a 2 s
``handshake_timeout``) waited. Twisted's queue had stopped the front after ~64 KiB of
answers. ``tests/test_soak.py`` keeps that load (pipelined clients that never read,
handshakes beside them).

Only ``twistedgw run`` (and its worker processes) use it (``adopt``); an application
that embeds the gateway keeps its own reactor. (The Unix-socket listeners, which
twistedgw makes itself, ``_unixsockets.UnixPort``, make ``GatewayUnixServer``s under
any reactor: they need nothing of the reactor's.) The private names it relies on are in
``twistedgw/_twisted.py``.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import base, main, tcp, unix
from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: no epoll, Twisted's default reactor is used
    EPollReactor = None  # type: ignore[assignment,misc]


_TOP_HANDLER = base._topHandler  # Twisted's loop's failure handler (twistedgw/_twisted.py)
_base_log = base._log

_BUDGET = 256
"""256-byte units a socket may send directly per reactor event: Twisted's 64 KiB
``bufferSize``, the queue size past which it pauses a producer."""


class _SendFirst:
    """The send-first ``write`` of ``GatewayServer`` and ``GatewayClient`` (see above)."""

    # Set by Twisted's FileDescriptor (attributes of the classes this mixes into).
    bufferSize: int
    connected: int
    disconnecting: int
    dataBuffer: bytes
    _tempDataLen: int
    _writeDisconnecting: bool
    _writeDisconnected: bool
    producer: Any
    streamingProducer: bool
    producerPaused: bool
    socket: socket.socket
    # What was sent directly since this socket's last reactor event, in 256-byte units
    # (rounded up): up to 256 (64 KiB) it stays one of CPython's shared small ints, so an
    # idle connection holds no int object of its own.
    _sent_now: int

    def doRead(self) -> Any:
        self._sent_now = 0
        return super().doRead()  # type: ignore[misc]

    def doWrite(self) -> Any:
        self._sent_now = 0
        return super().doWrite()  # type: ignore[misc]

    def write(self, data: bytes) -> None:
        if (
            not self.dataBuffer
            and not self._tempDataLen
            and self._sent_now < _BUDGET
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and (self.producer is None or self.streamingProducer)
            and type(data) is bytes
            and data
        ):
            try:
                sent = self.socket.send(data)
            except OSError:  # would block, or an error Twisted's doWrite will meet
                sent = 0
            if sent:
                self._sent_now += (sent + 255) >> 8
                if sent == len(data):
                    if self._sent_now >= _BUDGET:
                        self._pause_producer()
                    return
                data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def _pause_producer(self) -> None:
        """``bufferSize`` went out directly in one event: pause the streaming producer,
        as Twisted does once that much is queued; the next ``doWrite`` (the socket is
        writable at once) finds nothing queued and resumes it."""
        producer = self.producer
        if producer is not None and self.streamingProducer and not self.producerPaused:
            self.producerPaused = True
            producer.pauseProducing()
            self.startWriting()  # type: ignore[attr-defined]


class _Lazy:
    """An attribute Twisted's ``tcp.Server`` sets in ``__init__`` (its log prefix and its
    repr, ~0.2 KiB of strings per connection) made when read instead: the assignment is
    dropped, the value built from the connection when asked for."""

    def __init__(self, make: Any) -> None:
        self._make = make

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else self._make(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        pass


def _logstr(server: Any) -> str:
    protocol = getattr(server, "protocol", None)  # Twisted deletes it on close
    prefix = server._getLogPrefix(protocol) if protocol is not None else "closed"
    return f"{prefix},{server.sessionno},{server.hostname}"


def _repstr(server: Any) -> str:
    protocol = getattr(server, "protocol", None)
    name = type(protocol).__name__ if protocol is not None else "closed"
    port = getattr(server.server, "_realPortNumber", "?")
    return f"<{name} #{server.sessionno} on {port}>"


class _QueueWhenNeeded:
    """``FileDescriptor._tempDataBuffer``, the list of writes queued for the socket:
    Twisted gives every connection an empty one (~56 bytes per open connection) that a
    send-first connection rarely uses. Made when something reads it (a write queued,
    ``doWrite``) and kept (in ``_queued_writes``) while it holds anything; an empty one
    assigned is dropped. (Attributes, not ``__dict__``: reading an instance's
    ``__dict__`` would make it a dict object of its own, ~64 bytes.)"""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        queued: list[bytes] | None = getattr(obj, "_queued_writes", None)
        if queued is None:
            queued = obj._queued_writes = []
        return queued

    def __set__(self, obj: Any, value: list[bytes]) -> None:
        if value:
            obj._queued_writes = value
        elif getattr(obj, "_queued_writes", None) is not None:
            obj._queued_writes = None


def _gone() -> int:
    return -1


class _SocketFileno:
    """``fileno``: Twisted keeps the socket's bound ``fileno`` on each connection (~72
    bytes per open connection); this asks the socket when called, and answers -1 once
    the socket is gone (Twisted deletes it on close), as ``FileDescriptor.fileno`` does."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        sock = getattr(obj, "socket", None)
        return sock.fileno if sock is not None else _gone

    def __set__(self, obj: Any, value: Any) -> None:
        pass  # Twisted's ``self.fileno = skt.fileno``: the same, asked when called

    def __delete__(self, obj: Any) -> None:
        pass  # Twisted's ``del self.fileno`` on close: ``socket`` is deleted with it


class GatewayServer(_SendFirst, tcp.Server):
    """A connection accepted by the gateway's TCP listeners: send-first writes, the log
    prefix and repr made when asked for, the write queue made when needed and the
    socket's ``fileno`` asked when called."""

    logstr = _Lazy(_logstr)
    repstr = _Lazy(_repstr)
    _tempDataBuffer = _QueueWhenNeeded()
    fileno = _SocketFileno()

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: Any,
                 sessionno: int, reactor: Any) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self._sent_now = 0


class GatewayClient(_SendFirst, tcp.Client):
    """A connection to a backend: send-first writes."""

    def __init__(self, host: str, port: int, bindAddress: Any, connector: Any,
                 reactor: Any = None) -> None:
        super().__init__(host, port, bindAddress, connector, reactor)
        self._sent_now = 0


class GatewayUnixServer(_SendFirst, unix.Server):
    """A connection accepted by a Unix-socket listener (NGINX asking the authz endpoint):
    send-first writes, and reads with a plain ``recv``.

    Twisted's Unix connections read with ``recvmsg`` and a buffer for ancillary data,
    to receive file descriptors (``IUNIXTransport``), and parse that ancillary data on
    every read; the gateway never takes file descriptors from a peer, so a plain
    ``recv`` does. Descriptors a peer sends anyway are dropped by the kernel (closed,
    never installed in this process), as Twisted closes them for a protocol that does
    not take them. Writes are Twisted's sendmsg-aware ones when queued (nothing is ever
    queued with a descriptor)."""

    def __init__(self, sock: socket.socket, protocol: Any, client: Any, server: Any,
                 sessionno: int, reactor: Any) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self._sent_now = 0

    def doRead(self) -> Any:
        self._sent_now = 0
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None


class GatewayPort(tcp.Port):
    """A TCP listener whose connections are ``GatewayServer``s (Twisted's documented
    way to choose the transport: the ``transport`` attribute)."""

    transport = GatewayServer


class GatewayConnector(tcp.Connector):
    """``connectTCP``'s connector, making ``GatewayClient``s."""

    def _makeTransport(self) -> GatewayClient:
        return GatewayClient(self.host, self.port, self.bindAddress, self, self.reactor)


QUIET_TYPES: frozenset[type] = frozenset(
    {GatewayServer, GatewayClient, GatewayPort, GatewayUnixServer, tcp.Server, tcp.Client,
     tcp.Port, unix.Server, unix.Port}
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

        def mainLoop(self) -> None:
            """Twisted's loop (``ReactorBase.mainLoop``) with a turn that has nothing
            timed due written out: ``runUntilCurrent`` and ``timeout`` (and their two
            ``_insertNewDelayedCalls``, and the failure handler's ``__enter__`` and
            ``__exit__``: seven Python calls, ~9k instructions, a turn; behind NGINX a
            turn per authz decision) run only when a thread's call, a new or due timed
            call, a stop or the cancelled calls' clean-up waits; otherwise the poll's
            timeout is worked out here as ``timeout`` works it out. An exception a turn
            raises is logged as Twisted's loop logs it (``_topHandler``), and the loop
            goes on."""
            while self._started:
                try:
                    pending = self._pendingTimedCalls
                    now = self.seconds()
                    if (
                        self.threadCallQueue or self._newTimedCalls or self._justStopped
                        or (pending and pending[0].time <= now) or self._cancellations > 50
                    ):
                        self.runUntilCurrent()
                        delay = self.timeout()
                    elif pending:  # ``timeout``'s answer (2 ** 31 ms: epoll's bound)
                        delay = max(0, min(2147483, pending[0].time - now))
                    else:
                        delay = None
                    self.doIteration(self.running and delay)
                except BaseException:
                    with _TOP_HANDLER:  # logged, as Twisted's loop does; the loop goes on
                        raise
            _base_log.info("Main loop terminated.")

        def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                      interface: str = "") -> GatewayPort:
            listening = GatewayPort(port, factory, backlog, interface, self)
            listening.startListening()
            return listening

        def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30.0,
                       bindAddress: Any = None) -> GatewayConnector:
            connector = GatewayConnector(host, port, factory, timeout, bindAddress, self)
            connector.connect()
            return connector

        def adoptStreamPort(self, fileDescriptor: int, addressFamily: int,
                            factory: Any) -> Any:
            """Listen on an inherited socket (worker processes, systemd): a TCP one's
            connections are ``GatewayServer``s too."""
            if addressFamily not in (socket.AF_INET, socket.AF_INET6):
                return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
            listening = GatewayPort._fromListeningDescriptor(
                self, fileDescriptor, addressFamily, factory
            )
            listening.startListening()
            return listening


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
