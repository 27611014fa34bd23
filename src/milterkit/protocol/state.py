"""The named states of a milter connection, shared by both sides.

:class:`~milterkit.protocol.filter.FilterConnection` and
:class:`~milterkit.protocol.mta.MTAConnection` go through the same states, as
h11's connection does for both HTTP roles::

    NEGOTIATING --OPTNEG reply--> IDLE <--end of message, ABORT--> IN_MESSAGE
    IDLE / IN_MESSAGE --QUIT, or the peer closed--> CLOSED
    any state --RemoteProtocolError from receive_data/next_event--> ERROR

Whether a reply is outstanding is orthogonal to these states and is read from
``awaiting``. A LocalProtocolError from ``send`` does not move to ERROR: every
check runs before anything changes, so the refused reply left no trace and the
caller may send another (the session answers its error reply then).
"""

from __future__ import annotations

from enum import IntEnum

from milterkit.protocol.errors import LocalProtocolError, ProtocolError


class ConnectionState(IntEnum):
    """Where a connection is in the protocol (the ``state`` of either connection class)."""

    #: OPTNEG not yet agreed: the only command is OPTNEG, the only reply its answer.
    NEGOTIATING = 0
    #: Negotiated, no message open (before CONNECT, between messages).
    IDLE = 1
    #: A message is open: MAIL (or, with NOMAIL, a later step) came and no end of
    #: message, ABORT, HELO or QUIT_NC since.
    IN_MESSAGE = 2
    #: QUIT went through, or the peer closed the connection and all it sent was read.
    CLOSED = 3
    #: The peer broke the protocol; every later call raises an error naming why
    #: (``receive_data(b"")`` only records that the peer hung up).
    ERROR = 4


#: Every state by value, for the ``state`` properties (no Enum call per read).
STATES: tuple[ConnectionState, ...] = tuple(ConnectionState)


def unusable(first: ProtocolError) -> LocalProtocolError:
    """The error of any call on a connection in the ERROR state; it names the first error."""
    error = LocalProtocolError(
        f"the connection is in the ERROR state after {type(first).__name__}: {first}"
    )
    error.__cause__ = first
    return error
