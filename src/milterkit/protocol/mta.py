"""MTAConnection: the MTA side of the protocol, sans I/O.

:meth:`send` turns a command into bytes, or into ``b""`` when the filter
asked not to get it (NO* bits, or a command its version lacks), and records
whether a reply is due (NR_* bits). :meth:`next_event` yields the filter's
replies: any number of PROGRESS while waiting, modifications only at end of
message, then exactly one final reply. Anything else is a
:class:`RemoteProtocolError`, after which the connection is in the ERROR
state (:class:`~milterkit.protocol.state.ConnectionState`) and every call
raises an error naming it. Which reply each command takes is read from the
step table (:data:`milterkit.protocol.steps.STEPS`, its ``mta_accepts`` column).
"""

from __future__ import annotations

from milterkit.protocol.constants import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    COMMAND_SINCE_VERSION,
    POSTFIX_MAX_PACKET,
    PROTOCOL_VERSION,
    REPLY_ACTION,
    Action,
    Command,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from milterkit.protocol.events import NEED_DATA, ConnectionClosed, NeedData
from milterkit.protocol.framing import FrameDecoder
from milterkit.protocol.messages import Body, Macro, Message, OptNeg, body_pieces, decode_reply
from milterkit.protocol.negotiate import (
    Negotiated,
    accept_filter_reply,
    describe_flags,
    semantic_version,
)
from milterkit.protocol.state import CLOSED as _CLOSED
from milterkit.protocol.state import OPEN as _OPEN
from milterkit.protocol.state import ConnectionStateMachine, unusable
from milterkit.protocol.steps import STEP_BY_CODE, STEPS

#: Commands that may be sent while a reply is outstanding (they end the wait).
_ALWAYS_ALLOWED = frozenset({Command.ABORT, Command.QUIT, Command.QUIT_NC})
#: Replies the MTA side accepts, per command.
_ACCEPTS: dict[int, frozenset[int]] = {
    int(s.command): frozenset(int(r) for r in s.mta_accepts) for s in STEPS
}
#: What sending each command does to the state: opens a message, closes it, or ends all.
_OPENS_MESSAGE = frozenset(int(s.command) for s in STEPS if s.position)
_CLOSES_MESSAGE = frozenset({int(Command.ABORT), int(Command.HELO), int(Command.QUIT_NC)})
_BODYEOB = int(Command.BODYEOB)

Event = Message | NeedData | ConnectionClosed


