"""The protocol steps: one row per command, every per-step fact in one place.

Each :class:`Step` says what PROTOCOL.md sections 2, 3 and 6 say about one
command the MTA sends: its message class, the ``NO*`` bit that turns it off and
the ``NR_*`` bit that makes it reply-less, its macros, the version that brought
it, where it sits in a message, which replies each side takes, and the names
the upper layers use for it. Every other per-step table (in
:mod:`~milterkit.protocol.constants`, the two state machines, the milter and
the session) is derived from :data:`STEPS`, so a fact is written once.

The replies differ by side on purpose: the filter side sends SKIP only to BODY
(libmilter's rule, PROTOCOL.md 6.8), while the MTA side takes it after RCPT,
HEADER and BODY as Postfix does; the MTA side also takes SHUTDOWN and CONN_FAIL
(Postfix does), which the filter side refuses to send.
"""

from __future__ import annotations

from dataclasses import dataclass

from milterkit.protocol.codes import (
    REPLY_ACTION,
    Command,
    MacroStage,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.messages import (
    Abort,
    Body,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    Message,
    OptNeg,
    Quit,
    QuitNoClose,
    Rcpt,
    Unknown,
)

_NONE = ProtocolFlag.NONE
#: Replies valid after every command that gets a reply (PROTOCOL.md 3).
_DECISIONS = frozenset(
    {Reply.CONTINUE, Reply.ACCEPT, Reply.REJECT, Reply.TEMPFAIL, Reply.REPLYCODE, Reply.PROGRESS}
)
_WITH_DISCARD = _DECISIONS | {Reply.DISCARD}
_AT_END = _WITH_DISCARD | frozenset(REPLY_ACTION)
#: Replies Postfix takes after any command and the filter side never sends.
_MTA_EXTRA = frozenset({Reply.SHUTDOWN, Reply.CONN_FAIL})
#: Final replies after which no more commands of the message come (PROTOCOL.md 6.7).
_ENDS = frozenset({Reply.ACCEPT, Reply.REJECT, Reply.TEMPFAIL, Reply.DISCARD, Reply.REPLYCODE})
_NOTHING: frozenset[Reply] = frozenset()


@dataclass(frozen=True, slots=True)
class Step:
    """What the protocol says about one command (one row of PROTOCOL.md section 2)."""

    command: Command
    #: The :class:`~milterkit.protocol.messages.Message` class of the packet.
    message: type[Message]
    #: The ``SMFIP_NO*`` bit with which the filter turns the step off (NONE: it cannot).
    no_send: ProtocolFlag
    #: The ``SMFIP_NR_*`` bit that makes the step reply-less (NONE: it cannot).
    no_reply: ProtocolFlag
    #: The filter answers it at all (MACRO, ABORT, QUIT and QUIT_NC never get a reply).
    answered: bool
    #: The MTA may send a MACRO packet with this command's byte as stage letter
    #: (Sendmail's C H M R T N E, Postfix also L B U; PROTOCOL.md 2 and 5).
    macro_letter: bool
    #: The stage id of the OPTNEG macro-list extension for this step (``SMFIM_*``).
    macro_list: MacroStage | None
    #: The protocol version that introduced the command (PROTOCOL.md 2).
    since: int
    #: Order within one message, 1 (MAIL) to 7 (end of message); 0 outside a message.
    position: int
    #: May come several times in a row within a message.
    repeatable: bool
    #: Replies the filter side may send to it.
    filter_replies: frozenset[Reply]
    #: Replies the MTA side accepts for it.
    mta_accepts: frozenset[Reply]
    #: Final replies after which the MTA sends no more commands of this message.
    ends_message: frozenset[Reply]
    #: The :class:`~milterkit.Milter` callback that handles it (None: none does).
    callback: str | None
    #: Short name in client results, bench stages and logs.
    stage: str


def _message_step(
    command: Command,
    message: type[Message],
    flags: tuple[ProtocolFlag, ProtocolFlag],
    position: int,
    *,
    callback: str,
    stage: str,
    macro_list: MacroStage | None = None,
    since: int = 1,
    repeatable: bool = False,
    skip_on_mta_side: bool = False,
) -> Step:
    """A step within a message: DISCARD allowed, the message ends on a final reply."""
    mta = _WITH_DISCARD | _MTA_EXTRA
    return Step(
        command,
        message,
        *flags,
        answered=True,
        macro_letter=True,
        macro_list=macro_list,
        since=since,
        position=position,
        repeatable=repeatable,
        filter_replies=_WITH_DISCARD | ({Reply.SKIP} if command == Command.BODY else set()),
        mta_accepts=mta | ({Reply.SKIP} if skip_on_mta_side else set()),
        ends_message=_ENDS,
        callback=callback,
        stage=stage,
    )


def _unanswered(command: Command, message: type[Message], callback: str | None, stage: str) -> Step:
    """MACRO, ABORT, QUIT, QUIT_NC: no reply, no flags, outside the message order."""
    since = 6 if command == Command.QUIT_NC else 1
    return Step(
        command, message, _NONE, _NONE, False, False, None, since, 0, False,
        _NOTHING, _NOTHING, _NOTHING, callback, stage,
    )  # fmt: skip


#: Every command the MTA sends, in :class:`~milterkit.protocol.codes.Command` order.
#: Rows written out give the columns in field order: command, message, no_send,
#: no_reply, answered, macro_letter, macro_list, since, position, repeatable,
#: filter_replies, mta_accepts, ends_message, callback, stage.
# fmt: off
STEPS: tuple[Step, ...] = (
    Step(
        Command.OPTNEG, OptNeg, _NONE, _NONE, True, False, None, 1, 0, False,
        frozenset({Reply.OPTNEG}), frozenset({Reply.OPTNEG}), _NOTHING, "negotiate", "optneg",
    ),
    _unanswered(Command.MACRO, Macro, None, "macro"),
    Step(
        Command.CONNECT, Connect, ProtocolFlag.NOCONNECT, ProtocolFlag.NR_CONN, True, True,
        MacroStage.CONNECT, 1, 0, False, _DECISIONS, _DECISIONS | _MTA_EXTRA, _NOTHING,
        "connect", "connect",
    ),
    Step(
        Command.HELO, Helo, ProtocolFlag.NOHELO, ProtocolFlag.NR_HELO, True, True,
        MacroStage.HELO, 1, 0, False, _DECISIONS, _DECISIONS | _MTA_EXTRA, _NOTHING,
        "helo", "helo",
    ),
    _message_step(
        Command.MAIL, Mail, (ProtocolFlag.NOMAIL, ProtocolFlag.NR_MAIL), 1,
        callback="mail_from", stage="mail", macro_list=MacroStage.ENVFROM,
    ),
    # Only this recipient is refused by REJECT/TEMPFAIL/REPLYCODE: the message goes on.
    Step(
        Command.RCPT, Rcpt, ProtocolFlag.NORCPT, ProtocolFlag.NR_RCPT, True, True,
        MacroStage.ENVRCPT, 1, 2, True, _WITH_DISCARD,
        _WITH_DISCARD | _MTA_EXTRA | {Reply.SKIP}, frozenset({Reply.ACCEPT, Reply.DISCARD}),
        "rcpt_to", "rcpt",
    ),
    _message_step(
        Command.DATA, Data, (ProtocolFlag.NODATA, ProtocolFlag.NR_DATA), 3,
        callback="data", stage="data", macro_list=MacroStage.DATA, since=4,
    ),
    _message_step(
        Command.HEADER, Header, (ProtocolFlag.NOHDRS, ProtocolFlag.NR_HDR), 4,
        callback="header", stage="header", repeatable=True, skip_on_mta_side=True,
    ),
    _message_step(
        Command.EOH, EndOfHeaders, (ProtocolFlag.NOEOH, ProtocolFlag.NR_EOH), 5,
        callback="end_of_headers", stage="eoh", macro_list=MacroStage.EOH, since=2,
    ),
    _message_step(
        Command.BODY, Body, (ProtocolFlag.NOBODY, ProtocolFlag.NR_BODY), 6,
        callback="body", stage="body", repeatable=True, skip_on_mta_side=True,
    ),
    # Cannot be turned off; every final reply ends the message; modifications only here.
    Step(
        Command.BODYEOB, EndOfMessage, _NONE, _NONE, True, True, MacroStage.EOM, 1, 7, False,
        _AT_END, _AT_END | _MTA_EXTRA, _ENDS | {Reply.CONTINUE}, "end_of_message", "eom",
    ),
    # DISCARD is not listed for UNKNOWN in PROTOCOL.md 3; both sides let it through
    # (as before the table existed), since the MTA rejects the command anyway.
    Step(
        Command.UNKNOWN, Unknown, ProtocolFlag.NOUNKNOWN, ProtocolFlag.NR_UNKN, True, True,
        None, 3, 0, False, _WITH_DISCARD, _WITH_DISCARD | _MTA_EXTRA, _NOTHING,
        "unknown", "unknown",
    ),
    _unanswered(Command.ABORT, Abort, "abort", "abort"),
    _unanswered(Command.QUIT, Quit, "close", "quit"),
    _unanswered(Command.QUIT_NC, QuitNoClose, "close", "quit_nc"),
)
# fmt: on

#: The step of each command byte (plain int keys: the per-packet path looks up ints).
STEP_BY_CODE: dict[int, Step] = {int(step.command): step for step in STEPS}
#: The step of each message class.
STEP_BY_MESSAGE: dict[type[Message], Step] = {step.message: step for step in STEPS}
