"""The MTA side for people: run a message through any milter and see what it did.

>>> from milterkit.client import check
>>> result = check("inet:8890@127.0.0.1", open("msg.eml", "rb").read(),
...                sender="alice@example.org", recipients=["bob@example.net"])
>>> result.decision, [type(m).__name__ for m in result.modifications]
>>> delivered = result.apply(open("msg.eml", "rb").read())

:func:`check` is one connection, one message. :class:`MilterClient`
(blocking) and :class:`AsyncMilterClient` keep a connection open for several
messages. The protocol logic is sans-I/O in :mod:`milterkit.client.session`
(:class:`MTASession`, :class:`MessageRun`) for reuse with other transports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from milterkit.client.aio import DEFAULT_TIMEOUT, AsyncMilterClient
from milterkit.client.errors import (
    MilterAddressError,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.client.session import ClientInfo, Exchange, MessageRun, MTASession, Opening
from milterkit.client.sync import MilterClient
from milterkit.mtaprofile import POSTFIX, SENDMAIL, V2_ONLY, MTAProfile
from milterkit.result import CheckResult, DeliveredMessage, MessageInput

__all__ = [
    "DEFAULT_TIMEOUT",
    "POSTFIX",
    "SENDMAIL",
    "V2_ONLY",
    "AsyncMilterClient",
    "CheckResult",
    "ClientInfo",
    "DeliveredMessage",
    "Exchange",
    "MTAProfile",
    "MTASession",
    "MessageRun",
    "MilterAddressError",
    "MilterClient",
    "MilterConnectionError",
    "MilterError",
    "MilterProtocolError",
    "MilterTimeout",
    "Opening",
    "check",
]


def check(
    address: str,
    message: MessageInput,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    client_address: str | None = "127.0.0.1",
    client_port: int = 50000,
    hostname: str | None = None,
    helo: str = "client.example.org",
    macros: Mapping[str, str] | None = None,
    profile: MTAProfile = POSTFIX,
    timeout: float = DEFAULT_TIMEOUT,
    version: int | None = None,
    actions: int | None = None,
    protocol: int | None = None,
) -> CheckResult:
    """Connect, run one message through the filter at ``address``, QUIT.

    Sender and recipients default to the message's From and To/Cc headers.
    Raises :class:`MilterError` subclasses for connection problems, timeouts
    and protocol violations.
    """
    with MilterClient(
        address,
        profile=profile,
        client_address=client_address,
        client_port=client_port,
        hostname=hostname,
        helo=helo,
        macros=macros,
        timeout=timeout,
        version=version,
        actions=actions,
        protocol=protocol,
    ) as client:
        return client.check(message, sender=sender, recipients=recipients)
