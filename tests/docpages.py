"""Read the user documentation (``docs/``) the way tests check its promises.

Tests that run a documented example read it from its page, so the example and the
code cannot drift apart; these helpers find a page and a section of it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def page(name: str) -> str:
    """The Markdown of ``docs/NAME`` (e.g. ``"how-to/jwt.md"``)."""
    return (DOCS / name).read_text()


def section(name: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line, e.g. ``"## Consumers"``) of a
    page, up to the next heading of the same or a higher level (code blocks skipped)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = page(name).split("\n")
    out: list[str] = []
    inside = fence = False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#{1,6}) ", line)
        if m and inside and len(m.group(1)) <= level:
            break
        if inside:
            out.append(line)
        elif not fence and line.rstrip() == heading:
            inside = True
    if not inside:
        raise LookupError(f"docs/{name} has no heading {heading!r}")
    return "\n".join(out)


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``language`` in ``text``, in order."""
    return re.findall(rf"^```{re.escape(language)}[^\n]*\n(.*?)^```", text, re.S | re.M)
