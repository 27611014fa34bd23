"""What a milter decided about one message, and what the MTA would deliver.

:class:`CheckResult` is filled by the client (:mod:`milterkit.client`) while
a message runs through a filter. :meth:`CheckResult.apply` then plays the
filter's modifications onto the original message the way an MTA does
(PROTOCOL.md sections 8 and 10) and returns the envelope and the bytes that
would be delivered.

Messages are parsed here, from bytes, without the :mod:`email` package: that
package re-folds and re-encodes headers, and a milter test must see the exact
bytes the MTA would have sent and stored. Untouched headers and an untouched
body therefore come out byte for byte as they went in; new lines use the
message's own line ending.
"""

from __future__ import annotations

import email.generator
import email.message
import email.policy
import email.utils
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from milterkit.protocol.constants import Action, ProtocolFlag, Reply
from milterkit.protocol.messages import (
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    Message,
    Quarantine,
    ReplaceBody,
)
from milterkit.protocol.negotiate import Negotiated

__all__ = [
    "DELIVERED_DECISIONS",
    "CheckResult",
    "DeliveredMessage",
    "ParsedMessage",
    "RawHeader",
    "SmtpReply",
    "StageResult",
    "bare_address",
    "envelope_from_headers",
]

#: Final decisions under which the MTA delivers (or holds) the message.
DELIVERED_DECISIONS = frozenset({"accept", "continue"})

MessageInput = bytes | bytearray | memoryview | email.message.Message

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_LONE_LF = re.compile(rb"(?<!\r)\n")


def _text(value: bytes) -> str:
    """Wire bytes to str; odd bytes survive a round trip via surrogateescape."""
    return value.decode("utf-8", "surrogateescape")


def bare_address(address: str) -> str:
    """An envelope address without surrounding whitespace and angle brackets."""
    stripped = address.strip()
    if stripped.startswith("<") and stripped.endswith(">"):
        return stripped[1:-1]
    return stripped


