"""Everything a request needs, built once from a config and swapped whole on reload.

Building loads the keystore and truststore and checks the config against them
(aliases the truststore does not have are config errors), so ``twistedgw check``
and a reload refuse exactly what would fail at run time. ``load`` reports config
and key-material problems in one pass: when some keys are broken it still loads
and checks the key material that does not depend on them.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from twisted.logger import Logger

from twistedgw import _hosts as hostnames
from twistedgw import config as configmod
from twistedgw import tls as tlsface
from twistedgw.config import (
    RESOURCE,
    ApiConfig,
    ConfigError,
    GatewayConfig,
    IdentityRule,
    Mode,
    SniEntry,
    TlsConfig,
)
from twistedgw.http import BadPath, ResponseStore, Router, Served, normalise
from twistedgw.pipeline import Pipeline, Shared, compile_pipelines
from twistedgw.tls import ChainVerifier, HandshakeRecords, ServerTLS, SniServer
from twistedgw.upstream import ResourceBackend, ResourceError, as_resource, load_resource

log = Logger()


@dataclass(frozen=True)
class Runtime:
    config: GatewayConfig
    keystore: tlsface.KeyStore | None
    truststore: tlsface.TrustStore | None
    server_tls: ServerTLS | None
    router: Router  # its routes carry each API's compiled pipeline
    header_verifier: ChainVerifier | None
    revocation: tlsface.RevocationChecker | None = None  # CRLs are re-read on reload
    # TLS to https:// backends; a reload swaps it with the rest, and the forwarder's
    # pool is keyed by its policies, so changed settings get new connections.
    backend_tls: tlsface.BackendTls | None = None
    shared: Shared = field(default_factory=Shared)  # outlives this Runtime (reloads)
    # Each API's compiled pipeline (nginx-config reads what its plugins' stages do).
    pipelines: Mapping[ApiConfig, Pipeline] = field(default_factory=dict)
    # Worth saying but not refusing (file: dotted key: message): `check` prints them,
    # start and reload log them.
    warnings: tuple[str, ...] = ()
    # What the gateway serves itself (the response cache): None when no API needs it.
    served: Served | None = None
    # The authz endpoint's path as a request target names it, when no API's context
    # holds it (whatever the case) and it is in normal form: the HTTP/1.1 front knows
    # such a question without routing it (``authz_target``).
    authz_target: bytes | None = None


@dataclass
class _Material:
    keystore: tlsface.KeyStore | None = None
    truststore: tlsface.TrustStore | None = None
    server_tls: ServerTLS | None = None
    revocation: tlsface.RevocationChecker | None = None
    backend_tls: tlsface.BackendTls | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    pipelines: dict[ApiConfig, Pipeline] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    resources: dict[int, ResourceBackend] = field(default_factory=dict)  # by id(api)


def _never(key: str) -> bool:
    return False


def _load_keystore(tls: TlsConfig) -> tlsface.KeyStore | None:
    if tls.keystore is not None:
        return tlsface.load_keystore_p12(tls.keystore, tls.keystore_password)
    if tls.certificate is not None and tls.private_key is not None:
        return tlsface.load_keystore_pem(tls.certificate, tls.private_key)
    return None


def _load_material(
    config: GatewayConfig,
    problems: list[str],
    records: HandshakeRecords | None = None,
    *,
    broken: Callable[[str], bool] = _never,
    api_paths: Sequence[str] | None = None,
    shared: Shared | None = None,
    pipelines: bool = True,
) -> _Material:
    """Load the key material and cross-check the config against it, adding to ``problems``;
    then compile the pipelines, unless ``pipelines`` is false (``prepare``).

    ``broken(key)`` and ``api_paths`` come from a config read only in part
    (``config.Parsed``): material whose keys are broken is left alone (its
    problem is already reported, and the default in its place would only add
    a misleading one), and ``api_paths`` keeps each API's own index in messages.
    """
    file = config.source
    tls = config.tls
    out = _Material()
    if api_paths is None:
        api_paths = [f"apis[{i}]" for i in range(len(config.apis))]

    def intact(*keys: str) -> bool:
        return not any(broken(f"tls.{key}") for key in keys)

    try:
        if intact("keystore", "keystore_password", "certificate", "private_key"):
            out.keystore = _load_keystore(tls)
    except tlsface.PkiError as e:
        problems.append(f"{file}: {e}")
    try:
        if tls.truststore is not None and intact("truststore", "truststore_password"):
            out.truststore = tlsface.load_truststore(tls.truststore, tls.truststore_password)
    except tlsface.PkiError as e:
        problems.append(f"{file}: tls.truststore: {e}")

    if out.truststore is not None:
        known = out.truststore.aliases
        listing = ", ".join(sorted(known))

        def check(where: str, aliases: frozenset[str] | None) -> None:
            for alias in sorted(aliases or ()):
                if alias not in known:
                    problems.append(
                        f"{file}: {where}: unknown truststore alias {alias!r} "
                        f"(the truststore has: {listing})"
                    )

        for path, api in zip(api_paths, config.apis, strict=True):
            check(f"{path}.aliases", api.aliases)
            check(f"{path}.tiers", frozenset(t.alias for t in api.tiers if t.alias is not None))
            for j, rule in enumerate(api.identities or ()):
                check(f"{path}.identities[{j}].alias", _alias_of(rule))
        check("mutual_ssl.load_balancer_aliases", config.mutual_ssl.load_balancer_aliases)
        for i, alias in enumerate(tls.pinned_aliases):
            check(f"tls.pinned_aliases[{i}]", frozenset({alias}))
        for i, consumer in enumerate(config.consumers):
            for j, rule in enumerate(consumer.certificates):
                check(f"consumers[{i}].certificates[{j}].alias", _alias_of(rule))
        # Each entry an issuer or pinned, never both (#22 item 7).
        out.truststore = out.truststore.classified(tls.pinned_aliases)
        out.warnings.extend(_names_alone(config, out.truststore))
    bundle = config.mutual_ssl.intermediates
    if bundle is not None and not broken("mutual_ssl.intermediates"):
        try:
            found = tlsface.load_pem_certificates(bundle, "file")
            not_ca = [c for c in found if not tlsface.TrustEntry("", c, b"").is_ca]
            if not_ca:
                problems.append(
                    f"{file}: mutual_ssl.intermediates: {bundle}: holds a certificate that is not "
                    f"a CA ({not_ca[0].subject.rfc4514_string()})"
                )
            else:
                out.intermediates = tuple(found)
        except tlsface.PkiError as e:
            problems.append(f"{file}: mutual_ssl.intermediates: {e}")
    try:
        if intact("crl", "revocation"):
            out.revocation = tlsface.build_revocation(tls)
    except tlsface.CrlError as e:
        problems.append(f"{file}: tls.crl: {e}")
    try:
        out.backend_tls = tlsface.build_backend_tls(
            config,
            api_paths=api_paths,
            skip=lambda where: any(
                broken(f"{where}.{key}")
                for key in ("trusted_certificate", "certificate", "private_key")
            ),
        )
    except ConfigError as e:
        problems.extend(e.problems)
    sni = _load_sni(config, problems, out.warnings, broken)
    if out.keystore is not None and config.needs_tls and sni is not None:
        try:
            out.server_tls = ServerTLS(
                tls,
                out.keystore,
                out.truststore,
                records,
                ask=asks_for_certificate(config, None),
                sni=sni,
            )
        except Exception as e:  # OpenSSL's own rejection, e.g. a cipher string it cannot use
            problems.append(f"{file}: tls: OpenSSL refused the TLS settings: {e}")
    if pipelines:
        _compile(out, config, problems, shared, api_paths)
    return out


def _alias_of(rule: IdentityRule) -> frozenset[str]:
    return frozenset({rule.alias}) if rule.alias is not None else frozenset()


def _names_alone(config: GatewayConfig, truststore: tlsface.TrustStore) -> list[str]:
    """A warning per consumer certificate entry that names alone identify while more
    than one issuer is trusted: any of them can certify those names (#22 item 7)."""
    issuers = sorted(e.alias for e in truststore.entries if not e.is_pinned)
    if len(issuers) < 2:
        return []
    out = []
    for i, consumer in enumerate(config.consumers):
        for j, rule in enumerate(consumer.certificates):
            if rule.by_names_alone:
                out.append(
                    f"{config.source}: consumers[{i}].certificates[{j}]: consumer "
                    f"{consumer.name!r} is identified by names alone ({rule.text}) while "
                    f"{len(issuers)} issuers are trusted ({', '.join(issuers)}): a "
                    f"certificate any of them issues with these names maps to it; add "
                    f"alias = \"<issuer>\" (or sha256 / spki_sha256)"
                )
    return out


def _compile(
    material: _Material,
    config: GatewayConfig,
    problems: list[str],
    shared: Shared | None,
    api_paths: Sequence[str] | None,
) -> None:
    """Each API's pipeline: built-ins from the config keys, then its [[apis.plugins]],
    which check their own tables here (so `check` reports them in this pass). On the
    reactor thread: it starts JWKS fetchers and [cluster] connections, and runs
    third-party plugins' code."""
    material.pipelines = compile_pipelines(
        config, problems, revocation=material.revocation, shared=shared, api_paths=api_paths
    )
    material.resources = _resources(config, problems, material.warnings, shared, api_paths)


def _resources(
    config: GatewayConfig,
    problems: list[str],
    warnings: list[str],
    shared: Shared | None,
    api_paths: Sequence[str] | None,
) -> dict[int, ResourceBackend]:
    """The in-process backend of each API whose backend is ``resource:...``: imported here,
    on the reactor thread, as plugins are (a module's code may use the reactor), so
    ``check`` and a reload report a module that does not import, naming the key; a bare
    ``resource:`` takes what the embedding application supplied (``shared.resources``)."""
    file = config.source
    paths = list(api_paths) if api_paths is not None else [
        f"apis[{i}]" for i in range(len(config.apis))]
    supplied = dict(shared.resources) if shared is not None else {}
    out: dict[int, ResourceBackend] = {}
    for where, api in zip(paths, config.apis, strict=True):
        if not api.in_process:
            continue
        spec = api.backend[len(RESOURCE):]
        resource = None
        try:
            if spec:
                resource = load_resource(spec)
            else:
                given = supplied.pop(api.label, supplied.pop(api.name, None))
                if given is not None:
                    resource = as_resource(given, f"resources[{api.name!r}]")
        except ResourceError as e:
            problems.append(f"{file}: {where}.backend: {e}")
            continue
        if resource is None:
            if shared is None:
                continue  # a config read in part: not the service's, nothing supplied
            message = (f"{file}: {where}.backend: 'resource:' is supplied by the application "
                       f"that embeds twistedgw (make_service(config, resources={{"
                       f"{api.name!r}: resource}})), and none was; write "
                       "resource:package.module:attribute to import it instead")
            (problems if shared.connect else warnings).append(message)
            continue
        out[id(api)] = ResourceBackend(resource, api.context, api.backend.encode())
    for name in supplied:
        problems.append(f"{file}: make_service(resources=...) names {name!r}, but no API of "
                        "that name (or name:version) has backend = \"resource:\"")
    return out


def asks_for_certificate(config: GatewayConfig, entry: SniEntry | None) -> bool:
    """Whether handshakes under ``entry`` (None: the default) send a CertificateRequest.

    ``auto`` asks only when an API reachable under the entry's hosts needs a
    certificate (``needs_certificate``), or when load balancers must present
    theirs (header mode with client validation): a browser on a public host is
    then never prompted. Third-party plugins that read the certificate need
    ``request``.
    """
    mode = entry.client_certificate if entry is not None else config.tls.client_certificate
    if mode != "auto":
        return mode == "request"
    settings = config.mutual_ssl
    if settings.header_mode and settings.enable_client_validation:
        return True
    others = [p for e in config.tls.sni for p in e.hosts]

    def reachable(api: ApiConfig) -> bool:
        if api.hosts is None:
            return True
        if entry is not None:
            return any(hostnames.overlap(p, h) for p in api.hosts for h in entry.hosts)
        # The default serves every host no entry matches.
        return any(not hostnames.covered(p, others) for p in api.hosts)

    return any(needs_certificate(api) and reachable(api) for api in config.apis)


def needs_certificate(api: ApiConfig) -> bool:
    """Whether a scheme of ``api`` (or of one of its OpenAPI operations) reads the client
    certificate: ``mutual_ssl``, or JWTs with ``certificate_bound = "required"``.
    (``when_claimed`` needs one only for bound tokens: ``request`` serves those.)"""
    if api.mutual_ssl is not Mode.DISABLED:
        return True
    if api.jwt is not Mode.DISABLED and api.certificate_bound == "required":
        return True
    return any(
        op.security is not None
        and (
            op.security.mutual_ssl is not Mode.DISABLED
            or (op.security.jwt is not Mode.DISABLED and api.certificate_bound == "required")
        )
        for op in api.operations or ()
    )


def _load_sni(
    config: GatewayConfig,
    problems: list[str],
    warnings: list[str],
    broken: Callable[[str], bool],
) -> list[SniServer] | None:
    """Each ``[[tls.sni]]`` entry's certificate, and a warning where it does not cover the
    entry's hosts (private names are common, so not an error); None if one failed."""
    file = config.source
    out: list[SniServer] = []
    failed = False
    for entry in config.tls.sni:
        if broken(entry.where):
            failed = True
            continue
        try:
            keystore = _load_entry_keystore(entry)
        except tlsface.PkiError as e:
            problems.append(f"{file}: {e}")
            failed = True
            continue
        if keystore is None:
            failed = True
            continue
        names = _dns_names(keystore.cert)
        for i, pat in enumerate(entry.hosts):
            if not hostnames.covered(pat, names):
                listing = ", ".join(names) or "none"
                warnings.append(
                    f"{file}: {entry.where}.hosts[{i}]: the certificate "
                    f"({tlsface.describe_certificate(keystore.cert)}) does not cover {pat!r} "
                    f"(its DNS names: {listing}); clients that check it will refuse"
                )
        out.append(
            SniServer(
                entry.hosts,
                keystore,
                ask=asks_for_certificate(config, entry),
                advertise_ca_names=entry.advertise_ca_names,
            )
        )
    return None if failed else out


def _load_entry_keystore(entry: SniEntry) -> tlsface.KeyStore | None:
    if entry.keystore is not None:
        try:
            return tlsface.load_keystore_p12(entry.keystore, entry.keystore_password)
        except tlsface.PkiError as e:
            where = f"{entry.where}.keystore"
            raise tlsface.PkiError(str(e).replace("tls.keystore", where)) from None
    if entry.certificate is not None and entry.private_key is not None:
        return tlsface.load_keystore_pem(
            entry.certificate,
            entry.private_key,
            cert_what=f"{entry.where}.certificate",
            key_what=f"{entry.where}.private_key",
        )
    return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names in _hosts.py's spelling (the CN when it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        raw = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        raw = [
            str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        ]
    except (x509.DuplicateExtension, ValueError):  # a SAN twice, or malformed: none (warned)
        raw = []
    names = []
    for value in raw:
        try:
            names.append(hostnames.pattern(value))
        except hostnames.BadHost:
            continue
    return names


