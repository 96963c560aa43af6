"""``[mutual_ssl]``: client certificates that arrive in a load balancer's header, and whom to
believe about them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from twistedgw import _unixsockets as unixsockets
from twistedgw.config._base import TableReader, header_name, quoted, string_list

HEADER_ENCODINGS = ("auto", "url-pem", "aws-alb", "pem", "base64-der", "rfc9440", "xfcc", "traefik")


@dataclass(frozen=True)
class MutualSslConfig:
    """Load-balancer header mode; off unless ``certificate_header`` is set."""

    certificate_header: str | None = None
    header_encoding: str = "auto"
    chain_header: str | None = None  # RFC 9440 Client-Cert-Chain and the like
    enable_client_validation: bool = True
    load_balancer_aliases: frozenset[str] = frozenset()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    forward_client_certificate_header: bool = False
    # "unix" in trusted_proxies: a connection on a Unix-socket listener is a load
    # balancer's (the socket's file permissions decide who may connect).
    trust_unix_socket: bool = False
    # "unix:uid=NAME" entries: only these users' connections are (SO_PEERCRED); empty:
    # any process the socket's permissions let connect.
    unix_peer_uids: frozenset[int] = frozenset()
    # CA certificates that only complete leaf-only header chains (NGINX and HAProxy
    # send the leaf alone); they grant nothing by themselves.
    intermediates: Path | None = None

    @property
    def header_mode(self) -> bool:
        return self.certificate_header is not None


def read_mutual_ssl(r: TableReader) -> MutualSslConfig:
    header = header_name(r, "certificate_header", None)
    enc = r.choice("header_encoding", HEADER_ENCODINGS, "auto")
    chain_header = header_name(r, "chain_header", None)
    validation = r.get("enable_client_validation", bool, True)
    lb_aliases = string_list(r, "load_balancer_aliases") or []
    proxies = []
    trust_unix = False
    any_unix_peer = False
    peer_uids: set[int] = set()
    for i, raw in enumerate(string_list(r, "trusted_proxies") or []):
        if raw == "unix":
            trust_unix = any_unix_peer = True
            continue
        if raw.startswith("unix:"):
            trust_unix = True
            key, sep, user = raw[len("unix:"):].partition("=")
            if key != "uid" or not sep or not user:
                r.problem(
                    f"trusted_proxies[{i}]",
                    'expected "unix" or "unix:uid=USER" (a user name or number), got '
                    f"{quoted(raw)}",
                )
                continue
            try:
                peer_uids.add(unixsockets.user_id(user))
            except KeyError:
                r.problem(f"trusted_proxies[{i}]", f"no such user: {quoted(user)}")
            continue
        try:
            proxies.append(ipaddress.ip_network(raw, strict=False))
        except ValueError:
            r.problem(f"trusted_proxies[{i}]", f"not an IP network: {quoted(raw)}")
    if any_unix_peer and peer_uids:
        r.problem(
            "trusted_proxies",
            'give either "unix" (any process the socket lets connect) or "unix:uid=USER" '
            "entries (only those users), not both",
        )
    forward = r.get("forward_client_certificate_header", bool, False)
    intermediates = r.path_value("intermediates")
    if header is not None:
        if validation and not lb_aliases:
            r.problem(
                "load_balancer_aliases",
                "is required when enable_client_validation = true: name the truststore aliases "
                "that identify your load balancers (or set enable_client_validation = false "
                "with trusted_proxies)",
            )
        if not validation and not proxies and not trust_unix:
            r.problem(
                "trusted_proxies",
                "is required when enable_client_validation = false: without it any caller "
                "could forge the certificate header",
            )
    # RFC 9440 carries the intermediates in a second header; read it (and strip a
    # direct client's copy) whenever the certificate header is RFC 9440's.
    if (
        chain_header is None
        and header is not None
        and (enc == "rfc9440" or (enc == "auto" and header.lower() == "client-cert"))
    ):
        chain_header = "Client-Cert-Chain"
    r.finish()
    return MutualSslConfig(
        certificate_header=header,
        header_encoding=enc,
        chain_header=chain_header,
        enable_client_validation=validation,
        load_balancer_aliases=frozenset(lb_aliases),
        trusted_proxies=tuple(proxies),
        forward_client_certificate_header=forward,
        trust_unix_socket=trust_unix,
        unix_peer_uids=frozenset(peer_uids),
        intermediates=intermediates,
    )
