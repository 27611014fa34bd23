"""What the milter decided, per message and per connection, for logs and metrics.

The session feeds a :class:`RecordBuilder` with the events it dispatches and
the replies it sends; the builder turns them into one :class:`MessageRecord`
per message and hands it to an :class:`Observer`. The server tells the same
observer when connections open and end, and why. Observers do nothing by
default: :class:`LogObserver` writes the per-message info line (with the
record's fields attached for :class:`~milterkit.runtime.jsonlog.JsonFormatter`),
and the metrics module counts. Keeping the record logic here, not spread
through the session, lets the session stay a thin dispatcher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from milterkit.decision import Decision
from milterkit.protocol import messages as msg
from milterkit.protocol.steps import STEPS
from milterkit.protocol.text import text
from milterkit.runtime.logsetup import safe

__all__ = [
    "CONNECTION_REASONS",
    "ERROR_KINDS",
    "LogObserver",
    "MessageRecord",
    "MultiObserver",
    "Observer",
    "RecordBuilder",
]

#: Why a connection ended, as passed to :meth:`Observer.connection_done`.
CONNECTION_REASONS = (
    "quit",  # the MTA sent QUIT
    "mta_vanished",  # the MTA closed the connection without QUIT
    "timeout",  # idle or read timeout: we closed it
    "protocol_error",  # the MTA sent something invalid: we closed it
    "internal_error",  # a bug on our side: we closed it
    "drain",  # closed between messages because the worker is stopping
    "aborted",  # cut by the drain deadline or an immediate stop
    "negotiation_failed",  # no common protocol with the MTA
)
#: The kinds passed to :meth:`Observer.error`.
ERROR_KINDS = ("protocol_error", "timeout", "callback_raised", "mta_vanished")

#: Command -> the callback (and stage name) that answers it.
_STAGES: dict[type, str] = {
    s.message: s.callback
    for s in STEPS
    if s.answered and s.callback is not None and s.message is not msg.OptNeg
}
_PLAIN_STEPS = frozenset({msg.Header, msg.Body, msg.Data, msg.EndOfHeaders, msg.EndOfMessage})
#: Message steps that start a record when no MAIL came (the milter did not ask for it).
_OPENS_WITHOUT_MAIL = frozenset({msg.Rcpt, *_PLAIN_STEPS})
_clock = time.perf_counter
_MODIFICATIONS: dict[type, str] = {
    msg.AddHeader: "add_header",
    msg.InsertHeader: "insert_header",
    msg.ChangeHeader: "change_header",
    msg.ChangeFrom: "change_from",
    msg.AddRecipient: "add_recipient",
    msg.AddRecipientPar: "add_recipient",
    msg.DeleteRecipient: "delete_recipient",
    msg.ReplaceBody: "replace_body",
    msg.Quarantine: "quarantine",
}
_FINAL: dict[type, Decision] = {
    msg.Accept: Decision.ACCEPT,
    msg.Reject: Decision.REJECT,
    msg.TempFail: Decision.TEMPFAIL,
    msg.Discard: Decision.DISCARD,
}


@dataclass
class MessageRecord:
    """One message as the milter saw it, ready to log or count.

    ``decision`` is a :class:`~milterkit.decision.Decision` (a ``str``):
    ``accept``, ``continue`` (end of message answered with continue, which the
    MTA treats as accept), ``reject``, ``tempfail`` (a custom reply counts by
    its code) or ``discard``; or, when no decision came, ``abort`` (the MTA
    abandoned the message) or ``incomplete`` (the connection ended
    mid-message). ``stage`` names the callback whose answer decided.
    ``recipients`` counts the RCPTs the milter did not refuse.
    ``client`` comes from CONNECT, which the MTA sends only to a milter that
    has a ``connect`` callback; otherwise from the ``{client_addr}`` macro if
    the MTA sends it, else it is None. ``queue_id`` is the ``i`` macro.
    """

    connection_id: str
    client: str | None = None
    queue_id: str | None = None
    sender: str | None = None
    recipients: int = 0
    decision: str = "incomplete"
    reply: str | None = None
    stage: str = "mail_from"
    modifications: dict[str, int] = field(default_factory=dict)
    quarantine: str | None = None
    milter_ms: float = 0.0

    def fields(self) -> dict[str, Any]:
        """The record as a plain dict (for JSON); milliseconds rounded to 0.001.

        Spelled out rather than ``dataclasses.asdict``, which deep-copies and
        cost more than the rest of the log line.
        """
        return {
            "connection_id": self.connection_id,
            "client": self.client,
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": self.recipients,
            "decision": self.decision,
            "reply": self.reply,
            "stage": self.stage,
            "modifications": dict(self.modifications),
            "quarantine": self.quarantine,
            "milter_ms": round(self.milter_ms, 3),
        }

    def line(self) -> str:
        """``key=value`` text for the info log; peer-supplied values escaped."""
        parts = [
            f"queue_id={self.queue_id or '-'}",
            f"client={safe(self.client or '-', 200)}",
            f"sender={safe(self.sender or '-', 300)}",
            f"recipients={self.recipients}",
            f"decision={self.decision}",
            f"stage={self.stage}",
        ]
        if self.reply is not None:
            parts.append(f'reply="{safe(self.reply, 300)}"')
        if self.modifications:
            mods = ",".join(f"{k}:{v}" for k, v in sorted(self.modifications.items()))
            parts.append(f"modifications={mods}")
        if self.quarantine is not None:
            parts.append(f'quarantine="{safe(self.quarantine, 300)}"')
        parts.append(f"milter_ms={self.milter_ms:.1f}")
        return " ".join(parts)


class Observer:
    """Receives what the server and sessions do; every method does nothing by default.

    Methods run on the worker's event loop, between packets: they must be
    quick and must not raise (the callers do not guard them).
    """

    def connection_opened(self, cid: str, peer: str) -> None:
        """An MTA connected (``peer`` is the MTA's address, not the SMTP client's)."""

    def message_done(self, record: MessageRecord) -> None:
        """A message (or a connection-level decision at connect/helo) was decided."""

    def connection_done(self, cid: str, reason: str, peer: str) -> None:
        """A connection ended, for one of :data:`CONNECTION_REASONS`."""

    def callback_timed(self, name: str, seconds: float) -> None:
        """Time from a command's arrival to our answer, by callback name."""

    def error(self, kind: str) -> None:
        """One of :data:`ERROR_KINDS` happened."""


