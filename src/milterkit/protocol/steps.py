"""The protocol steps: one row per command, every per-step fact in one place.

Each :class:`Step` says what PROTOCOL.md sections 2, 3 and 6 say about one
command the MTA sends: its message class, the ``NO*`` bit that turns it off and
the ``NR_*`` bit that makes it reply-less, its macros, the version that brought
it, where it sits in a message, which replies each side takes, and the names
the upper layers use for it. The other per-step tables are derived from
:data:`STEPS` (those of :mod:`~milterkit.protocol.constants`, of the two state
machines, the milter's callback flags, the observer's and bench's stage names),
so a fact is written once; ``messages.COMMAND_TYPES``, which this module builds
on, is checked against it by a test.

The replies differ by side on purpose, hence two columns: the filter side sends
SKIP only to BODY (libmilter's rule, PROTOCOL.md 6.8), while the MTA side takes
it after RCPT, HEADER and BODY as Postfix does; the MTA side also takes SHUTDOWN
and CONN_FAIL (Postfix does), which the filter side refuses to send.
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

P = ProtocolFlag
_NONE = ProtocolFlag.NONE
_NOTHING: frozenset[Reply] = frozenset()

# The reply columns. Valid after every command that gets a reply (PROTOCOL.md 3).
# PROGRESS too: Postfix takes it after any command, Sendmail only during end of
# message (3, 6.9); the session's automatic keepalive runs only there.
_DECIDE = frozenset(
    {Reply.CONTINUE, Reply.ACCEPT, Reply.REJECT, Reply.TEMPFAIL, Reply.REPLYCODE, Reply.PROGRESS}
)
#: Inside a message DISCARD is valid too (not at CONNECT/HELO).
_IN_MSG = _DECIDE | {Reply.DISCARD}
#: The filter side sends SKIP only to BODY (libmilter's rule, PROTOCOL.md 6.8).
_BODY = _IN_MSG | {Reply.SKIP}
#: At end of message the modifications too.
_EOM = _IN_MSG | frozenset(REPLY_ACTION)
#: The MTA side takes what the filter side sends, plus SHUTDOWN and CONN_FAIL (as
#: Postfix does, PROTOCOL.md 3), plus SKIP after RCPT, HEADER and BODY (Postfix, 6.8).
_EXTRA = frozenset({Reply.SHUTDOWN, Reply.CONN_FAIL})
_MTA_DECIDE = _DECIDE | _EXTRA
_MTA_IN_MSG = _IN_MSG | _EXTRA
_MTA_SKIP = _MTA_IN_MSG | {Reply.SKIP}
_MTA_EOM = _EOM | _EXTRA
_OPTNEG = frozenset({Reply.OPTNEG})

# The ends_message column (PROTOCOL.md 6.7): a final reply ends the message ...
_ENDS = frozenset({Reply.ACCEPT, Reply.REJECT, Reply.TEMPFAIL, Reply.DISCARD, Reply.REPLYCODE})
#: ... except at RCPT, where REJECT/TEMPFAIL/REPLYCODE refuse only that recipient,
_RCPT_ENDS = frozenset({Reply.ACCEPT, Reply.DISCARD})
#: ... and at end of message every final reply does, CONTINUE included.
_EOM_ENDS = _ENDS | {Reply.CONTINUE}


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


#: Every command the MTA sends, in :class:`~milterkit.protocol.codes.Command` order.
# fmt: off
STEPS: tuple[Step, ...] = (
    # command, message class, no_send, no_reply, answered, macro_letter, macro_list, since,
    #   position, repeatable, filter_replies, mta_accepts, ends_message, callback, stage
    Step(Command.OPTNEG, OptNeg, _NONE, _NONE, True, False, None, 1,
         0, False, _OPTNEG, _OPTNEG, _NOTHING, "negotiate", "optneg"),
    Step(Command.MACRO, Macro, _NONE, _NONE, False, False, None, 1,
         0, False, _NOTHING, _NOTHING, _NOTHING, None, "macro"),
    Step(Command.CONNECT, Connect, P.NOCONNECT, P.NR_CONN, True, True, MacroStage.CONNECT, 1,
         0, False, _DECIDE, _MTA_DECIDE, _NOTHING, "connect", "connect"),
    Step(Command.HELO, Helo, P.NOHELO, P.NR_HELO, True, True, MacroStage.HELO, 1,
         0, False, _DECIDE, _MTA_DECIDE, _NOTHING, "helo", "helo"),
    Step(Command.MAIL, Mail, P.NOMAIL, P.NR_MAIL, True, True, MacroStage.ENVFROM, 1,
         1, False, _IN_MSG, _MTA_IN_MSG, _ENDS, "mail_from", "mail"),
    Step(Command.RCPT, Rcpt, P.NORCPT, P.NR_RCPT, True, True, MacroStage.ENVRCPT, 1,
         2, True, _IN_MSG, _MTA_SKIP, _RCPT_ENDS, "rcpt_to", "rcpt"),
    Step(Command.DATA, Data, P.NODATA, P.NR_DATA, True, True, MacroStage.DATA, 4,
         3, False, _IN_MSG, _MTA_IN_MSG, _ENDS, "data", "data"),
    Step(Command.HEADER, Header, P.NOHDRS, P.NR_HDR, True, True, None, 1,
         4, True, _IN_MSG, _MTA_SKIP, _ENDS, "header", "header"),
    Step(Command.EOH, EndOfHeaders, P.NOEOH, P.NR_EOH, True, True, MacroStage.EOH, 2,
         5, False, _IN_MSG, _MTA_IN_MSG, _ENDS, "end_of_headers", "eoh"),
    Step(Command.BODY, Body, P.NOBODY, P.NR_BODY, True, True, None, 1,
         6, True, _BODY, _MTA_SKIP, _ENDS, "body", "body"),
    Step(Command.BODYEOB, EndOfMessage, _NONE, _NONE, True, True, MacroStage.EOM, 1,
         7, False, _EOM, _MTA_EOM, _EOM_ENDS, "end_of_message", "eom"),
    # DISCARD is not listed for UNKNOWN in PROTOCOL.md 3; both sides let it through
    # (as they did before this table), the MTA rejects the command anyway.
    Step(Command.UNKNOWN, Unknown, P.NOUNKNOWN, P.NR_UNKN, True, True, None, 3,
         0, False, _IN_MSG, _MTA_IN_MSG, _NOTHING, "unknown", "unknown"),
    Step(Command.ABORT, Abort, _NONE, _NONE, False, False, None, 1,
         0, False, _NOTHING, _NOTHING, _NOTHING, "abort", "abort"),
    Step(Command.QUIT, Quit, _NONE, _NONE, False, False, None, 1,
         0, False, _NOTHING, _NOTHING, _NOTHING, "close", "quit"),
    Step(Command.QUIT_NC, QuitNoClose, _NONE, _NONE, False, False, None, 6,
         0, False, _NOTHING, _NOTHING, _NOTHING, "close", "quit_nc"),
)
# fmt: on

#: The step of each command byte (plain int keys: the per-packet path looks up ints).
STEP_BY_CODE: dict[int, Step] = {int(step.command): step for step in STEPS}
#: The step of each message class.
STEP_BY_MESSAGE: dict[type[Message], Step] = {step.message: step for step in STEPS}
