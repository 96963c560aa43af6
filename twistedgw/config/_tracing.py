"""``[tracing]``: OpenTelemetry traces exported over OTLP/HTTP.

The SDK is an optional extra (``twistedgw[tracing]``): a config that asks for
tracing where it is not installed is a config problem, reported by ``check`` and at
start like any other, rather than an import error on the first request.
Header values (an API key, a bearer token) are never shown: not in problems, not in
``repr``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twistedgw.config._base import HEADER_RE, TableReader, quoted

#: What must be importable for [tracing]: the SDK and its OTLP/HTTP span exporter.
SDK_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
INSTALL_HINT = "pip install 'twistedgw[tracing]'"
_LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain"})
_MAX_QUEUE = 1_000_000


@dataclass(frozen=True)
class TracingConfig:
    otlp_endpoint: str  # the full URL of the OTLP/HTTP traces endpoint (…/v1/traces)
    service_name: str = "twistedgw"
    sample_ratio: float = 1.0  # for traces the gateway starts or decides itself
    # Extra HTTP headers for the exporter's requests (an API key): never logged.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_queue_size: int = 2048  # spans waiting for export; more are dropped (and counted)


def read_tracing(r: TableReader) -> TracingConfig | None:
    endpoint = r.required("otlp_endpoint", str)
    service_name = r.get("service_name", str, "twistedgw")
    if not service_name.strip() or len(service_name) > 255:
        r.problem("service_name", "must be a non-empty name of at most 255 characters")
    ratio = r.get("sample_ratio", float, 1.0)
    if math.isnan(ratio) or not 0.0 <= ratio <= 1.0:
        r.problem("sample_ratio", f"must be a number from 0 to 1, got {quoted(ratio)}")
        ratio = 1.0
    max_queue = r.positive("max_queue_size", int, 2048)
    if max_queue > _MAX_QUEUE:
        r.problem("max_queue_size", f"must be at most {_MAX_QUEUE}, got {max_queue}")
        max_queue = 2048
    headers = _headers(r)
    clear = _endpoint(r, endpoint) if endpoint is not None else False
    if clear and headers:
        r.problem(
            "headers",
            "would travel in clear over http:// to a host that is not loopback: use an "
            "https:// otlp_endpoint",
        )
    missing = _missing_sdk()
    if missing is not None:
        r.problem("otlp_endpoint", f"tracing needs {missing}, which is not installed: "
                  f"{INSTALL_HINT}")
    r.finish()
    if endpoint is None:
        return None
    return TracingConfig(
        otlp_endpoint=endpoint,
        service_name=service_name,
        sample_ratio=ratio,
        headers=headers,
        max_queue_size=max_queue,
    )


def _endpoint(r: TableReader, value: str) -> bool:
    """Check the URL; True when it is http:// to a host that is not loopback."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as e:
        r.problem("otlp_endpoint", f"not a URL: {e}")
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(
            "otlp_endpoint",
            f"must be an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces, "
            f"got {quoted(value)}",
        )
        return False
    if parts.username is not None or parts.fragment:
        # A user:password would reach logs; the exporter's headers take credentials.
        r.problem("otlp_endpoint", "must not carry a user:password or a fragment (use headers)")
        return False
    if parts.scheme == "https":
        return False
    host = parts.hostname
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() not in _LOOPBACK_HOSTS


def _headers(r: TableReader) -> tuple[tuple[str, str], ...]:
    table = r.get("headers", dict, {})
    out: list[tuple[str, str]] = []
    for name, value in table.items():
        where = f"headers.{name}"
        if not HEADER_RE.match(name):
            r.problem(where, "not a valid HTTP header name")
            continue
        # The value is never echoed: it is usually a secret.
        if not isinstance(value, str):
            r.problem(where, "expected a string")
            continue
        if any(not (" " <= c <= "~") and c != "\t" for c in value):
            r.problem(where, "the value may hold only printable ASCII (no line breaks)")
            continue
        out.append((name, value.strip(" \t")))
    return tuple(out)


def _missing_sdk() -> str | None:
    """The first module of the tracing extra that cannot be imported, or None."""
    for name in SDK_MODULES:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return name
    return None
