"""HTTP Basic authentication (RFC 7617) against ``[[basic_users]]``, as a scheme.

A password hash is slow on purpose (argon2id: ~50-200 ms and 64 MiB a check), so
it never runs on the reactor thread: ``PasswordChecks`` runs it in a thread pool of
its own (argon2-cffi and bcrypt release the GIL while they hash), with a bound on
the checks waiting for it. Over that bound a check is refused at once with 503
rather than queued: a flood of guesses must not grow memory or make every caller
wait behind it. A check that succeeded is remembered for a short while, keyed by a
keyed BLAKE2b digest of the user, the stored hash and the password (never the
password itself), so a caller that sends the same credentials on every request
pays the hash once a minute, and a changed hash (a reload) matches no old entry.

Unknown users are checked against a dummy hash, so an answer's timing does not
tell which user names exist; a wrong user and a wrong password read alike.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import os
import time
from base64 import b64decode
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedgw import errors
from twistedgw.config import ApiConfig, BasicUser
from twistedgw.pipeline._call import Call, HeaderEdit, SchemeResult
from twistedgw.pipeline._interfaces import IRequestTransform, IScheme

log = Logger()

AUTHORIZATION = b"authorization"
NO_CREDENTIALS = "no Basic credentials were presented"
NOT_VALID = "user name or password is not valid"
MALFORMED = "Basic credentials are malformed"
SEVERAL = "more than one Basic credential was presented"
BUSY = "too many password checks are waiting; try again shortly"

VERIFY_THREADS = 2  # argon2id's 64 MiB each: the pool's memory is bounded too
MAX_WAITING = 64  # checks running or queued; beyond, 503 at once
CACHE_ENTRIES = 4096
CACHE_SECONDS = 60.0
MAX_CREDENTIALS = 1024  # bytes of user:password; a longer header is malformed, not hashed

#: Run a function in the pool; a Deferred with its result.
Runner = Callable[[Callable[[], bool]], "Deferred[bool]"]


def is_basic(value: bytes) -> bool:
    """Whether an ``Authorization`` value is of the Basic scheme (case-insensitive)."""
    return value[:5].lower() == b"basic" and (len(value) == 5 or value[5:6] in (b" ", b"\t"))


def verify_password(stored: str, password: bytes) -> bool:
    """Whether ``password`` matches ``stored`` (argon2id PHC or bcrypt); thread-safe, slow."""
    if stored.startswith("$2"):
        import bcrypt

        try:
            return bool(bcrypt.checkpw(password, stored.encode("ascii")))
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes: they cannot match
            return False
    import argon2

    try:
        return bool(_hasher().verify(stored, password))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@functools.cache
def _hasher() -> Any:
    import argon2

    return argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, for unknown users (made once, in the pool)."""
    return str(_hasher().hash(os.urandom(32)))


def _check_unknown(password: bytes) -> bool:
    verify_password(_dummy_hash(), password)
    return False


def hash_password(password: str) -> str:
    """An argon2id PHC string for ``password`` (RFC 9106's second recommended profile:
    m=64 MiB, t=3, p=4), as ``twistedgw hash-password`` prints it."""
    return str(_hasher().hash(password))


class PasswordChecks:
    """Password checks off the reactor thread, bounded, with a short cache of successes.

    One per gateway process (``Shared`` keeps it across reloads); reactor thread only,
    except the hashing itself.
    """

    def __init__(
        self,
        *,
        run: Runner | None = None,
        reactor: Any = None,
        threads: int = VERIFY_THREADS,
        max_waiting: int = MAX_WAITING,
        cache_entries: int = CACHE_ENTRIES,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._reactor = reactor
        self._threads = threads
        self._pool: Any = None
        self.max_waiting = max_waiting
        self.waiting = 0
        self._cache: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry
        self._entries = cache_entries
        self._ttl = cache_seconds
        self._clock = clock
        self._secret = os.urandom(32)  # keys the digests: they are worthless off this process
        self._pending: dict[bytes, list[Deferred[bool]]] = {}  # the same check, asked again

    def digest(self, user: BasicUser | None, name: bytes, password: bytes) -> bytes:
        h = hashlib.blake2b(key=self._secret, digest_size=32)
        stored = user.password_hash.encode() if user is not None else b""
        for part in (name, stored, password):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def remembered(self, digest: bytes) -> bool:
        """Whether this check succeeded less than ``cache_seconds`` ago."""
        expiry = self._cache.get(digest)
        if expiry is None:
            return False
        if expiry < self._clock():
            del self._cache[digest]
            return False
        return True

    def check(
        self, user: BasicUser | None, digest: bytes, password: bytes
    ) -> Deferred[bool] | None:
        """The verdict, later; None when too many checks are waiting (refuse at once)."""
        waiters = self._pending.get(digest)
        if waiters is not None:  # the same credentials are being checked now: share it
            shared: Deferred[bool] = Deferred()
            waiters.append(shared)
            return shared
        if self.waiting >= self.max_waiting:
            return None
        self.waiting += 1
        first: Deferred[bool] = Deferred()
        self._pending[digest] = [first]
        if user is not None:
            stored = user.password_hash
            job: Callable[[], bool] = functools.partial(verify_password, stored, password)
        else:
            job = functools.partial(_check_unknown, password)
        self._submit(job).addBoth(self._done, digest, user is not None)
        return first

    def _done(self, result: bool | Failure, digest: bytes, known: bool) -> None:
        self.waiting -= 1
        if isinstance(result, Failure):  # the library's own bug: refuse, and say so
            log.failure("password check failed", result)
        ok = result is True and known
        if ok:
            self._cache[digest] = self._clock() + self._ttl
            self._cache.move_to_end(digest)
            while len(self._cache) > self._entries:
                self._cache.popitem(last=False)
        for waiter in self._pending.pop(digest, []):
            waiter.callback(ok)

    def _submit(self, job: Callable[[], bool]) -> Deferred[bool]:
        if self._run is not None:
            return self._run(job)
        from twisted.internet.threads import deferToThreadPool

        if self._pool is None:
            self._start_pool()
        d: Deferred[bool] = deferToThreadPool(self._reactor, self._pool, job)
        return d

    def _start_pool(self) -> None:
        from twisted.python.threadpool import ThreadPool

        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name="twistedgw-passwords")
        self._pool.start()
        self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()


