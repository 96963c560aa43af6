"""YAML as PyYAML's ``safe_load`` reads it, several times faster on large definitions.

Public API definitions run to 10 MB of YAML (GitHub's REST description), and
``yaml.safe_load`` spends most of its time composing and resolving a node per
scalar in Python: about 17 s for such a file, 7 s even with libyaml's parser.
Here libyaml's parser (through PyYAML) hands over its events and they are built
into Python objects directly; a plain scalar is resolved with the same
implicit resolvers SafeLoader uses, so the result is the same. Anything rare
(an explicit tag, a merge key, a key that is not a scalar, several documents)
falls back to PyYAML's own loader, which then also gives its usual errors.
"""

from __future__ import annotations

import datetime
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it
_RESOLVERS: dict[Any, list[tuple[str, Any]]] = yaml.SafeLoader.yaml_implicit_resolvers
_WILDCARD = _RESOLVERS.get(None, [])
#: First characters some implicit resolver claims: any other plain scalar is a string.
_CLAIMED = frozenset(k for k in _RESOLVERS if k) if not _WILDCARD else None


_DATES = frozenset({datetime.date, datetime.datetime})
_RESOLVED_MAX = 65536  # plain scalars remembered per document: a bound on memory


class _Unusual(Exception):
    """Something the fast path leaves to PyYAML."""


#: What ``_build`` leaves to PyYAML's own loader: the unusual, and errors, which PyYAML
#: words with its marks (an undefined alias is a KeyError, an unhashable key a TypeError).
_LONG_WAY = (_Unusual, yaml.YAMLError, KeyError, TypeError)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``: the same value, or the same exception."""
    try:
        return _build(text)
    except _LONG_WAY:
        pass  # outside the handler: PyYAML's error is raised as its own, not chained
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def plain_load(text: str, max_nodes: int, max_depth: int) -> Any:
    """``yaml.safe_load(text)`` in JSON's shape, as one pass builds it: a key that is not
    a string as ``str(key)``, a date as ISO 8601 text. ValueError (the caller goes the
    long way: ``safe_load``, then its own shaping, its own words) for anything else:
    an alias (JSON has no shared values), more than ``max_nodes`` values (each
    container and each value in one), nesting deeper than ``max_depth``, and whatever
    ``safe_load`` would read slowly or refuse.

    Why: shaping ``safe_load``'s value afterwards walked a 10 MB definition again
    (~0.5 s of the ~4 s ``check`` took; issue 24 holds ``check`` to 5 s)."""
    try:
        return _build(text, (max_nodes, max_depth))
    except _LONG_WAY as e:
        raise ValueError("not read in one pass") from e


def _resolve_scalar(value: str, constructor: yaml.constructor.SafeConstructor) -> Any:
    """A plain scalar as SafeLoader's implicit resolvers read it."""
    resolvers = _RESOLVERS.get(value[0] if value else "", ())
    for tag, regexp in (*resolvers, *_WILDCARD):
        if regexp.match(value):
            if tag == _STR:
                return value
            if tag in (_MERGE, _VALUE):
                raise _Unusual
            return constructor.yaml_constructors[tag](constructor, yaml.ScalarNode(tag, value))
    return value


def _build(text: str, shape: tuple[int, int] | None = None) -> Any:
    # The loop runs once per event (~800,000 for 10 MB): the container being filled,
    # whether it is a list, its pending key (and, when shaping, whether a key is not a
    # string) are locals, saved on ``stack`` while a nested one is filled.
    constructor = yaml.constructor.SafeConstructor()
    no_key = _build  # a sentinel no YAML value can be
    stack: list[tuple[Any, bool, Any, bool]] = []
    parent: Any = None  # the container being filled; None at the top
    in_list = False
    key: Any = no_key
    odd_keys = False  # shaping: the mapping has a key that is not a string
    shaping = shape is not None
    max_nodes, max_depth = shape or (0, 0)
    nodes = 0
    anchors: dict[str, Any] = {}
    resolved: dict[str, Any] = {}  # a plain scalar's text -> its value
    claimed = _CLAIMED
    scalar_event, alias_event = ScalarEvent, AliasEvent
    mapping_start, sequence_start = MappingStartEvent, SequenceStartEvent
    mapping_end, sequence_end = MappingEndEvent, SequenceEndEvent
    root: Any = None
    documents = 0
    event: Any
    for event in yaml.parse(text, Loader=_LOADER):
        kind = type(event)
        if kind is scalar_event:
            tag = event.tag
            if tag is None:
                value: Any = event.value
                if event.implicit[0] and (claimed is None or not value or value[0] in claimed):
                    # A definition repeats its scalars ("type", "true", "200"): each
                    # text is resolved once. What resolvers make (str, int, float, bool,
                    # None, a date) is immutable, so one object serves every place.
                    plain = value
                    value = resolved.get(plain, no_key)
                    if value is no_key:
                        value = _resolve_scalar(plain, constructor)
                        if len(resolved) < _RESOLVED_MAX:
                            resolved[plain] = value
                    if shaping and type(value) in _DATES and (in_list or key is not no_key
                                                              or parent is None):
                        value = value.isoformat()  # a value; a key is shaped with its mapping
            elif tag == _STR:
                value = event.value
            else:
                raise _Unusual
            if event.anchor is not None:
                if shaping:
                    raise _Unusual
                anchors[event.anchor] = value
        elif kind is mapping_start or kind is sequence_start:
            if event.tag is not None:
                raise _Unusual
            container: Any = {} if kind is mapping_start else []
            if event.anchor is not None:
                if shaping:
                    raise _Unusual
                anchors[event.anchor] = container
            if shaping and len(stack) > max_depth:
                raise _Unusual
            stack.append((parent, in_list, key, odd_keys))
            parent, in_list, key, odd_keys = container, kind is sequence_start, no_key, False
            continue
        elif kind is mapping_end or kind is sequence_end:
            value = parent
            if shaping:
                nodes += len(value) + 1
                if nodes > max_nodes:
                    raise _Unusual
                if odd_keys:
                    value = {k if type(k) is str else str(k): v for k, v in value.items()}
            parent, in_list, key, odd_keys = stack.pop()
        elif kind is alias_event:
            if shaping:
                raise _Unusual
            value = anchors[event.anchor]
        elif kind is DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _Unusual  # safe_load refuses several documents; PyYAML says so
            continue
        else:
            continue
        if parent is None:
            root = value
        elif in_list:
            parent.append(value)
        elif key is no_key:
            if isinstance(value, (dict, list)):
                raise _Unusual  # a complex key: PyYAML refuses it, with a mark
            key = value
            if shaping and type(value) is not str:
                odd_keys = True
        else:
            parent[key] = value
            key = no_key
    return root
