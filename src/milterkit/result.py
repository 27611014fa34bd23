"""What a milter decided about one message: the result records and their JSON.

:class:`CheckResult` is filled by the client (:mod:`milterkit.client`) and by
the in-memory harness while a message runs through a filter.
:meth:`CheckResult.apply` hands its modifications and envelope to the MTA
simulation in :mod:`milterkit.message` and returns what would be delivered.

The parsing names that used to live here (``ParsedMessage``, ``RawHeader``,
``bare_address``, ``envelope_from_headers``, ``MessageInput``) are re-exported,
so ``from milterkit.result import ParsedMessage`` keeps working. The text
rendering for people is in :mod:`milterkit.cli.describe`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from milterkit.decision import Decision
from milterkit.message import (
    Envelope,
    MessageInput,
    ParsedMessage,
    RawHeader,
    apply_modifications,
    bare_address,
    envelope_from_headers,
)
from milterkit.mtaprofile import HeaderDefault
from milterkit.protocol.constants import Action, ProtocolFlag, Reply
from milterkit.protocol.messages import Message, Quarantine, ReplaceBody
from milterkit.protocol.negotiate import Negotiated, describe_flags
from milterkit.protocol.text import text

__all__ = [
    "DELIVERED_DECISIONS",
    "CheckResult",
    "DeliveredMessage",
    "MessageInput",
    "ParsedMessage",
    "RawHeader",
    "SmtpReply",
    "StageResult",
    "bare_address",
    "envelope_from_headers",
    "modification_dict",
]

#: Final decisions under which the MTA delivers (or holds) the message.
DELIVERED_DECISIONS = frozenset({Decision.ACCEPT, Decision.CONTINUE})


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """An SMTP reply: the code and the full text (all lines, CRLF-joined)."""

    code: int
    text: str

    @classmethod
    def parse(cls, text: str) -> SmtpReply:
        return cls(int(text[:3]), text)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class StageResult:
    """The filter's answer at one step; ``detail`` names the recipient or header."""

    stage: str
    decision: Decision
    reply: SmtpReply | None = None
    detail: str = ""


@dataclass(frozen=True)
class DeliveredMessage:
    """Envelope and content as the MTA would deliver them (addresses without ``<>``).

    ``delivered`` is False when the message was rejected, tempfailed or
    discarded; ``held`` is True when the filter quarantined it.
    """

    sender: str
    recipients: tuple[str, ...]
    message_bytes: bytes
    sender_args: str | None = None
    recipient_args: Mapping[str, str] = field(default_factory=dict)
    delivered: bool = True
    held: bool = False


