"""The asyncio milter client: an MTASession driven over a real socket.

All protocol decisions live in :mod:`milterkit.client.session`; this module
only moves bytes, enforces the connect timeout and each command's reply
deadline, and turns failures into :mod:`milterkit.client.errors` exceptions that name the filter's
address and the step that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from types import TracebackType

from milterkit.client.errors import (
    MilterAddressError,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.client.limits import DEFAULT_MAX_MODIFICATIONS, DEFAULT_MAX_REPLY_BYTES
from milterkit.client.session import ClientInfo, Exchange, MTASession
from milterkit.mtaprofile import POSTFIX, MTAProfile
from milterkit.protocol.errors import RemoteProtocolError
from milterkit.protocol.negotiate import Negotiated
from milterkit.result import CheckResult, MessageInput
from milterkit.runtime.address import Inet6Address, InetAddress, UnixAddress, parse_address
from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["DEFAULT_TIMEOUT", "AsyncMilterClient", "open_stream"]

#: Seconds a filter has for each reply; Postfix's milter_command_timeout is 30 s.
#: A deadline from when the command was sent: PROGRESS does not extend it
#: (Sendmail's E= end-of-message timeout works the same way).
DEFAULT_TIMEOUT = 30.0
_READ_SIZE = 65536


async def open_stream(
    address: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``unix:/path``, ``inet:PORT@HOST`` or ``inet6:PORT@HOST``."""
    try:
        target = parse_address(address)
    except RuntimeConfigError as exc:
        raise MilterAddressError(str(exc), address=address, stage="connect") from None
    try:
        if isinstance(target, UnixAddress):
            opening = asyncio.open_unix_connection(target.path)
        elif isinstance(target, InetAddress | Inet6Address):
            opening = asyncio.open_connection(target.host, target.port)
        else:
            raise MilterAddressError(
                f"cannot connect to {address!r}: not a unix, inet or inet6 address",
                address=address,
                stage="connect",
            )
        return await asyncio.wait_for(opening, timeout)
    except asyncio.TimeoutError:
        raise MilterTimeout(
            f"connecting to the filter at {address} timed out after {timeout:g} s",
            address=address,
            stage="connect",
        ) from None
    except OSError as exc:
        raise MilterConnectionError(
            f"cannot connect to the filter at {address}: {exc.strerror or exc}",
            address=address,
            stage="connect",
        ) from None


class AsyncMilterClient:
    """Connect to one filter and run messages through it like an MTA.

    One client is one filter connection (as one SMTP session is for an MTA):
    :meth:`connect` negotiates and sends CONNECT/HELO, then :meth:`check`
    may be called any number of times; :meth:`close` sends QUIT. ``check``
    connects on first use. Usable as ``async with``.

    ``timeout`` is each command's deadline for its complete reply, counted
    from sending the command; PROGRESS from the filter does not extend it.
    ``max_modifications`` and ``max_reply_bytes`` bound one message's replies
    (see :mod:`milterkit.client.limits`).
    """

    def __init__(
        self,
        address: str,
        *,
        profile: MTAProfile = POSTFIX,
        client_address: str | None = "127.0.0.1",
        client_port: int = 50000,
        hostname: str | None = None,
        helo: str = "client.example.org",
        macros: Mapping[str, str] | None = None,
        version: int | None = None,
        actions: int | None = None,
        protocol: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        max_modifications: int | None = DEFAULT_MAX_MODIFICATIONS,
        max_reply_bytes: int | None = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.session = MTASession(
            profile,
            client=ClientInfo(client_address, client_port, hostname, helo),
            version=version,
            actions=actions,
            protocol=protocol,
            macros=macros,
        )
        self.session.max_modifications = max_modifications
        self.session.max_reply_bytes = max_reply_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._broken: str | None = None

    @property
    def negotiated(self) -> Negotiated | None:
        return self.session.negotiated

    async def connect(self) -> None:
        """Open the connection, negotiate, and send CONNECT and HELO."""
        self._usable()
        if self.session.opened:
            return
        self._reader, self._writer = await open_stream(self.address, self.connect_timeout)
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
        run = self.session.message(
            message,
            sender,
            recipients,
            sender_args=sender_args,
            recipient_args=recipient_args,
        )
        await self._drive(run)
        return run.result

    async def abort(self) -> None:
        """Send ABORT now (what an MTA does on RSET); no reply is expected."""
        self._usable()
        if self.session.opened:
            await self._write(self.session.abort(), "abort")

    async def close(self) -> None:
        """Send QUIT (plus any queued ABORT) and close the socket."""
        writer = self._writer
        if writer is None:
            return
        try:
            if self._broken is None and self.session.opened:
                await self._write(self.session.quit(), "quit")
        except MilterError:
            pass
        finally:
            self._broken = self._broken or "closed"
            self._writer = self._reader = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.timeout)

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

    def _usable(self) -> None:
        if self._broken is not None:
            raise MilterConnectionError(
                f"the connection to {self.address} is {self._broken}; create a new client",
                address=self.address,
            )

    async def _drive(self, exchange: Exchange) -> None:
        """Run an exchange to completion; on any failure the connection is dropped."""
        loop = asyncio.get_running_loop()
        try:
            out = exchange.start()
            deadline = loop.time() + self.timeout
            while True:
                if out:
                    await self._write(out, exchange.stage)
                    deadline = loop.time() + self.timeout  # a new command: a new deadline
                if exchange.done:
                    return
                data = await self._read(exchange.stage, deadline - loop.time())
                out = exchange.receive_data(data)
        except MilterError as exc:
            await self._abandon(str(exc))
            raise
        except RemoteProtocolError as exc:
            await self._abandon(str(exc))
            raise MilterProtocolError(
                f"filter at {self.address} broke the protocol during {exchange.stage}: {exc}",
                address=self.address,
                stage=exchange.stage,
            ) from exc

    async def _abandon(self, why: str) -> None:
        self._broken = f"unusable after an error ({why})"
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _write(self, data: bytes, stage: str) -> None:
        writer = self._writer
        if writer is None:
            raise MilterConnectionError(f"not connected to {self.address}", address=self.address)
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except asyncio.TimeoutError:
            raise self._timeout(stage, "to accept our data") from None
        except OSError as exc:
            raise self._lost(stage, exc) from None

    async def _read(self, stage: str, remaining: float) -> bytes:
        """Bytes from the filter, waiting at most ``remaining`` s (the reply deadline)."""
        reader = self._reader
        assert reader is not None
        if remaining <= 0:
            raise self._timeout(stage, "to reply")
        try:
            data = await asyncio.wait_for(reader.read(_READ_SIZE), remaining)
        except asyncio.TimeoutError:
            raise self._timeout(stage, "to reply") from None
        except OSError as exc:
            raise self._lost(stage, exc) from None
        if not data:
            raise MilterConnectionError(
                f"filter at {self.address} closed the connection while the MTA waited "
                f"for its reply to {stage.upper()}",
                address=self.address,
                stage=stage,
            )
        return data

    def _timeout(self, stage: str, what: str) -> MilterTimeout:
        return MilterTimeout(
            f"filter at {self.address} took longer than {self.timeout:g} s {what} "
            f"at {stage.upper()}",
            address=self.address,
            stage=stage,
        )

    def _lost(self, stage: str, exc: OSError) -> MilterConnectionError:
        return MilterConnectionError(
            f"connection to the filter at {self.address} failed at {stage.upper()}: "
            f"{exc.strerror or exc}",
            address=self.address,
            stage=stage,
        )