class MultiObserver(Observer):
    """Forwards to several observers in order (e.g. the log and the metrics)."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def connection_opened(self, cid: str, peer: str) -> None:
        for observer in self.observers:
            observer.connection_opened(cid, peer)

    def message_done(self, record: MessageRecord) -> None:
        for observer in self.observers:
            observer.message_done(record)

    def connection_done(self, cid: str, reason: str, peer: str) -> None:
        for observer in self.observers:
            observer.connection_done(cid, reason, peer)

    def callback_timed(self, name: str, seconds: float) -> None:
        for observer in self.observers:
            observer.callback_timed(name, seconds)

    def error(self, kind: str) -> None:
        for observer in self.observers:
            observer.error(kind)


class LogObserver(Observer):
    """The per-message and per-connection info lines.

    Each record carries its fields as ``record.milterkit`` (a dict), which
    the JSON formatter merges into its object; the text formatter shows the
    ``key=value`` message.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("milterkit")

    def connection_opened(self, cid: str, peer: str) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            fields = {"event": "connection_opened", "connection_id": cid, "peer": peer}
            self.log.debug("[%s] connection from %s", cid, safe(peer), extra={"milterkit": fields})

    def message_done(self, record: MessageRecord) -> None:
        if self.log.isEnabledFor(logging.INFO):
            fields = {"event": "message", **record.fields()}
            self.log.info(
                "[%s] message %s", record.connection_id, record.line(), extra={"milterkit": fields}
            )

    def connection_done(self, cid: str, reason: str, peer: str) -> None:
        if self.log.isEnabledFor(logging.INFO):
            fields = {"event": "connection_closed", "connection_id": cid, "reason": reason}
            fields["peer"] = peer
            self.log.info(
                "[%s] connection from %s closed: %s",
                cid,
                safe(peer),
                reason,
                extra={"milterkit": fields},
            )