# ----------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class RawHeader:
    """One header field exactly as in the message, including its line ends."""

    name: bytes
    raw: bytes

    def value(self, leading_space: bool = False) -> bytes:
        """The value as an MTA sends it in SMFIC_HEADER (PROTOCOL.md section 10.1).

        Folded lines are joined with LF only. Without HDR_LEADSPC the MTA drops
        exactly one space after the colon (never a tab); with it the value is
        passed verbatim.
        """
        value = self.raw[self.raw.index(b":") + 1 :]  # 'Subject : x' has spaces before ':'
        value = value.rstrip(b"\n").removesuffix(b"\r").replace(b"\r\n", b"\n")
        if not leading_space and value.startswith(b" "):
            value = value[1:]
        return value


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A message split into raw header fields, the blank line, and the raw body."""

    headers: tuple[RawHeader, ...]
    separator: bytes
    body: bytes
    newline: bytes

    @classmethod
    def parse(cls, message: MessageInput) -> ParsedMessage:
        """Split a message the way an MTA's header parser does.

        The header section ends at the first empty line, or at the first line
        that is neither a field nor a continuation (that line starts the body).
        """
        data = _as_bytes(message)
        newline = b"\r\n" if data.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
        headers: list[RawHeader] = []
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            line = data[pos:end]
            if line in (b"\n", b"\r\n"):
                return cls(tuple(headers), line, data[end:], newline)
            if line[:1] in (b" ", b"\t") and headers:
                last = headers[-1]
                headers[-1] = RawHeader(last.name, last.raw + line)
            else:
                name = _field_name(line)
                if name is None:
                    break
                headers.append(RawHeader(name, line))
            pos = end
        return cls(tuple(headers), b"", data[pos:], newline)

    def get(self, name: str) -> bytes | None:
        """The first value of a header (case-insensitive), one leading space removed."""
        wanted = name.encode("ascii").lower()
        for header in self.headers:
            if header.name.lower() == wanted:
                return header.value()
        return None

    def smtp_body(self) -> bytes:
        """The body as MTAs send it to milters: CRLF line ends, last line terminated."""
        body = _LONE_LF.sub(b"\r\n", self.body)
        if body and not body.endswith(b"\n"):
            body += b"\r\n"
        return body


def envelope_from_headers(parsed: ParsedMessage) -> tuple[str, list[str]]:
    """Sender from From:, recipients from To: and Cc:, for when none are given.

    A convenience for trying a message file quickly; a real MTA takes the
    envelope from MAIL/RCPT, which may differ from the headers.
    """
    senders = _addresses(parsed, "From")
    recipients = _addresses(parsed, "To") + _addresses(parsed, "Cc")
    return (senders[0] if senders else ""), recipients


def _addresses(parsed: ParsedMessage, name: str) -> list[str]:
    wanted = name.lower().encode()
    values = [_text(h.value()) for h in parsed.headers if h.name.lower() == wanted]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def _field_name(line: bytes) -> bytes | None:
    colon = line.find(b":")
    if colon <= 0:
        return None
    # obsolete syntax (RFC 822 3.4.2): white space between name and colon, as
    # Postfix's is_header_buf() accepts; the name excludes it
    name = line[:colon].rstrip(b" \t")
    return name if _FIELD_NAME.fullmatch(name) else None


def _as_bytes(message: MessageInput) -> bytes:
    if isinstance(message, email.message.Message):
        out = io.BytesIO()
        policy = email.policy.compat32.clone(linesep="\r\n")
        email.generator.BytesGenerator(out, mangle_from_=False, policy=policy).flatten(message)
        return out.getvalue()
    return bytes(message)


# ------------------------------------------------------------------------ results


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
    decision: str
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

    ``decision`` is the final word: ``"continue"`` (filter never objected:
    the MTA delivers), ``"accept"``, ``"reject"``, ``"tempfail"`` or
    ``"discard"``. ``reply`` is set when the filter sent its own SMTP reply
    (SMFIR_REPLYCODE); :attr:`smtp_reply` also covers the MTA's default texts.
    Quarantine is a flag (:attr:`quarantine_reason`), not a decision.
    """

    negotiated: Negotiated | None = None
    profile: str = ""
    stages: list[StageResult] = field(default_factory=list)
    decision: str = "continue"
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
        """
        parsed = ParsedMessage.parse(message)
        leadspc = bool(self.negotiated and self.negotiated.protocol & ProtocolFlag.HDR_LEADSPC)
        received = _received(received_header, parsed.newline)
        editor = _HeaderEditor(parsed, leadspc, received, self.header_edits == "sendmail")
        envelope = _Envelope.start(self)
        new_body: list[bytes] | None = None
        for mod in self.modifications:
            if isinstance(mod, ReplaceBody):
                new_body = [] if new_body is None else new_body
                new_body.append(mod.chunk)
            elif not editor.apply(mod):
                envelope.apply(mod)
        body = parsed.body if new_body is None else _postfix_body(b"".join(new_body), parsed)
        separator = parsed.separator or parsed.newline
        return DeliveredMessage(
            sender=envelope.sender,
            recipients=tuple(envelope.recipients),
            message_bytes=editor.render() + separator + body,
            sender_args=envelope.sender_args,
            recipient_args=dict(envelope.recipient_args),
            delivered=self.delivered,
            held=self.held,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (bytes decoded as UTF-8 with surrogateescape)."""
        return {
            "profile": self.profile,
            "negotiated": _negotiated_dict(self.negotiated),
            "stages": [_stage_dict(s) for s in self.stages],
            "decision": self.decision,
            "decided_at": self.decided_at,
            "reply": _reply_text(self.reply),
            "smtp_reply": _reply_text(self.smtp_reply),
            "quarantine_reason": self.quarantine_reason,
            "skipped_body": self.skipped_body,
            "rejected_recipients": {k: str(v) for k, v in self.rejected_recipients.items()},
            "modifications": [modification_dict(m) for m in self.modifications],
            "sender": self.sender,
            "recipients": list(self.recipients),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent, ensure_ascii=False)


def _reply_text(reply: SmtpReply | None) -> str | None:
    return None if reply is None else reply.text


def _stage_dict(stage: StageResult) -> dict[str, Any]:
    return {
        "stage": stage.stage,
        "decision": stage.decision,
        "reply": _reply_text(stage.reply),
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
        "macros": {str(k): [_text(n) for n in v] for k, v in neg.macros.items()},
        "max_data_size": neg.max_data_size,
    }


def describe_flags(value: int, kind: type[Action] | type[ProtocolFlag]) -> str:
    """``A|B|C`` names of the single-bit flags set in ``value``, for humans."""
    names = [
        m.name for m in kind if m.name and m.value and m.value & (m.value - 1) == 0 and value & m
    ]
    return "|".join(names) or "none"


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
            value = _text(value)
        out[f.name] = value
    return out


def describe_modification(mod: Message) -> str:
    """A one-line human summary of a modification."""
    if isinstance(mod, AddHeader):
        return f"add header {_text(mod.name)}: {_text(mod.value)!r}"
    if isinstance(mod, InsertHeader):
        return f"insert header at {mod.index} {_text(mod.name)}: {_text(mod.value)!r}"
    if isinstance(mod, ChangeHeader):
        what = "delete" if not mod.value else f"change to {_text(mod.value)!r}"
        return f"{what} header {_text(mod.name)}[{mod.index}]"
    if isinstance(mod, ChangeFrom):
        args = f" {_text(mod.args)}" if mod.args else ""
        return f"change sender to {_text(mod.sender)}{args}"
    if isinstance(mod, AddRecipient | AddRecipientPar):
        args = f" {_text(mod.args)}" if isinstance(mod, AddRecipientPar) and mod.args else ""
        return f"add recipient {_text(mod.recipient)}{args}"
    if isinstance(mod, DeleteRecipient):
        return f"delete recipient {_text(mod.recipient)}"
    if isinstance(mod, ReplaceBody):
        return f"replace body chunk ({len(mod.chunk)} bytes)"
    if isinstance(mod, Quarantine):
        return f"quarantine: {_text(mod.reason)}"
    return Reply(mod.code).name


