"""FilterConnection: the milter side of the protocol, sans I/O.

Feed it what the MTA sent (:meth:`receive_data`), pull commands out
(:meth:`next_event`), and turn replies into bytes (:meth:`send`). It knows
what may be sent when and refuses the rest with :class:`LocalProtocolError`;
it refuses what the MTA may not send with :class:`RemoteProtocolError`.

MACRO packets never come out as events: they are folded into
:attr:`macros`, which the next command's handler reads. ABORT outside a
message is absorbed the same way (libmilter ignores it too). A MAIL or HELO
that arrives while a message is open first yields a synthetic :class:`Abort`,
so consumers reset message state in one place.

The connection moves through the named states of
:class:`~milterkit.protocol.state.ConnectionState`; a RemoteProtocolError puts
it in the ERROR state, after which every call raises an error naming the first.
What each command may do (its position in a message, the replies allowed) is
read from the step table, :data:`milterkit.protocol.steps.STEPS`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from milterkit.protocol.constants import (
    MAX_DATA_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    REPLY_ACTION,
    Action,
    Command,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from milterkit.protocol.events import NEED_DATA, ConnectionClosed, NeedData
from milterkit.protocol.framing import FrameDecoder, encode_frame
from milterkit.protocol.macros import MacroStore
from milterkit.protocol.messages import (
    COMMAND_TYPES,
    Abort,
    Accept,
    Continue,
    Discard,
    Macro,
    Message,
    OptNeg,
    Progress,
    Reject,
    Skip,
    TempFail,
    decode_command,
)
from milterkit.protocol.negotiate import (
    MacroRequest,
    Negotiated,
    build_filter_reply,
    check_filter_reply_local,
    describe_flags,
    negotiated,
)
from milterkit.protocol.state import CLOSED as _CLOSED
from milterkit.protocol.state import OPEN as _OPEN
from milterkit.protocol.state import ConnectionStateMachine, unusable
from milterkit.protocol.steps import STEPS

#: Position of each message-phase command within one message.
_POSITION: dict[int, int] = {int(s.command): s.position for s in STEPS if s.position}
_REPEATABLE: frozenset[int] = frozenset(int(s.command) for s in STEPS if s.repeatable)
#: The position after a final reply that ended the message (before ABORT or MAIL).
_MESSAGE_OVER = max(_POSITION.values()) + 1
#: Final replies that end the message, per command.
_ENDS_MESSAGE: dict[int, frozenset[int]] = {
    int(s.command): frozenset(int(r) for r in s.ends_message) for s in STEPS
}
#: Replies the filter may send, per command.
_ALLOWED: dict[int, frozenset[int]] = {
    int(s.command): frozenset(int(r) for r in s.filter_replies) for s in STEPS
}
#: The commands SKIP may answer, for the error that refuses it elsewhere.
_SKIP_TARGETS = "/".join(s.command.name for s in STEPS if Reply.SKIP in s.filter_replies)
_REFUSED_REPLIES = {
    Reply.SHUTDOWN: (
        "SHUTDOWN ('4') is refused by Sendmail; send a 421 REPLYCODE instead "
        "(from a callback: ReplyCode(421, ...))"
    ),
    Reply.CONN_FAIL: "CONN_FAIL ('f') is implemented by neither MTA",
}

Event = Message | NeedData | ConnectionClosed

# Performance: the per-packet path looks codes up by int in these tables
# instead of calling Command(...)/Reply(...) (an Enum call costs about as much
# as decoding a small packet, and it ran several times per packet). Message
# classes already carry the enum member as ``code``, so nothing changes for
# callers: ``awaiting`` is still a Command member.
_REPLY_BY_CODE: dict[int, Reply] = {int(reply): reply for reply in Reply if reply != Reply.OPTNEG}
_ALL_COMMANDS = tuple(Command)
# By value: compiled (mypyc) code reads ``Message.code`` as a plain int.
_COMMAND_BY_CODE: dict[int, Command] = {int(command): command for command in Command}
# Performance: the per-packet paths compare with these plain ints, not with
# ``Command.MAIL`` and the like: reading an Enum member off its class costs
# about 15 times a global's read on CPython 3.11.
_MACRO = int(Command.MACRO)
_BODYEOB = int(Command.BODYEOB)
_MAIL = int(Command.MAIL)
_OPTNEG = int(Command.OPTNEG)
_ABORT = int(Command.ABORT)
_QUIT = int(Command.QUIT)
_CONTINUE = int(Reply.CONTINUE)
_PROGRESS = int(Reply.PROGRESS)
_SKIP = int(Reply.SKIP)
#: Exact type -> (reply, wire bytes) of the payload-less replies that may be sent.
_FIXED_FRAMES: dict[type[Message], tuple[Reply, bytes]] = {
    cls: (Reply(cls.code), cls().encode())
    for cls in (Continue, Accept, Reject, TempFail, Discard, Skip, Progress)
}

# Performance: one connection usually carries one message, so per-connection
# work counts as much as per-packet work. What an OPTNEG exchange yields
# depends only on the offer and the reply (both frozen, hashable), and which
# commands get a reply only on (version, protocol): compute each once per
# distinct value instead of once per connection. Negotiated is frozen, so
# connections can share one. The caches are small and bounded.
_CACHE_LIMIT = 64
_NEGOTIATED: dict[tuple[OptNeg, OptNeg], tuple[Negotiated, bytes]] = {}
_ANSWERS: dict[tuple[int, int], tuple[frozenset[int], bool]] = {}


class FilterConnection(ConnectionStateMachine):
    """The filter's view of one MTA connection."""

    def __init__(self, *, max_payload: int = MAX_DATA_SIZE) -> None:
        self._decoder = FrameDecoder(max_payload)
        self._pending: deque[Message] = deque()
        super().__init__()
        self.offer: OptNeg | None = None
        self.negotiated: Negotiated | None = None
        self.macros = MacroStore()
        self._connected = False  # CONNECT came in this SMTP session (QUIT_NC starts another)
        self._position = 0
        # Per-negotiation answers of Negotiated.expects_reply/sends, computed once
        # for the Negotiated object in force (see _answers) instead of per packet.
        self._answers_for: Negotiated | None = None
        self._replied: frozenset[int] = frozenset()
        self._sends_connect = True

    # ---------------------------------------------------------------------- state

    @property
    def in_message(self) -> bool:
        """A message is open: MAIL (or a later step) came and no EOM reply or ABORT yet.

        Still answers in the ERROR state, so the caller knows to run an abort callback.
        """
        return self._position != 0

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Bytes from the MTA; ``b""`` means the MTA closed the connection."""
        if self._error is not None:
            self._hang_up_in_error(data)
            return
        try:
            if self._eof:
                raise RemoteProtocolError("data received after the connection was closed")
            if not data:
                self._eof = True
                return
            if self._state == _CLOSED:
                raise RemoteProtocolError(f"{len(data)} bytes received after QUIT")
            decoder = self._decoder
            if not decoder._buf and decoder._gather is None and type(data) is bytes:
                # Performance: FrameDecoder.feed's common case (all earlier input
                # was handed out) without the call: the read becomes the buffer.
                decoder._buf = data
            else:
                decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> Event:
        """The next command, NEED_DATA, or ConnectionClosed."""
        if self._error is not None:
            raise unusable(self._error)
        decoder = self._decoder
        try:
            while True:
                if self._pending:
                    return self._pending.popleft()
                if not decoder._buf and decoder._gather is None:
                    # Performance: the last call of each read finds nothing left
                    # (see FrameDecoder's invariant); answer without next_frame().
                    return NEED_DATA if not self._eof else self._end_of_input()
                frame = decoder.next_frame()
                if frame is None:
                    # the end of every read: NEED_DATA without a call
                    return NEED_DATA if not self._eof else self._end_of_input()
                code, payload = frame
                ready = self._awaiting is None and self._state == _OPEN
                if code == _MACRO:
                    if ready:
                        # Performance: a MACRO packet precedes nearly every command
                        # and never becomes an event; when _accept would just store
                        # it, store its pairs without building the Macro message
                        # (same checks: any other case takes the general path
                        # below). adopt() also checks the macro caps before
                        # splitting the payload into pairs.
                        self.macros.adopt(payload)
                        continue
                    if self._awaiting is not None and self.negotiated is not None:
                        # refused below anyway; refuse before splitting a large payload
                        self._accept(Macro(None))
                # decode_command inlined (one call less per packet)
                unpack = COMMAND_TYPES.get(code)
                message = decode_command(code, payload) if unpack is None else unpack(payload)
                # Performance: what _accept does for a command when the connection
                # is open and no reply is due (the usual case): its handler, directly.
                handler = _HANDLERS.get(code) if ready else None
                event = self._accept(message) if handler is None else handler(self, message)
                if event is not None:
                    return event
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _end_of_input(self) -> Event:
        """All input was read and the MTA closed its end."""
        left = self._decoder.buffered
        if left:
            raise RemoteProtocolError(f"MTA closed the connection inside a packet ({left} bytes)")
        self._state = _CLOSED
        return ConnectionClosed()

    def _accept(self, message: Message) -> Message | None:
        code = message.code  # the Command member of the message class; no Enum call
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise RemoteProtocolError(f"{Command(code).name} received after QUIT")
            return self._accept_optneg(message)
        awaiting = self._awaiting
        if awaiting is not None and code != _ABORT and code != _QUIT:
            raise RemoteProtocolError(
                f"MTA sent {Command(code).name} while the reply to {awaiting.name} is outstanding"
            )
        if code == _MACRO:
            assert isinstance(message, Macro)
            if message.stage is not None:
                self.macros.set_stage(message.stage, message.pairs)
            return None
        handler = _HANDLERS.get(code)
        if handler is None:
            raise RemoteProtocolError(f"{Command(code).name} after option negotiation")
        return handler(self, message)

    def _accept_optneg(self, message: Message) -> Message:
        if not isinstance(message, OptNeg):
            raise RemoteProtocolError(f"expected OPTNEG first, got {Command(message.code).name}")
        if self.offer is not None:
            raise RemoteProtocolError("MTA sent a second OPTNEG before our reply")
        if message.version < MIN_PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"MTA offers protocol version {message.version}; at least "
                f"{MIN_PROTOCOL_VERSION} is needed"
            )
        self.offer = message
        self._awaiting = Command.OPTNEG
        return message

    def _on_abort(self, message: Message) -> Message | None:
        self._awaiting = None
        if not self._position:  # in_message, without the property call
            return None
        self._end_message()
        return message

    def _on_quit(self, message: Message) -> Message:
        self._awaiting = None
        self._state = _CLOSED
        self._end_message()
        return message

    def _on_quit_nc(self, message: Message) -> Message:
        self._end_message()
        self.macros.clear()
        self._connected = False
        return message

    def _on_connect(self, message: Message) -> Message:
        if self._connected:
            raise RemoteProtocolError("second CONNECT on one connection without QUIT_NC")
        self._connected = True
        return self._expect_reply(message)

    def _on_helo(self, message: Message) -> Message:
        if not self._connected:  # as in _on_message_step: no call when CONNECT came
            self._require_connect(Command.HELO)
        return self._restart_if_in_message(message)

    def _on_unknown(self, message: Message) -> Message:
        return self._expect_reply(message)

    def _restart_if_in_message(self, message: Message) -> Message:
        """A new HELO/MAIL inside a message implies an abort the MTA did not send."""
        if self._position:  # in_message, without the property call
            self._position = 0
            # the MAIL macros that just came belong to the new message: keep them
            self.macros.clear_message(keep=message.code)
            self._pending.append(self._expect_reply(message))
            return Abort()
        return self._expect_reply(message)

    def _on_message_step(self, message: Message) -> Message:
        code = message.code
        if not self._connected:  # one call less per step of a connection that has CONNECT
            self._require_connect(code)
        if code == _MAIL:
            result = self._restart_if_in_message(message)
            self.macros.start_message()
            self._position = 1
            return result
        old = self._position
        if old == 0:
            self.macros.start_message()  # NOMAIL: RCPT or a later step opens the message
        new = _POSITION[code]
        # Performance: past RCPT, a step that moves forward (or repeats a
        # repeatable one) passes every check of _check_order; only the rest call it.
        if old < 2 or new < old or (new == old and code not in _REPEATABLE):
            self._check_order(code)
        self._position = new
        # _expect_reply inline (two calls fewer per step)
        if self.negotiated is not self._answers_for:
            self._answers()
        if code in self._replied:
            self._awaiting = _COMMAND_BY_CODE[code]
        return message

    def _check_order(self, code: int) -> None:
        new, old = _POSITION[code], self._position
        if old == _MESSAGE_OVER:
            raise RemoteProtocolError(
                f"{Command(code).name} after the filter's final reply to this message"
            )
        if new < old or (new == old and code not in _REPEATABLE):
            raise RemoteProtocolError(f"{Command(code).name} out of order in the message")
        if old >= 2:
            return  # past RCPT: the checks below cannot fail (fast path for HEADER/BODY)
        assert self.negotiated is not None
        proto = self.negotiated.protocol
        if old < 1 and not proto & ProtocolFlag.NOMAIL:
            raise RemoteProtocolError(f"{Command(code).name} before MAIL")
        if old < 2 < new and not proto & ProtocolFlag.NORCPT:
            raise RemoteProtocolError(f"{Command(code).name} before any RCPT")

    def _require_connect(self, code: int) -> None:
        if not self._connected and self._answers()._sends_connect:
            raise RemoteProtocolError(f"{Command(code).name} before CONNECT")

    def _answers(self) -> FilterConnection:
        """Refresh the cached per-negotiation answers if ``negotiated`` changed."""
        negotiated = self.negotiated
        if negotiated is not self._answers_for:
            assert negotiated is not None
            key = (negotiated.version, int(negotiated.protocol))
            answers = _ANSWERS.get(key)
            if answers is None:
                replied = frozenset(c for c in _ALL_COMMANDS if negotiated.expects_reply(c))
                answers = (replied, negotiated.sends(Command.CONNECT))
                _remember(_ANSWERS, key, answers)
            self._replied, self._sends_connect = answers
            self._answers_for = negotiated
        return self

    def _expect_reply(self, message: Message) -> Message:
        code = message.code
        # Performance: _answers() only when ``negotiated`` changed (a call less per command)
        if self.negotiated is not self._answers_for:
            self._answers()
        if code in self._replied:
            self._awaiting = _COMMAND_BY_CODE[code]
        return message

    def _end_message(self) -> None:
        self._position = 0
        self.macros.end_message()

    # -------------------------------------------------------------------- sending

    def negotiate(
        self,
        *,
        version: int = PROTOCOL_VERSION,
        actions: Action = Action.NONE,
        protocol: ProtocolFlag = ProtocolFlag.NONE,
        macros: MacroRequest | None = None,
    ) -> bytes:
        """Build the OPTNEG reply with :func:`build_filter_reply` and send it."""
        if self.offer is None or self._awaiting != _OPTNEG:
            raise LocalProtocolError("no OPTNEG from the MTA to answer")
        reply = build_filter_reply(
            self.offer, version=version, actions=actions, protocol=protocol, macros=macros
        )
        return self.send(reply)

    def send(self, message: Message) -> bytes:
        """Bytes for one reply, after checking that it may be sent now.

        A refused reply raises LocalProtocolError and changes nothing.
        """
        if self._error is not None:
            raise unusable(self._error)
        fixed = _FIXED_FRAMES.get(type(message))
        if fixed is not None:
            # Performance: a reply without payload (CONTINUE above all) has
            # constant bytes; same checks and state change as below, minus the
            # payload and framing work.
            fixed_reply, data = fixed
            if self._awaiting is None or self._awaiting == _OPTNEG:
                raise LocalProtocolError(f"{fixed_reply.name}: no command is waiting for a reply")
            if fixed_reply != _CONTINUE:
                self._check_reply_kind(fixed_reply)
                if fixed_reply == _PROGRESS:
                    return data
            # _finish_reply inline (one call less per reply)
            awaiting = self._awaiting
            self._awaiting = None
            if fixed_reply in _ENDS_MESSAGE[awaiting]:
                if awaiting == _BODYEOB:
                    self._end_message()
                else:
                    self._position = _MESSAGE_OVER
            return data
        if isinstance(message, OptNeg):
            if self.offer is None or self._awaiting != _OPTNEG:
                raise LocalProtocolError("OPTNEG reply sent without an OPTNEG to answer")
            key = (self.offer, message)
            known = _NEGOTIATED.get(key)
            if known is None:  # not seen yet: check it (raises if bad), then remember
                self._check_optneg(message)
                known = (negotiated(self.offer, message), message.encode())
                _remember(_NEGOTIATED, key, known)
            agreed, data = known
            self._after_optneg(agreed)
            return data
        reply = _REPLY_BY_CODE.get(message.code)
        if reply is None:
            raise LocalProtocolError(f"{type(message).__name__} is not a filter reply")
        payload = self._check_reply(message, reply)
        # Performance: frame the payload built for the size check instead of
        # building it again in Message.encode (unless a subclass encodes itself).
        if type(message).encode is Message.encode:
            data = encode_frame(reply, payload)
        else:
            data = message.encode()
        if reply != _PROGRESS and reply not in REPLY_ACTION:
            self._finish_reply(reply)
        return data

    def send_all(self, messages: list[Message]) -> bytes:
        """Several replies as one buffer, for one write (modifications + final reply)."""
        return b"".join([self.send(m) for m in messages])

    def _check_reply(self, message: Message, reply: Reply) -> bytes:
        """Check a (non-OPTNEG) reply may be sent now; return its payload."""
        if reply in _REFUSED_REPLIES:
            raise LocalProtocolError(_REFUSED_REPLIES[reply])
        if self._awaiting is None or self._awaiting == _OPTNEG:
            raise LocalProtocolError(f"{reply.name}: no command is waiting for a reply")
        assert self.negotiated is not None
        payload = message.payload()
        size = len(payload)
        if size > self.negotiated.max_data_size:
            raise LocalProtocolError(
                f"{reply.name}: payload of {size} bytes exceeds the negotiated maximum of "
                f"{self.negotiated.max_data_size}"
            )
        if reply != _CONTINUE:  # CONTINUE is valid for every awaited command
            self._check_reply_kind(reply)
        return payload

    def _check_optneg(self, message: OptNeg) -> None:
        if self.offer is None or self._awaiting != _OPTNEG:
            raise LocalProtocolError("OPTNEG reply sent without an OPTNEG to answer")
        check_filter_reply_local(self.offer, message)

    def _check_reply_kind(self, reply: Reply) -> None:
        """Refuse a reply the step table does not allow for the awaited command."""
        assert self.negotiated is not None and self._awaiting is not None
        awaiting = self._awaiting
        allowed = reply in _ALLOWED[awaiting]
        needed = REPLY_ACTION.get(reply)
        if needed is not None:
            if not allowed:
                raise LocalProtocolError(
                    f"{reply.name} is a modification and only allowed at end of message, "
                    f"not in reply to {awaiting.name}"
                )
            if not int(self.negotiated.actions) & int(needed):  # ints: no IntFlag.__and__
                raise LocalProtocolError(
                    f"{reply.name} needs the action {describe_flags(needed, Action)}, "
                    "which was not negotiated"
                )
        elif reply == _SKIP:
            if not self.negotiated.protocol & ProtocolFlag.SKIP:
                raise LocalProtocolError("SKIP was not negotiated (SMFIP_SKIP)")
            if not allowed:
                raise LocalProtocolError(
                    f"SKIP is only allowed for {_SKIP_TARGETS}, not {awaiting.name}"
                )
        elif not allowed:
            raise LocalProtocolError(f"{reply.name} is not a valid reply to {awaiting.name}")

    def _after_optneg(self, agreed: Negotiated) -> None:
        self.negotiated = agreed
        self._decoder.max_payload = agreed.max_data_size
        self._awaiting = None
        self._state = _OPEN

    def _finish_reply(self, reply: Reply) -> None:
        awaiting, self._awaiting = self._awaiting, None
        assert awaiting is not None
        if reply in _ENDS_MESSAGE[awaiting]:
            if awaiting == _BODYEOB:
                self._end_message()
            else:
                self._position = _MESSAGE_OVER


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


_HANDLERS = {
    Command.ABORT: FilterConnection._on_abort,
    Command.QUIT: FilterConnection._on_quit,
    Command.QUIT_NC: FilterConnection._on_quit_nc,
    Command.CONNECT: FilterConnection._on_connect,
    Command.HELO: FilterConnection._on_helo,
    Command.UNKNOWN: FilterConnection._on_unknown,
    **dict.fromkeys(_POSITION, FilterConnection._on_message_step),
}
