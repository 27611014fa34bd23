"""The user-facing API: subclass :class:`Milter`, override the callbacks you need.

One instance serves one MTA connection, so ``self`` holds connection state.
Each callback may be a plain function or ``async``; it returns a decision
(:class:`Continue`, :class:`Accept`, :class:`Reject`, :class:`TempFail`,
:class:`Discard`, :class:`Skip`, :class:`ReplyCode`) or ``None`` for continue.

Callbacks the class does not override are never requested from the MTA
(negotiation sets the matching ``SMFIP_NO*`` bit), which saves a round trip
per step. Actions (header and envelope changes, body replacement,
quarantine) may be called at any stage; they are checked against what the MTA
granted at once, queued, and sent at end of message in the order called.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar

from milterkit.protocol import messages as msg
from milterkit.protocol.constants import Action, Family, MacroStage, ProtocolFlag
from milterkit.protocol.errors import LocalProtocolError
from milterkit.protocol.macros import MacroStore
from milterkit.protocol.negotiate import Negotiated, describe_actions

if TYPE_CHECKING:
    from milterkit.session import MilterSession

Continue = msg.Continue
Accept = msg.Accept
Reject = msg.Reject
TempFail = msg.TempFail
Discard = msg.Discard
Skip = msg.Skip


@dataclass(frozen=True, slots=True)
class ReplyCode:
    """A custom SMTP reply: ``ReplyCode(550, "go away", "5.7.1")``.

    ``text`` may hold several lines (a list, or newlines) for a multi-line
    reply. ``%`` is escaped for the MTA. A 4xx code tempfails, a 5xx rejects.
    """

    code: int
    text: str | list[str]
    enhanced: str | None = None

    def to_message(self) -> msg.ReplyCode:
        return msg.ReplyCode.build(self.code, self.text, self.enhanced)


Decision = (
    msg.Continue | msg.Accept | msg.Reject | msg.TempFail | msg.Discard | msg.Skip | ReplyCode
)

#: What a decision callback may return: a decision, None (continue), or, from an
#: ``async def`` callback, an awaitable of either.
CallbackResult = Decision | None | Awaitable[Decision | None]

#: Callback name → the ``SMFIP_NO*`` bit that turns the step off when not overridden.
CALLBACK_NO_FLAG: dict[str, ProtocolFlag] = {
    "connect": ProtocolFlag.NOCONNECT,
    "helo": ProtocolFlag.NOHELO,
    "mail_from": ProtocolFlag.NOMAIL,
    "rcpt_to": ProtocolFlag.NORCPT,
    "data": ProtocolFlag.NODATA,
    "header": ProtocolFlag.NOHDRS,
    "end_of_headers": ProtocolFlag.NOEOH,
    "body": ProtocolFlag.NOBODY,
    "unknown": ProtocolFlag.NOUNKNOWN,
}
CALLBACK_NR_FLAG: dict[str, ProtocolFlag] = {
    "connect": ProtocolFlag.NR_CONN,
    "helo": ProtocolFlag.NR_HELO,
    "mail_from": ProtocolFlag.NR_MAIL,
    "rcpt_to": ProtocolFlag.NR_RCPT,
    "data": ProtocolFlag.NR_DATA,
    "header": ProtocolFlag.NR_HDR,
    "end_of_headers": ProtocolFlag.NR_EOH,
    "body": ProtocolFlag.NR_BODY,
    "unknown": ProtocolFlag.NR_UNKN,
}

#: Milter.wanted_protocol per (class, collect_body, leading_space).
_WANTED_PROTOCOL: dict[tuple[type, bool, bool], ProtocolFlag] = {}

STAGE_NAMES: dict[str, MacroStage] = {
    "connect": MacroStage.CONNECT,
    "helo": MacroStage.HELO,
    "mail": MacroStage.ENVFROM,
    "envfrom": MacroStage.ENVFROM,
    "rcpt": MacroStage.ENVRCPT,
    "envrcpt": MacroStage.ENVRCPT,
    "data": MacroStage.DATA,
    "eom": MacroStage.EOM,
    "end_of_message": MacroStage.EOM,
    "eoh": MacroStage.EOH,
    "end_of_headers": MacroStage.EOH,
}


def text(value: bytes) -> str:
    """Wire bytes as str; surrogateescape keeps every byte, so ``.encode`` restores it."""
    return value.decode("utf-8", "surrogateescape")


def wire(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


class MacroView(Mapping[str, str]):
    """Read-only ``str`` view of the macros in force; ``x`` and ``{x}`` are the same name."""

    __slots__ = ("_store",)

    def __init__(self, store: MacroStore) -> None:
        self._store = store

    def __getitem__(self, name: str) -> str:
        value = self._store.lookup(name)
        if value is None:
            raise KeyError(name)
        return text(value)

    def __iter__(self) -> Iterator[str]:
        return (text(k) for k in self._store)

    def __len__(self) -> int:
        return len(self._store)

    def raw(self, name: str | bytes) -> bytes | None:
        return self._store.lookup(name)


class ActionNotNegotiatedError(LocalProtocolError):
    """An action was used that the negotiation did not grant."""


class Milter:
    """Base class of a milter; override the callbacks you need.

    Class attributes configure negotiation:

    * ``actions``: the :class:`Action` bits the milter may use;
    * ``macros``: at class level, the macros to request per stage, e.g.
      ``{"mail": ["{auth_authen}"]}`` (stages: connect, helo, mail, rcpt, data,
      eoh, eom). On an instance, ``self.macros`` is the live mapping of values;
    * ``leading_space``: ask for header values verbatim (``SMFIP_HDR_LEADSPC``);
    * ``version``: the highest protocol version to speak (6).

    Per-message resource limits (``None`` turns one off; see docs/reliability.md).
    Going over one logs a line naming the limit and answers the session's error
    decision (tempfail by default); the milter's callbacks are not called again
    for that message:

    * ``max_headers``: headers per message (1000);
    * ``max_header_bytes``: names plus values of all headers of a message (1 MiB);
    * ``collect_body``: keep the body for ``end_of_message`` as :attr:`body_file`
      (a file rewound to the start) / :attr:`body_bytes`; chunks are spooled to
      an anonymous temporary file (in ``body_spool_dir``) past
      ``body_memory_limit`` bytes (1 MiB), so memory per session stays bounded;
    * ``max_body_bytes``: body bytes collected per message (64 MiB; only with
      ``collect_body``).
    """

    actions: ClassVar[Action] = Action.NONE
    macros: Mapping[str, Any] = {}
    leading_space: ClassVar[bool] = False
    version: ClassVar[int] = 6
    max_headers: ClassVar[int | None] = 1000
    max_header_bytes: ClassVar[int | None] = 1024 * 1024
    collect_body: ClassVar[bool] = False
    body_memory_limit: ClassVar[int] = 1024 * 1024
    max_body_bytes: ClassVar[int | None] = 64 * 1024 * 1024
    body_spool_dir: ClassVar[str | None] = None

    _session: MilterSession
    connection_id: str
    log: logging.LoggerAdapter[logging.Logger]

    # ------------------------------------------------------------- negotiation

    @classmethod
    def overridden(cls, name: str) -> bool:
        return getattr(cls, name) is not getattr(Milter, name)

    @classmethod
    def wanted_protocol(cls) -> ProtocolFlag:
        """NO* (and NR_*) bits for every step whose callback is not overridden.

        Asked once per MTA connection: cached per class (and the two class
        settings it reads), because the IntFlag arithmetic costs about 40 µs
        when most steps are off, a tenth of such a milter's CPU per message.
        """
        key = (cls, cls.collect_body, cls.leading_space)
        flags = _WANTED_PROTOCOL.get(key)
        if flags is None:
            flags = _WANTED_PROTOCOL[key] = cls._protocol_bits()
        return flags

    @classmethod
    def _protocol_bits(cls) -> ProtocolFlag:
        flags = ProtocolFlag.NONE
        for name, flag in CALLBACK_NO_FLAG.items():
            if not cls.overridden(name) and not (name == "body" and cls.collect_body):
                flags |= flag | CALLBACK_NR_FLAG[name]
        if cls.overridden("body"):
            flags |= ProtocolFlag.SKIP
        if cls.leading_space:
            flags |= ProtocolFlag.HDR_LEADSPC
        return flags

    @classmethod
    def macro_request(cls) -> dict[int, str]:
        """The class-level ``macros`` as stage id → space-separated names."""
        request: Mapping[Any, Any] = cls.__dict__.get("macros", None) or _inherited_macros(cls)
        out: dict[int, str] = {}
        for stage, names in request.items():
            stage_id = STAGE_NAMES[stage] if isinstance(stage, str) else MacroStage(stage)
            listed = names.split() if isinstance(names, str) else list(names)
            out[int(stage_id)] = " ".join(listed)
        return out

    def negotiate(self, offer: msg.OptNeg) -> msg.OptNeg | None:
        """Override to build the OPTNEG reply yourself; None uses the class settings."""
        return None

    @property
    def negotiated(self) -> Negotiated:
        negotiated = self._session.conn.negotiated
        if negotiated is None:
            raise LocalProtocolError("option negotiation has not happened yet")
        return negotiated

    @property
    def event(self) -> msg.Message | None:
        """The raw protocol message being handled (bytes exactly as received)."""
        return self._session.current_event

    @property
    def body_file(self) -> IO[bytes]:
        """The body collected so far (``collect_body = True``), rewound at end of message.

        Memory-resident up to ``body_memory_limit`` bytes, then a temporary
        file; valid until the message ends (next MAIL, ABORT or close).
        """
        return self._session.body_file()

    @property
    def body_bytes(self) -> bytes:
        """The whole collected body as bytes (reads :attr:`body_file` into memory)."""
        stream = self.body_file
        position = stream.tell()
        stream.seek(0)
        try:
            return stream.read()
        finally:
            stream.seek(position)

    @property
    def body_size(self) -> int:
        """Body bytes collected for the current message."""
        return self._session.body_size

    # --------------------------------------------------------------- callbacks

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> CallbackResult:
        return None

    def helo(self, name: str) -> CallbackResult:
        return None

    def mail_from(self, sender: str, params: list[str]) -> CallbackResult:
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> CallbackResult:
        return None

    def data(self) -> CallbackResult:
        return None

    def header(self, name: str, value: str) -> CallbackResult:
        return None

    def end_of_headers(self) -> CallbackResult:
        return None

    def body(self, chunk: bytes) -> CallbackResult:
        return None

    def end_of_message(self) -> CallbackResult:
        return None

    def unknown(self, command: str) -> CallbackResult:
        return None

    def abort(self) -> Awaitable[None] | None:
        """The MTA abandoned the current message; queued modifications are dropped."""

    def close(self) -> Awaitable[None] | None:
        """The connection is over (QUIT, QUIT_NC or the MTA went away)."""

    # ----------------------------------------------------------------- actions

    def _require(self, action: Action, what: str) -> None:
        if not self.negotiated.actions & action:
            raise ActionNotNegotiatedError(
                f"{what} needs Action.{describe_actions(action)} (SMFIF), which was not "
                f"negotiated; add it to {type(self).__name__}.actions"
            )

    def _queue(self, action: Action, what: str, message: msg.Message) -> None:
        self._require(action, what)
        self._session.pending.append(message)

    def add_header(self, name: str, value: str) -> None:
        self._queue(Action.ADD_HEADERS, "add_header", msg.AddHeader(wire(name), _lf(value)))

    def insert_header(self, index: int, name: str, value: str) -> None:
        self._queue(
            Action.ADD_HEADERS,
            "insert_header",
            msg.InsertHeader(index, wire(name), _lf(value)),
        )

    def change_header(self, name: str, index: int, value: str) -> None:
        """Change the ``index``-th (1-based) header called ``name``; "" deletes it."""
        self._queue(
            Action.CHANGE_HEADERS,
            "change_header",
            msg.ChangeHeader(index, wire(name), _lf(value)),
        )

    def delete_header(self, name: str, index: int = 1) -> None:
        self.change_header(name, index, "")

    def add_recipient(self, address: str, esmtp_args: str | Iterable[str] | None = None) -> None:
        args = _args(esmtp_args)
        if args is None and self.negotiated.actions & Action.ADD_RCPT:
            self._queue(Action.ADD_RCPT, "add_recipient", msg.AddRecipient(wire(address)))
            return
        self._queue(Action.ADD_RCPT_PAR, "add_recipient", msg.AddRecipientPar(wire(address), args))

    def delete_recipient(self, address: str) -> None:
        self._queue(Action.DELETE_RCPT, "delete_recipient", msg.DeleteRecipient(wire(address)))

    def change_from(self, address: str, esmtp_args: str | Iterable[str] | None = None) -> None:
        self._queue(
            Action.CHANGE_FROM, "change_from", msg.ChangeFrom(wire(address), _args(esmtp_args))
        )

    def replace_body(self, body: bytes | BinaryIO) -> None:
        """Replace the whole body; sent in chunks no larger than the negotiated size."""
        self._require(Action.CHANGE_BODY, "replace_body")
        size = self.negotiated.max_data_size
        stream = io.BytesIO(body) if isinstance(body, bytes | bytearray) else body
        first = True
        while True:
            chunk = stream.read(size)
            if not chunk and not first:
                break
            self._session.pending.append(msg.ReplaceBody(chunk))
            first = False
            if len(chunk) < size:
                break

    def quarantine(self, reason: str) -> None:
        if not reason:
            raise LocalProtocolError("quarantine needs a non-empty reason")
        self._queue(Action.QUARANTINE, "quarantine", msg.Quarantine(wire(reason)))

    def progress(self) -> None:
        """Tell the MTA we are still working (sent at once)."""
        self._session.send_now(msg.Progress())


def _inherited_macros(cls: type[Milter]) -> Mapping[Any, Any]:
    for klass in cls.__mro__:
        value = klass.__dict__.get("macros")
        if isinstance(value, Mapping):
            return value
    return {}


def _lf(value: str) -> bytes:
    """Header values travel with LF line breaks; CRLF would become CR CR LF in Postfix."""
    return wire(value).replace(b"\r\n", b"\n")


def _args(esmtp_args: str | Iterable[str] | None) -> bytes | None:
    """ESMTP args of CHGFROM/ADDRCPT_PAR travel as ONE space-separated string."""
    if esmtp_args is None:
        return None
    if isinstance(esmtp_args, str):
        return wire(esmtp_args) if esmtp_args else None
    joined = " ".join(esmtp_args)
    return wire(joined) if joined else None