# ------------------------------------------------------------------------ applying


def _received(header: bytes | str | None, newline: bytes) -> RawHeader | None:
    if header is None:
        return None
    raw = header.encode("utf-8", "surrogateescape") if isinstance(header, str) else header
    if not raw.endswith(b"\n"):
        raw += newline
    name = _field_name(raw)
    if name is None:
        raise ValueError(f"received_header {raw[:60]!r} is not a header field")
    return RawHeader(name, raw)


def _postfix_body(body: bytes, parsed: ParsedMessage) -> bytes:
    """A REPLBODY body as Postfix stores it, written with the message's line end.

    Postfix splits on LF and drops one CR right before it; a lone CR stays;
    an unterminated last line still becomes a line (PROTOCOL.md section 8.1).
    """
    if not body:
        return b""
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line.removesuffix(b"\r") + parsed.newline for line in lines)


@dataclass
class _Entry:
    header: RawHeader
    received: bool = False
    deleted: bool = False  # Sendmail: value nulled, still counted by CHGHEADER


class _HeaderEditor:
    """The header list under edit; the MTA's Received header is entry 0 if given."""

    def __init__(
        self,
        parsed: ParsedMessage,
        leadspc: bool,
        received: RawHeader | None,
        null_deletes: bool = False,
    ) -> None:
        self._entries = [_Entry(h) for h in parsed.headers]
        if received is not None:
            self._entries.insert(0, _Entry(received, received=True))
        self._leadspc = leadspc
        self._newline = parsed.newline
        #: Sendmail's rule: a deleted header keeps its place in the index count.
        self.null_deletes = null_deletes

    def apply(self, mod: Message) -> bool:
        """Apply a header modification; False if ``mod`` is not one."""
        if isinstance(mod, AddHeader):
            self._entries.append(_Entry(self._field(mod.name, mod.value)))
        elif isinstance(mod, InsertHeader):
            self._entries.insert(
                min(mod.index, len(self._entries)), _Entry(self._field(mod.name, mod.value))
            )
        elif isinstance(mod, ChangeHeader):
            self._change(mod)
        else:
            return False
        return True

    def _field(self, name: bytes, value: bytes) -> RawHeader:
        """A new header field: one space after the colon unless HDR_LEADSPC (section 10.5)."""
        value = value.replace(b"\r\n", b"\n").replace(b"\n", self._newline)
        space = b"" if self._leadspc else b" "
        return RawHeader(name, name + b":" + space + value + self._newline)

    def _change(self, mod: ChangeHeader) -> None:
        """CHGHEADER: nth header of the name (0 counts as 1), empty value deletes."""
        wanted = mod.name.lower()
        index = max(mod.index, 1)
        seen = 0
        for pos, entry in enumerate(self._entries):
            if entry.received or entry.header.name.lower() != wanted:
                continue
            seen += 1
            if seen == index:
                if mod.value:
                    self._entries[pos] = _Entry(self._field(mod.name, mod.value))
                elif self.null_deletes:
                    entry.deleted = True
                else:
                    del self._entries[pos]
                return
        if mod.value:
            self._entries.append(_Entry(self._field(mod.name, mod.value)))

    def render(self) -> bytes:
        return b"".join(e.header.raw for e in self._entries if not e.deleted)


@dataclass
class _Envelope:
    sender: str
    sender_args: str | None
    recipients: list[str]
    recipient_args: dict[str, str]

    @classmethod
    def start(cls, result: CheckResult) -> _Envelope:
        rejected = {bare_address(r).lower() for r in result.rejected_recipients}
        recipients = [bare_address(r) for r in result.recipients]
        kept = [r for r in recipients if r.lower() not in rejected]
        args = " ".join(result.sender_args) or None
        return cls(bare_address(result.sender), args, kept, {})

    def apply(self, mod: Message) -> None:
        if isinstance(mod, ChangeFrom):
            self.sender = bare_address(_text(mod.sender))
            self.sender_args = None if mod.args is None else _text(mod.args)
        elif isinstance(mod, AddRecipient | AddRecipientPar):
            address = bare_address(_text(mod.recipient))
            self.recipients.append(address)
            if isinstance(mod, AddRecipientPar) and mod.args:
                self.recipient_args[address] = _text(mod.args)
        elif isinstance(mod, DeleteRecipient):
            self._delete(bare_address(_text(mod.recipient)))

    def _delete(self, address: str) -> None:
        """Postfix strips ``<>`` and deletes every recipient equal to it (strcmp: case counts)."""
        self.recipients = [r for r in self.recipients if r != address]
        for key in [k for k in self.recipient_args if k.lower() == address]:
            del self.recipient_args[key]