class MTAConnection(ConnectionStateMachine):
    """The MTA's view of one filter connection."""

    def __init__(
        self,
        *,
        max_reply_size: int = POSTFIX_MAX_PACKET - 1,
        keep_unoffered_protocol: bool = False,
    ) -> None:
        #: Act on protocol bits the filter set beyond the offer, as Postfix does.
        self.keep_unoffered_protocol = keep_unoffered_protocol
        # Postfix caps the length field (command byte + payload) at INT_MAX/2; so
        # does this side, whatever larger payload limit the caller asks for.
        self._decoder = FrameDecoder(min(max_reply_size, POSTFIX_MAX_PACKET - 1))
        super().__init__()
        self.offer: OptNeg | None = None
        self.negotiated: Negotiated | None = None
        self._in_message = False

    @property
    def in_message(self) -> bool:
        """A message is open: a message step was sent and no end of message or ABORT since.

        Still answers in the ERROR state.
        """
        return self._in_message

    @staticmethod
    def default_offer(
        version: int = PROTOCOL_VERSION,
        actions: Action = ALL_ACTIONS,
        protocol: ProtocolFlag = ALL_PROTOCOL,
    ) -> OptNeg:
        """Postfix 3.7's offer: version 6, all actions, all protocol bits."""
        return OptNeg(version, actions, protocol)

    # -------------------------------------------------------------------- sending

    def sends(self, command: Command) -> bool:
        """Whether :meth:`send` would put this command on the wire."""
        if self.negotiated is None:
            return command == Command.OPTNEG
        return self.negotiated.sends(command)

    def send(self, message: Message) -> bytes:
        """Bytes for one command, or ``b""`` if the filter does not want it.

        A refused command raises LocalProtocolError and changes nothing.
        """
        if self._error is not None:
            raise unusable(self._error)
        step = STEP_BY_CODE.get(message.code)
        if step is None:
            raise LocalProtocolError(f"{type(message).__name__} is not an MTA command")
        code = step.command
        if isinstance(message, OptNeg):
            return self._send_optneg(message)
        negotiated = self._require_negotiated(code)
        awaiting = self._awaiting
        if awaiting is not None and code not in _ALWAYS_ALLOWED:
            raise LocalProtocolError(
                f"cannot send {code.name} while waiting for the reply to {awaiting.name}"
            )
        if isinstance(message, Macro):
            return self._send_macro(message, negotiated)
        if code not in _ALWAYS_ALLOWED and not negotiated.sends(code):
            self._sent(code, False)
            return b""
        self._check_size(message, negotiated)
        self._sent(code, negotiated.expects_reply(code))
        return message.encode()

    def sent_encoded(self, command: Command) -> None:
        """Bytes for ``command`` went out pre-encoded (a load generator's cached batch):
        wait for its reply as if :meth:`send` had produced them."""
        if self._error is not None:
            raise unusable(self._error)
        if self._awaiting is not None:
            raise LocalProtocolError(
                f"cannot send {command.name} while waiting for the reply to {self._awaiting.name}"
            )
        self._require_negotiated(command)
        self._sent(command, True)

    def _sent(self, code: Command, replied: bool) -> None:
        """The state after ``code`` went out (or was left out for the filter's NO* bits)."""
        self._awaiting = code if replied else None
        if code in _OPENS_MESSAGE:
            self._in_message = True
        elif code in _CLOSES_MESSAGE:
            self._in_message = False
        elif code == Command.QUIT:
            self._in_message = False
            self._state = _CLOSED

    def _send_optneg(self, message: OptNeg) -> bytes:
        if self.offer is not None:
            raise LocalProtocolError("OPTNEG was already sent on this connection")
        self.offer = message
        self._awaiting = Command.OPTNEG
        return message.encode()

    def _require_negotiated(self, code: Command) -> Negotiated:
        if self.negotiated is None:
            raise LocalProtocolError(f"cannot send {code.name} before option negotiation")
        if self._state == _CLOSED:
            raise LocalProtocolError(f"cannot send {code.name}: the connection is closed")
        return self.negotiated

    def _send_macro(self, message: Macro, negotiated: Negotiated) -> bytes:
        """MACRO packets go out even for NO* commands, but not past the filter's version."""
        stage = message.stage
        since = 0
        if stage is not None and stage in Command._value2member_map_:
            since = COMMAND_SINCE_VERSION.get(Command(stage), 0)
        if semantic_version(negotiated.version) < since:
            return b""
        self._check_size(message, negotiated)
        return message.encode()

    @staticmethod
    def _check_size(message: Message, negotiated: Negotiated) -> None:
        size = len(message.payload())
        if isinstance(message, Body) and size > negotiated.max_data_size:
            raise LocalProtocolError(
                f"BODY chunk of {size} bytes exceeds the negotiated maximum of "
                f"{negotiated.max_data_size}; split the body"
            )

    def body_chunks(self, body: bytes) -> list[Body]:
        """Split a message body into BODY commands of the negotiated size."""
        size = self.negotiated.max_data_size if self.negotiated else 65535
        return [Body(piece) for piece in body_pieces(body, size)]

    # ------------------------------------------------------------------ receiving

    def cap_reply_size(self, limit: int) -> None:
        """Accept reply payloads of at most ``limit`` bytes from now on (never raises the cap).

        For a client that, like Sendmail, holds the filter to the negotiated
        size instead of Postfix's 1 GiB.
        """
        self._decoder.max_payload = min(self._decoder.max_payload, limit)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the filter; ``b""`` means the filter closed the connection."""
        if self._error is not None:
            self._hang_up_in_error(data)
            return
        try:
            if self._eof:
                raise RemoteProtocolError("data received after the filter closed the connection")
            if not data:
                self._eof = True
                return
            self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> Event:
        """The next reply, NEED_DATA, or ConnectionClosed."""
        if self._error is not None:
            raise unusable(self._error)
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return self._end_of_input()
            message = decode_reply(*frame)
            self._accept(message)
            return message
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _end_of_input(self) -> Event:
        if not self._eof:
            return NEED_DATA
        if self._decoder.buffered:
            raise RemoteProtocolError(
                f"filter closed the connection inside a packet ({self._decoder.buffered} bytes)"
            )
        if self._awaiting is not None:
            raise RemoteProtocolError(
                f"filter closed the connection without replying to {self._awaiting.name}"
            )
        self._state = _CLOSED
        return ConnectionClosed()

    def _accept(self, message: Message) -> None:
        reply = Reply(message.code)
        awaiting = self._awaiting
        if awaiting is None:
            raise RemoteProtocolError(f"unexpected {reply.name}: no command is waiting for a reply")
        if awaiting == Command.OPTNEG:
            return self._accept_optneg(message)
        if isinstance(message, OptNeg):
            raise RemoteProtocolError(f"OPTNEG reply in answer to {awaiting.name}")
        if reply == Reply.PROGRESS:
            return None
        if reply in REPLY_ACTION:
            return self._accept_modification(reply, awaiting)
        self._check_final(reply, awaiting)
        self._awaiting = None
        if awaiting == _BODYEOB:
            self._in_message = False
        return None

    def _accept_optneg(self, message: Message) -> None:
        if not isinstance(message, OptNeg):
            raise RemoteProtocolError(f"expected an OPTNEG reply, got {Reply(message.code).name}")
        assert self.offer is not None
        self.negotiated = accept_filter_reply(
            self.offer, message, keep_unoffered_protocol=self.keep_unoffered_protocol
        )
        self._awaiting = None
        self._state = _OPEN

    def _accept_modification(self, reply: Reply, awaiting: Command) -> None:
        if reply not in _ACCEPTS[awaiting]:
            raise RemoteProtocolError(
                f"modification {reply.name} in reply to {awaiting.name}; only allowed at "
                "end of message"
            )
        assert self.negotiated is not None
        needed = REPLY_ACTION[reply]
        if not self.negotiated.actions & needed:
            raise RemoteProtocolError(
                f"{reply.name} needs the action {describe_flags(needed, Action)}, "
                "which the filter did not negotiate"
            )

    def _check_final(self, reply: Reply, awaiting: Command) -> None:
        """Refuse a final reply the step table does not accept for the awaited command."""
        assert self.negotiated is not None
        allowed = reply in _ACCEPTS[awaiting]
        if reply == Reply.SKIP:
            # Postfix takes SKIP whatever was negotiated (libmilter sends it regardless)
            skip_agreed = self.negotiated.protocol & ProtocolFlag.SKIP
            if not skip_agreed and not self.keep_unoffered_protocol:
                raise RemoteProtocolError("SKIP without SMFIP_SKIP negotiated")
            if not allowed:
                raise RemoteProtocolError(f"SKIP in reply to {awaiting.name}")
        elif not allowed:
            raise RemoteProtocolError(f"{reply.name} is not a valid reply to {awaiting.name}")
