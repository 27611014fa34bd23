"""A small blocking MTA over real sockets, built on the sans-I/O MTAConnection.

The server tests drive milters with it; it knows nothing about milterkit's
server, so what it checks is the bytes on the wire. A few self-tests at the
bottom keep it honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from milterkit.protocol import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    Body,
    Connect,
    EndOfHeaders,
    EndOfMessage,
    Family,
    Header,
    Helo,
    Mail,
    Message,
    MTAConnection,
    OptNeg,
    Quit,
    Rcpt,
)
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.protocol.events import ConnectionClosed, NeedData
from milterkit.runtime.server import Server, new_event_loop

#: Offers of real MTAs (PROTOCOL.md 4.1): Postfix/Sendmail v6, Postfix v4 and v2.
OFFER_V6 = OptNeg(6, ALL_ACTIONS, ALL_PROTOCOL)
OFFER_V4 = OptNeg(4, ALL_ACTIONS, ProtocolFlag(0x37F))
OFFER_V2 = OptNeg(2, ALL_ACTIONS, ProtocolFlag(0x7F))


class ConnectionClosedError(Exception):
    """The filter closed the connection while we waited for a reply."""


class RawMTA:
    """One MTA-side connection: send commands, read the filter's replies."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.conn = MTAConnection()
        self.closed = False

    @classmethod
    def connect(cls, address: Any, timeout: float = 5.0) -> RawMTA:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        if isinstance(address, tuple) and ":" in address[0]:
            family = socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return cls(sock, timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawMTA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- sending

    def send(self, message: Message) -> bool:
        """Send one command; True if it went on the wire (not disabled by NO* bits)."""
        data = self.conn.send(message)
        if data:
            self.sock.sendall(data)
        return bool(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, timeout: float | None = None) -> list[Message]:
        """Everything up to and including the final reply to the pending command."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        out: list[Message] = []
        while self.conn.awaiting is not None:
            event = self.conn.next_event()
            if isinstance(event, NeedData):
                self._receive()
                continue
            if isinstance(event, ConnectionClosed):
                raise ConnectionClosedError("filter closed the connection")
            out.append(event)
        return out

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            self.conn.receive_data(b"")
            raise ConnectionClosedError(f"filter closed while {self.conn.awaiting} pending")
        self.conn.receive_data(data)

    def command(self, message: Message) -> list[Message]:
        """Send and read the replies (empty when no reply is due)."""
        self.send(message)
        return self.replies() if self.conn.awaiting is not None else []

    def negotiate(self, offer: OptNeg = OFFER_V6) -> OptNeg:
        reply = self.command(offer)
        assert isinstance(reply[0], OptNeg)
        return reply[0]

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the filter closes the connection within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    # ------------------------------------------------------------- sessions

    def hello(
        self, offer: OptNeg = OFFER_V6, helo: str = "client.example"
    ) -> tuple[OptNeg, list[Message]]:
        """OPTNEG, CONNECT from 192.0.2.1, HELO; returns the OPTNEG reply and the last replies."""
        reply = self.negotiate(offer)
        last = self.command(Connect(b"client.example", Family.INET, 4567, b"192.0.2.1"))
        last += self.command(Helo(helo.encode()))
        return reply, last

    def message(
        self,
        sender: str = "<alice@example.org>",
        recipients: tuple[str, ...] = ("<bob@example.net>",),
        headers: tuple[tuple[str, str], ...] = (("Subject", "hi"), ("From", "alice")),
        body: bytes = b"Hello\r\n",
    ) -> list[Message]:
        """One message; returns the replies to the last command sent (normally EOM)."""
        steps: list[Message] = [Mail(sender.encode())]
        steps += [Rcpt(r.encode()) for r in recipients]
        steps += [Header(n.encode(), v.encode()) for n, v in headers]
        steps.append(EndOfHeaders())
        steps += self.conn.body_chunks(body)
        for step in steps:
            replies = self.command(step)
            if replies and _is_final_stop(replies[-1]):
                return replies
        return self.command(EndOfMessage())

    def quit(self) -> None:
        self.send(Quit())


def _is_final_stop(reply: Message) -> bool:
    """A reply that ends the message before EOM (anything but continue)."""
    return reply.code != ord("c")


def kinds(replies: list[Message]) -> list[str]:
    """Reply class names, for compact assertions."""
    return [type(r).__name__ for r in replies]


class ServerThread:
    """A Server on its own event loop in a background thread."""

    def __init__(self, server: Server, *, use_uvloop: bool = False) -> None:
        self.server = server
        self.loop = new_event_loop(use_uvloop)
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._start)
        self.loop.run_until_complete(self._serve())

    def _start(self) -> None:
        self.server.start()
        self.started.set()

    async def _serve(self) -> None:
        await asyncio.sleep(0)
        await self.server.serve_forever()

    def call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the server's loop and return its result."""
        done = threading.Event()
        result: list[Any] = []
        self.loop.call_soon_threadsafe(lambda: (result.append(func()), done.set()))
        assert done.wait(5), "server loop did not answer"
        return result[0]

    def drain(self, timeout: float) -> None:
        asyncio.run_coroutine_threadsafe(self.server.drain(timeout), self.loop).result(timeout + 10)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
            self.thread.join(10)
        if not self.loop.is_closed() and not self.thread.is_alive():
            self.loop.close()


@contextlib.contextmanager
def serving(server: Server, *, use_uvloop: bool = False) -> Iterator[ServerThread]:
    runner = ServerThread(server, use_uvloop=use_uvloop)
    runner.thread.start()
    assert runner.started.wait(5)
    try:
        yield runner
    finally:
        runner.stop()
        for sock in server.listeners:
            sock.close()


def inet_listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------ self-tests


def test_offers_are_what_real_mtas_send() -> None:
    assert OFFER_V6.actions == Action(0x1FF)
    assert int(OFFER_V4.protocol) == 0x37F
    assert int(OFFER_V2.protocol) == 0x7F


def test_body_chunks_split_at_64k() -> None:
    mta = RawMTA(socket.socket())
    try:
        mta.conn.negotiated = None
        chunks = mta.conn.body_chunks(b"x" * 70000)
        assert [len(c.chunk) for c in chunks if isinstance(c, Body)] == [65535, 4465]
    finally:
        mta.close()
