"""One normalised path, used both to choose the API and to build the backend URL.

Policy bypasses come from a router and a backend disagreeing about a path
(``/open/../secret``, ``/secret%2Fx``, ``/SECRET``, ``/secret;x``). So the
gateway decides what a path *is* once, routes on that, and sends the backend
exactly that path: it has nothing left to reinterpret.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from twistedgw import _hosts, _query, errors
from twistedgw._memo import remember
from twistedgw.config import ApiConfig, Operation
from twistedgw.errors import GatewayError

if TYPE_CHECKING:
    from twistedgw.pipeline import Pipeline

_T = TypeVar("_T", bound=tuple)  # type: ignore[type-arg]  # ``Router.parts``' class

class BadPath(ValueError):
    """The request target cannot be normalised safely; answered with 400."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters allowed raw in a path segment (RFC 3986 pchar minus '%', plus '/').
_PCHAR = frozenset(b"!$&'()*+,;=:@/") | _UNRESERVED
# Percent-escapes that would change the path's structure if a backend decoded them.
_FORBIDDEN_ESCAPES = {0x2F: "'/'", 0x5C: "'\\'", 0x00: "NUL", 0x3B: "';'"}
# Raw bytes a path may hold before escapes are read: printable ASCII but backslash.
_PRINTABLE = bytes(b for b in range(0x21, 0x7F) if b != 0x5C)
_PATH_BYTES = bytes(_PCHAR) + b"%"
# Each escape's normal form by its value: unreserved characters decoded, the rest as
# "%XX" in upper case; a forbidden one as a control character that names it (no raw
# control character reaches ``_unescape``: ``_normalise`` refused them).
_ESCAPE_MARKS = {value: chr(1 + i) for i, value in enumerate(_FORBIDDEN_ESCAPES)}
_FORBIDDEN_MARKS = re.compile("[" + "".join(_ESCAPE_MARKS.values()) + "]")
_MARKED = {mark: _FORBIDDEN_ESCAPES[value] for value, mark in _ESCAPE_MARKS.items()}
# ``str.translate``'s table: raw characters as they are, then escape 0x00-0xFF at 0x100 on.
_NORMAL_FORMS = [chr(c) for c in range(0x100)] + [
    _ESCAPE_MARKS.get(value) or (chr(value) if value in _UNRESERVED else f"%{value:02X}")
    for value in range(0x100)
]
_UNRESERVED_ESCAPE = re.compile(
    rb"%(?:" + b"|".join(b"%02X" % c for c in sorted(_UNRESERVED)) + rb")", re.IGNORECASE
)


def _unescape(path: bytes) -> bytes:
    """``path`` (printable ASCII, no backslash) with each escape in its normal form;
    BadPath for a malformed escape, else for the first forbidden one in the path.

    Why C passes only: a 64 KiB request line holds ~21,800 escapes, and reading them one
    at a time in Python cost ~5 ms (the 10 ms rule, tests/test_reactor_budget.py). Each
    '%XY' becomes the codec's '\\u01XY', so an escape decodes to one character in
    U+0100-U+01FF (either case of hex, none of them a raw character of the path), and a
    malformed one fails to decode; one ``translate`` gives every character its normal
    form: ~1.5 ms for a 64 KiB path of escapes, whatever their mix.
    """
    try:
        marked = path.replace(b"%", b"\\u01").decode("raw_unicode_escape")
    except UnicodeDecodeError:
        raise BadPath("request path contains a malformed percent-escape") from None
    normal = marked.translate(_NORMAL_FORMS)
    forbidden = _FORBIDDEN_MARKS.search(normal)
    if forbidden is not None:
        raise BadPath(f"request path contains an encoded {_MARKED[forbidden[0]]}")
    return normal.encode("ascii")


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


_PERCENT, _SEMICOLON, _QUESTION = ord("%"), ord(";"), ord("?")


def normalise(path: bytes) -> bytes:
    """Normalise a request path (no query); raise BadPath when it is unsafe or malformed.

    Steps: require an absolute path; refuse control characters, backslashes and
    escaped '/', '\\', NUL or ';'; decode escapes of unreserved characters and
    upper-case the rest; drop ``;params`` from each segment; collapse empty
    segments; resolve ``.`` and ``..`` (refusing to climb above the root).
    Results for short paths are cached (the guard and the router both ask, and
    callers repeat paths); at most 4096 entries of at most 512 bytes, so unique
    long paths cannot grow memory. Refusals are never cached.
    """
    normal = _normal_paths.get(path)
    return normal if normal is not None else _normalise_remembered(path)


