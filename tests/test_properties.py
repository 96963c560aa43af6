"""Property tests: hostile input raises only the exceptions callers expect.

``routing.normalise`` may only raise ``BadPath`` (answered with 400) and
``config.parse`` only ``ConfigError`` (one line per problem, exit status 2);
anything else would be a 500 or a traceback. Header decoders have their own
property tests in test_lbheader.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twistedgw import config
from twistedgw.config import ApiConfig, ConfigError
from twistedgw.http import BadPath, Router, normalise, split_target

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

_KEYS = {
    "listeners": ["host", "port", "tls", "endpoint", "group"],
    "tls": ["certificate", "private_key", "keystore", "keystore_password", "truststore",
            "truststore_password", "profile", "protocols", "ciphers", "session_tickets", "crl",
            "revocation", "revocation_scope", "revocation_fail", "ocsp_timeout",
            "ocsp_cache_seconds", "ocsp_responders"],
    "apis": ["name", "version", "context", "backend", "mutual_ssl", "aliases", "api_key",
             "max_body_bytes", "backend_timeout", "tiers", "backends", "backend_mode", "openapi"],
    "api_keys": ["name", "key_sha256"],
    "limits": ["max_header_bytes", "max_body_bytes", "client_header_timeout", "idle_timeout",
               "handshake_timeout", "max_connections", "backend_connect_timeout",
               "backend_timeout", "send_timeout"],
    "mutual_ssl": ["certificate_header", "header_encoding", "chain_header",
                   "enable_client_validation", "load_balancer_aliases", "trusted_proxies",
                   "forward_client_certificate_header"],
    "authz": ["path", "original_uri_header", "original_method_header"],
    "admin": ["host", "port"],
    "access_log": ["path"],
    "identity": ["forward", "headers"],
}
_ARRAYS = {"listeners", "apis", "api_keys"}


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*keys, "bogus"]), _VALUES, max_size=len(keys) + 1)


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(_KEYS)), unique=True)):
        table = _table(_KEYS[section])
        raw[section] = (
            draw(st.lists(table, max_size=3)) if section in _ARRAYS else draw(table)
        )
        if draw(st.booleans()):  # sometimes the wrong shape altogether
            raw[section] = draw(_VALUES)
    for key in ("workers", "shutdown_timeout", "bogus"):
        if draw(st.booleans()):
            raw[key] = draw(_VALUES)
    return raw


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_configs(), st.dictionaries(st.text(max_size=12), _VALUES, max_size=6)))
def test_config_parse_raises_only_config_error(raw: dict[str, Any]) -> None:
    try:
        config.parse(raw, Path("/nonexistent/gateway.toml"))
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
