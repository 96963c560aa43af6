"""Where the gateway's CPU goes, by part: py-spy's stacks sorted into issue 27's split.

``python3 bench/split.py STACKS.folded [--us-per-request N]`` (``bench/profile.py``
prints the same after a profile, with the µs of proxy CPU per request it measured).

Each sample is given to one part, by the frame nearest the leaf that belongs to a part
(frames of the interpreter and the standard library belong to none: a regex search
or ``time.time()`` counts for whoever called it):

* ``kernel``: the socket and epoll system calls (``send``, ``recv``, ``epoll_ctl``,
  ``epoll_wait``; without ``--native``, the Python frames that make them);
* ``gc``: the cyclic garbage collector (``gc_collect_main``: ``--native`` only);
* ``tls``: pyOpenSSL, cffi, ``cryptography``, OpenSSL, Twisted's TLS protocol;
* ``reactor``: the rest of Twisted (reactor, transports, log context, Deferreds);
* ``front``: the HTTP/1.1 front and the request grammar (``http/_front.py``,
  ``_guard.py``, ``wire`` but the response parser, ``_hosts.py``);
* ``request path``: resource, routing, caller, pipeline, identity, metrics and the
  access log (``http/_resource.py``, ``_routing.py``, ``_callers.py``, ``pipeline/``,
  ``identity/``, ``app/``, ``tls/`` (the verdict read per request), prometheus_client);
* ``upstream``: the forwarder and the backend client (``upstream/``,
  ``wire/_response.py``).

The gateway's own CPU is front + request path + upstream + gc (issue 27 counts the
collector with the gateway's: its work is the gateway's container objects).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

PARTS = ("kernel", "gc", "tls", "reactor", "front", "request path", "upstream", "other")
OWN = ("front", "request path", "upstream", "gc")

_SYSCALLS = frozenset({
    "send", "recv", "epoll_ctl", "epoll_wait", "connect", "getsockopt", "setsockopt",
    "close", "accept4", "accept", "shutdown", "__send", "__recv", "writev", "sendmsg",
    "recvmsg", "read", "write",
})
# Without --native, the Python frames (function, file, line) that are a system call.
_SYSCALL_LINES = (
    ("untilConcludes", "twisted/python/util.py"),
    ("EPollReactor._add", "twisted/internet/epollreactor.py"),
    ("EPollReactor._remove", "twisted/internet/epollreactor.py"),
)

_FRONT = ("twistedgw/http/_front.py", "twistedgw/http/_guard.py", "twistedgw/wire/",
          "twistedgw/_hosts.py")
_UPSTREAM = ("twistedgw/upstream/", "twistedgw/wire/_response.py")
_REQUEST = ("twistedgw/http/", "twistedgw/pipeline/", "twistedgw/identity/",
            "twistedgw/app/", "twistedgw/tls/", "twistedgw/_headers.py",
            "twistedgw/errors.py", "prometheus_client/")
_TLS = ("OpenSSL/", "cryptography/", "twisted/protocols/tls.py", "twistedgw/_twisted.py",
        "_cffi_backend", "libssl", "libcrypto", "service_identity/")
_REACTOR = ("twisted/", "zope/", "twistedgw/_reactor.py")


def part_of(frame: str) -> str | None:
    """The part one frame (``name (file:line)`` as py-spy writes it) belongs to."""
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    path = where.split(":", 1)[0]
    if name in _SYSCALLS and path.startswith("libc"):
        return "kernel"
    if name == "gc_collect_main" or name.startswith("gc_collect"):
        return "gc"
    for func, file in _SYSCALL_LINES:
        if name == func and path.endswith(file):
            return "kernel"
    if name == "Connection.doRead" and path.endswith("twisted/internet/tcp.py") and (
        where.endswith(":278")  # the recv() line, without --native
    ):
        return "kernel"
    for prefix in _UPSTREAM:
        if prefix in path:
            return "upstream"
    for prefix in _FRONT:
        if prefix in path:
            return "front"
    for prefix in _REQUEST:
        if prefix in path:
            return "request path"
    for prefix in _TLS:
        if prefix in path:
            return "tls"
    for prefix in _REACTOR:
        if prefix in path:
            return "reactor"
    return None


def split(folded: Path) -> tuple[dict[str, float], int]:
    """Each part's share of the samples, and the number of samples."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        part = "other"
        for frame in reversed(stack.split(";")):
            found = part_of(frame)
            if found is not None:
                part = found
                break
        counts[part] += n
    return {p: counts[p] / total if total else 0.0 for p in PARTS}, total


def report(shares: dict[str, float], samples: int, us_per_request: float | None) -> str:
    lines = [f"{samples} samples" + (
        f"; {us_per_request:.0f} µs of proxy CPU per request" if us_per_request else "")]
    for p in PARTS:
        us = f"{shares[p] * us_per_request:6.1f} µs" if us_per_request else ""
        lines.append(f"  {p:>13}: {100 * shares[p]:5.1f}%  {us}")
    own = sum(shares[p] for p in OWN)
    us = f"{own * us_per_request:6.1f} µs" if us_per_request else ""
    lines.append(f"  {'gateway own':>13}: {100 * own:5.1f}%  {us}  (front + request path + "
                 "upstream + gc)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folded", type=Path)
    p.add_argument("--us-per-request", type=float)
    args = p.parse_args()
    shares, samples = split(args.folded)
    print(report(shares, samples, args.us_per_request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