_CACHED_PATH_BYTES = 512
_SLASHES = re.compile(rb"//+")


def _normalise(path: bytes) -> bytes:
    # Whole-path passes are C loops (translate, split, join): a path as long as the
    # header limit allows costs well under a millisecond (the 10 ms rule).
    if not path.startswith(b"/"):
        raise BadPath("request target must be an absolute path")
    odd = path.translate(None, _PRINTABLE)
    if odd:
        if any(b < 0x21 or b == 0x7F or b == 0x5C for b in odd):
            raise BadPath("request path contains a control character, space or backslash")
        raise BadPath("request path contains a raw non-ASCII byte")
    # (Ints and ``find``: on Python 3.11 ``b"x" in path`` first tries its argument as an
    # integer and formats the TypeError it raises, ~1.8k instructions per test.)
    if _PERCENT in path:
        path = _unescape(path)
    odd = path.translate(None, _PATH_BYTES)
    if odd:
        raise BadPath(f"request path contains the character {chr(odd[0])!r}")
    if _SEMICOLON not in path and path.find(b"//") < 0 and path.find(b"/.") < 0:
        return path  # nothing below would change it
    if b"//" in path:
        path = _SLASHES.sub(b"/", path)  # empty segments in one C pass, not one step each
    segments = path.split(b"/")[1:]
    if b";" in path:
        segments = [s.split(b";", 1)[0] for s in segments]
    if b".." not in segments:  # no segment to climb: what stays is a filter (C loops)
        out = [s for s in segments if s and s != b"."]
        if segments[-1] in (b"", b"."):
            out.append(b"")  # keep a trailing slash
        return b"/" + b"/".join(out)

    out = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (b"", b"."):
            if last:
                out.append(b"")  # keep a trailing slash
            continue
        if segment == b"..":
            if not out or out == [b""]:
                raise BadPath("request path climbs above the root")
            out.pop()
            if last:
                out.append(b"")
            continue
        out.append(segment)
    return b"/" + b"/".join(out)


#: Short paths' normal forms by the path (``normalise``): a plain dict, read by the
#: router's own ``get`` (a function cache's call costs twice the look-up), bounded:
#: emptied when full.
_normal_paths: dict[bytes, bytes] = {}
_NORMAL_PATHS_MAX = 4096


def _normalise_remembered(path: bytes) -> bytes:
    """``_normalise(path)``, remembered in ``_normal_paths`` when the path is short (a
    refusal raises and is not remembered)."""
    normal = _normalise(path)
    if len(path) <= _CACHED_PATH_BYTES:
        remember(_normal_paths, path, normal, _NORMAL_PATHS_MAX)
    return normal


def authz_path(path: bytes) -> bytes:
    """The path the authz endpoint may judge: ``path`` itself, already in normal form.

    Why: with NGINX ``auth_request`` (Envoy ``ext_authz``, Traefik ``forwardAuth``)
    the gateway only judges; the front proxy routes on its own reading of the path
    and forwards the raw path to a backend that routes on yet another. If the
    gateway judged the normalised form of ``/secure/admin/..;/public/`` it would
    judge the open ``/secure/public`` while the backend serves ``/secure/admin``.
    So a path whose normalised form differs from the bytes forwarded (dot segments
    in any spelling: ``.``, ``..``, ``%2e``, ``.;x``, ``..;``; ``;`` parameters;
    escapes of unreserved characters; empty segments; lower-case escapes) is
    refused, never judged as something else. Only then do the raw and the judged
    path select the same API whatever the contexts and whatever prefix router
    sits behind the proxy. Direct mode keeps normalising (it forwards what it judged).
    """
    clean = normalise(path)  # raises BadPath for what is refused everywhere
    if clean == path:
        return clean
    segments = path.split(b"/")[1:]
    if b";" in path:
        why = "a ';' parameter"
    elif b"." in segments or b".." in segments:
        why = "a '.' or '..' segment"
    elif _UNRESERVED_ESCAPE.search(path) is not None:
        why = "an escaped unreserved character such as %2E (a dot) or %41"
    elif b"" in segments[:-1]:
        why = "an empty segment"
    else:
        why = "a percent-escape in lower case"
    raise BadPath(
        f"request path has {why}: the proxy forwards it as sent, so it is not judged"
        f" as {clean.decode('latin-1')!r}"
    )


