"""What the blocking and the asyncio client share: everything but the I/O.

As in httpx (``BaseClient``, then ``Client`` and ``AsyncClient``), the logic
lives once, here: the options, the sans-I/O :class:`MTASession`, when a
reply is overdue, which error names which address and step, and when a
connection is no longer usable. :class:`milterkit.client.MilterClient` runs
:meth:`BaseMilterClient._steps` over a blocking socket and
:class:`milterkit.client.AsyncMilterClient` over an asyncio stream; each only
performs the reads and writes the steps ask for.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

from milterkit.client.errors import (
    MilterAddressError,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.client.options import ClientOptions
from milterkit.client.session import Exchange, MessageRun
from milterkit.protocol.errors import RemoteProtocolError
from milterkit.protocol.negotiate import Negotiated
from milterkit.result import MessageInput
from milterkit.runtime.address import Inet6Address, InetAddress, UnixAddress, parse_address
from milterkit.runtime.errors import RuntimeConfigError

__all__ = [
    "READ_SIZE",
    "BaseMilterClient",
    "Read",
    "Write",
    "connect_error",
    "connect_target",
    "connect_timeout_error",
]

READ_SIZE = 65536

Target = UnixAddress | InetAddress | Inet6Address


def connect_target(address: str) -> Target:
    """Where ``unix:/path``, ``inet:PORT@HOST`` or ``inet6:PORT@HOST`` points."""
    try:
        target = parse_address(address)
    except RuntimeConfigError as exc:
        raise MilterAddressError(str(exc), address=address, stage="connect") from None
    if not isinstance(target, UnixAddress | InetAddress | Inet6Address):
        raise MilterAddressError(
            f"cannot connect to {address!r}: not a unix, inet or inet6 address",
            address=address,
            stage="connect",
        )
    return target


def connect_timeout_error(address: str, timeout: float) -> MilterTimeout:
    return MilterTimeout(
        f"connecting to the filter at {address} timed out after {timeout:g} s",
        address=address,
        stage="connect",
    )


def connect_error(address: str, exc: OSError) -> MilterConnectionError:
    return MilterConnectionError(
        f"cannot connect to the filter at {address}: {exc.strerror or exc}",
        address=address,
        stage="connect",
    )


@dataclass(frozen=True, slots=True)
class Write:
    """Send all of ``data`` (``stage`` names the step, for errors)."""

    data: bytes
    stage: str


@dataclass(frozen=True, slots=True)
class Read:
    """Read what the filter sent, waiting at most ``remaining`` seconds."""

    stage: str
    remaining: float


#: The I/O an exchange needs, one step at a time; a Read is answered with the bytes read.
Steps = Generator[Write | Read, bytes, None]


class BaseMilterClient:
    """One filter connection's state and rules, without a transport.

    One client is one filter connection (as one SMTP session is for an MTA):
    ``connect()`` negotiates and sends CONNECT/HELO, then ``check()`` may be
    called any number of times; ``close()`` sends QUIT. After any error the
    connection is dropped and the client refuses further use.
    """

    def __init__(self, address: str, options: ClientOptions) -> None:
        self.address = address
        self.options = options
        self.session = options.new_session()
        self._broken: str | None = None

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def negotiated(self) -> Negotiated | None:
        return self.session.negotiated

    def _message_run(
        self,
        message: MessageInput,
        sender: str | None,
        recipients: Sequence[str] | None,
        sender_args: Sequence[str],
        recipient_args: Mapping[str, Sequence[str]] | None,
    ) -> MessageRun:
        return self.session.message(
            message, sender, recipients, sender_args=sender_args, recipient_args=recipient_args
        )

    def _steps(self, exchange: Exchange) -> Steps:
        """Drive ``exchange``: writes, and reads bounded by each command's deadline.

        The deadline restarts whenever a command goes out, and PROGRESS does
        not extend it (see :class:`ClientOptions`). A filter that breaks the
        protocol raises :class:`MilterProtocolError` naming the step.
        """
        timeout = self.options.timeout
        try:
            out = exchange.start()
            deadline = time.monotonic() + timeout
            while True:
                if out:
                    yield Write(out, exchange.stage)
                    deadline = time.monotonic() + timeout  # a new command: a new deadline
                if exchange.done:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout(exchange.stage, "to reply")
                data = yield Read(exchange.stage, remaining)
                if not data:
                    raise self._closed_by_filter(exchange.stage)
                out = exchange.receive_data(data)
        except RemoteProtocolError as exc:
            raise MilterProtocolError(
                f"filter at {self.address} broke the protocol during {exchange.stage}: {exc}",
                address=self.address,
                stage=exchange.stage,
            ) from exc

    def _usable(self) -> None:
        if self._broken is not None:
            raise MilterConnectionError(
                f"the connection to {self.address} is {self._broken}; create a new client",
                address=self.address,
            )

    def _mark_broken(self, error: MilterError) -> None:
        self._broken = f"unusable after an error ({error})"

    def _not_connected(self) -> MilterConnectionError:
        return MilterConnectionError(f"not connected to {self.address}", address=self.address)

    def _timeout(self, stage: str, what: str) -> MilterTimeout:
        return MilterTimeout(
            f"filter at {self.address} took longer than {self.options.timeout:g} s {what} "
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

    def _closed_by_filter(self, stage: str) -> MilterConnectionError:
        return MilterConnectionError(
            f"filter at {self.address} closed the connection while the MTA waited "
            f"for its reply to {stage.upper()}",
            address=self.address,
            stage=stage,
        )
