"""Send on a TCP connection at once when nothing is queued, instead of next reactor turn.

Twisted's ``FileDescriptor.write`` always queues the bytes and registers the socket
for writability; the next reactor turn sends them and unregisters it: two
``epoll_ctl`` calls and a turn of latency per write, four per proxied request
(client and backend sockets). With an empty queue the kernel almost always takes
a small write whole, so ``send_now`` gives a connection a ``write`` that tries
``send`` first and queues only what the kernel did not take. Everything else
stays Twisted's: a write while anything is queued is queued behind it (order),
a full queue pauses the producer as before (back-pressure), a pull producer's
writes are queued (Twisted asks it for more only once its queue has drained),
writes after ``loseConnection`` are queued, and any error other
than "would block" queues the bytes so that Twisted's own ``doWrite`` meets the
error and loses the connection the usual way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

#: Attribute marking a connection whose ``write`` is already ``send_now``'s.
_MARK = "_twistedgw_send_now"


def send_now(connection: Any) -> bool:
    """Give a ``twisted.internet.tcp.Connection`` the send-first ``write``; False (and
    nothing changed) for any other transport."""
    if not isinstance(connection, tcp.Connection) or getattr(connection, _MARK, False):
        return False
    queue_write = connection.write
    sock = connection.socket

    def write(data: bytes) -> None:
        if (
            connection.connected
            and not connection.disconnecting
            and not connection.dataBuffer
            and not connection._tempDataLen
            and not connection._writeDisconnecting
            and not connection._writeDisconnected
            and (connection.producer is None or connection.streamingProducer)
            and type(data) is bytes
            and data
        ):
            try:
                sent = sock.send(data)
            except OSError:  # would block, or an error Twisted's doWrite will meet
                sent = 0
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        queue_write(data)

    connection.write = write  # type: ignore[method-assign]
    setattr(connection, _MARK, True)
    return True
