"""MilterSession: one Milter instance driven over one FilterConnection.

The session is the glue between bytes and callbacks, shared by the socket
server and the in-memory harness. It runs synchronous callbacks inline, so a
plain milter costs no task switch per packet; only when a callback returns an
awaitable does :meth:`data_received` hand back a coroutine, and the caller
(the server pauses reading meanwhile) awaits it and calls :meth:`resume`.

The session does no I/O. Like h11's ``send()``, it hands back the bytes to
send: the replies an input produced queue up, and the caller takes them with
:meth:`data_to_send` after :meth:`data_received`, :meth:`resume` or an awaited
coroutine, all of one read in one write (modifications and the final reply at
end of message, replies to pipelined commands), so TCP sees one segment
instead of several small ones. PROGRESS sent while a callback works must not
wait for the callback: the session then calls ``on_output``, and the caller
takes the bytes at once.

The session makes the inline call of a sync callback itself, as that is the
per-packet path of most milters. Anything involving time or another thread (a
call handed to the worker's pool, an awaitable a callback returned, the
callback timeout, the keepalive PROGRESS, the answer when a call runs out of
time or is interrupted) is runtime, in
:class:`~milterkit.runtime.callbacks.CallbackPolicy`, and the coroutines
handed back come from there.

What the milter sees of the connection lives in a
:class:`~milterkit.context.MilterContext`, which has no reference back to the
session.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from milterkit._logging import SessionLogger
from milterkit.context import MilterContext
from milterkit.decision import Decision
from milterkit.milter import CALLBACK_NO_FLAG, MacroView, Milter, ReplyCode
from milterkit.protocol import messages as msg
from milterkit.protocol.constants import Command, ProtocolFlag
from milterkit.protocol.errors import LocalProtocolError, ProtocolError
from milterkit.protocol.events import NEED_DATA, ConnectionClosed
from milterkit.protocol.filter import FilterConnection
from milterkit.protocol.negotiate import Negotiated, build_filter_reply
from milterkit.protocol.text import text
from milterkit.runtime.callbacks import CallbackPolicy
from milterkit.runtime.execution import CallbackInterrupted, CallbackRunner, ExecutionSettings

#: The wire reply for each Decision a callback may return. SHUTDOWN maps to its
#: packet so that the protocol layer refuses it with its own reason; NOREPLY is
#: absent (answering nothing would leave the MTA waiting).
DECISION_REPLIES: dict[Decision, msg.Message] = {
    Decision.CONTINUE: msg.Continue(),
    Decision.ACCEPT: msg.Accept(),
    Decision.REJECT: msg.Reject(),
    Decision.TEMPFAIL: msg.TempFail(),
    Decision.DISCARD: msg.Discard(),
    Decision.SKIP: msg.Skip(),
    Decision.SHUTDOWN: msg.Shutdown(),
}

Pending = Coroutine[Any, Any, None]
_CONTINUE = msg.Continue()
# Performance: read per reply (an enum member lookup costs about 80 ns on Python 3.11).
_BODYEOB = Command.BODYEOB


if TYPE_CHECKING:
    from milterkit.runtime.observe import Observer, RecordBuilder


class MilterSession:
    """Serves one MTA connection with instances made by ``factory``.

    ``settings`` carries the daemon's callback settings (error decision,
    timeouts, keepalive, execution mode); ``runner`` is the worker's thread pool
    and routing table (None: every callback runs inline, as in the harness
    without one). Replies queue up until :meth:`data_to_send` takes them;
    ``on_output`` is called when queued bytes must leave at once (PROGRESS
    while a callback works), after anything queued before them.
    """

    def __init__(
        self,
        factory: Callable[[], Milter],
        *,
        connection_id: str = "-",
        logger: logging.Logger | None = None,
        settings: ExecutionSettings | None = None,
        runner: CallbackRunner | None = None,
        on_output: Callable[[], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        # Performance: CPython 3.11 keeps an instance's attributes in a shared-key
        # dict of at most 30 keys; past that every attribute read on the per-packet
        # path gets slower (about 3 % of the session's instructions per message,
        # benchmarks/instructions.py). The session has 29: count before adding one.
        settings = settings or _DEFAULT_SETTINGS
        self.conn = FilterConnection()
        self.closed = False
        #: A protocol error was raised from data_received: the input is garbage.
        self.broken = False
        #: Exceptions raised by callbacks (answered with the error decision), oldest
        #: first; the harness's ``reraise=True`` raises them in the test.
        self.callback_errors: list[BaseException] = []
        self.connection_id = connection_id
        self.log = SessionLogger(logger or logging.getLogger("milterkit"), {"conn": connection_id})
        self._factory = factory
        # The bytes to send, oldest first, until data_to_send() takes them.
        self._out: list[bytes] = []
        self._on_output = on_output
        self._runner = runner
        # ExecutionSettings has checked it is one of ERROR_DECISIONS
        decision = settings.error_decision
        self._error_decision = decision if type(decision) is Decision else Decision(decision)
        self._error_reply = DECISION_REPLIES[self._error_decision]
        # Pooled and awaited calls, timeouts, keepalive: runtime/callbacks.py.
        self._calls = (
            _DEFAULT_POLICY
            if settings is _DEFAULT_SETTINGS and runner is None
            else CallbackPolicy(settings, runner)
        )
        # Inline sync calls that ran this long are handed to it (auto switch, timeout).
        self._watch_after = self._calls.watch_after
        # Per-message resource accounting (limits: Milter class attributes).
        self._headers = 0
        self._header_bytes = 0
        self._over_limit: str | None = None
        self._skipping_body = False
        #: Messages answered at end of message (a drain closes idle sessions only after one).
        self.messages_done = 0
        # observe: per-message records for logs/metrics (None: nothing recorded)
        self.record: RecordBuilder | None = None
        if observer is not None:
            from milterkit.runtime.observe import RecordBuilder  # runtime imports this module

            self.record = RecordBuilder(connection_id, observer)
        self.milter = self._new_milter()

    def _new_milter(self) -> Milter:
        milter = self._factory()
        cls = type(milter)
        # No link back to the session: session -> milter -> context is no cycle.
        self.context = MilterContext(
            self.conn,
            self._out,
            self._on_output,
            body_memory_limit=cls.body_memory_limit,
            body_spool_dir=cls.body_spool_dir,
        )
        #: The context's list of queued modifications (the same list, read per callback).
        self.pending = self.context.pending
        milter._context = self.context
        milter.connection_id = self.connection_id
        milter.log = self.log
        milter.macro_values = MacroView(self.conn.macros)
        self._overridden = _overridden_callbacks(cls)
        runner = self._runner
        self._pooled = (
            _INLINE if runner is None else runner.routes(cls, _DECISION_CALLBACKS, cls.overridden)
        )
        self._max_headers = cls.max_headers
        self._max_header_bytes = cls.max_header_bytes
        self._collect_body = cls.collect_body
        self._max_body_bytes = cls.max_body_bytes
        self.conn.macros.max_macros = cls.max_macros
        self.conn.macros.max_macro_bytes = cls.max_macro_bytes
        return milter

    # ------------------------------------------------------------- limits

    def _new_message(self) -> None:
        """Forget the per-message accounting, modifications and collected body."""
        self._headers = self._header_bytes = 0
        self._over_limit = None
        self._skipping_body = False
        self.context.new_message()

    def _exceeded(self, what: str) -> Pending | None:
        """A per-message limit was crossed: log once, answer the error decision."""
        if self._over_limit is None:
            self._over_limit = what
            self.log.warning(
                "message over a limit: %s; answering %s for it", what, self._error_name()
            )
        return self._refuse()

    def _refuse(self) -> Pending | None:
        """Answer a command of an over-limit message without calling the milter."""
        self._reply(self._error_reply, failed=True)
        return None

    # ----------------------------------------------------------------- driving

    def data_received(self, data: bytes) -> Pending | None:
        """Feed bytes; returns a coroutine to await when a callback went async."""
        self.conn.receive_data(data)
        try:
            return self.resume()
        except ProtocolError:
            self.broken = True  # reported by the caller; connection_lost must not re-parse
            raise

    def connection_lost(self) -> Pending | None:
        """The MTA closed its end; runs abort/close callbacks."""
        if self.closed:
            return None
        if self.broken:
            return self._on_eof()
        self.conn.receive_data(b"")
        try:
            return self.resume()
        except ProtocolError as exc:
            # e.g. the MTA hung up inside a packet: still a lost connection, so
            # the milter gets its abort/close callbacks, and the log says why.
            self.log.warning("MTA went away: %s: %s", type(exc).__name__, str(exc))
            if self.closed:
                return None
            return self._on_eof()

    def buffer_data(self, data: bytes) -> None:
        """Keep bytes that arrived while a callback runs, for :meth:`resume` to process."""
        self.conn.receive_data(data)

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call (b"" if none): send them in one write."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def buffered(self) -> int:
        """Bytes received but not processed yet (part of a packet, or input held
        back while a callback runs)."""
        return self.conn.buffered

    @property
    def negotiated(self) -> Negotiated | None:
        """What option negotiation agreed on; None before it."""
        return self.conn.negotiated

    @property
    def in_message(self) -> bool:
        """Between MAIL (or the first message step) and end of message or abort."""
        return self.conn.in_message

    @property
    def awaiting_reply(self) -> bool:
        """The MTA waits for an answer to the command being handled."""
        return self.conn.awaiting is not None

    def resume(self) -> Pending | None:
        """Process buffered events until more data is needed or a callback suspends."""
        # Performance: look the handler up first; only when there is none is the
        # event NEED_DATA or ConnectionClosed (two isinstance checks fewer per packet).
        conn = self.conn
        while not self.closed:
            event = conn.next_event()
            handler = _DISPATCH.get(type(event))
            if handler is None:
                if event is NEED_DATA:
                    return None
                if isinstance(event, ConnectionClosed):
                    return self._on_eof()
                assert isinstance(event, msg.Message)
                handler = _DISPATCH[type(event)]
            self.context.event = event  # type: ignore[assignment]
            if self.record is not None:  # observe
                self.record.event(event, conn.macros)  # type: ignore[arg-type]
            pending = handler(self, event)
            if pending is not None:
                return pending
        return None

    # --------------------------------------------------------------- callbacks

    def _call(self, name: str, *args: Any) -> Pending | None:
        """Run a decision callback and reply with what it returns."""
        if not self._overridden[name]:
            self._reply(_CONTINUE)
            return None
        function = getattr(self.milter, name)
        if self._pooled[name]:
            return self._calls.run_pooled(self, name, function, args)
        runner = self._runner
        mark = len(self.pending)
        started = time.perf_counter()
        try:
            try:  # CallbackInterrupted may come from here until runner.current is None
                if runner is not None:
                    runner.current = (self.connection_id, name)
                result = function(*args)
            finally:
                if runner is not None:
                    runner.current = None
                elapsed = time.perf_counter() - started
        except CallbackInterrupted:
            self._calls.interrupted(self, name, time.perf_counter() - started, mark)
            return None
        except Exception as exc:
            self.callback_raised(name, exc)
            return None
        if elapsed >= self._watch_after and self._calls.ran_long(self, name, elapsed, mark):
            return None
        if result is None:
            # Performance: the common answer; what reply_decision and _reply do for
            # None (continue, or nothing under an NR flag) before end of message,
            # without their checks and calls.
            conn = self.conn
            awaiting = conn.awaiting
            if awaiting is not None and awaiting != _BODYEOB and self.record is None:
                self._out.append(conn.send(_CONTINUE))
            else:
                self._reply(_CONTINUE)
            return None
        # Performance: a decision is answered without inspect.isawaitable (a
        # Python-level function); anything else may be an awaitable.
        if (
            type(result) is not Decision
            and not isinstance(result, msg.Message)
            and inspect.isawaitable(result)
        ):
            return self._calls.await_decision(self, name, result, mark)
        self.reply_decision(name, result)
        return None

    def _notify(self, name: str) -> Pending | None:
        """Run abort/close, which answer nothing (in the pool when routed there)."""
        function = getattr(self.milter, name)
        if self._pooled.get(name, False):
            return self._calls.run_notify_pooled(self, name, function)
        runner = self._runner
        started = time.perf_counter()
        try:
            try:  # as in _call: CallbackInterrupted may come until runner.current is None
                if runner is not None:
                    runner.current = (self.connection_id, name)
                result = function()
            finally:
                if runner is not None:
                    runner.current = None
        except CallbackInterrupted:
            self._calls.interrupted(self, name, time.perf_counter() - started, len(self.pending))
            return None
        except Exception as exc:
            self.callback_errors.append(exc)
            self.log.exception("callback %s raised", name)
            return None
        if result is not None and inspect.isawaitable(result):
            return self._calls.await_notify(self, name, result)
        return None

    # ----------------------------------------------------------------- replies

    def reply_decision(self, name: str, result: Any) -> None:
        """Reply with what a callback returned (also from runtime/callbacks.py, once awaited)."""
        if self.conn.awaiting is None:
            if result is not None and not _is_continue(result):
                self.log.warning(
                    "callback %s returned %r but the MTA expects no reply here (NR flag)",
                    name,
                    result,
                )
            return
        try:
            message = _decision_message(result)
        except (TypeError, LocalProtocolError) as exc:
            self.log.error("callback %s returned an unusable decision: %s", name, exc)
            self._reply(self._error_reply, failed=True)
            return
        if type(message) is msg.Skip and self._skip_unoffered():
            message = _CONTINUE  # an MTA without SKIP: continue; body() is not called again
        self._reply(message)

    def _skip_unoffered(self) -> bool:
        """SKIP from body() and the MTA did not offer SKIP: remember to skip the body here."""
        negotiated = self.conn.negotiated
        if self.conn.awaiting != Command.BODY or negotiated is None:
            return False
        self._skipping_body = not negotiated.protocol & ProtocolFlag.SKIP
        return self._skipping_body

    def _reply(self, message: msg.Message, *, failed: bool = False) -> None:
        """Send the reply for the current event; at EOM, modifications go first."""
        awaiting = self.conn.awaiting
        if awaiting is None:
            return
        at_eom = awaiting == _BODYEOB
        batch = [*self.pending, message] if at_eom and not failed else None
        if self.record is not None:  # observe: before send(), which forgets the message macros
            self.record.replied(message, self.pending if batch is not None else ())
        if at_eom:
            self.messages_done += 1
            self._new_message()  # not only on MAIL/ABORT: with NOMAIL no MAIL comes
        try:
            # one reply (all but EOM): send() directly, no list to build and join
            self._out.append(
                self.conn.send(message) if batch is None else self.conn.send_all(batch)
            )
        except LocalProtocolError as exc:
            if failed:
                raise
            self.log.error("cannot send %s: %s; answering %s", message, exc, self._error_name())
            self._reply(self._error_reply, failed=True)

    def _error_name(self) -> str:
        return self._error_decision.value

    def observe_error(self, kind: str) -> None:
        """Count a callback error (one of observe.ERROR_KINDS) in the message's record."""
        if self.record is not None:  # observe
            self.record.error(kind)

    def callback_raised(self, name: str, exc: Exception) -> None:
        """A callback raised: keep it for the harness, log it, answer the error decision."""
        self.callback_errors.append(exc)
        self.log.exception("callback %s raised; answering %s", name, self._error_name())
        self.observe_error("callback_raised")
        self._reply(self._error_reply, failed=True)

    def answer_error_and_close(self) -> None:
        """A call was given up on (timeout, interrupt): the error decision, then close."""
        self._reply(self._error_reply, failed=True)
        self.closed = True

    # --------------------------------------------------------------- dispatch

    def _on_optneg(self, event: msg.OptNeg) -> Pending | None:
        cls = type(self.milter)
        protocol, macros = cls.wanted_protocol(), cls.macro_request()
        try:
            reply = self.milter.negotiate(event) or build_filter_reply(
                event, version=cls.version, actions=cls.actions, protocol=protocol, macros=macros
            )
            self._out.append(self.conn.send(reply))
            _warn_unoffered_leadspc(self.log, event, reply)
        except LocalProtocolError as exc:
            self.log.error("negotiation failed, closing the connection: %s", exc)
            self.closed = True
        return None

    def _on_connect(self, event: msg.Connect) -> Pending | None:
        address = event.bare_address
        return self._call(
            "connect",
            text(event.hostname),
            event.family,
            None if address is None else text(address),
            event.port,
        )

    def _on_helo(self, event: msg.Helo) -> Pending | None:
        return self._call("helo", text(event.name))

    def _on_mail(self, event: msg.Mail) -> Pending | None:
        self._new_message()
        return self._call("mail_from", text(event.sender), [text(a) for a in event.args])

    def _on_rcpt(self, event: msg.Rcpt) -> Pending | None:
        return self._call("rcpt_to", text(event.recipient), [text(a) for a in event.args])

    def _on_data(self, event: msg.Data) -> Pending | None:
        return self._call("data")

    def _on_header(self, event: msg.Header) -> Pending | None:
        self._headers += 1
        self._header_bytes += len(event.name) + len(event.value)
        if self._over_limit is not None:
            return self._refuse()
        if self._max_headers is not None and self._headers > self._max_headers:
            return self._exceeded(f"more than max_headers={self._max_headers} headers")
        if self._max_header_bytes is not None and self._header_bytes > self._max_header_bytes:
            return self._exceeded(
                f"headers larger than max_header_bytes={self._max_header_bytes} bytes"
            )
        # text() inlined: ten headers per message
        return self._call(
            "header",
            event.name.decode("utf-8", "surrogateescape"),
            event.value.decode("utf-8", "surrogateescape"),
        )

    def _on_eoh(self, event: msg.EndOfHeaders) -> Pending | None:
        if self._over_limit is not None:
            return self._refuse()
        return self._call("end_of_headers")

    def _on_body(self, event: msg.Body) -> Pending | None:
        if self._over_limit is not None:
            return self._refuse()
        if self._skipping_body:
            self._reply(_CONTINUE)
            return None
        if self._collect_body:
            context = self.context
            size = context.body_size + len(event.chunk)
            if self._max_body_bytes is not None and size > self._max_body_bytes:
                return self._exceeded(
                    f"body larger than max_body_bytes={self._max_body_bytes} bytes"
                )
            context.body_file().write(event.chunk)
            context.body_size = size
        return self._call("body", event.chunk)

    def _on_eom(self, event: msg.EndOfMessage) -> Pending | None:
        if self._over_limit is not None:
            return self._refuse()
        self.context.rewind_body()
        return self._call("end_of_message")

    def _on_unknown(self, event: msg.Unknown) -> Pending | None:
        return self._call("unknown", text(event.command))

    def _on_abort(self, event: msg.Abort) -> Pending | None:
        self._new_message()
        return self._notify("abort")

    def _on_quit(self, event: msg.Quit) -> Pending | None:
        self._new_message()
        self.closed = True
        return self._notify("close")

    def _on_quit_nc(self, event: msg.QuitNoClose) -> Pending | None:
        self._new_message()
        pending = self._notify("close")
        self.milter = self._new_milter()
        return pending

    def _on_eof(self) -> Pending | None:
        self.closed = True
        if self.record is not None:  # observe
            self.record.eof()
        self._new_message()
        if not self.conn.in_message:
            return self._notify("close")
        aborting = self._notify("abort")
        if aborting is None:
            return self._notify("close")
        return self._then_close(aborting)

    async def _then_close(self, first: Pending) -> None:
        await first
        closing = self._notify("close")
        if closing is not None:
            await closing


