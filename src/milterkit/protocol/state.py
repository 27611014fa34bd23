"""The named states of a milter connection, shared by both sides.

:class:`~milterkit.protocol.filter.FilterConnection` and
:class:`~milterkit.protocol.mta.MTAConnection` go through the same states, as
h11's connection does for both HTTP roles, and share what tracks them
(:class:`ConnectionStateMachine`)::

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

from milterkit.protocol.codes import Command
from milterkit.protocol.errors import LocalProtocolError, ProtocolError
from milterkit.protocol.framing import FrameDecoder


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
# The lifecycle part of the state, as plain ints (the per-packet paths compare
# these). OPEN is IDLE's value and means "negotiated and open": IDLE and
# IN_MESSAGE differ only by ``in_message``, which each side tracks its own way.
NEGOTIATING = int(ConnectionState.NEGOTIATING)
OPEN = int(ConnectionState.IDLE)
CLOSED = int(ConnectionState.CLOSED)
ERROR = int(ConnectionState.ERROR)


class ConnectionStateMachine:
    """What both connection classes share: the lifecycle state, the first error,
    and the command whose reply is due, all read-only from outside."""

    #: The peer's frames; each side sizes it (set by the subclass).
    _decoder: FrameDecoder

    def __init__(self) -> None:
        self._state = NEGOTIATING
        self._error: ProtocolError | None = None
        self._awaiting: Command | None = None
        self._eof = False  # the peer closed its end (input only: QUIT may precede it)

    @property
    def buffered(self) -> int:
        """Bytes received from the peer and not yet returned as events."""
        # Performance: read once per read by the server; FrameDecoder.buffered's
        # common case (no large frame being gathered) without a second call.
        decoder = self._decoder
        if decoder._gather is None:
            return len(decoder._buf) - decoder._pos
        return decoder.buffered

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in the protocol (read-only)."""
        state = self._state
        if state == OPEN and self.in_message:
            return ConnectionState.IN_MESSAGE
        return STATES[state]

    @property
    def awaiting(self) -> Command | None:
        """The command whose reply is due (read-only); None when no reply is due."""
        return self._awaiting

    @property
    def in_message(self) -> bool:
        """A message is open (each side defines when); still answers in the ERROR state."""
        raise NotImplementedError

    def _hang_up_in_error(self, data: bytes) -> None:
        """receive_data() in the ERROR state: note the peer's hang-up, refuse anything else.

        The hang-up is news in any state: a caller that goes on to next_event()
        (and its abort/close handling) learns of the ERROR there.
        """
        assert self._error is not None
        if data or self._eof:
            raise unusable(self._error)
        self._eof = True

    def _fail(self, error: ProtocolError) -> None:
        """Enter the ERROR state; later calls raise an error naming this one."""
        self._error = error
        self._state = ERROR


def unusable(first: ProtocolError) -> LocalProtocolError:
    """The error of any call on a connection in the ERROR state; it names the first error."""
    error = LocalProtocolError(
        f"the connection is in the ERROR state after {type(first).__name__}: {first}"
    )
    error.__cause__ = first
    return error
