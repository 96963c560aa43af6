"""``http._fields.Fields`` against twisted.web's ``Headers``: the same operations give the
same names (casing included), values and order, so the front's answers and forwarded
requests are spelled as they were with ``Headers``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from twistedgw.http._fields import Fields, canonical

_NAMES = st.sampled_from(
    [b"content-type", b"Content-Type", b"CONTENT-TYPE", b"etag", b"www-authenticate",
     b"x-xss-protection", b"te", b"dnt", b"x-a", b"X_Under", b"host", "content-length",
     "X-Str"]
)
_VALUES = st.sampled_from(
    [b"a", b"", b"two words", b"a\r\nb", b"a\rb", b"a\nb", b"trail\n", "caf\u00e9", b"\xe9"]
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["set", "add", "remove"]), _NAMES, st.lists(_VALUES, max_size=3)),
    max_size=12,
)


def _apply(headers: Any, ops: list[tuple[str, bytes | str, list[bytes | str]]]) -> None:
    for op, name, values in ops:
        if op == "set":
            headers.setRawHeaders(name, values)
        elif op == "add":
            for value in values:
                headers.addRawHeader(name, value)
        else:
            headers.removeHeader(name)


def _outcome(call: Any) -> object:
    """What a call returns, or the kind of error it raises (a str name asks for str
    values, and a value that is not UTF-8 fails to decode in both)."""
    try:
        return call()
    except UnicodeDecodeError as e:
        return type(e)


@settings(max_examples=300, deadline=None)
@given(_OPS, _NAMES)
def test_same_operations_same_headers_as_twisted(
    ops: list[tuple[str, bytes | str, list[bytes | str]]], probe: bytes | str
) -> None:
    ours, theirs = Fields(), Headers()
    _apply(ours, ops)
    _apply(theirs, ops)
    assert list(ours.getAllRawHeaders()) == list(theirs.getAllRawHeaders())
    assert _outcome(lambda: ours.getRawHeaders(probe)) == _outcome(
        lambda: theirs.getRawHeaders(probe)
    )
    assert _outcome(lambda: ours.getRawHeaders(probe, ())) == _outcome(
        lambda: theirs.getRawHeaders(probe, ())
    )
    assert ours.hasHeader(probe) == theirs.hasHeader(probe)


def test_checked_adds_are_stored_as_twisted_would_store_them() -> None:
    ours, theirs = Fields(), Headers()
    for name, value in [(b"host", b"x"), (b"x-id", b"1"), (b"X-ID", b"2"), (b"etag", b"e")]:
        ours.add_checked(name, value)
        theirs.addRawHeader(name, value)
    assert list(ours.getAllRawHeaders()) == list(theirs.getAllRawHeaders())
    assert list(ours.getAllRawHeaders())[1] == (b"X-Id", [b"1", b"2"])


@pytest.mark.parametrize("name", [b"bad name", b"", b"a:b", b"x\r\ny", "caf\u00e9"])
def test_a_name_that_is_not_a_token_is_refused(name: bytes | str) -> None:
    with pytest.raises(ValueError):
        canonical(name)
    with pytest.raises(ValueError):
        Fields().setRawHeaders(name, [b"v"])
