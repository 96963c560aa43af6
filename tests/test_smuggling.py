"""Issue 23 item 8: a request-smuggling corpus, run against a real gateway in the suite.

``variants()`` generates the framing variants (over 600): Content-Length forms and
names, Transfer-Encoding forms and names, chunk-size, chunk-end and trailer forms,
CL/TE combinations, obsolete line folding, bare CR and LF everywhere, duplicate and
list-valued fields, odd request lines and Connection-header tricks over HTTP/1.1,
and HTTP/2-to-HTTP/1.1 downgrade cases (raw HTTP/2 frames, ``tests/h2client.py``)
against an ``http2 = true`` listener. Each is one message in the strict reading, its
body built so that a parser ending the message anywhere else finds a request for
``/smuggled/N`` where the next request would start.

The backend records every byte it receives, one connection per request (it answers
``Connection: close``). A variant passes when the gateway refused it (nothing
reached the backend), or the backend received exactly one request, for ``/v/N``,
whose bytes equal the gateway's canonical form of the variant: the request line,
``Host``, the client's end-to-end fields in order (minus what the gateway drops:
hop-by-hop and Connection-named fields, ``Content-Length``, ``Host``, ``Expect``,
forwarding fields, names with ``_``), its ``X-Forwarded-*`` block, a
``Content-Length`` for the body as h11 (the reference reader) reads the variant,
and the body; anything more (a ``/smuggled/N`` request, a second request, a byte
after the body) fails it.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import h11
import hpack
import pytest

from tests.h2client import RawH2
from tests.harness import GatewayProcess, free_port, gateway_config, start_gateway
from twistedgw.http import normalise, split_target
from twistedgw.testing.devpki import DevPki

# -- the byte-recording backend --------------------------------------------------------

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@dataclass
class Recorded:
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _recording_handler(recorded: Recorded) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(2.0)
            data = b""
            reader = h11.Connection(h11.SERVER)
            done = False
            while not done:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
                reader.receive_data(chunk)
                try:
                    while True:
                        event = reader.next_event()
                        if event is h11.NEED_DATA:
                            break
                        if isinstance(event, h11.EndOfMessage):
                            done = True
                            break
                except h11.RemoteProtocolError:
                    done = True
            if done:
                sock.settimeout(0.05)  # whatever else the gateway sent with it
                try:
                    while chunk := sock.recv(65536):
                        data += chunk
                except OSError:
                    pass
                try:
                    sock.sendall(_ANSWER)
                except OSError:
                    pass
            with recorded.lock:
                recorded.raw.append(data)

    return Handler


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


# -- the gateway -----------------------------------------------------------------------


@dataclass
class Env:
    gw: GatewayProcess
    port: int  # plain HTTP/1.1
    h2_port: int  # TLS, http2 = true
    backend_port: int
    recorded: Recorded
    pki: DevPki


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: DevPki) -> Iterator[Env]:
    recorded = Recorded()
    server = _Server(("127.0.0.1", 0), _recording_handler(recorded))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend_port = server.server_address[1]
    port, h2_port = free_port(), free_port()
    apis = [{"name": "all", "context": "/", "backend": f"http://127.0.0.1:{backend_port}"}]
    text = gateway_config(
        pki, apis, port=port,
        listeners=[{"host": "127.0.0.1", "port": port, "tls": False},
                   {"host": "127.0.0.1", "port": h2_port, "http2": True}],
    )
    gw = start_gateway(tmp_path_factory.mktemp("smuggling"), text, port, wait_for=(h2_port,))
    try:
        yield Env(gw, port, h2_port, backend_port, recorded, pki)
    finally:
        gw.stop()
        server.shutdown()
        server.server_close()


# -- the variants ----------------------------------------------------------------------


@dataclass
class H1:
    """An HTTP/1.1 variant: the bytes a client sends on a new connection."""

    data: bytes


@dataclass
class H2:
    """An HTTP/2 variant: a request's header list (raw bytes) and DATA payloads."""

    headers: list[tuple[bytes, bytes]]
    data: list[bytes]
    trailers: list[tuple[bytes, bytes]] | None = None


