"""Property tests: hostile input raises only the exceptions callers expect.

``routing.normalise`` may only raise ``BadPath`` (answered with 400), and reading a
config only reports problems (one line each, naming the file and the dotted key; ``check``
exits 2): anything else would be a 500 or a traceback. The config is fuzzed at every key
some reader reads (found by reading a config with every section, so a new key is covered
the day it is read). Header decoders have their own property tests in test_lbheader.py,
OpenAPI definitions in test_openapi.py.
"""

from __future__ import annotations

import datetime
import functools
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twistedgw import config
from twistedgw.config import ApiConfig
from twistedgw.config._base import SECRET_KEYS, is_secret
from twistedgw.http import BadPath, Router, normalise, split_target
from twistedgw.http._routing import Route

# -- paths -------------------------------------------------------------------

_INTERESTING = [b"/", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c", b";", b"%3b", b"%",
                b"%00", b"%7e", b"?", b"#", b"\\", b"a", b"A", b"secret", b"SeCrEt", b"\x00",
                b"\xff", b" ", b"%25", b"//", b"/./", b"/../"]
_PATHS = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_INTERESTING), max_size=30).map(lambda p: b"/" + b"".join(p)),
)

_ROUTER = Router([
    ApiConfig(name="secret", version="1", context="/secret", backend="http://b/s"),
    ApiConfig(name="open", version="1", context="/", backend="http://b"),
])


@settings(max_examples=2000, deadline=None)
@given(_PATHS)
def test_normalise_raises_only_badpath_and_routes_consistently(raw: bytes) -> None:
    path, query = split_target(raw)
    try:
        clean = normalise(path)
    except BadPath:
        return
    assert normalise(clean) == clean
    assert clean.startswith(b"/") and b"//" not in clean
    assert not any(b in clean for b in (b"\\", b";", b"\x00", b"?"))
    segments = clean.split(b"/")
    assert b".." not in segments and b"." not in segments
    route = _ROUTER.route(clean, query)
    assert route is not None
    # The protected API gets every spelling of its context, and only those.
    lowered = clean.lower()
    is_secret = lowered == b"/secret" or lowered.startswith(b"/secret/")
    assert (route.api.name == "secret") == is_secret
    backend_path = route.backend_target.split(b"?", 1)[0][len(b"http://b"):]
    expected = b"/s" + clean[len(b"/secret"):] if is_secret else clean
    assert backend_path == expected


# -- config ------------------------------------------------------------------

_SCALARS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "/", "/a", "http://[::1", "http://x:99999", "\x00", "a\x00b",
                     "mandatory", "optional", "TLSv1.2", "TLSv1.0", "10.0.0.0/8", "::1",
                     "http://127.0.0.1:8080/v2", "https://h/p?q", "-", "../x", "~", "auto"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)

# -- config: every key the readers read, any value ------------------------------------

_FILE = Path("/etc/twistedgw/gateway.toml")
_MARK = "S3CRET-VALUE"
_LONG = "x" * 1000  # a certificate pasted where a path goes, say
_ODD = st.sampled_from([
    "", "\x00", _LONG, 2**70, -(2**70), -1, 0, float("nan"), float("inf"), True,
    [], [{}], {}, {"a": {"b": []}}, datetime.datetime(2020, 1, 1), datetime.time(1, 2),
    "../../../etc/passwd", "http://[::1", ["http://[::1"], "unix:@x", "10.0.0.0/33", [_LONG],
    f"redis://user:{_MARK}@127.0.0.1:99999/0", [_MARK], {"value": _MARK}, 2**31,
])


@functools.cache
def _read_keys() -> tuple[tuple[str, str], ...]:
    """(table path, key) for every key some reader reads, found by reading a config that
    has every section (tests/test_docs.py's), so a new key is fuzzed the day it is read."""
    import tomllib

    from tests.test_docs import _EVERY_SECTION
    from twistedgw.config import _base

    seen: set[tuple[str, str]] = set()
    finish = _base.TableReader.finish

    def recording(self: _base.TableReader) -> None:
        where = re.sub(r"\[\d+\]", "[]", self.path)
        seen.update((where, key) for key in self.seen)
        finish(self)

    _base.TableReader.finish = recording  # type: ignore[method-assign]
    try:
        config.parse_partial(tomllib.loads(_EVERY_SECTION), _FILE)
    finally:
        _base.TableReader.finish = finish  # type: ignore[method-assign]
    return tuple(sorted(seen))


