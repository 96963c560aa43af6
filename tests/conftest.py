from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend_fixture import backend  # noqa: F401  (the shared echo backend)
from tests.harness import GatewayProcess, free_port, gateway_config, start_gateway
from twistedgw.testing import devpki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> devpki.DevPki:
    """One development PKI for the whole run (see twistedgw/devpki.py for its cast)."""
    return devpki.generate(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway(tmp_path: Path, pki: devpki.DevPki) -> Iterator[Callable[..., GatewayProcess]]:
    """Start real gateway processes: ``gateway(apis=[...], api_keys={...}, ...)``."""
    started: list[GatewayProcess] = []

    def start(apis: list[dict[str, Any]], *, config_text: str | None = None,
              argv: list[str] | None = None, port: int | None = None,
              wait_for: tuple[int, ...] = (), **kwargs: Any) -> GatewayProcess:
        port = port or free_port()
        text = config_text or gateway_config(pki, apis, port=port, **kwargs)
        gw = start_gateway(tmp_path / f"gw{len(started)}", text, port, argv=argv,
                           wait_for=wait_for)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
