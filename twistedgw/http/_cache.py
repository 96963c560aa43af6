"""The response cache of APIs with ``[apis.response_cache]`` (``x-wso2-response-cache``).

It sits after the API's pipeline and before forwarding: only a request the pipeline
allowed is looked up, and one caller never sees what was kept for another, because
the key holds the caller (``caller_key``: its consumer, the principals its schemes
passed, its certificate, and a digest of any ``Authorization``/``Cookie`` the backend
receives), beside the API, the host, the scheme, the normalised path and the query;
each stored answer's ``Vary`` headers then select among its variants.

Only ``200`` answers to ``GET`` (served to ``HEAD`` too) are kept, and only what a
shared cache may keep (RFC 9111 as a gateway applies it): never ``no-store``,
``private``, ``no-cache``, ``Vary: *`` or ``Set-Cookie`` answers; ``s-maxage``, else
``max-age``, else ``Expires``, gives the lifetime, capped by the API's
``timeout_seconds`` (which also applies when the backend says nothing, as API
Manager's cache does). Requests with a body or a ``Range`` pass by.

The store is bounded per worker in entries, bytes and bytes per answer (larger
answers stream through as before and are never buffered whole), and the copies of
answers still streaming count against the bytes too; least recently used entries go
first. It belongs to one Runtime: a reload starts an empty one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from twistedgw import errors
from twistedgw.config import ApiCache, ResponseCacheConfig
from twistedgw.upstream import ForwardResult
from twistedgw.wire import Fields, Responder, ResponderWrapper, answer_headers

if TYPE_CHECKING:
    from twistedgw.http._resource import GatewayExchange

Headers = list[tuple[bytes, bytes]]

#: Forwarded request headers that carry credentials: a digest of them joins the key.
_CREDENTIALS = (b"authorization", b"cookie", b"proxy-authorization")
_NEVER = frozenset({"no-store", "private", "no-cache"})
_ENTRY_OVERHEAD = 256  # bytes charged per entry beyond its head and body (its objects)


# -------------------------------------------------------------------------- decisions


def request_cacheable(method: bytes, fields: Fields, body_size: int) -> bool:
    """Whether a request may be answered from the cache (and its answer kept)."""
    return (method == b"GET" or method == b"HEAD") and not body_size and b"range" not in fields


def cache_control(values: Iterable[bytes]) -> dict[str, str | None]:
    """``Cache-Control`` directives, names in lower case, quotes removed."""
    out: dict[str, str | None] = {}
    for value in values:
        for part in value.decode("latin-1").split(","):
            name, eq, arg = part.strip().partition("=")
            if name:
                out.setdefault(name.strip().lower(), arg.strip().strip('"') if eq else None)
    return out


def _seconds(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 12:
        return None
    return int(text)


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def _date(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> float | None:
    found = _values(headers, name)
    if len(found) != 1:
        return None
    try:
        return parsedate_to_datetime(found[0].decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def lifetime(headers: Sequence[tuple[bytes, bytes]], timeout: int) -> int | None:
    """How many seconds a 200 answer with ``headers`` may be served from the cache (its
    ``Age`` not yet subtracted), or None when it must not be kept."""
    directives = cache_control(_values(headers, b"cache-control"))
    if _NEVER.intersection(directives) or _values(headers, b"set-cookie"):
        return None
    if any(v.strip() == b"*" for value in _values(headers, b"vary") for v in value.split(b",")):
        return None
    for name in ("s-maxage", "max-age"):
        if name in directives:
            seconds = _seconds(directives[name])
            if seconds is None:  # malformed: stale (RFC 9111 4.2.1)
                return None
            return min(seconds, timeout) or None
    if _values(headers, b"expires"):
        expires, date = _date(headers, b"expires"), _date(headers, b"date")
        if expires is None or date is None or expires <= date:
            return None  # an invalid or past Expires means already stale
        return min(int(expires - date), timeout) or None
    return timeout


def vary_names(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, ...]:
    """The request headers an answer varies on, lower case, in one order."""
    names = {v.strip().lower() for value in _values(headers, b"vary")
             for v in value.split(b",") if v.strip()}
    return tuple(sorted(names))


def initial_age(headers: Sequence[tuple[bytes, bytes]]) -> int:
    found = _values(headers, b"age")
    seconds = _seconds(found[0].decode("latin-1").strip()) if len(found) == 1 else None
    return seconds or 0


def caller_key(
    exchange: GatewayExchange,
    add_headers: Sequence[tuple[bytes, bytes]],
    remove_headers: Collection[bytes],
) -> tuple[Any, ...]:
    """Who is asking, as far as the backend could tell callers apart: the consumer, the
    principals the schemes passed, the certificate, whether its credential is a sandbox
    one (another backend), and a digest of the credential headers the backend receives
    (so a backend that reads its own cookies or tokens never has one caller's answer
    served to another)."""
    # The request's Call, or the connection's verdict when the pipeline ran once for
    # the caller (a kept-alive connection's next requests, or another connection of the
    # same caller's): both name the caller the same way, so both find one entry.
    judged = exchange.call if exchange.call is not None else exchange.verdict
    consumer = principals = cert = None
    sandbox = False
    if judged is not None:
        consumer, principals, sandbox = judged.consumer, judged.principals, judged.sandbox
        identity = judged.identity
        if identity is not None and identity.verified and identity.leaf is not None:
            cert = identity.leaf_sha256()
    digest = b""
    added = {n.lower(): v for n, v in add_headers}
    removed = {n.lower() for n in remove_headers}
    fields = exchange.fields
    parts = []
    for name in _CREDENTIALS:
        if name in added:
            parts.append(added[name])
        elif name not in removed:
            parts.extend(fields.getRawHeaders(name) or ())
    if parts:
        digest = hashlib.sha256(b"\n".join(parts)).digest()
    return (consumer, principals, cert, digest, sandbox)


# -------------------------------------------------------------------------- the store


class Stored(NamedTuple):
    headers: tuple[tuple[bytes, bytes], ...]  # as the backend sent them (before transforms)
    body: bytes
    stored: float  # the reactor's seconds when kept
    expires: float  # ... and when it is no longer served
    age: int  # the Age the backend's answer already had
    size: int  # what it is charged against the bounds


class ResponseStore:
    """One worker's bounded cache: entries by (primary key, Vary values), least recently
    used first out; each primary key remembers the Vary names of its last answer."""

    def __init__(self, bounds: ResponseCacheConfig, clock: Callable[[], float]) -> None:
        self.bounds = bounds
        self.clock = clock
        self._entries: OrderedDict[tuple[Any, ...], Stored] = OrderedDict()
        self._vary: dict[tuple[Any, ...], tuple[tuple[bytes, ...], set[tuple[Any, ...]]]] = {}
        self.bytes = 0
        # Bytes held by answers being copied as they stream (not yet complete): at most
        # max_bytes as well, however many cacheable answers are in flight at once.
        self.pending = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _full(primary: tuple[Any, ...], names: tuple[bytes, ...], fields: Fields
              ) -> tuple[Any, ...]:
        values = tuple(tuple(fields.getRawHeaders(n) or ()) for n in names)
        return (primary, names, values)

    def get(self, primary: tuple[Any, ...], fields: Fields) -> Stored | None:
        varying = self._vary.get(primary)
        if varying is None:
            return None
        key = self._full(primary, varying[0], fields)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, primary: tuple[Any, ...], names: tuple[bytes, ...], fields: Fields,
            entry: Stored) -> bool:
        if entry.size > self.bounds.max_entry_bytes:
            return False
        varying = self._vary.get(primary)
        if varying is not None and varying[0] != names:
            for old in list(varying[1]):  # the backend now varies on other headers
                self._drop(old)
            varying = None
        key = self._full(primary, names, fields)
        if key in self._entries:
            self._drop(key)
            varying = self._vary.get(primary)
        if varying is None:
            varying = self._vary[primary] = (names, set())
        varying[1].add(key)
        self._entries[key] = entry
        self.bytes += entry.size
        bounds = self.bounds
        while len(self._entries) > bounds.max_entries or self.bytes > bounds.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: tuple[Any, ...]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry.size
        primary = key[0]
        varying = self._vary.get(primary)
        if varying is not None:
            varying[1].discard(key)
            if not varying[1]:
                del self._vary[primary]


# -------------------------------------------------------------------------- the hook


class _Capture(ResponderWrapper):
    """The responder while a cacheable answer streams to the client: it keeps a copy of
    the body (up to the per-answer bound) and stores the answer once it is complete."""

    __slots__ = ("_backend", "_body", "_size", "head", "status")

    def __init__(self, backend: CachingBackend, inner: Responder) -> None:
        super().__init__(inner)
        self._backend = backend
        self._body: list[bytes] | None = []
        self._size = 0
        self.head: Headers | None = None  # the backend's headers, before the transforms
        self.status = 0

    def start_response(
        self, status: int, headers: Headers, length: int | None, reason: bytes | None = None
    ) -> None:
        if status != 200 or self.head is None or (
            length is not None and length > self._backend.store.bounds.max_entry_bytes
        ):
            self._drop()
        self.status = status
        self._inner.start_response(status, headers, length, reason)

    def write(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            store = self._backend.store
            bounds = store.bounds
            if self._size + len(data) > bounds.max_entry_bytes or (
                store.pending + len(data) > bounds.max_bytes
            ):
                self._drop()  # too large to keep (or too much in flight): it streams on
            else:
                self._size += len(data)
                store.pending += len(data)
                body.append(data)
        self._inner.write(data)

    def release(self) -> None:
        """Forget the copy (the exchange is over)."""
        self._drop()

    def _drop(self) -> None:
        if self._body is not None:
            self._backend.store.pending -= self._size
            self._body = None

    def finish(self) -> None:
        self._inner.finish()
        body = self._body
        self._drop()
        if body is not None and self.head is not None and not self._inner.gone:
            self._backend.keep(self.head, b"".join(body))

    def abort(self) -> None:
        self._drop()
        self._inner.abort()


OnAnswer = Callable[[int, Headers], "errors.GatewayError | None"]


class CachingBackend:
    """A backend (anything with ``Forwarder.forward``'s signature) with the response
    cache in front: one per request, made by ``http/_served.backend_for``."""

    def __init__(self, store: ResponseStore, settings: ApiCache, inner: Any,
                 exchange: GatewayExchange) -> None:
        self.store = store
        self.settings = settings
        self.inner = inner
        self.exchange = exchange
        self._primary: tuple[Any, ...] = ()

    def forward(
        self,
        exchange: GatewayExchange,
        target: bytes,
        *,
        body: IO[bytes] | None = None,
        body_size: int = 0,
        add_headers: Sequence[tuple[bytes, bytes]] = (),
        remove_headers: Collection[bytes] = (),
        on_done: Callable[[ForwardResult], None] | None = None,
        on_answer: OnAnswer | None = None,
        **kwargs: Any,
    ) -> None:
        def send(answered: OnAnswer | None,
                 done: Callable[[ForwardResult], None] | None = on_done) -> None:
            self.inner.forward(
                exchange, target, body=body, body_size=body_size, add_headers=add_headers,
                remove_headers=remove_headers, on_done=done, on_answer=answered, **kwargs)

        routed = exchange.routed
        if routed is None or not request_cacheable(exchange.method, exchange.fields, body_size):
            send(on_answer)
            return
        self._primary = (id(exchange.api), exchange.host, exchange.secure, routed.path,
                         routed.query, caller_key(exchange, add_headers, remove_headers))
        hit = self.store.get(self._primary, exchange.fields)
        if hit is not None:
            exchange.cache = "hit"
            self._replay(hit, on_done, on_answer)
            return
        exchange.cache = "miss"
        if exchange.method != b"GET":
            send(on_answer)
            return
        capture = _Capture(self, exchange.responder)
        exchange.responder = capture

        def answered(status: int, headers: Headers) -> errors.GatewayError | None:
            if status == 200:
                capture.head = list(headers)
            return on_answer(status, headers) if on_answer is not None else None

        def done(result: ForwardResult) -> None:
            capture.release()  # however it ended (a client that left never finishes it)
            if on_done is not None:
                on_done(result)

        send(answered, done)

    def keep(self, head: Headers, body: bytes) -> None:
        """A complete 200 answer to a GET: keep it if its headers allow."""
        seconds = lifetime(head, self.settings.timeout_seconds)
        if seconds is None:
            return
        age = initial_age(head)
        if age >= seconds:
            return
        now = self.store.clock()
        kept = tuple((n, v) for n, v in head if n.lower() != b"age")
        size = len(body) + sum(len(n) + len(v) for n, v in kept) + _ENTRY_OVERHEAD
        self.store.put(self._primary, vary_names(head), self.exchange.fields,
                       Stored(kept, body, now, now + seconds - age, age, size))

    def _replay(self, hit: Stored, on_done: Callable[[ForwardResult], None] | None,
                on_answer: OnAnswer | None) -> None:
        exchange = self.exchange
        responder = exchange.responder
        headers = list(hit.headers)
        headers.append((b"Age", b"%d" % (hit.age + int(self.store.clock() - hit.stored),)))
        status, body = 200, hit.body
        refused = on_answer(200, headers) if on_answer is not None else None
        if refused is not None:  # a response transform failed: its error, as forwarding does
            status, body = refused.status, refused.body()
            headers = answer_headers()
            headers.append((b"Content-Type", errors.JSON_TYPE))
        responder.start_response(status, headers, len(body))
        sent = 0
        if exchange.method != b"HEAD":
            responder.write(body)
            sent = len(body)
        responder.finish()
        if on_done is not None:
            on_done(ForwardResult(status, sent, None if refused is None else "other"))
