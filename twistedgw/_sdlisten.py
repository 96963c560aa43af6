"""Listening sockets passed by systemd or another supervisor (sd_listen_fds(3)).

Why not Twisted's ``systemd:`` endpoint parser alone: ``ListenFDs.fromEnvironment``
returns no descriptor at all when ``LISTEN_FDS`` is set but ``LISTEN_FDNAMES``
is not, yet sd_listen_fds(3) makes the names optional
(``sd_listen_fds_with_names`` reports ``unknown`` for each): older systemd,
``systemd-socket-activate`` without ``--fdname`` and other supervisors pass
none. And it deletes ``LISTEN_PID``/``LISTEN_FDS`` from the environment when
``twisted.internet.endpoints`` is first imported, so this module reads them
when ``twistedgw`` is imported (its ``__init__`` imports this first), and
otherwise falls back on what Twisted read.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SD_LISTEN_FDS_START = 3
UNKNOWN = "unknown"  # sd_listen_fds_with_names' name for an unnamed socket


@dataclass(frozen=True)
class Inherited:
    """The descriptors passed to this process, in order, and their names."""

    descriptors: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.descriptors:
            return "none"
        return ", ".join(
            f"index {i} = fd {fd} ({name})"
            for i, (fd, name) in enumerate(zip(self.descriptors, self.names, strict=True))
        )


def from_environ(environ: Mapping[str, str], pid: int) -> Inherited:
    """What ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` pass to process ``pid``."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return Inherited()
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return Inherited()
    if count <= 0:
        return Inherited()
    descriptors = tuple(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    raw = environ.get("LISTEN_FDNAMES")
    names = tuple(raw.split(":")) if raw else ()
    if len(names) != count:
        names = (UNKNOWN,) * count
    return Inherited(descriptors, names)


_AT_IMPORT = from_environ(os.environ, os.getpid())


def inherited() -> Inherited:
    """The sockets passed to this process (read once, before Twisted consumes them)."""
    if _AT_IMPORT.descriptors:
        return _AT_IMPORT
    try:  # twisted.internet.endpoints was imported before twistedgw and read them
        from twisted.internet.endpoints import _SystemdParser

        daemon = _SystemdParser._sddaemon
        descriptors = tuple(daemon.inheritedDescriptors())
        by_fd = {fd: name for name, fd in daemon.inheritedNamedDescriptors().items()}
    except Exception:
        return Inherited()
    return Inherited(descriptors, tuple(by_fd.get(fd, UNKNOWN) for fd in descriptors))


def parse(description: str) -> tuple[str, int | None, str | None]:
    """``systemd:domain=INET:index=0`` (or ``name=NAME``) -> (domain, index, name)."""
    prefix, _, rest = description.partition(":")
    if prefix != "systemd":
        raise ValueError("not a systemd: endpoint")
    values: dict[str, str] = {}
    for part in rest.split(":") if rest else ():
        key, sep, value = part.partition("=")
        if not sep or key not in ("domain", "index", "name") or key in values:
            raise ValueError(f"expected domain=, index= or name= (once each), got {part!r}")
        values[key] = value
    domain = values.get("domain")
    if domain is None or not isinstance(getattr(socket, f"AF_{domain}", None), int):
        raise ValueError("domain= must name an address family, such as INET or INET6")
    if ("index" in values) == ("name" in values):
        raise ValueError("give exactly one of index= or name=")
    index: int | None = None
    if "index" in values:
        if not values["index"].isdigit():
            raise ValueError(f"index= must be a number, got {values['index']!r}")
        index = int(values["index"])
    return domain, index, values.get("name")


def endpoint(reactor: Any, description: str) -> Any:
    """An endpoint adopting the socket ``description`` names; ValueError says what is wrong."""
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    family, fd = descriptor(description)
    return AdoptedStreamServerEndpoint(reactor, fd, family)


def descriptor(description: str) -> tuple[int, int]:
    """(address family, file descriptor) of the socket ``description`` names; ValueError
    says what is wrong."""
    domain, index, name = parse(description)
    passed = inherited()
    if index is not None:
        if index >= len(passed.descriptors):
            raise ValueError(f"systemd passed no such socket (passed: {passed.describe()})")
        fd = passed.descriptors[index]
    else:
        matches = [fd for fd, n in zip(passed.descriptors, passed.names, strict=True) if n == name]
        if not matches:
            raise ValueError(
                f"systemd passed no such socket (passed: {passed.describe()}; "
                "name= needs FileDescriptorName= or systemd-socket-activate --fdname)"
            )
        fd = matches[0]
    family: int = getattr(socket, f"AF_{domain}")
    return family, fd
