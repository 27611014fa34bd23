"""A milter that answers with scripted raw packets and records what it was sent.

It exists to put real Postfix and milterkit's client in front of the *same*
filter behaviour, including behaviour milterkit's own filter side refuses to
produce (unoffered protocol bits, REPLBODY interleaved with other requests,
SHUTDOWN). Each command is answered by ``script[letter]``: a list of frames
(``b""`` entries ignored), or a callable ``(payload) -> frames``; commands
without an entry get CONTINUE, except those in :data:`UNANSWERED`. The OPTNEG
reply is built from ``version`` (at most the offered one), ``actions``,
``protocol`` and ``macros``.

Every packet received is kept as ``(letter, payload)`` per connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

Frames = Sequence[bytes]
Answer = Frames | Callable[[bytes], Frames]

#: Commands that never get a reply (MACRO, ABORT, QUIT, QUIT_NC).
UNANSWERED = frozenset("DAQK")


def frame(letter: str, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", len(payload) + 1, ord(letter)) + payload


def reply_code(text: str) -> bytes:
    return frame("y", text.encode() + b"\0")


def add_header(name: str, value: str) -> bytes:
    return frame("h", name.encode() + b"\0" + value.encode() + b"\0")


def change_header(name: str, index: int, value: str) -> bytes:
    return frame("m", struct.pack(">I", index) + name.encode() + b"\0" + value.encode() + b"\0")


def insert_header(name: str, index: int, value: str) -> bytes:
    return frame("i", struct.pack(">I", index) + name.encode() + b"\0" + value.encode() + b"\0")


def del_rcpt(address: str) -> bytes:
    return frame("-", address.encode() + b"\0")


def repl_body(chunk: bytes) -> bytes:
    return frame("b", chunk)


CONTINUE = frame("c")


@dataclass
class RawFilter:
    """Serve the script on 127.0.0.1 from a background thread (context manager)."""

    script: Mapping[str, Answer] = field(default_factory=dict)
    version: int = 6
    actions: int = 0x1FF
    protocol: int = 0
    macros: Mapping[int, str] = field(default_factory=dict)
    connections: list[list[tuple[str, bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()
        self._ended: list[threading.Event] = []  # one per connection, set when the peer closed

    @property
    def postfix_spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def milterkit_spec(self) -> str:
        return f"inet:{self.port}@127.0.0.1"

    def __enter__(self) -> RawFilter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux: the
        # thread would outlive the test, and later tests that fork pytest (which
        # must be single-threaded then, tests/forking.py) would fail.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(10)

    def seen(self) -> list[list[tuple[str, bytes]]]:
        with self._lock:
            return [list(c) for c in self.connections]

    def reset(self) -> None:
        with self._lock:
            self.connections.clear()
            self._ended.clear()

    def wait_ended(self, timeout: float = 10) -> None:
        """Wait until the peer has closed the latest connection, so seen() has all it sent.

        A client returns once it has written its last packets (ABORT, QUIT); the
        thread recording them may not have read them yet.
        """
        with self._lock:
            ended = self._ended[-1] if self._ended else None
        if ended is not None and not ended.wait(timeout):
            raise AssertionError(f"the peer kept the raw filter's connection open {timeout}s")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        record: list[tuple[str, bytes]] = []
        ended = threading.Event()
        with self._lock:
            self.connections.append(record)
            self._ended.append(ended)
        try:
            with conn, contextlib.suppress(OSError):
                for letter, payload in _packets(conn):
                    with self._lock:
                        record.append((letter, payload))
                    out = self._answer(letter, payload)
                    if out:
                        conn.sendall(out)
        finally:
            ended.set()

    def _answer(self, letter: str, payload: bytes) -> bytes:
        if letter == "O":
            version = min(self.version, struct.unpack(">I", payload[:4])[0])
            body = struct.pack(">III", version, self.actions, self.protocol)
            for stage, names in sorted(self.macros.items()):
                body += struct.pack(">I", stage) + names.encode() + b"\0"
            return frame("O", body)
        answer = self.script.get(letter)
        if answer is None:
            return b"" if letter in UNANSWERED else CONTINUE
        frames = answer(payload) if callable(answer) else answer
        return b"".join(frames)


def _packets(conn: socket.socket) -> Iterator[tuple[str, bytes]]:
    buffer = b""
    while True:
        while len(buffer) < 4 or len(buffer) < 4 + struct.unpack(">I", buffer[:4])[0]:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
        size = struct.unpack(">I", buffer[:4])[0]
        packet, buffer = buffer[4 : 4 + size], buffer[4 + size :]
        yield chr(packet[0]), packet[1:]


def commands(record: list[tuple[str, bytes]]) -> list[str]:
    """The command letters of one connection, MACRO packets as ``D<stage>``."""
    return [f"D{chr(p[0])}" if letter == "D" and p else letter for letter, p in record]
