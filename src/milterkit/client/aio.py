"""The asyncio milter client: the sans-I/O exchange over an asyncio stream.

All protocol decisions live in :mod:`milterkit.client.session`, and the
deadlines and errors in :mod:`milterkit.client.base` (shared with the
blocking :class:`~milterkit.client.MilterClient`); this module only moves
bytes on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from milterkit.client.base import (
    READ_SIZE,
    BaseMilterClient,
    Read,
    Write,
    connect_error,
    connect_target,
    connect_timeout_error,
)
from milterkit.client.errors import MilterError
from milterkit.client.options import DEFAULT_TIMEOUT, ClientKeywords, ClientOptions, resolve
from milterkit.client.session import Exchange
from milterkit.result import CheckResult, MessageInput
from milterkit.runtime.address import UnixAddress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_TIMEOUT", "AsyncMilterClient", "open_stream"]


async def open_stream(
    address: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``unix:/path``, ``inet:PORT@HOST`` or ``inet6:PORT@HOST``."""
    target = connect_target(address)
    try:
        if isinstance(target, UnixAddress):
            opening = asyncio.open_unix_connection(target.path)
        else:
            opening = asyncio.open_connection(target.host, target.port)
        return await asyncio.wait_for(opening, timeout)
    except asyncio.TimeoutError:
        raise connect_timeout_error(address, timeout) from None
    except OSError as exc:
        raise connect_error(address, exc) from None


class AsyncMilterClient(BaseMilterClient):
    """Connect to one filter and run messages through it like an MTA, on asyncio.

    Settings come as ``options=`` (a :class:`ClientOptions`) and/or as the
    same settings in keywords (``timeout=10``, ``profile=SENDMAIL``; see
    :class:`~milterkit.client.options.ClientKeywords`), which override
    ``options``. ``check`` connects on first use. Usable as ``async with``.
    """

    def __init__(
        self,
        address: str,
        *,
        options: ClientOptions | None = None,
        **keywords: Unpack[ClientKeywords],
    ) -> None:
        super().__init__(address, resolve(options, **keywords))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection, negotiate, and send CONNECT and HELO."""
        self._usable()
        if self.session.opened:
            return
        timeout = self.options.effective_connect_timeout
        self._reader, self._writer = await open_stream(self.address, timeout)
        await self._drive(self.session.opening())

    async def check(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
    ) -> CheckResult:
        """Run one message; sender/recipients default to the From/To(/Cc) headers."""
        await self.connect()
        run = self._message_run(message, sender, recipients, sender_args, recipient_args)
        await self._drive(run)
        return run.result

    async def abort(self) -> None:
        """Send ABORT now (what an MTA does on RSET); no reply is expected."""
        self._usable()
        if self.session.opened:
            await self._write(Write(self.session.abort(), "abort"))

    async def close(self) -> None:
        """Send QUIT (plus any trailing ABORT) and close the socket."""
        writer = self._writer
        if writer is None:
            return
        try:
            if self._broken is None and self.session.opened:
                await self._write(Write(self.session.quit(), "quit"))
        except MilterError:
            pass
        finally:
            self._broken = self._broken or "closed"
            self._writer = self._reader = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.options.timeout)

    async def __aenter__(self) -> AsyncMilterClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ driving

    async def _drive(self, exchange: Exchange) -> None:
        """Run an exchange to completion; on any failure the connection is dropped."""
        steps = self._steps(exchange)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Write):
                    await self._write(step)
                    step = next(steps)
                else:
                    step = steps.send(await self._read(step))
        except StopIteration:
            return
        except MilterError as exc:
            self._abandon(exc)
            raise

    def _abandon(self, error: MilterError) -> None:
        self._mark_broken(error)
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _write(self, step: Write) -> None:
        writer = self._writer
        if writer is None:
            raise self._not_connected()
        try:
            writer.write(step.data)
            await asyncio.wait_for(writer.drain(), self.options.timeout)
        except asyncio.TimeoutError:
            raise self._timeout(step.stage, "to accept our data") from None
        except OSError as exc:
            raise self._lost(step.stage, exc) from None

    async def _read(self, step: Read) -> bytes:
        """Bytes from the filter (``b""``: it closed), waiting at most ``step.remaining`` s."""
        reader = self._reader
        if reader is None:
            raise self._not_connected()
        try:
            return await asyncio.wait_for(reader.read(READ_SIZE), step.remaining)
        except asyncio.TimeoutError:
            raise self._timeout(step.stage, "to reply") from None
        except OSError as exc:
            raise self._lost(step.stage, exc) from None
