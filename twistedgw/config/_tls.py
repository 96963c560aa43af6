"""``[tls]`` and ``[[tls.sni]]``: the listeners' server certificates, truststore and revocation.

Only paths and choices are read here; ``tls/`` loads the key material.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from twistedgw import _hosts as hostnames
from twistedgw.config._base import TableReader, host_patterns, quoted, resolve, string_list

TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
TLS_PROFILES = ("intermediate", "modern")  # Mozilla's server-side TLS configurations
REVOCATION_MODES = ("off", "crl", "ocsp", "crl+ocsp")
CLIENT_CERTIFICATE = ("auto", "request", "off")  # whether the handshake asks for one
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class SniEntry:
    """One ``[[tls.sni]]`` table: a server certificate for the hosts a client's SNI names,
    and whether (and naming which CAs) its handshakes ask for a client certificate."""

    hosts: tuple[str, ...]  # host patterns, one spelling (_hosts.pattern)
    certificate: Path | None = None
    private_key: Path | None = None
    keystore: Path | None = None
    keystore_password: str | None = field(default=None, repr=False)  # a secret
    client_certificate: str = "auto"
    advertise_ca_names: bool = True
    where: str = field(default="", compare=False)  # its dotted key, e.g. "tls.sni[0]"


def ocsp_origin(url: str) -> str:
    """An OCSP responder URL's origin, one spelling: ``http://host:port`` (scheme and host
    lower-case, IPv6 in brackets, the port always written). ValueError if it is not an
    http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// responders are fetched")
    host = parts.hostname
    if not host:
        raise ValueError("no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class TlsConfig:
    certificate: Path | None = None
    private_key: Path | None = None
    keystore: Path | None = None
    keystore_password: str | None = field(default=None, repr=False)  # a secret
    truststore: Path | None = None
    truststore_password: str | None = field(default=None, repr=False)  # a secret
    profile: str = "intermediate"
    protocols: tuple[str, ...] = TLS_PROTOCOLS
    ciphers: str = DEFAULT_CIPHERS
    session_tickets: bool = True
    crl: tuple[Path, ...] = ()
    revocation: str = "off"
    revocation_scope: str = "chain"
    revocation_fail: str = "closed"
    ocsp_timeout: float = 2.0
    ocsp_cache_seconds: float = 300.0
    # Responders (origins: "http://host:port", ocsp_origin's spelling) that may be at a
    # private, loopback or link-local address; any other is refused there (no SSRF).
    ocsp_responders: tuple[str, ...] = ()
    client_certificate: str = "auto"  # for connections that match no [[tls.sni]] entry
    advertise_ca_names: bool = True
    sni: tuple[SniEntry, ...] = ()
    # Truststore aliases that are pinned client certificates even though they assert
    # CA:TRUE (entries that do not are pinned anyway): never issuers (#22 item 7).
    pinned_aliases: tuple[str, ...] = ()


def read_tls(r: TableReader) -> TlsConfig:
    cfg = TlsConfig(
        certificate=r.path_value("certificate"),
        private_key=r.path_value("private_key"),
        keystore=r.path_value("keystore"),
        keystore_password=r.get("keystore_password", str, None),  # type: ignore[arg-type]
        truststore=r.path_value("truststore"),
        truststore_password=r.get("truststore_password", str, None),  # type: ignore[arg-type]
        profile=r.choice("profile", TLS_PROFILES, "intermediate"),
        ciphers=r.get("ciphers", str, DEFAULT_CIPHERS),
        session_tickets=r.get("session_tickets", bool, True),
        revocation=r.choice("revocation", REVOCATION_MODES, "off"),
        revocation_scope=r.choice("revocation_scope", ("leaf", "chain"), "chain"),
        revocation_fail=r.choice("revocation_fail", ("closed", "open"), "closed"),
        ocsp_timeout=r.positive("ocsp_timeout", float, 2.0),
        ocsp_cache_seconds=r.positive("ocsp_cache_seconds", float, 300.0),
    )
    protocols = string_list(r, "protocols")
    if protocols is not None:
        bad = [p for p in protocols if p not in TLS_PROTOCOLS]
        if bad or not protocols:
            r.problem(
                "protocols",
                f"allowed values are {', '.join(TLS_PROTOCOLS)} (TLS 1.0/1.1 are not supported), "
                f"got {quoted(protocols)}",
            )
        else:
            cfg = dataclasses.replace(cfg, protocols=tuple(protocols))
    if cfg.profile == "modern":
        # Modern is TLS 1.3 only, whose cipher suites OpenSSL fixes: keys that
        # would weaken or contradict it are refused rather than silently ignored.
        if "protocols" in r.table and cfg.protocols != ("TLSv1.3",):
            r.problem(
                "protocols",
                'profile = "modern" is TLS 1.3 only; remove protocols or set it to ["TLSv1.3"]',
            )
        if "ciphers" in r.table:
            r.problem(
                "ciphers",
                'profile = "modern" is TLS 1.3 only, where ciphers (TLS 1.2 cipher suites) '
                "do not apply; remove ciphers or use the intermediate profile",
            )
        cfg = dataclasses.replace(cfg, protocols=("TLSv1.3",))
    crl_paths = string_list(r, "crl") or []
    crls = []
    for i, raw in enumerate(crl_paths):
        p = resolve(r.file, raw)
        if p is None:
            r.problem(f"crl[{i}]", f"not a usable path: {quoted(raw)}")
            continue
        if not p.exists():
            r.problem(f"crl[{i}]", f"file not found: {p}")
        crls.append(p)
    cfg = dataclasses.replace(cfg, crl=tuple(crls))
    responders = []
    for i, raw in enumerate(string_list(r, "ocsp_responders") or []):
        try:
            origin = ocsp_origin(raw)  # first: urlsplit raises on some (an unclosed '[')
            parts = urlsplit(raw)
        except ValueError as e:
            r.problem(f"ocsp_responders[{i}]", f"{e}: {quoted(raw)}")
            continue
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            r.problem(
                f"ocsp_responders[{i}]",
                f"give the responder's origin only (scheme://host[:port], e.g. {quoted(origin)}); "
                f"got {quoted(raw)}",
            )
            continue
        responders.append(origin)
    cfg = dataclasses.replace(cfg, ocsp_responders=tuple(responders))
    if cfg.keystore and (cfg.certificate or cfg.private_key):
        r.problem("keystore", "give either keystore or certificate/private_key, not both")
    if bool(cfg.certificate) != bool(cfg.private_key) and not cfg.keystore:
        r.problem(
            "private_key" if cfg.certificate else "certificate",
            "certificate and private_key go together",
        )
    if cfg.revocation != "off" and "crl" in cfg.revocation and not cfg.crl:
        r.problem("crl", f"revocation = {quoted(cfg.revocation)} needs at least one CRL file")
    pinned = string_list(r, "pinned_aliases") or []
    for i, alias in enumerate(pinned):
        if alias in pinned[:i]:
            r.problem(f"pinned_aliases[{i}]", f"{quoted(alias)} is listed twice")
    if pinned and cfg.truststore is None:
        r.problem("pinned_aliases", "names truststore aliases, but there is no truststore")
    cfg = dataclasses.replace(
        cfg,
        client_certificate=r.choice("client_certificate", CLIENT_CERTIFICATE, "auto"),
        advertise_ca_names=r.get("advertise_ca_names", bool, True),
        sni=_sni_entries(r),
        pinned_aliases=tuple(dict.fromkeys(pinned)),
    )
    r.finish()
    return cfg


def _sni_entries(tls: TableReader) -> tuple[SniEntry, ...]:
    """``[[tls.sni]]``: hosts no two entries share, and a certificate for each."""
    out: list[SniEntry] = []
    for r in tls.tables("sni"):
        entry_hosts = host_patterns(r, "hosts")
        if "hosts" not in r.table:
            r.problem("hosts", "is required")
        for i, pat in enumerate(entry_hosts or ()):
            if hostnames.is_address(pat):
                r.problem(f"hosts[{i}]", f"SNI carries host names, never addresses: {quoted(pat)}")
        if entry_hosts is not None:
            entry_hosts = tuple(p for p in entry_hosts if not hostnames.is_address(p))
        entry = SniEntry(
            hosts=entry_hosts or (),
            certificate=r.path_value("certificate"),
            private_key=r.path_value("private_key"),
            keystore=r.path_value("keystore"),
            keystore_password=r.get("keystore_password", str, None),  # type: ignore[arg-type]
            client_certificate=r.choice("client_certificate", CLIENT_CERTIFICATE, "auto"),
            advertise_ca_names=r.get("advertise_ca_names", bool, True),
            where=r.path,
        )
        if entry.keystore and (entry.certificate or entry.private_key):
            r.problem("keystore", "give either keystore or certificate/private_key, not both")
        elif not entry.keystore and not (entry.certificate or entry.private_key):
            r.problem("certificate", "is required (with private_key), or give keystore")
        elif bool(entry.certificate) != bool(entry.private_key) and not entry.keystore:
            r.problem(
                "private_key" if entry.certificate else "certificate",
                "certificate and private_key go together",
            )
        r.finish()
        for i, pat in enumerate(entry.hosts):
            for other in out:
                clash = next((o for o in other.hosts if hostnames.overlap(pat, o)), None)
                if clash is not None:
                    r.problem(
                        f"hosts[{i}]",
                        f"{quoted(pat)} overlaps {quoted(clash)} of {other.where}: a client's "
                        "SNI must choose one entry",
                    )
        out.append(entry)
    return tuple(out)
