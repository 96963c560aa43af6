"""APIs from OpenAPI definitions, read the way WSO2 Microgateway projects write them.

An ``[[apis]]`` table with ``openapi = "FILE"`` takes its name, version,
context, backends and security from the definition (OpenAPI 2.0, 3.0 or 3.1,
YAML or JSON, with WSO2's ``x-wso2-*`` extensions); any other key written in
the table overrides what the definition says. Per-operation security replaces
the API's schemes for that operation (mTLS included), and only the operations
the definition lists are served.

Read once per config load (start, ``check``, reload), never per request. A
broken definition is reported like any config problem, in the same pass:
``apis[0].openapi: FILE: where: what``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twistedgw.config._apis import ApiConfig
from twistedgw.config._apis import read_api as read_table
from twistedgw.config._base import CONTEXT_RE, HEADER_RE, Mode, TableReader, resolve
from twistedgw.config._operations import (
    OPEN,
    UNLIMITED,
    WSO2_API_KEY_HEADER,
    Operation,
    Origin,
    ResourceThrottle,
    Security,
)

#: Problems are (where in the definition, what is wrong); the caller adds the file.
Report = Callable[[str, str], None]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_DEFINITION_BYTES = 16 * 1024 * 1024  # far beyond any real definition; bounds a mistake
_MAX_DEPTH = 64  # nesting and $ref chains; a cycle or a bomb stops here
_MAX_VALIDATION_ERRORS = 20


@dataclass(frozen=True)
class Definition:
    """What a definition says about its API, in the shape of an ``[[apis]]`` table."""

    file: Path
    values: Mapping[str, Any]  # TOML keys: name, version, context, backends, backend_mode, ...
    security: Security  # the API's own schemes
    declares_security: bool  # the definition says something about security (even "open")
    operations: tuple[Operation, ...]
    context_from: str | None
    jwt_wheres: tuple[str, ...]  # where bearer/OAuth2 security applies
    throttling_from: str = ""  # the JSON pointer of the API-level throttling tier, if any


# --------------------------------------------------------------------------- loading


class _Broken(Exception):
    """The definition cannot be used at all; already reported."""


_MAX_NODES = 2_000_000  # YAML aliases can make a small file expand exponentially


def _plain(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """JSON-shaped data: YAML's integer keys (``200:``) and dates become strings."""
    if budget is None:
        budget = [_MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {_MAX_NODES} values (YAML aliases expanding?)")
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth + 1, budget) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _parse(file: Path, text: str) -> Any:
    if file.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


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
        doc = _parse(file, text)
    except Exception as e:  # JSONDecodeError, yaml.YAMLError, RecursionError (deep nesting)
        kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
        raise ValueError(f"invalid {kind}: {e}".replace("\n", " ")) from None
    return _plain(doc)  # ValueError (too big, too deep) says why


class _Refs:
    """``$ref`` targets: local pointers and files inside the definition's directory only."""

    def __init__(self, root_file: Path, root_doc: Any) -> None:
        self.root_dir = root_file.parent.resolve()
        self.docs: dict[Path, Any] = {root_file.resolve(): root_doc}

    def check(self, report: Report) -> bool:
        """Report every ``$ref`` that leaves the directory, names a URL or a missing file."""
        ok = True
        pending = list(self.docs.items())
        seen: set[Path] = set(self.docs)
        while pending:
            file, doc = pending.pop()
            for where, ref in _refs_in(doc):
                label = where if file == next(iter(self.docs)) else f"{file.name}: {where}"
                target, _sep, _fragment = ref.partition("#")
                if not target:
                    continue
                if urlsplit(target).scheme or target.startswith("//"):
                    report(label, f"$ref {ref!r} names a URL; only files beside the "
                                  "definition may be referenced")
                    ok = False
                    continue
                try:
                    resolved = (file.parent / target).resolve()
                except (ValueError, OSError):  # NUL bytes, over-long names
                    report(label, f"$ref {ref!r} is not a usable file name")
                    ok = False
                    continue
                if not resolved.is_relative_to(self.root_dir):
                    report(label, f"$ref {ref!r} leaves the definition's directory "
                                  f"({self.root_dir})")
                    ok = False
                    continue
                if resolved in seen:
                    continue
                try:
                    loaded = _load_document(resolved)
                except ValueError as e:
                    report(label, f"$ref {ref!r}: {e}")
                    ok = False
                    continue
                seen.add(resolved)
                self.docs[resolved] = loaded
                pending.append((resolved, loaded))
        return ok

    def deref(self, node: Any, file: Path) -> tuple[Any, Path]:
        """Follow ``$ref`` (if ``node`` is one) to its target; the target's file too."""
        for _ in range(_MAX_DEPTH):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                return node, file
            target, _sep, fragment = node["$ref"].partition("#")
            if target:
                file = (file.parent / target).resolve()
            doc = self.docs.get(file.resolve())
            node = _pointer(doc, fragment)
        raise ValueError("$ref chain too long (a cycle?)")


