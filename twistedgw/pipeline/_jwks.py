"""JSON Web Key Sets: the public keys that verify an issuer's access tokens.

A JWKS comes from a file (read whenever a config is loaded, so a problem is a
``check`` error naming the key) or from a URL, fetched in the background by a
``JwksFetcher`` that outlives reloads (it lives in the pipeline's ``Shared``).
The request path never waits for the network, except a token whose ``kid`` is
unknown, which may wait for the one refetch allowed per ``REFETCH_INTERVAL``,
bounded by ``FETCH_TIMEOUT``.

A document is taken whole or not at all: a key with a private part, a
symmetric key, a key of a type or curve no configurable algorithm uses, or a
malformed one refuses the document (for a URL: the last good set is kept, and
the log and ``twistedgw_jwks_*`` metrics say so).
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwk
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

__all__ = [
    "ALGORITHM_KEYS",
    "FETCH_TIMEOUT",
    "MAX_JWKS_BYTES",
    "REFETCH_INTERVAL",
    "JwksCollector",
    "JwksError",
    "JwksFetcher",
    "JwksFetchers",
    "KeySet",
    "VerifyKey",
    "key_fits",
    "load_file",
    "parse_jwks",
]

log = Logger()

MAX_JWKS_BYTES = 1 << 20  # a JWKS larger than this is refused (file or URL)
MAX_KEYS = 100
REFETCH_INTERVAL = 30.0  # at most one refetch for an unknown kid per this many seconds
FETCH_TIMEOUT = 5.0  # one fetch, connect to last byte
WAIT_LIMIT = FETCH_TIMEOUT + 1.0  # the longest a request waits for a refetch, whatever happens

# Which key each configurable algorithm needs: (kty, allowed curves or None).
ALGORITHM_KEYS: Mapping[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_CURVES = {"EC": frozenset({"P-256", "P-384"}), "OKP": frozenset({"Ed25519", "Ed448"})}
_PRIVATE = {
    "RSA": ("d", "p", "q", "dp", "dq", "qi", "oth"),
    "EC": ("d",),
    "OKP": ("d",),
}
_MIN_RSA_BITS = 2048


class JwksError(Exception):
    """A JWKS document that cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class VerifyKey:
    """One public key of a JWKS, checked and imported."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg", when it names one
    key: Any  # a joserfc key


@dataclass(frozen=True)
class KeySet:
    keys: tuple[VerifyKey, ...] = ()
    by_kid: Mapping[str, VerifyKey] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def key_fits(alg: str, key: VerifyKey) -> bool:
    """Whether ``key`` may verify a signature made with ``alg``."""
    need = ALGORITHM_KEYS.get(alg)
    if need is None:
        return False
    kty, curves = need
    if key.kty != kty or (curves is not None and key.crv not in curves):
        return False
    return key.alg is None or key.alg == alg


def _key_label(index: int, kid: object) -> str:
    return f"key {index} (kid {kid!r})" if kid is not None else f"key {index}"


def _one_key(index: int, raw: object) -> VerifyKey | None:
    if not isinstance(raw, dict):
        raise JwksError(f"key {index} is not a JSON object")
    kid = raw.get("kid")
    what = _key_label(index, kid)
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"{what}: kid must be a string")
    kty = raw.get("kty")
    if not isinstance(kty, str):
        raise JwksError(f"{what} has no key type (kty)")
    if kty == "oct":
        raise JwksError(f"{what} is a symmetric key (kty \"oct\"); only public keys are accepted")
    if kty not in _PRIVATE:
        raise JwksError(f"{what} has key type {kty!r}; accepted: RSA, EC, OKP")
    private = [name for name in _PRIVATE[kty] if name in raw]
    if private:
        raise JwksError(
            f"{what} holds a private part ({', '.join(private)}); publish only public keys"
        )
    use = raw.get("use")
    if use is not None and use != "sig":
        if use == "enc":
            return None  # an encryption key: never used to verify a signature
        raise JwksError(f"{what}: unknown use {use!r}")
    crv = raw.get("crv")
    if crv is not None and not isinstance(crv, str):
        raise JwksError(f"{what}: crv must be a string")
    if kty in _CURVES and crv not in _CURVES[kty]:
        raise JwksError(
            f"{what} is on curve {crv!r}; accepted for {kty}: {', '.join(sorted(_CURVES[kty]))}"
        )
    alg = raw.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            raise JwksError(f"{what}: alg must be a string")
        need = ALGORITHM_KEYS.get(alg)
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise JwksError(f"{what} names algorithm {alg!r}, which is never accepted")
        if need is not None and (need[0] != kty or (need[1] is not None and crv not in need[1])):
            raise JwksError(f"{what} names algorithm {alg!r}, which does not fit a {kty} key")
    ops = raw.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None  # declared not to be for verifying
    try:
        imported = jwk.import_key(raw)  # checks the numbers, EC points on the curve, ...
    except Exception as e:
        raise JwksError(f"{what} is not a valid JWK: {e}") from None
    if imported.is_private:
        raise JwksError(f"{what} holds a private part; publish only public keys")
    if kty == "RSA":
        bits: int = getattr(imported.raw_value, "key_size", 0)
        if bits < _MIN_RSA_BITS:
            raise JwksError(f"{what} is a {bits}-bit RSA key; at least {_MIN_RSA_BITS} bits")
    return VerifyKey(kid, kty, crv if isinstance(crv, str) else None, alg, imported)


def parse_jwks(data: bytes | str) -> KeySet:
    """A checked key set from a JWKS document; raise ``JwksError`` saying what is wrong."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_JWKS_BYTES:
        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise JwksError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('not a JWKS: expected a JSON object with a "keys" list')
    raw_keys = doc["keys"]
    if len(raw_keys) > MAX_KEYS:
        raise JwksError(f"has {len(raw_keys)} keys; at most {MAX_KEYS}")
    keys: list[VerifyKey] = []
    by_kid: dict[str, VerifyKey] = {}
    for index, raw in enumerate(raw_keys):
        try:
            key = _one_key(index, raw)
        except JwksError:
            raise
        except Exception as e:  # whatever a hostile document provokes: refused all the same
            raise JwksError(f"{_key_label(index, None)} cannot be used: {e!r}") from None
        if key is None:
            continue
        if key.kid is not None:
            if key.kid in by_kid:
                raise JwksError(f"two keys have kid {key.kid!r}")
            by_kid[key.kid] = key
        keys.append(key)
    if not keys:
        raise JwksError("has no public signing key")
    return KeySet(tuple(keys), by_kid)


