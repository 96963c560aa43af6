"""APIs from OpenAPI definitions, read the way WSO2 Microgateway projects write them.

An ``[[apis]]`` table with ``openapi = "FILE"`` takes its name, version,
context, backends and security from the definition (OpenAPI 2.0, 3.0 or 3.1,
YAML or JSON, with WSO2's ``x-wso2-*`` extensions); any other key written in
the table overrides what the definition says, and its security keys apply to
every operation unless ``toml_security = "api_level"``. Only the operations the
definition lists are served.

Strict where routing and security read (paths, operations, methods, path
parameters, security, servers and base path, extensions): a problem there is a
config error. Lenient elsewhere: a dangling ``$ref`` in a schema or an example
is a warning. Every message names its place as a JSON pointer (``#/paths/~1pet
/get/security``) and quotes at most a short excerpt of a value.

Read once per config load (start, ``check``, reload), never per request.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from twistedgw.config import _cors, _response_cache
from twistedgw.config import _wso2ext as ext
from twistedgw.config._apis import ApiConfig
from twistedgw.config._apis import read_api as read_table
from twistedgw.config._base import CONTEXT_RE, HEADER_RE, Mode, TableReader, resolve
from twistedgw.config._endpoints import (
    PRODUCTION,
    SANDBOX,
    BackendAuth,
    BasicSecurity,
    Endpoints,
    Resolver,
    api_endpoint_name,
)
from twistedgw.config._operations import (
    APPLICATION,
    MTLS,
    OPEN,
    UNLIMITED,
    WSO2_API_KEY_HEADER,
    Operation,
    Origin,
    ResourceThrottle,
    Security,
)

#: Problems are (JSON pointer, what is wrong); the caller adds the file.
Report = Callable[[str, str], None]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_DEFINITION_BYTES = 16 * 1024 * 1024  # far beyond any real definition; bounds a mistake
_MAX_DEPTH = 64  # nesting and $ref chains; a cycle or a bomb stops here
_EXCERPT = 60  # characters of a value quoted in a message
_TEMPLATE_PARAM = re.compile(r"\{([^{}]*)\}")
# A query parameter name an API key may be sent in: what needs no percent-escape.
_QUERY_NAME_RE = re.compile(r"^[A-Za-z0-9._~!$'()*,;:@/?-]{1,128}$")
ROOT = "#"
#: WSO2's application security type names (compared case-insensitively) -> twistedgw's.
_APP_TYPES = {"api_key": "api_key", "oauth2": "jwt", "basic_auth": "basic_auth"}
#: twistedgw's own operation extension: the operation accepts WebSocket handshakes.
WEBSOCKET = "x-twistedgw-websocket"


def pointer(base: str, *parts: str | int) -> str:
    """``base`` (a JSON pointer with its ``#``) extended by ``parts``, RFC 6901-escaped."""
    return base + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def cut(text: str) -> str:
    """``text``, cut short."""
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def excerpt(value: Any) -> str:
    """``repr(value)``, cut short: messages quote values, never whole documents."""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)[: _EXCERPT + 1]
    else:
        text = repr(value)[: _EXCERPT + 1]
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


@dataclass(frozen=True)
class Definition:
    """What a definition says about its API, in the shape of an ``[[apis]]`` table."""

    file: Path
    values: Mapping[str, Any]  # TOML keys: name, version, context, backends, mutual_ssl, ...
    security: Security  # the API's own schemes
    declares_security: bool  # the definition says something about security (even "open")
    operations: tuple[Operation, ...]
    context_from: str | None
    jwt_wheres: Mapping[Security | None, str]  # where bearer security was said, per security
    warnings: tuple[tuple[str, str], ...] = ()
    opened_by: str = ""  # why the API level is open, when it is
    # The API level's schemes had x-wso2-disable-security not opened it, and the operations
    # (pointers) that secure themselves again with them (x-wso2-disable-security: false).
    api_secured: Security = OPEN
    enabled: frozenset[str] = frozenset()
    throttling_from: str = ""  # the JSON pointer of the API-level throttling tier, if any
    # The API's own endpoints (x-wso2-production-endpoints or the servers URL, and
    # x-wso2-sandbox-endpoints), with WSO2's names; credentials not resolved yet.
    production: Endpoints | None = None
    sandbox: Endpoints | None = None


_SCHEME_KEYS = ("mutual_ssl", "api_key", "jwt", "basic_auth")
TOML_SECURITY_KEYS = frozenset((*_SCHEME_KEYS, "application_security"))


def overlay(security: Security, toml: Security, keys: frozenset[str]) -> Security:
    """``security`` with the scheme keys written in TOML (``keys``) as TOML says them."""
    changes: dict[str, Any] = {}
    any_of = set(security.any_of)
    if "application_security" in keys:
        changes.update(api_key=toml.api_key, jwt=toml.jwt)
        any_of = set(toml.any_of)
    for key in _SCHEME_KEYS:
        if key in keys:
            changes[key] = toml.mode(key)
            any_of.discard(key)
    return dataclasses.replace(security, any_of=frozenset(any_of), **changes).normal()


# --------------------------------------------------------------------------- loading


class _Broken(Exception):
    """The definition cannot be used at all; already reported."""


_MAX_NODES = 2_000_000  # YAML aliases can make a small file expand exponentially


