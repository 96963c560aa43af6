"""The shipped plugins ``request-headers`` and ``response-headers``.

Each takes ``set`` (header name -> value; replaces any existing values) and
``remove`` (a list of names). Neither may touch hop-by-hop headers, the
gateway's identity headers, ``Content-Length`` or ``Transfer-Encoding``: those
are the gateway's to write, and letting configuration forge an identity would
undo the header hygiene the gateway promises.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from twistedgw.pipeline import (
    Call,
    HeaderEdit,
    IGatewayPlugin,
    IRequestTransform,
    IResponseTransform,
    Options,
    PluginContext,
    ResponseEdit,
    protected_headers,
)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Field values: visible ASCII, spaces and tabs inside; no CR/LF/NUL (RFC 9110 5.5).
_VALUE = re.compile(r"^[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?$|^$")


def _read(options: Options, context: PluginContext) -> tuple[list[tuple[bytes, bytes]], set[bytes]]:
    protected = protected_headers(context.config)
    sets: list[tuple[bytes, bytes]] = []
    removes: set[bytes] = set()

    def allowed(key: str, name: str) -> bool:
        if not _TOKEN.match(name) or "_" in name:
            options.problem(key, f"not a valid header name: {name!r}")
            return False
        if name.lower().encode() in protected:
            options.problem(
                key,
                f"{name!r} is the gateway's own to write (hop-by-hop, identity, "
                "Content-Length or Transfer-Encoding)",
            )
            return False
        return True

    table = options.get("set", dict, {})
    for name, value in table.items():
        if not isinstance(value, str):
            options.problem(f"set.{name}", f"expected a string, got {value!r}")
        elif not _VALUE.match(value):
            options.problem(f"set.{name}", "value must be printable ASCII without line breaks")
        elif allowed(f"set.{name}", name):
            sets.append((name.encode(), value.encode()))
    for i, name in enumerate(options.get("remove", list, [])):
        if not isinstance(name, str):
            options.problem(f"remove[{i}]", f"expected a string, got {name!r}")
        elif allowed(f"remove[{i}]", name):
            removes.add(name.lower().encode())
    if not sets and not removes and not options.reported:
        options.problem("set", "give at least one header to set or remove")
    options.finish()
    return sets, removes


@implementer(IRequestTransform)
class _RequestHeaders:
    def __init__(self, sets: list[tuple[bytes, bytes]], removes: set[bytes]) -> None:
        self._sets = sets
        self._removes = removes

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        for name in self._removes:
            edit.remove(name)
        for name, value in self._sets:
            edit.set(name, value)


@implementer(IResponseTransform)
class _ResponseHeaders:
    def __init__(self, sets: list[tuple[bytes, bytes]], removes: set[bytes]) -> None:
        self._sets = sets
        self._removes = removes

    def transform_response(self, call: Call, response: ResponseEdit) -> None:
        for name in self._removes:
            response.remove(name)
        for name, value in self._sets:
            response.set(name, value)


@implementer(IPlugin, IGatewayPlugin)
class _Factory:
    def __init__(self, name: str, description: str, build: Any) -> None:
        self.name = name
        self.description = description
        self._build = build

    def configure(self, options: Options, context: PluginContext) -> Any:
        return self._build(*_read(options, context))


request_headers = _Factory(
    "request-headers",
    "Set or remove headers on the request forwarded to the backend.",
    _RequestHeaders,
)
response_headers = _Factory(
    "response-headers",
    "Set or remove headers on the answer before it reaches the client.",
    _ResponseHeaders,
)
