"""Which certificate speaks for a request: the handshake's, or a load balancer's header.

The header counts only on a connection that is provably a load balancer's:
from ``trusted_proxies`` (when set) and, with ``enable_client_validation``,
presenting a certificate that verifies under one of ``load_balancer_aliases``.
A load balancer's own certificate never becomes the caller's identity. On any
other connection the header is ignored (and logged, at most once a minute per
source address), so a partner holding a trusted certificate cannot claim to be
another partner.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet.address import UNIXAddress
from twisted.logger import Logger

from twistedgw import _unixsockets as unixsockets
from twistedgw._ratelimitlog import RateLimitedLog
from twistedgw.config import MutualSslConfig
from twistedgw.http._snapshot import Snapshot
from twistedgw.identity import (
    ClientIdentity,
    HeaderDecodeError,
    Outcome,
    Source,
    decode,
    failed,
    no_certificate,
    reasons,
)
from twistedgw.wire import Exchange

log = Logger()

# A direct client chooses how often it sends the header: one line per source address
# per minute, with the count of repeats, so it cannot flood the log. Shared by every
# gateway in the process, like ``log``.
ignored_header_warnings = RateLimitedLog(log)

# A busy API sees the same few header values over and over; decoding (URL-unescape,
# base64, DER parsing) cost more than the verdict-cache lookup it precedes. The
# decoder is pure and its result immutable, so a small bounded cache keyed by the
# raw value is safe to share. Failures are not cached (lru_cache skips raises).
_decode = functools.lru_cache(maxsize=512)(decode)


class Caller(NamedTuple):
    """Who speaks for a request (a tuple: one is built per request)."""

    identity: ClientIdentity
    via_load_balancer: bool


def _from_trusted_network(ip: str, config: MutualSslConfig) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in config.trusted_proxies)


def _trusted_unix_peer(exchange: Exchange, config: MutualSslConfig) -> bool:
    """A connection on a Unix-socket listener, when ``trusted_proxies`` trusts those:
    from any process the socket's permissions let connect ("unix"), or only from the
    users named ("unix:uid=NAME", checked with SO_PEERCRED)."""
    conn = exchange.conn
    if not config.trust_unix_socket or not isinstance(conn.peer, UNIXAddress):
        return False
    if not config.unix_peer_uids:
        return True
    return unixsockets.peer_uid(conn.transport) in config.unix_peer_uids


def from_trusted_proxy(exchange: Exchange, config: MutualSslConfig) -> bool:
    """Whether the connection is one ``trusted_proxies`` names (a network, or a Unix-socket
    listener as "unix"/"unix:uid=NAME" say); nobody when it is empty. For what a proxy
    asserts that carries no certificate of its own (a trace context's sampled flag);
    asked before ``resolve``, which may adopt the address NGINX saw."""
    return _from_trusted_network(exchange.conn.client_ip, config) or _trusted_unix_peer(
        exchange, config
    )


def handshake_identity(exchange: Exchange, runtime: Snapshot) -> ClientIdentity:
    conn = exchange.conn
    if runtime.server_tls is None or not conn.secure:
        return no_certificate()
    # Over HTTP/2 the verdict is the stream's connection's.
    return runtime.server_tls.identity_for(conn.transport)


def _is_load_balancer(identity: ClientIdentity, config: MutualSslConfig) -> bool:
    return identity.verified and bool(identity.trust_aliases & config.load_balancer_aliases)


def _never_a_load_balancer(identity: ClientIdentity, config: MutualSslConfig) -> ClientIdentity:
    """A certificate under ``load_balancer_aliases`` never identifies a caller."""
    if _is_load_balancer(identity, config):
        return failed(identity.source, reasons.LOAD_BALANCER, identity.chain)
    return identity


#: ``_edge_ip``'s answers by value: a plain dict (an ``lru_cache`` call costs ~600
#: instructions, a dict look-up ~100), bounded as ``Shared``'s (the oldest goes first).
_EDGE_IPS: dict[bytes, str | None] = {}
_EDGE_IPS_MAX = 1024


def _edge_ip(value: bytes) -> str | None:
    """NGINX's ``X-Forwarded-For`` (its ``$remote_addr``) as the caller's address; kept:
    NGINX repeats a few addresses, and parsing one per request cost ~4% of an authz
    decision (bench/authz_cost.py)."""
    try:
        return _EDGE_IPS[value]
    except KeyError:
        pass
    try:
        ip: str | None = str(ipaddress.ip_address(value.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        ip = None
    _bounded_put(_EDGE_IPS, value, ip, _EDGE_IPS_MAX)
    return ip


class ConnectionCaller(NamedTuple):  # (``resolve`` reads its fields by index)
    """What ``resolve`` learns of a connection once, kept on it (``wire.Connection.caller``)
    under the config in force (issue 27 item 3): the handshake's verdict, the address,
    the Unix peer and the load-balancer trust do not change within a connection; only a
    trusted load balancer's header does, per request."""

    direct: Caller  # the caller when no header speaks for it
    trusted: bool  # a trusted load balancer's connection: its certificate header counts
    unix_peer: bool  # a trusted Unix-socket peer (NGINX in front): adopt its X-Forwarded-*


SHARED_MAX = 1024
"""How many callers (and verdicts on them) one config keeps for its connections to share."""


class Shared:
    """What connections under one config (runtime) share instead of a copy each: the
    ``ConnectionCaller`` of a handshake verdict (``ServerTLS`` gives every connection of a
    verified chain the same ``ClientIdentity``; every one without a certificate shares
    one too) and the pipelines' verdicts on it (``http/_resource.CallerVerdict``), keyed
    by the objects' ids (each entry holds its key objects, so no id is reused while it
    lives); and the identities of verified load-balancer certificate headers
    (``headers``, see ``resolve``). Bounded: the oldest entry goes first. A failed
    handshake's verdict is its connection's own (nothing a client that fails presents
    is kept here)."""

    __slots__ = (
        "callers", "chain_name", "header_name", "headers", "judged", "runtime", "verdicts",
    )

    def __init__(self, runtime: Snapshot) -> None:
        self.runtime = runtime
        # [mutual_ssl]'s header names as the fields' index keys them (lower-case bytes,
        # once per config).
        settings = runtime.config.mutual_ssl
        named = settings.certificate_header
        self.header_name = named.lower().encode() if named is not None else b""
        chain = settings.chain_header
        self.chain_name = chain.lower().encode() if chain is not None else None
        self.callers: dict[tuple[int, bool, bool], tuple[ClientIdentity, ConnectionCaller]] = {}
        self.verdicts: dict[tuple[int, int], Any] = {}
        # A load balancer repeats a few certificate headers: the identity a verified one
        # gives, by the header's bytes (and the chain header's), until the first expiry in
        # the chain, as the verifier's own cache keeps it; what the pipeline decides
        # (revocation, identity rules, tiers) is still decided per request. Failures are
        # not kept (the verifier keeps them, for less). Keyed by the value's first bytes
        # (the leaf's serial number is in them, or XFCC's hash), the whole value compared
        # on a hit: (first bytes, chain header) -> (value, expiry, identity).
        self.headers: dict[tuple[bytes, bytes | None], tuple[bytes, float, ClientIdentity]] = {}
        # The authz endpoint's judged Calls of per-caller pipelines (``_resource._authz``):
        # (pipeline, operation's API, identity, via a load balancer, asker) ids -> (those
        # objects, the outcome, the Call without its request, the asker, the allow's
        # answer block for it or None).
        self.judged: dict[tuple[int, int, int, bool, int], tuple[Any, ...]] = {}

    def caller(
        self, handshake: ClientIdentity, trusted: bool, unix_peer: bool, direct: ClientIdentity
    ) -> ConnectionCaller:
        """The one ``ConnectionCaller`` of ``handshake`` on such a connection."""
        if handshake.outcome is Outcome.FAILED:
            return ConnectionCaller(Caller(direct, False), trusted, unix_peer)
        key = (id(handshake), trusted, unix_peer)
        known = self.callers.get(key)
        if known is not None:
            return known[1]
        made = ConnectionCaller(Caller(direct, False), trusted, unix_peer)
        _bounded_put(self.callers, key, (handshake, made))
        return made

    def verdict(self, pipeline: object, caller: Caller) -> Any:
        """A pipeline's verdict on ``caller`` that a connection kept here, or None."""
        return self.verdicts.get((id(pipeline), id(caller)))

    def keep_verdict(self, pipeline: object, caller: Caller, verdict: Any) -> None:
        """Keep ``verdict`` (which holds ``pipeline`` and ``caller``) for the next
        connections of ``caller``: a shared caller's only (a load balancer's header makes
        a caller per request, a failed handshake one per connection)."""
        if not caller.via_load_balancer and caller.identity.outcome is not Outcome.FAILED:
            _bounded_put(self.verdicts, (id(pipeline), id(caller)), verdict)

    def keep_judged(
        self, key: tuple[int, int, int, bool, int], entry: tuple[Any, ...]
    ) -> None:
        """Keep an authz judgement (see ``judged``); the entry holds the key's objects."""
        _bounded_put(self.judged, key, entry)


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, limit: int = SHARED_MAX) -> None:
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