def load_file(path: Path) -> KeySet:
    """Read and check a JWKS file; ``JwksError`` names what is wrong (not the key path)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
    except OSError as e:
        raise JwksError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_jwks(data)
    except JwksError as e:
        raise JwksError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- fetching

#: Fetches one URL: a Deferred firing with the body, failing on any error.
Getter = Callable[[str, "IPolicyForHTTPS | None"], "Deferred[bytes]"]


class _Exceeded(Exception):
    """A fetch that broke a bound (size or time); the message says which."""


class _Collect(Protocol):
    """Collects a response body up to ``MAX_JWKS_BYTES``; aborts the connection past it."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > MAX_JWKS_BYTES:
            self._done.errback(_Exceeded(f"the response is larger than {MAX_JWKS_BYTES} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def http_get(url: str, policy: IPolicyForHTTPS | None) -> Deferred[bytes]:
    """GET ``url`` with twisted.web's Agent (https checked by ``policy``); bounded in time."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = (
        Agent(reactor, contextFactory=policy, connectTimeout=FETCH_TIMEOUT, pool=pool)
        if policy is not None
        else Agent(reactor, connectTimeout=FETCH_TIMEOUT, pool=pool)
    )
    requested = agent.request(
        b"GET",
        url.encode("ascii"),
        Headers({b"accept": [b"application/jwk-set+json, application/json"]}),
    )

    def got(response: Any) -> Deferred[bytes]:
        if response.code != 200:
            response.deliverBody(Protocol())  # discard
            raise ValueError(f"HTTP status {response.code}")
        body: Deferred[bytes] = Deferred()
        response.deliverBody(_Collect(body))
        return body

    result: Deferred[bytes] = requested.addCallback(got)
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        result.cancel()

    timer = reactor.callLater(FETCH_TIMEOUT, expire)  # type: ignore[attr-defined]

    def done(value: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(value, Failure):
            # The cancellation arrives wrapped (ResponseNeverReceived, ...): say what it was.
            raise _Exceeded(f"no complete answer within {FETCH_TIMEOUT:g} s")
        return value

    return result.addBoth(done)


_LIVE: weakref.WeakSet[JwksFetcher] = weakref.WeakSet()


def loggable(url: str) -> str:
    """``scheme://host[:port]/path`` of a JWKS URL, for log lines and metric labels:
    the query (an IdP may take a key there), the fragment and any user info stay out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class JwksFetcher:
    """One JWKS URL: fetched at start and every ``refresh`` seconds, in the background.

    ``keys`` is the last good set (None until one arrived). A failed fetch keeps
    it and says so in the log and the metrics. ``refetch()`` is for a token whose
    kid is unknown: it joins a fetch in flight, or starts one unless another
    unknown kid started one less than ``REFETCH_INTERVAL`` ago (the periodic
    fetches do not count: a key rotated just after one is found at once).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: IReactorTime | None = None,
        get: Getter = http_get,
        now: Callable[[], float] = time.time,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self.url = url
        self.label = loggable(url)  # what logs and metrics show of it
        self.keys: KeySet | None = None
        self.policy: IPolicyForHTTPS | None = None
        self.refresh = 300.0
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self._get = get
        self._now = now
        self._started = False
        self._timer: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] | None = None  # a fetch is running when not None
        self._last_refetch: float | None = None  # clock time of the last unknown-kid fetch
        # For the metrics and the log.
        self.successes = 0
        self.failures = 0
        self.last_success: float | None = None  # wall time
        self.last_error: str | None = None
        _LIVE.add(self)

    def configure(self, policy: IPolicyForHTTPS | None, refresh: float) -> None:
        """Settings of the config now loaded (a reload may change them)."""
        self.policy = policy
        if refresh != self.refresh:
            self.refresh = refresh
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
                self._schedule()

    def start(self) -> None:
        """Fetch once the reactor runs (never during ``twistedgw check``), then periodically."""
        if self._started:
            return
        self._started = True
        when_running = getattr(self._clock, "callWhenRunning", None)
        if when_running is not None:
            when_running(self._fetch)
        else:  # a test clock
            self._fetch()

    def stop(self) -> None:
        self._started = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def stale(self) -> bool:
        """The last fetch failed (the keys in use, if any, are older)."""
        return self.last_error is not None

    def refetch(self) -> Deferred[None] | None:
        """For an unknown kid: a Deferred firing when a fetch ends, or None when an
        unknown kid had one fetched less than ``REFETCH_INTERVAL`` ago."""
        if self._waiters is not None:
            return self._wait()
        now = self._clock.seconds()
        if self._last_refetch is not None and now - self._last_refetch < REFETCH_INTERVAL:
            return None
        self._last_refetch = now
        return self._wait_after_fetch()

    def _wait(self) -> Deferred[None]:
        """A Deferred firing when the fetch in flight ends, or after ``WAIT_LIMIT``
        whatever the fetch does (a request must not wait on a getter that hangs)."""
        d: Deferred[None] = Deferred()
        assert self._waiters is not None
        self._waiters.append(d)
        timer = self._clock.callLater(WAIT_LIMIT, lambda: None if d.called else d.callback(None))

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    def _wait_after_fetch(self) -> Deferred[None]:
        self._fetch()
        if self._waiters is None:  # finished synchronously
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return self._wait()

    def _schedule(self) -> None:
        if self._started:
            self._timer = self._clock.callLater(self.refresh, self._fetch)

    def _fetch(self) -> None:
        if self._waiters is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._waiters = []
        try:
            d = self._get(self.url, self.policy)
        except Exception as e:
            self._failed(Failure(e))
            return
        d.addCallbacks(self._got, self._failed)
        d.addErrback(lambda f: log.failure("JWKS fetch bookkeeping failed", f))

    def _got(self, body: bytes) -> None:
        try:
            keys = parse_jwks(body)
        except Exception as e:  # JwksError, or anything unforeseen: never wedge the waiters
            self._failed(Failure(e))
            return
        was_stale = self.stale
        self.keys = keys
        self.successes += 1
        self.last_success = self._now()
        self.last_error = None
        if was_stale:
            log.info("JWKS {url}: fetched again ({count} keys)", url=self.label,
                     count=len(keys))
        self._finish()

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        error = failure.value
        if isinstance(error, JwksError):
            text = f"refused the key set: {error}"
        elif failure.check(_Exceeded):
            text = str(error)
        else:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.last_error = text
        if self.keys is None:
            log.warn(
                "JWKS {url} could not be fetched ({error}); no key set yet, so tokens "
                "of this issuer are refused until a fetch succeeds",
                url=self.label,
                error=text,
            )
        else:
            log.warn(
                "JWKS {url} could not be fetched ({error}); keeping the last good key set "
                "({count} keys)",
                url=self.label,
                error=text,
                count=len(self.keys),
            )
        self._finish()

    def _finish(self) -> None:
        waiters, self._waiters = self._waiters or [], None
        self._schedule()
        for d in waiters:
            if not d.called:
                d.callback(None)


class JwksFetchers:
    """The fetchers of every JWKS URL ever configured, by URL (kept across reloads)."""

    def __init__(self, *, clock: IReactorTime | None = None, get: Getter = http_get) -> None:
        self._clock = clock
        self._get = get
        self._by_url: dict[str, JwksFetcher] = {}

    def get(self, url: str, policy: IPolicyForHTTPS | None, refresh: float) -> JwksFetcher:
        fetcher = self._by_url.get(url)
        if fetcher is None:
            fetcher = JwksFetcher(url, clock=self._clock, get=self._get)
            self._by_url[url] = fetcher
        fetcher.configure(policy, refresh)
        fetcher.start()
        return fetcher

    def __iter__(self) -> Iterator[JwksFetcher]:
        return iter(list(self._by_url.values()))

    def retain(self, urls: Iterable[str]) -> None:
        """Stop fetching URLs the config just loaded no longer names (their last keys are
        kept, and a later config naming them again restarts them)."""
        keep = set(urls)
        for url, fetcher in self._by_url.items():
            if url not in keep:
                fetcher.stop()

    def stop(self) -> None:
        for fetcher in self:
            fetcher.stop()


class JwksCollector:
    """``twistedgw_jwks_*``: fetches by result, keys held, staleness, last success.

    Reads the fetchers alive in this process at scrape time.
    """

    def __init__(self, fetchers: Callable[[], Iterable[JwksFetcher]] | None = None) -> None:
        self._fetchers = fetchers or (lambda: list(_LIVE))

    def describe(self) -> list[Any]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            CounterMetricFamily(
                "twistedgw_jwks_fetches",
                "JWKS URL fetches, by URL (without its query) and result (success|failure).",
                labels=["url", "result"],
            ),
            GaugeMetricFamily(
                "twistedgw_jwks_keys", "Keys in the JWKS in use, by URL.", labels=["url"]
            ),
            GaugeMetricFamily(
                "twistedgw_jwks_stale",
                "1 when the last fetch of the URL failed (the last good key set is in use).",
                labels=["url"],
            ),
            GaugeMetricFamily(
                "twistedgw_jwks_last_success_timestamp_seconds",
                "When the URL was last fetched successfully (Unix time).",
                labels=["url"],
            ),
        )

    def collect(self) -> Iterator[Any]:
        fetches, keys, stale, last = self._families()
        taken: dict[str, int] = {}
        for f in sorted(self._fetchers(), key=lambda f: f.url):
            # The URL as logged; URLs that differ only in what it leaves out get " (2)"...
            n = taken[f.label] = taken.get(f.label, 0) + 1
            url = f.label if n == 1 else f"{f.label} ({n})"
            fetches.add_metric([url, "success"], f.successes)
            fetches.add_metric([url, "failure"], f.failures)
            keys.add_metric([url], len(f.keys) if f.keys is not None else 0)
            stale.add_metric([url], 1 if f.stale else 0)
            if f.last_success is not None:
                last.add_metric([url], f.last_success)
        yield from (fetches, keys, stale, last)
