"""``workers = N``: N processes accepting on the same listening sockets.

The parent (``Supervisor``) opens every listener itself (host/port, or any
endpoint string, including ``systemd:`` sockets it inherited), never accepts on
them, and hands the descriptors to each worker (``python -m twistedgw.app._workers``).
Inherited sockets rather than SO_REUSEPORT: they work the same for systemd
socket activation and for ``port = 0``, and no other process can bind into the
group.

The parent supervises: it restarts a worker that dies (with a back-off), passes
SIGHUP and SIGTERM on, serves the admin listener and owns the only metrics
registry. Workers send it a compact sample per finished request over a pipe
(fd 3); fd 0 is a pipe from the parent whose end-of-file tells a worker that its
parent is gone, so workers never outlive it.

A reload is validated by the parent first: a bad config is refused there (and
counted once) and the workers only reopen the access log (SIGUSR1); a good one
is passed on as SIGHUP and each worker reloads from the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedgw import config as configmod
from twistedgw.app import _heap
from twistedgw.app import _runtime as runtime
from twistedgw.app._admin import AdminService
from twistedgw.app._drain import stop_once
from twistedgw.app._observe import (
    WEBSOCKET_OPEN,
    AccessLog,
    Metrics,
    Sample,
    sample,
    sample_of,
)
from twistedgw.app._service import (
    GatewayService,
    gather_listening,
    listen,
    log_startup,
    reload_runtime,
)
from twistedgw.config import ApiConfig, ConfigError, GatewayConfig
from twistedgw.errors import GatewayError
from twistedgw.http import RequestRecord
from twistedgw.identity import ClientIdentity
from twistedgw.upstream import TunnelStats

log = Logger(namespace="twistedgw.app._workers")  # also when run as __main__

EVENTS_FD = 3  # worker -> parent: JSON lines
FIRST_SOCKET_FD = 4
KILL_GRACE_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 10.0  # a worker that lived this long resets the back-off


class _NoAccept(protocol.Factory):
    """The parent never accepts on the listeners (it stops reading at once)."""

    noisy = False

    def logPrefix(self) -> str:
        return "twistedgw listener (accepted by the workers)"

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Worker(protocol.ProcessProtocol):
    """The parent's view of one worker process."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready = False
        self.started = supervisor.reactor.seconds()
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""
        self.websockets = 0  # open in this worker (from its samples): gone if it dies

    def signal(self, name: str) -> None:
        with contextlib.suppress(ProcessExitedAlready, OSError):  # processEnded will tell
            self.transport.signalProcess(name)  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != EVENTS_FD:
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.warn("worker {index}: unreadable event {line!r}", index=self.index, line=line)
                continue
            self.supervisor.event(self, message)

    def processEnded(self, reason: Failure) -> None:
        self.ready = False
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class Supervisor(service.Service):
    """Runs ``config.workers`` worker processes on shared listening sockets."""

    name = "twistedgw"

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.runtime = runtime.build(config)  # validates; shown in metrics and the summary
        _check_access_log(config)
        self.metrics = Metrics(lambda: self.runtime)
        self.admin = (
            AdminService(reactor, config.admin, self.metrics, self.readiness, self.detail)
            if config.admin is not None
            else None
        )
        self.cluster_problems: dict[int, str] = {}  # worker index -> its [cluster] store's problem
        self.ports: list[tuple[IListeningPort, str]] = []  # with tls, h2 or plain
        self.workers: dict[int, _Worker] = {}
        self.listening: defer.Deferred[list[IListeningPort]] | None = None
        self.stopping = False
        self._backoff: dict[int, float] = {}
        self._respawns: dict[int, Any] = {}

    # -- start ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()

        self.listening = gather_listening(
            [
                listen(
                    self.reactor,
                    listener,
                    _NoAccept(),
                    trust_unix=self.config.mutual_ssl.trust_unix_socket,
                )
                for listener in self.config.listeners
            ],
            self.admin,
        )
        self.listening.addCallback(self._listening)

    def _listening(self, ports: list[IListeningPort]) -> list[IListeningPort]:

        for port, listener in zip(ports, self.config.listeners, strict=True):
            port.stopReading()  # type: ignore[attr-defined]
            kind = ("h2" if listener.http2 else "tls") if listener.tls else "plain"
            self.ports.append((port, kind))
        log_startup(
            self.config,
            self.runtime,
            ports,
            admin=self.admin.describe() if self.admin is not None else None,
        )
        for index in range(1, self.config.workers + 1):
            self._spawn(index)
        return ports

    def _spawn(self, index: int) -> None:
        self._respawns.pop(index, None)
        if self.stopping:
            return
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, EVENTS_FD: "r"}
        argv = [
            sys.executable,
            "-m",
            "twistedgw.app._workers",
            "--config",
            str(self.config.source),
            "--index",
            str(index),
        ]
        for i, (port, kind) in enumerate(self.ports):
            fd = FIRST_SOCKET_FD + i
            child_fds[fd] = port.fileno()  # type: ignore[attr-defined]
            argv += ["--listen", f"{fd}:{kind}"]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")
        }
        worker = _Worker(self, index)
        self.workers[index] = worker
        if self.config.cluster is not None:  # until the worker says it has connected
            self.cluster_problems[index] = "not connected yet"
        process = self.reactor.spawnProcess(
            worker, sys.executable, argv, env=env, childFDs=child_fds
        )
        worker.pid = process.pid
        log.info("Started worker {index} (pid {pid})", index=index, pid=worker.pid)

    # -- events from workers -------------------------------------------------

    def event(self, worker: _Worker, message: dict[str, Any]) -> None:
        if "s" in message:
            for raw in message["s"]:
                sample: Sample = tuple(raw)  # type: ignore[assignment]
                self.metrics.count(sample)
                if sample[-1] is not None:  # a WebSocket opened or closed
                    worker.websockets += 1 if sample[-1] == WEBSOCKET_OPEN else -1
        for kind, count in message.get("ce", {}).items():
            self.metrics.cluster_error(str(kind), int(count))
        for seconds in message.get("rt", ()):
            self.metrics.cluster_round_trip(float(seconds))
        if "td" in message:
            self.metrics.spans_dropped(int(message["td"]))
        if "tx" in message:
            exported, failed = message["tx"]
            if exported:
                self.metrics.spans_exported(int(exported), True)
            if failed:
                self.metrics.spans_exported(int(failed), False)
        if "cs" in message:
            if message["cs"]:
                self.cluster_problems[worker.index] = str(message["cs"])
            else:
                self.cluster_problems.pop(worker.index, None)
        if message.get("ready"):
            worker.ready = True
            self._update_ready()

    def _update_ready(self) -> None:
        self.metrics.workers.set(sum(1 for w in self.workers.values() if w.ready))

    def detail(self) -> list[str]:
        """Extra ``/readyz`` lines: the [cluster] store as the workers see it."""
        cluster = self.config.cluster
        if cluster is None:
            return []
        where = cluster.describe()
        if not self.cluster_problems:
            return [f"cluster store {where}: connected"]
        return [
            f"cluster store {where}: unavailable in worker {index} ({problem})"
            for index, problem in sorted(self.cluster_problems.items())
        ]

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        self.cluster_problems.pop(worker.index, None)
        if worker.websockets > 0:  # its WebSockets went with it
            self.metrics.websockets_open.dec(worker.websockets)
            worker.websockets = 0
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._update_ready()
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if self.stopping:
            log.info("Worker {index} stopped (exit {code})", index=worker.index, code=code)
            return
        lived = self.reactor.seconds() - worker.started
        previous = self._backoff.get(worker.index)
        if previous is None or lived >= STABLE_SECONDS:
            delay = FIRST_BACKOFF_SECONDS
        else:  # dying again soon after a restart: back off
            delay = min(previous * 2, MAX_BACKOFF_SECONDS)
        self._backoff[worker.index] = delay
        how = f"signal {sig}" if sig is not None else f"exit status {code}"
        log.error(
            "Worker {index} (pid {pid}) died ({how}); starting it again in {delay}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self.metrics.worker_restarts.inc()
        self._respawns[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def readiness(self) -> str | None:
        """Ready while the listeners are open and at least one worker serves."""
        if self.stopping:
            return "stopping"
        if not self.ports:
            return "listeners are not up yet"
        ready = sum(1 for w in self.workers.values() if w.ready)
        if ready == 0:
            return "no worker is serving yet"
        return None

    # -- signals ---------------------------------------------------------------

    def reload(self) -> bool:
        """Validate the new config here; pass SIGHUP to the workers only if it is good."""

        built = reload_runtime(self.config)
        self.metrics.reloaded(built is not None)
        if built is None:
            for worker in list(self.workers.values()):
                worker.signal("USR1")  # still reopen the access log, for logrotate
            return False
        new_config = built.config
        self.config = new_config
        self.runtime = built
        log.info(
            "Reloaded {source}; passing SIGHUP to {n} worker(s)",
            source=str(new_config.source),
            n=len(self.workers),
        )
        for worker in list(self.workers.values()):
            worker.signal("HUP")
        return True

    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM to every worker (each drains for ``shutdown_timeout``), then wait;
        SIGKILL whatever is still running a little after that."""
        super().stopService()
        self.stopping = True
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        ports, self.ports = self.ports, []
        for port, _ in ports:
            port.stopListening()
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        waits = [worker.ended for worker in workers]
        kill = self.reactor.callLater(
            self.config.shutdown_timeout + KILL_GRACE_SECONDS, self._kill, workers
        )
        d: defer.Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)

        def done(result: Any) -> Any:
            if kill.active():
                kill.cancel()
            return result

        d.addBoth(done)
        if self.admin is not None:
            admin = self.admin
            d.addBoth(lambda _: admin.stopService())
        d.addBoth(lambda _: None)
        return d

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("Worker {index} did not stop in time: killing it", index=worker.index)
                worker.signal("KILL")


def _check_access_log(config: GatewayConfig) -> None:
    """Workers open the access log; refuse an unwritable one here, before starting them."""
    if config.access_log is None or config.access_log.path == "-":
        return
    try:
        AccessLog(config.access_log.path).close()
    except OSError as e:
        raise ConfigError(
            [
                f"{config.source}: access_log.path: cannot open {config.access_log.path}: "
                f"{e.strerror}"
            ]
        ) from None


# --------------------------------------------------------------------------- the worker side


class _ParentLink(protocol.Protocol):
    """fd 0 (from the parent) and fd 3 (to it). End of fd 0 = the parent is gone."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._pending: list[Sample] = []
        self._cluster_errors: dict[str, int] = {}
        self._round_trips: list[float] = []
        self._spans = [0, 0, 0]  # [tracing]: dropped, exported, failed
        self._flush_call: Any = None
        self.closed = False
        self.stopping = False  # set when the reactor shuts down for another reason

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def observe(self, record: RequestRecord) -> None:
        """A ``Gateway`` observer: batch samples, one write per reactor turn."""
        self._pending.append(sample_of(record))
        self._schedule()

    def count_request(
        self,
        api: ApiConfig | None,
        status: int,
        duration: float,
        identity: ClientIdentity | None,
        consumer: str | None,
        error_kind: str | None,
        refusal: GatewayError | None,
        cache: str | None = None,
        websocket: TunnelStats | None = None,
    ) -> None:
        """``http.RequestCounter`` (``Gateway.counter``): ``observe`` without a record."""
        self._pending.append(
            sample(api, status, duration, identity, consumer, error_kind, refusal, cache,
                   websocket)
        )
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    # cluster.ClusterObserver: batched like the samples, for the parent's metrics.
    def cluster_error(self, kind: str) -> None:
        self._cluster_errors[kind] = self._cluster_errors.get(kind, 0) + 1
        self._schedule()

    def cluster_round_trip(self, seconds: float) -> None:
        self._round_trips.append(round(seconds, 6))
        self._schedule()

    def cluster_state(self, problem: str | None) -> None:
        self.send({"cs": problem or ""})

    # tracing.TracingObserver: counted here, summed into the parent's metrics.
    def spans_dropped(self, count: int) -> None:
        self._spans[0] += count
        self._schedule()

    def spans_exported(self, count: int, ok: bool) -> None:
        self._spans[1 if ok else 2] += count
        self._schedule()

    def _flush(self) -> None:
        self._flush_call = None
        pending, self._pending = self._pending, []
        message: dict[str, Any] = {}
        if pending:
            message["s"] = pending
        if self._cluster_errors:
            message["ce"], self._cluster_errors = self._cluster_errors, {}
        if self._round_trips:
            message["rt"], self._round_trips = self._round_trips, []
        dropped, exported, failed = self._spans
        if dropped:
            message["td"] = dropped
        if exported or failed:
            message["tx"] = [exported, failed]
        self._spans = [0, 0, 0]
        if message:
            self.send(message)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        if self.reactor.running and not self.stopping:
            log.warn("The parent process is gone: stopping")
            with contextlib.suppress(ReactorNotRunning):
                self.reactor.stop()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twistedgw.app._workers",
        description="one worker process")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], help="FD:tls|h2|plain")
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(args.config)
        inherited = []
        for item in args.listen:
            fd, _, kind = item.partition(":")
            inherited.append((int(fd), kind in ("tls", "h2"), kind == "h2"))
        from twisted.internet import reactor

        from twistedgw import _reactor

        _reactor.adopt(reactor)  # as the one-process gateway's (app/_cli.py serve)
        svc = GatewayService(cfg, reactor, inherited=inherited)
    except ConfigError as e:
        for line in e.problems:
            print(f"twistedgw worker {args.index}: {line}", file=sys.stderr)
        return 2
    _start_worker_logging(args.index)
    from twisted.internet import stdio

    link = _ParentLink(reactor)
    stdio.StandardIO(link, stdin=0, stdout=EVENTS_FD, reactor=reactor)  # type: ignore[call-arg]
    svc.gateway.counter = link  # samples for the parent, without building records
    svc.tracing_observer = link
    svc.shared.observe_cluster(link)
    if svc.shared.cluster is not None and svc.shared.cluster.problem is not None:
        link.cluster_state(svc.shared.cluster.problem)
    exit_code = [0]

    def serving(_: Any) -> None:
        log.info("Worker {index} (pid {pid}) serving", index=args.index, pid=os.getpid())
        link.send({"ready": True})

    def failed(failure: Failure) -> None:
        log.failure("Worker {index} cannot listen", failure, index=args.index)
        exit_code[0] = 1
        reactor.stop()  # type: ignore[attr-defined]

    def start() -> None:
        svc.startService()
        assert svc.listening is not None
        svc.listening.addCallbacks(serving, failed)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.callWhenRunning(_heap.settle)  # type: ignore[attr-defined]
    # The parent coordinates stopping: Ctrl-C reaches the whole process group, but
    # only the parent acts on SIGINT (it sends each worker SIGTERM).
    reactor.callWhenRunning(stop_once, reactor, (signal.SIGTERM,))  # type: ignore[attr-defined]
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", lambda: setattr(link, "stopping", True)
    )
    reload = _heap.then_refreeze(svc.reload, reactor.callLater)  # type: ignore[attr-defined]
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(svc.reopen_logs))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return exit_code[0]


def _start_worker_logging(index: int) -> None:
    from twisted.logger import ILogObserver, globalLogBeginner, textFileLogObserver
    from zope.interface import provider

    text = textFileLogObserver(sys.stdout)
    who = f"worker {index} pid {os.getpid()}"

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        if "log_system" not in event:
            level = event.get("log_level")
            event["log_system"] = (
                f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')} {who}"
            )
        text(event)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


if __name__ == "__main__":
    sys.exit(worker_main())
