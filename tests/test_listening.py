"""service.gather_listening: the start-up shared by GatewayService and the Supervisor."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import FirstError
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from twistedgw.app import AdminService, Metrics, gather_listening
from twistedgw.config import AdminConfig


def admin_on(reactor: MemoryReactor) -> AdminService:
    return AdminService(reactor, AdminConfig(port=9901), Metrics(lambda: None), lambda: None)


def outcome(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert len(results) == 1, "fired synchronously"
    return results[0]


def test_the_admin_listener_is_started_and_its_port_left_out() -> None:
    reactor = MemoryReactor()
    admin = admin_on(reactor)
    first, second = object(), object()
    ports = outcome(gather_listening([defer.succeed(first), defer.succeed(second)], admin))
    assert ports == [first, second]
    assert admin.running and admin.port is not None
    assert [server[0] for server in reactor.tcpServers] == [9901]


def test_without_an_admin_listener_the_ports_are_the_listeners() -> None:
    only = object()
    assert outcome(gather_listening([defer.succeed(only)], None)) == [only]
    assert outcome(gather_listening([], None)) == []


def test_any_failure_fails_the_whole_start_up() -> None:
    reactor = MemoryReactor()
    failed = outcome(
        gather_listening([defer.succeed(object()), defer.fail(OSError("busy"))], admin_on(reactor))
    )
    assert isinstance(failed, Failure) and failed.check(FirstError)
    assert isinstance(failed.value.subFailure.value, OSError)

    class BrokenReactor(MemoryReactor):
        def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("admin port busy")

    failed = outcome(gather_listening([defer.succeed(object())], admin_on(BrokenReactor())))
    assert isinstance(failed, Failure) and failed.check(FirstError)
    assert "admin port busy" in str(failed.value.subFailure.value)
