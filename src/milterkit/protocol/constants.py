"""Wire constants of the milter protocol (PROTOCOL.md sections 2-4 and 16).

The codes, flags and sizes are defined in :mod:`milterkit.protocol.codes`; the
per-command tables below are derived from the step table
(:data:`milterkit.protocol.steps.STEPS`), which holds each fact once. This
module keeps both under the names they always had.
"""

from __future__ import annotations

from milterkit.protocol.codes import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    CHUNK_SIZE,
    INTERNAL_FLAGS,
    LIBMILTER_NAMES,
    MAX_DATA_SIZE,
    MDS_1M,
    MDS_64K,
    MDS_256K,
    MDS_FLAGS,
    MIN_PROTOCOL_VERSION,
    NO_REPLY_FLAGS,
    OPTNEG_LEN,
    POSTFIX_MAX_PACKET,
    PROTOCOL_VERSION,
    REPLY_ACTION,
    V1_ACTIONS,
    V1_PROTOCOL,
    V2_ACTIONS,
    V2_PROTOCOL,
    Action,
    Command,
    Family,
    MacroStage,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.steps import STEPS

__all__ = [
    "ALL_ACTIONS",
    "ALL_PROTOCOL",
    "CHUNK_SIZE",
    "COMMAND_SINCE_VERSION",
    "INTERNAL_FLAGS",
    "LIBMILTER_NAMES",
    "MAX_DATA_SIZE",
    "MDS_1M",
    "MDS_64K",
    "MDS_256K",
    "MDS_FLAGS",
    "MIN_PROTOCOL_VERSION",
    "NO_REPLY_FLAG",
    "NO_REPLY_FLAGS",
    "NO_SEND_FLAG",
    "OPTNEG_LEN",
    "POSTFIX_MAX_PACKET",
    "PROTOCOL_VERSION",
    "REPLY_ACTION",
    "STAGE_LETTER",
    "UNANSWERED_COMMANDS",
    "V1_ACTIONS",
    "V1_PROTOCOL",
    "V2_ACTIONS",
    "V2_PROTOCOL",
    "Action",
    "Command",
    "Family",
    "MacroStage",
    "ProtocolFlag",
    "Reply",
]

#: For each command that a ``NO*`` bit can suppress: that bit.
NO_SEND_FLAG: dict[Command, ProtocolFlag] = {s.command: s.no_send for s in STEPS if s.no_send}

#: For each command that an ``NR_*`` bit can make reply-less: that bit.
NO_REPLY_FLAG: dict[Command, ProtocolFlag] = {s.command: s.no_reply for s in STEPS if s.no_reply}

#: Commands that never get a reply.
UNANSWERED_COMMANDS = frozenset(s.command for s in STEPS if not s.answered)

#: The first protocol version in which the MTA sends each command, for the
#: optional steps (those with a ``NO*`` bit) newer than the oldest version that
#: can be agreed: the MTA treats them as turned off for an older filter.
COMMAND_SINCE_VERSION: dict[Command, int] = {
    s.command: s.since for s in STEPS if s.no_send and s.since > MIN_PROTOCOL_VERSION
}

#: Macro stage letter (of a SMFIC_MACRO packet) for each macro-list stage id.
STAGE_LETTER: dict[MacroStage, Command] = {
    s.macro_list: s.command for s in STEPS if s.macro_list is not None
}
