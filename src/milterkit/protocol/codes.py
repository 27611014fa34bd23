"""Wire codes and sizes of the milter protocol (PROTOCOL.md sections 2-4 and 16).

What each command means as a protocol step (flags, order, replies) is in
:mod:`milterkit.protocol.steps`; :mod:`milterkit.protocol.constants` offers
both under one name. This module imports nothing from the protocol package, so
:mod:`milterkit.protocol.messages` and the step table can build on it.

Commands and replies are ``IntEnum`` members holding the command byte, so a
packet's fifth byte compares equal to them directly. Flags are ``IntFlag`` so
they combine and print by name.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Command(IntEnum):
    """Command bytes the MTA sends to the filter (``SMFIC_*``)."""

    OPTNEG = ord("O")
    MACRO = ord("D")
    CONNECT = ord("C")
    HELO = ord("H")
    MAIL = ord("M")
    RCPT = ord("R")
    DATA = ord("T")
    HEADER = ord("L")
    EOH = ord("N")
    BODY = ord("B")
    BODYEOB = ord("E")
    UNKNOWN = ord("U")
    ABORT = ord("A")
    QUIT = ord("Q")
    QUIT_NC = ord("K")


class Reply(IntEnum):
    """Reply bytes the filter sends to the MTA (``SMFIR_*``)."""

    OPTNEG = ord("O")
    CONTINUE = ord("c")
    ACCEPT = ord("a")
    REJECT = ord("r")
    TEMPFAIL = ord("t")
    DISCARD = ord("d")
    REPLYCODE = ord("y")
    SKIP = ord("s")
    PROGRESS = ord("p")
    ADDHEADER = ord("h")
    INSHEADER = ord("i")
    CHGHEADER = ord("m")
    CHGFROM = ord("e")
    ADDRCPT = ord("+")
    ADDRCPT_PAR = ord("2")
    DELRCPT = ord("-")
    REPLBODY = ord("b")
    QUARANTINE = ord("q")
    SHUTDOWN = ord("4")
    CONN_FAIL = ord("f")
    SETSYMLIST = ord("l")


class Action(IntFlag):
    """What the filter may ask the MTA to change (``SMFIF_*``)."""

    NONE = 0
    ADD_HEADERS = 0x001
    CHANGE_BODY = 0x002
    ADD_RCPT = 0x004
    DELETE_RCPT = 0x008
    CHANGE_HEADERS = 0x010
    QUARANTINE = 0x020
    CHANGE_FROM = 0x040
    ADD_RCPT_PAR = 0x080
    SETSYMLIST = 0x100

    @classmethod
    def all(cls) -> Action:
        """Every action defined by protocol version 6 (``SMFI_CURR_ACTS``)."""
        return cls(0x1FF)


class ProtocolFlag(IntFlag):
    """Steps and replies the filter does not want, plus capability bits (``SMFIP_*``)."""

    NONE = 0
    NOCONNECT = 0x00000001
    NOHELO = 0x00000002
    NOMAIL = 0x00000004
    NORCPT = 0x00000008
    NOBODY = 0x00000010
    NOHDRS = 0x00000020
    NOEOH = 0x00000040
    NR_HDR = 0x00000080
    NOUNKNOWN = 0x00000100
    NODATA = 0x00000200
    SKIP = 0x00000400
    RCPT_REJ = 0x00000800
    NR_CONN = 0x00001000
    NR_HELO = 0x00002000
    NR_MAIL = 0x00004000
    NR_RCPT = 0x00008000
    NR_DATA = 0x00010000
    NR_UNKN = 0x00020000
    NR_EOH = 0x00040000
    NR_BODY = 0x00080000
    HDR_LEADSPC = 0x00100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000
    TEST = 0x80000000

    # An alias of NR_HDR (same value), spelt as a literal: mypyc cannot compile a
    # member defined by reference to another member.
    NOHREPL = 0x00000080


class MacroStage(IntEnum):
    """Stage ids of the macro-list extension in the OPTNEG reply (``SMFIM_*``).

    Note the order: EOM is 5 and EOH is 6.
    """

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


class Family(IntEnum):
    """Address family byte of SMFIC_CONNECT."""

    UNKNOWN = ord("U")
    UNIX = ord("L")
    INET = ord("4")
    INET6 = ord("6")


# Sizes and masks -----------------------------------------------------------------

PROTOCOL_VERSION = 6
MIN_PROTOCOL_VERSION = 2
OPTNEG_LEN = 12
CHUNK_SIZE = 65535
MAX_DATA_SIZE = 65535
MDS_64K = 65535
MDS_256K = 262143
MDS_1M = 1048575
POSTFIX_MAX_PACKET = 1073741823

V1_ACTIONS = Action(0x0F)
V2_ACTIONS = Action(0x3F)
ALL_ACTIONS = Action(0x1FF)
V1_PROTOCOL = ProtocolFlag(0x3F)
V2_PROTOCOL = ProtocolFlag(0x7F)
ALL_PROTOCOL = ProtocolFlag(0x1FFFFF)
MDS_FLAGS = ProtocolFlag.MDS_256K | ProtocolFlag.MDS_1M
INTERNAL_FLAGS = ProtocolFlag(0x70000000)

NO_REPLY_FLAGS = (
    ProtocolFlag.NR_HDR
    | ProtocolFlag.NR_CONN
    | ProtocolFlag.NR_HELO
    | ProtocolFlag.NR_MAIL
    | ProtocolFlag.NR_RCPT
    | ProtocolFlag.NR_DATA
    | ProtocolFlag.NR_UNKN
    | ProtocolFlag.NR_EOH
    | ProtocolFlag.NR_BODY
)

#: Which action bit each modification reply needs.
REPLY_ACTION: dict[Reply, Action] = {
    Reply.ADDHEADER: Action.ADD_HEADERS,
    Reply.INSHEADER: Action.ADD_HEADERS,
    Reply.CHGHEADER: Action.CHANGE_HEADERS,
    Reply.CHGFROM: Action.CHANGE_FROM,
    Reply.ADDRCPT: Action.ADD_RCPT,
    Reply.ADDRCPT_PAR: Action.ADD_RCPT_PAR,
    Reply.DELRCPT: Action.DELETE_RCPT,
    Reply.REPLBODY: Action.CHANGE_BODY,
    Reply.QUARANTINE: Action.QUARANTINE,
}


def _export_libmilter_names() -> dict[str, int]:
    """libmilter / libMilterPHP spellings, so ported code can keep its names."""
    names: dict[str, int] = {}
    for cmd in Command:
        names[f"SMFIC_{cmd.name}"] = cmd
    for rep in Reply:
        if rep is not Reply.OPTNEG:
            names[f"SMFIR_{rep.name}"] = rep
    action_names = {
        "ADDHDRS": Action.ADD_HEADERS,
        "CHGBODY": Action.CHANGE_BODY,
        "MODBODY": Action.CHANGE_BODY,
        "ADDRCPT": Action.ADD_RCPT,
        "DELRCPT": Action.DELETE_RCPT,
        "CHGHDRS": Action.CHANGE_HEADERS,
        "QUARANTINE": Action.QUARANTINE,
        "CHGFROM": Action.CHANGE_FROM,
        "ADDRCPT_PAR": Action.ADD_RCPT_PAR,
        "SETSYMLIST": Action.SETSYMLIST,
        "NONE": Action.NONE,
    }
    for name, act in action_names.items():
        names[f"SMFIF_{name}"] = act
    for flag in ProtocolFlag.__members__.values():
        # single bits only: iterating a Flag yields NONE on 3.10 but not on 3.11+
        if flag.name and flag.value and flag.value & (flag.value - 1) == 0:
            names[f"SMFIP_{flag.name}"] = flag
    names["SMFIP_NOHREPL"] = ProtocolFlag.NR_HDR
    for stage in MacroStage:
        names[f"SMFIM_{stage.name}"] = stage
    return names


LIBMILTER_NAMES: dict[str, int] = _export_libmilter_names()
