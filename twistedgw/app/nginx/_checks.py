"""What a gateway config must have before NGINX's side can be rendered from it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from twistedgw.config import GatewayConfig

# What a context may contain to be rendered into a location regex.
_CONTEXT_OK = re.compile(r"^/[A-Za-z0-9._~!&()*+,=:@/-]*$")
# What a backend URL's path may not contain to be rendered (variables, quoting).
_PATH_BAD = re.compile(r"[$;\"'{}\\\s]")


class NginxConfigError(Exception):
    """The config cannot be rendered; ``problems`` name the file and the dotted key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _listener_matches(config: GatewayConfig, authz: str) -> bool:
    """A plain listener serves what ``[nginx] authz`` names."""
    for listener in config.listeners:
        if listener.tls:
            continue
        if authz.startswith("unix:"):
            endpoint = listener.endpoint or ""
            path = authz[len("unix:") :]
            if endpoint.startswith("systemd:"):  # a socket unit owns the path
                return True
            if endpoint.startswith("unix:") and (
                endpoint[len("unix:") :].split(":")[0] in (path, f"address={path}")
            ):
                return True
        elif listener.endpoint is None:
            host, _, port = authz.rpartition(":")
            if int(port) == listener.port and host.strip("[]") in (listener.host, "localhost"):
                return True
    return False


def check(config: GatewayConfig) -> list[str]:
    """What the gateway config lacks for the NGINX-fronted mode (file: key: problem)."""
    file = config.source
    out: list[str] = []
    nginx = config.nginx
    if nginx is None:
        return [f"{file}: nginx: the [nginx] section is required for nginx-config"]
    if config.authz is None:
        out.append(f"{file}: authz: an [authz] section is required (NGINX asks it)")
    lb = config.mutual_ssl
    if lb.certificate_header is None:
        out.append(
            f"{file}: mutual_ssl.certificate_header: is required: NGINX passes the client "
            'certificate in it (e.g. "X-SSL-Client-Cert")'
        )
    elif lb.header_encoding not in ("auto", "url-pem"):
        out.append(
            f"{file}: mutual_ssl.header_encoding: NGINX sends $ssl_client_escaped_cert "
            f'("url-pem" or "auto"), not {lb.header_encoding!r}'
        )
    if nginx.authz.startswith("unix:"):
        if not lb.trust_unix_socket or lb.enable_client_validation:
            out.append(
                f"{file}: mutual_ssl.trusted_proxies: NGINX reaches twistedgw over the Unix "
                'socket in [nginx] authz: set trusted_proxies = ["unix"] and '
                "enable_client_validation = false"
            )
    elif lb.enable_client_validation or not lb.trusted_proxies:
        out.append(
            f"{file}: mutual_ssl.trusted_proxies: NGINX reaches twistedgw over plain HTTP "
            "([nginx] authz): list NGINX's address in trusted_proxies and set "
            "enable_client_validation = false"
        )
    if not _listener_matches(config, nginx.authz):
        out.append(
            f"{file}: listeners: no plain (tls = false) listener serves [nginx] authz = "
            f"{nginx.authz!r}; add one, e.g. endpoint = {nginx.authz!r} with tls = false"
            if nginx.authz.startswith("unix:")
            else f"{file}: listeners: no plain (tls = false) listener on {nginx.authz!r}"
        )
    if config.tls.certificate is None or config.tls.private_key is None:
        out.append(
            f"{file}: tls.certificate: NGINX needs PEM files (certificate and private_key); "
            "a PKCS#12 keystore cannot be rendered"
        )
    for k, entry in enumerate(config.tls.sni):
        if entry.certificate is None or entry.private_key is None:
            out.append(
                f"{file}: {entry.where or f'tls.sni[{k}]'}.certificate: NGINX needs PEM files "
                "(certificate and private_key); a PKCS#12 keystore cannot be rendered"
            )
    for i, api in enumerate(config.apis):
        if any(_PATH_BAD.search(urlsplit(e).path) for e in api.endpoints):
            out.append(
                f"{file}: apis[{i}].backend: its path cannot be rendered into NGINX's config "
                "('$', ';', quotes, braces, backslashes and spaces are not supported in this "
                "mode)"
            )
        if not _CONTEXT_OK.match(api.context):
            out.append(
                f"{file}: apis[{i}].context: {api.context!r} cannot be rendered as an NGINX "
                "location ('%', ';', '$' and quotes are not supported in this mode)"
            )
    return out
