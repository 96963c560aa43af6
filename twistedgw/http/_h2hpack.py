"""HPACK coders for ``http/_h2.py`` that remember their last few header blocks.

Clients send the same header block again and again (the same API called with the same
headers: after the first request every field is an index into the dynamic table), and
a backend answers with the same response fields; hpack's pure-Python coders redo the
table searches, integer and Huffman coding each time (about a tenth of the HTTP/2
front's CPU per request under h2load).

A block's decoding is a function of its bytes and of the dynamic table, and encoding a
field list is a function of the list and of the table. ``_Table`` counts every change
of its table (an entry added, and with it any eviction, or a new maximum size), so a
result remembered while the table stood at one count is exact for as long as it
stays at that count. Only blocks whose coding left the table as it was are remembered
(a block that adds an entry changes what the next identical block means); the memo is
emptied whenever the table changes, and holds at most ``MEMO_ENTRIES`` blocks of at most
``MEMO_BLOCK_BYTES`` each, per connection and direction.

Nothing is skipped that guards the gateway: a remembered request block decoded within
``max_header_list_size`` and the table-size bound the first time, and the memo is used
only while both bounds are the same; every other block is decoded and checked by hpack
as before.
"""

from __future__ import annotations

from typing import Any

import hpack
from hpack.table import HeaderTable

from twistedgw._memo import remember

#: Blocks remembered per coder (per connection and direction).
MEMO_ENTRIES = 8
#: Larger blocks (raw on the way in, as a field list's encoding on the way out) are
#: coded every time: the memo is for the small blocks that repeat.
MEMO_BLOCK_BYTES = 1024


class _Table(HeaderTable):
    """hpack's header table, counting its changes (``version``)."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        prop: Any = HeaderTable.maxsize
        prop.fset(self, newmax)


class MemoDecoder(hpack.Decoder):
    """hpack's decoder, remembering blocks that did not change its table; it also
    counts the blocks decoded (``decoded``): an error raised after a block was decoded
    concerns the request (a stream error), one raised while decoding leaves the
    connection's HPACK context unknown (a connection error)."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        table = self.header_table = _Table()
        self.max_allowed_table_size = table.maxsize
        self.decoded = 0
        self._memo: dict[bytes, list[Any]] = {}
        self._stamp: tuple[int, int, int] = (-1, 0, 0)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table: Any = self.header_table
        stamp = (table.version, self.max_header_list_size, self.max_allowed_table_size)
        memo = self._memo
        if stamp != self._stamp:
            memo.clear()
            self._stamp = stamp
        elif raw and type(data) is bytes:
            known = memo.get(data)
            if known is not None:
                self.decoded += 1
                return list(known)
        headers: Any = super().decode(data, raw)  # a list
        self.decoded += 1
        if (
            raw and type(data) is bytes and table.version == stamp[0]
            and len(data) <= MEMO_BLOCK_BYTES
        ):
            remember(memo, data, headers, MEMO_ENTRIES)
            return list(headers)
        return headers


class MemoEncoder(hpack.Encoder):
    """hpack's encoder, remembering the encoding of field lists that did not change
    its table. Only lists of plain tuples are remembered: hpack's ``HeaderTuple``s
    equal plain tuples, but a ``NeverIndexedHeaderTuple`` is encoded as a literal that
    leaves the table alone, which its plain twin must not be answered with. (The other
    way round is exact: a remembered list is all indexes, and hpack encodes a sensitive
    field found in the table as its index too.)"""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = _Table()
        self._memo: dict[tuple[Any, ...], bytes] = {}
        self._version = -1

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table: Any = self.header_table
        version = table.version
        memo = self._memo
        if version != self._version:
            memo.clear()
            self._version = version
        key: tuple[Any, ...] | None = None
        if not table.resized and type(headers) is list:  # no size update to emit
            key = tuple(headers)
            known = memo.get(key)
            if known is not None:
                return known
        block = super().encode(headers, huffman)
        if (
            key is not None
            and table.version == version
            and len(block) <= MEMO_BLOCK_BYTES
            and set(map(type, key)) <= _PLAIN
        ):
            remember(memo, key, block, MEMO_ENTRIES)
        return block


_PLAIN = frozenset({tuple})
