"""``twistedgw import-mgw``: a twistedgw config from a WSO2 Microgateway 3.x project.

A Microgateway 3.x project (``micro-gw init``) holds its APIs' OpenAPI definitions in
``api_definitions/`` and its rate limit policies in ``policies.yaml``; the runtime's
``<MGW_HOME>/conf/micro-gw.conf`` holds the listeners, key and trust stores, mutual TLS
(the aliases each API accepts), JWT issuers and basic-auth users. This reads them and
writes one twistedgw TOML that serves the same APIs from the same definitions (they are
read where they are, unchanged).

Whatever cannot be carried over is written as a comment, ``# not carried over: ...``,
saying what and why; where the config cannot be complete without the operator (a basic
user's password hash: the Microgateway's unsalted SHA digests cannot become argon2id; a
JWT issuer's audience), the key is written commented out, so that ``twistedgw check``
refuses the config, naming it, until it is set. Nothing is fetched and no secret is
invented. The Microgateway's Java keystores (``.jks``) cannot be read: the comment gives
the ``keytool -importkeystore`` command that converts one to PKCS#12.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Where micro-gw.conf's ${mgw-runtime.home} points: the runtime's home (conf/..).
RUNTIME_HOME = "${mgw-runtime.home}"
DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
_ISSUER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: micro-gw.conf sections twistedgw has no counterpart for, and why.
_NOT_CARRIED = {
    "keyManager": "no API Manager key manager: tokens are checked as JWTs against "
                  "[[jwt_issuers]], opaque tokens are not supported",
    "keymanager": "no API Manager key manager (see [keyManager])",
    "apim": "no API Manager control plane (event hub, subscriptions)",
    "security": "no subscriptions: twistedgw does not validate them",
    "throttlingConfig": "no traffic manager: throttling policies are counted in process, "
                        "or in Redis with [cluster]",
    "analytics": "no analytics publisher: use the access log and /metrics ([admin])",
    "apikey": "twistedgw issues no API keys: [[api_keys]] are its own keys",
    "validationConfig": "request and response validation is not supported",
    "tokenRevocationConfig": "token revocation is not supported: keep tokens short-lived",
    "caching": "no token cache to size: verdicts are not cached per token",
    "jwtConfig": "no backend JWT: [identity] forwards the caller's certificate identity",
    "jwtGeneratorConfig": "no backend JWT: [identity] forwards the caller's certificate "
                          "identity",
    "server": "header rules are plugins in twistedgw (request-headers, response-headers)",
    "b7a": "observability: use [admin] /metrics (Prometheus) and the access log",
}


class ImportError_(Exception):
    """The project cannot be imported; the message says why (one line)."""


@dataclass
class _Out:
    """The TOML text being written."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def key(self, name: str, value: Any, note: str = "") -> None:
        self.lines.append(f"{name} = {_toml(value)}" + (f"  # {note}" if note else ""))

    def lost(self, what: str, why: str) -> None:
        """One thing that could not be carried over."""
        self.lines.append(f"# not carried over: {what}: {why}")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


@dataclass(frozen=True)
class _Definition:
    path: Path
    title: str | None
    version: str | None
    doc: Mapping[str, Any]