class RecordBuilder:
    """Builds :class:`MessageRecord` objects from a session's events and replies.

    The session calls :meth:`event` before dispatching each command,
    :meth:`replied` before sending each answer (with the modifications that
    go with it at end of message), :meth:`error` when a callback fails, and
    :meth:`eof` when the MTA is gone. The time between a command and its
    answer is what the milter took; it is summed per message.
    """

    __slots__ = (
        "_started",
        "_timed",
        "cid",
        "client",
        "current",
        "observer",
        "quit_seen",
        "stage",
    )

    def __init__(self, cid: str, observer: Observer) -> None:
        self.cid = cid
        self.observer = observer
        # performance: skip the per-command call when the observer does not time callbacks
        overridden = type(observer).callback_timed is not Observer.callback_timed
        self._timed = observer.callback_timed if overridden else None
        self.client: str | None = None
        self.current: MessageRecord | None = None
        self.stage = "connect"
        self.quit_seen = False
        self._started = 0.0

    def event(self, event: msg.Message, macros: Any) -> None:
        """A command is about to be dispatched (``macros``: the session's MacroStore)."""
        kind = type(event)
        stage = _STAGES.get(kind)
        if stage is not None:
            self.stage = stage
            self._started = _clock()
            current = self.current
            if current is None and kind in _OPENS_WITHOUT_MAIL:
                # the milter turned MAIL off (SMFIP_NOMAIL): the first step it gets opens it
                client = self.client or _client_from_macros(macros)
                current = self.current = MessageRecord(self.cid, client, sender=None)
            if kind in _PLAIN_STEPS:  # performance: headers and body chunks, most commands
                if current is not None and current.queue_id is None:
                    current.queue_id = _macro(macros, "i")
                return
        if kind is msg.Mail:
            self._finish("incomplete")  # MAIL without an end to the previous message
            assert isinstance(event, msg.Mail)
            client = self.client or _client_from_macros(macros)
            self.current = MessageRecord(self.cid, client, sender=text(event.sender))
        elif kind is msg.Rcpt and self.current is not None:
            self.current.recipients += 1
        elif kind is msg.Connect:
            assert isinstance(event, msg.Connect)
            self.client = _client(event)
        elif kind is msg.Abort:
            self._finish("abort")
        elif kind is msg.Quit or kind is msg.QuitNoClose:
            self.quit_seen = kind is msg.Quit
            self._finish("abort")
        if self.current is not None and self.current.queue_id is None:
            self.current.queue_id = _macro(macros, "i")

    def replied(self, reply: msg.Message, modifications: Sequence[msg.Message] = ()) -> None:
        """The answer to the current command is about to be sent."""
        elapsed = _clock() - self._started
        stage = self.stage
        if self._timed is not None:
            self._timed(stage, elapsed)
        record = self.current
        if record is not None:
            record.milter_ms += elapsed * 1000.0
        if type(reply) is msg.Continue and stage != "end_of_message":
            return  # performance: the common answer decides nothing
        decision = _decision(reply)
        if decision is None:
            if stage == "end_of_message" and isinstance(reply, msg.Continue):
                self._finish(Decision.CONTINUE, modifications=modifications)
            return
        if stage == "rcpt_to" and decision in (Decision.REJECT, Decision.TEMPFAIL):
            if record is not None:
                record.recipients -= 1  # refuses this recipient only
            return
        if record is None:
            if stage not in ("connect", "helo"):
                return
            record = self.current = MessageRecord(self.cid, self.client, sender=None)
        record.stage = stage
        self._finish(decision, reply=reply, modifications=modifications)

    def error(self, kind: str) -> None:
        """A callback raised or timed out (the session answers the error decision)."""
        self.observer.error(kind)

    def eof(self) -> None:
        """The connection ended: a message still open is reported as incomplete."""
        self._finish("incomplete")

    def _finish(
        self,
        decision: str,
        *,
        reply: msg.Message | None = None,
        modifications: Sequence[msg.Message] = (),
    ) -> None:
        record, self.current = self.current, None
        if record is None:
            return
        record.decision = decision
        if decision in (Decision.CONTINUE, "abort", "incomplete"):
            record.stage = self.stage
        if isinstance(reply, msg.ReplyCodePacket):
            record.reply = text(reply.text).replace("\r\n", " / ")
        for modification in modifications:
            kind = _MODIFICATIONS.get(type(modification))
            if kind is None:
                continue
            record.modifications[kind] = record.modifications.get(kind, 0) + 1
            if isinstance(modification, msg.Quarantine):
                record.quarantine = text(modification.reason)
        self.observer.message_done(record)


def _client_from_macros(macros: Any) -> str | None:
    """The client when CONNECT was not sent (no connect callback): ``{client_addr}``
    if the MTA sends it, else ``_`` ("name [address]"), which both MTAs send by default."""
    return _macro(macros, "{client_addr}") or _macro(macros, "_")


def _decision(reply: msg.Message) -> Decision | None:
    """The final decision a reply makes, or None for continue/skip/progress."""
    final = _FINAL.get(type(reply))
    if final is not None:
        return final
    if isinstance(reply, msg.ReplyCodePacket):
        return Decision.TEMPFAIL if reply.text[:1] == b"4" else Decision.REJECT
    return None


def _client(event: msg.Connect) -> str:
    """``hostname [address]`` of the SMTP client, as the MTA described it."""
    name = text(event.hostname)
    address = event.bare_address
    if address is None:
        return name
    return f"{name} [{text(address)}]"


def _macro(macros: Any, name: str) -> str | None:
    value = macros.lookup(name)
    return None if value is None else text(value)
