"""What every part of the rendered include needs: the config, each API's plan, the
variant, and the lines written so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from twistedgw.app.nginx._plan import ApiPlan
from twistedgw.config import GatewayConfig
from twistedgw.http import verdicts
from twistedgw.identity import forwarding as idforward
from twistedgw.pipeline import API_KEY_HEADER


@dataclass
class Site:
    config: GatewayConfig
    plans: tuple[ApiPlan, ...]
    variant: str
    truststore_file: str | None
    lua_dir: str
    nginx_version: tuple[int, int, int] | None = None  # of [nginx] binary; None: not known
    lines: list[str] = field(default_factory=list)
    server: int = -1  # the [[tls.sni]] entry of the server block being written (-1: default)

    def __post_init__(self) -> None:
        from twistedgw.app import _runtime as runtime

        self.stripped = _stripped_headers(self.config)
        self.identity_names = verdicts.identity_header_names(self.config)
        entries = [None, *self.config.tls.sni]
        asking = {runtime.asks_for_certificate(self.config, e) for e in entries}
        # Servers that ask and servers that do not: TLS 1.3 resumes a session under
        # another server's name, so the certificate passed on is the server's own choice.
        self.mixed_asks = len(asking) > 1
        self.client_cert = "$tgw_client_cert" if self.mixed_asks else "$ssl_client_escaped_cert"

    @property
    def lua(self) -> bool:
        return self.variant == "lua"

    def w(self, line: str = "") -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _stripped_headers(config: GatewayConfig) -> list[str]:
    """Every header a caller must never deliver (the direct mode strips the same)."""
    names = set(idforward.stripped(config.identity)) | {API_KEY_HEADER}
    for api in config.apis:  # an OpenAPI apiKey scheme's own header is removed too
        names |= {h.encode() for h in verdicts.key_headers(api)}
    lb = config.mutual_ssl
    names |= {h.lower().encode() for h in (lb.certificate_header, lb.chain_header) if h}
    names |= {b"forwarded", b"x-twistedgw-api", b"x-twistedgw-principal"}
    return sorted(n.decode() for n in names)
