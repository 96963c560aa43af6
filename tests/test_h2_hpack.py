"""The HPACK coders of the HTTP/2 front (http/_h2hpack.py) remember blocks that repeat;
what they return must be exactly what hpack's own coders return, whatever the dynamic
table did in between (entries added and evicted, the table resized)."""

from __future__ import annotations

import random

import hpack
import pytest

from twistedgw.http._h2hpack import MemoDecoder, MemoEncoder

POOL = [
    [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"text/plain"),
     (b"content-length", b"2")],
    [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"application/json"),
     (b"content-length", b"17")],
    [(b":status", b"404"), (b"content-length", b"0")],
    [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"https"),
     (b":authority", b"localhost"), (b"x-trace", b"1")],
]


def fields(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Mostly the same few lists; now and then one with a new value (a new entry) or a
    value large enough to evict others."""
    pick = rng.random()
    chosen = list(rng.choice(POOL))
    if pick < 0.15:
        chosen.append((b"date", b"%d" % rng.randrange(10**6)))
    elif pick < 0.2:
        chosen.append((b"x-big", bytes([97 + rng.randrange(26)]) * rng.randrange(500, 3000)))
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_the_encoder_emits_what_hpack_emits_and_the_decoder_reads_what_hpack_reads(
    seed: int,
) -> None:
    rng = random.Random(seed)
    memo_encoder, plain_encoder = MemoEncoder(), hpack.Encoder()
    memo_decoder, plain_decoder = MemoDecoder(1 << 16), hpack.Decoder(1 << 16)
    for step in range(600):
        if step % 97 == 96:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice([0, 256, 1024, 4096])
            memo_encoder.header_table_size = size
            plain_encoder.header_table_size = size
        headers = fields(rng)
        block = memo_encoder.encode(list(headers))
        assert block == plain_encoder.encode(list(headers)), step
        expected = plain_decoder.decode(block, raw=True)
        assert memo_decoder.decode(block, raw=True) == expected, step
    assert memo_decoder.decoded == 600


def test_a_remembered_block_means_what_the_table_says_now() -> None:
    """The same bytes, an index into the dynamic table, name another field once an entry
    was added in front of it: the memo must not answer with the old one."""
    peer = hpack.Encoder()
    decoder = MemoDecoder(1 << 16)
    assert decoder.decode(peer.encode([(b"x-a", b"1")]), raw=True) == [(b"x-a", b"1")]
    index = b"\xbe"  # the first dynamic entry (62)
    assert decoder.decode(index, raw=True) == [(b"x-a", b"1")]
    assert decoder.decode(index, raw=True) == [(b"x-a", b"1")]  # remembered
    decoder.decode(peer.encode([(b"x-b", b"2")]), raw=True)  # a new entry at 62
    assert decoder.decode(index, raw=True) == [(b"x-b", b"2")]


def test_a_repeated_block_is_decoded_once() -> None:
    peer = hpack.Encoder()
    block = peer.encode(POOL[3])
    block = peer.encode(POOL[3])  # all indexed now: decoding it changes nothing
    decoder = MemoDecoder(1 << 16)
    decoder.decode(hpack.Encoder().encode(POOL[3]), raw=True)  # the same entries
    calls = 0
    original = hpack.Decoder.decode

    def counting(self: hpack.Decoder, data: bytes, raw: bool = False) -> object:
        nonlocal calls
        calls += 1
        return original(self, data, raw)

    hpack.Decoder.decode = counting  # type: ignore[method-assign]
    try:
        first = decoder.decode(block, raw=True)
        for _ in range(5):
            assert decoder.decode(block, raw=True) == first
    finally:
        hpack.Decoder.decode = original  # type: ignore[method-assign]
    assert calls == 1


def test_a_never_indexed_field_equal_to_a_remembered_one_is_encoded_as_hpack_does() -> None:
    """(hpack encodes a sensitive field that is in the table as its index.)"""
    encoder, reference = MemoEncoder(), hpack.Encoder()
    plain = [(b"x-token", b"secret")]
    sensitive = [hpack.NeverIndexedHeaderTuple(b"x-token", b"secret")]
    for headers in (sensitive, plain, plain, sensitive, plain):
        assert encoder.encode(list(headers)) == reference.encode(list(headers))


def test_the_header_list_bound_holds_for_a_remembered_block() -> None:
    """A block remembered under one ``max_header_list_size`` is decoded (and refused)
    again once the bound is lower."""
    block = hpack.Encoder().encode([(b"x-long", b"v" * 200)])
    decoder = MemoDecoder(1 << 16)
    decoder.decode(block, raw=True)
    decoder.decode(block, raw=True)
    decoder.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)
