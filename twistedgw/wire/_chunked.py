"""The one ``Transfer-Encoding: chunked`` decoder: request bodies (the front) and
response bodies (the upstream client).

RFC 9112 7.1, read strictly, the same way both directions: hex sizes of 1 to 16
digits with no sign, prefix or whitespace, an extension of at most 1000 bytes,
CRLF after every size line and every chunk, trailers held to the header grammar
(h11 does too) and discarded. A line that ends in a bare LF is refused as soon as
its LF is in, never waited on (``5\\nhello\\n0\\n\\n`` is a 400 at once, not a
timeout). It walks a read's bytes with one regular-expression match per chunk and
hands the data on once per read: twisted.web's decoder ran a callback per chunk
(~3 us each; 200,000 one-byte chunks cost 0.6 s of CPU). On request bodies it also
counts chunks, so a body of many tiny ones is refused (``SMALL_CHUNKS_AFTER``);
response bodies (a backend streaming small events) are not held to that.
"""

from __future__ import annotations

import enum
import re

from twistedgw.wire._abnf import TRAILER_LINE

#: A chunked request body is refused (400) once it has this many chunks averaging
#: fewer than ``MIN_AVERAGE_CHUNK`` bytes: each chunk costs CPU whatever its size.
SMALL_CHUNKS_AFTER = 1024
MIN_AVERAGE_CHUNK = 64

# chunk-size [ chunk-ext ] CRLF (1024 bytes at most).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t !-\[\]-~\x80-\xff]{0,1000})?\r\n")
_MAX_CHUNK_LINE = 1024
_MAX_TRAILERS = 65536


class MalformedChunks(ValueError):
    """The chunked body breaks RFC 9112 7.1 (or the decoder's stricter reading of it)."""


class TinyChunks(MalformedChunks):
    """Too many chunks for the bytes they carry (see ``SMALL_CHUNKS_AFTER``)."""


class _At(enum.Enum):
    """Where the decoder is in the body."""

    SIZE = "a chunk-size line"
    DATA = "a chunk's data"
    DATA_END = "the CRLF after a chunk's data"
    TRAILERS = "the trailer section"
    DONE = "after the body"


class ChunkedDecoder:
    """Incremental chunked decoding: ``feed`` each read, get the data and where it ended."""

    __slots__ = ("_at", "_buffer", "_left", "_tiny", "_trailers", "chunks", "size")

    def __init__(self, refuse_tiny_chunks: bool = True) -> None:
        self._tiny = refuse_tiny_chunks
        self._buffer = b""
        self._left = 0  # bytes still due in the current chunk
        self._at = _At.SIZE
        self._trailers = 0
        self.chunks = 0
        self.size = 0  # body bytes so far

    @property
    def done(self) -> bool:
        return self._at is _At.DONE

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Decode ``data``: the body bytes it held, and None while the body goes on or
        the bytes that follow the body once it ended (the next message's).
        Raises ``MalformedChunks`` (``TinyChunks``)."""
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, end = 0, len(buf)
        pieces: list[bytes] = []
        at = self._at
        try:
            while pos < end:
                if at is _At.SIZE:
                    pos, at = self._chunks(buf, pos, end, pieces)
                    if at is _At.SIZE:
                        break  # an incomplete size line
                elif at is _At.DATA:
                    take = min(self._left, end - pos)
                    pieces.append(buf[pos : pos + take])
                    pos += take
                    self._left -= take
                    if not self._left:
                        at = _At.DATA_END
                elif at is _At.DATA_END:
                    if end - pos < 2:
                        if buf[pos:] != b"\r":
                            raise MalformedChunks("chunk did not end with CRLF")
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise MalformedChunks("chunk did not end with CRLF")
                    pos += 2
                    at = _At.SIZE
                elif at is _At.TRAILERS:
                    lf = buf.find(b"\n", pos)
                    if lf < 0:
                        if self._trailers + end - pos > _MAX_TRAILERS:
                            raise MalformedChunks("trailers are too long")
                        break
                    if lf == pos or buf[lf - 1] != 0x0D:
                        raise MalformedChunks("a bare LF ends a trailer line")
                    eol = lf - 1
                    if eol == pos:  # the empty line: the end of the body
                        at = _At.DONE
                        return b"".join(pieces), buf[lf + 1 :]
                    self._trailers += lf + 1 - pos
                    if self._trailers > _MAX_TRAILERS:
                        raise MalformedChunks("trailers are too long")
                    if TRAILER_LINE.fullmatch(buf, pos, eol) is None:
                        raise MalformedChunks("invalid trailer line")
                    pos = lf + 1
                else:
                    raise MalformedChunks("the chunked body already ended")
        finally:
            self._at = at
        self._buffer = buf[pos:]
        if not pieces:
            return b"", None
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), None

    def _chunks(
        self, buf: bytes, pos: int, end: int, pieces: list[bytes]
    ) -> tuple[int, _At]:
        """Consume whole chunks from ``pos``: the hot loop, one match per chunk.

        Returns the new position and where the decoder is: SIZE (needs more of a
        size line), DATA (in a chunk's data) or TRAILERS (the last chunk was seen)."""
        match = _CHUNK_LINE.match
        append = pieces.append
        chunks, size = self.chunks, self.size
        check = max(SMALL_CHUNKS_AFTER, chunks + 1) if self._tiny else -1
        try:
            while True:
                m = match(buf, pos)
                if m is None:
                    # No valid size line here: any LF within a line's reach ends an
                    # invalid one (a bare LF, a bad size): refused now, not waited on.
                    if buf.find(b"\n", pos, pos + _MAX_CHUNK_LINE + 2) >= 0 or (
                        end - pos > _MAX_CHUNK_LINE
                    ):
                        raise MalformedChunks("invalid chunk size line")
                    return pos, _At.SIZE
                length = int(m[1], 16)
                start = m.end()
                if not length:
                    return start, _At.TRAILERS
                chunks += 1
                size += length
                if chunks == check:
                    if size < MIN_AVERAGE_CHUNK * chunks:
                        break  # refused below
                    check += 256
                stop = start + length
                if stop + 2 > end:
                    self._left = length
                    return start, _At.DATA
                if buf[stop : stop + 2] != b"\r\n":
                    raise MalformedChunks("chunk did not end with CRLF")
                append(buf[start:stop])
                pos = stop + 2
        finally:
            self.chunks, self.size = chunks, size
        raise TinyChunks(
            f"chunked body of {chunks} chunks averaging under "
            f"{MIN_AVERAGE_CHUNK} bytes; send larger chunks"
        )
