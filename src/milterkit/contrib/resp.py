"""A minimal Redis client (RESP2 over TCP or a unix socket) with the standard library.

Enough for the greylist store: send one command, read one reply. No
pipelining, pub/sub or cluster. One connection, (re)opened on demand and
guarded by a lock, so one client may serve every session of a worker.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass

RespValue = bytes | int | str | list["RespValue"] | None


class RedisError(Exception):
    """The server answered an error reply (``-ERR ...``), or the exchange failed."""


@dataclass(frozen=True)
class RedisAddress:
    """Where the server is: ``redis://[:password@]host[:port][/db]`` or ``redis+unix:///path?db=N``."""

    host: str | None
    port: int
    path: str | None
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        password = urllib.parse.unquote(parts.password) if parts.password else None
        try:
            if parts.scheme == "redis":
                if not parts.hostname:
                    raise ValueError("no host")
                db = int(parts.path.strip("/") or 0)
                return cls(parts.hostname, parts.port or 6379, None, db, password)
            if parts.scheme == "redis+unix":
                if not parts.path:
                    raise ValueError("no socket path")
                db = int(query.get("db", ["0"])[0])
                return cls(None, 0, parts.path, db, password)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
        raise ValueError(
            f"bad Redis URL {url!r}: use redis://host:port/db or redis+unix:///path?db=N"
        )

    def __str__(self) -> str:
        where = self.path if self.path else f"{self.host}:{self.port}"
        return f"redis {where} db {self.db}"


class RedisClient:
    """Send commands, get decoded replies; reconnects after a failure or a fork."""

    def __init__(self, address: RedisAddress, timeout: float = 2.0) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._pid = 0
        self._lock = threading.Lock()

    def command(self, *args: str | bytes | int | float) -> RespValue:
        """Run one command; RedisError on an error reply, OSError when unreachable."""
        with self._lock:
            try:
                self._connect()
                return self._exchange(args)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is not None:
            sock.close()

    # ---------------------------------------------------------------- wiring

    def _connect(self) -> None:
        if self._sock is not None and self._pid == os.getpid():
            return
        self._sock = None  # a socket inherited across fork is the parent's
        a = self.address
        if a.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = a.path
        else:
            assert a.host is not None
            info = socket.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            target = info[4][:2]  # type: ignore[assignment]
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self._sock, self._pid, self._buffer = sock, os.getpid(), b""
        if a.password:
            self._exchange(("AUTH", a.password))
        if a.db:
            self._exchange(("SELECT", a.db))

    def _exchange(self, args: tuple[str | bytes | int | float, ...]) -> RespValue:
        assert self._sock is not None
        self._sock.sendall(encode(args))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._more()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _exact(self, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            self._more()
        data, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
        return data

    def _more(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise RedisError(f"{self.address} closed the connection")
        self._buffer += data

    def _reply(self) -> RespValue:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(f"{self.address}: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RedisError(f"{self.address}: unexpected reply {line[:60]!r}")


def encode(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