class Route(NamedTuple):
    """Where one request goes: its API, the backend URL and the compiled pipeline to run."""

    api: ApiConfig
    backend_target: bytes  # absolute URL for the backend, path and query included
    pipeline: Pipeline | None = None  # None only for a Router built without pipelines
    # Other backends to try, in order, when the first cannot be reached (``backends``).
    alternatives: tuple[bytes, ...] = ()
    # APIs from an OpenAPI definition: the operation matched, and the API config whose
    # schemes apply to it (the API itself, or its variant for the operation's security);
    # ``pipeline`` is that config's.
    operation: Operation | None = None
    effective: ApiConfig | None = None
    # Set when the API serves only its defined operations and none matched: answer this
    # error (404 900906, or 405 with ``allow`` as the Allow header) instead of forwarding.
    unmatched: GatewayError | None = None
    allow: bytes = b""
    # The sandbox endpoint's targets in the order to try them (empty: there is none), for
    # a caller whose credential is a sandbox one (``Call.sandbox``).
    sandbox: tuple[bytes, ...] = ()

    @property
    def security_api(self) -> ApiConfig:
        """The API config whose schemes (and pipeline) apply to this request."""
        return self.effective if self.effective is not None else self.api


def _target(backend: str, rest: bytes, query: bytes | None) -> bytes:
    encoded, bare = _backend_bytes(backend)
    target = encoded + rest
    if not rest and bare:
        target += b"/"
    if query is not None:
        target += b"?" + query
    return target


@functools.lru_cache(maxsize=1024)
def _backend_bytes(backend: str) -> tuple[bytes, bool]:
    """A backend URL as bytes, and whether it has no path: once per URL, not per request.
    (A ``resource:`` backend has none: its target is ``resource:SPEC/path?query``.)"""
    return backend.encode(), not backend.split("://", 1)[-1].count("/")


_PARAM = re.compile(r"\{[^{}/]*\}")

#: An operation's match: the operation, its effective API config and that config's pipeline.
_Found = tuple[Operation, ApiConfig, "Pipeline | None"]


