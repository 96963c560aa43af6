"""sd_listen_fds(3) in memory: names optional, the process check, endpoint strings."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactor

from twistedgw import _sdlisten as sdlisten
from twistedgw._sdlisten import Inherited, from_environ


def test_names_are_optional() -> None:
    assert from_environ({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, 42) == Inherited(
        (3, 4), ("unknown", "unknown")
    )


def test_names_when_given() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "https:admin"}
    assert from_environ(env, 42) == Inherited((3, 4), ("https", "admin"))
    # A count that disagrees with the names: the names are ignored, not the sockets.
    env["LISTEN_FDNAMES"] = "https"
    assert from_environ(env, 42) == Inherited((3, 4), ("unknown", "unknown"))


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "41", "LISTEN_FDS": "1"},  # meant for another process
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "42", "LISTEN_FDS": "x"},
        {"LISTEN_PID": "42", "LISTEN_FDS": "0"},
        {},
    ],
)
def test_nothing_passed(env: dict[str, str]) -> None:
    assert from_environ(env, 42) == Inherited()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("systemd:domain=INET:index=0", ("INET", 0, None)),
        ("systemd:domain=INET6:name=https", ("INET6", None, "https")),
    ],
)
def test_parse(text: str, parsed: tuple[str, int | None, str | None]) -> None:
    assert sdlisten.parse(text) == parsed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("systemd:domain=INET", "exactly one of index= or name="),
        ("systemd:domain=INET:index=0:name=x", "exactly one of index= or name="),
        ("systemd:domain=NOPE:index=0", "address family"),
        ("systemd:domain=INET:index=-1", "must be a number"),
        ("systemd:domain=INET:port=1", "expected domain="),
    ],
)
def test_parse_errors(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        sdlisten.parse(text)


def test_index_beyond_what_was_passed_says_what_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdlisten, "_AT_IMPORT", Inherited((3,), ("unknown",)))
    with pytest.raises(ValueError, match=r"no such socket \(passed: index 0 = fd 3 \(unknown\)"):
        sdlisten.endpoint(MemoryReactor(), "systemd:domain=INET:index=1")
    with pytest.raises(ValueError, match="no such socket"):
        sdlisten.endpoint(MemoryReactor(), "systemd:domain=INET:name=https")
    ep = sdlisten.endpoint(MemoryReactor(), "systemd:domain=INET:index=0")
    assert ep.fileno == 3
