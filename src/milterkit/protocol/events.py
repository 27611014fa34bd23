"""Event objects of the connection state machines that are not wire messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


class _NeedData:
    """Returned by ``next_event()`` when more bytes must arrive first."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
NeedData = _NeedData


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end (``receive_data(b"")`` was called) at a packet boundary."""