def build(
    config: GatewayConfig,
    records: HandshakeRecords | None = None,
    shared: Shared | None = None,
) -> Runtime:
    """Load key material, compile the pipelines and cross-check the config; raise
    ConfigError on any problem. ``shared`` is what the previous Runtime's pipelines
    kept across reloads (tier buckets, ...); a new one when None."""
    problems: list[str] = []
    shared = shared if shared is not None else Shared()
    material = _load_material(config, problems, records, shared=shared)
    if problems:
        raise ConfigError(problems)
    return _runtime(config, material, shared)


def _runtime(config: GatewayConfig, material: _Material, shared: Shared) -> Runtime:
    header_verifier = (
        ChainVerifier(material.truststore, intermediates=material.intermediates)
        if material.truststore is not None and config.mutual_ssl.header_mode
        else None
    )
    return Runtime(
        config=config,
        keystore=material.keystore,
        truststore=material.truststore,
        server_tls=material.server_tls,
        router=Router(config.apis, material.pipelines),
        header_verifier=header_verifier,
        revocation=material.revocation,
        backend_tls=material.backend_tls,
        shared=shared,
        pipelines=material.pipelines,
        warnings=(*config.warnings, *material.warnings),  # config: OpenAPI definitions, ...
        served=_served(config, material.resources),
        authz_target=authz_target(config),
    )


