"""Blocking wrapper around :class:`AsyncMilterClient` for scripts and plain tests.

It owns a private event loop and runs each call to completion on it in the
calling thread, so it works where no loop is running (a plain pytest test, a
REPL). It must not be used from inside a running event loop: use the async
client there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from milterkit.client.aio import AsyncMilterClient
from milterkit.protocol.negotiate import Negotiated
from milterkit.result import CheckResult, MessageInput

__all__ = ["MilterClient"]

_T = TypeVar("_T")


class MilterClient:
    """Same API as :class:`AsyncMilterClient`, without ``await``."""

    def __init__(self, address: str, **options: Any) -> None:
        self._client = AsyncMilterClient(address, **options)
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def negotiated(self) -> Negotiated | None:
        return self._client.negotiated

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("MilterClient is closed")
        return self._loop.run_until_complete(coro)

    def connect(self) -> None:
        self._call(self._client.connect())

    def check(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
    ) -> CheckResult:
        return self._call(
            self._client.check(
                message,
                sender=sender,
                recipients=recipients,
                sender_args=sender_args,
                recipient_args=recipient_args,
            )
        )

    def abort(self) -> None:
        self._call(self._client.abort())

    def close(self) -> None:
        """QUIT, close the socket, and release the private loop."""
        if self._loop is None:
            return
        try:
            self._call(self._client.close())
        finally:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
