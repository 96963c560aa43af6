"""twistedgw: an API gateway on Twisted with per-API mutual TLS.

Embed it with ``make_service(config_path_or_config)``; see docs/how-to/embedding.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First: it reads LISTEN_FDS before twisted.internet.endpoints would consume it.
from twistedgw import _sdlisten  # noqa: F401

__all__ = ["ConfigError", "make_service"]
__version__ = "0.4.0"

if TYPE_CHECKING:
    from twistedgw.app import make_service
    from twistedgw.config import ConfigError


def __getattr__(name: str) -> Any:
    # Lazy, so ``import twistedgw`` (e.g. by the twistd plugin scan) does not import the reactor.
    if name == "make_service":
        from twistedgw.app import make_service

        return make_service
    if name == "ConfigError":
        from twistedgw.config import ConfigError

        return ConfigError
    raise AttributeError(name)
