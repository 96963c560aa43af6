"""The bounded memo helper (``twistedgw._memo``): never more than its limit, value returned."""

from __future__ import annotations

from twistedgw._memo import remember


def test_remember_returns_the_value_and_stores_it() -> None:
    store: dict[str, object] = {}
    value = object()
    assert remember(store, "k", value, 4) is value
    assert store == {"k": value}


def test_remember_empties_a_full_store_before_storing() -> None:
    store: dict[int, int] = {}
    for key in range(3):
        remember(store, key, key * 10, 3)
    assert store == {0: 0, 1: 10, 2: 20}
    assert remember(store, 3, 30, 3) == 30
    assert store == {3: 30}  # emptied, then stored: the bound holds
    for key in range(4, 100):
        remember(store, key, key, 3)
        assert len(store) <= 3


def test_remember_replaces_a_key_below_the_limit_without_emptying() -> None:
    store = {"a": 1, "b": 2}
    remember(store, "a", 5, 3)
    assert store == {"a": 5, "b": 2}
