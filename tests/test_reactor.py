"""twistedgw/_reactor.py: the gateway's TCP sockets' events run without Twisted's legacy
log context, every other selectable's as Twisted runs them, and ``twistedgw run`` uses it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.python import context, log

from tests.harness import env, gateway_config
from twistedgw import _reactor
from twistedgw.testing import devpki

pytestmark = pytest.mark.skipif(_reactor.EPollReactor is None, reason="epoll is Linux's")

IN = 1  # EPOLLIN


class _Poller:
    def __init__(self, events: list[tuple[int, int]]) -> None:
        self.events = events

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        return self.events


class _Other:
    """A selectable that is not a TCP socket (a waker, a pipe)."""

    def logPrefix(self) -> str:
        return "other-prefix"


def _tcp_server() -> Any:
    server = tcp.Server.__new__(tcp.Server)
    server.logstr = "FrontChannel,7,127.0.0.1"
    return server


def _reactor_with(selectables: dict[int, Any]) -> tuple[Any, list[tuple[Any, str]]]:
    reactor = _reactor.GatewayReactor()
    seen: list[tuple[Any, str]] = []

    def dispatch(selectable: Any, fd: int, event: int) -> None:
        system = (context.get(log.ILogContext) or {}).get("system", "-")
        seen.append((selectable, system))
        if getattr(selectable, "explode", False):
            raise RuntimeError("boom")

    reactor._poller = _Poller([(fd, IN) for fd in selectables] + [(999, IN)])  # 999: gone
    reactor._selectables = selectables
    reactor._doReadOrWrite = dispatch
    return reactor, seen


def test_tcp_sockets_run_without_the_legacy_context_others_with_it() -> None:
    server, other = _tcp_server(), _Other()
    reactor, seen = _reactor_with({3: server, 4: other})
    reactor.doIteration(0)
    assert seen == [(server, "-"), (other, "other-prefix")]
    # Twisted's own reactor pushes the context for both: what the override removes.
    from twisted.internet.epollreactor import EPollReactor

    plain, seen_plain = _reactor_with({3: server, 4: other})
    EPollReactor.doPoll(plain, 0)
    assert seen_plain == [(server, "FrontChannel,7,127.0.0.1"), (other, "other-prefix")]


def test_an_exception_escaping_dispatch_is_logged_with_the_prefix_and_the_poll_goes_on() -> None:
    server, after = _tcp_server(), _tcp_server()
    server.explode = True
    reactor, seen = _reactor_with({3: server, 5: after})
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        reactor.doIteration(0)
    finally:
        log.removeObserver(logged.append)
    assert seen == [(server, "-"), (after, "-")]
    errors = [e for e in logged if e.get("isError")]
    assert len(errors) == 1 and errors[0]["system"] == "FrontChannel,7,127.0.0.1"
    assert errors[0]["failure"].check(RuntimeError)
    # (flushLoggedErrors equivalent: the failure was handled by the observer above)


def test_adopt_switches_epoll_only() -> None:
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.pollreactor import PollReactor

    epoll = EPollReactor()
    assert _reactor.adopt(epoll) and type(epoll) is _reactor.GatewayReactor
    assert not _reactor.adopt(epoll)  # already one
    poll = PollReactor()
    assert not _reactor.adopt(poll) and type(poll) is PollReactor


def test_twistedgw_run_uses_the_gateway_reactor(tmp_path: Path) -> None:
    """``twistedgw run`` (app/_cli.serve) adopts the reactor before it runs: a gateway
    whose port is taken stops at once, and says which reactor it ran."""
    pki = devpki.generate(tmp_path / "pki")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.toml"
        config.write_text(gateway_config(pki, [{"name": "a", "context": "/a",
                                                 "backend": "http://127.0.0.1:1"}], port=port))
        code = (
            "import sys\n"
            "from twistedgw.app import main\n"
            f"rc = main(['run', '--config', {str(config)!r}])\n"
            "from twisted.internet import reactor\n"
            "print('REACTOR', type(reactor).__name__, rc)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env(), timeout=60)
    assert "REACTOR GatewayReactor 1" in out.stdout, out.stdout + out.stderr
