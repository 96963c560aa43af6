"""The documentation's own promises: the strict build fails on what it should, the README's
links lead somewhere, and every repository path or module the docs name exists."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from tests import docpages
from tests.harness import REPO

# The pages a reader may follow to the code. CHANGELOG.md is history: it names the
# modules of its time.
CHECKED = [REPO / "README.md", REPO / "conf" / "README.md", REPO / "bench" / "README.md",
           *sorted(docpages.DOCS.rglob("*.md"))]


def _build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_strict_build_fails_on_each_kind_of_broken_docs(tmp_path: Path) -> None:
    """A copy of the docs builds clean; with one defect of each kind added (a missing page,
    a missing anchor, a link outside docs/, a link that names no page, a page outside the
    nav, a nav entry without a page) the strict build fails and names every one."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    clean = _build(root)
    assert clean.returncode == 0, clean.stderr
    assert "WARNING" not in clean.stderr

    with (root / "docs" / "index.md").open("a") as f:
        f.write("\n[gone](no-such-page.md) [anchor](reference/errors.md#no-such-heading)"
                " [outside](../bench/README.md) [unrecognized](reference/)\n")
    (root / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    conf = (root / "mkdocs.yml").read_text()
    (root / "mkdocs.yml").write_text(conf.replace("  - contributing.md\n",
                                                  "  - contributing.md\n  - missing.md\n"))
    broken = _build(root)
    assert broken.returncode != 0
    said = broken.stdout + broken.stderr
    for defect in ("link 'no-such-page.md'", "anchor '#no-such-heading'",
                   "link '../bench/README.md'", "unrecognized relative link 'reference/'",
                   "- orphan.md", "'missing.md' is included in the 'nav'"):
        assert defect in said, (defect, said)
    # One warning each, and strict mode aborts on them.
    assert "Aborted with 6 warnings in strict mode" in said, said


def _headings(path: Path) -> set[str]:
    text, fence, slugs = path.read_text(), False, set()
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^#{1,6} (.*?)\s*$", line)
        if m:
            plain = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", r"\1", m.group(1))
            slugs.add(slugify(plain, "-"))
    return slugs


def test_readme_links_lead_somewhere() -> None:
    """GitHub shows the README's relative links as they are: each names a file that exists,
    and a ``#anchor`` names one of its headings."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10
    for link in local:
        target, _, anchor = link.partition("#")
        path = REPO / target
        assert path.exists(), link
        if anchor:
            assert anchor in _headings(path), link


_PATH = re.compile(
    r"(?<![\w/.~-])((?:twistedgw|tests|bench|conf|scripts|plugins|docs|app|config|http|identity"
    r"|pipeline|tls|upstream|testing)/[\w./-]*\w\.(?:py|toml|lua|service|socket|tac|cfg|conf|md"
    r"|yml|json|svg))"
)
_SUBPACKAGES = {"app", "config", "http", "identity", "pipeline", "tls", "upstream", "testing"}
_DOTTED = re.compile(r"`(twistedgw(?:\.[A-Za-z_]\w*)+)")
_FILE_SUFFIXES = {"conf", "toml", "py", "pem", "lua", "service", "socket", "json", "md", "cfg",
                  "tac", "yml", "p12", "crt", "key", "log", "jsonl"}


def test_every_path_named_in_the_docs_exists() -> None:
    """``twistedgw/_sdlisten.py``, ``http/_front.py`` (under twistedgw/), ``conf/...``,
    ``tests/...``: a reader who looks for a file the docs name finds it."""
    missing = []
    for doc in CHECKED:
        for name in sorted(set(_PATH.findall(doc.read_text()))):
            base = REPO / "twistedgw" if name.split("/", 1)[0] in _SUBPACKAGES else REPO
            if not (base / name).exists():
                missing.append(f"{doc.relative_to(REPO)}: {name}")
    assert not missing


def test_every_module_named_in_the_docs_exists() -> None:
    """``twistedgw.testing.devpki``, ``twistedgw.make_service``: importable as written."""
    from twistedgw.tracing._otel import GATEWAY_ATTRIBUTES

    missing = []
    for doc in CHECKED:
        for name in sorted(set(_DOTTED.findall(doc.read_text()))):
            parts = name.split(".")
            if parts[-1] in _FILE_SUFFIXES:  # twistedgw.conf, a file name
                continue
            if name in GATEWAY_ATTRIBUTES:  # a span attribute ([tracing]), not a module
                continue
            for cut in range(len(parts), 0, -1):
                try:
                    obj: object = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    missing.append(f"{doc.relative_to(REPO)}: {name}")
                break
            else:
                missing.append(f"{doc.relative_to(REPO)}: {name}")
    assert not missing


def test_cli_reference_names_every_command_and_option() -> None:
    """docs/reference/cli.md has a section per subcommand of the real parser, naming each
    of its options (so a new flag cannot ship undocumented)."""
    import argparse

    from twistedgw.app import _cli as cli

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        try:
            text = docpages.section("reference/cli.md", f"## {name}")
        except LookupError:
            missing.append(name)
            continue
        for action in sub._actions:
            for flag in set(action.option_strings) - {"-h", "--help"}:
                if f"`{flag}" not in text and f" {flag}" not in text:
                    missing.append(f"{name} {flag}")
    assert not missing


# Every section of the config, with the keys some readers read only when present; the
# values need not be valid: each reader reads its whole table and reports problems.
_EVERY_SECTION = """
workers = 1
shutdown_timeout = 30
[[listeners]]
port = 1
[tls]
sni = [{hosts = ["a.example"]}]
[mutual_ssl]
[authz]
[admin]
[access_log]
[identity]
[nginx]
[limits]
[backend_tls]
[cluster]
redis = "redis://127.0.0.1"
[[api_keys]]
[[basic_users]]
[[throttling_policies]]
count = 1
[[consumers]]
[[jwt_issuers]]
[errors]
[tracing]
[[apis]]
backend_tls = {}
tiers = [{requests_per_minute = 1}]
application_security = {types = ["jwt"]}
cors = {}
response_cache = {}
[response_cache]
"""

# Where each reader's table is documented: its dotted path (indices dropped) -> heading.
_SECTIONS = {
    "": "## Top level", "listeners[]": "## [[listeners]]", "tls": "## [tls]",
    "tls.sni[]": "## [[tls.sni]]", "apis[]": "## [[apis]]",
    "apis[].tiers[]": "### [[apis.tiers]]", "apis[].backend_tls": "## [backend_tls]",
    "apis[].application_security": "### apis.application_security", "errors": "## [errors]",
    "apis[].cors": "### apis.cors", "apis[].response_cache": "### apis.response_cache",
    "response_cache": "## [response_cache]",
    "api_keys[]": "## [[api_keys]]", "consumers[]": "## [[consumers]]",
    "basic_users[]": "## [[basic_users]]", "throttling_policies[]": "## [[throttling_policies]]",
    "jwt_issuers[]": "## [[jwt_issuers]]", "mutual_ssl": "## [mutual_ssl]",
    "authz": "## [authz]", "identity": "## [identity]", "limits": "## [limits]",
    "backend_tls": "## [backend_tls]", "cluster": "## [cluster]", "admin": "## [admin]",
    "access_log": "## [access_log]", "nginx": "## [nginx]", "tracing": "## [tracing]",
}


def _documented_keys(heading: str) -> set[str]:
    table = docpages.section("reference/configuration.md", heading).split("\n#")[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M))


def test_configuration_reference_matches_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key each section's reader reads has a row in its section's table of
    docs/reference/configuration.md, and every row names a key the reader reads (so the
    reference and ``twistedgw.config`` cannot drift apart)."""
    import tomllib

    from twistedgw.config import _base, _gateway, _rules

    read: dict[str, set[str]] = {}
    finish = _base.TableReader.finish

    def recording_finish(self: _base.TableReader) -> None:
        read.setdefault(re.sub(r"\[\d+\]", "[]", self.path), set()).update(self.seen)
        finish(self)

    monkeypatch.setattr(_base.TableReader, "finish", recording_finish)
    path = tmp_path / "gateway.toml"
    _gateway.parse_partial(tomllib.loads(_EVERY_SECTION), path)
    read["apis[]"].add("openapi")  # an [[apis]] table with openapi goes through _openapi.py
    assert set(read) == set(_SECTIONS), "a section without a heading in the reference"
    read[""] -= {where.split("[")[0] for where in _SECTIONS}  # the tables: their own headings
    problems = []
    for where, heading in _SECTIONS.items():
        documented = _documented_keys(heading)
        problems += [f"{heading}: `{k}` undocumented" for k in read[where] - documented]
        problems += [f"{heading}: `{k}` is read by nothing" for k in documented - read[where]]
    entries = _documented_keys("### [[apis.identities]] and [[consumers.certificates]]")
    assert entries == set(_rules.KEYS)
    assert not problems


def test_plugin_guide_documents_every_testing_helper() -> None:
    """docs/tutorials/writing-a-plugin.md names every public helper of twistedgw.testing,
    every field of Call, RequestView and ClientIdentity, and every twistedgw.errors helper
    with its status, code and message (so none can change or appear undocumented)."""
    import dataclasses
    import inspect

    from twistedgw import errors, testing
    from twistedgw.identity import ClientIdentity
    from twistedgw.pipeline import Call, RequestView

    guide = docpages.section("tutorials/writing-a-plugin.md", "## The testing helpers")
    missing = []
    helpers = [name for name, f in inspect.getmembers(testing, inspect.isfunction)
               if f.__module__ == testing.__name__ and not name.startswith("_")]
    assert "run" in helpers and "fake_call" in helpers
    missing += [h for h in helpers if f"`{h}(" not in guide]
    for cls in (Call, ClientIdentity):
        missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)
                    if f"`{f.name}`" not in guide]
    missing += [f"RequestView.{f}" for f in RequestView._fields if f"`{f}`" not in guide]
    for name, f in inspect.getmembers(errors, inspect.isfunction):
        returns = inspect.signature(f).return_annotation
        if f.__module__ != errors.__name__ or returns not in ("GatewayError",
                                                              errors.GatewayError):
            continue
        args = ["x"] * len(inspect.signature(f).parameters)
        e = f(*args) if name != "payload_too_large" else f(1)
        row = re.search(rf"^\| `{name}\([^)]*\)` \| (\d+) \| `([^`]+)` \| (.+?) \|$", guide, re.M)
        if row is None or row.groups() != (str(e.status), e.code, e.message):
            missing.append(f"errors.{name}")
    assert not missing


def test_changelog_keeps_a_changelog_with_versions() -> None:
    """CHANGELOG.md: an Unreleased section first, then released versions newest first,
    each dated, with Keep a Changelog's kinds of change; the package says the newest."""
    from twistedgw import __version__

    text = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert versions[0] == ("Unreleased", "")
    released = versions[1:]
    assert released and all(date for _, date in released)
    numbers = [tuple(int(n) for n in v.split(".")) for v, _ in released]
    assert numbers == sorted(numbers, reverse=True) and numbers[-1] == (0, 1, 0)
    assert released[0][0] == __version__
    kinds = set(re.findall(r"^### (\w+)", text, re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security",
                     "Performance"}, kinds
    for version, _ in versions:
        assert re.search(rf"^\[{re.escape(version)}\]: ", text, re.M), version