def _refs_in(node: Any, where: str = "", depth: int = 0) -> Iterable[tuple[str, str]]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield (where or "(top)"), ref
        for key, value in node.items():
            yield from _refs_in(value, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs_in(value, f"{where}[{i}]", depth + 1)


def _pointer(doc: Any, fragment: str) -> Any:
    node = doc
    for raw in fragment.split("/")[1:] if fragment else ():
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise ValueError(f"$ref target #{fragment} does not exist")
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


def _validate(doc: Mapping[str, Any], version: str, file: Path, report: Report) -> bool:
    """openapi-spec-validator's verdict; its errors reported with where they are."""
    from openapi_spec_validator import (
        OpenAPIV2SpecValidator,
        OpenAPIV30SpecValidator,
        OpenAPIV31SpecValidator,
    )

    cls: Any = {
        "2.0": OpenAPIV2SpecValidator,
        "3.0": OpenAPIV30SpecValidator,
        "3.1": OpenAPIV31SpecValidator,
    }[version]
    count = 0
    try:
        for error in cls(doc, base_uri=file.resolve().as_uri()).iter_errors():
            path = list(getattr(error, "absolute_path", ()) or ())
            where = ".".join(str(p) for p in path) or "(top)"
            message = str(getattr(error, "message", error)).replace("\n", " ")
            if len(message) > 300:
                message = message[:300] + "..."
            report(where, f"invalid OpenAPI {version}: {message}")
            count += 1
            if count >= _MAX_VALIDATION_ERRORS:
                break
    except Exception as e:  # the validator can trip over a document it already faulted
        if not count:
            report("(top)", f"invalid OpenAPI {version}: {type(e).__name__}: {e}")
            count += 1
    return count == 0


# --------------------------------------------------------------------------- reading


def read(file: Path, report: Report) -> Definition | None:
    """Read and check ``file``; None (after reporting why) if it cannot be used.

    Problems that concern only part of it (an unknown security name, say) are
    reported too, and also make it unusable: a definition is served exactly as
    written or not at all.
    """
    problems: list[tuple[str, str]] = []

    def note(where: str, what: str) -> None:
        problems.append((where, what))

    try:
        doc = _load_document(file)
    except ValueError as e:
        report("(file)", str(e))
        return None
    if not isinstance(doc, dict):
        report("(top)", "not an OpenAPI document (expected a mapping at the top)")
        return None
    version = _version(doc)
    if version is None:
        report("(top)", "not an OpenAPI 2.0, 3.0 or 3.1 document "
                        "(no 'swagger: \"2.0\"' or 'openapi: 3.0.x/3.1.x')")
        return None
    refs = _Refs(file, doc)
    if not refs.check(note) or not _validate(doc, version, file, note):
        for where, what in problems:
            report(where, what)
        return None
    try:
        definition = _DefinitionReader(file, doc, version, refs, note).definition()
    except (ValueError, _Broken) as e:
        if str(e):
            note("(top)", str(e))
        definition = None
    for where, what in problems:
        report(where, what)
    return None if problems else definition


@dataclass(frozen=True)
class _Scheme:
    kind: str  # "mtls" | "apikey" | "jwt" | "basic"
    header: str | None = None  # the API key's header


class _DefinitionReader:
    def __init__(
        self, file: Path, doc: dict[str, Any], version: str, refs: _Refs, note: Report
    ) -> None:
        self.file = file.resolve()
        self.doc = doc
        self.version = version
        self.refs = refs
        self.note = note
        self.jwt_wheres: list[str] = []
        self.schemes = self._schemes()

    def deref(self, node: Any, file: Path | None = None) -> Any:
        return self.refs.deref(node, file or self.file)[0]

    def deref_in(self, node: Any) -> tuple[Any, Path]:
        """``deref`` and the file the target lies in (its own ``$ref``s are relative to it)."""
        return self.refs.deref(node, self.file)

    # -- identity, context, backends ------------------------------------------

    def definition(self) -> Definition:
        doc = self.doc
        info = self.deref(doc.get("info")) or {}
        values: dict[str, Any] = {
            "name": str(info.get("title", "")),
            "version": str(info.get("version", "")),
        }
        context, context_from = self._context(values["version"])
        if context is not None:
            values["context"] = context
        backends, mode = self._backends()
        if backends:
            values["backends"] = backends
            if mode is not None:
                values["backend_mode"] = mode
        security, declares = self._api_security()
        values["mutual_ssl"] = security.mutual_ssl.value
        values["api_key"] = security.api_key.value
        values["basic_auth"] = security.basic_auth.value
        tier, tier_from = self._throttling_tier(doc, (), ("x-wso2-throttling-tier",
                                                         "x-throttling-tier"))
        if tier is not None:
            values["throttling_tier"] = tier
        operations = self._operations()
        return Definition(
            file=self.file,
            values=values,
            security=security,
            declares_security=declares,
            operations=operations,
            context_from=context_from,
            jwt_wheres=tuple(dict.fromkeys(self.jwt_wheres)),
            throttling_from=tier_from,
        )

    def _throttling_tier(
        self, node: Mapping[str, Any], at: tuple[str, ...], keys: tuple[str, str]
    ) -> tuple[str | None, str]:
        """The throttling policy ``node`` names and the JSON pointer it came from.

        WSO2's own name and API Manager's (``x-throttling-tier``) mean the same; when
        both are written, ``keys[0]`` is the one the Microgateway reads at this level,
        and two different names are refused rather than one silently dropped.
        """
        found = [(key, node[key]) for key in keys if key in node]
        for key, value in found:
            if not isinstance(value, str) or not value.strip():
                self.note(json_pointer(*at, key), f"expected a throttling policy name, got "
                                                  f"{value!r}")
                return None, ""
        if not found:
            return None, ""
        if len(found) == 2 and found[0][1] != found[1][1]:
            self.note(json_pointer(*at, found[0][0]),
                      f"{found[0][0]} {found[0][1]!r} and {found[1][0]} {found[1][1]!r} name "
                      "different policies; keep one")
            return None, ""
        key, value = found[0]
        return value, json_pointer(*at, key)

    def _servers_url(self) -> tuple[str, str] | None:
        servers = self.doc.get("servers")
        if not isinstance(servers, list) or not servers:
            return None
        first = self.deref(servers[0])
        if not isinstance(first, dict) or not isinstance(first.get("url"), str):
            return None
        url: str = first["url"]
        variables = first.get("variables") or {}
        for name, var in variables.items() if isinstance(variables, dict) else ():
            if isinstance(var, dict) and "default" in var:
                url = url.replace("{" + name + "}", str(var["default"]))
        return url, "servers[0].url"

    def _context(self, version: str) -> tuple[str | None, str | None]:
        doc = self.doc
        raw: Any = None
        where = None
        if "x-wso2-basePath" in doc:
            raw, where = doc["x-wso2-basePath"], "x-wso2-basePath"
        elif self.version == "2.0":
            if "basePath" in doc:
                raw, where = doc["basePath"], "basePath"
        else:
            found = self._servers_url()
            if found is not None:
                url, where = found
                raw = urlsplit(url).path or "/"
        if raw is None or where is None:
            return None, None
        if not isinstance(raw, str):
            self.note(where, f"expected a path such as '/petstore/v1', got {raw!r}")
            return None, None
        context = raw.replace("{version}", version)
        if (
            not CONTEXT_RE.match(context)
            or "//" in context
            or "/../" in f"{context}/"
            or "/./" in f"{context}/"
        ):
            self.note(where, f"the context must be a clean absolute path such as "
                             f"'/petstore/1.0.5', got {context!r}")
            return None, None
        return context.rstrip("/") or "/", where

    def _backends(self) -> tuple[list[str], str | None]:
        doc = self.doc
        for scope, node in self._resource_levels():
            if "x-wso2-production-endpoints" in node:
                self.note(f"{scope}.x-wso2-production-endpoints",
                          "per-resource endpoints are not supported; give the API's endpoints "
                          "at the top of the definition")
        if "x-wso2-production-endpoints" in doc:
            where = "x-wso2-production-endpoints"
            endpoints = self.deref(doc[where])
            if isinstance(endpoints, str):  # "#/x-wso2-endpoints/NAME", Microgateway's reference
                endpoints = self._named_endpoints(where, endpoints)
                if endpoints is None:
                    return [], None
            if not isinstance(endpoints, dict):
                self.note(where, "expected a mapping with 'urls' (and 'type')")
                return [], None
            urls = endpoints.get("urls")
            if not isinstance(urls, list) or not urls:
                self.note(f"{where}.urls", "expected a non-empty list of URLs")
                return [], None
            out = []
            for i, url in enumerate(urls):
                checked = self._backend_url(f"{where}.urls[{i}]", url)
                if checked is not None:
                    out.append(checked)
            kind = endpoints.get("type")
            mode = None
            if kind is not None:
                if kind not in ("load_balance", "failover"):
                    self.note(f"{where}.type",
                              f"must be 'load_balance' or 'failover', got {kind!r}")
                else:
                    mode = kind
            return out, mode
        if self.version == "2.0":
            host = doc.get("host")
            if not isinstance(host, str) or not host:
                return [], None
            schemes = [s for s in doc.get("schemes") or () if s in ("http", "https")]
            scheme = schemes[0] if schemes else "http"
            base = doc.get("basePath", "") if isinstance(doc.get("basePath"), str) else ""
            url = self._backend_url("host", f"{scheme}://{host}{base}")
            return ([url] if url else []), None
        found = self._servers_url()
        if found is None:
            return [], None
        url_text, where = found
        if not urlsplit(url_text).scheme:
            return [], None  # a relative server URL names no backend
        url = self._backend_url(where, url_text)
        return ([url] if url else []), None

    def _named_endpoints(self, where: str, ref: str) -> Any:
        """The entry of ``x-wso2-endpoints`` (a list of one-key mappings, or a mapping) that
        ``ref`` names; None after a note if there is none."""
        prefix = "#/x-wso2-endpoints/"
        if not ref.startswith(prefix):
            self.note(where, f"expected a mapping with 'urls', or '{prefix}NAME', got {ref!r}")
            return None
        name = ref[len(prefix):]
        table = self.doc.get("x-wso2-endpoints")
        entries = table if isinstance(table, list) else [table]
        for entry in entries:
            if isinstance(entry, dict) and name in entry:
                return self.deref(entry[name])
        self.note(where, f"x-wso2-endpoints has no endpoint named {name!r}")
        return None

    def _backend_url(self, where: str, url: Any) -> str | None:
        if not isinstance(url, str):
            self.note(where, f"expected a URL, got {url!r}")
            return None
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            self.note(where, f"not a usable URL: {url!r}")
            return None
        if parts.scheme.lower() not in ("http", "https"):
            self.note(where, f"unsupported backend URL scheme {parts.scheme or '(none)'!r} "
                             f"in {url!r}: only http:// and https:// backends are supported")
            return None
        if not parts.hostname:
            self.note(where, f"the backend URL {url!r} has no host")
            return None
        if parts.query or parts.fragment:
            self.note(where, f"the backend URL {url!r} must not carry a query or fragment")
            return None
        return parts.scheme.lower() + url[len(parts.scheme):].rstrip("/")

    def _resource_levels(self) -> Iterable[tuple[str, dict[str, Any]]]:
        paths = self.doc.get("paths") or {}
        for template, item in paths.items() if isinstance(paths, dict) else ():
            item, item_file = self.deref_in(item)
            if not isinstance(item, dict):
                continue
            yield f"paths.{template}", item
            for method in METHODS:
                op = self.deref(item.get(method), item_file)
                if isinstance(op, dict):
                    yield f"paths.{template}.{method}", op

    # -- security --------------------------------------------------------------

    def _schemes(self) -> dict[str, _Scheme | str]:
        """Defined schemes by name: what they mean here, or why they are unsupported."""
        doc = self.doc
        if self.version == "2.0":
            table, prefix = doc.get("securityDefinitions") or {}, "securityDefinitions"
        else:
            components = self.deref(doc.get("components")) or {}
            table = components.get("securitySchemes") or {}
            prefix = "components.securitySchemes"
        out: dict[str, _Scheme | str] = {}
        for name, raw in table.items() if isinstance(table, dict) else ():
            scheme = self.deref(raw)
            where = f"{prefix}.{name}"
            kind = scheme.get("type") if isinstance(scheme, dict) else None
            if kind == "mutualTLS":
                out[name] = _Scheme("mtls")
            elif kind == "apiKey":
                place, header = scheme.get("in"), scheme.get("name")
                if place != "header":
                    out[name] = (f"{where}: an API key in the {place} is not supported; "
                                 "send it in a header")
                elif not isinstance(header, str) or not HEADER_RE.match(header):
                    out[name] = f"{where}.name: not a valid HTTP header name: {header!r}"
                else:
                    out[name] = _Scheme("apikey", header)
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
                out[name] = _Scheme("jwt")
            elif kind == "http" and str(scheme.get("scheme", "")).lower() == "basic":
                out[name] = _Scheme("basic")  # [[basic_users]]
            elif kind in ("oauth2", "openIdConnect"):
                out[name] = _Scheme("jwt")  # bearer tokens, checked as JWTs
            else:
                detail = kind if kind != "http" else f"http {scheme.get('scheme')}"
                out[name] = f"{where}: security scheme type {detail!r} is not supported"
        return out

    def _requirements(self, reqs: Any, where: str) -> Security | None:
        """One security requirement list -> modes; None (after a note) if it cannot be."""
        if not isinstance(reqs, list):
            self.note(where, "expected a list of security requirements")
            return None
        alternatives: list[frozenset[str]] = []
        headers: set[str] = set()
        spelled: dict[str, str] = {}
        bad = False
        for i, req in enumerate(reqs):
            if not isinstance(req, dict):
                self.note(f"{where}[{i}]", "expected a mapping of scheme names")
                bad = True
                continue
            kinds = set()
            for name in req:
                scheme = self.schemes.get(name)
                if scheme is None:
                    defined = ", ".join(sorted(self.schemes)) or "none"
                    self.note(f"{where}[{i}].{name}",
                              f"no security scheme is named {name!r} (defined: {defined})")
                    bad = True
                elif isinstance(scheme, str):
                    self.note(f"{where}[{i}].{name}", scheme)
                    bad = True
                else:
                    kinds.add(scheme.kind)
                    if scheme.header is not None:
                        headers.add(scheme.header.lower())
                        spelled[scheme.header.lower()] = scheme.header
            alternatives.append(frozenset(kinds))
        if bad:
            return None
        if len(headers) > 1:
            names = ", ".join(sorted(spelled[h] for h in headers))
            self.note(where, f"API keys in different headers ({names}) for one operation are "
                             "not supported; use one header")
            return None
        header = spelled[headers.pop()] if headers else WSO2_API_KEY_HEADER
        security = _combine_alternatives(alternatives, header)
        if security is None:
            self.note(where, "these alternatives cannot be expressed: schemes combine as in "
                             "WSO2 (every mandatory scheme, or any one optional scheme), so "
                             "use one requirement, or alternatives of one scheme each")
            return None
        if security.jwt is not Mode.DISABLED:
            self.jwt_wheres.append(where)
        return security

    def _api_security(self) -> tuple[Security, bool]:
        """The API's own schemes and whether the definition declares any security at all."""
        doc = self.doc
        if doc.get("x-wso2-disable-security") is True:
            return OPEN, True
        declares = False
        base = OPEN
        if "security" in doc:
            declares = True
            found = self._requirements(doc["security"], "security")
            if found is None:
                raise _Broken("")
            base = found
        mtls = base.mutual_ssl
        if "x-wso2-mutual-ssl" in doc:
            declares = True
            value = doc["x-wso2-mutual-ssl"]
            if value not in ("mandatory", "optional"):
                self.note("x-wso2-mutual-ssl",
                          f"must be 'mandatory' or 'optional', got {value!r}")
                raise _Broken("")
            mtls = Mode(value)
        if "x-wso2-application-security" not in doc:
            if "x-wso2-mutual-ssl" in doc and _any_optional(base):
                # x-wso2-mutual-ssl beside alternatives from `security`: mTLS AND (a OR b).
                self.note("security", _MIXED)
                raise _Broken("")
            return Security(
                mtls, base.api_key, base.api_key_header, base.jwt, base.basic_auth
            ), declares
        where = "x-wso2-application-security"
        app = doc[where]
        if not isinstance(app, dict):
            self.note(where, "expected a mapping with 'security-types' (and 'optional')")
            raise _Broken("")
        types = app.get("security-types", [])
        optional = app.get("optional", False)
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            self.note(f"{where}.security-types", f"expected a list of names, got {types!r}")
            raise _Broken("")
        if not isinstance(optional, bool):
            self.note(f"{where}.optional", f"expected true or false, got {optional!r}")
            raise _Broken("")
        declares = True
        api_key = jwt = basic = Mode.DISABLED
        kinds = []
        for i, kind in enumerate(types):
            if kind == "api_key":
                kinds.append("apikey")
            elif kind == "basic_auth":
                kinds.append("basic")
            elif kind == "oauth2":
                kinds.append("jwt")
                self.jwt_wheres.append(f"{where}.security-types[{i}]")
            else:
                self.note(f"{where}.security-types[{i}]",
                          f"{kind!r} is not supported (use api_key, basic_auth or oauth2)")
                raise _Broken("")
        if len(set(kinds)) > 1 and not optional and mtls is not Mode.DISABLED:
            self.note(where, _MIXED)
            raise _Broken("")
        mode = Mode.OPTIONAL if (optional or len(set(kinds)) > 1) else Mode.MANDATORY
        if "apikey" in kinds:
            api_key = mode
        if "jwt" in kinds:
            jwt = mode
        if "basic" in kinds:
            basic = mode
        return Security(mtls, api_key, WSO2_API_KEY_HEADER, jwt, basic), declares

    def _operations(self) -> tuple[Operation, ...]:
        paths = self.doc.get("paths") or {}
        api_open = self.doc.get("x-wso2-disable-security") is True
        out = []
        for template, raw_item in paths.items() if isinstance(paths, dict) else ():
            item, item_file = self.deref_in(raw_item)
            if not isinstance(item, dict):
                continue
            if not template.startswith("/"):
                self.note(f"paths.{template}", "a path template must start with '/'")
                continue
            path_open = item.get("x-wso2-disable-security") is True
            for method in METHODS:
                op = self.deref(item.get(method), item_file)
                if not isinstance(op, dict):
                    continue
                where = f"paths.{template}.{method}"
                security: Security | None
                if op.get("x-wso2-disable-security") is True:
                    security = OPEN
                elif "security" in op:
                    security = self._requirements(op["security"], f"{where}.security")
                    if security is None:
                        continue
                elif path_open:
                    security = OPEN
                else:
                    security = OPEN if api_open else None
                # The Microgateway reads API Manager's name first at this level.
                tier, tier_from = self._throttling_tier(
                    op, ("paths", template, method), ("x-throttling-tier",
                                                      "x-wso2-throttling-tier")
                )
                out.append(Operation(method.upper(), template, security, where, tier, tier_from))
        return tuple(out)


_MIXED = (
    "mutual SSL together with several application security types that are not optional "
    "cannot be expressed: schemes combine as in WSO2 (every mandatory scheme, or any one "
    "optional scheme); use one application security type, or make it optional"
)


def json_pointer(*parts: str) -> str:
    """RFC 6901: ``("paths", "/pet/{id}", "get")`` -> ``/paths/~1pet~1{id}/get``."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _any_optional(s: Security) -> bool:
    return Mode.OPTIONAL in (s.api_key, s.jwt, s.basic_auth)


def _combine_alternatives(alternatives: list[frozenset[str]], header: str) -> Security | None:
    """Alternatives of scheme sets (OR of ANDs) -> modes, when the WSO2 rule can express them.

    An alternative that holds another adds nothing (``[{mtls}, {mtls, key}]`` is
    ``mtls``). What is left must be one set (every scheme mandatory) or sets of
    one scheme each (every scheme optional: any one passes); an empty set opens
    the operation.
    """
    if not alternatives:
        return OPEN
    unique = set(alternatives)
    minimal = [a for a in unique if not any(b < a for b in unique)]
    if frozenset() in minimal:
        return OPEN
    if len(minimal) == 1:
        mode = Mode.MANDATORY
    elif all(len(a) == 1 for a in minimal):
        mode = Mode.OPTIONAL
    else:
        return None
    kinds = frozenset().union(*minimal)

    def m(kind: str) -> Mode:
        return mode if kind in kinds else Mode.DISABLED

    if "apikey" not in kinds:
        header = WSO2_API_KEY_HEADER
    return Security(m("mtls"), m("apikey"), header, m("jwt"), m("basic"))


# --------------------------------------------------------------------------- into the config


def for_api(r: TableReader) -> Definition | None:
    """The definition an ``[[apis]]`` table names (config reader ``r``); None if unusable."""
    r.seen.add("openapi")
    raw = r.table.get("openapi")
    if not isinstance(raw, str):
        r.problem("openapi", f"expected the definition's file name, got {raw!r}")
        return None
    file = resolve(r.file, raw)
    if file is None:
        r.problem("openapi", f"not a usable path: {raw!r}")
        return None

    def report(where: str, what: str) -> None:
        r.problem("openapi", f"{file}: {where}: {what}")

    definition = read(file, report)
    if definition is None:
        return None
    table = r.table
    missing = False
    if "context" not in definition.values and "context" not in table:
        report("(top)", "names no context: add x-wso2-basePath (or a servers URL, or basePath "
                        "in OpenAPI 2.0), or set context in the [[apis]] table")
        missing = True
    if "backends" not in definition.values and "backend" not in table and "backends" not in table:
        report("(top)", "names no backend: add x-wso2-production-endpoints (or an absolute "
                        "servers URL, or host in OpenAPI 2.0), or set backend in the [[apis]] "
                        "table")
        missing = True
    return None if missing else definition


def merged(definition: Definition, table: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[[apis]]`` table the definition implies, with the keys written in TOML on top."""
    values = dict(definition.values)
    if "backend" in table or "backends" in table:
        values.pop("backends", None)
        values.pop("backend_mode", None)
    values.update(table)
    values.pop("openapi", None)
    return values


def api_security(api: ApiConfig) -> Security:
    """The schemes an ``ApiConfig`` (or an operation's variant of it) applies."""
    return Security(
        api.mutual_ssl,
        api.api_key,
        api.api_key_header,
        getattr(api, "jwt", Mode.DISABLED),
        api.basic_auth,
    )


def _has_jwt() -> bool:
    import dataclasses

    return any(f.name == "jwt" for f in dataclasses.fields(ApiConfig))


def variant(api: ApiConfig, security: Security) -> ApiConfig:
    """``api`` with ``security``'s schemes: what an operation with its own security runs."""
    import dataclasses

    changes: dict[str, Any] = {
        "mutual_ssl": security.mutual_ssl,
        "api_key": security.api_key,
        "api_key_header": security.api_key_header,
        "basic_auth": security.basic_auth,
    }
    if _has_jwt():
        changes["jwt"] = security.jwt
    return dataclasses.replace(api, **changes)


#: What sets an operation's config apart: its own security, its own throttling policy.
OperationKey = tuple[Security | None, ResourceThrottle | None]


def operation_key(api: ApiConfig, op: Operation) -> OperationKey | None:
    """What makes an operation's config differ from its API's (None: nothing): its own
    security, and its own throttling policy unless the API names one (then the API's
    applies to every operation, as in WSO2 Microgateway)."""
    throttle = None
    if op.throttling_tier is not None and api.throttling_tier is None \
            and op.throttling_tier != UNLIMITED:
        throttle = ResourceThrottle(op.throttling_tier, op.method, op.template)
    if op.security is None and throttle is None:
        return None
    return (op.security, throttle)


def operation_config(api: ApiConfig, op: Operation) -> ApiConfig:
    """The config (and so the pipeline) an operation runs: ``api`` itself, or its variant
    with the operation's own security and throttling policy (``operation_key``)."""
    key = operation_key(api, op)
    if key is None:
        return api
    import dataclasses

    security, throttle = key
    out = variant(api, security) if security is not None else api
    if throttle is not None:
        out = dataclasses.replace(out, resource_throttle=throttle)
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
) -> ApiConfig:
    """Finish an ``ApiConfig`` read from a definition: header, bearer, operations, origin."""
    import dataclasses

    file = definition.file

    def report(where: str, what: str) -> None:
        r.problem("openapi", f"{file}: {where}: {what}")

    api = dataclasses.replace(api, api_key_header=definition.security.api_key_header)
    has_jwt = _has_jwt()
    if definition.security.jwt is not Mode.DISABLED and has_jwt:
        jwt: dict[str, Any] = {"jwt": definition.security.jwt}
        api = dataclasses.replace(api, **jwt)
    if not has_jwt or not jwt_issuers:
        for where in definition.jwt_wheres:
            report(where, "bearer security needs [[jwt_issuers]]")
    own = api_security(api)
    operations = tuple(
        dataclasses.replace(op, security=None) if op.security == own else op
        for op in definition.operations
    )
    if (
        own.open
        and not definition.declares_security
        and not toml_keys & {"mutual_ssl", "api_key", "jwt", "basic_auth"}
        and any(op.security is None for op in operations)
    ):
        report("security", "the definition declares no security, which WSO2 Microgateway "
                           "reads as OAuth2 (bearer tokens); write 'security: []' or "
                           "'x-wso2-disable-security: true' to serve it open, declare its "
                           "schemes, or set mutual_ssl / api_key in the [[apis]] table")
    if not operations:
        report("paths", "defines no operations, so nothing would be served")
    context_from = None if "context" in toml_keys else definition.context_from
    tier_from = "" if "throttling_tier" in toml_keys else definition.throttling_from
    return dataclasses.replace(
        api, operations=operations, openapi=Origin(file, context_from), throttling_from=tier_from
    )


# --------------------------------------------------------------------------- twistedgw routes


def describe_security(api: ApiConfig) -> str:
    """``mutual_ssl:mandatory api_key(X-API-Key):optional``, or ``open``."""
    parts = []
    if api.mutual_ssl is not Mode.DISABLED:
        aliases = f"[{','.join(sorted(api.aliases))}]" if api.aliases is not None else ""
        parts.append(f"mutual_ssl{aliases}:{api.mutual_ssl.value}")
    if api.api_key is not Mode.DISABLED:
        header = "" if api.api_key_header == WSO2_API_KEY_HEADER else f"({api.api_key_header})"
        parts.append(f"api_key{header}:{api.api_key.value}")
    jwt = getattr(api, "jwt", Mode.DISABLED)
    if jwt is not Mode.DISABLED:
        parts.append(f"jwt:{jwt.value}")
    if api.basic_auth is not Mode.DISABLED:
        parts.append(f"basic_auth:{api.basic_auth.value}")
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
    r = TableReader(r.file, merged(definition, r.table), r.path, r.problems, {"openapi"})
    api = read_table(r)
    if api is None:
        return None
    return apply(definition, api, r, toml_keys, jwt_issuers=has_jwt_issuers)
