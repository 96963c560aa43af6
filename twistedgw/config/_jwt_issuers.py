"""``[[jwt_issuers]]``: whose access tokens are accepted and how each is checked."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twistedgw.config._apis import ApiConfig
from twistedgw.config._base import Mode, ProblemList, TableReader, quoted, string_list
from twistedgw.config._tls import TlsConfig

JWT_ALGORITHMS = ("ES256", "RS256", "PS256", "ES384", "EdDSA")
DEFAULT_JWT_ALGORITHMS = ("ES256", "RS256")


@dataclass(frozen=True)
class JwtIssuer:
    """One ``[[jwt_issuers]]`` table: whose access tokens are accepted and how to check them.

    Exactly one of ``jwks`` (a file, read when a config is loaded) and ``jwks_url``
    (fetched in the background, see ``twistedgw.pipeline._jwks``) is set.
    """

    name: str
    issuer: str  # the token's iss must equal this
    audiences: tuple[str, ...]
    where: str  # the table's dotted path, e.g. "jwt_issuers[0]"
    jwks: Path | None = None
    jwks_url: str | None = None
    jwks_refresh_seconds: float = 300.0
    algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    leeway_seconds: float = 30.0
    consumer_claim: str | None = None


_ISSUER_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LOOPBACK_HOSTS = ("localhost",)


def _jwks_url(r: TableReader, key: str) -> str | None:
    """An https:// URL, or http:// to a loopback address (keys must not travel in clear)."""
    value = r.get(key, str, None)  # type: ignore[arg-type]
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(key, f"must be an https:// URL, got {quoted(value)}")
        return None
    if parts.fragment or parts.username is not None:
        # A user:password would end up in logs and metric labels.
        r.problem(key, "must not carry a fragment or a user:password")
        return None
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host.lower() in _LOOPBACK_HOSTS
        if not loopback:
            r.problem(
                key,
                "must be an https:// URL (http:// only to a loopback address), got "
                f"{quoted(value)}",
            )
            return None
    return value


def _jwt_issuer(r: TableReader) -> JwtIssuer | None:
    name = r.required("name", str)
    if name is not None and not _ISSUER_NAME_RE.match(name):
        r.problem("name", f"must match [A-Za-z0-9._-]{{1,64}}, got {quoted(name)}")
        name = None
    issuer = r.required("issuer", str)
    if issuer == "":
        r.problem("issuer", "must not be empty")
        issuer = None
    jwks = r.path_value("jwks")
    jwks_url = _jwks_url(r, "jwks_url")
    if ("jwks" in r.table) == ("jwks_url" in r.table):
        r.problem("jwks", "give exactly one of jwks (a file) and jwks_url")
    refresh = r.positive("jwks_refresh_seconds", float, 300.0)
    if refresh < 1:
        r.problem("jwks_refresh_seconds", f"must be at least 1 (second), got {quoted(refresh)}")
        refresh = 300.0
    if "jwks_refresh_seconds" in r.table and "jwks_url" not in r.table:
        r.problem("jwks_refresh_seconds", "applies to jwks_url only (a jwks file is re-read on "
                  "reload)")
    audiences = string_list(r, "audiences")
    if audiences is None:
        r.problem("audiences", "is required: the token's aud must hold one of these")
    elif not audiences or any(a == "" for a in audiences):
        r.problem("audiences", "must list at least one non-empty audience")
        audiences = None
    algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    listed = string_list(r, "algorithms")
    if listed is not None:
        bad = False
        for i, alg in enumerate(listed):
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                r.problem(
                    f"algorithms[{i}]",
                    f"{quoted(alg)} cannot be configured (unsigned and shared-secret tokens are "
                    f"refused); use {', '.join(JWT_ALGORITHMS)}",
                )
                bad = True
            elif alg not in JWT_ALGORITHMS:
                r.problem(
                    f"algorithms[{i}]",
                    f"unknown algorithm {quoted(alg)}; use {', '.join(JWT_ALGORITHMS)}",
                )
                bad = True
        if not listed:
            r.problem("algorithms", "must list at least one algorithm")
        elif not bad:
            algorithms = tuple(dict.fromkeys(listed))
    leeway = r.get("leeway_seconds", float, 30.0)
    if not 0 <= leeway <= 3600:
        r.problem("leeway_seconds", f"must be between 0 and 3600, got {quoted(leeway)}")
        leeway = 30.0
    consumer_claim = r.get("consumer_claim", str, None)  # type: ignore[arg-type]
    if consumer_claim == "":
        r.problem("consumer_claim", "must not be empty")
        consumer_claim = None
    r.finish()
    if name is None or issuer is None or audiences is None:
        return None
    if (jwks is None) == (jwks_url is None):
        return None
    return JwtIssuer(
        name=name,
        issuer=issuer,
        audiences=tuple(audiences),
        where=r.path,
        jwks=jwks,
        jwks_url=jwks_url,
        jwks_refresh_seconds=refresh,
        algorithms=algorithms,
        leeway_seconds=leeway,
        consumer_claim=consumer_claim,
    )


def read_jwt_issuers(top: TableReader) -> tuple[JwtIssuer, ...]:
    out: list[JwtIssuer] = []
    names: dict[str, str] = {}
    issuers: dict[str, str] = {}
    for r in top.tables("jwt_issuers"):
        found = _jwt_issuer(r)
        if found is None:
            continue
        if found.name in names:
            r.problem(
                "name", f"duplicate issuer name {quoted(found.name)} (also {names[found.name]})"
            )
            continue
        if found.issuer in issuers:
            r.problem(
                "issuer", f"duplicate issuer {quoted(found.issuer)} (also {issuers[found.issuer]})"
            )
            continue
        names[found.name] = r.path
        issuers[found.issuer] = r.path
        out.append(found)
    return tuple(out)


def declared_issuers(raw: dict[str, Any]) -> set[str]:
    """Every name written in a [[jwt_issuers]] table, even one with other problems (so an
    API naming it is not also told the issuer is unknown)."""
    tables = raw.get("jwt_issuers")
    if not isinstance(tables, list):
        return set()
    return {t["name"] for t in tables if isinstance(t, dict) and isinstance(t.get("name"), str)}


def jwt_links(
    problems: ProblemList,
    apis: list[tuple[str, ApiConfig]],
    issuers: tuple[JwtIssuer, ...],
    tls: TlsConfig,
    header_mode: bool,
    declared: set[str],
) -> None:
    """Cross-checks between APIs and [[jwt_issuers]]."""
    known = declared | {i.name for i in issuers}
    listing = ", ".join(sorted(known)) or "none"
    for where, api in apis:
        if api.jwt_issuers is not None:
            for i, name in enumerate(api.jwt_issuers):
                if name not in known:
                    problems.add(
                        f"{where}.jwt_issuers[{i}]",
                        f"unknown issuer {quoted(name)} (the [[jwt_issuers]] are: {listing})",
                    )
        # An OpenAPI definition's bearer security is reported where the definition says it.
        if api.jwt is not Mode.DISABLED and not known and api.openapi is None:
            problems.add(f"{where}.jwt", "JWT is enabled but no [[jwt_issuers]] are defined")
        if (
            api.jwt is not Mode.DISABLED
            and api.certificate_bound == "required"
            and tls.truststore is None
            and not header_mode
        ):
            problems.add(
                f"{where}.certificate_bound",
                '"required" needs client certificates, but [tls].truststore is not set',
            )
