"""The user-facing API: subclass :class:`Milter`, override the callbacks you need.

One instance serves one MTA connection, so ``self`` holds connection state.
Each callback may be a plain function or ``async``; it returns a decision
(a :class:`~milterkit.decision.Decision` such as ``Decision.REJECT``, one of
:class:`Continue`, :class:`Accept`, :class:`Reject`, :class:`TempFail`,
:class:`Discard`, :class:`Skip`, or a custom reply :class:`ReplyCode`) or
``None`` for continue.

Callbacks the class does not override are never requested from the MTA
(negotiation sets the matching ``SMFIP_NO*`` bit), which saves a round trip
per step. Actions (header and envelope changes, body replacement,
quarantine) may be called at any step of a message, from ``mail_from()`` to
``end_of_message()``; they are checked against what the MTA granted at once,
queued, and sent at end of message in the order called. Outside a message
(``connect()``, ``helo()``, ``abort()``, ``close()``) they raise
:class:`ActionOutsideMessageError`, as libmilter refuses them there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar

from milterkit._deprecation import change_header_args, insert_header_args, warn_renamed
from milterkit.context import MilterContext
from milterkit.decision import Decision
from milterkit.headers import HeaderEdit, plan_header_edits
from milterkit.protocol import messages as msg
from milterkit.protocol.constants import Action, Family, MacroStage, ProtocolFlag
from milterkit.protocol.errors import LocalProtocolError
from milterkit.protocol.macros import DEFAULT_MAX_MACRO_BYTES, DEFAULT_MAX_MACROS, MacroStore
from milterkit.protocol.negotiate import Negotiated, describe_flags
from milterkit.protocol.steps import STEPS
from milterkit.protocol.text import text, wire
from milterkit.runtime.execution import current_scope

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
    reply. ``%`` is escaped for the MTA. A 4xx code tempfails, a 5xx rejects
    (:attr:`decision`). On the wire it becomes a
    :class:`~milterkit.protocol.ReplyCodePacket`.
    """

    code: int
    text: str | list[str]
    enhanced: str | None = None

    @property
    def decision(self) -> Decision:
        """What the reply decides: TEMPFAIL for a 4xx code, REJECT for a 5xx."""
        return Decision.TEMPFAIL if 400 <= self.code < 500 else Decision.REJECT

    def to_message(self) -> msg.ReplyCodePacket:
        return msg.ReplyCodePacket.build(self.code, self.text, self.enhanced)


#: What a decision callback may answer: a :class:`Decision`, a wire reply such as
#: ``Accept()``, or a custom :class:`ReplyCode`. (The session also takes the reply
#: class itself, ``Accept``, as older milters return it.)
Response = (
    Decision
    | msg.Continue
    | msg.Accept
    | msg.Reject
    | msg.TempFail
    | msg.Discard
    | msg.Skip
    | ReplyCode
)

#: What a decision callback may return: a response, None (continue), or, from an
#: ``async def`` callback, an awaitable of either.
CallbackResult = Response | None | Awaitable[Response | None]

