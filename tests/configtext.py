"""A gateway config written as TOML text and read the way ``twistedgw run`` reads it.

In-memory tests of a config section (CORS, the response cache) start from one small
gateway (``SHOP``: a plain listener and one API) and add the section under test, so
each test shows only what it is about.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from twistedgw import config as configmod
from twistedgw.config import ConfigError

SHOP = """
[[listeners]]
port = 1
tls = false
[[apis]]
name = "shop"
context = "/shop"
backend = "http://127.0.0.1:9/"
"""


def load(tmp_path: Path, text: str) -> configmod.GatewayConfig:
    """Write ``text`` as ``gateway.toml`` under ``tmp_path`` and load it."""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return configmod.load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems (without the file name) that loading ``text`` reports."""
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return [line.split(": ", 1)[1] for line in e.value.problems]
