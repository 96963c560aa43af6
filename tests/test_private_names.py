"""Every private Twisted/pyOpenSSL name in twistedgw/_twisted.py still exists.

An upgrade that drops one fails here, naming it and why twistedgw needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from OpenSSL import SSL, crypto
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel, Request

from twistedgw import _twisted
from twistedgw._twisted import USED, PrivateName


def _connected_channel(first_line: bytes = b"") -> HTTPChannel:
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    if first_line:
        channel.dataReceived(first_line)
    return channel


# Instance attributes exist only on instances (set in __init__, on connection, or once
# the request line is read; the accessor handles "not yet").
def _frame_buffer() -> object:
    from h2.frame_buffer import FrameBuffer

    return FrameBuffer(server=True)


_INSTANCES = {
    "h2.frame_buffer.FrameBuffer": _frame_buffer,
    "OpenSSL.SSL.Context": lambda: SSL.Context(SSL.TLS_METHOD),
    "OpenSSL.SSL.Connection": lambda: SSL.Connection(SSL.Context(SSL.TLS_METHOD), None),
    "OpenSSL.crypto.X509Store": lambda: crypto.X509Store(),
    "twisted.protocols.tls.TLSMemoryBIOFactory": lambda: _tls_protocol().factory,
    "twisted.protocols.tls.TLSMemoryBIOProtocol": lambda: _tls_protocol(),
    "twisted.internet.unix.Port": lambda: _unix_port(),
    "twisted.internet.epollreactor.EPollReactor": lambda: _epoll_reactor(),
    "twisted.internet.abstract.FileDescriptor": lambda: _file_descriptor(),
}


def _unix_port() -> Any:
    from twisted.internet import unix
    from twisted.internet.protocol import Factory, Protocol

    return unix.Port(b"/nonexistent/x.sock", Factory.forProtocol(Protocol))


def _file_descriptor() -> Any:
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.testing import MemoryReactor

    return FileDescriptor(MemoryReactor())


def _epoll_reactor() -> Any:
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def _tls_protocol() -> Any:
    """A connected server-side TLS protocol (Twisted's own, not the gateway's subclass)."""
    from twisted.internet import ssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory

    factory = TLSMemoryBIOFactory(ssl.CertificateOptions(), False, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    return protocol


def _owner(dotted: str) -> object:
    module, _, attr = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ImportError:
        return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("entry", USED, ids=lambda e: f"{e.owner}.{e.name}")
def test_private_name_still_exists(entry: PrivateName) -> None:
    owner = _owner(entry.owner)
    target = owner
    if entry.kind == "attribute" and entry.owner in _INSTANCES:
        target = _INSTANCES[entry.owner]()
    assert hasattr(target, entry.name), (
        f"{entry.owner}.{entry.name} is gone from this Twisted/pyOpenSSL; twistedgw uses it "
        f"for: {entry.why}. See twistedgw/_twisted.py."
    )


def test_accessors_read_what_they_say() -> None:
    channel = _connected_channel()
    request = Request(channel)
    assert _twisted.client_disconnected(request) is False
    request.connectionLost(Exception("gone"))
    assert _twisted.client_disconnected(request) is True
    ffi, lib = _twisted.openssl()
    assert ffi.string(lib.X509_verify_cert_error_string(10)) == b"certificate has expired"
    assert _twisted.ssl_ctx(SSL.Context(SSL.TLS_METHOD)) is not None
    assert _twisted.x509_store(crypto.X509Store()) is not None