def _table_at(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The table at ``where`` (``apis[].tiers[]``: the first of each array), made if absent."""
    node = raw
    for part in where.split(".") if where else ():
        name = part.removesuffix("[]")
        if part.endswith("[]"):
            items = node.get(name)
            if not isinstance(items, list) or not items or not isinstance(items[0], dict):
                node[name] = items = [{}]
            node = items[0]
        else:
            table = node.get(name)
            if not isinstance(table, dict):
                node[name] = table = {}
            node = table
    return node


# file: a dotted key (one that is empty, long or not printable quoted and cut): words
_PROBLEM = re.compile(rf"{re.escape(str(_FILE))}: [^\n]+?: \S")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_at_any_key_is_a_problem_naming_file_and_key(data: st.DataObject) -> None:
    """One to three keys of a config that has every section get values of any type (or
    an unknown key appears): reading never raises, and every problem is one line that
    names the file and a dotted key, quotes at most a short excerpt of a value, and never
    a value of a secret key (passwords, hashes, a Redis URL's password)."""
    import tomllib

    from tests.test_docs import _EVERY_SECTION

    raw = tomllib.loads(_EVERY_SECTION)
    edits = data.draw(st.lists(st.sampled_from(_read_keys()), min_size=1, max_size=3))
    unknown = data.draw(st.booleans())
    for where, key in edits:
        _table_at(raw, where)[key] = data.draw(_ODD | _VALUES)
    if unknown:
        _table_at(raw, edits[0][0])["no_such_key"] = 1
    parsed = config.parse_partial(raw, _FILE)
    secret = tuple(
        f"{_FILE}: {_dotted(where, key)}" for where, key in edits
        if is_secret(_dotted(where, key))
    )
    for line in parsed.problems:
        assert _PROBLEM.match(line), line
        assert "\n" not in line, line
        # A value is quoted as an excerpt (a missing file's resolved path is named whole).
        assert _LONG not in line or "file not found" in line, line
        assert not (line.startswith(secret) and _MARK in line), line
    if unknown:
        assert f"{_FILE}: {_dotted(edits[0][0], 'no_such_key')}: unknown key" in parsed.problems


def _dotted(where: str, key: str) -> str:
    return f"{where.replace('[]', '[0]')}.{key}" if where else key


def test_a_problem_never_quotes_a_secret() -> None:
    """Every key that holds a secret (or its hash), given a value of the wrong type holding
    one, and a Redis URL with a password that is no valid URL: each is a problem naming the
    key, and none quotes the secret (``check`` prints problems, a start logs them)."""
    import tomllib

    from tests.test_docs import _EVERY_SECTION

    secret_keys = [(where, key) for where, key in _read_keys()
                   if is_secret(_dotted(where, key))]
    named = {key for _where, key in secret_keys} | {f"{w}.{k}" for w, k in secret_keys}
    assert named >= SECRET_KEYS  # each is read somewhere
    cases = [(where, key, value) for where, key in secret_keys
             for value in ([_MARK], {"value": _MARK}, 12345)]
    cases += [("cluster", "redis", f"rediss://gw:{_MARK}@redis.example:99999/0"),
              ("cluster", "redis", f"redis://gw:{_MARK}@[::1/0")]
    for where, key, value in cases:
        raw = tomllib.loads(_EVERY_SECTION)
        _table_at(raw, where)[key] = value
        problems = config.parse_partial(raw, _FILE).problems
        named = [line for line in problems if line.startswith(f"{_FILE}: {_dotted(where, key)}")]
        assert named or isinstance(value, dict), (where, key, value)  # a table may be right
        assert not [line for line in named if _MARK in line or "12345" in line], named


# -- the head checks done without regular expressions -------------------------------

_HEAD_BYTES = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\t", b" ", b"a", b":", b"\x00", b"\x0b", b"\x7f",
                     b"\x1f", b"\x80", b"/", b"%", b"%2"]), max_size=20
).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(_HEAD_BYTES)
def test_the_head_checks_decide_as_the_regular_expressions_did(data: bytes) -> None:
    """``wire`` checks heads with counts and ``bytes.translate`` (issue 27 item 5); each
    must answer exactly what the regular expression it replaced answers."""
    from twistedgw.wire import _abnf

    bare = _abnf.BARE_LF.search(data) is not None
    ctl = _abnf.CTL_IN_HEAD.search(data) is not None
    assert _abnf.bare_lf(data) == bare
    assert _abnf.ctl_in_head(data) == ctl
    expected = _abnf.BARE_LF_FOUND if bare else _abnf.CTL_FOUND if ctl else _abnf.CLEAN
    assert _abnf.head_controls(data) == expected
    target = b"/" + data
    problem = _abnf.target_problem(target)
    refused = _abnf._TARGET_BYTE.search(target) is not None or (
        b"%" in target and _abnf._BAD_ESCAPE.search(target) is not None
    )
    assert (problem is not None) == refused


# -- routing through a dict ------------------------------------------------------------

_SEGMENTS = [b"a", b"A", b"b", b"ab", b"a.b", b"%41", b"x-y", b""]


