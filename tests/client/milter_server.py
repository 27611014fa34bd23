"""A tiny scripted milter for the client tests: asyncio + FilterConnection.

It runs in a background thread with its own loop, so blocking clients in the
test thread can talk to it. Each command is answered by the script: a list of
reply messages, or one of the misbehaviours ``SILENT`` (never answer),
``CLOSE`` (drop the connection) and ``GARBAGE`` (send bytes that are no
milter packet). Everything the MTA side sent is kept per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from milterkit.protocol import (
    ALL_ACTIONS,
    NEED_DATA,
    Action,
    Command,
    ConnectionClosed,
    Continue,
    FilterConnection,
    FrameDecoder,
    Message,
    OptNeg,
    ProtocolFlag,
    Quit,
    decode_command,
)

SILENT = "silent"
CLOSE = "close"
GARBAGE = "garbage"

Responder = Callable[[Message, FilterConnection], Any]


@dataclass
class Script:
    """How the filter negotiates and answers; ``replies`` is keyed by Command."""

    version: int = 6
    actions: Action = ALL_ACTIONS
    protocol: ProtocolFlag = ProtocolFlag.SKIP
    macros: dict[int, str] | None = None
    replies: dict[Command, Responder | list[Message] | str] = field(default_factory=dict)

    def answer(self, command: Message, conn: FilterConnection) -> list[Message] | str:
        reply = self.replies.get(Command(command.code))
        if callable(reply):
            reply = reply(command, conn)
        if reply is None:
            return [Continue()]
        if isinstance(reply, Message):
            return [reply]
        return reply


@dataclass
class ConnLog:
    raw: bytearray = field(default_factory=bytearray)
    events: list[Message] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def packets(self) -> list[Message]:
        """Every packet the MTA side sent, MACRO packets included (after it closed).

        Waiting matters: QUIT and ABORT get no reply, so the client may be done
        before this server thread has read them.
        """
        assert self.closed.wait(5), "the client did not close the connection"
        decoder = FrameDecoder(1 << 30)
        decoder.feed(bytes(self.raw))
        out = []
        while (frame := decoder.next_frame()) is not None:
            out.append(decode_command(*frame))
        return out


class MilterServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.logs: list[ConnLog] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def listen_unix(self, path: str) -> str:
        self._server = self._run(asyncio.start_unix_server(self._handle, path))
        return f"unix:{path}"

    def listen_inet(self, host: str = "127.0.0.1") -> str:
        self._server = self._run(asyncio.start_server(self._handle, host, 0))
        port = self._server.sockets[0].getsockname()[1]
        return f"inet6:{port}@{host}" if ":" in host else f"inet:{port}@{host}"

    def stop(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:
                writer.close()

        self._run(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        log = ConnLog()
        self.logs.append(log)
        conn = FilterConnection()
        try:
            with contextlib.suppress(ConnectionError):
                while (data := await reader.read(65536)) and await self._feed(
                    conn, log, data, writer
                ):
                    pass
            writer.close()
        finally:
            log.closed.set()

    async def _feed(
        self, conn: FilterConnection, log: ConnLog, data: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Handle the commands in ``data``; False to end the connection."""
        log.raw += data
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                return event is NEED_DATA
            assert isinstance(event, Message)
            log.events.append(event)
            if isinstance(event, OptNeg):
                writer.write(self._negotiate(conn))
                continue
            if isinstance(event, Quit):
                return False
            if conn.awaiting is None:
                continue
            answer = self.script.answer(event, conn)
            if answer == CLOSE:
                return False
            if answer == GARBAGE:
                writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            elif answer != SILENT:
                assert isinstance(answer, list)
                writer.write(conn.send_all(answer))
            await writer.drain()

    def _negotiate(self, conn: FilterConnection) -> bytes:
        s = self.script
        return conn.negotiate(
            version=s.version, actions=s.actions, protocol=s.protocol, macros=s.macros
        )


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