@dataclass
class CheckResult:
    """Everything one message's run through a filter produced.

    ``decision`` is the final word, a :class:`~milterkit.decision.Decision`
    (equal to its string, ``result.decision == "accept"``): CONTINUE (filter
    never objected: the MTA delivers), ACCEPT, REJECT, TEMPFAIL or DISCARD; a
    filter's own reply counts as REJECT (5xx) or TEMPFAIL (4xx), and so does
    SHUTDOWN (TEMPFAIL). ``reply`` is set when the filter sent its own SMTP reply
    (SMFIR_REPLYCODE); :attr:`smtp_reply` also covers the MTA's default texts.
    Quarantine is a flag (:attr:`quarantine_reason`), not a decision.
    """

    negotiated: Negotiated | None = None
    profile: str = ""
    stages: list[StageResult] = field(default_factory=list)
    decision: Decision = Decision.CONTINUE
    decided_at: str = ""
    reply: SmtpReply | None = None
    default_reply: SmtpReply | None = None
    modifications: list[Message] = field(default_factory=list)
    quarantine_reason: str | None = None
    skipped_body: bool = False
    rejected_recipients: dict[str, SmtpReply] = field(default_factory=dict)
    sender: str = ""
    sender_args: tuple[str, ...] = ()
    recipients: list[str] = field(default_factory=list)
    #: Whose header edit rules apply() follows ("postfix" or "sendmail"; see MTAProfile).
    header_edits: str = "postfix"
    #: The MTA's own header list and delivering mailer's flags, for the
    #: Sendmail rules (MTAProfile.header_defaults, MTAProfile.mailer_flags).
    header_defaults: tuple[HeaderDefault, ...] = ()
    mailer_flags: str = ""

    @property
    def smtp_reply(self) -> SmtpReply | None:
        """What the MTA answers the SMTP client (filter text or the MTA's default)."""
        return self.reply or self.default_reply

    @property
    def delivered(self) -> bool:
        return self.decision in DELIVERED_DECISIONS

    @property
    def held(self) -> bool:
        """Quarantined: the MTA keeps the message on hold instead of delivering it."""
        if self.quarantine_reason is not None:
            return True
        return any(isinstance(m, Quarantine) for m in self.modifications)

    def apply(
        self, message: MessageInput, received_header: bytes | str | None = None
    ) -> DeliveredMessage:
        """Play the modifications onto ``message`` as the MTA would.

        ``received_header`` is the MTA's own ``Received:`` field (with or
        without its line end). Filters never see it and CHGHEADER indexes skip
        it, but INSHEADER index 0 goes above it (PROTOCOL.md section 10.4).
        Without it, insert indexes count the message's own headers.

        With the Sendmail rules (:attr:`header_edits`) the MTA's own headers
        (:attr:`header_defaults`) come first: a filter's ADDHEADER or CHGHEADER
        of such a name fills it in place, INSHEADER counts them, and the
        Received header takes its place among them. Values Sendmail writes
        itself (its Date, Message-Id ...) are not invented: such a header
        appears only once a filter gave it a value.
        """
        envelope = self._envelope()
        message_bytes = apply_modifications(
            message,
            self.modifications,
            envelope,
            leading_space=bool(
                self.negotiated and self.negotiated.protocol & ProtocolFlag.HDR_LEADSPC
            ),
            sendmail_rules=self.header_edits == "sendmail",
            received_header=received_header,
            header_defaults=self.header_defaults,
            mailer_flags=self.mailer_flags,
        )
        return DeliveredMessage(
            sender=envelope.sender,
            recipients=tuple(envelope.recipients),
            message_bytes=message_bytes,
            sender_args=envelope.sender_args,
            recipient_args=dict(envelope.recipient_args),
            delivered=self.delivered,
            held=self.held,
        )

    def _envelope(self) -> Envelope:
        """The envelope the MTA holds at end of message: refused recipients are gone."""
        rejected = {bare_address(r).lower() for r in self.rejected_recipients}
        recipients = [bare_address(r) for r in self.recipients]
        kept = [r for r in recipients if r.lower() not in rejected]
        args = " ".join(self.sender_args) or None
        return Envelope(bare_address(self.sender), args, kept)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (bytes decoded as UTF-8 with surrogateescape)."""
        return {
            "profile": self.profile,
            "negotiated": _negotiated_dict(self.negotiated),
            "stages": [_stage_dict(s) for s in self.stages],
            "decision": str(self.decision),
            "decided_at": self.decided_at,
            "reply": _replytext(self.reply),
            "smtp_reply": _replytext(self.smtp_reply),
            "quarantine_reason": self.quarantine_reason,
            "skipped_body": self.skipped_body,
            "rejected_recipients": {k: str(v) for k, v in self.rejected_recipients.items()},
            "modifications": [modification_dict(m) for m in self.modifications],
            "sender": self.sender,
            "recipients": list(self.recipients),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent, ensure_ascii=False)


def _replytext(reply: SmtpReply | None) -> str | None:
    return None if reply is None else reply.text


def _stage_dict(stage: StageResult) -> dict[str, Any]:
    return {
        "stage": stage.stage,
        "decision": str(stage.decision),
        "reply": _replytext(stage.reply),
        "detail": stage.detail,
    }


def _negotiated_dict(neg: Negotiated | None) -> dict[str, Any] | None:
    if neg is None:
        return None
    return {
        "version": neg.version,
        "actions": int(neg.actions),
        "actions_names": describe_flags(neg.actions, Action),
        "protocol": int(neg.protocol),
        "protocol_names": describe_flags(neg.protocol, ProtocolFlag),
        "macros": {str(k): [text(n) for n in v] for k, v in neg.macros.items()},
        "max_data_size": neg.max_data_size,
    }


_MAX_BODY_TEXT = 1000


def modification_dict(mod: Message) -> dict[str, Any]:
    """One modification as a JSON-ready dict: its reply name and decoded fields."""
    out: dict[str, Any] = {"type": Reply(mod.code).name}
    for f in fields(mod):  # type: ignore[arg-type]
        value = getattr(mod, f.name)
        if isinstance(value, bytes):
            if isinstance(mod, ReplaceBody):
                out["size"] = len(value)
                value = value[:_MAX_BODY_TEXT]
            value = text(value)
        out[f.name] = value
    return out


def __getattr__(name: str) -> object:
    """``describe_modification`` moved to :mod:`milterkit.cli.describe`; still found here.

    Imported on first use: the CLI imports this module, so a top-level import
    would be a cycle.
    """
    if name == "describe_modification":
        from milterkit.cli.describe import describe_modification

        return describe_modification
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
