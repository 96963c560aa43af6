"""Path normalisation and context matching, in memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cputime import least_cpu
from twistedgw.config import ApiConfig
from twistedgw.http import BadPath, Router, normalise, split_target
from twistedgw.http._resource import Routed


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/a/b/", b"/a/b/"),
        (b"/a/./b", b"/a/b"),
        (b"/a/b/../c", b"/a/c"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/a/..", b"/"),
        (b"//a///b", b"/a/b"),
        (b"/a//", b"/a/"),
        (b"/open/../secret", b"/secret"),
        (b"/open/%2e%2e/secret", b"/secret"),  # escaped dots are dots
        (b"/open/%2E%2e/secret", b"/secret"),
        (b"/a;jsessionid=1/b;x", b"/a/b"),
        (b"/secret;x/y", b"/secret/y"),
        (b"/a/..;/secret", b"/secret"),  # Tomcat's favourite
        (b"/%7euser/%41", b"/~user/A"),  # unreserved escapes decoded
        (b"/caf%c3%a9", b"/caf%C3%A9"),  # others kept, upper-cased
        (b"/a%20b", b"/a%20b"),
        (b"/a:b@c!$&'()*+,=", b"/a:b@c!$&'()*+,="),
    ],
)
def test_normalise(raw: bytes, clean: bytes) -> None:
    assert normalise(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        b"/a/%2Fb",  # an escaped slash would split differently at the backend
        b"/a/%2fb",
        b"/a%5Cb",
        b"/a%5cb",
        b"/a%00",
        b"/a%3Bb",  # an escaped ';' would become a parameter at the backend
        b"/..",
        b"/a/../..",
        b"/./..",
        b"//..",
        b"/%2e%2e",
        b"a/b",
        b"",
        b"*",
        b"http://host/a",
        b"/a\\b",
        b"/a b",
        b"/a\tb",
        b"/a\x7fb",
        b"/caf\xc3\xa9",
        b"/a%zz",
        b"/a%4",
        b"/a%",
        b"/a<b>",
        b'/a"b',
        b"/a{b}",
        b"/a|b",
        b"/a^b",
        b"/a`b",
        b"/a#b",
    ],
)
def test_normalise_refuses(raw: bytes) -> None:
    with pytest.raises(BadPath):
        normalise(raw)


_SEGMENT_BYTES = st.sampled_from(
    [b"a", b"B", b".", b"..", b"", b";p=1", b"%2e", b"%2E%2e", b"%41", b"%c3", b"~", b"-", b"%20"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_SEGMENT_BYTES, max_size=3).map(b"".join), max_size=8))
def test_normalise_is_a_fixed_point(segments: list[bytes]) -> None:
    raw = b"/" + b"/".join(segments)
    try:
        clean = normalise(raw)
    except BadPath:
        return
    assert normalise(clean) == clean
    assert clean.startswith(b"/")
    parts = clean.split(b"/")[1:]
    assert b"." not in parts and b".." not in parts
    assert b"" not in parts[:-1], "empty segment left inside the path"
    assert b";" not in clean
    assert b"%2E" not in clean.upper()


def test_split_target() -> None:
    assert split_target(b"/a/b?x=1&y=2") == (b"/a/b", b"x=1&y=2")
    assert split_target(b"/a/b?") == (b"/a/b", b"")
    assert split_target(b"/a/b") == (b"/a/b", None)
    assert split_target(b"/a?x=/../b?c") == (b"/a", b"x=/../b?c")


def make_api(context: str, backend: str = "http://127.0.0.1:8080/v2") -> ApiConfig:
    return ApiConfig(name=context, version="1", context=context, backend=backend)


@pytest.fixture
def router() -> Router:
    return Router(
        [
            make_api("/petstore", "http://127.0.0.1:8080/v1"),
            make_api("/petstore/1.0.5", "http://127.0.0.1:8080/v2"),
            make_api("/bare", "http://127.0.0.1:9000"),
            make_api("/Mixed/Case", "https://backend.example:8443/base"),
        ]
    )


@pytest.mark.parametrize(
    ("path", "query", "context", "target"),
    [
        (
            b"/petstore/1.0.5/pet/1",
            b"x=1",
            "/petstore/1.0.5",
            b"http://127.0.0.1:8080/v2/pet/1?x=1",
        ),
        (b"/petstore/1.0.5", None, "/petstore/1.0.5", b"http://127.0.0.1:8080/v2"),
        (b"/petstore/1.0.5/", None, "/petstore/1.0.5", b"http://127.0.0.1:8080/v2/"),
        (b"/petstore/1.0.5/a", b"", "/petstore/1.0.5", b"http://127.0.0.1:8080/v2/a?"),
        # longest context wins, only on a segment boundary
        (b"/petstore/1.0.6/pet", None, "/petstore", b"http://127.0.0.1:8080/v1/1.0.6/pet"),
        (b"/petstore/1.0.55", None, "/petstore", b"http://127.0.0.1:8080/v1/1.0.55"),
        # case-insensitive context match; the rest of the path keeps its case
        (b"/PETSTORE/1.0.5/Pet/A", None, "/petstore/1.0.5", b"http://127.0.0.1:8080/v2/Pet/A"),
        (b"/mixed/case/X", None, "/Mixed/Case", b"https://backend.example:8443/base/X"),
        # a backend URL without a path still gets an absolute path
        (b"/bare", None, "/bare", b"http://127.0.0.1:9000/"),
        (b"/bare", b"q=1", "/bare", b"http://127.0.0.1:9000/?q=1"),
        (b"/bare/x/y", b"a=%2F&b", "/bare", b"http://127.0.0.1:9000/x/y?a=%2F&b"),
    ],
)
def test_route(
    router: Router, path: bytes, query: bytes | None, context: str, target: bytes
) -> None:
    route = router.route(path, query)
    assert route is not None
    assert route.api.context == context
    assert route.backend_target == target


@pytest.mark.parametrize("path", [b"/", b"/pet", b"/petstorex", b"/bare2/x", b"/mixed"])
def test_no_route(router: Router, path: bytes) -> None:
    assert router.route(path, None) is None


def test_root_context_catches_the_rest() -> None:
    router = Router([make_api("/", "http://127.0.0.1:1/root"), make_api("/a", "http://h:2")])
    a = router.route(b"/a/x", None)
    assert a is not None and a.backend_target == b"http://h:2/x"
    root = router.route(b"/b/x", b"k=v")
    assert root is not None and root.backend_target == b"http://127.0.0.1:1/root/b/x?k=v"
    top = router.route(b"/", None)
    assert top is not None and top.api.context == "/"


def test_normalised_path_routes_where_the_backend_will_look() -> None:
    """A dot-segment cannot escape the protected context to reach another API."""
    router = Router([make_api("/open", "http://h:1/o"), make_api("/secret", "http://h:1/s")])
    for raw in (b"/open/../secret/x", b"/open/%2e%2e/secret/x", b"/open/..;/secret/x"):
        route = router.route(normalise(raw), None)
        assert route is not None
        assert route.api.context == "/secret"
        assert route.backend_target == b"http://h:1/s/x"


# --------------------------------------------------------------------------- path templates
# #22 item 3: matching a path against OpenAPI templates is linear in the path, whatever
# the template; the old regexes ("[^/]+-[^/]+-[^/]+") backtracked for seconds.

_PIECE = st.sampled_from(["", "a", "b", "-", ".", "ab", "a-", "B", ".a"])


@st.composite
def _templates(draw: st.DrawFn) -> str:
    segments = []
    for _ in range(draw(st.integers(1, 3))):
        params = draw(st.integers(0, 3))
        pieces = [draw(_PIECE) for _ in range(params + 1)]
        segment = "".join(f"{p}{{p{i}}}" for i, p in enumerate(pieces[:-1])) + pieces[-1]
        segments.append(segment or "a")
    return "/" + "/".join(segments)


def _reference(templates: list[str], path: bytes) -> str | None:
    """The old matcher: one regex per template, most specific first; a template that
    matches only when case is ignored matches nothing."""
    import re

    def compile_(template: str, flags: int = 0) -> re.Pattern[bytes]:
        parts = [
            "[^/]+".join(re.escape(p) for p in re.split(r"\{[^{}/]*\}", segment))
            for segment in template.split("/")[1:]
        ]
        return re.compile(("^/" + "/".join(parts) + "$").encode(), flags)

    count = path.count(b"/")
    ranked = sorted(
        (t for t in templates if t.count("/") == count),
        key=lambda t: tuple(0 if "{" not in s else 1 for s in t.split("/")[1:]),
    )
    for template in ranked:
        if compile_(template, re.IGNORECASE).match(path):
            return template if compile_(template).match(path) else None
    return None


def _router(templates: list[str]) -> Router:
    from twistedgw.config import Operation

    ops = tuple(Operation("GET", t) for t in templates)
    return Router([ApiConfig("t", "1", "/t", "http://127.0.0.1:1", operations=ops)])


def _matched(router: Router, path: bytes) -> str | None:
    route = router.route(b"/t" + path, None, b"GET")
    assert route is not None
    if route.unmatched is not None:
        assert route.unmatched.code == "900906"
        return None
    assert route.operation is not None
    return route.operation.template


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_templates(), min_size=1, max_size=4, unique=True),
    st.lists(st.lists(st.sampled_from([b"a", b"A", b"b", b"-", b".", b"ab", b"a-"]),
                      min_size=1, max_size=6).map(b"".join), min_size=1, max_size=3),
)
def test_templates_match_as_the_reference_regexes_do(templates: list[str],
                                                     segments: list[bytes]) -> None:
    """Segment-wise matching agrees with the backtracking regexes it replaced."""
    path = b"/" + b"/".join(segments)
    assert _matched(_router(templates), path) == _reference(templates, path)


def _budget(router: Router, path: bytes) -> float:
    return least_cpu(lambda: router.route(b"/t" + path, None, b"GET"), 0.01)


HOSTILE_TEMPLATES = [
    ("/daily/{year}-{month}-{day}/summary", b"/daily/" + b"-" * 16000 + b"/summarx"),
    ("/daily/{year}-{month}-{day}/summary", b"/daily/" + b"1-" * 8000 + b"/summary"),
    ("/f/{a}.{b}.{c}.{d}.{e}", b"/f/" + b"." * 16000),
    ("/g/{a}{b}{c}{d}x", b"/g/" + b"y" * 16000),
    ("/h/{a}ab{b}ab{c}abc", b"/h/" + b"ab" * 8000),
    ("/{a}-{b}/{c}-{d}/{e}-{f}", b"/" + b"/".join([b"-" * 5000] * 3) + b"x"),
]


@pytest.mark.parametrize(("template", "path"), HOSTILE_TEMPLATES,
                         ids=range(len(HOSTILE_TEMPLATES)))
def test_hostile_paths_match_in_linear_time(template: str, path: bytes) -> None:
    router = _router([template, "/{x}", "/{x}/{y}/{z}"])
    spent = _budget(router, path)
    assert spent < 0.01, f"{spent * 1000:.1f} ms for a {len(path)}-byte path"


@settings(max_examples=60, deadline=None)
@given(_templates(), st.integers(1, 3), st.sampled_from([b"-", b".", b"a", b"ab", b"a-", b"-."]))
def test_any_template_matches_a_long_hostile_path_within_budget(
    template: str, which: int, filler: bytes
) -> None:
    """A 16 KB path whose segments repeat the template's own literals (what makes a
    backtracking matcher try every split) is matched in well under 10 ms of CPU."""
    count = template.count("/")
    repeat = 16000 // max(len(filler), 1) // count
    segments = [filler * repeat] * count
    segments[min(which, count) - 1] += b"\x7e"  # something no literal ends with, mostly
    path = b"/" + b"/".join(segments)
    assert _budget(_router([template]), path) < 0.01


def _reference_normalise(path: bytes) -> bytes:
    """The normaliser before the 10 ms rule made its passes C loops: the same answers."""
    import re

    unreserved = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    pchar = frozenset(b"!$&'()*+,;=:@/") | unreserved
    pct = re.compile(rb"%([0-9A-Fa-f]{2})")
    forbidden = {0x2F: "'/'", 0x5C: "'\\'", 0x00: "NUL", 0x3B: "';'"}
    if not path.startswith(b"/"):
        raise BadPath("request target must be an absolute path")
    if any(b < 0x21 or b == 0x7F or b == 0x5C for b in path):
        raise BadPath("request path contains a control character, space or backslash")
    if any(b >= 0x80 for b in path):
        raise BadPath("request path contains a raw non-ASCII byte")

    def unescape(m: re.Match[bytes]) -> bytes:
        value = int(m.group(1), 16)
        if value in forbidden:
            raise BadPath(f"request path contains an encoded {forbidden[value]}")
        return bytes([value]) if value in unreserved else b"%" + m.group(1).upper()

    if b"%" in path:
        if path.count(b"%") - len(pct.findall(path)):
            raise BadPath("request path contains a malformed percent-escape")
        path = pct.sub(unescape, path)
    for b in path:
        if b not in pchar and b != 0x25:
            raise BadPath(f"request path contains the character {chr(b)!r}")
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for i, raw in enumerate(segments):
        segment = raw.split(b";", 1)[0]
        last = i == len(segments) - 1
        if segment in (b"", b"."):
            if last:
                out.append(b"")
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


_PATH_PIECES = st.sampled_from(
    [b"/", b"a", b"B", b".", b"..", b";p", b"%", b"%4", b"%41", b"%2e", b"%2F", b"%2f", b"%5c",
     b"%00", b"%3B", b"%c3", b"%7E", b"%zz", b"~", b" ", b"\\", b"\x7f", b"\xff", b"?", b"[",
     b"//", b"/."]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_PATH_PIECES, max_size=12).map(b"".join), st.booleans())
def test_normalise_answers_as_the_reference_does(path: bytes, absolute: bool) -> None:
    path = b"/" + path if absolute else path

    def outcome(f: object) -> tuple[str, bytes | str]:
        try:
            return "ok", f(path)  # type: ignore[operator]
        except BadPath as e:
            return "bad", str(e)

    from twistedgw.http._routing import _normalise

    assert outcome(_normalise) == outcome(_reference_normalise)


@pytest.mark.parametrize(
    "path",
    [
        b"/" + b"%41" * 5400,
        b"/" + b"a/" * 8000,
        b"/" + b"./" * 8000,
        b"/a" + b";x/" * 5000,
        b"/" + b"%2e%2E/" * 2000,
        b"/" + b"%41" * 5400 + b"%zz",
        b"/" + b"%41" * 5400 + b"%2F",
        # At the largest size max_header_bytes allows: empty and dot segments (a segment
        # walk in Python took ~9 ms for 64 KiB of '/').
        b"/" * 65000,
        b"/a/." * 16000,
    ],
    ids=range(9),
)
def test_normalise_a_long_path_within_budget(path: bytes) -> None:
    from twistedgw.http._routing import _normalise

    def normalised() -> None:
        try:
            _normalise(path)
        except BadPath:
            pass

    spent = least_cpu(normalised, 0.005)
    assert spent < 0.005, f"{spent * 1000:.2f} ms"


# --------------------------------------------------------------------------- trims (#23 item 10)


def _secured_router(extra: tuple[tuple[str, str, bool], ...] = ()) -> Router:
    """/pets/admin needs a certificate; /pets/{name} and /{a}/{b}/{c} are open."""
    from twistedgw.config import Mode, Operation, Security

    mtls = Security(mutual_ssl=Mode.MANDATORY)
    open_ = Security()
    ops = [
        Operation("GET", "/pets/admin", mtls),
        Operation("GET", "/pets/{name}", open_),
        Operation("GET", "/pets/{name}.txt", open_),
        Operation("GET", "/files/{path}", open_),
        Operation("GET", "/pets/admin.html", open_),
        *(Operation("GET", t, mtls if secured else open_) for t, _m, secured in extra),
    ]
    return Router([ApiConfig("t", "1", "/t", "http://127.0.0.1:1", operations=tuple(ops))])


def _answer(router: Router, path: bytes, method: bytes = b"GET") -> tuple[int, str] | str:
    route = router.route(b"/t" + normalise(path), None, method)
    assert route is not None
    if route.unmatched is not None:
        return route.unmatched.status, route.unmatched.description
    assert route.operation is not None
    return route.operation.template


@pytest.mark.parametrize(
    "path",
    [b"/pets/admin.", b"/pets/admin.json", b"/pets/admin%20", b"/pets/admin%09",
     b"/pets/admin~", b"/pets/ADMIN.json", b"/pets/admin.json%20", b"/pets/admin%20%20",
     b"/pets/admin.tar.gz", b"/pets/admin%0A", b"/pets/admin.txt"],
)
def test_a_trimmed_path_that_reaches_a_differently_secured_literal_is_404(path: bytes) -> None:
    assert _answer(_secured_router(), path) == (404, "ambiguous path")


@pytest.mark.parametrize(
    ("path", "template"),
    [(b"/pets/admin", "/pets/admin"), (b"/pets/fido", "/pets/{name}"),
     (b"/pets/fido.json", "/pets/{name}"), (b"/pets/fido%20", "/pets/{name}"),
     (b"/pets/admin.html", "/pets/admin.html"),  # a literal template of its own decides
     (b"/pets/administrator", "/pets/{name}"), (b"/files/report.pdf", "/files/{path}"),
     (b"/pets/admin/", "/pets/admin")],
)
def test_paths_that_no_trim_makes_ambiguous_pass(path: bytes, template: str) -> None:
    assert _answer(_secured_router(), path) == template


@pytest.mark.parametrize(
    "path",
    [b"/pets/ad%20min", b"/pets/ad%09min", b"/pets/%20admin", b"/files/a%01b", b"/files/a%7F",
     b"/pets%20/fido", b"/pets/admin%7F"],
)
def test_encoded_control_or_whitespace_inside_is_400(path: bytes) -> None:
    assert _answer(_secured_router(), path) == (
        400, "request path has an encoded control character or whitespace inside a segment"
    )


def test_apis_whose_operations_share_one_security_are_not_checked() -> None:
    from twistedgw.config import Operation

    ops = (Operation("GET", "/pets/admin"), Operation("GET", "/pets/{name}"))
    router = Router([ApiConfig("t", "1", "/t", "http://127.0.0.1:1", operations=ops)])
    assert _answer(router, b"/pets/admin.json") == "/pets/{name}"
    assert _answer(router, b"/pets/ad%20min") == "/pets/{name}"
    assert not router._templates[next(iter(router._templates))].guarded


def test_trims_within_budget() -> None:
    router = _secured_router()
    for path in (b"/pets/" + b"%20" * 5000, b"/pets/" + b"a." * 7000, b"/pets/" + b"~" * 14000,
                 b"/files/" + b"%41%20" * 2000 + b"x"):
        spent = least_cpu(lambda p=path: router.route(b"/t" + normalise(p), None, b"GET"), 0.005)
        assert spent < 0.005, f"{spent * 1000:.2f} ms for {path[:12]!r}"


def test_the_front_s_one_call_routes_every_target_as_normalise_and_route_do() -> None:
    """``Router.parts`` (the HTTP/1.1 front's call: split, normalise, route) takes a path
    whose first segment only a one-segment context with a plain API starts with straight
    to it; every target gets what ``split_target``, ``normalise`` and ``route`` give."""
    import itertools

    router = Router([
        make_api("/petstore", "http://127.0.0.1:8080/v1"),
        make_api("/petstore/1.0.5", "http://127.0.0.1:8080/v2"),
        make_api("/bare", "http://127.0.0.1:9000"),
        make_api("/Mixed/Case", "https://backend.example:8443/base"),
        make_api("/solo", "http://127.0.0.1:9001/s"),
        make_api("/", "http://127.0.0.1:1/root"),
        ApiConfig("h", "1", "/hosted", "http://127.0.0.1:2", hosts=("a.example",)),
    ])
    assert set(router._sole_segments) == {b"bare", b"solo"}
    paths = [b"/", b"/solo", b"/SOLO/", b"/solo/x/Y", b"/solox", b"/bare", b"/bare/%41%2f",
             b"/bare//a/./b/../c", b"/petstore/1.0.5/p", b"/petstore/1.0.6", b"/mixed/case/x",
             b"/hosted/x", b"/other", b"/solo/..", b"/solo/../bare/x", b"/a\\b", b"/solo;p=1/x",
             b"/bare/", b"/Bare/x", b"/BARE", b"/solo/", b"/solo//"]
    for path, query, host in itertools.product(
        paths, (b"", b"?", b"?a=1&b=/../"), (None, "a.example")
    ):
        target = path + query
        raw_path, query_or_none = split_target(target)
        try:
            normal: bytes | None = normalise(raw_path)
        except BadPath as e:
            expected: tuple[object, ...] = (raw_path, None, query_or_none, None, str(e))
        else:
            assert normal is not None
            expected = (raw_path, normal, query_or_none,
                        router.route(normal, query_or_none, b"GET", host), None)
        runtime = object()
        got = router.parts(Routed, runtime, target, b"GET", host)
        assert type(got) is Routed and got.runtime is runtime, target
        assert got[1:6] == expected, target
        # The host is kept only for a path that was not refused.
        assert got.host == (host if expected[1] is not None else None), target


def test_normal_forms_are_remembered_for_short_paths_only_and_bounded() -> None:
    """``normalise`` (and ``Router.parts``, which reads the same table) remembers the normal
    form of a path of at most 512 bytes, never a refusal nor a longer path, and empties
    the table when it holds 4096: unique paths cannot grow memory."""
    from twistedgw.http import _routing

    _routing._normal_paths.clear()
    assert normalise(b"/a/./b//c") == b"/a/b/c"
    assert _routing._normal_paths == {b"/a/./b//c": b"/a/b/c"}
    long = b"/x" * 300
    assert normalise(long) == long and long not in _routing._normal_paths
    with pytest.raises(BadPath):
        normalise(b"/a/%2f")
    assert b"/a/%2f" not in _routing._normal_paths
    router = Router([make_api("/bench", "http://127.0.0.1:9")])
    assert router.parts(tuple, None, b"/bench/../bench/y?q", b"GET", None)[2] == b"/bench/y"
    assert _routing._normal_paths[b"/bench/../bench/y"] == b"/bench/y"
    for n in range(_routing._NORMAL_PATHS_MAX + 10):
        normalise(b"/p/%d" % n)
    assert 0 < len(_routing._normal_paths) <= _routing._NORMAL_PATHS_MAX
