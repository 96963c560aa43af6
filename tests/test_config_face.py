"""twistedgw.config's public face (#25 item 10).

Code outside the package imports ``twistedgw.config``, never a module behind it, and the
face exports public names only. lint-imports checks this for twistedgw itself (a
forbidden contract in pyproject.toml); it does not read plugins/ or bench/, so this does.
"""

from __future__ import annotations

import re

from tests.harness import REPO
from twistedgw import config

# ``twistedgw.config._x`` in any import form, and ``from twistedgw.config import _x``.
PRIVATE = re.compile(r"twistedgw\.config\._\w|from\s+twistedgw\.config\s+import\s+\(?\s*_\w")


def test_plugins_and_bench_import_only_the_config_face() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for folder in ("plugins", "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not offenders


def test_the_face_exports_public_names_only() -> None:
    assert [name for name in config.__all__ if name.startswith("_")] == []
    assert [name for name in config.__all__ if not hasattr(config, name)] == []
    # A private class must not hide behind a public alias either.
    assert config.TableReader.__name__ == "TableReader"
    assert config.ProblemList.__name__ == "ProblemList"