def smuggled(n: int) -> bytes:
    return b"GET /smuggled/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n


def _chunked(payload: bytes, size: bytes | None = None, end: bytes = b"0\r\n\r\n") -> bytes:
    return (size if size is not None else b"%x" % len(payload)) + b"\r\n" + payload + b"\r\n" + end


def variants() -> list[H1 | H2]:
    """Every variant, in a fixed order: its index is the N of its ``/v/N``."""
    makers: list[object] = []

    def h1(make: object) -> None:
        makers.append(make)

    # Content-Length: forms of the right length, and names that may or may not be it.
    cl_names = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-Length ",
                b"Content_Length", b" Content-Length", b"Content-Length\t", b"Content-Lengthx"]
    cl_forms = [b"%d", b"0%d", b"+%d", b" %d", b"%d ", b"%d, %d", b"%d,%d", b"0x%x", b"%d.0",
                b"\x0b%d", b"%d\x0b", b"%de0", b"%d;", b"\"%d\""]
    for method in (b"POST", b"PUT"):
        for name in cl_names:
            for form in cl_forms:
                def make(n: int, method: bytes = method, name: bytes = name,
                         form: bytes = form) -> H1:
                    body = smuggled(n)
                    length = len(body)
                    value = form % ((length,) * form.count(b"%"))
                    return H1(b"%s /v/%d HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n%s"
                              % (method, n, name, value, body))
                h1(make)
    # Transfer-Encoding: forms and names, the body chunked.
    te_names = [b"Transfer-Encoding", b"transfer-encoding", b"Transfer-Encoding ",
                b"Transfer_Encoding", b" Transfer-Encoding", b"X-Transfer-Encoding"]
    te_forms = [b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked ", b"\tchunked",
                b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity",
                b"identity, chunked", b"xchunked", b"chunked;", b"\"chunked\"", b"chunk",
                b"\x0bchunked", b"chunked\x00"]
    for name in te_names:
        for form in te_forms:
            def make(n: int, name: bytes = name, form: bytes = form) -> H1:
                return H1(b"POST /v/%d HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n%s"
                          % (n, name, form, _chunked(smuggled(n))))
            h1(make)
    # CL and TE together (CL.TE, TE.CL): the CL reader's next request is the smuggled one.
    for te in (b"chunked", b"Chunked", b" chunked", b"chunked, chunked", b"identity"):
        for order in ("cl-te", "te-cl"):
            for cl in ("prefix", "all", "zero"):
                def make(n: int, te: bytes = te, order: str = order, cl: str = cl) -> H1:
                    prefix = b"%x\r\n" % len(smuggled(n))
                    body = _chunked(smuggled(n))
                    length = {"prefix": len(prefix), "all": len(body), "zero": 0}[cl]
                    lines = [b"Content-Length: %d" % length, b"Transfer-Encoding: " + te]
                    if order == "te-cl":
                        lines.reverse()
                    return H1(b"POST /v/%d HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n%s"
                              % (n, b"\r\n".join(lines), body))
                h1(make)
    # Chunk-size lines, chunk ends, last chunks and trailers.
    sizes = [b"%x", b"0%x", b"000%x", b"%X", b"0x%x", b"+%x", b"-%x", b" %x", b"%x ", b"%x\t",
             b"%x;ext", b"%x;a=b", b"%x;a=\"b c\"", b"%x ;x", b"%x;\x00", b"%x\x00",
             b"fffffffffffffffff%x", b"%x;" + b"e" * 1100]
    for size in sizes:
        for line_end in (b"\r\n", b"\n", b"\r"):
            def make(n: int, size: bytes = size, line_end: bytes = line_end) -> H1:
                payload = smuggled(n)
                chunk = (size % len(payload)) + line_end + payload + b"\r\n0\r\n\r\n"
                return H1(b"POST /v/%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\n%s" % (n, chunk))
            h1(make)
    ends = [b"0\r\n\r\n", b"0\n\n", b"0\r\n\n", b"00\r\n\r\n", b"0;x\r\n\r\n", b"0 \r\n\r\n",
            b"0\r\nX-T: 1\r\n\r\n", b"0\r\nX-T: 1\n\r\n", b"0\r\nX-T: a\r\n b\r\n\r\n",
            b"0\r\nX T: 1\r\n\r\n", b"0\r\nX-T: \x00\r\n\r\n", b"0\r\nContent-Length: 3\r\n\r\n",
            b"0\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n:\r\n\r\n"]
    data_ends = [b"\r\n", b"\n", b"\r", b"XX", b""]
    for end in ends:
        for data_end in data_ends:
            def make(n: int, end: bytes = end, data_end: bytes = data_end) -> H1:
                payload = b"hello"
                body = b"5\r\n" + payload + data_end + end + smuggled(n)[:0]
                return H1(b"POST /v/%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\n%s" % (n, body))
            h1(make)
    # Obsolete line folding, bare CR and LF in heads.
    folds = [b"X-A: a\r\n b", b"X-A: a\r\n\tb", b"Transfer-Encoding: x\r\n chunked",
             b"Content-Length: 4\r\n 0", b"Host: x\r\n y", b" X-A: a", b"\tX-A: a"]
    for fold in folds:
        def make(n: int, fold: bytes = fold) -> H1:
            body = smuggled(n)
            return H1(b"POST /v/%d HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %d\r\n\r\n%s"
                      % (n, fold, len(body), body))
        h1(make)
    for place in ("request-line", "after-host", "all", "value-lf", "value-cr", "name-cr",
                  "end-lf", "end-cr", "end-crcr"):
        for method in (b"GET", b"POST"):
            def make(n: int, place: str = place, method: bytes = method) -> H1:
                body = smuggled(n) if method == b"POST" else b""
                lines = [b"%s /v/%d HTTP/1.1" % (method, n), b"Host: x", b"X-A: a"]
                if body:
                    lines.append(b"Content-Length: %d" % len(body))
                head = b"\r\n".join(lines) + b"\r\n\r\n"
                if place == "request-line":
                    head = head.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n", 1)
                elif place == "after-host":
                    head = head.replace(b"Host: x\r\n", b"Host: x\n", 1)
                elif place == "all":
                    head = head.replace(b"\r\n", b"\n")
                elif place == "value-lf":
                    head = head.replace(b"X-A: a", b"X-A: a\nX-B: b")
                elif place == "value-cr":
                    head = head.replace(b"X-A: a", b"X-A: a\rX-B: b")
                elif place == "name-cr":
                    head = head.replace(b"X-A: a", b"X-A\r: a")
                elif place == "end-lf":
                    head = head[:-4] + b"\r\n\n"
                elif place == "end-cr":
                    head = head[:-4] + b"\r\n\r"
                else:
                    head = head[:-4] + b"\r\r\n\r\n"
                return H1(head + body)
            h1(make)
    # Duplicate and list-valued fields.
    dupes = [
        [b"Content-Length: %(l)d", b"Content-Length: %(l)d"],
        [b"Content-Length: %(l)d", b"Content-Length: 0"],
        [b"Content-Length: 0", b"Content-Length: %(l)d"],
        [b"Content-Length: %(l)d, 0"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"],
        [b"Host: y", b"Content-Length: %(l)d"],
        [b"Host: x, y", b"Content-Length: %(l)d"],
        [b"Host: ", b"Content-Length: %(l)d"],
        [b"Connection: Content-Length", b"Content-Length: %(l)d"],
        [b"Connection: Transfer-Encoding", b"Transfer-Encoding: chunked"],
        [b"Connection: close, Host", b"Content-Length: %(l)d"],
        [b"Connection: X-A", b"X-A: 1", b"Content-Length: %(l)d"],
        [b"Expect: 100-continue", b"Content-Length: %(l)d"],
        [b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
         b"HTTP2-Settings: AAMAAABkAAQAAP__", b"Content-Length: %(l)d"],
        [b"X-Forwarded-For: 10.0.0.1", b"Forwarded: for=10.0.0.1", b"Content-Length: %(l)d"],
        [b"X-A: 1", b"X-A: 2", b"x-a: 3", b"Content-Length: %(l)d"],
        [b"Proxy-Connection: keep-alive", b"Keep-Alive: 5", b"TE: trailers",
         b"Content-Length: %(l)d"],
    ]
    for extra in dupes:
        for method in (b"POST", b"PUT", b"PATCH"):
            def make(n: int, extra: list[bytes] = extra, method: bytes = method) -> H1:
                chunked = any(b"Transfer-Encoding: chunked" in e for e in extra)
                body = _chunked(smuggled(n)) if chunked else smuggled(n)
                lines = [e % {b"l": len(body)} for e in extra]
                if not any(e.startswith(b"Host") for e in lines):
                    lines.insert(0, b"Host: x")
                return H1(b"%s /v/%d HTTP/1.1\r\n%s\r\n\r\n%s"
                          % (method, n, b"\r\n".join(lines), body))
            h1(make)
    # Request lines.
    request_lines = [b"POST /v/%d HTTP/1.1", b"POST  /v/%d HTTP/1.1", b"POST /v/%d  HTTP/1.1",
                     b"POST\t/v/%d HTTP/1.1", b"POST /v/%d HTTP/1.0", b"POST /v/%d HTTP/1.2",
                     b"POST /v/%d http/1.1", b"POST /v/%d HTTP/2.0", b"post /v/%d HTTP/1.1",
                     b"POST http://x/v/%d HTTP/1.1", b"POST /v/%d HTTP/1.1 x",
                     b" POST /v/%d HTTP/1.1", b"POST /v/%d?a=b HTTP/1.1",
                     b"POST /v/%d#f HTTP/1.1", b"POST /v/%d%%0d%%0a HTTP/1.1"]
    for line in request_lines:
        for framing in ("cl", "te"):
            def make(n: int, line: bytes = line, framing: str = framing) -> H1:
                body = smuggled(n) if framing == "cl" else _chunked(smuggled(n))
                field_line = (b"Content-Length: %d" % len(body) if framing == "cl"
                              else b"Transfer-Encoding: chunked")
                return H1(b"%s\r\nHost: x\r\n%s\r\n\r\n%s" % (line % n, field_line, body))
            h1(make)
    # HTTP/2 requests the gateway forwards over HTTP/1.1 (downgrade).
    base: list[tuple[bytes, bytes]] = [(b":method", b"POST"), (b":scheme", b"https"),
                                       (b":authority", b"localhost")]
    h2_cases: list[tuple[list[tuple[bytes, bytes]], list[bytes]]] = [
        ([(b"content-length", b"5")], [b"hello"]),
        ([], [b"hel", b"lo"]),
        ([(b"content-length", b"3")], [b"hello"]),
        ([(b"content-length", b"10")], [b"hello"]),
        ([(b"content-length", b"5"), (b"content-length", b"5")], [b"hello"]),
        ([(b"content-length", b"5, 5")], [b"hello"]),
        ([(b"transfer-encoding", b"chunked")], [b"5\r\nhello\r\n0\r\n\r\n"]),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], [b"hello"]),
        ([(b"x-a", b"a\r\nX-Smuggled: 1")], [b"hello"]),
        ([(b"x-a", b"a\nb")], [b"hello"]),
        ([(b"x-a", b"a\rb")], [b"hello"]),
        ([(b"x-a", b"a\x00b")], [b"hello"]),
        ([(b"x-a", b"a\x01b")], [b"hello"]),
        ([(b"x-a", b"a\x1fb")], [b"hello"]),
        ([(b"x-a", b"a\x7fb")], [b"hello"]),
        ([(b"x-a", b"a\tb")], [b"hello"]),
        ([(b"x-a", b" a")], [b"hello"]),
        ([(b"x-a\r\nx-b", b"1")], [b"hello"]),
        ([(b"x a", b"1")], [b"hello"]),
        ([(b"X-A", b"1")], [b"hello"]),
        ([(b"connection", b"keep-alive")], [b"hello"]),
        ([(b"keep-alive", b"5")], [b"hello"]),
        ([(b"proxy-connection", b"keep-alive")], [b"hello"]),
        ([(b"upgrade", b"h2c")], [b"hello"]),
        ([(b"te", b"trailers")], [b"hello"]),
        ([(b"te", b"gzip")], [b"hello"]),
        ([(b"host", b"other.example")], [b"hello"]),
        ([(b"host", b"localhost")], [b"hello"]),
        ([(b"x-forwarded-host", b"evil.example")], [b"hello"]),
        ([(b"x_a", b"1")], [b"hello"]),
        ([(b"cookie", b"a=1"), (b"cookie", b"b=2")], [b"hello"]),
        ([(b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3")], [b"hello"]),
        ([(b"expect", b"100-continue")], [b"hello"]),
    ]
    pseudo_cases: list[list[tuple[bytes, bytes]]] = [
        [(b":method", b"get"), (b":scheme", b"https"), (b":authority", b"localhost")],
        [(b":method", b"G ET"), (b":scheme", b"https"), (b":authority", b"localhost")],
        [(b":method", b"CONNECT"), (b":authority", b"localhost:443")],
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"evil/x")],
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a b")],
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"")],
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a@b")],
        [(b":method", b"POST"), (b":scheme", b"https")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost")],
        [(b":method", b"POST"), (b":authority", b"localhost")],
        [(b":method", b"POST"), (b":method", b"GET"), (b":scheme", b"https"),
         (b":authority", b"localhost")],
    ]
    path_forms = [b"/v/%d", b"/v/%d x", b"/v/%d\r\nX: y", b"/v/%d#f", b"http://x/v/%d",
                  b"/v/%d?q=1", b"/v/%d\x00"]

    for extra, data in h2_cases:
        def make2(n: int, extra: list[tuple[bytes, bytes]] = extra,
                  data: list[bytes] = data) -> H2:
            return H2([*base[:1], (b":path", b"/v/%d" % n), *base[1:], *extra], data)
        makers.append(("h2", make2))
    for pseudo in pseudo_cases:
        def make2(n: int, pseudo: list[tuple[bytes, bytes]] = pseudo) -> H2:
            return H2([*pseudo, (b":path", b"/v/%d" % n)], [b"hello"])
        makers.append(("h2", make2))
    for form in path_forms:
        def make2(n: int, form: bytes = form) -> H2:
            return H2([*base[:1], (b":path", form % n), *base[1:]], [b"hello"])
        makers.append(("h2", make2))
    for trailer in ([(b"x-t", b"1")], [(b"content-length", b"0")], [(b":path", b"/x")]):
        def make2(n: int, trailer: list[tuple[bytes, bytes]] = trailer) -> H2:
            return H2([*base[:1], (b":path", b"/v/%d" % n), *base[1:]], [b"hello"], trailer)
        makers.append(("h2", make2))

    out: list[H1 | H2] = []
    for n, maker in enumerate(makers):
        if isinstance(maker, tuple):
            out.append(maker[1](n))
        else:
            out.append(_one_message(maker(n)))  # type: ignore[operator]
    return out