def _linear_route(router: Router, path: bytes, host: str | None) -> object:
    """The router's answer as its linear scan gave it (before issue 27 item 4): the
    first context, longest first, that holds the path, then the host's candidate."""
    from twistedgw.http._routing import _by_host

    lowered = path.lower()
    for context, prefix, candidates in router._prefixes:
        if context == b"/" or lowered == context or lowered.startswith(prefix):
            chosen = _by_host(candidates, host)
            return None if chosen is None else chosen[0]
    return None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(_SEGMENTS[:-1]), min_size=0, max_size=3),
            st.sampled_from([None, ("h.example",), ("*.example",)]),
        ),
        min_size=1, max_size=6,
    ),
    st.lists(st.lists(st.sampled_from(_SEGMENTS), max_size=4), min_size=1, max_size=10),
    st.sampled_from([None, "h.example", "x.example", "other"]),
)
def test_the_dict_router_routes_as_the_linear_scan_did(
    contexts: list[tuple[list[bytes], tuple[str, ...] | None]],
    paths: list[list[bytes]],
    host: str | None,
) -> None:
    """Issue 27 item 4: the router looks up a path's first segment in a dict instead of
    trying every context; on generated contexts (nested, sharing segments, differing in
    case, "/", with and without hosts) and paths, it picks the API the scan picked."""
    apis = []
    seen: set[tuple[bytes, tuple[str, ...] | None]] = set()
    for i, (segments, hosts) in enumerate(contexts):
        context = b"/" + b"/".join(segments)
        if (context.lower(), hosts) in seen:
            continue  # the config refuses two APIs on one context and host set
        seen.add((context.lower(), hosts))
        apis.append(ApiConfig(name=f"api{i}", version="1", context=context.decode(),
                              backend="http://b", hosts=hosts))
    router = Router(apis)
    for segments in paths:
        path = b"/" + b"/".join(segments)
        for query in (None, b"k=v"):
            route = router.route(path, query, host=host)
            api = _linear_route(router, path, host)
            assert (route.api if route is not None else None) == api
            if route is not None:  # the backend URL: the path below the context, the query
                context = route.api.context.encode()
                rest = path[len(context):] if context != b"/" else path
                expected = b"http://b" + (rest or b"/") + (b"?" + query if query else b"")
                assert route.backend_target == expected
                assert route == Route(route.api, expected)  # every other field its default


# Escapes: the whole-path passes of ``_unescape`` against reading escape by escape.
_ESCAPE_PIECES = [b"%41", b"%7e", b"%7E", b"%2d", b"%20", b"%3a", b"%3A", b"%21", b"%2F",
                  b"%2f", b"%3B", b"%00", b"%5C", b"%80", b"%ff", b"%FF", b"%4", b"%zz", b"%",
                  b"a", b"A", b"!", b"/", b":", b"-", b"~", b"%25", b"%%41", b"%41F", b"u01"]
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_FORBIDDEN = {0x2F: "'/'", 0x5C: "'\\'", 0x00: "NUL", 0x3B: "';'"}


def _escape_by_escape(path: bytes) -> bytes:
    """The reading ``_unescape`` must give: any malformed escape refused, then the first
    forbidden one; unreserved characters decoded, the rest upper-cased."""
    head, *rest = path.split(b"%")
    if any(len(c) < 2 or not all(h in b"0123456789abcdefABCDEF" for h in c[:2]) for c in rest):
        raise BadPath("request path contains a malformed percent-escape")
    out = [head]
    for chunk in rest:
        value = int(chunk[:2], 16)
        if value in _FORBIDDEN:
            raise BadPath(f"request path contains an encoded {_FORBIDDEN[value]}")
        out.append(bytes([value]) if value in _UNRESERVED else b"%%%02X" % value)
        out.append(chunk[2:])
    return b"".join(out)


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.sampled_from(_ESCAPE_PIECES), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=300),
)
def test_escapes_read_in_whole_path_passes_as_escape_by_escape(pieces: list[bytes],
                                                               repeat: int) -> None:
    """Any path gets the same normal form, or the same refusal, from ``_unescape``'s
    whole-path passes as from reading each escape on its own."""
    from twistedgw.http import _routing

    path = b"/" + b"".join(pieces) * repeat
    try:
        expected: bytes | str = _escape_by_escape(path)
    except BadPath as e:
        expected = str(e)
    try:
        got: bytes | str = _routing._unescape(path)
    except BadPath as e:
        got = str(e)
    assert got == expected


def test_the_most_escapes_a_request_line_holds_are_read_in_c_passes() -> None:
    """~21,800 escapes (a 64 KiB request line), of one kind or mixed, and refused after
    as many good ones: each read in well under the 10 ms rule (escape by escape in
    Python took ~5 ms)."""
    from tests.cputime import least_cpu
    from twistedgw.http import _routing

    paths = {
        b"/" + b"%41" * 21_800: b"/" + b"A" * 21_800,
        b"/" + b"%3a" * 21_800: b"/" + b"%3A" * 21_800,
        b"/" + b"%41%20" * 10_900: b"/" + b"A%20" * 10_900,
        b"/" + b"%7e%2C!" * 8_000: b"/" + b"~%2C!" * 8_000,
    }
    for path, normal in paths.items():
        assert _routing._unescape(path) == normal
        spent = least_cpu(lambda p=path: _routing._unescape(p), 0.004)
        assert spent < 0.004, f"{spent * 1000:.2f} ms for {path[:10]!r}"
    for piece, says in ((b"%2f", "an encoded '/'"), (b"%zz", "a malformed percent-escape")):
        path = b"/" + b"%41%20" * 10_850 + piece
        with pytest.raises(BadPath, match=says):
            _routing._unescape(path)