def realm_of(api: ApiConfig) -> bytes:
    """A quoted-string realm from the API's name: printable ASCII, quotes and
    backslashes escaped (a name is the operator's, but a header must stay one header)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in api.name) or "twistedgw"
    return text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii")


@implementer(IScheme)
class BasicAuth:
    """``Authorization: Basic`` checked against ``[[basic_users]]``; joins the WSO2
    combine rule as ``basic_auth``. Its principal is ``basic:<user>``."""

    name = "basic_auth"

    def __init__(
        self,
        api: ApiConfig,
        users: Sequence[BasicUser],
        checks: PasswordChecks,
        owners: Mapping[str, str] | None = None,
    ) -> None:
        self.mode = api.basic_auth
        self._users = {u.name.encode(): u for u in users}
        self._checks = checks
        self._owners: Mapping[str, str] = owners or {}  # user name -> its consumer
        self.challenge = b'Basic realm="' + realm_of(api) + b'", charset="UTF-8"'
        self._passed: dict[str, SchemeResult] = {}

    def authenticate(self, call: Call) -> SchemeResult | Deferred[SchemeResult]:
        values = [v for v in call.request.headers.get(AUTHORIZATION) if is_basic(v.strip())]
        if not values:
            return SchemeResult(False, False, reason=NO_CREDENTIALS, challenge=self.challenge)
        if len(values) > 1:
            return self._failed(SEVERAL)
        parsed = _credentials(values[0])
        if parsed is None:
            return self._failed(MALFORMED)
        name, password = parsed
        user = self._users.get(name)
        checks = self._checks
        digest = checks.digest(user, name, password)
        if user is not None and checks.remembered(digest):
            return self._accept(user)
        pending = checks.check(user, digest, password)
        if pending is None:
            return SchemeResult(
                False, True, reason=BUSY, error=errors.overloaded(f"basic authentication: {BUSY}")
            )
        return pending.addCallback(
            lambda ok: self._accept(user) if ok and user is not None else self._failed(NOT_VALID)
        )

    def _accept(self, user: BasicUser) -> SchemeResult:
        result = self._passed.get(user.name)
        if result is None:
            result = self._passed[user.name] = SchemeResult(
                True, True, principal=f"basic:{user.name}", consumer=self._owners.get(user.name)
            )
        return result

    def _failed(self, reason: str) -> SchemeResult:
        return SchemeResult(False, True, reason=reason, challenge=self.challenge)


def _credentials(value: bytes) -> tuple[bytes, bytes] | None:
    """``(user, password)`` from one ``Basic`` value, or None if it is malformed."""
    token = value.strip()[5:].strip(b" \t")
    if not token or len(token) > (MAX_CREDENTIALS + 2) // 3 * 4:
        return None
    try:
        decoded = b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    name, colon, password = decoded.partition(b":")
    if not colon or not name:
        return None
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name, password


@implementer(IRequestTransform)
class StripBasicAuthorization:
    """A password is for the gateway: ``Authorization: Basic`` never reaches the backend
    (whatever ``forward_authorization`` says of bearer tokens)."""

    def transform_request(self, call: Call, edit: HeaderEdit) -> None:
        if any(is_basic(v.strip()) for v in call.request.headers.get(AUTHORIZATION)):
            edit.remove(AUTHORIZATION)


STRIP_BASIC_AUTHORIZATION = StripBasicAuthorization()