_LEADSPC_WARNED: list[bool] = []
_LEADSPC = int(ProtocolFlag.HDR_LEADSPC)  # per connection: int test, no IntFlag.__and__


def _warn_unoffered_leadspc(log: SessionLogger, offer: msg.OptNeg, reply: msg.OptNeg) -> None:
    """Say once per process that HDR_LEADSPC was asked for although not offered."""
    if _LEADSPC_WARNED or not int(reply.protocol) & _LEADSPC or int(offer.protocol) & _LEADSPC:
        return
    _LEADSPC_WARNED.append(True)
    log.warning(
        "the MTA did not offer SMFIP_HDR_LEADSPC (milter protocol %d); asking for it anyway "
        "so header values stay exact: Postfix honours it, an MTA that does not refuses "
        "the connection (as with libmilter)",
        offer.version,
    )


_DECISION_CALLBACKS = [*CALLBACK_NO_FLAG, "end_of_message", "abort", "close"]
#: Routing table of a session without a runner: everything inline.
_INLINE: dict[str, bool] = dict.fromkeys(_DECISION_CALLBACKS, False)
_DEFAULT_SETTINGS = ExecutionSettings()
_DEFAULT_POLICY = CallbackPolicy(_DEFAULT_SETTINGS, None)


_OVERRIDDEN_CACHE: dict[type[Milter], dict[str, bool]] = {}


