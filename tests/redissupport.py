"""A real redis-server for the [cluster] tests, a tiny RESP client, and a delaying proxy."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import free_port, wait_port
from tests.lbsupport import require


@dataclass
class RedisProcess:
    """``redis-server`` on loopback, no persistence (a restart comes back empty)."""

    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()  # more redis-server options (TLS, unix socket)
    tls_port: int | None = None  # then ``port`` is plain and on loopback too

    def start(self) -> RedisProcess:
        binary = require("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), *self.extra]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, log=log)
        if self.tls_port is not None:
            wait_port(self.tls_port, self.proc, log=log)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def command(self, *args: Any) -> Any:
        return command(self.port, *args)


def start_redis(directory: Path, *extra: str, tls_port: int | None = None) -> RedisProcess:
    return RedisProcess(directory, free_port(), extra=extra, tls_port=tls_port).start()


def command(port: int, *args: Any) -> Any:
    """One Redis command over a fresh connection; errors come back as ``RuntimeError``."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    wire = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(wire)
        reader = s.makefile("rb")
        return _reply(reader)


def _reply(reader: Any) -> Any:
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else reader.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_reply(reader) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


class DelayingProxy:
    """TCP proxy to Redis that holds every answer back ``delay`` seconds (settable)."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delayed and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._server.close()