def _one_message(variant: H1) -> H1:
    """The variant cut to the first message where h11 reads one and more bytes follow
    (``Content_Length: 38`` is no Content-Length: what follows is a request of its own,
    visible to the gateway and judged, not smuggled)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(variant.data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return variant
            if isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError:
        return variant
    rest = conn.trailing_data[0]
    return H1(variant.data[: len(variant.data) - len(rest)]) if rest else variant


# -- what the gateway must send: its canonical form of a variant ----------------------

# The fields the gateway never forwards (upstream/_forward.py; README "Forwarding").
_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"trailers",
         b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
         b"content-length", b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
         b"x-forwarded-host", b"forwarded"}
_NO_LENGTH_WHEN_EMPTY = {b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"}


def canonical(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], body: bytes,
    backend_port: int, *, secure: bool, host: bytes,
) -> bytes:
    """The backend request the gateway's rules make of a request read as given (its
    path in the gateway's one normal form, README "Paths")."""
    named = {t.strip().lower() for n, v in fields if n.lower() == b"connection"
             for t in v.split(b",")}
    path, query = split_target(target)
    target = normalise(path) + (b"?" + query if query is not None else b"")
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: 127.0.0.1:%d" % backend_port]
    lines += [b"%s: %s" % (n, v) for n, v in fields
              if n.lower() not in _DROP and n.lower() not in named and b"_" not in n]
    lines.append(b"X-Forwarded-For: 127.0.0.1")
    lines.append(b"X-Forwarded-Proto: https" if secure else b"X-Forwarded-Proto: http")
    lines.append(b"X-Forwarded-Host: " + host)
    if body or method not in _NO_LENGTH_WHEN_EMPTY:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def h11_reads(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes] | None:
    """The one request h11 reads from ``data`` (method, target, fields, body); None when
    it refuses it or reads anything but exactly one whole request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request: h11.Request | None = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA:
                return None
    except h11.RemoteProtocolError:
        return None
    if request is None or conn.trailing_data[0]:
        return None
    return request.method, request.target, list(request.headers.raw_items()), body


# -- running them ----------------------------------------------------------------------


def _send_h1(env: Env, variant: H1) -> bytes:
    with socket.create_connection(("127.0.0.1", env.port), timeout=2) as sock:
        try:
            sock.sendall(variant.data)
        except OSError:
            return b""
        return _drain(sock)


def _drain(sock: socket.socket, idle: float = 0.3) -> bytes:
    out = b""
    sock.settimeout(idle)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _send_h2(env: Env, variant: H2) -> bytes:
    try:
        raw = RawH2(env.h2_port, env.pki)
    except OSError:
        return b""
    try:
        block = bytes(hpack.Encoder().encode(variant.headers))
        frames = RawH2.headers(1, block, end_stream=False)
        for i, payload in enumerate(variant.data):
            last = i == len(variant.data) - 1 and variant.trailers is None
            frames += RawH2.data(1, payload, end_stream=last)
        if variant.trailers is not None:
            frames += RawH2.headers(1, bytes(hpack.Encoder().encode(variant.trailers)))
        raw.send(frames)
        raw.read(timeout=0.5)
    finally:
        raw.close()
    return b""


#: A control byte other than HTAB: never in an HTTP/1.1 field value nor request target.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_INDEX = re.compile(rb"^[A-Za-z]+ /(v|smuggled)/(\d+)")


def _expected(variant: H1 | H2, n: int, backend_port: int) -> list[bytes]:
    """The canonical forms a variant may reach the backend in (none: h11 refuses it)."""
    if isinstance(variant, H1):
        read = h11_reads(variant.data)
        if read is None:
            return []
        method, target, fields, body = read
        hosts = [v for k, v in fields if k.lower() == b"host"]
        return [canonical(method, target, fields, body, backend_port, secure=False,
                          host=hosts[0] if hosts else b"")]
    pseudo = {k: v for k, v in variant.headers if k.startswith(b":")}
    fields = [(k, v) for k, v in variant.headers if not k.startswith(b":")]
    # RFC 9113 8.2.3: cookie fields are joined for HTTP/1.1.
    cookies = [v for k, v in fields if k == b"cookie"]
    if len(cookies) > 1:
        at = next(i for i, (k, _) in enumerate(fields) if k == b"cookie")
        fields = [f for f in fields if f[0] != b"cookie"]
        fields.insert(at, (b"cookie", b"; ".join(cookies)))
    # Fields in arrival order, or grouped by name (twisted.web's HTTP/2 keeps them so).
    grouped: dict[bytes, list[bytes]] = {}
    for k, v in fields:
        grouped.setdefault(k, []).append(v)
    orders = [fields, [(k, v) for k, vs in grouped.items() for v in vs]]
    if any(_CTL.search(v) for _, v in variant.headers):
        return []  # HTTP/1.1 answers 400 to it (RFC 9110 field-value; h11 lets it pass)
    return [canonical(pseudo.get(b":method", b""), pseudo.get(b":path", b""), order,
                      b"".join(variant.data), backend_port, secure=True,
                      host=pseudo.get(b":authority", b"")) for order in orders]


def _fold_names(raw: bytes) -> bytes:
    """HTTP/2 field names arrive in lower case and may leave in another spelling: a form
    with every field name in lower case."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    folded = [n.lower() + b":" + v for n, _, v in (x.partition(b":") for x in lines[1:])]
    return b"\r\n".join([lines[0], *folded]) + sep + body