def _read_definition(path: Path) -> _Definition:
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise ImportError_(f"{path}: cannot read the definition: "
                           f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(doc, dict):
        raise ImportError_(f"{path}: not an OpenAPI definition (no mapping at the top)")
    info = _as_table(doc.get("info"))
    title, version = info.get("title"), info.get("version")
    return _Definition(path, None if title is None else str(title),
                       None if version is None else str(version), doc)


def _read_conf(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportError_(f"{path}: not found (the runtime's <MGW_HOME>/conf/micro-gw.conf; "
                           "give it with --micro-gw-conf)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImportError_(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ImportError_(f"{path}: invalid TOML: {e}") from None


def _read_policies(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ImportError_(f"{path}: cannot read: {' '.join(str(e).split())[:200]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ImportError_(f"{path}: expected resourcePolicies, applicationPolicies, ...")
    return doc


def import_project(
    project: Path,
    micro_gw_conf: Path | None = None,
    output: Path | None = None,
    runtime_home: Path | None = None,
) -> str:
    """The twistedgw TOML for ``project``, paths relative to ``output``'s folder (what is
    left to the operator: ``twistedgw check`` of the result lists it)."""
    project = project.resolve()
    if not (project / "api_definitions").is_dir():
        raise ImportError_(f"{project}: not a Microgateway project (no api_definitions/)")
    conf_path = (micro_gw_conf or project / "conf" / "micro-gw.conf").resolve()
    conf = _read_conf(conf_path)
    home = (runtime_home or conf_path.parent.parent).resolve()
    base = (output.resolve().parent if output is not None else Path.cwd())
    definitions = [
        _read_definition(p)
        for p in sorted((project / "api_definitions").iterdir())
        if p.is_file() and p.suffix.lower() in DEFINITION_SUFFIXES
    ]
    if not definitions:
        raise ImportError_(f"{project / 'api_definitions'}: no OpenAPI definition (.yaml, "
                           ".yml, .json) to import")
    out = _Out()
    out.add(f"# Imported by `twistedgw import-mgw` from the Microgateway 3.x project {project}")
    out.add(f"# and {conf_path}. Lines starting with \"# not carried over\" say what twistedgw")
    out.add("# does not take over, and why; `twistedgw check` lists what is still to be set.")
    out.add()
    listener = _as_table(conf.get("listenerConfig"))
    _listeners(out, listener, _as_table(conf.get("http2")))
    _tls(out, listener, _as_table(conf.get("mutualSSLConfig")), home, base)
    _limits(out, listener)
    _mutual_ssl(out, _as_table(conf.get("mutualSSLConfig")))
    auth = _as_table(conf.get("authConfig"))
    aliases = _aliases(_as_table(conf.get("mutualSSLConfig")))
    _apis(out, definitions, aliases, auth, base)
    _jwt_issuers(out, conf.get("jwtTokenConfig"), any(_uses(d.doc, "jwt") for d in definitions))
    users = _as_table(_as_table(conf.get("b7a")).get("users"))
    _basic_users(out, users, any(_uses(d.doc, "basic") for d in definitions))
    _api_keys(out, any(_uses(d.doc, "apikey") for d in definitions))
    _policies(out, _read_policies(project / "policies.yaml"), project / "policies.yaml")
    _other_sections(out, conf, project)
    _backend_clients(out, _as_table(conf.get("httpClients")))
    return "\n".join(out.lines).rstrip("\n") + "\n"


def _as_table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _store_path(raw: Any, home: Path, base: Path) -> tuple[str, str | None]:
    """A keystore path as twistedgw reads it, and the keytool command a JKS needs."""
    text = str(raw).replace(RUNTIME_HOME, str(home))
    path = Path(text)
    if not path.is_absolute():
        path = home / path
    if path.suffix.lower() == ".jks":
        p12 = path.with_suffix(".p12")
        return _relative(p12, base), (
            f"keytool -importkeystore -srckeystore {path} -srcstoretype JKS "
            f"-destkeystore {p12} -deststoretype PKCS12")
    return _relative(path, base), None


def _listeners(out: _Out, listener: Mapping[str, Any], http2: Mapping[str, Any]) -> None:
    host = str(listener.get("host", "0.0.0.0"))
    https = listener.get("httpsPort", 9095)
    http = listener.get("httpPort", 9090)
    out.add("[[listeners]]  # listenerConfig httpsPort")
    out.key("host", host)
    out.key("port", https)
    if http2.get("enable") is True:
        out.key("http2", True, "[http2] enable")
    out.add()
    out.add("[[listeners]]  # listenerConfig httpPort")
    out.key("host", host)
    out.key("port", http)
    out.key("tls", False)
    if "tokenListenerPort" in listener:
        out.lost(f"tokenListenerPort = {listener['tokenListenerPort']}",
                 "twistedgw issues no tokens (no /token, /authorize, /apikey endpoints)")
    out.add()


def _tls(out: _Out, listener: Mapping[str, Any], mutual: Mapping[str, Any], home: Path,
         base: Path) -> None:
    out.add("[tls]")
    for kind, path_key, password_key in (("keystore", "keyStorePath", "keyStorePassword"),
                                         ("truststore", "trustStorePath",
                                          "trustStorePassword")):
        if path_key not in listener:
            out.lost(f"listenerConfig {path_key}", "not set; set [tls] certificate and "
                     "private_key (or keystore) yourself")
            continue
        where, keytool = _store_path(listener[path_key], home, base)
        if keytool is not None:
            out.add(f"# {listener[path_key]} is a Java keystore, which twistedgw cannot read;")
            out.add(f"# convert it to PKCS#12 first: {keytool}")
        out.key(kind, where, f"listenerConfig {path_key}")
        if password_key in listener:
            out.key(f"{kind}_password", str(listener[password_key]))
    versions = [v.strip() for v in str(mutual.get("protocolVersions", "")).split(",") if v.strip()]
    old = [v for v in versions if v not in ("TLSv1.2", "TLSv1.3")]
    if old:
        out.lost(f"mutualSSLConfig protocolVersions {', '.join(old)}",
                 "TLS below 1.2 cannot be enabled; twistedgw serves TLS 1.2 and 1.3")
    if "ciphers" in mutual:
        out.lost("mutualSSLConfig ciphers", "Mozilla's intermediate profile's ciphers are used "
                 "(the Microgateway's list holds CBC and 3DES suites)")
    verify = str(mutual.get("sslVerifyClient", "optional")).lower()
    if verify == "require":
        out.key("client_certificate", "request", "sslVerifyClient = \"require\"")
        out.add("# (a handshake without a certificate is not refused: APIs with mandatory "
                "mutual TLS refuse the request)")
    out.add()


def _limits(out: _Out, listener: Mapping[str, Any]) -> None:
    lines: list[tuple[str, Any, str]] = []
    header = listener.get("maxHeaderSize")
    if isinstance(header, int) and header > 0:
        lines.append(("max_header_bytes", header, "listenerConfig maxHeaderSize"))
    body = listener.get("maxEntityBodySize")
    if isinstance(body, int) and body > 0:
        lines.append(("max_body_bytes", body, "listenerConfig maxEntityBodySize"))
    if lines:
        out.add("[limits]")
        for key, value, note in lines:
            out.key(key, value, note)
    if body == -1:
        out.lost("listenerConfig maxEntityBodySize = -1", "twistedgw always bounds request "
                 "bodies ([limits] max_body_bytes, 10 MB by default)")
    if "maxUriLength" in listener:
        out.lost("listenerConfig maxUriLength", "the request line counts in [limits] "
                 "max_header_bytes")
    for key in ("keepAlive", "maxPipelinedRequests"):
        if key in listener:
            out.lost(f"listenerConfig {key}", "keep-alive is always on; see [limits] "
                     "idle_timeout")
    if lines or any(k in listener for k in ("maxUriLength", "keepAlive", "maxPipelinedRequests",
                                            "maxEntityBodySize")):
        out.add()


def _mutual_ssl(out: _Out, mutual: Mapping[str, Any]) -> None:
    header = mutual.get("certificateHeaderName")
    if header is None:
        return
    out.add(f"# not carried over: mutualSSLConfig certificateHeaderName = {_toml(header)}: the")
    out.add("# Microgateway believes that header from any caller; twistedgw only from load")
    out.add("# balancers you name. To read it, uncomment and name them (their network, or the")
    out.add("# truststore alias of their own client certificate):")
    out.add("# [mutual_ssl]")
    out.add(f"# certificate_header = {_toml(str(header))}")
    out.add("# trusted_proxies = [\"10.0.0.0/8\"]       # with enable_client_validation = false")
    out.add("# load_balancer_aliases = [\"lb-ca\"]      # or this")
    if mutual.get("isClientCertificateValidationEnabled") is False:
        out.lost("mutualSSLConfig isClientCertificateValidationEnabled = false",
                 "a certificate in the header is always verified against the truststore, as "
                 "a handshake's is")
    out.add()


def _aliases(mutual: Mapping[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(API name, version) -> its aliasList."""
    api = _as_table(mutual.get("api"))
    certificates = api.get("certificates")
    out: dict[tuple[str, str], list[str]] = {}
    for entry in certificates if isinstance(certificates, list) else []:
        if not isinstance(entry, dict):
            continue
        names = entry.get("aliasList")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if isinstance(names, list):
            out[(str(entry.get("name")), str(entry.get("version")))] = [str(n) for n in names]
    return out


def _uses(doc: Mapping[str, Any], kind: str) -> bool:
    """Whether a definition may ask for basic auth ("basic"), API keys ("apikey") or
    tokens ("jwt": OAuth2, bearer, or no security declared, which WSO2 reads as OAuth2).
    A guess from its words, erring towards yes: it decides only whether a section is
    written for the operator to complete, or left as a comment."""
    text = json.dumps(doc, default=str).lower()
    if kind == "basic":
        return '"basic_auth"' in text or '"scheme": "basic"' in text
    if kind == "jwt":
        declares = any(k in doc for k in ("security", "x-wso2-application-security",
                                          "x-wso2-mutual-ssl", "x-wso2-disable-security"))
        return not declares or any(w in text for w in ('"oauth2"', '"bearer"',
                                                       '"openidconnect"'))
    return '"api_key"' in text or '"type": "apikey"' in text


def _apis(out: _Out, definitions: Iterable[_Definition], aliases: Mapping[tuple[str, str],
          list[str]], auth: Mapping[str, Any], base: Path) -> None:
    header = auth.get("authorizationHeader")
    forward = auth.get("removeAuthHeaderFromOutMessage") is False
    matched: set[tuple[str, str]] = set()
    for d in definitions:
        out.add("[[apis]]")
        out.key("openapi", _relative(d.path, base))
        key = (str(d.title), str(d.version))
        if key in aliases:
            matched.add(key)
            out.key("aliases", aliases[key], "mutualSSLConfig.api.certificates aliasList")
        if isinstance(header, str) and header.lower() != "authorization" \
                and "x-wso2-auth-header" not in d.doc:
            out.key("auth_header", header, "[authConfig] authorizationHeader")
        if forward:
            out.key("forward_authorization", True, "[authConfig] removeAuthHeaderFromOutMessage")
        for ext in ("x-wso2-request-interceptor", "x-wso2-response-interceptor"):
            if ext in json.dumps(d.doc, default=str):
                out.add(f"# {ext}: interceptors are Ballerina or Java code that twistedgw "
                        "cannot run; `twistedgw check` points at the plugin that replaces them")
        out.add()
    for name, version in sorted(set(aliases) - matched):
        out.lost(f"mutualSSLConfig.api.certificates {name} {version}",
                 "no definition in api_definitions/ has that title and version")
    if set(aliases) - matched:
        out.add()


def _jwt_issuers(out: _Out, tables: Any, used: bool) -> None:
    entries = tables if isinstance(tables, list) else [tables] if isinstance(tables, dict) else []
    if entries and not used:
        out.lost("[[jwtTokenConfig]]", "no API of the project takes tokens (OAuth2, bearer, "
                 "or no security declared); add [[jwt_issuers]] when one does")
        out.add()
        return
    names: set[str] = set()
    for i, entry in enumerate(e for e in entries if isinstance(e, dict)):
        alias = entry.get("certificateAlias")
        name = alias if isinstance(alias, str) and _ISSUER_NAME.match(alias) else f"issuer-{i + 1}"
        if name in names:
            name = f"issuer-{i + 1}"
        names.add(name)
        out.add("[[jwt_issuers]]  # [[jwtTokenConfig]]")
        out.key("name", name)
        out.key("issuer", str(entry.get("issuer", "")))
        audience = entry.get("audience")
        if isinstance(audience, str) and audience:
            out.key("audiences", [audience])
        else:
            out.add("# audiences = [\"...\"]  # required: micro-gw.conf names no audience, and "
                    "twistedgw checks every token's aud")
        jwks = entry.get("jwksURL")
        if isinstance(jwks, str) and jwks:
            out.key("jwks_url", jwks)
        else:
            out.add(f"# jwks = \"...\"  # required: twistedgw verifies tokens with a JWK set, not "
                    f"the truststore certificate {alias!r}: export its public key as a JWKS "
                    "file, or give the issuer's jwks_url")
        claim = entry.get("consumerKeyClaim")
        if isinstance(claim, str) and claim:
            out.key("consumer_claim", claim, "consumerKeyClaim")
        if entry.get("validateSubscription") is True:
            out.lost("validateSubscription = true", "twistedgw has no subscriptions")
        if "claims" in entry or "claimMapperClassName" in entry:
            out.lost("claims, claimMapperClassName", "claim mapping is Java code; a plugin can "
                     "read call.claims")
        if "remoteUserClaimRetrievalEnabled" in entry:
            out.lost("remoteUserClaimRetrievalEnabled", "no key manager to ask")
        out.add()


def _basic_users(out: _Out, users: Mapping[str, Any], used: bool) -> None:
    if not users:
        return
    if not used:
        out.add("# not carried over: [b7a.users]: no API of the project uses basic_auth (the")
        out.add("# Microgateway also used these users for its /apikey and /token endpoints, which")
        out.add("# twistedgw does not have). Should an API use basic_auth, add for each user:")
        for name in users:
            out.add("# [[basic_users]]")
            out.add(f"# name = {_toml(str(name))}")
            out.add("# password_hash = \"...\"")
        out.add()
        return
    for name, entry in users.items():
        out.add("[[basic_users]]  # [b7a.users]")
        out.key("name", str(name))
        out.add("# password_hash = \"...\"  # required: the Microgateway's stored SHA digest "
                "cannot become argon2id:")
        out.add("# run `twistedgw hash-password` with this user's password and write the hash "
                "here")
        if isinstance(entry, dict) and "scopes" in entry:
            out.lost(f"[b7a.users.{name}] scopes", "twistedgw does not check scopes")
        out.add()


def _api_keys(out: _Out, used: bool) -> None:
    if not used:
        return
    out.add("# not carried over: the Microgateway's API keys are JWTs its /apikey endpoint "
            "signed; twistedgw")
    out.add("# checks its own keys (sent in the same header). Add one per application:")
    out.add("# [[api_keys]]")
    out.add("# name = \"app-one\"")
    out.add("# key_sha256 = \"...\"   # printf %s KEY | sha256sum")
    out.add()


def _policies(out: _Out, doc: Mapping[str, Any], path: Path) -> None:
    from twistedgw.config import TIME_UNITS, policy_table

    built_in = policy_table(())
    for entry in doc.get("resourcePolicies") or []:
        for name, spec in (entry.items() if isinstance(entry, dict) else ()):
            spec = spec if isinstance(spec, dict) else {}
            count, unit_time = spec.get("count"), spec.get("unitTime", 1)
            unit = str(spec.get("timeUnit", "min"))
            known = built_in.get(str(name))
            if known is not None and (known.count, known.unit_time, known.time_unit) == (
                    count, unit_time, unit):
                out.add(f"# {name}: built into twistedgw with the same numbers")
                continue
            if not isinstance(count, int) or not isinstance(unit_time, int) \
                    or unit not in TIME_UNITS:
                out.lost(f"{path.name} resourcePolicies {name}", f"count {count!r}, unitTime "
                         f"{unit_time!r}, timeUnit {unit!r} is not a policy twistedgw reads")
                continue
            out.add(f"[[throttling_policies]]  # {path.name} resourcePolicies")
            out.key("name", str(name))
            out.key("count", count)
            out.key("unit_time", unit_time)
            out.key("time_unit", unit)
            out.add()
    for kind in ("applicationPolicies", "subscriptionPolicies"):
        names = [str(n) for e in doc.get(kind) or [] if isinstance(e, dict) for n in e]
        if names:
            out.lost(f"{path.name} {kind} ({', '.join(names)})",
                     "twistedgw has no applications or subscriptions; per-caller limits are "
                     "[[apis.tiers]]")
    if doc.get("applicationPolicies") or doc.get("subscriptionPolicies"):
        out.add()


def _other_sections(out: _Out, conf: Mapping[str, Any], project: Path) -> None:
    handled = {"listenerConfig", "mutualSSLConfig", "http2", "authConfig", "jwtTokenConfig",
               "httpClients", "b7a"}
    lines = 0
    for section in conf:
        if section in handled:
            continue
        why = _NOT_CARRIED.get(section, "twistedgw has no counterpart for this section")
        out.lost(f"[{section}]", why)
        lines += 1
    b7a = _as_table(conf.get("b7a"))
    for sub in b7a:
        if sub != "users":
            out.lost(f"[b7a.{sub}]", _NOT_CARRIED["b7a"])
            lines += 1
    for directory, why in (("interceptors", "Ballerina interceptors cannot run; write a "
                            "plugin ([[apis.plugins]])"),
                           ("extensions", "Ballerina extensions cannot run"),
                           ("grpc_definitions", "gRPC APIs are not supported")):
        folder = project / directory
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            out.lost(f"{directory}/", why)
            lines += 1
    if (project / "conf" / "deployment-config.toml").exists():
        out.lost("conf/deployment-config.toml", "Docker and Kubernetes packaging: see "
                 "docs/how-to/operations.md for running twistedgw")
        lines += 1
    if lines:
        out.add()


def _backend_clients(out: _Out, clients: Mapping[str, Any]) -> None:
    if clients.get("verifyHostname") is False or clients.get("disableSslVerification") is True:
        out.lost("[httpClients] verifyHostname / disableSslVerification",
                 "https backends are always verified: give [backend_tls] trusted_certificate "
                 "(and server_name) instead")
    if _as_table(clients.get("proxy")).get("enable") is True:
        out.lost("[httpClients.proxy]", "backends are reached directly")
    if clients.get("enableHttp2") is True:
        out.lost("[httpClients] enableHttp2", "twistedgw speaks HTTP/1.1 to backends")
