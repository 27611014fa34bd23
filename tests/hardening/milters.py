"""Milters served by the hardening daemons (loaded as ``tests/hardening/milters.py:Name``).

Each one overrides every decision callback, so the MTA sends every command and
the hostile clients can reach every state. Their behaviour varies by a
per-process message counter, which gives the soak its mix of decisions.
"""

from __future__ import annotations

import asyncio
import os
import weakref

from milterkit import Milter
from milterkit.milter import Accept, Continue, Discard, Reject, ReplyCode, TempFail
from milterkit.protocol.constants import Action

#: Messages finished in this process (end_of_message calls).
COUNT = [0]


class Hardened(Milter):
    """Logs peer values (CR/LF, % must come out escaped), collects the body, stamps the worker."""

    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS | Action.QUARANTINE
    collect_body = True
    body_memory_limit = 256 * 1024
    max_body_bytes = 4 * 1024 * 1024

    def connect(self, hostname: str, family: object, address: str | None, port: int | None) -> None:
        return None

    def helo(self, name: str) -> None:
        self.log.info("HELO from %s", name)

    def mail_from(self, sender: str, params: list[str]) -> None:
        self.log.info("MAIL FROM %s", sender)

    def rcpt_to(self, recipient: str, params: list[str]) -> None:
        return None

    def header(self, name: str, value: str) -> None:
        return None

    def end_of_headers(self) -> None:
        return None

    def body(self, chunk: bytes) -> None:
        return None

    def end_of_message(self) -> object:
        COUNT[0] += 1
        self.add_header("X-Worker", str(os.getpid()))
        if self.collect_body:  # body_size without collect_body raises BodyNotCollectedError
            self.add_header("X-Body-Size", str(self.body_size))
        return Accept()


class Mixed(Hardened):
    """Soak milter: a decision mix chosen by the message count; some async, some raising."""

    collect_body = False

    async def end_of_message(self) -> object:  # type: ignore[override]
        n = COUNT[0] = COUNT[0] + 1
        kind = n % 10
        if kind == 0:
            return Reject()
        if kind == 1:
            return TempFail()
        if kind == 2:
            return Discard()
        if kind == 3:
            return ReplyCode(550, "no thanks", "5.7.1")
        if kind == 4:
            self.quarantine("soak")
            return Continue()
        if kind == 5:
            await asyncio.sleep(0)
            self.change_header("Subject", "changed")
            return Accept()
        if kind == 6:
            raise RuntimeError("soak: a callback that raises")
        self.add_header("X-Soak", str(n))
        return Accept()


class SlowEom(Hardened):
    """End of message takes a while, so SIGTERM finds messages in flight."""

    collect_body = False

    async def end_of_message(self) -> object:  # type: ignore[override]
        await asyncio.sleep(0.3)
        self.add_header("X-Worker", str(os.getpid()))
        return Accept()


class Faulty(Hardened):
    """MAIL FROM <raise@...> raises, <hang@...> hangs past the callback timeout."""

    collect_body = False

    async def mail_from(self, sender: str, params: list[str]) -> object:  # type: ignore[override]
        if sender.startswith("<raise@"):
            raise ValueError("this callback raises on purpose")
        if sender.startswith("<hang@"):
            await asyncio.sleep(3600)
        return Continue()


class Counted(Hardened):
    """Counts live instances and records the order of abort/close per instance."""

    collect_body = True
    live: weakref.WeakSet[Counted] = weakref.WeakSet()
    created = [0]
    events: list[tuple[int, str]] = []

    def __init__(self) -> None:
        super().__init__()
        Counted.created[0] += 1
        self.serial = Counted.created[0]
        Counted.live.add(self)

    def abort(self) -> None:
        Counted.events.append((self.serial, "abort"))

    def close(self) -> None:
        Counted.events.append((self.serial, "close"))
