"""Every private Twisted and pyOpenSSL name twistedgw relies on, in one place, and why.

HTTP/2 (``http/_h2``) drives the ``h2`` library's connection directly and bounds
it through two of its private hooks (the frame dispatch, the header-block buffer);
the HTTP/1.1 front (``http/_front``, ``wire``) is the gateway's own and needs none of
twisted.web's private names; pyOpenSSL has no public call for
OpenSSL's verification error strings or for the key-exchange groups. Reads go
through the accessors below; the overrides stay in the subclass and are listed
here. ``tests/test_private_names.py``
checks every entry against the installed versions, so an upgrade that drops
one fails there, naming the name and the reason, instead of failing somewhere
odd at run time. ``pyproject.toml`` bounds Twisted to the versions tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrivateName:
    owner: str  # dotted path of the class or module
    name: str
    kind: str  # "attribute" (read or set on instances), "method" (overridden), "module"
    why: str


USED: tuple[PrivateName, ...] = (
    PrivateName("twisted.web.http.Request", "_disconnected", "attribute",
                "whether a twisted.web request's client left (http/_webexchange.py)"),
    # HTTP/2 (http/_h2.py): the h2 library's connection, driven directly.
    PrivateName("h2.connection.H2Connection", "_receive_frame", "method",
                "overridden to count RST_STREAM, SETTINGS and PING frames as they arrive, "
                "and to make a malformed request a stream error, not a connection error"),
    PrivateName("h2.frame_buffer.FrameBuffer", "_update_header_buffer", "method",
                "overridden to bound a header block's CONTINUATION frames and bytes"),
    PrivateName("h2.frame_buffer.FrameBuffer", "_headers_buffer", "attribute",
                "the header block's frames so far, counted against the bound"),
    PrivateName("OpenSSL._util", "lib", "module",
                "OpenSSL's verification error strings; the key-exchange groups offered"),
    PrivateName("OpenSSL._util", "ffi", "module", "C strings from OpenSSL"),
    PrivateName("OpenSSL.SSL.Context", "_context", "attribute",
                "the SSL_CTX pointer, for SSL_CTX_set1_curves_list"),
    PrivateName("OpenSSL.crypto.X509Store", "_store", "attribute",
                "the X509_STORE pointer, for X509_STORE_set_purpose: a resumed session "
                "whose verdict was evicted is verified again as a TLS client's chain"),
    # tls/_server.ServerTLSProtocol.makeConnection: Twisted's, without its redundant
    # per-interface declarations (a per-connection cost).
    PrivateName("twisted.protocols.tls.TLSMemoryBIOFactory", "_creatorCallable", "attribute",
                "makes the connection's SSL.Connection in ServerTLSProtocol.makeConnection"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_tlsConnection", "attribute",
                "set by ServerTLSProtocol.makeConnection as Twisted's does"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_appSendBuffer", "attribute",
                "set by ServerTLSProtocol.makeConnection as Twisted's does"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_connectWrapped", "attribute",
                "whether ServerTLSProtocol.makeConnection connects the application"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_checkHandshakeStatus",
                "method", "ServerTLSProtocol.makeConnection starts the handshake with it"),
    # _reactor.GatewayReactor: Twisted's epoll reactor, its TCP sockets' events dispatched
    # without the legacy log context (doPoll overridden).
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_poller", "attribute",
                "the epoll object GatewayReactor.doPoll polls"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_selectables", "attribute",
                "fd -> selectable: what an event is for"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite", "method",
                "dispatches one event (doRead/doWrite and the disconnect that follows)"),
    # _reactor.GatewayReactor.mainLoop: a turn with nothing timed due skips
    # runUntilCurrent and timeout (what they would find is read here).
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_pendingTimedCalls",
                "attribute", "the timed calls' heap: is one due, when is the next"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_newTimedCalls", "attribute",
                "timed calls not yet in the heap: runUntilCurrent inserts them"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_cancellations", "attribute",
                "cancelled calls in the heap: runUntilCurrent compacts it past 50"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_justStopped", "attribute",
                "a stop to finish: runUntilCurrent fires the shutdown event"),
    PrivateName("twisted.internet.epollreactor.EPollReactor", "_started", "attribute",
                "whether the loop goes on (ReactorBase.mainLoop's own test)"),
    PrivateName("twisted.internet.base", "_topHandler", "attribute",
                "the loop's failure handler: a turn's exception is logged as Twisted's is"),
    PrivateName("twisted.internet.base", "_log", "attribute",
                "the loop's logger (its 'Main loop terminated.')"),
    # _reactor.GatewayServer/GatewayClient: a write sent at once when nothing is queued.
    PrivateName("twisted.internet.abstract.FileDescriptor", "_tempDataLen", "attribute",
                "bytes queued since the last send: a write goes out at once only if none are"),
    PrivateName("twisted.internet.abstract.FileDescriptor", "_writeDisconnecting",
                "attribute", "a half-close is pending: writes are left to Twisted's queue"),
    PrivateName("twisted.internet.abstract.FileDescriptor", "_writeDisconnected",
                "attribute", "the write side is shut: writes are left to Twisted (it drops them)"),
    PrivateName("twisted.internet.tcp.Connector", "_makeTransport", "method",
                "overridden: connectTCP's connections are GatewayClients"),
    PrivateName("twisted.internet.tcp.Port", "_fromListeningDescriptor", "method",
                "adoptStreamPort's listener (workers, systemd) as a GatewayPort"),
    # fresh_bios: an idle connection's memory BIOs, replaced by empty ones.
    PrivateName("OpenSSL.SSL.Connection", "_ssl", "attribute",
                "the SSL pointer, for SSL_set_bio (fresh_bios)"),
    PrivateName("OpenSSL.SSL.Connection", "_into_ssl", "attribute",
                "the memory BIO bio_write feeds: fresh_bios replaces it"),
    PrivateName("OpenSSL.SSL.Connection", "_from_ssl", "attribute",
                "the memory BIO bio_read drains: fresh_bios replaces it"),
    # What an idle connection no longer holds (issue 27): tls/_server.ServerTLSProtocol
    # drops handshake-only state, _reactor.GatewayServer makes its write queue when needed.
    PrivateName("OpenSSL.SSL.Connection", "_reverse_mapping", "attribute",
                "SSL* -> Connection for pyOpenSSL's callbacks: an entry dropped after the "
                "handshake (no callback runs later: no renegotiation)"),
    PrivateName("OpenSSL.SSL.Connection", "_alpn_select_callback_args", "attribute",
                "pyOpenSSL's copy of the ALPN answer, dropped after the handshake"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_handshakeDone", "attribute",
                "whether the handshake is done: then handshake-only state goes"),
    PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_bufferedWrite", "method",
                "overridden: the pre-handshake write buffer made again if a write waits"),
    PrivateName("twisted.internet.abstract.FileDescriptor", "_tempDataBuffer", "attribute",
                "the socket's write queue: GatewayServer makes it when a write waits"),
    # _unixsockets.UnixPort: Twisted's Unix port without its chmod 0666 and its unlink.
    PrivateName("twisted.internet.unix.Port", "_fromListeningDescriptor", "method",
                "how reactor.adoptStreamPort builds a Unix port; UnixPort is built the same way"),
    PrivateName("twisted.internet.unix.Port", "_bindPath", "attribute",
                "the socket's path: UnixPort makes Twisted's chmod a no-op (the file's own mode)"),
)


def connection_transport(channel: Any) -> Any:
    """The connection's transport (TLS, or TCP) under a request's channel (an HTTP/2
    stream's is its connection's, which every stream of it shares)."""
    return getattr(channel, "transport", None)


def client_disconnected(request: Any) -> bool:
    """Whether the client of a twisted.web request has gone."""
    return bool(getattr(request, "_disconnected", False))


def openssl() -> tuple[Any, Any]:
    """(ffi, lib) of pyOpenSSL's cffi binding."""
    from OpenSSL._util import ffi, lib

    return ffi, lib


