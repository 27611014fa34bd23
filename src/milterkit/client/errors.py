"""Exceptions of the milter client.

Each names the filter's address and the step the client was at, because the
person reading it is usually debugging one filter among several and needs to
know where in the conversation it went wrong.
"""

from __future__ import annotations

from milterkit.protocol.errors import RemoteProtocolError

__all__ = [
    "MilterAddressError",
    "MilterConnectionError",
    "MilterError",
    "MilterProtocolError",
    "MilterTimeout",
]


class MilterError(Exception):
    """Base of every client error; ``address`` and ``stage`` say where."""

    def __init__(self, message: str, *, address: str = "", stage: str = "") -> None:
        super().__init__(message)
        self.address = address
        self.stage = stage


class MilterAddressError(MilterError, ValueError):
    """The filter address could not be parsed or is not one a client can connect to."""


class MilterConnectionError(MilterError, ConnectionError):
    """Connecting failed, or the filter closed or reset the connection."""


class MilterTimeout(MilterError, TimeoutError):  # noqa: N818 - the name users expect
    """The filter did not accept the connection or did not reply in time."""


class MilterProtocolError(MilterError, RemoteProtocolError):
    """The filter sent bytes that break the milter protocol."""
