"""HTTP/2 clients for the tests, over real TLS with ALPN h2.

``H2Client`` speaks correct HTTP/2 through the ``h2`` library (many streams on
one connection). ``RawH2`` writes frames by hand (``hyperframe``, ``hpack``),
for the attacks a correct library refuses to send, and reads what comes back.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.harness import Response
from twistedgw.testing.devpki import DevPki

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


def h2_context(
    pki: DevPki, client: str | None = None, alpn: Iterable[str] = ("h2",)
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    if client is not None:
        crt, key = pki.clients[client]
        ctx.load_cert_chain(str(crt), str(key))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_socket(
    port: int, pki: DevPki, client: str | None = None, alpn: Iterable[str] = ("h2",),
    server_name: str = "localhost", timeout: float = 10.0,
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return h2_context(pki, client, alpn).wrap_socket(raw, server_hostname=server_name)


@dataclass
class _Stream:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class H2Client:
    """A correct HTTP/2 client: ``get``/``request`` many streams, one connection."""

    def __init__(
        self, port: int, pki: DevPki, client: str | None = None, *,
        authority: str | None = None, server_name: str = "localhost",
        settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = tls_socket(port, pki, client, server_name=server_name)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = authority or f"localhost:{port}"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.streams: dict[int, _Stream] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.remote_settings: dict[int, int] = {}
        self.closed = False
        self.pings_acked = 0
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(
        self, path: str, method: str = "GET", headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":path", path), (":scheme", "https"),
                (":authority", self.authority), *headers]
        if body is not None:
            head.append(("content-length", str(len(body))))
        self.conn.send_headers(
            stream_id, [(k.encode(), v.encode()) for k, v in head], end_stream=body is None
        )
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.streams[stream_id] = _Stream()
        self._flush()
        return stream_id

    def pump(self, timeout: float = 0.2) -> None:
        """Read what arrives within ``timeout``; answer it (ACKs, window updates)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            s = self.streams[event.stream_id]
            for name, value in event.headers:
                if name == b":status":
                    s.status = int(value)
                else:
                    s.headers.append((name.decode(), value.decode()))
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1

    def wait(self, stream_ids: Iterable[int], timeout: float = 15.0) -> None:
        ids = list(stream_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            if all(self.streams[i].ended or self.streams[i].reset is not None for i in ids):
                return
            self.pump()
        raise AssertionError(f"streams {ids} did not finish: {self.streams}")

    def response(self, stream_id: int) -> Response:
        s = self.streams[stream_id]
        assert s.ended, f"stream {stream_id} did not end (reset: {s.reset})"
        return Response(s.status, s.headers, bytes(s.body))

    def get(self, path: str, **kwargs: object) -> Response:
        stream_id = self.start(path, **kwargs)  # type: ignore[arg-type]
        self.wait([stream_id])
        return self.response(stream_id)

    def ping(self) -> None:
        self.conn.ping(b"12345678")
        self._flush()


class RawH2:
    """Frames written by hand, for floods a correct client never sends."""

    def __init__(
        self, port: int, pki: DevPki, client: str | None = None,
        settings: dict[int, int] | None = None, preface: bytes | None = None,
    ) -> None:
        """``preface``: bytes sent instead of the client preface and first SETTINGS."""
        self.port = port
        self.sock = tls_socket(port, pki, client)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []
        self.heads: dict[int, list[list[tuple[bytes, bytes]]]] = {}  # decoded, per stream
        self.closed = False
        self._buffer = b""
        self._block = b""  # a header block awaiting its CONTINUATION frames
        if preface is not None:
            self.send(preface)
            return
        first = SettingsFrame(0)
        first.settings = dict(settings or {})
        self.send(PREFACE + first.serialize())

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False when the gateway has already closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def block(self, path: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        return self.encode(
            [(":method", "GET"), (":path", path), (":scheme", "https"),
             (":authority", f"localhost:{self.port}"), *extra]
        )

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """Any header list, in order, as one HPACK block (nothing checked)."""
        return bytes(self.encoder.encode(list(headers)))

    @staticmethod
    def headers(stream_id: int, block: bytes, *, end_stream: bool = True,
                end_headers: bool = True) -> bytes:
        f = HeadersFrame(stream_id)
        f.data = block
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return bytes(f.serialize())

    @staticmethod
    def continuation(stream_id: int, data: bytes, *, end_headers: bool = False) -> bytes:
        f = ContinuationFrame(stream_id)
        f.data = data
        if end_headers:
            f.flags.add("END_HEADERS")
        return bytes(f.serialize())

    @staticmethod
    def rst(stream_id: int, code: int = 0x8) -> bytes:
        return bytes(RstStreamFrame(stream_id, error_code=code).serialize())

    @staticmethod
    def settings_frame() -> bytes:
        return bytes(SettingsFrame(0).serialize())

    @staticmethod
    def ping_frame() -> bytes:
        return bytes(PingFrame(0, opaque_data=b"abcdefgh").serialize())

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        return bytes(WindowUpdateFrame(stream_id, window_increment=increment).serialize())

    @staticmethod
    def settings_frame_with(settings: dict[int, int]) -> bytes:
        f = SettingsFrame(0)
        f.settings = dict(settings)
        return bytes(f.serialize())

    @staticmethod
    def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
        f = DataFrame(stream_id, data=payload)
        if end_stream:
            f.flags.add("END_STREAM")
        return bytes(f.serialize())

    def read(self, timeout: float = 3.0, until: type[Frame] | None = None) -> list[Frame]:
        """Frames until ``timeout``, the connection's close, or a frame of ``until``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                break
            self._buffer += data
            while len(self._buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
                if len(self._buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
                self._buffer = self._buffer[9 + length :]
                self.frames.append(frame)
                self._decode(frame)
                if until is not None and isinstance(frame, until):
                    return self.frames
        return self.frames

    def _decode(self, frame: Frame) -> None:
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self._block += frame.data
            if "END_HEADERS" in frame.flags:
                block, self._block = self._block, b""
                self.heads.setdefault(frame.stream_id, []).append(
                    [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
                )

    def status(self, stream_id: int) -> int | None:
        """The final status answered on ``stream_id``, if any."""
        for head in self.heads.get(stream_id, []):
            value = dict(head).get(b":status", b"")
            if value and not value.startswith(b"1"):
                return int(value)
        return None

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            f.data for f in self.frames if isinstance(f, DataFrame) and f.stream_id == stream_id
        )

    def reset_code(self, stream_id: int) -> int | None:
        for f in self.frames:
            if isinstance(f, RstStreamFrame) and f.stream_id == stream_id:
                return int(f.error_code)
        return None

    def ended(self, stream_id: int) -> bool:
        return any(
            f.stream_id == stream_id and "END_STREAM" in f.flags
            for f in self.frames if isinstance(f, (HeadersFrame, DataFrame))
        )

    def goaway(self, timeout: float = 5.0) -> GoAwayFrame | None:
        self.read(timeout, until=GoAwayFrame)
        for frame in self.frames:
            if isinstance(frame, GoAwayFrame):
                return frame
        return None


def settings_code(name: str) -> int:
    return int(getattr(h2.settings.SettingCodes, name))