def authz_target(config: GatewayConfig) -> bytes | None:
    """``[authz] path`` when a request target equal to it routes to no API and is its own
    normal form: then the front may skip routing it (``Routed.route`` None, the path
    itself), as routing would give (the config refuses a path inside a context, but
    compares case-sensitively; the router does not)."""
    authz = config.authz
    if authz is None:
        return None
    try:
        path = authz.path.encode("ascii")
        if b"?" in path or normalise(path) != path:
            return None
    except (UnicodeEncodeError, BadPath):
        return None
    lowered = path.lower()
    for api in config.apis:
        context = api.context.lower().rstrip("/").encode()
        if not context or lowered == context or lowered.startswith(context + b"/"):
            return None
    return path


def _served(config: GatewayConfig, resources: dict[int, ResourceBackend]) -> Served | None:
    """What this Runtime serves itself: the response cache (a reload starts an empty one)
    and the in-process backends; None when no API has either."""
    cache = None
    if any(api.response_cache is not None for api in config.apis):
        cache = ResponseStore(config.response_cache, time.monotonic)
    if cache is None and not resources:
        return None
    return Served(cache, resources)


def load(
    path: str | Path, records: HandshakeRecords | None = None, shared: Shared | None = None
) -> Runtime:
    """Read a config file and build its Runtime; raise ConfigError with every problem.

    Config and key-material problems come together: where some keys are broken,
    the material that does not depend on them is still loaded and checked, so an
    operator does not fix one batch only to be shown the next.
    """
    return finish(prepare(path, records), shared)