def ssl_ctx(context: Any) -> Any:
    """The ``SSL_CTX *`` behind a pyOpenSSL ``Context``."""
    return context._context


def x509_store(store: Any) -> Any:
    """The ``X509_STORE *`` behind a pyOpenSSL ``X509Store``."""
    return store._store


def fresh_bios(connection: Any) -> bool:
    """Give an idle pyOpenSSL connection new, empty memory BIOs; False (nothing changed)
    if either still holds bytes or the connection has no memory BIOs.

    An OpenSSL memory BIO keeps the largest buffer it ever needed: ~4 KiB per idle
    connection once the handshake's flights (certificate chains) went through, ~20 KiB
    after a large request or response. ``SSL_MODE_RELEASE_BUFFERS`` frees the record
    layer's buffers only. ``SSL_set_bio`` frees the old BIOs; the TLS state is the
    SSL object's and does not move."""
    ffi, lib = openssl()
    into, out = connection._into_ssl, connection._from_ssl
    if into is None or out is None:
        return False
    if lib.BIO_get_mem_data(into, ffi.NULL) or lib.BIO_get_mem_data(out, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL:
        return False
    new_out = lib.BIO_new(lib.BIO_s_mem())
    if new_out == ffi.NULL:
        lib.BIO_free(new_into)
        return False
    lib.SSL_set_bio(connection._ssl, new_into, new_out)
    connection._into_ssl, connection._from_ssl = new_into, new_out
    return True
