"""``[apis.cors]`` (and WSO2's ``x-wso2-cors``): an API's CORS settings.

The gateway answers a browser's preflight itself and adds the ``Access-Control-*``
headers to the API's answers (``http/_cors.py``); this module reads and checks the
settings once per config load. A definition's ``x-wso2-cors`` is turned into the
same table (``from_wso2``), in any of the three spellings WSO2 writes its keys:
``access-control-allow-origins`` (Microgateway 3.x definitions),
``accessControlAllowOrigins`` (API Manager exports, Choreo Connect) and
``access_control_allow_origins`` (the Microgateway toolkit accepts it too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twistedgw.config._base import HEADER_RE, ProblemList, TableReader, quoted, string_list

#: What WSO2's gateways allow when an API names no methods or headers of its own (the
#: Microgateway toolkit's ``[corsConfiguration]`` and API Manager's ``[apim.cors]``).
WSO2_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")
WSO2_HEADERS = ("authorization", "Access-Control-Allow-Origin", "Content-Type", "SOAPAction")
ANY = "*"
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class CorsConfig:
    """One API's CORS settings, normalised for the per-request checks.

    ``origins`` holds serialised origins (``scheme://host[:port]``, lower case, no
    default port); ``any_origin`` is ``"*"``. ``methods`` compare exactly (as the Fetch
    standard does); ``headers`` are lower case. ``"*"`` in either allows any."""

    origins: frozenset[str]
    any_origin: bool = False
    methods: tuple[str, ...] = WSO2_METHODS
    headers: frozenset[str] = frozenset(h.lower() for h in WSO2_HEADERS)
    credentials: bool = False
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None  # seconds; None: no Access-Control-Max-Age

    @property
    def any_method(self) -> bool:
        return ANY in self.methods

    @property
    def any_header(self) -> bool:
        return ANY in self.headers


def normal_origin(text: str) -> str | None:
    """``text`` as a browser serialises an origin (lower case, no default port, no
    trailing ``/``), or None when it is not ``scheme://host[:port]``."""
    value = text.strip().rstrip("/")
    if "://" not in value or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment \
            or parts.username is not None or parts.password is not None:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def read_cors(r: TableReader) -> CorsConfig | None:
    """An ``[apis.cors]`` table; None if it cannot be used (every problem reported)."""
    origins = string_list(r, "allow_origins")
    methods = string_list(r, "allow_methods")
    headers = string_list(r, "allow_headers")
    expose = string_list(r, "expose_headers")
    credentials = r.get("allow_credentials", bool, False)
    max_age = r.get("max_age", int, None)  # type: ignore[arg-type]
    r.finish()
    ok = True
    if origins is None:
        r.problem("allow_origins", 'is required: the origins browsers may call the API from, '
                                   'such as ["https://app.example.com"] (or ["*"])')
        return None
    if not origins:
        r.problem("allow_origins", "an empty list allows no origin; remove the cors table to "
                                   "send no CORS headers")
        ok = False
    normal: set[str] = set()
    any_origin = False
    for i, origin in enumerate(origins):
        if origin.strip() == ANY:
            any_origin = True
            continue
        if origin.strip().lower() == "null":
            r.problem(f"allow_origins[{i}]", "'null' is the origin of sandboxed frames and "
                      "file: pages, which any page can produce; list real origins")
            ok = False
            continue
        if "*" in origin:
            r.problem(f"allow_origins[{i}]", f"{quoted(origin)}: a wildcard inside an origin is "
                      'not supported; list each origin, or allow any with "*"')
            ok = False
            continue
        found = normal_origin(origin)
        if found is None:
            if "://" not in origin:
                # WSO2's own samples write host names; neither gateway ever matches them.
                r.warning(f"allow_origins[{i}]", f"{quoted(origin)} is not an origin "
                          "(scheme://host[:port], as browsers send it), so no request "
                          f"matches it; did you mean 'https://{origin.strip()}'?")
                continue
            r.problem(f"allow_origins[{i}]", f"{quoted(origin)} is not an origin: write "
                      "scheme://host[:port], as browsers send it")
            ok = False
            continue
        normal.add(found)
    if any_origin and len(origins) > 1:
        r.problem("allow_origins", '"*" allows any origin: list it alone')
        ok = False
    if any_origin and credentials:
        r.problem("allow_credentials", 'cannot be true with allow_origins = ["*"]: browsers '
                  "refuse credentialed answers to any origin (and allowing every origin to "
                  "read answers made with the user's credentials would hand them to any "
                  "page); list the origins")
        ok = False
    method_list = WSO2_METHODS if methods is None else tuple(methods)
    for i, method in enumerate(method_list if methods is not None else ()):
        if method != ANY and not _TOKEN.match(method):
            r.problem(f"allow_methods[{i}]", f"not an HTTP method: {quoted(method)}")
            ok = False
    header_set = (frozenset(h.lower() for h in WSO2_HEADERS) if headers is None
                  else frozenset(h.strip().lower() for h in headers))
    for key, names in (("allow_headers", headers), ("expose_headers", expose)):
        for i, name in enumerate(names or ()):
            if name.strip() != ANY and not HEADER_RE.match(name.strip()):
                r.problem(f"{key}[{i}]", f"not a valid HTTP header name: {quoted(name)}")
                ok = False
    if max_age is not None and max_age < 0:
        r.problem("max_age", f"must not be negative, got {max_age}")
        ok = False
    if not ok:
        return None
    return CorsConfig(
        origins=frozenset(normal),
        any_origin=any_origin,
        methods=method_list,
        headers=header_set,
        credentials=credentials,
        expose_headers=tuple(h.strip() for h in expose or ()),
        max_age=max_age,
    )


