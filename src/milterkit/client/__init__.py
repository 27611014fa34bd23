"""The MTA side for people: run a message through any milter and see what it did.

>>> from milterkit.client import check
>>> result = check("inet:8890@127.0.0.1", open("msg.eml", "rb").read(),
...                sender="alice@example.org", recipients=["bob@example.net"])
>>> result.decision, [type(m).__name__ for m in result.modifications]
>>> delivered = result.apply(open("msg.eml", "rb").read())

:func:`check` is one connection, one message. :class:`MilterClient`
(blocking sockets, no event loop) and :class:`AsyncMilterClient` (asyncio)
keep a connection open for several messages. All three take one
:class:`ClientOptions` (``options=``) or the same settings as keywords.
The protocol logic is sans-I/O in :mod:`milterkit.client.session`
(:class:`MTASession`, :class:`Opening`, :class:`MessageRun`): both clients
and the in-memory test harness drive the same exchanges, each over its own
transport, as httpx's ``Client`` and ``AsyncClient`` share one base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from milterkit.client.aio import AsyncMilterClient
from milterkit.client.errors import (
    MilterAddressError,
    MilterConnectionError,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
)
from milterkit.client.options import DEFAULT_TIMEOUT, ClientKeywords, ClientOptions
from milterkit.client.session import ClientInfo, Exchange, MessageRun, MTASession, Opening
from milterkit.client.sync import MilterClient
from milterkit.mtaprofile import POSTFIX, SENDMAIL, V2_ONLY, MTAProfile
from milterkit.result import CheckResult, DeliveredMessage, MessageInput

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_TIMEOUT",
    "POSTFIX",
    "SENDMAIL",
    "V2_ONLY",
    "AsyncMilterClient",
    "CheckResult",
    "ClientInfo",
    "ClientKeywords",
    "ClientOptions",
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
    sender_args: Sequence[str] = (),
    recipient_args: Mapping[str, Sequence[str]] | None = None,
    options: ClientOptions | None = None,
    **keywords: Unpack[ClientKeywords],
) -> CheckResult:
    """Connect, run one message through the filter at ``address``, QUIT.

    Sender and recipients default to the message's From and To/Cc headers.
    The MTA's settings are ``options`` and/or the same settings as keywords
    (``timeout=10``, ``profile=SENDMAIL``). Raises :class:`MilterError`
    subclasses for connection problems, timeouts and protocol violations.
    """
    with MilterClient(address, options=options, **keywords) as client:
        return client.check(
            message,
            sender=sender,
            recipients=recipients,
            sender_args=sender_args,
            recipient_args=recipient_args,
        )