def _piece_fits(pieces: tuple[bytes, ...], least: int, segment: bytes) -> bool:
    """Whether ``segment`` is ``pieces[0] {p} pieces[1] {p} ... pieces[-1]``, each
    parameter standing for one or more bytes (OpenAPI's ``[^/]+``).

    Linear in the segment: each literal piece is placed at its first place that leaves
    every earlier parameter a byte, and earliest is never worse for the pieces after it.
    A backtracking regex (``[^/]+-[^/]+-[^/]+``) was cubic here: 5 s for a 3 KB path.
    """
    if len(segment) < least:
        return False
    first, last = pieces[0], pieces[-1]
    if not segment.startswith(first) or not segment.endswith(last):
        return False
    pos, end = len(first), len(segment) - len(last)
    for piece in pieces[1:-1]:
        found = segment.find(piece, pos + 1, end - 1)
        if found < 0:
            return False
        pos = found + len(piece)
    return pos < end


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment of a template: a literal, or literal pieces around parameters."""

    literal: bytes | None  # the whole segment when it has no parameter
    lowered: bytes | None  # the literal in lower case
    pieces: tuple[bytes, ...] = ()  # around the parameters (one more than parameters)
    lowered_pieces: tuple[bytes, ...] = ()
    least: int = 0  # the shortest segment the pieces and parameters fit

    @classmethod
    def of(cls, text: str) -> _Segment:
        pieces = tuple(p.encode() for p in _PARAM.split(text))
        if len(pieces) == 1:
            return cls(pieces[0], pieces[0].lower())
        least = sum(map(len, pieces)) + len(pieces) - 1
        return cls(None, None, pieces, tuple(p.lower() for p in pieces), least)

    @property
    def whole_parameter(self) -> bool:
        return self.pieces == (b"", b"")

    def fits(self, segment: bytes, lowered: bytes) -> tuple[bool, bool]:
        """(whether ``segment`` fits ignoring case, whether it fits as written)."""
        if self.literal is not None:
            return lowered == self.lowered, segment == self.literal
        if self.whole_parameter:
            fits = bool(segment)
            return fits, fits
        if not _piece_fits(self.lowered_pieces, self.least, lowered):
            return False, False
        return True, _piece_fits(self.pieces, self.least, segment)


@dataclass(frozen=True)
class _Template:
    """One path template of a definition and its operations by method."""

    template: str
    segments: tuple[_Segment, ...]
    rank: tuple[int, ...]  # per segment: 0 literal, 1 templated; lower is more specific
    methods: dict[bytes, _Found]
    allow: bytes
    first: bytes | None  # the first segment, lower-cased, when it is literal

    def fits(self, segments: list[bytes], lowered: list[bytes]) -> tuple[bool, bool]:
        """(whether the path's segments fit ignoring case, whether they fit as written);
        the caller has checked that the counts agree. Segment by segment, so no
        parameter can ever stretch over another's bytes."""
        exact = True
        for template, segment, low in zip(self.segments, segments, lowered, strict=True):
            loose, strict = template.fits(segment, low)
            if not loose:
                return False, False
            exact = exact and strict
        return True, exact


class _Templates:
    """An API's templates indexed by segment count and first segment, so a request is
    matched against the few templates that could match, not all of them."""

    def __init__(self, templates: list[_Template]) -> None:
        by_count: dict[int, list[_Template]] = {}
        for t in templates:
            by_count.setdefault(len(t.rank), []).append(t)
        self._index: dict[int, tuple[dict[bytes, list[_Template]], list[_Template]]] = {}
        for count, group in by_count.items():
            wild = [t for t in group if t.first is None]
            literal: dict[bytes, list[_Template]] = {}
            for t in group:
                if t.first is not None:
                    literal.setdefault(t.first, []).append(t)
            merged = {k: sorted(v + wild, key=lambda t: t.rank) for k, v in literal.items()}
            self._index[count] = (merged, sorted(wild, key=lambda t: t.rank))
        # The trims check (#23 item 10), only where operations differ in security: the
        # lower-cased literal last segments a trimming backend could be steered to.
        kinds = {_security_of(found[1]) for t in templates for found in t.methods.values()}
        self.guarded: frozenset[bytes] = frozenset(
            t.segments[-1].lowered  # type: ignore[misc]
            for t in templates
            if len(kinds) > 1 and t.segments and t.segments[-1].lowered is not None
        )

    def candidates(self, rest: bytes) -> list[_Template]:
        """Templates that could match ``rest`` (no trailing '/'), most specific first."""
        count = 0 if rest == b"/" else rest.count(b"/")
        entry = self._index.get(count)
        if entry is None:
            return []
        merged, wild = entry
        if not count:
            return wild or merged.get(b"", [])
        first = rest[1:].split(b"/", 1)[0].lower()
        return merged.get(first, wild)


def _compile_templates(
    api: ApiConfig, pipelines: Mapping[ApiConfig, Pipeline]
) -> list[_Template]:
    """One ``_Template`` per path template of ``api``, with each method's operation."""
    from twistedgw.config import operation_config, operation_key

    variants: dict[object, tuple[ApiConfig, Pipeline | None]] = {}
    grouped: dict[str, dict[bytes, _Found]] = {}
    own = pipelines.get(api)  # once: hashing an ApiConfig hashes all its operations
    for op in api.operations or ():
        effective, pipeline = api, own
        key = operation_key(api, op)  # its own security or throttling policy
        if key is not None:
            if key not in variants:
                other = operation_config(api, op)
                variants[key] = (other, pipelines.get(other))
            effective, pipeline = variants[key]
        grouped.setdefault(op.template, {})[op.method.encode()] = (op, effective, pipeline)
    out = []
    for template, methods in grouped.items():
        segments = template.rstrip("/").split("/")[1:] if template.rstrip("/") else []
        compiled = tuple(_Segment.of(segment) for segment in segments)
        rank = tuple(0 if c.literal is not None else 1 for c in compiled)
        names = set(methods)
        if b"GET" in names:
            names.add(b"HEAD")
        allow = b", ".join(sorted(names))
        first = compiled[0].lowered if compiled and compiled[0].lowered is not None else None
        out.append(_Template(template, compiled, rank, methods, allow, first))
    return out


def match_operation(
    templates: _Templates, rest: bytes, method: bytes
) -> _Found | _Template | None:
    """The operation for ``method`` on ``rest`` (the path below the context).

    Paths match case-sensitively, as OpenAPI says, and literal segments beat
    templated ones; the most specific template that matches the path decides:
    if it lacks the method, the answer is 405 (its ``_Template``). A path that
    a more specific template matches only when case is ignored matches nothing:
    with ``/admin`` (mTLS) and ``/{name}`` (open), ``/ADMIN`` must not reach a
    backend that ignores case under the open operation's security.
    """
    if len(rest) > 1 and rest.endswith(b"/"):
        rest = rest[:-1]
    if not rest:
        rest = b"/"
    candidates = templates.candidates(rest)
    if not candidates:
        return None
    segments = rest.split(b"/")[1:] if rest != b"/" else []
    lowered = [s.lower() for s in segments]
    for template in candidates:
        loose, strict = template.fits(segments, lowered)
        if not loose:
            continue
        if not strict:
            return None
        found = template.methods.get(method)
        if found is None and method == b"HEAD":
            found = template.methods.get(b"GET")
        return found if found is not None else template
    return None


def _security_of(api: ApiConfig) -> tuple[object, ...]:
    """What an operation's effective config demands of a caller (its schemes' modes)."""
    return (
        api.mutual_ssl,
        api.api_key,
        api.api_key_header,
        getattr(api, "jwt", None),
        getattr(api, "basic_auth", None),
    )


AMBIGUOUS = "ambiguous path"
_WHITESPACE_ESCAPES = frozenset(b"%%%02X" % b for b in range(0x21))  # %00-%20, as normalised
_MAX_TRIMS = 3


def _trailing_whitespace(segment: bytes) -> int:
    """Where the run of encoded whitespace (``%00``-``%20``) that ends ``segment`` starts."""
    end = len(segment)
    while end >= 3 and segment[end - 3 : end] in _WHITESPACE_ESCAPES:
        end -= 3
    return end


def _trims(segment: bytes) -> set[bytes]:
    """What a backend that trims might read ``segment`` as: without one trailing ``.``,
    ``.ext`` or ``~``, or its trailing encoded whitespace; up to three such trims in a
    row (``admin.json%20``)."""
    found: set[bytes] = set()
    frontier = {segment}
    for _ in range(_MAX_TRIMS):
        step: set[bytes] = set()
        for s in frontier:
            if s.endswith((b".", b"~")):
                step.add(s[:-1])
            dot = s.rfind(b".")
            if dot > 0:
                step.add(s[:dot])
            end = _trailing_whitespace(s)
            if end < len(s):
                step.add(s[:end])
        frontier = step - found - {b""}
        found |= frontier
        if not frontier:
            break
    return found


def _control_inside(rest: bytes) -> bool:
    """Whether ``rest`` holds an escape of a control byte or whitespace (``%00``-``%20``,
    ``%7F``) anywhere but in the run of encoded whitespace that ends the path."""
    end = _trailing_whitespace(rest)
    pos = rest.find(b"%", 0, end)
    while pos >= 0:
        escape = rest[pos : pos + 3]
        if escape in _WHITESPACE_ESCAPES or escape == b"%7F":
            return True
        pos = rest.find(b"%", pos + 3, end)
    return False


def _trim_target(templates: _Templates, path: bytes, method: bytes) -> tuple[object, ...] | None:
    """The security of the operation a trimmed ``path`` would reach when the template
    it matches (ignoring case, as a backend might) ends in a literal segment; else None."""
    for template in templates.candidates(path):
        segments = path.split(b"/")[1:]
        loose, _strict = template.fits(segments, [s.lower() for s in segments])
        if not loose:
            continue
        if template.segments[-1].literal is None:
            return None  # served by a parameter there: no literal it could be mistaken for
        found = template.methods.get(method)
        if found is None and method == b"HEAD":
            found = template.methods.get(b"GET")
        return _security_of(found[1]) if found is not None else None
    return None


def control_inside(templates: _Templates, rest: bytes) -> GatewayError | None:
    """400 for an escaped control byte or whitespace inside the path, on APIs that the
    trims check guards (``ambiguity``): there only trailing whitespace is read."""
    if templates.guarded and b"%" in rest:
        if len(rest) > 1 and rest.endswith(b"/"):
            rest = rest[:-1]
        if _control_inside(rest):
            return errors.bad_request(
                "request path has an encoded control character or whitespace inside a segment"
            )
    return None


def ambiguity(
    templates: _Templates, rest: bytes, method: bytes, found: _Found
) -> GatewayError | None:
    """#23 item 10: backends that trim a suffix (Spring's suffix patterns: CVE-2016-5007's
    class), a trailing dot or encoded whitespace would serve ``/pets/admin.json`` as the
    secured ``/pets/admin`` while the gateway matched an open ``/pets/{name}``. A path
    that some trims turn into a literal template whose security differs from the
    operation matched gets 404 900906; escaped control bytes or whitespace inside the
    path, 400. Only APIs whose operations differ in security pay anything."""
    guarded = templates.guarded
    if not guarded:
        return None
    if len(rest) > 1 and rest.endswith(b"/"):
        rest = rest[:-1]
    if "{" not in found[0].template.rstrip("/").rpartition("/")[2]:
        return None  # the path names a literal template itself: the operator's own choice
    head, _slash, last = rest.rpartition(b"/")
    mine = _security_of(found[1])
    for trimmed in _trims(last):
        if trimmed.lower() not in guarded:
            continue
        other = _trim_target(templates, head + b"/" + trimmed, method)
        if other is not None and other != mine:
            return errors.no_matching_resource(AMBIGUOUS)
    return None


_Candidate = tuple["tuple[str, ...] | None", ApiConfig, "Pipeline | None"]
#: A context, the same with its trailing "/", and its APIs.
_Prefix = tuple[bytes, bytes, list[_Candidate]]


class Router:
    """Longest-context match on segment boundaries, case-insensitively.

    Contexts match case-insensitively so that ``/PETSTORE`` cannot slip past a
    protected ``/petstore`` to a catch-all API whose backend ignores case.
    Each context holds its APIs as (hosts, api, pipeline) candidates, those with
    ``hosts`` first: the request's host picks one, else the API without hosts,
    else none (404; a shorter context is not tried, so a host cannot reach
    another API's context by missing this one's hosts).
    An API read from an OpenAPI definition serves only its operations (when the
    request's method is given); an API with several backends spreads requests
    round-robin (``load_balance``) or prefers them in order (``failover``).
    """

    def __init__(
        self, apis: Iterable[ApiConfig], pipelines: Mapping[ApiConfig, Pipeline] | None = None
    ) -> None:
        ordered = sorted(apis, key=lambda a: len(a.context), reverse=True)
        pipelines = pipelines or {}
        table: dict[bytes, list[_Candidate]] = {}
        for a in ordered:
            table.setdefault(a.context.lower().encode(), []).append(
                (a.hosts, a, pipelines.get(a))
            )
        for candidates in table.values():
            candidates.sort(key=lambda c: c[0] is None)
        self._apis = list(table.items())
        # Each context with its trailing "/" for the segment-boundary test, built once.
        self._prefixes = [(c, c + b"/", candidates) for c, candidates in self._apis]
        # The same, by the context's first segment (issue 27 item 4): only contexts that
        # share a path's first segment can hold it, so a request looks at those (longest
        # first, as above) and then at "/", never at every API.
        by_segment: dict[bytes, list[_Prefix]] = {}
        root: list[_Prefix] = []
        # A context whose one API has no hosts, no operations and one backend (most of
        # them): its route needs no host match, no operation match and no turn, only the
        # backend URL: (API, pipeline, the backend URL as bytes, whether it has no path).
        self._sole: dict[bytes, tuple[ApiConfig, Pipeline | None, bytes, bool]] = {}
        for context, _prefix, candidates in self._prefixes:
            if len(candidates) == 1 and candidates[0][0] is None:
                api, pipeline = candidates[0][1], candidates[0][2]
                if (
                    api.operations is None and len(api.endpoints) == 1 and api.sandbox is None
                    and api.api_key_query is None
                ):
                    self._sole[context] = (api, pipeline, *_backend_bytes(api.backend))
        for entry in self._prefixes:
            if entry[0] == b"/":
                root.append(entry)
            else:
                by_segment.setdefault(_first_segment(entry[0]), []).append(entry)
        self._by_segment = {segment: [*entries, *root] for segment, entries in by_segment.items()}
        # A first segment that only one context starts with, that context being that one
        # segment (``/bench``) with a ``_sole`` API: every normalised path under it routes
        # there, with no other context to try and no prefix to compare (``parts``): the
        # API, its pipeline, the backend URL with a "/" (what a path's segments after the
        # first follow) and the backend target of the context itself (``/bench``).
        self._sole_segments: dict[bytes, tuple[ApiConfig, Pipeline | None, bytes, bytes]] = {}
        for segment, entries in by_segment.items():
            if len(entries) == 1 and entries[0][0] == b"/" + segment and (
                entries[0][0] in self._sole
            ):
                api, pipeline, backend, bare = self._sole[entries[0][0]]
                self._sole_segments[segment] = (
                    api, pipeline, backend + b"/", backend + b"/" if bare else backend
                )
        self._root = root
        self.uses_hosts = any(a.hosts is not None for a in ordered)
        # By the API's identity: APIs with distinct hosts share a context.
        self._templates = {
            id(a): _Templates(_compile_templates(a, pipelines))
            for a in ordered
            if a.operations is not None
        }
        # Per API config (the API's, or an operation's variant): its production and
        # sandbox endpoints; one round-robin turn per distinct endpoint.
        self._plans: dict[int, _Plan] = {}
        self._backends: dict[tuple[tuple[str, ...], str], _Backends] = {}

    def parts(
        self, cls: type[_T], runtime: object, target: bytes, method: bytes, host: str | None
    ) -> _T:
        """An origin-form ``target`` split, its path normalised and routed, in one call (the
        HTTP/1.1 front's, once per request), as the front keeps it: a ``cls`` tuple (the
        resource's ``Routed``) of ``runtime``, its raw path, normalised path (None:
        refused), query (None: none), route, why the path was refused and ``host`` (None
        when the path was refused). Built here once, not returned and repacked."""
        if _QUESTION in target:  # (an int: see ``_normalise``)
            raw_path, _sep, query = target.partition(b"?")
            query_or_none: bytes | None = query
        else:  # most targets: no query, nothing to split
            raw_path = target
            query_or_none = None
        path = _normal_paths.get(raw_path)  # ``normalise``, written out
        if path is None:
            try:
                path = _normalise_remembered(raw_path)
            except BadPath as e:
                return _new_route(  # type: ignore[no-any-return]
                    cls, (runtime, raw_path, None, query_or_none, None, str(e), None)
                )
        # The first segment as sent is looked up first: the table's keys are lower-case,
        # so a hit is one, and most paths are written as the context is (no ``lower``).
        pieces = path.split(b"/", 2)  # b"", the first segment, the rest (if any)
        sole = self._sole_segments.get(pieces[1])
        if sole is None:
            sole = self._sole_segments.get(pieces[1].lower())
            if sole is None:
                return _new_route(cls, (  # type: ignore[no-any-return]
                    runtime, raw_path, path, query_or_none,
                    self.route(path, query_or_none, method, host), None, host,
                ))
        # ``route``'s ``_sole`` case, its context known from the first segment: the
        # backend URL and what follows the context (``route``'s ``rest``, a "/" first).
        api, pipeline, slashed, whole = sole
        target = slashed + pieces[2] if len(pieces) == 3 else whole
        if query_or_none is not None:
            target += b"?" + query_or_none
        return _new_route(cls, (  # type: ignore[no-any-return]
            runtime, raw_path, path, query_or_none,
            _new_route(Route, (api, target, pipeline, (), None, None, None, b"", ())),
            None, host,
        ))

    def route(
        self,
        path: bytes,
        query: bytes | None,
        method: bytes | None = None,
        host: str | None = None,
    ) -> Route | None:
        """``path`` must already be normalised. Without ``method``, operations are not
        matched (the API's own schemes and pipeline apply). ``host`` is in _hosts.py's
        one spelling (None: the request named none, and only APIs without ``hosts``
        serve it)."""
        lowered = path.lower()
        for context, prefix, candidates in self._by_segment.get(
            lowered[1:].partition(b"/")[0], self._root  # ``_first_segment``, written out
        ):
            if context == b"/" or lowered == context or lowered.startswith(prefix):
                sole = self._sole.get(context)
                if sole is not None:
                    api, pipeline, backend, bare = sole
                    rest = path[len(context) :] if context != b"/" else path
                    target = backend + rest
                    if bare and not rest:
                        target += b"/"
                    if query is not None:
                        target += b"?" + query
                    return _new_route(  # type: ignore[no-any-return]
                        Route, (api, target, pipeline, (), None, None, None, b"", ())
                    )
                chosen = _by_host(candidates, host)
                if chosen is None:
                    return None
                api, pipeline = chosen
                rest = path[len(context) :] if context != b"/" else path
                operation = effective = None
                if method is not None and api.operations is not None:
                    templates = self._templates[id(api)]
                    refused = control_inside(templates, rest)
                    if refused is not None:
                        return Route(api, b"", pipeline, unmatched=refused)
                    found = match_operation(templates, rest, method)
                    if found is None:
                        return Route(api, b"", pipeline, unmatched=errors.no_matching_resource(
                            f"no operation of {api.label} matches {path.decode('latin-1')!r}"
                        ))
                    if isinstance(found, _Template):
                        return Route(api, b"", pipeline, allow=found.allow,
                                     unmatched=errors.method_not_allowed(
                            f"{method.decode('latin-1')} is not allowed on "
                            f"{path.decode('latin-1')!r}; allowed: {found.allow.decode()}"
                        ))
                    refused = ambiguity(templates, rest, method, found)
                    if refused is not None:
                        return Route(api, b"", pipeline, unmatched=refused)
                    operation, effective, pipeline = found
                conf = effective if effective is not None else api
                plan = self._plans.get(id(conf))
                if plan is None:
                    plan = self._plan(conf)
                production, sandbox, strip = plan
                if strip is not None:  # an API key in the query is the gateway's, not the
                    query = _query.without(query, strip)  # backend's
                targets = production.targets(rest, query) if production else (b"",)
                return Route(api, targets[0], pipeline, targets[1:], operation, effective,
                             sandbox=sandbox.targets(rest, query) if sandbox else ())
        return None

    def _plan(self, conf: ApiConfig) -> _Plan:
        """``conf``'s production and sandbox backends, and the query parameter its API key
        is sent in (made once per config: the configs live in this router as long as it
        does, so their ids stay theirs)."""
        out: list[_Backends | None] = []
        for urls, mode in ((conf.endpoints, conf.backend_mode),
                           (conf.sandbox.urls, conf.sandbox.mode) if conf.sandbox else ((), "")):
            if not urls:
                out.append(None)
                continue
            backends = self._backends.get((urls, mode))
            if backends is None:
                backends = self._backends[(urls, mode)] = _Backends(urls, mode)
            out.append(backends)
        strip = conf.api_key_query.encode() if conf.api_key_query is not None else None
        plan = self._plans[id(conf)] = (out[0], out[1], strip)
        return plan


_Plan = tuple["_Backends | None", "_Backends | None", "bytes | None"]


class _Backends:
    """One endpoint's URLs and how a request picks them: round-robin (``load_balance``,
    one turn per endpoint, shared by every operation that uses it) or in the order
    written (``failover``); the rest follow as alternatives."""

    __slots__ = ("_turn", "urls")

    def __init__(self, urls: tuple[str, ...], mode: str) -> None:
        self.urls = urls
        self._turn = itertools.count() if mode == "load_balance" and len(urls) > 1 else None

    def targets(self, rest: bytes, query: bytes | None) -> tuple[bytes, ...]:
        urls = self.urls
        if len(urls) == 1:
            return (_target(urls[0], rest, query),)
        if self._turn is not None:
            turn = next(self._turn) % len(urls)
            urls = urls[turn:] + urls[:turn]
        return tuple(_target(u, rest, query) for u in urls)


_new_route = tuple.__new__  # a Route without its NamedTuple __new__ (a Python call)
assert len(Route._fields) == 9, "Router.route's plain route lists every Route field"


def _first_segment(path: bytes) -> bytes:
    """``b"a"`` for ``/a``, ``/a/b`` and ``/a/``; ``b""`` for ``/``."""
    return path[1:].partition(b"/")[0]


def _by_host(
    candidates: list[_Candidate], host: str | None
) -> tuple[ApiConfig, Pipeline | None] | None:
    for patterns, api, pipeline in candidates:
        if patterns is None or (host is not None and _hosts.any_matches(patterns, host)):
            return api, pipeline
    return None
