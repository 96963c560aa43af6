"""Unix-socket listeners: who may connect is what the socket file's permissions say.

With ``[mutual_ssl] trusted_proxies = ["unix"]`` a connection on a Unix-socket
listener is NGINX's, and the certificate header it sends is believed: the socket
file's permissions are the trust boundary. Issue 22 found that boundary open:
Twisted's Unix ports make the socket file world-writable (``chmod 0666``) when
they start listening, adopted sockets included (so a systemd ``SocketMode=0660``
socket became ``0666`` too), and any local account could connect and claim to
be any partner. So:

- a socket twistedgw creates (``endpoint = "unix:PATH"``) is bound under a
  ``0177`` umask, given the ``[[listeners]] group`` and then mode ``0660``
  (``create``), and never widened;
- ``UnixPort`` listens on a socket (created here, or inherited from systemd or
  the parent process) leaving its file's mode alone, and removes the file on
  stop only when it made it;
- at start, a socket whose peers are trusted is checked (``exposure``): no write
  permission for other users, a directory no other user may write to;
- ``peer_uid`` reads the connecting process's user (``SO_PEERCRED``) for
  ``trusted_proxies = ["unix:uid=NAME"]``.

Below every layer (like ``_sdlisten``): the config reads endpoints with
``parse``, the service listens with ``create``/``adopt``, the HTTP layer asks
``peer_uid``.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp, unix
from twisted.python.lockfile import FilesystemLock

from twistedgw._reactor import GatewayUnixServer

#: The mode of a socket twistedgw creates: its owner and its group may connect.
DEFAULT_MODE = 0o660
_OPTIONS = ("address", "mode", "backlog", "lockfile")


@dataclass(frozen=True)
class UnixEndpoint:
    """A ``unix:`` server endpoint string (Twisted's syntax), as twistedgw serves it."""

    address: str
    backlog: int = 50
    mode: int = DEFAULT_MODE
    lockfile: bool = False

    @property
    def abstract(self) -> bool:
        """Linux's abstract namespace (``@name``, or a leading NUL): no file, so no
        permissions: any local process may connect."""
        return self.address.startswith(("@", "\0"))


def _split(text: str) -> list[tuple[str | None, str]]:
    """Twisted's endpoint-string parts: ``:`` separates, ``=`` names, ``\\`` escapes."""
    parts: list[tuple[str | None, str]] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(text)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append((key, "".join(current)))
            key, current = None, []
        elif c == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(c)
    parts.append((key, "".join(current)))
    return parts


def parse(description: str) -> UnixEndpoint:
    """``unix:PATH[:mode=660][:backlog=50][:lockfile=0]`` -> ``UnixEndpoint``.

    ValueError says what is wrong. ``mode`` (octal) may only narrow ``0660``:
    other users never get to connect.
    """
    prefix, _, rest = description.partition(":")
    if prefix != "unix":
        raise ValueError("not a unix: endpoint")
    values: dict[str, str] = {}
    for i, (key, value) in enumerate(_split(rest)):
        name = "address" if key is None and i == 0 else key
        if name not in _OPTIONS:
            raise ValueError(
                f"unknown part {value if key is None else key!r} (expected the socket's path, "
                "then mode=, backlog= or lockfile=)"
            )
        if name in values:
            raise ValueError(f"{name} is given twice")
        values[name] = value
    address = values.get("address", "")
    if not address:
        raise ValueError("no socket path (unix:/run/twistedgw/authz.sock)")
    try:
        mode = int(values.get("mode", "660"), 8)
        backlog = int(values.get("backlog", "50"))
        lockfile = bool(int(values.get("lockfile", "0")))
    except ValueError:
        raise ValueError(
            "mode= must be octal (660), backlog= a number, lockfile= 0 or 1"
        ) from None
    if mode & ~DEFAULT_MODE:
        raise ValueError(
            f"mode={mode:o} lets users other than the socket's owner and group connect; "
            "twistedgw creates Unix sockets with mode 660 (or narrower) and the "
            "[[listeners]] group"
        )
    if backlog < 1:
        raise ValueError("backlog= must be at least 1")
    return UnixEndpoint(address, backlog, mode, lockfile)


def group_id(group: str) -> int:
    """A group's id, by name or number; KeyError if there is no such group."""
    if group.isdigit():
        return int(group)
    return grp.getgrnam(group).gr_gid


def user_id(user: str) -> int:
    """A user's id, by name or number; KeyError if there is no such user."""
    if user.isdigit():
        return int(user)
    return pwd.getpwnam(user).pw_uid


def directory_exposure(path: str) -> str | None:
    """Why another user could replace the socket at ``path``, or None.

    Its directory must not be world-writable, sticky or not (``/tmp`` is refused:
    a socket there can be removed and its name taken before the gateway binds it,
    or after a restart); a directory above it must not be world-writable without
    the sticky bit (anyone could rename the whole branch).
    """
    directory = os.path.dirname(os.path.abspath(path))
    first = True
    while True:
        try:
            mode = os.stat(directory).st_mode
        except OSError as e:
            return f"cannot read its directory {directory}: {e.strerror}"
        if mode & stat.S_IWOTH and (first or not mode & stat.S_ISVTX):
            return (
                f"{'its directory' if first else 'a directory above it,'} {directory} is "
                f"world-writable (mode {stat.S_IMODE(mode):04o}): any local user could "
                "replace the socket; put it in a directory only the gateway's user (or root) "
                "may write, such as /run/twistedgw"
            )
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory, first = parent, False


def exposure(address: bytes | str, gid: int | None = None) -> str | None:
    """Why a listening socket at ``address`` lets other local users connect (or would
    let them take its place), or None when only its owner and group can.

    ``gid``: the group the socket must have (``[[listeners]] group``), if any.
    """
    path = os.fsdecode(address)
    if not path or path.startswith(("\0", "@")):
        return (
            "it is an abstract (or unnamed) Unix socket, which has no file permissions: "
            "any local user could connect"
        )
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return "it is not a socket"
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        return (
            f"other users may connect to it (mode {mode:04o}); give it mode 0660 and NGINX's "
            "group (systemd: SocketMode=0660 and SocketGroup=)"
        )
    if gid is not None and st.st_gid != gid:
        return f"its group is {_group_name(st.st_gid)}, not the listener's {_group_name(gid)}"
    return directory_exposure(path)


def _group_name(gid: int) -> str:
    try:
        return repr(grp.getgrgid(gid).gr_name)
    except KeyError:
        return str(gid)


def create(endpoint: UnixEndpoint, gid: int | None) -> tuple[socket.socket, Any]:
    """Bind and listen on ``endpoint``'s path: mode ``endpoint.mode`` (0660) and group
    ``gid`` from the first moment anyone could connect. Returns the socket and the
    lock held for ``lockfile=1`` (None otherwise); OSError/ValueError say why not.

    The socket is bound under a ``0177`` umask (only its owner could connect), given
    its group, then its mode, and only then listens.
    """
    path = endpoint.address
    if endpoint.abstract:  # Linux's abstract namespace: no file to protect or lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + path[1:])
            sock.listen(endpoint.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock, None
    problem = directory_exposure(path)
    if problem is not None:
        raise ValueError(problem)
    lock = None
    if endpoint.lockfile:  # as Twisted's lockfile=1: a stale socket of a dead process goes
        lock = FilesystemLock(path + ".lock")
        if not lock.lock():
            raise ValueError(f"cannot acquire the lock {path}.lock: another process holds it")
        if not lock.clean:
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.remove(path)
            except OSError:
                pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        try:
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, endpoint.mode)
            sock.listen(endpoint.backlog)
        except BaseException:
            os.unlink(path)
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if lock is not None:
            lock.unlock()
        raise
    return sock, lock


class UnixPort(unix.Port):  # type: ignore[misc]
    """Twisted's Unix port, but leaving the socket file's mode as it is, and leaving
    the file itself behind unless ``owns_file`` (the one who made it removes it: this
    process for ``create``, systemd or the parent otherwise). The private Twisted
    names it relies on are listed in ``_twisted.USED``. Its connections are
    ``GatewayUnixServer``s (``_reactor``: send-first writes, plain reads)."""

    owns_file = False
    transport = GatewayUnixServer

    def startListening(self) -> None:
        # unix.Port chmods the file to self.mode (0666 unless told otherwise), adopted
        # sockets included: make that its own mode, a no-op.
        path = self._bindPath
        if path[:1] not in (b"\0", "\0"):
            self.mode = stat.S_IMODE(os.stat(path).st_mode)
        super().startListening()

    def connectionLost(self, reason: Any) -> None:
        if self.owns_file:
            super().connectionLost(reason)
            return
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)


def adopt(reactor: Any, fd: int, factory: Any, *, owns_file: bool, lock: Any = None) -> Any:
    """Listen (as ``reactor.adoptStreamPort`` does) on the listening Unix socket ``fd``
    with a ``UnixPort``; the descriptor is duplicated, the caller keeps ``fd``."""
    port = UnixPort._fromListeningDescriptor(reactor, fd, factory)
    port.owns_file = owns_file
    port.lockFile = lock
    port.startListening()
    return port


_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(transport: Any) -> int | None:
    """The user id of the process at the other end of a Unix-socket connection
    (``SO_PEERCRED``, as it was when it connected), or None if not one."""
    for _ in range(4):  # a TLS transport wraps the socket's
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            if sock.family != socket.AF_UNIX:
                return None
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
            except OSError:
                return None
            return int(_CREDENTIALS.unpack(raw)[1])
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
