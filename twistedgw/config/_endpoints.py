"""Endpoints: where an API (or one operation) sends production and sandbox traffic, and
the credentials its backend expects.

WSO2 Microgateway 3.x gives an API (and any operation) a production endpoint and a
sandbox one (``x-wso2-production-endpoints``, ``x-wso2-sandbox-endpoints``); which one a
request goes to is the key type of the credential that passed (a token's ``keytype``
claim, an API key's ``keytype``). An endpoint's ``securityConfig`` of type ``basic``
makes the gateway send ``Authorization: Basic`` to the backend. The Microgateway reads
that password from its runtime configuration, ``<endpoint name>_<prod|sand>_basic_password``
(an environment variable or a ``--name=value`` argument); twistedgw reads the same
environment variables, or a file that ``[[apis.backend_credentials]]`` names.

Passwords live in ``BackendAuth.password``, which is never in a ``repr`` (so never in a
log line or a traceback's locals); messages name the endpoint and where the password is
looked for, never the password.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twistedgw.config._base import TableReader

PRODUCTION = "production"
SANDBOX = "sandbox"
#: WSO2's word for each in environment variable names.
KIND_WORD = {PRODUCTION: "prod", SANDBOX: "sand"}
MAX_PASSWORD_FILE_BYTES = 4096


@dataclass(frozen=True)
class BackendAuth:
    """Basic credentials the gateway sends to a backend (never the client's own)."""

    username: str
    password: str = field(repr=False)
    origin: str = field(default="", compare=False)  # where the password came from, in words

    def header_value(self) -> bytes:
        """The ``Authorization`` value (RFC 7617, UTF-8 as its ``charset`` allows)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode())
        return b"Basic " + token


@dataclass(frozen=True)
class BasicSecurity:
    """An endpoint's ``securityConfig`` of type ``basic`` as the definition wrote it."""

    username: str | None
    password: str | None = field(repr=False)
    where: str = field(default="", compare=False)  # its JSON pointer


@dataclass(frozen=True)
class Endpoints:
    """One endpoint in WSO2's sense: URLs, how to pick one, and the backend's credentials."""

    urls: tuple[str, ...]
    mode: str = "load_balance"  # | "failover"
    name: str = ""  # WSO2's endpoint name (environment variables, backend_credentials)
    security: BasicSecurity | None = None  # securityConfig as written (definitions only)
    auth: BackendAuth | None = None  # resolved: what the backend is sent
    where: str = field(default="", compare=False)  # its JSON pointer in the definition


def api_endpoint_name(title: str, version: str) -> str:
    """The name the Microgateway gives an API-level endpoint written in place (not by
    reference): ``api_`` and the MD5 of ``title:version`` (its ``HashUtils.generateAPIId``),
    so its environment variables keep working unchanged."""
    return "api_" + hashlib.md5(f"{title}:{version}".encode(), usedforsecurity=False).hexdigest()


def environment_names(name: str, kind: str) -> tuple[str, str]:
    """The Microgateway's variables for an endpoint's basic credentials: (username,
    password), e.g. ``myEndpoint_prod_basic_username``."""
    word = KIND_WORD[kind]
    return f"{name}_{word}_basic_username", f"{name}_{word}_basic_password"


@dataclass(frozen=True)
class CredentialEntry:
    """One ``[[apis.backend_credentials]]`` table: the password read from its file."""

    endpoint: str
    username: str
    password: str = field(repr=False)
    where: str = field(default="", compare=False)  # its dotted key


def read_backend_credentials(r: TableReader) -> tuple[CredentialEntry, ...]:
    """``[[apis.backend_credentials]] endpoint, username, password_file``: the password is
    read from its file now (start, ``check``, reload), never written in the config."""
    out: list[CredentialEntry] = []
    named: set[str] = set()
    for t in r.tables("backend_credentials"):
        endpoint = t.required("endpoint", str)
        username = t.required("username", str)
        if "password" in t.table:
            t.seen.add("password")
            t.problem("password", "a password is never written in the config: put it in a "
                                  "file and name it with password_file")
        password_file = t.path_value("password_file")
        if "password_file" not in t.table and "password" not in t.table:
            t.problem("password_file", "is required: a file holding the backend's password")
        t.finish()
        password = _read_password(t, password_file) if password_file is not None else None
        if endpoint is not None and endpoint in named:
            t.problem("endpoint", f"{endpoint!r} is given credentials twice")
            continue
        if username is not None and (":" in username or not username):
            t.problem("username", "must be non-empty and without ':' (RFC 7617)")
            continue
        if endpoint is not None and username is not None and password is not None:
            named.add(endpoint)
            out.append(CredentialEntry(endpoint, username, password, t.path))
    return tuple(out)


def _read_password(t: TableReader, file: Path) -> str | None:
    try:
        with file.open("rb") as f:
            data = f.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as e:
        if file.exists():  # a missing file is already reported by path_value
            t.problem("password_file", f"cannot read {file}: {e.strerror}")
        return None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        t.problem("password_file", f"{file} is larger than {MAX_PASSWORD_FILE_BYTES} bytes; "
                                   "it should hold the password alone")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        t.problem("password_file", f"{file} is not UTF-8 text")
        return None
    password = text.rstrip("\r\n")  # the newline an editor or `echo` adds is not part of it
    if not password:
        t.problem("password_file", f"{file} is empty")
        return None
    return password


Report = Callable[[str, str], None]


@dataclass
class Resolver:
    """Gives each endpoint its ``BackendAuth``: from ``[[apis.backend_credentials]]``
    (by endpoint name, or ``production`` / ``sandbox`` for the API's own), else from the
    Microgateway's environment variables, else from the definition (a warning: secrets
    belong outside definitions). An endpoint that asks for basic credentials and has no
    password anywhere is an error naming it and where the password is looked for."""

    entries: Mapping[str, CredentialEntry]
    environ: Mapping[str, str]
    error: Report  # (JSON pointer, message) about the definition
    warn: Report
    used: set[str] = field(default_factory=set)
    _done: dict[tuple[Endpoints, str, bool], Endpoints] = field(default_factory=dict)

    def resolve(self, endpoints: Endpoints, kind: str, *, api_level: bool) -> Endpoints:
        key = (endpoints, kind, api_level)
        done = self._done.get(key)
        if done is None:
            done = self._done[key] = self._resolve(endpoints, kind, api_level)
        return done

    def _resolve(self, endpoints: Endpoints, kind: str, api_level: bool) -> Endpoints:
        import dataclasses

        entry = self.entries.get(endpoints.name) if endpoints.name else None
        if entry is None and api_level:
            entry = self.entries.get(kind)
        if entry is not None:
            self.used.add(entry.endpoint)
            auth = BackendAuth(entry.username, entry.password, f"{entry.where}.password_file")
            return dataclasses.replace(endpoints, auth=auth)
        security = endpoints.security
        if security is None:
            return endpoints
        user_var, password_var = environment_names(endpoints.name, kind)
        username = self.environ.get(user_var) or security.username
        password = self.environ.get(password_var)
        origin = f"the environment variable {password_var}"
        if security.password:
            self.warn(security.where, f"the {kind} endpoint {endpoints.name!r} has its password "
                      "written in the definition; secrets belong outside definitions: set the "
                      f"environment variable {password_var}, or [[apis.backend_credentials]] "
                      f"endpoint = {endpoints.name!r} with password_file, and remove it")
            if password is None:
                password, origin = security.password, "the definition"
        where_to = (f"set the environment variable {password_var} (the Microgateway's name), "
                    f"or [[apis.backend_credentials]] endpoint = {endpoints.name!r} with "
                    "username and password_file")
        if not password:
            self.error(security.where, f"the {kind} endpoint {endpoints.name!r} asks for basic "
                       f"credentials but no password is given: {where_to}")
            return endpoints
        if not username:
            self.error(security.where, f"the {kind} endpoint {endpoints.name!r} asks for basic "
                       f"credentials but no username is given: write username here, set "
                       f"{user_var}, or use [[apis.backend_credentials]]")
            return endpoints
        if ":" in username:
            self.error(security.where, f"the {kind} endpoint {endpoints.name!r}: a basic "
                       "username must not contain ':' (RFC 7617)")
            return endpoints
        return dataclasses.replace(endpoints, auth=BackendAuth(username, password, origin))