@dataclass(frozen=True)
class Prepared:
    """A config file read and its key material loaded, pipelines not yet compiled."""

    parsed: configmod.Parsed
    material: _Material
    problems: tuple[str, ...]


def prepare(
    path: str | Path,
    records: HandshakeRecords | None = None,
    parsed: configmod.Parsed | None = None,
) -> Prepared:
    """The slow half of ``load``, safe off the reactor thread (a reload runs it in one):
    reading TOML and OpenAPI definitions and validating them, key and trust stores,
    CRLs, OpenSSL contexts. It touches nothing the reactor thread uses (``records``
    is only kept by the new TLS settings). Raises ConfigError only for a file that is
    not TOML; every other problem is carried to ``finish``. ``parsed``: the files as
    already read (``prepare_beside_reactor``)."""
    if parsed is None:
        parsed = configmod.load_partial(path)
    problems = list(parsed.problems)
    if problems:
        material = _load_material(
            parsed.config,
            problems,
            broken=parsed.broken,
            api_paths=parsed.api_paths,
            pipelines=False,
        )
    else:
        material = _load_material(parsed.config, problems, records, pipelines=False)
    return Prepared(parsed, material, tuple(problems))


RELOAD_SWITCH_INTERVAL = 0.001
"""Seconds a parsing thread may hold the GIL before the reactor gets it (Python's
default is 0.005; a request takes several turns)."""