_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """JSON-shaped data: YAML's integer keys (``200:``) and dates become strings."""
    if budget is None:
        budget = [_MAX_NODES]
    if isinstance(value, (dict, list)):
        budget[0] -= len(value) + 1
        if budget[0] < 0:
            raise ValueError(f"more than {_MAX_NODES} values (YAML aliases expanding?)")
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        if isinstance(value, dict):
            return {
                k if type(k) is str else str(k):
                v if type(v) in _SCALARS else _plain(v, depth + 1, budget)
                for k, v in value.items()
            }
        return [v if type(v) in _SCALARS else _plain(v, depth + 1, budget) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _parse(file: Path, text: str) -> tuple[Any, bool]:
    """The document, and whether it is JSON-shaped (as ``_plain`` makes it) already."""
    if file.suffix.lower() == ".json":
        return json.loads(text), False
    from twistedgw.config._yamlload import plain_load, safe_load

    try:
        return plain_load(text, _MAX_NODES, _MAX_DEPTH), True  # the usual definition
    except ValueError:
        return safe_load(text), False


def _load_document(file: Path) -> Any:
    """The document in ``file``; ValueError with plain words if it cannot be read."""
    try:
        with file.open("rb") as f:
            data = f.read(MAX_DEFINITION_BYTES + 1)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    if len(data) > MAX_DEFINITION_BYTES:
        raise ValueError(f"larger than {MAX_DEFINITION_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        doc, plain = _parse(file, text)
    except Exception as e:  # JSONDecodeError, yaml.YAMLError, RecursionError (deep nesting)
        kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
        detail = " ".join(str(e).split())
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise ValueError(f"invalid {kind}: {detail}") from None
    return doc if plain else _plain(doc)  # ValueError (too big, too deep) says why


class _RefError(ValueError):
    """A ``$ref`` that cannot be followed (already worded)."""


class _Refs:
    """``$ref`` targets: local pointers and files inside the definition's directory only."""

    def __init__(self, root_file: Path, root_doc: Any) -> None:
        self.root = root_file.resolve()
        self.root_dir = self.root.parent
        self.docs: dict[Path, Any] = {self.root: root_doc}
        self.refused: dict[Path, str] = {}  # files not loaded, and why

    def label(self, file: Path, where: str) -> str:
        return where if file == self.root else f"{file.name}: {where}"

    def load(self, warn: Report) -> None:
        """Load every file the definition's ``$ref``s name (inside its directory only);
        a ``$ref`` that cannot be followed is a warning here, and an error where routing
        or security would need to follow it."""
        pending = [(self.root, self.docs[self.root])]
        while pending:
            file, doc = pending.pop()
            for where, ref in _refs_in(doc, ROOT):
                target, _sep, fragment = ref.partition("#")
                label = self.label(file, where)
                if not target:
                    try:
                        _pointer(doc, fragment)
                    except ValueError as e:
                        warn(label, str(e))
                    continue
                resolved, why = self._target(file, target)
                if resolved is None:
                    warn(label, f"$ref {excerpt(ref)} {why}")
                    continue
                if resolved not in self.docs and resolved not in self.refused:
                    try:
                        loaded = _load_document(resolved)
                    except ValueError as e:
                        self.refused[resolved] = str(e)
                    else:
                        self.docs[resolved] = loaded
                        pending.append((resolved, loaded))
                if resolved in self.refused:
                    warn(label, f"$ref {excerpt(ref)}: {self.refused[resolved]}")
                    continue
                try:
                    _pointer(self.docs[resolved], fragment)
                except ValueError as e:
                    warn(label, f"$ref {excerpt(ref)}: {e}")

    def _target(self, file: Path, target: str) -> tuple[Path | None, str]:
        try:
            scheme = urlsplit(target).scheme
        except ValueError:  # an unclosed '[' after '//': urlsplit raises
            return None, "is not a usable reference"
        if scheme or target.startswith("//"):
            return None, "names a URL; only files beside the definition are read"
        try:
            resolved = (file.parent / target).resolve()
        except (ValueError, OSError):  # NUL bytes, over-long names
            return None, "is not a usable file name"
        if not resolved.is_relative_to(self.root_dir):
            return None, f"leaves the definition's directory ({self.root_dir})"
        return resolved, ""

    def deref(self, node: Any, file: Path) -> tuple[Any, Path]:
        """Follow ``$ref`` (if ``node`` is one) to its target, and the target's file;
        _RefError if it cannot be followed."""
        for _ in range(_MAX_DEPTH):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                return node, file
            ref = node["$ref"]
            target, _sep, fragment = ref.partition("#")
            if target:
                resolved, why = self._target(file, target)
                if resolved is None:
                    raise _RefError(f"$ref {excerpt(ref)} {why}")
                if resolved not in self.docs:
                    why = self.refused.get(resolved, "not read")
                    raise _RefError(f"$ref {excerpt(ref)}: {why}")
                file = resolved
            try:
                node = _pointer(self.docs[file], fragment)
            except ValueError as e:
                raise _RefError(f"$ref {excerpt(ref)}: {e}") from None
        raise _RefError("$ref chain too long (a cycle?)")


def _refs_in(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every ``$ref`` under ``node``: (its JSON pointer, the reference)."""
    stack: list[tuple[Any, str, int]] = [(node, where, 0)]
    while stack:
        current, at, depth = stack.pop()
        if depth > _MAX_DEPTH:
            continue
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str):
                yield at, ref
            for key, value in current.items():
                if isinstance(value, (dict, list)):
                    stack.append((value, pointer(at, key), depth + 1))
        else:
            for i, value in enumerate(current):
                if isinstance(value, (dict, list)):
                    stack.append((value, pointer(at, i), depth + 1))


def _pointer(doc: Any, fragment: str) -> Any:
    node = doc
    for raw in fragment.split("/")[1:] if fragment else ():
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise ValueError(f"$ref target #{cut(fragment)} does not exist")
    return node


def _version(doc: Mapping[str, Any]) -> str | None:
    """"2.0", "3.0" or "3.1"; None if the document is none of these."""
    if str(doc.get("swagger", "")) == "2.0":
        return "2.0"
    openapi = str(doc.get("openapi", ""))
    for v in ("3.0", "3.1"):
        if openapi == v or openapi.startswith(v + "."):
            return v
    return None


# --------------------------------------------------------------------------- reading


def read(file: Path, report: Report, warn: Report | None = None) -> Definition | None:
    """Read and check ``file``; None (after reporting why) if it cannot be used.

    A problem in what routing and security read makes it unusable: a definition is
    served as written or not at all. Problems elsewhere go to ``warn``. Each message
    is reported once.
    """
    errors: dict[tuple[str, str], None] = {}
    warnings: dict[tuple[str, str], None] = {}

    def note(where: str, what: str) -> None:
        errors[(where, what)] = None

    def caution(where: str, what: str) -> None:
        warnings[(where, what)] = None

    try:
        doc = _load_document(file)
    except ValueError as e:
        report("(file)", str(e))
        return None
    if not isinstance(doc, dict):
        report(ROOT, "not an OpenAPI document (expected a mapping at the top)")
        return None
    version = _version(doc)
    if version is None:
        report(ROOT, "not an OpenAPI 2.0, 3.0 or 3.1 document "
                     "(no 'swagger: \"2.0\"' or 'openapi: 3.0.x/3.1.x')")
        return None
    refs = _Refs(file, doc)
    refs.load(caution)
    definition: Definition | None
    try:
        definition = _DefinitionReader(file, doc, version, refs, note, caution).definition()
    except _Broken:
        definition = None
    for where, what in errors:
        report(where, what)
    erred = {where for where, _what in errors}
    kept = tuple(w for w in warnings if w[0] not in erred)
    if errors or definition is None:
        if warn is not None:
            for where, what in kept:
                warn(where, what)
        return None
    return dataclasses.replace(definition, warnings=kept)


class _Ends(NamedTuple):
    production: Endpoints | None
    sandbox: Endpoints | None


@dataclass(frozen=True)
class _Scheme:
    kind: str  # "mutual_ssl" | "api_key" | "jwt" | "basic_auth"
    place: tuple[str, str] | None = None  # the API key's ("header" | "query", name)


@dataclass(frozen=True)
class _Level:
    """What one level of the definition (the API, or an operation) says about security."""

    mtls: Mode | None = None  # from a mutualTLS scheme in its own requirements
    app: frozenset[str] | None = None  # application kinds; None = not said at this level
    app_all: bool = False  # every kind must pass (one OpenAPI requirement), else any one
    app_mode: Mode = Mode.MANDATORY
    place: tuple[str, str] | None = None  # the API key's ("header" | "query", name)
    optional: bool | None = None  # x-wso2-application-security optional, when said
    jwt_where: str = ""


class _DefinitionReader:
    def __init__(
        self, file: Path, doc: dict[str, Any], version: str, refs: _Refs,
        note: Report, warn: Report,
    ) -> None:
        self.file = file.resolve()
        self.doc = doc
        self.version = version
        self.refs = refs
        self.note = note
        self.warn = warn
        self.schemes = self._schemes()
        self.jwt_wheres: dict[Security | None, str] = {}
        self.transport: Mode | None = None  # x-wso2-mutual-ssl
        self.api_app: _Level | None = None  # the API's x-wso2-application-security
        self.api_key_header: str | None = None  # x-wso2-api-key-header
        self.api_place: tuple[str, str] | None = None  # the API requirement's apiKey
        self.last_jwt_where = ROOT
        self.enabled: set[str] = set()  # operations securing themselves again

    def follow(self, node: Any, where: str, file: Path | None = None) -> tuple[Any, Path]:
        """``node`` with its ``$ref`` followed (the error noted: None if it cannot be)."""
        try:
            return self.refs.deref(node, file or self.file)
        except _RefError as e:
            self.note(self.refs.label(file or self.file, where), str(e))
            return None, file or self.file

    def deref(self, node: Any, where: str, file: Path | None = None) -> Any:
        return self.follow(node, where, file)[0]

    # -- identity, context, backends ------------------------------------------

    def definition(self) -> Definition:
        doc = self.doc
        info = self.deref(doc.get("info"), pointer(ROOT, "info"))
        if not isinstance(info, dict):
            self.note(pointer(ROOT, "info"), "expected a mapping with title and version")
            info = {}
        values: dict[str, Any] = {}
        for key, toml_key in (("title", "name"), ("version", "version")):
            raw = info.get(key)
            if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
                values[toml_key] = str(raw)
            elif raw is not None:
                self.note(pointer(ROOT, "info", key), f"expected a string, got {excerpt(raw)}")
        context, context_from = self._context(values.get("version", ""))
        if context is not None:
            values["context"] = context
        api_name = api_endpoint_name(str(info.get("title", "")), str(info.get("version", "")))
        production = self._backends(api_name)
        if production is not None:
            values["backends"] = list(production.urls)
            values["backend_mode"] = production.mode
        sandbox = self._endpoints_at(doc, "x-wso2-sandbox-endpoints", ROOT, api_name)
        transports = doc.get("x-wso2-transports")
        if transports is not None:
            if isinstance(transports, list) and transports and all(
                    isinstance(t, str) and t.strip().lower() in ("http", "https")
                    for t in transports):
                values["transports"] = transports
            else:
                self.note(pointer(ROOT, "x-wso2-transports"),
                          f"must list http, https or both, got {excerpt(transports)}")
        auth_header = doc.get("x-wso2-auth-header")
        if auth_header is not None:
            if isinstance(auth_header, str) and HEADER_RE.match(auth_header):
                values["auth_header"] = auth_header
            else:
                self.note(pointer(ROOT, "x-wso2-auth-header"),
                          f"not a valid HTTP header name: {excerpt(auth_header)}")
        self._extensions()
        if "x-wso2-cors" in doc:
            at = pointer(ROOT, "x-wso2-cors")
            cors = _cors.from_wso2(self.deref(doc["x-wso2-cors"], at), at, self.note, self.warn,
                                   pointer)
            if cors is not None:
                values["cors"] = cors
        if "x-wso2-response-cache" in doc:
            at = pointer(ROOT, "x-wso2-response-cache")
            cache = _response_cache.from_wso2(self.deref(doc["x-wso2-response-cache"], at), at,
                                              self.note, self.warn, pointer)
            if cache is not None:
                values["response_cache"] = cache
        api_level, declares, api_off, why = self._api_level()
        api_secured = self._resolve(api_level, None, False)
        security = OPEN if api_off else api_secured
        if api_secured.jwt is not Mode.DISABLED and not api_off:
            self.jwt_wheres[None] = self.last_jwt_where
        operations = self._operations(api_level, api_secured, api_off, why)
        for scheme in _SCHEME_KEYS:
            values[scheme] = security.mode(scheme).value
        tier, tier_from = self._throttling_tier(doc, ROOT, ("x-wso2-throttling-tier",
                                                         "x-throttling-tier"))
        if tier is not None:
            values["throttling_tier"] = tier
        return Definition(
            file=self.file,
            values=values,
            security=security,
            declares_security=declares,
            operations=operations,
            context_from=context_from,
            jwt_wheres=dict(self.jwt_wheres),
            opened_by=why if api_off else "",
            api_secured=api_secured,
            enabled=frozenset(self.enabled),
            throttling_from=tier_from,
            production=production,
            sandbox=sandbox,
        )

    def _throttling_tier(
        self, node: Mapping[str, Any], at: str, keys: tuple[str, str]
    ) -> tuple[str | None, str]:
        """The throttling policy ``node`` names and the JSON pointer it came from.

        WSO2's own name and API Manager's (``x-throttling-tier``) mean the same; when
        both are written, ``keys[0]`` is the one the Microgateway reads at this level,
        and two different names are refused rather than one silently dropped.
        """
        found = [(key, node[key]) for key in keys if key in node]
        for key, value in found:
            if not isinstance(value, str) or not value.strip():
                self.note(pointer(at, key), f"expected a throttling policy name, got "
                                            f"{excerpt(value)}")
                return None, ""
        if not found:
            return None, ""
        if len(found) == 2 and found[0][1] != found[1][1]:
            self.note(pointer(at, found[0][0]),
                      f"{found[0][0]} {excerpt(found[0][1])} and {found[1][0]} "
                      f"{excerpt(found[1][1])} name different policies; keep one")
            return None, ""
        key, value = found[0]
        return value, pointer(at, key)

    def _servers_url(self) -> tuple[str, str] | None:
        servers = self.doc.get("servers")
        where = pointer(ROOT, "servers")
        if servers is None:
            return None
        if not isinstance(servers, list):
            self.note(where, f"expected a list of servers, got {excerpt(servers)}")
            return None
        if not servers:
            return None
        first = self.deref(servers[0], pointer(where, 0))
        if not isinstance(first, dict) or not isinstance(first.get("url"), str):
            self.note(pointer(where, 0), f"expected a server with a url, got {excerpt(first)}")
            return None
        url: str = first["url"]
        variables = first.get("variables") or {}
        for name, var in variables.items() if isinstance(variables, dict) else ():
            if isinstance(var, dict) and "default" in var:
                url = url.replace("{" + name + "}", str(var["default"]))
        return url, pointer(where, 0, "url")

    def _context(self, version: str) -> tuple[str | None, str | None]:
        doc = self.doc
        raw: Any = None
        where = None
        if "x-wso2-basePath" in doc:
            raw, where = doc["x-wso2-basePath"], pointer(ROOT, "x-wso2-basePath")
        elif self.version == "2.0":
            if "basePath" in doc:
                raw, where = doc["basePath"], pointer(ROOT, "basePath")
        else:
            found = self._servers_url()
            if found is not None:
                url, where = found
                try:
                    raw = urlsplit(url).path or "/"
                except ValueError:
                    self.note(where, f"not a usable URL: {excerpt(url)}")
                    return None, None
        if raw is None or where is None:
            return None, None
        if not isinstance(raw, str):
            self.note(where, f"expected a path such as '/petstore/v1', got {excerpt(raw)}")
            return None, None
        context = raw.replace("{version}", version)
        if (
            not CONTEXT_RE.match(context)
            or "//" in context
            or "/../" in f"{context}/"
            or "/./" in f"{context}/"
        ):
            self.note(where, f"the context must be a clean absolute path such as "
                             f"'/petstore/1.0.5', got {excerpt(context)}")
            return None, None
        return context.rstrip("/") or "/", where

    def _backends(self, name: str) -> Endpoints | None:
        """The API's production endpoint: x-wso2-production-endpoints, else the servers
        URL (3.x) or schemes, host and basePath (2.0), as the Microgateway reads them."""
        doc = self.doc
        if "x-wso2-production-endpoints" in doc:
            return self._endpoints_at(doc, "x-wso2-production-endpoints", ROOT, name)
        urls, where = self._server_backends()
        return Endpoints(tuple(urls), name=name, where=where) if urls else None

    def _endpoints_at(
        self, node: Mapping[str, Any], key: str, at: str, name: str
    ) -> Endpoints | None:
        """The endpoint ``node[key]`` gives, by value or by ``"#/x-wso2-endpoints/NAME"``
        (then named NAME, else ``name``); None if absent or broken (noted)."""
        if key not in node:
            return None
        where = pointer(at, key)
        endpoints = self.deref(node[key], where)
        if isinstance(endpoints, str):  # "#/x-wso2-endpoints/NAME", Microgateway's reference
            found = self._named_endpoints(where, endpoints)
            if found is None:
                return None
            where, endpoints = found
            name = where.rsplit("/", 1)[1].replace("~1", "/").replace("~0", "~")
        if not isinstance(endpoints, dict):
            self.note(where, f"expected a mapping with 'urls' (and 'type'), got "
                             f"{excerpt(endpoints)}")
            return None
        urls, mode, security = self._endpoint(where, endpoints)
        if not urls:
            return None
        return Endpoints(tuple(urls), mode or "load_balance", name, security, where=where)

    def _server_backends(self) -> tuple[list[str], str]:
        doc = self.doc
        if self.version == "2.0":
            host = doc.get("host")
            if host is None:
                return [], ""
            if not isinstance(host, str) or not host:
                self.note(pointer(ROOT, "host"), f"expected a host name, got {excerpt(host)}")
                return [], ""
            raw_schemes = doc.get("schemes") or []
            if not isinstance(raw_schemes, list):
                self.note(pointer(ROOT, "schemes"), f"expected a list, got {excerpt(raw_schemes)}")
                raw_schemes = []
            schemes = [s for s in raw_schemes if isinstance(s, str) and s.lower() in
                       ("http", "https")]
            scheme = schemes[0].lower() if schemes else "http"
            base = doc.get("basePath", "") if isinstance(doc.get("basePath"), str) else ""
            url = self._backend_url(pointer(ROOT, "host"), f"{scheme}://{host}{base}")
            return ([url] if url else []), pointer(ROOT, "host")
        found = self._servers_url()
        if found is None:
            return [], ""
        url_text, where = found
        try:
            scheme_given = urlsplit(url_text).scheme
        except ValueError:
            return [], ""  # reported by _context
        if not scheme_given:
            return [], ""  # a relative server URL names no backend
        url = self._backend_url(where, url_text)
        return ([url] if url else []), where

    def _endpoint(
        self, where: str, endpoints: dict[str, Any]
    ) -> tuple[list[str], str | None, BasicSecurity | None]:
        """One endpoint mapping: its URLs, how to pick one, and its securityConfig."""
        security = None
        for key, value in endpoints.items():
            if key in ("urls", "type"):
                continue
            if key == "securityConfig":
                security = self._security_config(pointer(where, key), value)
                continue
            known = ext.BY_NAME.get(key)
            if known is not None and ext.ENDPOINT in known.levels:
                for finding in ext.judge(key, value, ext.ENDPOINT, pointer(where, key)):
                    (self.note if finding.error else self.warn)(finding.where, finding.message)
            else:
                self.warn(pointer(where, key), f"unknown endpoint key {key!r} is ignored")
        urls = endpoints.get("urls")
        if not isinstance(urls, list) or not urls:
            self.note(pointer(where, "urls"), f"expected a non-empty list of URLs, got "
                                             f"{excerpt(urls)}")
            return [], None, None
        out = []
        for i, url in enumerate(urls):
            checked = self._backend_url(pointer(where, "urls", i), url)
            if checked is not None:
                out.append(checked)
        kind = endpoints.get("type")
        mode = None
        if kind is not None:
            spelled = kind.strip().lower() if isinstance(kind, str) else None
            if spelled in ("load_balance", "failover"):
                mode = spelled
            elif spelled == "http":
                if len(urls) > 1:
                    self.note(pointer(where, "type"), "type 'http' names one endpoint; use "
                              "'load_balance' or 'failover' for several urls")
            else:
                self.note(pointer(where, "type"), "must be 'load_balance', 'failover' or "
                          f"'http' (one endpoint), got {excerpt(kind)}")
        if len(out) != len(urls):
            return [], None, None
        return out, mode, security

    def _security_config(self, where: str, value: Any) -> BasicSecurity | None:
        """``securityConfig``: ``type: basic`` (any case) with a username (and a password,
        which belongs in the environment); ``enabled: false`` (API Manager) asks for none."""
        value = self.deref(value, where)
        if not isinstance(value, dict):
            self.note(where, f"expected a mapping with type and username, got {excerpt(value)}")
            return None
        enabled = value.get("enabled", True)
        if not isinstance(enabled, bool):
            self.note(pointer(where, "enabled"), f"expected true or false, got {excerpt(enabled)}")
            return None
        for key in value:
            if key not in ("type", "username", "password", "enabled"):
                self.warn(pointer(where, key), f"unknown securityConfig key {key!r} is ignored")
        if not enabled:
            return None
        kind = value.get("type")
        if not isinstance(kind, str) or kind.strip().lower() != "basic":
            detail = ("digest authentication to backends is not supported; use basic"
                      if isinstance(kind, str) and kind.strip().lower() == "digest"
                      else "must be 'basic'")
            self.note(pointer(where, "type"), f"{detail}, got {excerpt(kind)}")
            return None
        username, password = value.get("username"), value.get("password")
        for key, got in (("username", username), ("password", password)):
            if got is not None and not isinstance(got, str):
                self.note(pointer(where, key), f"expected a string, got a {type(got).__name__}")
                return None
        return BasicSecurity(username or None, password or None, where)

    def _named_endpoints(self, where: str, ref: str) -> tuple[str, Any] | None:
        """The entry of ``x-wso2-endpoints`` (a list of one-key mappings, or a mapping) that
        ``ref`` names, and its pointer; None after a note if there is none."""
        prefix = "#/x-wso2-endpoints/"
        if not ref.startswith(prefix):
            self.note(where, f"expected a mapping with 'urls', or '{prefix}NAME', got "
                             f"{excerpt(ref)}")
            return None
        name = ref[len(prefix):]
        table = self.doc.get("x-wso2-endpoints")
        entries = table if isinstance(table, list) else [table]
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and name in entry:
                at = (pointer(ROOT, "x-wso2-endpoints", i, name) if isinstance(table, list)
                      else pointer(ROOT, "x-wso2-endpoints", name))
                return at, self.deref(entry[name], at)
        self.note(where, f"x-wso2-endpoints has no endpoint named {excerpt(name)}")
        return None

    def _backend_url(self, where: str, url: Any) -> str | None:
        if not isinstance(url, str):
            self.note(where, f"expected a URL, got {excerpt(url)}")
            return None
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            self.note(where, f"not a usable URL: {excerpt(url)}")
            return None
        if parts.scheme.lower() not in ("http", "https"):
            self.note(where, f"unsupported backend URL scheme {parts.scheme or '(none)'!r} "
                             f"in {excerpt(url)}: only http:// and https:// backends are "
                             "supported")
            return None
        if not parts.hostname:
            self.note(where, f"the backend URL {excerpt(url)} has no host")
            return None
        if parts.query or parts.fragment:
            self.note(where, f"the backend URL {excerpt(url)} must not carry a query or "
                             "fragment")
            return None
        return parts.scheme.lower() + url[len(parts.scheme):].rstrip("/")

    # -- extensions -----------------------------------------------------------

    def _extensions(self) -> None:
        """Judge every extension where WSO2 reads extensions: the top, path items and
        operations (``x-wso2-endpoints`` entries are judged as endpoints are read)."""
        self._judge(self.doc, ext.API, ROOT)
        for _template, where, item, item_file in self._path_items():
            self._judge(item, ext.RESOURCE, where)
            for _method, op, op_where in self._methods(item, where, item_file, note=False):
                self._judge(op, ext.RESOURCE, op_where)
        table = self.doc.get("x-wso2-endpoints")
        entries = table if isinstance(table, list) else [table] if table is not None else []
        for i, entry in enumerate(entries):
            for name, endpoint in entry.items() if isinstance(entry, dict) else ():
                at = (pointer(ROOT, "x-wso2-endpoints", i, name) if isinstance(table, list)
                      else pointer(ROOT, "x-wso2-endpoints", name))
                endpoint = self.deref(endpoint, at)
                if isinstance(endpoint, dict):
                    self._endpoint(at, endpoint)  # its keys are checked even if unused

    def _judge(self, node: dict[str, Any], level: str, where: str) -> None:
        for key, value in node.items():
            if not key.startswith("x-"):
                continue
            for finding in ext.judge(key, value, level, pointer(where, key)):
                (self.note if finding.error else self.warn)(finding.where, finding.message)

    # -- paths and operations -------------------------------------------------

    def _path_items(self) -> Iterator[tuple[str, str, dict[str, Any], Path]]:
        paths = self.doc.get("paths")
        where = pointer(ROOT, "paths")
        if paths is None:
            return
        if not isinstance(paths, dict):
            self.note(where, f"expected a mapping of path templates, got {excerpt(paths)}")
            return
        for template, raw_item in paths.items():
            if template.startswith("x-"):
                continue  # an extension of the Paths object
            at = pointer(where, template)
            item, item_file = self.follow(raw_item, at)
            if not isinstance(item, dict):
                if item is not None or raw_item is None:
                    self.note(at, f"expected a path item (a mapping), got {excerpt(item)}")
                continue
            yield template, at, item, item_file

    def _methods(
        self, item: dict[str, Any], where: str, file: Path, *, note: bool = True
    ) -> Iterator[tuple[str, dict[str, Any], str]]:
        for method in METHODS:
            if method not in item:
                continue
            at = pointer(where, method)
            op = self.deref(item[method], at, file) if note else self.refs_quiet(item[method],
                                                                                 file)
            if not isinstance(op, dict):
                if note and op is not None:
                    self.note(at, f"expected an operation (a mapping), got {excerpt(op)}")
                continue
            yield method, op, at

    def refs_quiet(self, node: Any, file: Path) -> Any:
        try:
            return self.refs.deref(node, file)[0]
        except _RefError:
            return None

    def _parameters(
        self, node: dict[str, Any], where: str, file: Path
    ) -> dict[str, bool] | None:
        """The path parameters ``node`` declares: name -> required; None if unreadable."""
        raw = node.get("parameters")
        if raw is None:
            return {}
        at = pointer(where, "parameters")
        raw = self.deref(raw, at, file)
        if not isinstance(raw, list):
            self.note(at, f"expected a list of parameters, got {excerpt(raw)}")
            return None
        out: dict[str, bool] = {}
        for i, entry in enumerate(raw):
            param = self.deref(entry, pointer(at, i), file)
            if not isinstance(param, dict):
                if param is not None:
                    self.note(pointer(at, i), f"expected a parameter (a mapping), got "
                                              f"{excerpt(param)}")
                return None
            name, place = param.get("name"), param.get("in")
            if not isinstance(name, str) or not isinstance(place, str):
                self.note(pointer(at, i), "a parameter needs a name and in (strings), got "
                                          f"{excerpt(param)}")
                return None
            if place == "path":
                out[name] = param.get("required") is True
        return out

    def _check_template(
        self, template: str, where: str, declared: Mapping[str, bool], method: str
    ) -> bool:
        """Path parameters as OpenAPI requires: each ``{name}`` declared ``in: path``,
        and each declared one in the template."""
        names = _TEMPLATE_PARAM.findall(template)
        if template.count("{") != len(names) or template.count("}") != len(names):
            self.note(where, f"unbalanced braces in the path template {excerpt(template)}")
            return False
        ok = True
        for name in names:
            if not name:
                self.note(where, "a path template parameter needs a name ('{}')")
                ok = False
            elif names.count(name) > 1:
                self.note(where, f"path parameter {{{name}}} appears twice in the template")
                ok = False
            elif name not in declared:
                self.note(pointer(where, method), f"path parameter {{{name}}} is not declared "
                          "(add a parameter with in: path)")
                ok = False
            elif not declared[name]:
                self.warn(pointer(where, method), f"path parameter {{{name}}} should say "
                          "required: true")
        for name in declared:
            if name not in names:
                self.note(pointer(where, method), f"parameter {name!r} is in: path but the "
                          f"template {excerpt(template)} has no {{{name}}}")
                ok = False
        return ok

    # -- security --------------------------------------------------------------

    def _schemes(self) -> dict[str, _Scheme | str]:
        """Defined schemes by name: what they mean here, or why they are unsupported."""
        doc = self.doc
        if self.version == "2.0":
            table, prefix = doc.get("securityDefinitions"), pointer(ROOT, "securityDefinitions")
        else:
            components = self.deref(doc.get("components"), pointer(ROOT, "components"))
            table = components.get("securitySchemes") if isinstance(components, dict) else None
            prefix = pointer(ROOT, "components", "securitySchemes")
        if table is None:
            return {}
        table = self.deref(table, prefix)
        if not isinstance(table, dict):
            self.note(prefix, f"expected a mapping of security schemes, got {excerpt(table)}")
            return {}
        out: dict[str, _Scheme | str] = {}
        for name, raw in table.items():
            where = pointer(prefix, name)
            scheme = self.deref(raw, where)
            kind = scheme.get("type") if isinstance(scheme, dict) else None
            if not isinstance(scheme, dict) or not isinstance(kind, str):
                out[name] = f"{where}: expected a security scheme with a type"
            elif kind == "mutualTLS":
                out[name] = _Scheme(MTLS)
            elif kind == "apiKey":
                place, header = scheme.get("in"), scheme.get("name")
                if place == "query":  # removed from the query the backend gets
                    if not isinstance(header, str) or not _QUERY_NAME_RE.match(header):
                        out[name] = (f"{where}/name: not a usable query parameter name: "
                                     f"{excerpt(header)}")
                    else:
                        out[name] = _Scheme("api_key", place=("query", header))
                elif place != "header":
                    out[name] = (f"{where}: an API key in the {excerpt(place)} is not "
                                 "supported; send it in a header or the query")
                elif not isinstance(header, str) or not HEADER_RE.match(header):
                    out[name] = f"{where}/name: not a valid HTTP header name: {excerpt(header)}"
                else:
                    out[name] = _Scheme("api_key", place=("header", header))
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
                out[name] = _Scheme("jwt")
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "basic":
                out[name] = _Scheme("basic_auth")  # [[basic_users]]
            elif kind in ("oauth2", "openIdConnect"):
                out[name] = _Scheme("jwt")  # bearer tokens, checked as JWTs
            else:
                detail = kind if kind != "http" else f"http {scheme.get('scheme')}"
                out[name] = f"{where}: security scheme type {excerpt(detail)} is not supported"
        return out

    def _requirements(self, reqs: Any, where: str) -> _Level | None:
        """One OpenAPI security requirement list -> a level; None (noted) if it cannot be."""
        if not isinstance(reqs, list):
            self.note(where, f"expected a list of security requirements, got {excerpt(reqs)}")
            return None
        alternatives: list[frozenset[str]] = []
        places: dict[tuple[str, str], tuple[str, str]] = {}
        bad = False
        jwt_where = ""
        for i, req in enumerate(reqs):
            if not isinstance(req, dict):
                self.note(pointer(where, i), f"expected a mapping of scheme names, got "
                                             f"{excerpt(req)}")
                bad = True
                continue
            kinds = set()
            for name, scopes in req.items():
                at = pointer(where, i, name)
                scheme = self.schemes.get(name)
                if scheme is None:
                    defined = ", ".join(sorted(self.schemes)) or "none"
                    self.note(at, f"no security scheme is named {excerpt(name)} "
                                  f"(defined: {defined})")
                    bad = True
                elif isinstance(scheme, str):
                    self.note(at, scheme)
                    bad = True
                elif not isinstance(scopes, list):
                    self.note(at, f"expected a list of scopes, got {excerpt(scopes)}")
                    bad = True
                else:
                    if scopes and scheme.kind == "jwt":
                        self.note(at, f"token scopes {excerpt(scopes)} cannot be enforced: "
                                      "twistedgw does not check scopes, so any valid token "
                                      "would pass; remove them to accept any token of the "
                                      "API's [[jwt_issuers]]")
                        bad = True
                    kinds.add(scheme.kind)
                    if scheme.kind == "jwt" and not jwt_where:
                        jwt_where = at
                    if scheme.place is not None:
                        kind, named = scheme.place
                        places.setdefault((kind, named.lower() if kind == "header" else named),
                                          scheme.place)
            alternatives.append(frozenset(kinds))
        if bad:
            return None
        if len(places) > 1:
            names = ", ".join(sorted(f"{k} {n}" for k, n in places.values()))
            self.note(where, f"API keys in different places ({names}) for one operation are "
                             "not supported; use one header or query parameter")
            return None
        place = next(iter(places.values())) if places else None
        level = _from_alternatives(alternatives)
        if level is None:
            self.note(where, "these alternatives cannot be expressed: WSO2's rule combines a "
                             "transport level (mTLS) and an application level (any one of "
                             "its schemes), so use one requirement, alternatives of one "
                             "scheme each, or mTLS in every alternative beside one other "
                             "scheme each")
            return None
        return dataclasses.replace(level, place=place, jwt_where=jwt_where)

    def _app_security(self, node: dict[str, Any], where: str) -> _Level | None:
        """``x-wso2-application-security`` at one level (None if absent or broken)."""
        if "x-wso2-application-security" not in node:
            return None
        at = pointer(where, "x-wso2-application-security")
        app = self.deref(node["x-wso2-application-security"], at)
        if not isinstance(app, dict):
            self.note(at, f"expected a mapping with security-types (and optional), got "
                          f"{excerpt(app)}")
            raise _Broken
        types = app.get("security-types", [])
        optional = app.get("optional")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            self.note(pointer(at, "security-types"), f"expected a list of names, got "
                                                     f"{excerpt(types)}")
            raise _Broken
        if optional is not None and not isinstance(optional, bool):
            self.note(pointer(at, "optional"), f"expected true or false, got "
                                               f"{excerpt(optional)}")
            raise _Broken
        kinds = set()
        jwt_where = ""
        for i, kind in enumerate(types):
            spelled = kind.strip().lower()
            mapped = _APP_TYPES.get(spelled)
            if mapped is None:
                detail = (f"{excerpt(kind)} is not an application security type (api_key, "
                          "oauth2, basic_auth)")
                self.note(pointer(at, "security-types", i), detail)
                raise _Broken
            kinds.add(mapped)
            if mapped == "jwt" and not jwt_where:
                jwt_where = pointer(at, "security-types", i)
        return _Level(app=frozenset(kinds) if kinds else None, optional=optional,
                      jwt_where=jwt_where)

    def _mutual_ssl(self) -> Mode | None:
        if "x-wso2-mutual-ssl" not in self.doc:
            return None
        value = self.doc["x-wso2-mutual-ssl"]
        spelled = value.strip().lower() if isinstance(value, str) else None
        if spelled not in ("mandatory", "optional"):
            self.note(pointer(ROOT, "x-wso2-mutual-ssl"),
                      f"must be 'mandatory' or 'optional', got {excerpt(value)}")
            raise _Broken
        return Mode(spelled)

    def _disabled(self, node: dict[str, Any], where: str) -> tuple[bool | None, str]:
        """Whether this level opens (True) or secures again (False), and why."""
        if "x-wso2-disable-security" in node:
            value = node["x-wso2-disable-security"]
            if not isinstance(value, bool):
                self.note(pointer(where, "x-wso2-disable-security"),
                          f"expected true or false, got {excerpt(value)}")
                raise _Broken
            return value, f"x-wso2-disable-security at {pointer(where, 'x-wso2-disable-security')}"
        if "x-auth-type" in node:
            value = node["x-auth-type"]
            if not isinstance(value, str) or value.strip().lower() not in (
                "none", "application", "application user", "application & application user",
                "any",
            ):
                self.note(pointer(where, "x-auth-type"), "must be None, Application, "
                          "Application User, Application & Application User or Any, got "
                          f"{excerpt(value)}")
                raise _Broken
            if value.strip().lower() == "none":
                return True, f"x-auth-type: None at {pointer(where, 'x-auth-type')}"
        return None, ""

    def _api_level(self) -> tuple[_Level, bool, bool, str]:
        """The API level, whether the definition declares security, whether the API level
        is open (x-wso2-disable-security) and why."""
        doc = self.doc
        declares = any(k in doc for k in ("security", "x-wso2-mutual-ssl",
                                          "x-wso2-application-security",
                                          "x-wso2-disable-security"))
        self.transport = self._mutual_ssl()
        level = _Level()
        if "security" in doc:
            found = self._requirements(doc["security"], pointer(ROOT, "security"))
            if found is None:
                raise _Broken
            level = found
        if self.transport is not None and level.mtls is not None:
            self.note(pointer(ROOT, "x-wso2-mutual-ssl"), "mutual TLS is given twice: by "
                      "x-wso2-mutual-ssl and by a mutualTLS scheme in security; keep one")
            raise _Broken
        self.api_place = level.place
        self.api_app = self._app_security(doc, ROOT)
        header = doc.get("x-wso2-api-key-header")
        if header is not None and (not isinstance(header, str) or not HEADER_RE.match(header)):
            self.note(pointer(ROOT, "x-wso2-api-key-header"),
                      f"not a valid HTTP header name: {excerpt(header)}")
            raise _Broken
        self.api_key_header = header
        off, why = self._disabled(doc, ROOT)
        return level, declares, bool(off), why

    def _resolve(self, level: _Level, op_app: _Level | None, own: bool) -> Security:
        """A level's security: its transport level and its application level.

        Transport: the level's own mutualTLS requirement, else x-wso2-mutual-ssl (which
        applies to every operation of the API). Application kinds: the operation's
        x-wso2-application-security types, else its own security requirement (``own``),
        else the API's extension, else the API's requirement (WSO2: at one level the
        extension's types win over security). Optionality: the operation's extension,
        else the API's, else what the requirement says."""
        api_app = self.api_app
        mtls = level.mtls if level.mtls is not None else self.transport or Mode.DISABLED
        sources: list[tuple[frozenset[str] | None, bool, Mode, str]] = []
        if op_app is not None:
            sources.append((op_app.app, False, Mode.MANDATORY, op_app.jwt_where))
        if own:
            sources.append((level.app, level.app_all, level.app_mode, level.jwt_where))
        if api_app is not None:
            sources.append((api_app.app, False, Mode.MANDATORY, api_app.jwt_where))
        if not own:
            sources.append((level.app, level.app_all, level.app_mode, level.jwt_where))
        kinds: frozenset[str] = frozenset()
        app_all, app_mode, jwt_where = False, Mode.MANDATORY, ""
        for found, found_all, found_mode, found_where in sources:
            if found is not None:
                kinds, app_all, app_mode, jwt_where = found, found_all, found_mode, found_where
                break
        optional = next((x.optional for x in (op_app, api_app)
                         if x is not None and x.optional is not None), None)
        if optional is not None:
            app_mode = Mode.OPTIONAL if optional else Mode.MANDATORY
        self.last_jwt_where = jwt_where or ROOT
        place = ((level.place if own else None)
                 or (("header", self.api_key_header) if self.api_key_header else None)
                 or self.api_place or ("header", WSO2_API_KEY_HEADER))
        keyed = "api_key" in kinds
        modes = {k: (app_mode if k in kinds else Mode.DISABLED) for k in APPLICATION}
        return Security(
            mutual_ssl=mtls,
            api_key=modes["api_key"],
            api_key_header=place[1] if keyed and place[0] == "header" else WSO2_API_KEY_HEADER,
            jwt=modes["jwt"],
            basic_auth=modes["basic_auth"],
            any_of=frozenset() if app_all or len(kinds) < 2 else kinds,
            api_key_query=place[1] if keyed and place[0] == "query" else None,
        )

    def _operations(
        self, api_level: _Level, api_secured: Security, api_off: bool, api_why: str,
    ) -> tuple[Operation, ...]:
        """The operations. ``security`` None: the API level's (open when the API's
        x-wso2-disable-security opens it, unless the operation or its path item secures
        itself again: those are in ``self.enabled``); else its own."""
        out = []
        for template, where, item, item_file in self._path_items():
            if not template.startswith("/"):
                self.note(where, "a path template must start with '/'")
                continue
            path_params = self._parameters(item, where, item_file)
            path_off, path_why = self._disabled(item, where)
            path_ends = {kind: self._endpoints_at(item, f"x-wso2-{kind}-endpoints", where,
                                                  pointer(where, f"x-wso2-{kind}-endpoints"))
                         for kind in (PRODUCTION, SANDBOX)}
            for method, op, op_where in self._methods(item, where, item_file):
                op_params = self._parameters(op, op_where, item_file)
                if path_params is not None and op_params is not None:
                    self._check_template(template, where, {**path_params, **op_params}, method)
                # Its own endpoints (named by its operationId, as the Microgateway names
                # them, else by where they are written), else its path item's.
                op_id = op.get("operationId")
                got = {}
                for kind in (PRODUCTION, SANDBOX):
                    key = f"x-wso2-{kind}-endpoints"
                    name = op_id if isinstance(op_id, str) and op_id else pointer(op_where, key)
                    got[kind] = self._endpoints_at(op, key, op_where, name) or path_ends[kind]
                ends = _Ends(got[PRODUCTION], got[SANDBOX])
                # The Microgateway reads API Manager's name first at this level.
                tier, tier_from = self._throttling_tier(
                    op, op_where, ("x-throttling-tier", "x-wso2-throttling-tier"))
                ws = self._websocket(op, op_where, method)
                off, why = self._disabled(op, op_where)
                if off is None:
                    off, why = path_off, path_why
                if off:
                    out.append(Operation(method.upper(), template, OPEN, op_where, tier,
                                         tier_from, opened_by=why, production=ends.production,
                                         sandbox=ends.sandbox, websocket=ws))
                    continue
                if off is False and api_off:
                    self.enabled.add(op_where)  # secured again, by its own or the API's
                own_app = self._app_security(op, op_where)
                if "security" not in op and own_app is None:
                    out.append(Operation(method.upper(), template, None, op_where, tier,
                                         tier_from, production=ends.production,
                                         sandbox=ends.sandbox, websocket=ws))
                    continue
                self.enabled.discard(op_where)
                level, own = api_level, False
                if "security" in op:
                    found = self._requirements(op["security"], pointer(op_where, "security"))
                    if found is None:
                        continue
                    if found.mtls is not None and self.transport is not None:
                        self.note(pointer(op_where, "security"), "mutual TLS is given twice: "
                                  "by x-wso2-mutual-ssl and by a mutualTLS scheme here; keep "
                                  "one")
                        continue
                    level, own = found, True
                security = self._resolve(level, own_app, own)
                if security.jwt is not Mode.DISABLED:
                    self.jwt_wheres.setdefault(security, self.last_jwt_where)
                why = f"security: [] at {pointer(op_where, 'security')}" if security.open else ""
                out.append(Operation(method.upper(), template, security, op_where, tier,
                                     tier_from, opened_by=why, production=ends.production,
                                     sandbox=ends.sandbox, websocket=ws))
        return tuple(out)

    def _websocket(self, op: dict[str, Any], where: str, method: str) -> bool:
        """``x-twistedgw-websocket: true``: the operation accepts WebSocket opening
        handshakes (a GET, RFC 6455 4.1); ``[[apis]] websocket = true`` says it for all."""
        if WEBSOCKET not in op:
            return False
        value = op[WEBSOCKET]
        at = pointer(where, WEBSOCKET)
        if not isinstance(value, bool):
            self.note(at, f"expected true or false, got {excerpt(value)}")
            return False
        if value and method != "get":
            self.note(at, "a WebSocket opening handshake is a GET request: mark the get "
                          "operation of this path")
            return False
        return value


def _from_alternatives(alternatives: list[frozenset[str]]) -> _Level | None:
    """OpenAPI's alternatives of scheme sets (OR of ANDs) -> WSO2's two levels, when the
    rule can say them; None when it cannot.

    An alternative that holds another adds nothing (``[{mtls}, {mtls, key}]`` is
    ``mtls``). What is left must be one set (every scheme mandatory), alternatives
    of one scheme each (any one passes), or mTLS in every alternative beside one
    application scheme each (mTLS and any one of them); an empty alternative opens.
    """
    if not alternatives:
        return _Level(app=frozenset())
    unique = set(alternatives)
    minimal = [a for a in unique if not any(b < a for b in unique)]
    if frozenset() in minimal:
        return _Level(app=frozenset())
    if len(minimal) == 1:
        (only,) = minimal
        return _Level(mtls=Mode.MANDATORY if MTLS in only else None,
                      app=only - {MTLS}, app_all=True)
    rests = [a - {MTLS} for a in minimal]
    if all(MTLS in a for a in minimal) and all(len(r) == 1 for r in rests):
        return _Level(mtls=Mode.MANDATORY, app=frozenset().union(*rests))
    if all(len(a) == 1 for a in minimal):
        kinds = frozenset().union(*minimal)
        if MTLS in kinds:
            return _Level(mtls=Mode.OPTIONAL, app=kinds - {MTLS}, app_mode=Mode.OPTIONAL)
        return _Level(app=kinds)
    return None


# --------------------------------------------------------------------------- into the config


def for_api(r: TableReader) -> Definition | None:
    """The definition an ``[[apis]]`` table names (config reader ``r``); None if unusable."""
    r.seen.add("openapi")
    raw = r.table.get("openapi")
    if not isinstance(raw, str):
        r.problem("openapi", f"expected the definition's file name, got {excerpt(raw)}")
        return None
    file = resolve(r.file, raw)
    if file is None:
        r.problem("openapi", f"not a usable path: {excerpt(raw)}")
        return None

    def report(where: str, what: str) -> None:
        r.problem("openapi", f"{file}: {where}: {what}")

    def warn(where: str, what: str) -> None:
        r.warning("openapi", f"{file}: {where}: {what}")

    definition = read(file, report, warn)
    if definition is None:
        return None
    for where, what in definition.warnings:
        warn(where, what)
    table = r.table
    missing = False
    if "context" not in definition.values and "context" not in table:
        report(ROOT, "names no context: add x-wso2-basePath (or a servers URL, or basePath "
                     "in OpenAPI 2.0), or set context in the [[apis]] table")
        missing = True
    if not _backend_optional(definition, table) and "backends" not in definition.values:
        bare = next((op for op in definition.operations
                     if op.production is None and op.sandbox is None), None)
        if bare is not None and len(bare.where) > 1 and any(
                op.production is not None or op.sandbox is not None
                for op in definition.operations):
            report(bare.where, "has no endpoint to go to: neither it nor the API gives "
                               "x-wso2-production-endpoints or x-wso2-sandbox-endpoints")
        else:
            report(ROOT, "names no backend: add x-wso2-production-endpoints (or an absolute "
                         "servers URL, or host in OpenAPI 2.0), or set backend in the [[apis]] "
                         "table")
        missing = True
    if "name" not in definition.values and "name" not in table:
        report(pointer(ROOT, "info", "title"), "names no API: add info.title, or set name "
                                               "in the [[apis]] table")
        missing = True
    return None if missing else definition


def _backend_optional(definition: Definition, table: Mapping[str, Any]) -> bool:
    """Whether the API may lack a production backend of its own: the TOML names one,
    or the definition gives sandbox endpoints, or every operation has endpoints of its
    own (WSO2 asks only that each operation have some endpoint to go to)."""
    if "backend" in table or "backends" in table or definition.sandbox is not None:
        return True
    ops = definition.operations
    return bool(ops) and all(op.production is not None or op.sandbox is not None for op in ops)


def merged(definition: Definition, table: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[[apis]]`` table the definition implies, with the keys written in TOML on top."""
    values = dict(definition.values)
    if "backend" in table or "backends" in table:
        values.pop("backends", None)
        values.pop("backend_mode", None)
    if "application_security" in table:
        values.pop("api_key", None)
        values.pop("jwt", None)
    values.update(table)
    values.pop("openapi", None)
    return values


def api_security(api: ApiConfig) -> Security:
    """The schemes an ``ApiConfig`` (or an operation's variant of it) applies."""
    return Security(api.mutual_ssl, api.api_key, api.api_key_header, api.jwt, api.basic_auth,
                    api.any_of, api.api_key_query)


def variant(api: ApiConfig, security: Security) -> ApiConfig:
    """``api`` with ``security``'s schemes: what an operation with its own security runs."""
    return dataclasses.replace(
        api,
        mutual_ssl=security.mutual_ssl,
        api_key=security.api_key,
        api_key_header=security.api_key_header,
        jwt=security.jwt,
        basic_auth=security.basic_auth,
        any_of=security.any_of,
        api_key_query=security.api_key_query,
    )


#: What sets an operation's config apart: its own security, its own throttling policy,
#: its own production and sandbox endpoints.
OperationKey = tuple[Security | None, ResourceThrottle | None, Endpoints | None,
                     Endpoints | None]


def operation_key(api: ApiConfig, op: Operation) -> OperationKey | None:
    """What makes an operation's config differ from its API's (None: nothing): its own
    security, its own throttling policy unless the API names one (then the API's
    applies to every operation, as in WSO2 Microgateway), its own endpoints."""
    throttle = None
    if op.throttling_tier is not None and api.throttling_tier is None \
            and op.throttling_tier != UNLIMITED:
        throttle = ResourceThrottle(op.throttling_tier, op.method, op.template)
    if op.security is None and throttle is None and op.production is None \
            and op.sandbox is None:
        return None
    return (op.security, throttle, op.production, op.sandbox)


def operation_config(api: ApiConfig, op: Operation) -> ApiConfig:
    """The config (and so the pipeline) an operation runs: ``api`` itself, or its variant
    with the operation's own security, throttling policy and endpoints
    (``operation_key``)."""
    key = operation_key(api, op)
    if key is None:
        return api
    security, throttle, production, sandbox = key
    out = variant(api, security) if security is not None else api
    if throttle is not None:
        out = dataclasses.replace(out, resource_throttle=throttle)
    if production is not None:
        out = dataclasses.replace(out, backend=production.urls[0], backends=production.urls,
                                  backend_mode=production.mode, backend_auth=production.auth)
    if sandbox is not None:
        out = dataclasses.replace(out, sandbox=sandbox)
    return out


def variants(api: ApiConfig) -> list[ApiConfig]:
    """One ``ApiConfig`` per distinct operation config that differs from the API's."""
    seen: dict[OperationKey, ApiConfig] = {}
    for op in api.operations or ():
        key = operation_key(api, op)
        if key is not None and key not in seen:
            seen[key] = operation_config(api, op)
    return list(seen.values())


def with_variants(apis: Iterable[ApiConfig]) -> Iterator[tuple[ApiConfig, bool]]:
    """Every API, each followed by its operations' variants: (config, is the API itself)."""
    for api in apis:
        yield api, True
        for other in variants(api):
            yield other, False


def apply(
    definition: Definition,
    api: ApiConfig,
    r: TableReader,
    toml_keys: frozenset[str],
    *,
    jwt_issuers: bool = True,  # the config declares [[jwt_issuers]]
    environ: Mapping[str, str] | None = None,  # where endpoint passwords are looked for
) -> ApiConfig:
    """Finish an ``ApiConfig`` read from a definition: the security of the API and of
    every operation (TOML's scheme keys on top, as ``toml_security`` says), the
    operations and their endpoints with the backends' credentials, and where it came
    from."""
    file = definition.file
    problems: dict[tuple[str, str], None] = {}

    def report(where: str, what: str) -> None:
        problems[(where, what)] = None

    def warn(where: str, what: str) -> None:
        r.warning("openapi", f"{file}: {where}: {what}")

    written = toml_keys & TOML_SECURITY_KEYS
    toml = api_security(api)  # the TOML reader's modes (TOML's keys over the definition's)
    defined_api = definition.security
    if not definition.declares_security and not written:
        if jwt_issuers:
            defined_api = Security(jwt=Mode.MANDATORY)  # WSO2 reads no security as OAuth2
        elif any(op.security is None for op in definition.operations):
            report("#/security", "the definition declares no security, which WSO2 reads as "
                   "OAuth2 (bearer tokens), but no [[jwt_issuers]] are configured to check "
                   "them: configure [[jwt_issuers]], write 'security: []' or "
                   "'x-wso2-disable-security: true' to serve it open, declare its schemes, or "
                   "set mutual_ssl / api_key in the [[apis]] table")
    every = api.toml_security == "every_operation"

    def settle(security: Security, where: str | None) -> Security:
        """Bearer security needs issuers, unless the token can never decide."""
        if security.jwt is Mode.DISABLED or jwt_issuers:
            return security
        if not security.jwt_decides():
            return security.without_jwt()
        if where is None:
            r.problem("jwt", "JWT is enabled but no [[jwt_issuers]] are defined")
        else:
            report(where, "bearer security needs [[jwt_issuers]]")
        return security

    api_final = overlay(defined_api, toml, written)
    toml_jwt = bool(written & {"jwt", "application_security"}) and toml.jwt is not Mode.DISABLED
    api_where = definition.jwt_wheres.get(None, ROOT)
    api_final = settle(api_final, None if toml_jwt else api_where)
    secured = definition.api_secured
    operations = []
    for op in definition.operations:
        if op.security is None and op.where in definition.enabled:
            defined = secured.normal()
            final: Security | None = settle(overlay(secured, toml, written),
                                            None if toml_jwt else api_where)
            if final == api_final:
                final = None
        elif op.security is None:
            final = None
            defined = defined_api.normal()
        else:
            defined = op.security.normal()
            final = overlay(op.security, toml, written) if every else defined
            final = settle(final, None if toml_jwt and every else
                           definition.jwt_wheres.get(op.security, op.where))
            if final == api_final:
                final = None
        operations.append(dataclasses.replace(op, security=final, defined=defined))
    backend_auth, sandbox, operations = _credentials(
        definition, api, operations, toml_keys, r,
        Resolver({e.endpoint: e for e in api.credentials},
                 os.environ if environ is None else environ, report, warn))
    for where, what in problems:
        r.problem("openapi", f"{file}: {where}: {what}")
    if not operations:
        r.problem("openapi", f"{file}: #/paths: defines no operations, so nothing would be "
                             "served")
    context_from = None if "context" in toml_keys else definition.context_from
    tier_from = "" if "throttling_tier" in toml_keys else definition.throttling_from
    return dataclasses.replace(
        variant(api, api_final),
        operations=tuple(operations),
        openapi=Origin(file, context_from, definition.opened_by),
        throttling_from=tier_from,
        backend_auth=backend_auth,
        sandbox=sandbox,
        credentials=(),
    )


def _credentials(
    definition: Definition,
    api: ApiConfig,
    operations: list[Operation],
    toml_keys: frozenset[str],
    r: TableReader,
    resolver: Resolver,
) -> tuple[BackendAuth | None, Endpoints | None, list[Operation]]:
    """The backends' credentials for the API's production and sandbox endpoints and each
    operation's own (``Resolver``); a [[apis.backend_credentials]] entry naming no
    endpoint of this API is an error listing those it has."""
    entries = resolver.entries
    backend_auth = api.backend_auth
    known: dict[str, None] = {PRODUCTION: None}
    if "backend" in toml_keys or "backends" in toml_keys:  # the TOML's backend, not the
        entry = entries.get(PRODUCTION)                    # definition's endpoint
        if entry is not None:
            resolver.used.add(PRODUCTION)
            backend_auth = BackendAuth(entry.username, entry.password,
                                       f"{entry.where}.password_file")
    elif definition.production is not None:
        known[definition.production.name] = None
        backend_auth = resolver.resolve(definition.production, PRODUCTION, api_level=True).auth
    sandbox = definition.sandbox
    if sandbox is not None:
        known[SANDBOX] = known[sandbox.name] = None
        sandbox = resolver.resolve(sandbox, SANDBOX, api_level=True)
    out = []
    for op in operations:
        for found in (op.production, op.sandbox):
            if found is not None:
                known[found.name] = None
        if op.production is not None:
            op = dataclasses.replace(
                op, production=resolver.resolve(op.production, PRODUCTION, api_level=False))
        if op.sandbox is not None:
            op = dataclasses.replace(
                op, sandbox=resolver.resolve(op.sandbox, SANDBOX, api_level=False))
        out.append(op)
    for name, entry in entries.items():
        if name not in resolver.used:
            r.problems.add(f"{entry.where}.endpoint", f"this API has no endpoint named "
                           f"{name!r}; its endpoints: {', '.join(map(repr, known))}")
    return backend_auth, sandbox, out


def security_changes(api: ApiConfig) -> list[str]:
    """One line per operation the definition opens and the TOML closes, or the reverse."""
    out = []
    context = "" if api.context == "/" else api.context
    own = api_security(api)
    for op in api.operations or ():
        if op.defined is None:
            continue
        effective = op.security if op.security is not None else own
        if op.defined.open == effective.open:
            continue
        route = f"{op.method} {context}{op.template}"
        shown = describe(effective, api)
        if op.defined.open:
            origin = api.openapi
            why = op.opened_by or (origin.opened_by if origin is not None else "") or (
                "no security declared")
            out.append(f"{route}: open in the definition ({why}), closed by the [[apis]] "
                       f"table's security keys: {shown}")
        else:
            out.append(f"{route}: secured in the definition ({describe(op.defined, api)}), "
                       "opened by the [[apis]] table's security keys")
    return out


# --------------------------------------------------------------------------- twistedgw routes


def describe(security: Security, api: ApiConfig) -> str:
    """``mutual_ssl:mandatory (api_key|jwt):mandatory``, or ``open``."""
    return describe_security(variant(api, security))


def describe_security(api: ApiConfig) -> str:
    """``mutual_ssl:mandatory api_key(X-API-Key):optional``, or ``open``."""
    parts = []
    if api.mutual_ssl is not Mode.DISABLED:
        aliases = f"[{','.join(sorted(api.aliases))}]" if api.aliases is not None else ""
        parts.append(f"mutual_ssl{aliases}:{api.mutual_ssl.value}")
    header = "" if api.api_key_header == WSO2_API_KEY_HEADER else f"({api.api_key_header})"
    if api.api_key_query is not None:
        header = f"(query {api.api_key_query})"
    bearer = "" if api.auth_header.lower() == "authorization" else f"({api.auth_header})"
    names = {"api_key": f"api_key{header}", "jwt": f"jwt{bearer}", "basic_auth": "basic_auth"}
    group = [s for s in APPLICATION if s in api.any_of and getattr(api, s) is not
             Mode.DISABLED]
    for scheme in APPLICATION:
        mode = getattr(api, scheme)
        if mode is not Mode.DISABLED and scheme not in group:
            parts.append(f"{names[scheme]}:{mode.value}")
    if len(group) > 1:
        parts.append(f"({'|'.join(names[s] for s in group)}):{getattr(api, group[0]).value}")
    if api.throttling_tier is not None and api.throttling_tier != UNLIMITED:
        parts.append(f"throttling_tier:{api.throttling_tier}")
    elif api.resource_throttle is not None:
        parts.append(f"throttling_tier:{api.resource_throttle.policy}(operation)")
    consumers = getattr(api, "consumers", None)
    if consumers is not None:
        parts.append(f"consumers[{','.join(consumers)}]")
    for spec in api.plugins:
        parts.append(f"plugin:{spec.name}")
    return " ".join(parts) or "open"


def route_rows(apis: Iterable[ApiConfig]) -> list[tuple[str, str, str, str, str]]:
    """(host, method, path template, API, schemes) for every route, as ``routes`` prints."""
    rows = []
    for api in sorted(apis, key=lambda a: a.context):
        hosts = getattr(api, "hosts", None) or ("*",)
        context = "" if api.context == "/" else api.context
        if api.operations is None:
            entries = [("*", f"{context}/*", describe_security(api))]
        else:
            entries = []
            for op in api.operations:
                effective = operation_config(api, op)
                methods = [op.method]
                if op.method == "GET" and not any(
                    o.method == "HEAD" and o.template == op.template for o in api.operations
                ):
                    methods.append("HEAD")
                for method in methods:
                    entries.append((method, context + op.template, describe_security(effective)))
        for host in hosts:
            for method, path, schemes in entries:
                rows.append((str(host), method, path, api.label, schemes))
    return rows


def read_api(r: TableReader, *, has_jwt_issuers: bool) -> ApiConfig | None:
    """An ``[[apis]]`` table with ``openapi = FILE``: the table its definition implies, with
    the TOML keys on top, read as any other; ``has_jwt_issuers``: whether the config declares
    any (the definition's bearer security needs them)."""
    definition = for_api(r)
    if definition is None:  # reported; the rest of the table depends on it
        r.seen.update(r.table)
        return None
    toml_keys = frozenset(r.table)
    optional = _backend_optional(definition, r.table)
    r = TableReader(r.file, merged(definition, r.table), r.path, r.problems, {"openapi"})
    api = read_table(r, backend_optional=optional)
    if api is None:
        return None
    return apply(definition, api, r, toml_keys, jwt_issuers=has_jwt_issuers)
