"""The authz endpoint's path rule (routing.authz_path), in memory.

The authz endpoint judges a request that a front proxy forwards raw, so it may
judge only a path whose raw and normalised forms are the same request: these
tests hold it to that for every spelling of a dot segment and for any set of
contexts, under the gateway's router and under the prefix routers a proxy or a
backend uses.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistedgw.config import ApiConfig
from twistedgw.http import BadPath, Router, authz_path, normalise


@pytest.mark.parametrize(
    "raw",
    [
        b"/",
        b"/secure/public/",
        b"/secure/public/x",
        b"/orders/list",
        b"/a:b@c!$&'()*+,=/~u-._",
        b"/caf%C3%A9/a%20b",  # escapes of reserved or non-ASCII bytes, upper case
        b"/SECURE/Public",  # case is the router's business, not a different path
        b"/a/b.",  # dots inside a segment are not dot segments
        b"/a/...",
        b"/a/.b/..c",
    ],
)
def test_accepts_paths_already_in_normal_form(raw: bytes) -> None:
    assert authz_path(raw) == raw == normalise(raw)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"/secure/admin/..;/..;/public/", "';' parameter"),  # the reported attack
        (b"/secure/admin/..;/public/", "';' parameter"),
        (b"/secure/admin/.;x/../public", "';' parameter"),
        (b"/secure/admin;x/../public", "';' parameter"),
        (b"/secure/public;jsessionid=1", "';' parameter"),
        (b"/secure/public;", "';' parameter"),
        (b"/secure/admin/../public", "'.' or '..' segment"),
        (b"/secure/./public", "'.' or '..' segment"),
        (b"/secure/public/.", "'.' or '..' segment"),
        (b"/secure/public/..", "'.' or '..' segment"),
        (b"/secure/admin/%2e%2e/public", "escaped unreserved"),
        (b"/secure/admin/%2E%2e/public", "escaped unreserved"),
        (b"/secure/admin/.%2E/public", "escaped unreserved"),
        (b"/secure/%2e/public", "escaped unreserved"),
        (b"/secure/%70ublic", "escaped unreserved"),  # a prefix router sees no 'public'
        (b"/secure//public", "empty segment"),
        (b"//secure/public", "empty segment"),
        (b"/secure/public//", "empty segment"),
        (b"/caf%c3%a9", "lower case"),
    ],
)
def test_refuses_what_the_proxy_would_forward_differently(raw: bytes, why: str) -> None:
    with pytest.raises(BadPath, match=why) as refused:
        authz_path(raw)
    # The description says what would have been judged instead.
    assert repr(normalise(raw).decode()) in str(refused.value)


@pytest.mark.parametrize("raw", [b"/a/%2Fb", b"/..", b"/a b", b"a/b", b"/a%zz", b"/a#b"])
def test_refuses_what_normalise_refuses(raw: bytes) -> None:
    with pytest.raises(BadPath):
        normalise(raw)
    with pytest.raises(BadPath):
        authz_path(raw)


# --------------------------------------------------------------------------- property

# Every spelling of a segment the normaliser treats specially, and plain ones.
_SEGMENT = st.sampled_from(
    [
        b"secure", b"admin", b"public", b"Public", b"a", b"~u", b"caf%C3%A9", b"%c3",
        b"", b".", b"..", b"..;", b".;x", b";p=1", b"%2e", b"%2E%2e", b".%2E", b"%2e.",
        b"%61dmin", b"%70ublic", b"%7E", b"x;y", b"...", b".b",
    ]
)
_CONTEXT_SEGMENT = st.sampled_from([b"secure", b"admin", b"public", b"Public", b"a", b"~u"])
_CONTEXTS = st.lists(
    st.lists(_CONTEXT_SEGMENT, min_size=0, max_size=3).map(lambda s: "/" + "/".join(
        x.decode() for x in s)),
    min_size=1, max_size=6, unique=True,
)


def _api(context: str) -> ApiConfig:
    return ApiConfig(name=context, version="1", context=context, backend="http://127.0.0.1:1/b")


def _prefix_route(path: bytes, contexts: list[str], *, boundary: bool) -> str | None:
    """What a byte-wise longest-prefix router picks (NGINX ``location /x/`` style when
    ``boundary`` is false, a backend's segment-prefix router when it is true)."""
    best: str | None = None
    for context in contexts:
        c = context.encode()
        if boundary:
            hit = c == b"/" or path == c or path.startswith(c + b"/")
        else:
            hit = path.startswith(c)
        if hit and (best is None or len(c) > len(best)):
            best = context
    return best


@settings(max_examples=600, deadline=None)
@given(st.lists(_SEGMENT, max_size=6), _CONTEXTS)
def test_accepted_paths_select_the_same_api_raw_and_normalised(
    segments: list[bytes], contexts: list[str]
) -> None:
    """Whenever the rule accepts a path, the raw path the proxy forwards and the
    normalised path the gateway judges select the same API (or prefix), for any
    set of contexts; and the rule refuses nothing that normalisation leaves as is."""
    raw = b"/" + b"/".join(segments)
    try:
        clean = normalise(raw)
    except BadPath:
        with pytest.raises(BadPath):
            authz_path(raw)
        return
    try:
        judged = authz_path(raw)
    except BadPath:
        assert clean != raw
        return
    assert judged == clean
    router = Router([_api(c) for c in contexts])
    by_raw, by_clean = router.route(raw, None), router.route(clean, None)
    assert (by_raw and by_raw.api.context) == (by_clean and by_clean.api.context)
    for boundary in (False, True):
        assert _prefix_route(raw, contexts, boundary=boundary) == _prefix_route(
            clean, contexts, boundary=boundary
        )


def test_the_reported_attack_would_change_the_api() -> None:
    """Why the rule exists: normalised, the attack path selects the open API while a
    prefix router on the raw path selects the protected one."""
    contexts = ["/secure", "/secure/admin", "/secure/public", "/public"]
    raw = b"/secure/admin/..;/public/"
    router = Router([_api(c) for c in contexts])
    judged = router.route(normalise(raw), None)
    assert judged is not None and judged.api.context == "/secure/public"
    assert _prefix_route(raw, contexts, boundary=True) == "/secure/admin"
    with pytest.raises(BadPath):
        authz_path(raw)