PARSE_TIMEOUT = 300.0
"""Seconds a reload waits for the process that reads the config files."""

# Run by ``sys.executable``: read the config files, answer with the pickled result.
_PARSE_CHILD = """\
import pickle, sys
from twistedgw import config
try:
    out = config.load_partial(sys.argv[1])
except config.ConfigError as e:
    out = e
sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
"""


def prepare_beside_reactor(path: str | Path, records: HandshakeRecords | None = None) -> Prepared:
    """``prepare`` while the reactor serves (a reload), from a thread.

    A config that names OpenAPI definitions is read and validated by a child Python
    process: parsing a large definition takes seconds of CPU, and in this process its
    garbage collections and the GIL held the reactor thread for up to ~100 ms at a time.
    Only the result comes back (a pickle: milliseconds to load); the key material is
    then loaded here. A config of TOML alone, or one read where no child can start, is
    read in this thread.
    """
    if not _names_definitions(path):
        return prepare(path, records, _parse_here(path))  # TOML alone: milliseconds
    try:
        parsed = _parse_in_child(path)
    except _NoChild as e:
        log.warn("Reading the config in this process ({why})", why=str(e))
        parsed = _parse_here(path)
    return prepare(path, records, parsed)


def _names_definitions(path: str | Path) -> bool:
    """Whether the config names OpenAPI definitions (the slow part of reading one); a
    file that is not TOML is read here, where it fails at once with the usual words."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    apis = raw.get("apis")
    return isinstance(apis, list) and any(isinstance(a, dict) and "openapi" in a for a in apis)


class _NoChild(Exception):
    pass


def _parse_in_child(path: str | Path) -> configmod.Parsed:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # this process's modules
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PARSE_CHILD, str(path)],
            capture_output=True,
            env=env,
            timeout=PARSE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        slow = f"{path}: reading the config took longer than {PARSE_TIMEOUT:.0f} s"
        raise ConfigError([slow]) from None
    except OSError as e:
        raise _NoChild(f"cannot start {sys.executable}: {e.strerror}") from None
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise _NoChild(f"the reading process exited with {done.returncode}: {last[0]}")
    # Our own child, running our own code on our own files: trusted bytes.
    out = pickle.loads(done.stdout)  # noqa: S301
    if isinstance(out, ConfigError):
        raise out
    if not isinstance(out, configmod.Parsed):
        raise _NoChild(f"the reading process answered {type(out).__name__}")
    return out


def _parse_here(path: str | Path) -> configmod.Parsed:
    """``load_partial`` in a thread beside the reactor: the cyclic garbage collector is
    off while it runs (a full collection among a large definition's objects held the
    GIL 60-90 ms) and the GIL changes hands every millisecond; both restored after."""
    collecting = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, RELOAD_SWITCH_INTERVAL))
    try:
        return configmod.load_partial(path)
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()


def finish(prepared: Prepared, shared: Shared | None = None) -> Runtime:
    """The quick half of ``load``, on the reactor thread: compile the pipelines (with
    ``shared``, what outlives a config) and build the Runtime; ConfigError with every
    problem, ``prepare``'s included."""
    problems = list(prepared.problems)
    parsed = prepared.parsed
    material = replace(prepared.material)
    if parsed.problems:
        # A config read in part: its plugin tables are still checked, with state that
        # nothing keeps (never the shared state of the config in force).
        _compile(material, parsed.config, problems, None, parsed.api_paths)
        raise ConfigError(problems)
    shared = shared if shared is not None else Shared()
    _compile(material, parsed.config, problems, shared, None)
    if problems:
        raise ConfigError(problems)
    return _runtime(parsed.config, material, shared)