# -------------------------------------------------------------------- x-wso2-cors

#: x-wso2-cors key (lower case, without '-' and '_') -> the [apis.cors] key.
_WSO2_KEYS = {
    "accesscontrolalloworigins": "allow_origins",
    "accesscontrolallowmethods": "allow_methods",
    "accesscontrolallowheaders": "allow_headers",
    "accesscontrolallowcredentials": "allow_credentials",
    "accesscontrolexposeheaders": "expose_headers",  # Choreo Connect
    "accesscontrolmaxage": "max_age",
}
_ENABLED = "corsconfigurationenabled"

Report = Callable[[str, str], None]


def _squash(key: str) -> str:
    return key.replace("-", "").replace("_", "").lower()


def from_wso2(
    value: Any, where: str, note: Report, warn: Report, pointer: Callable[..., str]
) -> dict[str, Any] | None:
    """The ``[apis.cors]`` table ``x-wso2-cors`` (``value``, at JSON pointer ``where``)
    stands for, or None: CORS off, or a problem (``note``-d with its pointer).

    ``corsConfigurationEnabled: false`` (API Manager exports write it) turns CORS off
    for the API, as WSO2 does (its gateways then apply their gateway-wide settings,
    which twistedgw does not have: a warning says so). Absent, it is true: the
    Microgateway serves an API's x-wso2-cors whatever that key says."""
    if not isinstance(value, Mapping):
        note(where, "expected a mapping with access-control-allow-origins (and methods, "
                    "headers, credentials)")
        return None
    table: dict[str, Any] = {}
    enabled = True
    for key, item in value.items():
        at = pointer(where, key)
        squashed = _squash(str(key))
        if squashed == _ENABLED:
            if not isinstance(item, bool):
                note(at, f"expected true or false, got {quoted(item)}")
                return None
            enabled = item
            continue
        toml_key = _WSO2_KEYS.get(squashed)
        if toml_key is None:
            warn(at, f"unknown x-wso2-cors key {quoted(key)} is ignored")
            continue
        if toml_key in table:
            note(at, f"{toml_key.replace('_', ' ')} is given twice (in two spellings); "
                     "keep one")
            return None
        if toml_key == "allow_credentials":
            if not isinstance(item, bool):
                note(at, f"expected true or false, got {quoted(item)}")
                return None
        elif toml_key == "max_age":
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                note(at, f"expected seconds (an integer >= 0), got {quoted(item)}")
                return None
        elif not isinstance(item, list) or not all(isinstance(v, str) for v in item):
            note(at, f"expected a list of strings, got {quoted(item)}")
            return None
        table[toml_key] = item
    if not enabled:
        warn(where, "x-wso2-cors: CORS is disabled here (corsConfigurationEnabled: false), "
                    "so no CORS headers are sent; WSO2's gateways then apply their "
                    "gateway-wide CORS settings, which twistedgw does not have")
        return None
    if "allow_origins" not in table:
        note(where, "names no origins: add access-control-allow-origins (the origins browsers "
                    "may call the API from)")
        return None
    # The [apis.cors] reader's checks, each problem named by the definition's own pointer.
    spelled = {_WSO2_KEYS[_squash(str(k))]: str(k) for k in value
               if _squash(str(k)) in _WSO2_KEYS}
    found = _Collected(Path(""))
    read_cors(TableReader(Path(""), dict(table), "", found))

    def place(key: str) -> str:
        name, _, index = key.partition("[")
        parts: list[str | int] = [spelled.get(name, name)]
        if index:
            parts.append(int(index.rstrip("]")))
        return str(pointer(where, *parts))

    for key, message in found.said:
        note(place(key), message)
    for key, message in found.noted:
        warn(place(key), message)
    if found.said:
        return None
    # Entries that only warned (host names without a scheme) match nothing: leave them out,
    # so the [apis] reader does not say it again under a key the TOML does not have.
    origins = [o for o in table["allow_origins"] if o.strip() == ANY or "://" in o]
    if not origins:
        # WSO2 loads such a definition (its own samples write host names) and no browser
        # origin ever matches them: a warning, and the API is served without CORS.
        warn(pointer(where, spelled["allow_origins"]), "no entry is an origin "
             "(scheme://host[:port]), so no browser could call the API: it is served "
             "without CORS; write origins as https://host to allow them")
        return None
    table["allow_origins"] = origins
    return table


class _Collected(ProblemList):
    """Problems and warnings as (key, message), for ``from_wso2`` to place by pointer."""

    def __init__(self, file: Path) -> None:
        super().__init__(file)
        self.said: list[tuple[str, str]] = []
        self.noted: list[tuple[str, str]] = []

    def add(self, where: str, message: str) -> None:
        self.said.append((where, message))

    def warn(self, where: str, message: str) -> None:
        self.noted.append((where, message))
