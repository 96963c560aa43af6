"""Every private Twisted and pyOpenSSL name twistedgw relies on, in one place, and why.

The HTTP front (``http/_guard``) hardens twisted.web's ``HTTPChannel`` by
subclassing it, and twisted.web keeps the state a gateway needs (the request
line, whether a request is in flight, the body decoder) in private attributes;
pyOpenSSL has no public call for OpenSSL's verification error strings or for
the key-exchange groups. Reads go through the accessors below; the overrides
stay in the subclass and are listed here. ``tests/test_private_names.py``
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
    PrivateName("twisted.web.http.HTTPChannel", "_command", "attribute",
                "the request line's method, to tell a request line from a header line"),
    PrivateName("twisted.web.http.HTTPChannel", "_path", "attribute",
                "the request target, to route once when the headers are in"),
    PrivateName("twisted.web.http.HTTPChannel", "_version", "attribute",
                "Transfer-Encoding is refused outside HTTP/1.1"),
    PrivateName("twisted.web.http.HTTPChannel", "_handlingRequest", "attribute",
                "no header timer, 408 or pipelining pause while a request is answered"),
    PrivateName("twisted.web.http.HTTPChannel", "_networkProducer", "attribute",
                "pausing reads while unsent output is over its bound (pipelining DoS)"),
    PrivateName("twisted.web.http.HTTPChannel", "_transferDecoder", "attribute",
                "the chunked decoder is replaced by a faster, stricter one"),
    PrivateName("twisted.web.http.HTTPChannel", "_finishRequestBody", "method",
                "what the replacement chunked decoder calls at the end of a body"),
    PrivateName("twisted.web.http.HTTPChannel", "_maybeChooseTransferDecoder", "method",
                "overridden to install the replacement chunked decoder"),
    PrivateName("twisted.web.http.HTTPChannel", "_respondToBadRequestAndDisconnect", "method",
                "overridden so twisted.web's own 400s are JSON like every other refusal"),
    PrivateName("twisted.web.http", "_ChunkedTransferDecoder", "module",
                "recognising the decoder twisted.web chose, to replace it"),
    PrivateName("twisted.web.http.Request", "_disconnected", "attribute",
                "whether the client left, when a forwarding failure is answered"),
    PrivateName("OpenSSL._util", "lib", "module",
                "OpenSSL's verification error strings; the key-exchange groups offered"),
    PrivateName("OpenSSL._util", "ffi", "module", "C strings from OpenSSL"),
    PrivateName("OpenSSL.SSL.Context", "_context", "attribute",
                "the SSL_CTX pointer, for SSL_CTX_set1_curves_list"),
)


def request_line(channel: Any) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(method, target, version) of the request being read; None before the line is in."""
    return (
        getattr(channel, "_command", None),
        getattr(channel, "_path", None),
        getattr(channel, "_version", None),
    )


def handling_request(channel: Any) -> bool:
    """Whether the channel has a request dispatched and not yet answered."""
    return bool(channel._handlingRequest)


def network_producer(channel: Any) -> Any:
    """The transport's producer wrapper the channel pauses and resumes reading with."""
    return channel._networkProducer


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