def _overridden_callbacks(cls: type[Milter]) -> dict[str, bool]:
    """Which decision callbacks a class overrides, computed once per class."""
    known = _OVERRIDDEN_CACHE.get(cls)
    if known is None:
        names = [*CALLBACK_NO_FLAG, "end_of_message"]
        known = _OVERRIDDEN_CACHE[cls] = {name: cls.overridden(name) for name in names}
    return known


def _is_continue(result: Any) -> bool:
    return result is Decision.CONTINUE or isinstance(result, msg.Continue)


def _decision_message(result: Any) -> msg.Message:
    if result is None:
        return _CONTINUE
    if type(result) is Decision:
        reply = DECISION_REPLIES.get(result)
        if reply is None:
            raise TypeError(f"{result!r} is a client's record, not a reply to send")
        return reply
    if isinstance(result, ReplyCode):
        return result.to_message()
    if isinstance(result, type) and issubclass(result, msg.Message):
        result = result()
    if isinstance(
        result,
        msg.Continue
        | msg.Accept
        | msg.Reject
        | msg.TempFail
        | msg.Discard
        | msg.Skip
        | msg.ReplyCodePacket,
    ):
        return result
    raise TypeError(
        f"{result!r} is not a decision (Decision.ACCEPT, Accept(), ReplyCode(...), ...)"
    )


_DISPATCH: dict[type, Callable[[MilterSession, Any], Pending | None]] = {
    msg.OptNeg: MilterSession._on_optneg,
    msg.Connect: MilterSession._on_connect,
    msg.Helo: MilterSession._on_helo,
    msg.Mail: MilterSession._on_mail,
    msg.Rcpt: MilterSession._on_rcpt,
    msg.Data: MilterSession._on_data,
    msg.Header: MilterSession._on_header,
    msg.EndOfHeaders: MilterSession._on_eoh,
    msg.Body: MilterSession._on_body,
    msg.EndOfMessage: MilterSession._on_eom,
    msg.Unknown: MilterSession._on_unknown,
    msg.Abort: MilterSession._on_abort,
    msg.Quit: MilterSession._on_quit,
    msg.QuitNoClose: MilterSession._on_quit_nc,
}
