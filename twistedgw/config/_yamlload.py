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


class _Unusual(Exception):
    """Something the fast path leaves to PyYAML."""


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``: the same value, or the same exception."""
    try:
        return _build(text)
    except _Unusual:
        pass
    except yaml.YAMLError:
        pass  # let PyYAML's own loader say it, with its marks
    except (KeyError, TypeError):
        pass  # an undefined alias, an unhashable key: PyYAML's loader says which
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


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


def _build(text: str) -> Any:
    constructor = yaml.constructor.SafeConstructor()
    no_key = _build  # a sentinel no YAML value can be
    stack: list[list[Any]] = []  # [container, pending key]
    anchors: dict[str, Any] = {}
    root: Any = None
    documents = 0
    event: Any
    for event in yaml.parse(text, Loader=_LOADER):
        kind = type(event)
        if kind is ScalarEvent:
            tag = event.tag
            if tag is None:
                value: Any = event.value
                if event.implicit[0] and (
                    _CLAIMED is None or not value or value[0] in _CLAIMED
                ):
                    value = _resolve_scalar(value, constructor)
            elif tag == _STR:
                value = event.value
            else:
                raise _Unusual
            if event.anchor is not None:
                anchors[event.anchor] = value
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.tag is not None:
                raise _Unusual
            container: Any = {} if kind is MappingStartEvent else []
            if event.anchor is not None:
                anchors[event.anchor] = container
            stack.append([container, no_key])
            continue
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            value = stack.pop()[0]
        elif kind is AliasEvent:
            value = anchors[event.anchor]
        elif kind is DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _Unusual  # safe_load refuses several documents; PyYAML says so
            continue
        else:
            continue
        if not stack:
            root = value
            continue
        top = stack[-1]
        parent = top[0]
        if type(parent) is list:
            parent.append(value)
        elif top[1] is no_key:
            if isinstance(value, (dict, list)):
                raise _Unusual  # a complex key: PyYAML refuses it, with a mark
            top[1] = value
        else:
            parent[top[1]] = value
            top[1] = no_key
    return root
