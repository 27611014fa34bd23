"""The sans-I/O milter protocol core: bytes in, events out; replies in, bytes out.

No sockets, no asyncio, no threads, no clocks, no logging. Both roles share
the framing and the message classes: :class:`FilterConnection` is the milter
side, :class:`MTAConnection` the MTA side, and the two can be paired in memory.
Both go through the states of :class:`ConnectionState`; what each command may
do is one row of :data:`STEPS`.
"""

from typing import TYPE_CHECKING, Any

from milterkit._deprecation import warn_renamed
from milterkit.protocol.constants import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    CHUNK_SIZE,
    MAX_DATA_SIZE,
    MDS_1M,
    MDS_256K,
    POSTFIX_MAX_PACKET,
    PROTOCOL_VERSION,
    Action,
    Command,
    Family,
    MacroStage,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from milterkit.protocol.events import NEED_DATA, ConnectionClosed, NeedData
from milterkit.protocol.filter import FilterConnection
from milterkit.protocol.framing import FrameDecoder, encode_frame
from milterkit.protocol.macros import MacroStore, macro_key
from milterkit.protocol.messages import (
    Abort,
    Accept,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeFrom,
    ChangeHeader,
    Connect,
    ConnFail,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    InsertHeader,
    Macro,
    Mail,
    Message,
    OptNeg,
    Progress,
    Quarantine,
    Quit,
    QuitNoClose,
    Rcpt,
    Reject,
    ReplaceBody,
    ReplyCodePacket,
    Shutdown,
    Skip,
    TempFail,
    Unknown,
    decode_command,
    decode_reply,
    replace_body_chunks,
)
from milterkit.protocol.mta import MTAConnection
from milterkit.protocol.negotiate import (
    Negotiated,
    accept_filter_reply,
    build_filter_reply,
    data_size_for,
)
from milterkit.protocol.state import ConnectionState
from milterkit.protocol.steps import STEP_BY_CODE, STEPS, Step

__all__ = [
    "ALL_ACTIONS",
    "ALL_PROTOCOL",
    "CHUNK_SIZE",
    "MAX_DATA_SIZE",
    "MDS_1M",
    "MDS_256K",
    "NEED_DATA",
    "POSTFIX_MAX_PACKET",
    "PROTOCOL_VERSION",
    "STEPS",
    "STEP_BY_CODE",
    "Abort",
    "Accept",
    "Action",
    "AddHeader",
    "AddRecipient",
    "AddRecipientPar",
    "Body",
    "ChangeFrom",
    "ChangeHeader",
    "Command",
    "ConnFail",
    "Connect",
    "ConnectionClosed",
    "ConnectionState",
    "Continue",
    "Data",
    "DeleteRecipient",
    "Discard",
    "EndOfHeaders",
    "EndOfMessage",
    "Family",
    "FilterConnection",
    "FrameDecoder",
    "Header",
    "Helo",
    "InsertHeader",
    "LocalProtocolError",
    "MTAConnection",
    "Macro",
    "MacroStage",
    "MacroStore",
    "Mail",
    "Message",
    "NeedData",
    "Negotiated",
    "OptNeg",
    "Progress",
    "ProtocolError",
    "ProtocolFlag",
    "Quarantine",
    "Quit",
    "QuitNoClose",
    "Rcpt",
    "Reject",
    "RemoteProtocolError",
    "ReplaceBody",
    "Reply",
    "ReplyCodePacket",
    "Shutdown",
    "Skip",
    "Step",
    "TempFail",
    "Unknown",
    "accept_filter_reply",
    "build_filter_reply",
    "data_size_for",
    "decode_command",
    "decode_reply",
    "encode_frame",
    "macro_key",
    "replace_body_chunks",
]

# ``ReplyCode``, the old name of ReplyCodePacket, still works, with a warning: it was
# renamed because ``milterkit.ReplyCode`` (what a callback returns) is a different
# class. The warning lives here, not in ``messages``: that module may be compiled by
# mypyc, which has no module ``__getattr__``. Type checkers see a plain alias, not the
# ``__getattr__``, which would make every misspelt name of this package an Any.
if TYPE_CHECKING:
    ReplyCode = ReplyCodePacket
else:

    def __getattr__(name: str) -> Any:
        if name != "ReplyCode":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        warn_renamed(
            "milterkit.protocol.ReplyCode",
            "milterkit.protocol.ReplyCodePacket (the SMFIR_REPLYCODE packet; a callback "
            "returns milterkit.ReplyCode)",
        )
        return ReplyCodePacket