def test_the_corpus_is_large_and_reaches_both_outcomes() -> None:
    """The control: enough variants, and both refused and forwardable ones (by h11)."""
    all_variants = variants()
    h1 = [v for v in all_variants if isinstance(v, H1)]
    assert len(all_variants) >= 500 and len(all_variants) - len(h1) >= 40
    readable = [v for v in h1 if h11_reads(v.data) is not None]
    assert 50 <= len(readable) < len(h1) - 100


def test_no_variant_is_smuggled_past_the_gateway(env: Env) -> None:
    all_variants = variants()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(
            lambda v: _send_h1(env, v) if isinstance(v, H1) else _send_h2(env, v), all_variants
        ))
    time.sleep(0.5)  # the last forwarded requests reach the backend
    elapsed = time.monotonic() - started
    with env.recorded.lock:
        records = list(env.recorded.raw)
    by_index: dict[int, list[bytes]] = {}
    orphans: list[bytes] = []
    for raw in records:
        m = _INDEX.match(raw)
        if m is None:
            orphans.append(raw)
        else:
            by_index.setdefault(int(m[2]), []).append(raw)
    failures: list[str] = []
    forwarded = 0
    for n, variant in enumerate(all_variants):
        got = by_index.get(n, [])
        if not got:
            continue  # refused (or never complete): nothing reached the backend
        forwarded += 1
        if len(got) != 1 or not got[0].startswith((b"POST /v/", b"PUT /v/", b"PATCH /v/",
                                                   b"GET /v/")):
            failures.append(f"{n}: {len(got)} requests reached the backend: {got!r} "
                            f"from {variant!r}")
            continue
        expected = _expected(variant, n, env.backend_port)
        if not expected:
            failures.append(f"{n}: forwarded what HTTP/1.1 does not read as one request: "
                            f"{variant!r} -> {got[0]!r}")
        elif got[0] not in expected and not (
            isinstance(variant, H2) and _fold_names(got[0]) in map(_fold_names, expected)
        ):
            failures.append(f"{n}: not the canonical form: {got[0]!r} != {expected[0]!r} "
                            f"from {variant!r}")
    assert not orphans, f"requests nobody sent reached the backend: {orphans!r}"
    assert not failures, f"{len(failures)} failed:\n" + "\n".join(failures[:40])
    print(f"{len(all_variants)} variants in {elapsed:.1f} s: {forwarded} forwarded, "
          f"{len(all_variants) - forwarded} refused")
    assert forwarded >= 50  # the run saw both outcomes
    # How long the corpus takes (~15 s, #23 item 8 asks under 60) is printed above, not
    # asserted: speed is measured in bench/, and a loaded machine must not fail this.