_shared: Shared | None = None


def shared(runtime: Snapshot) -> Shared:
    """The ``Shared`` of ``runtime`` (the config in force): one at a time, made anew when
    another runtime asks (a reload; the old one's entries go with it)."""
    global _shared
    current = _shared
    if current is None or current.runtime is not runtime:
        current = _shared = Shared(runtime)
    return current


def _connection_caller(exchange: Exchange, runtime: Snapshot) -> ConnectionCaller:
    handshake = handshake_identity(exchange, runtime)
    settings = runtime.config.mutual_ssl
    if settings.certificate_header is None:
        return shared(runtime).caller(handshake, False, False, handshake)
    unix_peer = _trusted_unix_peer(exchange, settings)
    trusted = (
        (not settings.trusted_proxies and not settings.trust_unix_socket)
        or _from_trusted_network(exchange.conn.client_ip, settings)
        or unix_peer
    ) and (
        not settings.enable_client_validation or _is_load_balancer(handshake, settings)
    )
    # A direct client: its own handshake certificate speaks for it, unless that is a
    # load balancer's certificate arriving from outside trusted_proxies.
    direct = _never_a_load_balancer(handshake, settings)
    return shared(runtime).caller(handshake, trusted, unix_peer, direct)


def resolve(
    exchange: Exchange, runtime: Snapshot,
    get: Callable[[bytes], list[bytes] | None] | None = None,
) -> Caller:
    """Who speaks for ``exchange``: what the connection says (computed once per connection
    and config, ``wire.Connection.caller``), or a trusted load balancer's header. ``get``:
    the request's fields by lower-case name (``Fields.index().get``), when the caller has
    it already (the authz endpoint)."""
    conn = exchange.conn
    if conn.generation is not runtime:  # (``derived_under``, its usual answer inline)
        conn.derived_under(runtime)
    seen: ConnectionCaller | None = conn.caller
    if seen is None:
        seen = conn.caller = _connection_caller(exchange, runtime)
    settings = runtime.config.mutual_ssl
    if settings.certificate_header is None:
        return seen.direct
    if get is None:
        get = exchange.fields.index().get  # (the names are lower-case: ``Shared``)
    config_shared = shared(runtime)  # the config's (its verifier, its [mutual_ssl])
    values = get(config_shared.header_name)
    # (``seen``'s fields by index: a NamedTuple's field by name is a descriptor call on
    # 3.11; ``ConnectionCaller``'s order: direct, trusted, unix_peer.)
    if not seen[1]:
        if values:
            # The address only: the value is the caller's and may be forged or huge.
            ip = exchange.client_ip
            ignored_header_warnings.emit(
                ip,
                "Ignored the {header} header from {address}: not a trusted load balancer",
                header=settings.certificate_header,
                address=ip,
            )
        return seen[0]
    if seen[2]:  # a trusted Unix-socket peer
        # Behind NGINX on a trusted Unix socket, the caller's address and scheme are the
        # ones NGINX saw (its X-Forwarded-For/X-Forwarded-Proto, which it always
        # replaces), so forwarding, the access log and metrics see the caller as in
        # direct mode (inline: once per decision).
        forwarded_for = get(b"x-forwarded-for")
        if forwarded_for is not None and len(forwarded_for) == 1:
            edge = forwarded_for[0]
            adopted = _EDGE_IPS.get(edge)
            if adopted is None and len(edge) <= 64:
                adopted = _edge_ip(edge)
            if adopted is not None:
                exchange.client_ip = adopted
        if get(b"x-forwarded-proto") == [b"https"]:
            hosts = get(b"host")
            if hosts and len(hosts) == 1:
                exchange.secure = True  # the client spoke TLS to NGINX
    if not values:
        return Caller(no_certificate(Source.HEADER), True)
    if len(values) > 1:
        return Caller(
            failed(Source.HEADER, "more than one certificate header was sent"), True
        )
    raw_chain = None
    chain_name = config_shared.chain_name
    if chain_name is not None:
        chain_values = get(chain_name)
        raw_chain = b",".join(chain_values) if chain_values else None
    verifier = runtime.header_verifier
    assert verifier is not None
    value = values[0]
    kept = config_shared.headers
    key = (value[:_KEY_HEAD], raw_chain)  # hashing a ~1.5 KB value costs ~5k instructions
    known = kept.get(key)
    if known is not None:
        if known[0] == value and time.time() < known[1]:
            # A new one, as before (not the connection's), made without NamedTuple's
            # Python ``__new__`` (a call per decision behind NGINX).
            return _new_caller(Caller, (known[2], True))  # type: ignore[no-any-return]
        del kept[key]
    try:
        decoded = _decode(
            value.decode("latin-1"), settings.header_encoding,
            raw_chain.decode("latin-1") if raw_chain is not None else None,
        )
    except HeaderDecodeError as e:
        return Caller(
            failed(Source.HEADER, f"certificate header could not be decoded: {e}"), True
        )
    verdict = verifier.verify(decoded.certs)
    identity = _never_a_load_balancer(verdict, settings)
    if verdict.outcome is Outcome.VERIFIED and verdict.chain:
        expires = min(c.not_valid_after_utc.timestamp() for c in verdict.chain)
        _bounded_put(kept, key, (value, expires, identity), _HEADERS_MAX)
    return Caller(identity, True)


_new_caller = tuple.__new__
assert len(Caller._fields) == 2, "resolve's Caller lists every field"
assert ConnectionCaller._fields == ("direct", "trusted", "unix_peer"), "resolve reads by index"
_KEY_HEAD = 160
_HEADERS_MAX = 512  # Shared.headers (each up to [limits] header size, as _decode)