#: Callback name → the ``SMFIP_NO*`` bit that turns the step off when not overridden.
CALLBACK_NO_FLAG: dict[str, ProtocolFlag] = {
    s.callback: s.no_send for s in STEPS if s.no_send and s.callback is not None
}
#: Callback name → the ``SMFIP_NR_*`` bit that makes the step reply-less.
CALLBACK_NR_FLAG: dict[str, ProtocolFlag] = {
    s.callback: s.no_reply for s in STEPS if s.no_reply and s.callback is not None
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

    @property
    def store(self) -> MacroStore:
        """The connection's MacroStore; set its ``observer`` to see each MACRO packet."""
        return self._store


class _MacroRequest:
    """``Milter.macros``: the class's macro request; on an instance, the old spelling
    of :attr:`Milter.macro_values`, which warns (reads and writes alike: tests used
    to set ``milter.macros`` to fake the MTA's values)."""

    def __get__(self, instance: Milter | None, owner: type[Milter]) -> Mapping[Any, Any]:
        if instance is None:
            return owner._macro_request
        warn_renamed("self.macros (the macro values)", "self.macro_values", stacklevel=3)
        return instance.macro_values

    def __set__(self, instance: Milter, values: Any) -> None:
        warn_renamed("setting self.macros", "self.macro_values", stacklevel=3)
        instance.macro_values = values


class ActionNotNegotiatedError(LocalProtocolError):
    """An action was used that the negotiation did not grant."""


class BodyNotCollectedError(RuntimeError):
    """body_bytes/body_file/body_size was read by a milter without ``collect_body = True``."""


class ActionOutsideMessageError(LocalProtocolError):
    """A modification was requested outside a message (connect(), helo(), abort() ...)."""


#: The callback that handles each event, for errors naming the stage.
_STAGE_OF_EVENT: dict[type, str] = {
    msg.OptNeg: "negotiate()",
    msg.Connect: "connect()",
    msg.Helo: "helo()",
    msg.Unknown: "unknown()",
    msg.Abort: "abort()",
    msg.Quit: "close()",
    msg.QuitNoClose: "close()",
    msg.EndOfMessage: "end_of_message() after its reply",
}
_NEVER_IN_MESSAGE = frozenset({msg.OptNeg, msg.Connect, msg.Helo, msg.Abort, msg.Quit})


class Milter:
    """Base class of a milter; override the callbacks you need.

    Class attributes configure negotiation:

    * ``actions``: the :class:`Action` bits the milter may use;
    * ``macros``: the macros to request per stage, e.g.
      ``{"mail": ["{auth_authen}"]}`` (stages: connect, helo, mail, rcpt, data,
      eoh, eom). Their values arrive in :attr:`macro_values` (reading
      ``self.macros`` on an instance for them is deprecated);
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

    How sync callbacks run (docs/running.md, "How callbacks run"):

    * ``execution``: ``"auto"`` (default: inline until a callback is seen to
      take longer than 20 ms, then in the worker's thread pool), ``"inline"``
      or ``"threads"``; the daemon's ``--execution`` setting overrides it;
    * ``blocking_callbacks``: names of callbacks that block (network, disk),
      run in the pool from the first call, like those decorated with
      :func:`blocking`.
    Per-connection macro caps (``None`` turns one off): ``max_macros`` (1000)
    and ``max_macro_bytes`` (256 KiB) bound the macros held at once over all
    stages. Going over one is a protocol violation: the connection is closed
    with a log line naming the cap; the daemon goes on serving the others.
    """

    actions: ClassVar[Action] = Action.NONE
    if TYPE_CHECKING:
        macros: ClassVar[Mapping[Any, Any]] = {}
    else:
        macros = _MacroRequest()
    leading_space: ClassVar[bool] = False
    version: ClassVar[int] = 6
    max_headers: ClassVar[int | None] = 1000
    max_header_bytes: ClassVar[int | None] = 1024 * 1024
    collect_body: ClassVar[bool] = False
    body_memory_limit: ClassVar[int] = 1024 * 1024
    max_body_bytes: ClassVar[int | None] = 64 * 1024 * 1024
    body_spool_dir: ClassVar[str | None] = None
    execution: ClassVar[str | None] = None
    blocking_callbacks: ClassVar[Iterable[str]] = ()
    max_macros: ClassVar[int | None] = DEFAULT_MAX_MACROS
    max_macro_bytes: ClassVar[int | None] = DEFAULT_MAX_MACRO_BYTES

    #: What the session shares with this milter (set by the session that made it).
    _context: MilterContext
    #: The macro request of this class; ``macros`` in the class body lands here.
    _macro_request: ClassVar[Mapping[Any, Any]] = {}
    connection_id: str
    log: logging.LoggerAdapter[logging.Logger]
    #: The values of the macros the MTA has sent so far on this connection, as
    #: ``str``; ``x`` and ``{x}`` name the same macro; ``.raw(name)`` gives bytes.
    macro_values: MacroView

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Move a ``macros = {...}`` request out of the class body into ``_macro_request``.

        ``Milter.macros`` is a descriptor that answers the request on the class
        and, on an instance, the live values with a DeprecationWarning (they
        were ``self.macros`` before ``macro_values``). A plain class attribute
        in a subclass would hide it from instances, so it is moved.
        """
        super().__init_subclass__(**kwargs)
        if "macros" not in cls.__dict__ or isinstance(cls.__dict__["macros"], _MacroRequest):
            return
        request = cls.__dict__["macros"]
        del cls.macros
        if request is not None:  # None inherits the request, as it always did
            cls._macro_request = request

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
        out: dict[int, str] = {}
        for stage, names in cls.macros.items():
            stage_id = STAGE_NAMES[stage] if isinstance(stage, str) else MacroStage(stage)
            listed = names.split() if isinstance(names, str) else list(names)
            out[int(stage_id)] = " ".join(listed)
        return out

    def negotiate(self, offer: msg.OptNeg) -> msg.OptNeg | None:
        """Override to build the OPTNEG reply yourself; None uses the class settings."""
        return None

    @property
    def negotiated(self) -> Negotiated:
        negotiated = self._context.negotiated
        if negotiated is None:
            raise LocalProtocolError("option negotiation has not happened yet")
        return negotiated

    @property
    def event(self) -> msg.Message | None:
        """The raw protocol message being handled (bytes exactly as received)."""
        return self._context.event

    @property
    def body_file(self) -> IO[bytes]:
        """The body collected so far (``collect_body = True``), rewound at end of message.

        Memory-resident up to ``body_memory_limit`` bytes, then a temporary
        file; valid until the message ends (next MAIL, ABORT or close).
        """
        self._require_collected("body_file")
        return self._context.body_file()

    @property
    def body_bytes(self) -> bytes:
        """The whole collected body as bytes (reads :attr:`body_file` into memory)."""
        self._require_collected("body_bytes")
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
        self._require_collected("body_size")
        return self._context.body_size

    def _require_collected(self, what: str) -> None:
        """Without collect_body there is no body to read: an empty one would pass all mail."""
        if not type(self).collect_body:
            raise BodyNotCollectedError(
                f"{what} needs collect_body = True on {type(self).__name__} (the body is not "
                "kept otherwise; body() receives it chunk by chunk)"
            )

    # ------------------------------------------------------- worker lifecycle

    @classmethod
    def setup(cls) -> Awaitable[None] | None:
        """Once per worker process, after the fork and the privilege drop, before serving.

        Open what the connections of the worker share (a database pool, an HTTP
        session) here, as class attributes; may be ``async``. An exception stops
        the daemon with a one-line error instead of failing every connection.
        """
        return None

    @classmethod
    def teardown(cls) -> Awaitable[None] | None:
        """Once per worker process, after its drain: close what :meth:`setup` opened."""
        return None

    # --------------------------------------------------------------- callbacks
    # Each returns a decision or None (continue); each may be ``async def``. A
    # plain ``def`` that blocks is safe: see ``execution`` and :func:`blocking`.

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> CallbackResult:
        """An SMTP client connected: its host name (or ``[ip]``), the address family
        (``Family.INET``, ``INET6``, ``UNIX`` or ``UNKNOWN``), its address and port
        (None when the MTA does not know them)."""
        return None

    def helo(self, name: str) -> CallbackResult:
        """The client said HELO/EHLO ``name`` (may come again, e.g. after STARTTLS)."""
        return None

    def mail_from(self, sender: str, params: list[str]) -> CallbackResult:
        """MAIL FROM: ``sender`` as given (with angle brackets) and its ESMTP parameters
        (``["SIZE=1234", "BODY=8BITMIME"]``). A new message starts here."""
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> CallbackResult:
        """RCPT TO, once per recipient; a rejection here refuses this recipient only."""
        return None

    def data(self) -> CallbackResult:
        """The client sent DATA (protocol v4 and later)."""
        return None

    def header(self, name: str, value: str) -> CallbackResult:
        """One header field of the message, in order; ``value`` without the line break
        (and, unless ``leading_space`` is set, without the space after the colon)."""
        return None

    def end_of_headers(self) -> CallbackResult:
        """All headers have been sent."""
        return None

    def body(self, chunk: bytes) -> CallbackResult:
        """A piece of the body (CRLF line ends, up to the negotiated size); return
        ``Skip`` to receive no more of it. Set ``collect_body`` to get it whole."""
        return None

    def end_of_message(self) -> CallbackResult:
        """The message is complete: the one place where actions reach the MTA, and
        where :attr:`body_file` holds the collected body. Return the final decision."""
        return None

    def unknown(self, command: str) -> CallbackResult:
        """The client sent an SMTP command the MTA does not know (``command`` verbatim)."""
        return None

    def abort(self) -> Awaitable[None] | None:
        """The MTA abandoned the current message; queued modifications are dropped."""

    def close(self) -> Awaitable[None] | None:
        """The connection is over (QUIT, QUIT_NC or the MTA went away)."""

    # ----------------------------------------------------------------- actions

    def _require(self, action: Action, what: str) -> None:
        scope = current_scope()
        if scope is not None and not scope.live:
            return  # a pooled call past its timeout: its actions are dropped, not checked
        context = self._context
        event = type(context.event)
        if event in _NEVER_IN_MESSAGE or not context.in_message:
            stage = _STAGE_OF_EVENT.get(event, "outside a message")
            raise ActionOutsideMessageError(
                f"{what}() called in {stage}: modifications belong to one message and may "
                "only be requested from mail_from() (or the first message step) to "
                "end_of_message()"
            )
        if not int(self.negotiated.actions) & int(action):  # ints: no IntFlag.__and__ per call
            raise ActionNotNegotiatedError(
                f"{what} needs Action.{describe_flags(action, Action)} (SMFIF), which was not "
                f"negotiated; add it to {type(self).__name__}.actions"
            )

    def _queue(self, action: Action, what: str, message: msg.Message) -> None:
        self._require(action, what)
        self._pending().append(message)

    def _pending(self) -> list[msg.Message]:
        """Where an action goes: the session's list, or the pooled call's own.

        A callback running in the thread pool queues into its call scope, which
        the session applies when the call returns in time, and drops otherwise.
        """
        scope = current_scope()
        return self._context.pending if scope is None else scope.actions

    # The header edits all take (name, value, where): the position comes last, so
    # it can default where one is usual. The old (index, name, value) order of
    # insert_header and (name, index, value) of change_header still work, with a
    # DeprecationWarning (an int where the name or value belongs tells them apart).

    def add_header(self, name: str, value: str) -> None:
        """Append header ``name: value`` after the last header (needs ``ADD_HEADERS``)."""
        self._queue(Action.ADD_HEADERS, "add_header", msg.AddHeader(wire(name), _lf(value)))

    def insert_header(self, name: str, value: str, index: int) -> None:
        """Insert header ``name: value`` at position ``index`` (0 is the top; needs
        ``ADD_HEADERS``). The MTA counts its own ``Received:``, which the milter never
        sees, so 0 goes above it; see docs/mta-setup.md."""
        name, value, index = insert_header_args(name, value, index, what="insert_header")
        self._queue(
            Action.ADD_HEADERS,
            "insert_header",
            msg.InsertHeader(index, wire(name), _lf(value)),
        )

    def change_header(self, name: str, value: str, index: int = 1) -> None:
        """Set the ``index``-th (from 1) header called ``name`` to ``value``; "" deletes
        it (needs ``CHANGE_HEADERS``)."""
        name, value, index = change_header_args(name, value, index, what="change_header")
        self._queue(
            Action.CHANGE_HEADERS,
            "change_header",
            msg.ChangeHeader(index, wire(name), _lf(value)),
        )

    def delete_header(self, name: str, index: int = 1) -> None:
        """Delete the ``index``-th (from 1) header called ``name`` (needs ``CHANGE_HEADERS``)."""
        self.change_header(name, "", index)

    def rewrite_headers(
        self, current: Sequence[tuple[str, str]], wanted: Sequence[tuple[str, str]]
    ) -> list[HeaderEdit]:
        """Make the message's headers ``wanted``: the index-correct change, delete, insert
        and add calls are computed (:func:`milterkit.headers.plan_header_edits`) and queued.

        ``current`` is the headers as :meth:`header` received them, in order. Returns
        the planned edits (for logging).
        """
        edits = plan_header_edits(current, wanted)
        for edit in edits:
            if edit.kind == "add":
                self.add_header(edit.name, edit.value)
            elif edit.kind == "insert":
                self.insert_header(edit.name, edit.value, edit.index)
            else:
                self.change_header(edit.name, edit.value, edit.index)
        return edits

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
        """Replace the whole body; sent in chunks no larger than the negotiated size.

        Several calls append, as ``smfi_replacebody`` does. All REPLBODY packets
        go out as one run, even with other modifications called in between:
        Postfix refuses REPLBODY once another reply came after one. A stream is
        read to its end (short reads of a pipe or socket file do not end it);
        if reading it raises, nothing of it is queued.
        """
        self._require(Action.CHANGE_BODY, "replace_body")
        pending = self._pending()
        at = _after_last_body_chunk(pending)
        pending[at:at] = msg.replace_body_chunks(body, self.negotiated.max_data_size)

    def quarantine(self, reason: str) -> None:
        if not reason:
            raise LocalProtocolError("quarantine needs a non-empty reason")
        self._queue(Action.QUARANTINE, "quarantine", msg.Quarantine(wire(reason)))

    def progress(self) -> None:
        """Tell the MTA we are still working; sent at once, from sync or async code.

        From a callback running in the thread pool the packet is handed to the
        event loop; it is dropped if the call has already timed out.
        """
        scope = current_scope()
        if scope is None:
            self._context.progress()
        else:
            scope.progress(scope)


F = TypeVar("F", bound=Callable[..., Any])


def blocking(function: F) -> F:
    """Declare a sync callback blocking: it runs in the worker's thread pool from its
    first call (``auto`` mode would otherwise learn it from one slow call)."""
    function.__milterkit_blocking__ = True  # type: ignore[attr-defined]
    return function


def _after_last_body_chunk(pending: list[msg.Message]) -> int:
    """Where the next REPLBODY goes: after the last one queued, else at the end."""
    for pos in range(len(pending) - 1, -1, -1):
        if isinstance(pending[pos], msg.ReplaceBody):
            return pos + 1
    return len(pending)


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
