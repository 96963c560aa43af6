"""Header fields as a message carried them: (name, value) pairs, looked up by name.

twisted.web's ``Headers`` canonicalises each name and keeps a dict per message;
the front built one per request and per response (~a third of its parse). A
message here keeps its pairs as parsed, in order, and builds its by-name index
the first time something asks (routing and the pipeline read a few fields; a
forwarded request's fields are mostly just copied on).
"""

from __future__ import annotations

from collections.abc import Iterator


class Fields:
    """Read-only header fields; names are case-insensitive bytes, repeats kept in order.

    It has the two reading methods of twisted.web's ``Headers`` (``getRawHeaders``,
    ``getAllRawHeaders``), so ``pipeline.HeaderView`` reads it as it read those."""

    __slots__ = ("_index", "clean", "pairs")

    def __init__(
        self,
        pairs: list[tuple[bytes, bytes]],
        clean: bool = False,
        index: dict[bytes, list[bytes]] | None = None,
    ) -> None:
        self.pairs = pairs
        # By lower-case name; None: built when first read (``index``: a parser that
        # lower-cased every name already passes what ``_build`` would make).
        self._index: dict[bytes, list[bytes]] | None = index
        # Whether every name is a token and no value holds a CR, LF or NUL: true of what
        # the HTTP/1.1 head parser (``wire.parse_request_head``) accepted, and it spares
        # the forwarder a scan of the backend head it copies them into.
        self.clean = clean

    def _build(self) -> dict[bytes, list[bytes]]:
        index: dict[bytes, list[bytes]] = {}
        for name, value in self.pairs:
            lower = name.lower()
            values = index.get(lower)
            if values is None:
                index[lower] = [value]
            else:
                values.append(value)
        self._index = index
        return index

    def index(self) -> dict[bytes, list[bytes]]:
        """Every value by lower-case name (built on first use): for a reader that looks up
        several fields by names already in lower case, with a dict's ``get`` rather than a
        call and a ``lower`` each (the authz endpoint reads ~10 per decision)."""
        index = self._index
        return index if index is not None else self._build()

    def getRawHeaders(self, name: bytes) -> list[bytes] | None:
        """Every value of ``name`` in arrival order, or None when absent."""
        index = self._index
        if index is None:
            index = self._build()
        return index.get(name.lower())

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """``(name, [value])`` per field line, in arrival order, names as sent."""
        for name, value in self.pairs:
            yield name, [value]

    def first(self, name: bytes) -> bytes | None:
        values = self.getRawHeaders(name)
        return values[0] if values else None

    def last(self, name: bytes) -> bytes | None:
        values = self.getRawHeaders(name)
        return values[-1] if values else None

    def __contains__(self, name: bytes) -> bool:
        return bool(self.getRawHeaders(name))

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"Fields({self.pairs!r})"
