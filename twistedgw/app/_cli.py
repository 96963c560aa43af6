"""``twistedgw`` command line: run, check, demo, dev-pki, decode-header, import-mgw, ...

User errors (a bad config, an unreadable file, a bad header value) print one
clear line each and exit non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twistedgw import config as configmod
from twistedgw.config import ConfigError

EXIT_CONFIG = 2


def _fail(lines: list[str], code: int = EXIT_CONFIG) -> int:
    for line in lines:
        print(f"twistedgw: {line}", file=sys.stderr)
    return code


def _load(path: str) -> tuple[Any, Any]:
    """The config and its Runtime; ConfigError lists config and key-material problems."""
    from twistedgw.app import _runtime as runtime

    built = runtime.load(path)
    return built.config, built


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg, _built = _load(args.config)
    except ConfigError as e:
        return _fail(e.problems)
    # Worth a look but not refused; the Runtime's own (an SNI certificate that does not
    # cover its hosts) come from loading the key material.
    for line in [*warnings(cfg), *_built.warnings]:
        print(f"twistedgw: warning: {line}", file=sys.stderr)
    apis, listeners = _count(len(cfg.apis), "API"), _count(len(cfg.listeners), "listener")
    print(f"{cfg.source}: OK ({apis}, {listeners})")
    # The effective addresses: a listener without port listens on the default, 9095.
    for listener in cfg.listeners:
        print(f"  listens on {listener.describe()}")
    # TOML security is never lost in silence: each operation it opens or closes.
    for api in cfg.apis:
        for line in configmod.security_changes(api):
            print(f"  {api.label}: {line}")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    """Every route the gateway will serve, with the schemes that apply to each."""
    from twistedgw.config import route_rows

    try:
        cfg, _built = _load(args.config)
    except ConfigError as e:
        return _fail(e.problems)
    header = ("HOST", "METHOD", "PATH", "API", "SCHEMES")
    rows = [header, *route_rows(cfg.apis)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def warnings(cfg: configmod.GatewayConfig) -> list[str]:
    """What is valid but probably not what was meant."""
    out = []
    if cfg.cluster is None and cfg.workers > 1 and any(api.tiers for api in cfg.apis):
        out.append(
            f"{cfg.source}: workers: {cfg.workers} workers and [[apis.tiers]] without "
            "[cluster]: each worker counts on its own (a tier of N requests a minute lets up "
            f"to {cfg.workers} x N through); set [cluster] redis to share the counters"
        )
    from twistedgw.http import verdicts

    if cfg.cluster is None and cfg.workers > 1 and any(verdicts.uses_policy(a) for a in cfg.apis):
        out.append(
            f"{cfg.source}: workers: {cfg.workers} workers and throttling policies without "
            "[cluster]: each worker counts on its own (a policy of N requests lets up to "
            f"{cfg.workers} x N through); set [cluster] redis to share the counters"
        )
    for api in cfg.apis:
        if api.throttling_tier is None:
            continue
        for op in api.operations or ():
            if op.throttling_tier is not None and op.throttling_tier != api.throttling_tier:
                where = f"{api.openapi.file}: {op.throttling_from}: " if api.openapi else ""
                out.append(
                    f"{cfg.source}: API {api.label}: {where}the operation's throttling "
                    f"policy {op.throttling_tier!r} is not applied: the API's "
                    f"{api.throttling_tier!r} applies to every operation (as in WSO2 "
                    "Microgateway, which drops it with the same warning)"
                )
    return out


def _start_logging() -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)


def serve(cfg: configmod.GatewayConfig, before_run: Any = None) -> int:
    """Run the gateway in the foreground until SIGTERM/SIGINT; SIGHUP reloads."""
    from twisted.internet import reactor

    from twistedgw import _reactor

    # Twisted's epoll reactor without the legacy log context per socket event
    # (twistedgw/_reactor.py).
    _reactor.adopt(reactor)

    from twistedgw.app import _heap, make_service
    from twistedgw.app._drain import stop_once

    try:
        svc = make_service(cfg, reactor)  # a Supervisor of worker processes when workers > 1
    except ConfigError as e:
        return _fail(e.problems)
    _start_logging()
    exit_code = [0]

    def listen_failed(failure: Any) -> None:
        from twisted.internet.defer import FirstError

        err = (
            failure.value.subFailure.value
            if isinstance(failure.value, FirstError)
            else failure.value
        )
        print(f"twistedgw: cannot listen: {err}", file=sys.stderr)
        exit_code[0] = 1
        reactor.stop()  # type: ignore[attr-defined]

    def start() -> None:
        svc.startService()
        assert svc.listening is not None
        svc.listening.addErrback(listen_failed)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    # Built and listening: the long-lived heap out of the collector's way (app/_heap.py).
    reactor.callWhenRunning(_heap.settle)  # type: ignore[attr-defined]
    reactor.callWhenRunning(stop_once, reactor)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)  # type: ignore[attr-defined]
    reload = _heap.then_refreeze(svc.reload, reactor.callLater)  # type: ignore[attr-defined]
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))  # type: ignore[attr-defined]
    if before_run is not None:
        before_run(reactor)
    reactor.run()  # type: ignore[attr-defined]
    return exit_code[0]


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg, _ = _load(args.config)
    except ConfigError as e:
        return _fail(e.problems)
    return serve(cfg)


# What each client certificate of the dev PKI is for (``twistedgw dev-pki`` prints it).
DEV_CLIENTS = {
    "partner-app": "issued under partner-root through an intermediate it sends: passes",
    "partner-direct": "issued by partner-root itself: passes",
    "partner-rsa": "as partner-app, with an RSA key: passes",
    "other-app": "issued by other-root: passes where the API accepts other-root",
    "pinned": "self-signed, trusted by itself (alias pinned-client)",
    "expired": "partner-root's, expired: 401 'certificate has expired'",
    "not-yet-valid": "partner-root's, valid only from 30 days on",
    "server-only": "partner-root's, for servers only (no clientAuth): refused",
    "intruder": "from a CA no truststore holds (untrusted-root.crt): refused",
    "ca-as-client": "a CA certificate presented as a client's: refused",
    "lb": "a load balancer's certificate (alias lb-ca): identifies no caller",
    "identity-app": "DNS, SPIFFE URI and e-mail SANs and a policy: identity rules",
    "identity-renewed": "identity-app's key, certified again: SPKI pins survive",
    "acme-app": "the consumer acme of the docs' examples",
    "globex-app": "the consumer globex of the docs' examples (under other-root)",
}


def cmd_dev_pki(args: argparse.Namespace) -> int:
    from twistedgw.testing import devpki

    out = Path(args.directory)
    pki = devpki.generate(out, key_type=args.key_type)
    password = pki.P12_PASSWORD
    d = pki.directory
    aliases = ", ".join(sorted(p.stem for p in pki.truststore_dir.glob("*.pem")))

    def rel(path: Path) -> str:
        return str(path.relative_to(d))

    print(f"Wrote a development PKI to {d} (never use it in production: its private keys")
    print("are unencrypted and its PKCS#12 password is public). In it:")
    rows = [
        (rel(pki.server_ca), "the CA of the gateway's server certificate: clients trust it"
                             " (curl --cacert)"),
        (f"{rel(pki.server_cert)}, {rel(pki.server_key)}",
         "the gateway's server certificate (localhost) and key: [tls] certificate,"
         " private_key"),
        (rel(pki.keystore_p12), f'the same as a PKCS#12 keystore: [tls] keystore,'
                                f' keystore_password = "{password}"'),
        (rel(pki.truststore_dir) + "/", f"trusted client CAs and a pinned client, one PEM per"
                                        f" alias ({aliases}): [tls] truststore"),
        (rel(pki.truststore_p12), f"the same as a PKCS#12 truststore (aliases are friendly"
                                  f' names): truststore_password = "{password}"'),
        ("intermediates.pem", "partner-root's issuing CA: [mutual_ssl] intermediates"),
        ("untrusted-root.crt", "a CA no truststore holds (it issued clients/intruder.crt)"),
        (f"{rel(pki.backend_dir)}/", "an https backend's CA, certificate and key, and the"
                                     " gateway's client certificate for it ([backend_tls])"),
    ]
    for name, what in rows:
        print(f"  {name}\n      {what}")
    print("  clients/NAME.crt and clients/NAME.key, client certificates and their keys:")
    for name in sorted(pki.clients):
        print(f"      {name:<17} {DEV_CLIENTS.get(name, '')}".rstrip())
    print(f'PKCS#12 password of keystore.p12 and truststore.p12: "{password}"')
    return 0


DEMO_DIR = Path("conf") / "example"  # relative to the repository root, where the demo runs


DEMO_BACKEND_PORT = 8080  # where conf/example/gateway.toml's APIs send requests


def _demo_ports(
    cfg: configmod.GatewayConfig, port: int | None, backend_port: int
) -> configmod.GatewayConfig:
    """The demo's config with the gateway's first listener on ``port`` (when given) and
    every backend URL on the sample backend's address moved to ``backend_port``."""
    from dataclasses import replace

    listeners = cfg.listeners
    if port is not None:
        listeners = (replace(listeners[0], port=port), *listeners[1:])

    def moved(url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc != f"127.0.0.1:{DEMO_BACKEND_PORT}":
            return url
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{backend_port}"))

    apis = tuple(
        replace(api, backend=moved(api.backend), backends=tuple(moved(u) for u in api.backends))
        for api in cfg.apis
    )
    return replace(cfg, listeners=listeners, apis=apis)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a dev PKI, start a sample backend and the gateway, print curl commands."""
    from twistedgw.app import _samplebackend as samplebackend
    from twistedgw.testing import devpki

    directory = Path(args.directory).resolve()
    config_path = directory / "gateway.toml"
    if not config_path.exists():
        return _fail([f"{config_path}: not found; run the demo from the repository root"])
    if not (directory / "pki" / "server.crt").exists():
        devpki.generate(directory / "pki")
    try:
        cfg, _ = _load(str(config_path))
    except ConfigError as e:
        return _fail(e.problems)
    backend_port = args.backend_port
    cfg = _demo_ports(cfg, args.port, backend_port)
    listener = cfg.listeners[0]
    base = f"https://localhost:{listener.port}"
    pki = directory / "pki"
    print("twistedgw demo: gateway on", base,
          f"with a sample backend on 127.0.0.1:{backend_port}\n")
    print("Try (from the repository root):")
    print(f"  curl --cacert {pki}/server-ca.crt --cert {pki}/clients/partner-app.crt \\")
    print(f"       --key {pki}/clients/partner-app.key {base}/petstore/1.0.5/pet/1")
    print("  # without a certificate: 401 Missing Credentials")
    print(f"  curl --cacert {pki}/server-ca.crt {base}/petstore/1.0.5/pet/1")
    print("  # an expired certificate: 401 Invalid Credentials, 'certificate has expired'")
    print(f"  curl --cacert {pki}/server-ca.crt --cert {pki}/clients/expired.crt \\")
    print(f"       --key {pki}/clients/expired.key {base}/petstore/1.0.5/pet/1")
    print("  # optional mTLS + API key: the key alone is enough")
    print(f"  curl --cacert {pki}/server-ca.crt -H 'apikey: demo-key' {base}/orders/v1/list")
    print()
    print("The gateway and the sample backend run in the foreground, in this terminal:")
    print("try the commands above from another terminal; stop both with Ctrl-C.")
    if args.port is not None or backend_port != DEMO_BACKEND_PORT:
        print(f"(The ports given here apply to this run: a reload re-reads {config_path}.)")
    print()
    return serve(cfg, before_run=lambda reactor: samplebackend.listen(reactor, backend_port))


def cmd_decode_header(args: argparse.Namespace) -> int:
    from twistedgw.app import _diagnose as diagnose
    from twistedgw.app import _runtime as runtime

    value = sys.stdin.read().strip() if args.value == "-" else args.value
    truststore = None
    if args.config:
        try:
            built = runtime.load(args.config)
        except ConfigError as e:
            return _fail(e.problems)
        truststore = built.truststore
    lines, code = diagnose.decode_header_report(value, args.encoding, truststore)
    stream = sys.stdout if code != 2 else sys.stderr
    for line in lines:
        print(line, file=stream)
    return code


def cmd_nginx_config(args: argparse.Namespace) -> int:
    """Render the NGINX include for the NGINX-fronted mode from the gateway's TOML, and say
    for each API whether NGINX carries it (and how) or hands it to twistedgw (and why)."""
    from twistedgw.app import nginx as nginxconf

    try:
        cfg, _built = _load(args.config)
    except ConfigError as e:
        return _fail(e.problems)
    problems = nginxconf.check(cfg)
    if problems:
        return _fail(problems)
    assert cfg.nginx is not None
    binary_name = cfg.nginx.binary
    binary = nginxconf.nginx_binary(binary_name)
    variant = args.variant
    # The include goes to standard output without --output: then the report goes to
    # standard error, so the output stays a config file.
    report = sys.stderr if args.output is None else sys.stdout
    if variant == "auto":
        found = nginxconf.probe(binary_name)
        if found.variant is None:
            return _fail([
                f"nginx-config --variant auto: {found.why}; name the variant with "
                "--variant lua or --variant auth_request (or set [nginx] binary)"
            ])
        variant = found.variant
        print(f"variant {variant}: {found.why}", file=report)
    output = Path(args.output).resolve() if args.output else None
    bundle = None
    if output is not None:
        bundle = output.with_name(output.stem + "-truststore.pem")
    lua_dir = None
    if variant == "lua":
        if not nginxconf.lua_source().exists():
            return _fail([f"{nginxconf.lua_source()}: not found (--variant lua needs it)"], 1)
        lua_dir = str(output.parent if output is not None else nginxconf.lua_source().parent)
    try:
        rendered = nginxconf.render(
            cfg, str(bundle) if bundle is not None else None, variant=variant,
            lua_dir=lua_dir, pipelines=_built.pipelines,
            nginx_version=nginxconf.version(binary) if binary else None,
        )
    except nginxconf.NginxConfigError as e:
        return _fail(e.problems)
    modules = nginxconf.lua_modules(binary or "") if variant == "lua" else ()
    if output is None:
        sys.stdout.write(rendered.text)
        if args.check:  # nginx -t reads a file: check a temporary copy
            import tempfile

            with tempfile.TemporaryDirectory(prefix="twistedgw-") as tmp:
                copy = Path(tmp) / "twistedgw.conf"
                copy.write_text(rendered.text)
                ok, message = nginxconf.nginx_test(copy, modules, binary=binary)
            if not ok:
                return _fail([f"nginx -t refused the output: {message}"], 1)
        _report_paths(cfg, variant, report, _built.pipelines)
        return 0
    try:
        output.write_text(rendered.text)
        if bundle is not None and rendered.truststore_pem is not None:
            bundle.write_bytes(rendered.truststore_pem)
        if lua_dir is not None:  # the module beside the include, where lua_package_path looks
            (output.parent / nginxconf.LUA_NAME).write_bytes(nginxconf.lua_source().read_bytes())
    except OSError as e:
        return _fail([f"{output}: cannot write: {e.strerror}"], 1)
    if args.check:
        ok, message = nginxconf.nginx_test(output, modules, binary=binary)
        if not ok:
            return _fail([f"{output}: nginx -t refused it: {message}"], 1)
        print(f"{output}: nginx -t OK")
    _report_paths(cfg, variant, report, _built.pipelines)
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """An argon2id PHC string for [[basic_users]] password_hash; the password comes from the
    terminal (asked twice) or from standard input, never from the command line, where
    other users' ``ps`` and the shell's history would see it."""
    import getpass

    from twistedgw.pipeline import hash_password

    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except EOFError:
            return _fail(["no password given"], 1)
        if password != again:
            return _fail(["the two passwords differ"], 1)
    else:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    if not password:
        return _fail(["the password is empty"], 1)
    print(hash_password(password))
    return 0


def _report_paths(cfg: Any, variant: str, stream: Any, pipelines: Any) -> None:
    """Per API: NGINX's path (how verdicts are asked and kept) or the gateway path, why."""
    from twistedgw.app import nginx as nginxconf

    for plan in nginxconf.plan(cfg, variant, pipelines):
        print(f"  {plan.describe(cfg)}", file=stream)


BUILT_IN = (
    ("mutual_ssl", "the mutual_ssl key: client certificate verified under the API's aliases"),
    ("api_key", "the api_key key: an [[api_keys]] key in the apikey header"),
    ("jwt", "the jwt key: a bearer token from [[jwt_issuers]], RFC 8705 binding"),
    ("basic_auth", "the basic_auth key: Authorization: Basic against [[basic_users]]"),
    ("revocation", "[tls] revocation: CRL/OCSP for the caller's chain"),
    ("identities", "[[apis.identities]]: the certificate must match one entry"),
    ("consumers", "[[consumers]], apis.consumers: who the caller is, and who may call"),
    ("tiers", "[[apis.tiers]]: per-certificate and per-consumer request rates"),
    ("throttling", "throttling_tier, x-wso2-throttling-tier: one limit for all callers"),
    ("authorization", "jwt APIs: Authorization removed unless forward_authorization"),
    ("basic_authorization", "basic_auth APIs: Authorization: Basic always removed"),
    ("identity", "[identity]: strips identity headers, forwards the verified one"),
    ("transports", "transports, x-wso2-transports: the schemes an API is served over"),
    ("endpoints", "x-wso2-sandbox-endpoints: a key type without its endpoint is refused"),
    ("backend_credentials", "securityConfig, backend_credentials: the backend's Basic auth"),
)


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the plugins [[apis.plugins]] can name, and the built-in stages, one a line."""
    from twistedgw.pipeline import installed

    for name, what in BUILT_IN:
        print(f"{name:<20} built-in  {what}")
    for found in installed():
        print(f"{found.name:<20} {found.origin}  {found.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from twistedgw import __version__

    parser = argparse.ArgumentParser(
        prog="twistedgw", description="API gateway with per-API mutual TLS, on Twisted."
    )
    parser.add_argument("--version", action="version", version=f"twistedgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the gateway in the foreground")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="validate a config and its key material")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("routes", help="list every route: method, path, API and its schemes")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_routes)
    p = sub.add_parser("dev-pki", help="write a development PKI (never for production)")
    p.add_argument("directory")
    p.add_argument("--key-type", choices=("ec", "rsa"), default="ec")
    p.set_defaults(func=cmd_dev_pki)
    p = sub.add_parser("demo", help="dev PKI + sample backend + gateway on conf/example")
    p.add_argument("--directory", default=str(DEMO_DIR),
                   help="a directory holding gateway.toml (its pki/ is generated when absent;"
                        " default conf/example, from the repository root)")
    p.add_argument("--port", type=int, default=None,
                   help="the gateway's port (default: the config's first listener, 9095)")
    p.add_argument("--backend-port", type=int, default=DEMO_BACKEND_PORT,
                   help=f"the sample backend's port (default {DEMO_BACKEND_PORT}); the"
                        f" APIs' backend URLs on 127.0.0.1:{DEMO_BACKEND_PORT} follow it")
    p.set_defaults(func=cmd_demo)
    from twistedgw.config import HEADER_ENCODINGS

    p = sub.add_parser("decode-header", help="diagnose a load balancer's certificate header")
    p.add_argument("value", help="the header value, or - to read it from standard input")
    p.add_argument("--encoding", "-e", choices=HEADER_ENCODINGS, default="auto")
    p.add_argument("--config", "-c", help="verify against this config's truststore")
    p.set_defaults(func=cmd_decode_header)
    p = sub.add_parser("nginx-config", help="render the NGINX include for the NGINX-fronted mode")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--output", "-o", help="write here (and FILE-truststore.pem beside it)")
    p.add_argument("--check", action="store_true", help="run nginx -t on the output")
    p.add_argument("--variant", choices=("auto", "auth_request", "lua"), default="auto",
                   help="auto (default): lua when the NGINX binary ([nginx] binary) runs "
                        "access_by_lua_block, else auth_request; lua needs NGINX's Lua module")
    p.set_defaults(func=cmd_nginx_config)
    p = sub.add_parser(
        "hash-password",
        help="print an argon2id password_hash for [[basic_users]] (password from stdin or tty)",
    )
    p.set_defaults(func=cmd_hash_password)
    p = sub.add_parser("plugins", help="list the installed plugins and where each came from")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("import-mgw", help="write a config from a WSO2 Microgateway 3.x project")
    p.add_argument("project", help="the project folder (api_definitions/, policies.yaml)")
    p.add_argument("--micro-gw-conf", metavar="FILE",
                   help="the runtime's micro-gw.conf (default PROJECT/conf/micro-gw.conf)")
    p.add_argument("--runtime-home", metavar="DIR",
                   help="what ${mgw-runtime.home} means (default: micro-gw.conf's conf/..)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the config here and list what is left to set (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(func=cmd_import_mgw)
    return parser


def cmd_import_mgw(args: argparse.Namespace) -> int:
    """A twistedgw config serving a Microgateway 3.x project; what could not be carried over
    is a comment in it, and what is left to set is listed (the config problems ``check``
    would print)."""
    from twistedgw.app import _importmgw

    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.force:
        return _fail([f"{output}: exists; give --force to overwrite it"], 1)
    try:
        text = _importmgw.import_project(
            Path(args.project),
            Path(args.micro_gw_conf) if args.micro_gw_conf else None,
            output,
            Path(args.runtime_home) if args.runtime_home else None,
        )
    except _importmgw.ImportError_ as e:
        return _fail([str(e)], 1)
    if output is None:
        print(text, end="")
        return 0
    try:
        output.write_text(text)
    except OSError as e:
        return _fail([f"{output}: cannot write: {e.strerror}"], 1)
    try:
        problems = list(configmod.load_partial(output).problems)
    except ConfigError as e:
        problems = e.problems
    print(f"{output}: written from {args.project}")
    prefix = f"{output.resolve()}: "
    for line in problems:
        print(f"  to set: {line.removeprefix(prefix)}")
    if problems:
        print(f"  ({len(problems)} left: the comments in {output.name} say why; "
              "`twistedgw check` lists them again)")
    return 0


def _header_value_last(argv: list[str]) -> list[str]:
    """Let ``decode-header`` take a value that starts with dashes.

    PEM and URL-encoded PEM header values start with ``-----BEGIN``, which argparse
    would read as an option; move such a value after ``--``, where it is positional.
    """
    if "decode-header" not in argv or "--" in argv:
        return argv
    values = [a for a in argv if a.startswith("-----")]
    if not values:
        return argv
    return [*(a for a in argv if not a.startswith("-----")), "--", *values]


def main(argv: list[str] | None = None) -> int:
    argv = _header_value_last(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_pipe()


EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # what the shell reports for a process SIGPIPE ended


def _closed_pipe() -> int:
    """Whoever read our output stopped (``| head``): exit quietly, as ``cat`` would.

    Python ignores SIGPIPE, so the write raises instead; point stdout at
    /dev/null so that the interpreter's final flush does not raise again.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
