"""``[cluster]``: tier buckets kept in Redis, so every worker and instance spends the same.

One request costs one round trip: ``EVALSHA`` of a small Lua script that
implements the same bucket as ``tiers.TierThrottle`` (capacity =
``requests_per_minute``, refilled evenly over the minute, or over a throttling
policy's ``period_seconds``) atomically in Redis,
with Redis's own clock (``TIME``), so instances need no synchronised clocks. The
script is loaded when a connection is made and again (``EVAL``) if Redis answers
``NOSCRIPT`` (a ``SCRIPT FLUSH`` or a restart). Each key expires once its bucket
would be full again (61 s; a policy's period + 1 s), so idle callers leave nothing
behind.

The client is txredisapi's protocol (with hiredis's parser when installed) under
Twisted's ``ClientService``, which reconnects with a capped exponential back-off.
The request path never waits for a connection: while there is none, or when a
round trip takes longer than ``timeout``, the answer is ``on_failure``'s: serve
without the limit ("open") or refuse with 503 ("closed", see ``tiers.StoreUnavailable``).
Every failure is counted (``ClusterObserver.error``), logged at most once a minute per
kind, and the store's state is shown in ``/readyz``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from twistedgw._ratelimitlog import RateLimitedLog
from twistedgw.config import ClusterConfig
from twistedgw.pipeline._tiers import Limit, StoreUnavailable, TierThrottle

log = Logger()

PERIOD_MS = 60_000  # the bucket refills over one minute, as in tiers.TierThrottle
EXPIRE_MS = PERIOD_MS + 1_000  # an idle bucket is full again after PERIOD_MS: forget it
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0
MAX_IN_FLIGHT = 10_000  # per connection; beyond this Redis is not keeping up: fail fast

#: KEYS[1] = bucket; ARGV = capacity, period (ms), expiry (ms).
#: Returns {1, 0} when a token was spent, {0, microseconds until one is available}.
SCRIPT = b"""
local capacity = tonumber(ARGV[1])
local period_us = tonumber(ARGV[2]) * 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = capacity / period_us
local state = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = capacity
else
  local elapsed = now - updated
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(capacity, tokens + elapsed * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {allowed, wait}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()

# Error kinds (the ``kind`` label of twistedgw_cluster_store_errors_total).
DOWN = "down"  # no connection (refused, lost, reconnecting)
TIMEOUT = "timeout"  # no answer within [cluster] timeout
ERROR = "error"  # Redis answered with an error
GARBAGE = "garbage"  # an answer that is not what the script returns
OVERLOAD = "overload"  # too many round trips in flight on the connection
KINDS = (DOWN, TIMEOUT, ERROR, GARBAGE, OVERLOAD)
_BACKOFF = backoffPolicy(FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS, 2.0)
LOCAL_POLICY = "answered from this process's own bucket while connected (on_failure = open)"


@dataclass(slots=True)
class _Check:
    """One tier check in flight: its answer, what it spends, and the connection it went on."""

    result: Deferred[float | None]
    limit: Limit
    conn: Any  # _RedisProtocol


class ClusterObserver(Protocol):
    """Where the store reports (metrics here, or the parent process for workers)."""

    def cluster_error(self, kind: str) -> None: ...

    def cluster_round_trip(self, seconds: float) -> None: ...

    def cluster_state(self, problem: str | None) -> None: ...


class _RedisProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's protocol; a reply it cannot parse drops the connection (counted)."""

    store: RedisTierStore

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        try:
            super().dataReceived(data, unpause)
        except Exception as e:  # hiredis raises on bytes that are not RESP
            self.store._failed(GARBAGE, f"unreadable reply: {e}")
            self.transport.abortConnection()

    def connectionMade(self) -> Any:
        # Small pipelined commands: without TCP_NODELAY, Nagle's algorithm and delayed
        # ACKs hold the second of two back-to-back checks for up to 40 ms.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        result = super().connectionMade()  # no AUTH/SELECT here: the store does them
        self.store._set_up(self)
        return result

    lost: Failure | None = None

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # The tier check's command comes ready-made (``wire=``): txredisapi's general
        # encoder costs ~20 us a command, most of a check's CPU in this process.
        wire = kwargs.get("wire")
        if wire is not None:
            assert isinstance(wire, bytes)
            return wire
        built: bytes = super()._build_command(*args, **kwargs)
        return built

    def connectionLost(self, why: Failure) -> None:
        self.lost = why
        super().connectionLost(why)
        self.store._lost(self, why)


class _Factory(Factory):
    noisy = False

    def __init__(self, store: RedisTierStore) -> None:
        self.store = store

    def buildProtocol(self, addr: Any) -> _RedisProtocol:
        proto = _RedisProtocol(
            charset=None, replyTimeout=self.store.stuck_after, convertNumbers=False
        )
        proto.factory = self
        proto.store = self.store
        return proto


def endpoint_for(reactor: Any, settings: ClusterConfig) -> Any:
    """The client endpoint for ``[cluster] redis``: TCP, TLS (rediss) or a unix socket."""
    timeout = max(1.0, settings.timeout * 20)
    if settings.scheme == "unix":
        assert settings.path is not None
        return endpoints.UNIXClientEndpoint(reactor, settings.path, timeout=timeout)
    tcp = endpoints.HostnameEndpoint(reactor, settings.host, settings.port, timeout=timeout)
    if settings.scheme != "rediss":
        return tcp
    return endpoints.wrapClientTLS(tls_options(settings), tcp)


def tls_options(settings: ClusterConfig) -> Any:
    """Verified TLS to Redis (rediss://): its CA, or the system's, and our certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from twistedgw.tls import load_pem_certificates

    trust: Any = None
    if settings.trusted_certificate is not None:
        cas = load_pem_certificates(settings.trusted_certificate, "cluster.trusted_certificate")
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in cas]
        )
    client: Any = None
    if settings.certificate is not None and settings.private_key is not None:
        client = ssl.PrivateCertificate.loadPEM(
            settings.certificate.read_bytes() + b"\n" + settings.private_key.read_bytes()
        )
    return ssl.optionsForClientTLS(settings.host, trustRoot=trust, clientCertificate=client)


class RedisTierStore:
    """A ``tiers.TierStore`` in Redis. Reactor thread only; ``start`` before use."""

    def __init__(
        self,
        settings: ClusterConfig,
        reactor: Any = None,
        *,
        observer: ClusterObserver | None = None,
        endpoint: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.reactor = reactor
        self.observer = observer
        # A connection with replies this late is stuck, not slow: drop it (txredisapi
        # aborts it), so the replies waiting for it cannot pile up.
        self.stuck_after = max(1.0, settings.timeout * 20)
        self._endpoint = endpoint if endpoint is not None else endpoint_for(reactor, settings)
        self._service: ClientService | None = None
        self._conn: _RedisProtocol | None = None
        self._in_flight = 0
        self._setup_failures = 0
        self.problem: str | None = "not connected yet"
        self.script_reloads = 0
        self._log = RateLimitedLog(log, level=LogLevel.warn, clock=reactor.seconds)
        self._info = RateLimitedLog(log, level=LogLevel.info, clock=reactor.seconds)
        self._args = (settings.key_prefix, str(PERIOD_MS).encode(), str(EXPIRE_MS).encode())
        self._prefix = settings.key_prefix.encode()
        self._head = b"*7\r\n" + _bulk(b"EVALSHA") + _bulk(SCRIPT_SHA.encode()) + _bulk(b"1")
        self._tail = _bulk(str(PERIOD_MS).encode()) + _bulk(str(EXPIRE_MS).encode())
        self.closed = settings.on_failure == "closed"
        # This process's own buckets: what Redis allowed here, and the fallback for
        # checks whose reply comes too late while connected (``_expired``).
        self.local = TierThrottle()
        self._expiring: list[_Check] = []
        self._sweep: Any = None  # the one pending call to _expired

    # -- connection ------------------------------------------------------------

    def start(self) -> None:
        if self._service is not None:
            return
        self._service = ClientService(
            self._endpoint,
            _Factory(self),
            retryPolicy=self._retry_delay,
            clock=self.reactor,
        )
        self._service.startService()

    def stop(self) -> Deferred[None]:
        service, self._service = self._service, None
        self._conn = None
        if service is None:
            return succeed(None)
        d: Deferred[Any] = Deferred.fromCoroutine(_stopped(service))
        return d.addCallback(lambda _: None)

    def _retry_delay(self, attempt: int) -> float:
        # ClientService forgets failed attempts once TCP connects; a connection dropped
        # during set-up (not Redis, LOADING, wrong password) must still back off.
        return _BACKOFF(max(attempt, self._setup_failures))

    def _set_up(self, proto: _RedisProtocol) -> None:
        """SELECT the database (AUTH first if the URL has credentials) and load the
        script; only then is the connection used. A failure drops it (and retries).

        Not ClientService's prepareConnection: when the connection is lost during
        it, ClientService (26.10) hits a state-machine error.
        """
        settings = self.settings
        steps: list[tuple[Any, ...]] = []
        if settings.password is not None:
            if settings.username is not None:
                steps.append(("AUTH", settings.username, settings.password))
            else:
                steps.append(("AUTH", settings.password))
        steps.append(("SELECT", settings.db))
        steps.append(("SCRIPT", "LOAD", SCRIPT))

        def run(_: object, index: int) -> Any:
            if index == len(steps):
                return None
            d = proto.execute_command(*steps[index])
            d.addCallback(check, index)
            return d

        def check(reply: object, index: int) -> Any:
            if isinstance(reply, Exception):
                raise reply
            if steps[index][0] == "SCRIPT" and _text(reply) != SCRIPT_SHA:
                raise txredisapi.InvalidResponse(f"SCRIPT LOAD answered {reply!r}")
            return run(None, index + 1)

        def ready(_: object) -> None:
            if not proto.connected:
                return
            self._setup_failures = 0
            self._conn = proto
            self._in_flight = 0
            if self.problem is not None:  # at most once a minute, should Redis flap
                self._info.emit("connected", "Cluster store {where}: connected",
                                where=self.settings.describe())
            self._set_problem(None)

        def refused(failure: Failure) -> None:
            self._setup_failures += 1
            why = proto.lost if proto.lost is not None else failure  # e.g. TLS verification
            self._failed(DOWN, f"connection set-up failed: {why.getErrorMessage()}")
            if proto.transport is not None:
                proto.transport.abortConnection()

        run(None, 0).addCallbacks(ready, refused)

    def _lost(self, proto: _RedisProtocol, why: Failure) -> None:
        if proto is self._conn:
            self._conn = None
            self._failed(DOWN, f"connection lost: {why.getErrorMessage()}")

    # -- the request path ----------------------------------------------------------

    def take_limit(self, limit: Limit) -> float | Deferred[float | None] | None:
        """Spend one token in Redis; fires None if allowed, else the seconds to wait.

        Never waits for a connection; answers within ``timeout`` (plus one reactor
        iteration, so that a reply already received wins over the timer). A check
        still unanswered then is answered from this process's own bucket while the
        connection is up (see ``_expired``), and per ``on_failure`` when it is not.
        """
        conn = self._conn
        if conn is None:
            self._now(DOWN, self.problem or "not connected")
            return None
        if self._in_flight >= MAX_IN_FLIGHT:
            self._now(OVERLOAD, f"{MAX_IN_FLIGHT} round trips in flight")
            return None
        _prefix, period, expire = self._args
        tail = self._tail
        if limit.period_seconds != PERIOD_MS // 1000:  # a throttling policy's own period
            period = str(limit.period_seconds * 1000).encode()
            expire = str(limit.period_seconds * 1000 + 1000).encode()
            tail = _bulk(period) + _bulk(expire)
        key = self._prefix + limit.key
        capacity = str(limit.requests_per_minute).encode()
        started = self.reactor.seconds()
        self._in_flight += 1
        result: Deferred[float | None] = Deferred()
        check = _Check(result, limit, conn)
        timer = self.reactor.callLater(self.settings.timeout, self._late, check)

        def answered(reply: object) -> None:
            self._in_flight -= 1
            if result.called:
                return  # already answered (``_expired``)
            if timer.active():  # it may have fired, leaving the decision to ``_expired``
                timer.cancel()
            if isinstance(reply, Failure):
                reply = reply.value
            if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("NOSCRIPT"):
                # The script cache was flushed (SCRIPT FLUSH, a restart): EVAL loads it again.
                self.script_reloads += 1
                self._in_flight += 1
                timer2 = self.reactor.callLater(
                    max(0.0, self.settings.timeout - (self.reactor.seconds() - started)),
                    self._late,
                    check,
                )
                try:
                    again = conn.execute_command("EVAL", SCRIPT, 1, key, capacity, period, expire)
                except Exception as e:  # the connection went away meanwhile
                    self._in_flight -= 1
                    timer2.cancel()
                    self._answer(result, self._fallback(DOWN, str(e)))
                    return
                again.addBoth(finish, timer2)
                return
            finish(reply, None, counted=False)

        def finish(reply: object, timer2: Any, counted: bool = True) -> None:
            if counted:
                self._in_flight -= 1
            if result.called:
                return
            if timer2 is not None and timer2.active():
                timer2.cancel()
            if isinstance(reply, Failure):
                reply = reply.value
            verdict = _verdict(reply)
            if isinstance(verdict, str):
                if isinstance(reply, txredisapi.ConnectionError):  # lost, or stuck and dropped
                    kind = DOWN
                else:
                    kind = ERROR if isinstance(reply, Exception) else GARBAGE
                self._answer(result, self._fallback(kind, verdict))
                return
            if self.observer is not None:
                self.observer.cluster_round_trip(self.reactor.seconds() - started)
            if verdict is None:
                # What this process let through, so that a fallback to its own bucket
                # (``_expired``) never adds a fresh minute to what Redis allowed here.
                self.local.take_limit(limit)
            result.callback(verdict)

        wire = self._head + _bulk(key) + _bulk(capacity) + tail
        try:
            sent = conn.execute_command("EVALSHA", wire=wire)
        except Exception as e:  # the connection went away under us
            self._in_flight -= 1
            timer.cancel()
            self._now(DOWN, str(e))
            return None
        sent.addBoth(answered)
        return result

    def _late(self, check: _Check) -> None:
        """``timeout`` passed: decide after the reactor has read its sockets once more.

        Timers run before the reactor polls its sockets, so after one long iteration
        (a burst of requests, each sending a check) every timer is due while Redis's
        replies, sent within a millisecond, wait unread in the socket. The decision
        waits one iteration (a call made now runs after the next poll), so a reply
        already received wins; the checks expiring together share that one call.
        """
        if check.result.called:
            return
        self._expiring.append(check)
        if self._sweep is None:
            self._sweep = self.reactor.callLater(0, self._expired)

    def _expired(self) -> None:
        """Answer the checks that had no reply by ``timeout`` and one more poll.

        While the connection that carries them is up, the usual cause is this
        process's own backlog (the commands still in its write buffer, or the
        replies in its read buffer, when the time ran out), not Redis: opening the
        gate then would let a burst through exactly when a limit matters. So with
        ``on_failure = "open"`` such a check spends from this process's own bucket
        (``local``, which also counts what Redis allowed here): a caller gets at most
        the limit from this process, and Redis still counts the late check. Without
        a connection, and with ``"closed"``, it is ``on_failure``'s answer.
        """
        checks, self._expiring = self._expiring, []
        self._sweep = None
        why = f"no answer within {self.settings.timeout}s (timeout)"
        conn = self._conn
        live = conn is not None and bool(conn.connected) and not self.closed
        for check in checks:
            if check.result.called:
                continue
            if live and check.conn is conn:
                self._failed(TIMEOUT, why, policy=LOCAL_POLICY)
                check.result.callback(self.local.take_limit(check.limit))
            else:
                self._answer(check.result, self._fallback(TIMEOUT, why))

    def _answer(self, result: Deferred[float | None], why: str | None) -> None:
        if why is not None:
            result.errback(StoreUnavailable(why))
        else:
            result.callback(None)

    def _now(self, kind: str, why: str) -> None:
        """The ``on_failure`` answer without a round trip: None, or raise (closed)."""
        refused = self._fallback(kind, why)
        if refused is not None:
            raise StoreUnavailable(refused)

    def _fallback(self, kind: str, why: str) -> str | None:
        """Count and log the failure; None to serve (open), else why not (closed)."""
        self._failed(kind, why)
        if self.closed:
            return f"the cluster store cannot answer: {why}"
        return None

    # -- reporting -------------------------------------------------------------------

    def _failed(self, kind: str, why: str, policy: str | None = None) -> None:
        if self.observer is not None:
            self.observer.cluster_error(kind)
        if kind == DOWN:
            self._set_problem(why)
        self._log.emit(
            kind,
            "Cluster store {where}: {why}; {policy}",
            where=self.settings.describe(),
            why=why,
            policy=policy or self.policy(),
        )

    def policy(self) -> str:
        return (
            "throttled APIs answer 503 (on_failure = closed)"
            if self.closed
            else "serving without the shared limits (on_failure = open)"
        )

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        if self.observer is not None:
            self.observer.cluster_state(problem)

    def describe(self) -> str:
        """One line for ``/readyz``."""
        where = self.settings.describe()
        if self.problem is None:
            return f"cluster store {where}: connected"
        return f"cluster store {where}: unavailable ({self.problem}); {self.policy()}"


async def _stopped(service: ClientService) -> None:
    await service.stopService()


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _verdict(reply: object) -> float | str | None:
    """The script's answer as ``take`` returns it, or a description of what is wrong."""
    if isinstance(reply, Exception):
        return f"Redis answered an error: {reply}"
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in reply)
        and reply[0] in (0, 1)
        and reply[1] >= 0
    ):
        if reply[0] == 1:
            return None
        wait: int = reply[1]
        return max(wait, 1) / 1_000_000
    return f"unexpected reply {reply!r:.80}"
