"""A message as an MTA sees it, and what an MTA does to it for a filter.

Two jobs, both over raw bytes:

- **Parsing.** :class:`ParsedMessage` splits a message the way an MTA's
  header parser does, without the :mod:`email` package: that package re-folds
  and re-encodes headers, and a milter test must see the exact bytes the MTA
  would have sent and stored.
- **The MTA simulation.** :func:`apply_modifications` plays a filter's
  modifications onto a message and its envelope with the MTA's rules
  (PROTOCOL.md sections 8 and 10): header indexes, Sendmail's own header list and nulled deletes,
  REPLBODY line ends, recipient deletion by exact match.

Untouched headers and an untouched body come out byte for byte as they went
in; new lines use the message's own line ending. Nothing here knows about
results or sockets: :meth:`milterkit.result.CheckResult.apply` feeds it.
"""

from __future__ import annotations

import email.generator
import email.message
import email.policy
import email.utils
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from milterkit.mtaprofile import HeaderDefault
from milterkit.protocol.messages import (
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    Message,
    ReplaceBody,
)
from milterkit.protocol.text import text as _text
from milterkit.protocol.text import wire

__all__ = [
    "Envelope",
    "MessageInput",
    "ParsedMessage",
    "RawHeader",
    "apply_modifications",
    "bare_address",
    "envelope_from_headers",
]

MessageInput = bytes | bytearray | memoryview | email.message.Message

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_LONE_LF = re.compile(rb"(?<!\r)\n")


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


# ------------------------------------------------------------------ the MTA's edits


@dataclass
class Envelope:
    """Sender and recipients (without ``<>``) as the MTA holds them, with ESMTP args."""

    sender: str
    sender_args: str | None = None
    recipients: list[str] = field(default_factory=list)
    recipient_args: dict[str, str] = field(default_factory=dict)

    def apply(self, mod: Message) -> None:
        """Apply an envelope modification; other modifications are ignored."""
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


def apply_modifications(
    message: MessageInput,
    modifications: Iterable[Message],
    envelope: Envelope,
    *,
    leading_space: bool = False,
    sendmail_rules: bool = False,
    received_header: bytes | str | None = None,
    header_defaults: Iterable[HeaderDefault] = (),
    mailer_flags: str = "",
) -> bytes:
    """Play ``modifications`` onto ``message`` and ``envelope`` as the MTA would.

    Returns the message bytes the MTA would store; ``envelope`` is changed in
    place. ``leading_space`` is the negotiated HDR_LEADSPC. ``received_header``
    is the MTA's own ``Received:`` field (with or without its line end):
    filters never see it and CHGHEADER indexes skip it, but INSHEADER index 0
    goes above it (PROTOCOL.md section 10.4). Without it, insert indexes count
    the message's own headers.

    ``sendmail_rules`` switches to Sendmail's header list (``_SendmailHeaders``):
    ``header_defaults`` come before the message's headers (the Received header
    fills the default of that name), and ``mailer_flags`` decides which of them
    Sendmail writes (see :class:`milterkit.mtaprofile.MTAProfile`).
    """
    parsed = ParsedMessage.parse(message)
    received = _received(received_header, parsed.newline)
    editor: _HeaderEditor | _SendmailHeaders
    if sendmail_rules:
        editor = _SendmailHeaders(parsed, leading_space, received, header_defaults, mailer_flags)
    else:
        editor = _HeaderEditor(parsed, leading_space, received)
    new_body: list[bytes] | None = None
    for mod in modifications:
        if isinstance(mod, ReplaceBody):
            new_body = [] if new_body is None else new_body
            new_body.append(mod.chunk)
        elif not editor.apply(mod):
            envelope.apply(mod)
    body = parsed.body if new_body is None else _postfix_body(b"".join(new_body), parsed)
    return editor.render() + (parsed.separator or parsed.newline) + body


def _received(header: bytes | str | None, newline: bytes) -> RawHeader | None:
    if header is None:
        return None
    raw = wire(header)
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


def header_field(name: bytes, value: bytes, newline: bytes, leading_space: bool) -> bytes:
    """A field as both MTAs write a filter's header: one space after the colon
    unless HDR_LEADSPC was agreed (section 10.5), line ends as in the message."""
    value = value.replace(b"\r\n", b"\n").replace(b"\n", newline)
    space = b"" if leading_space else b" "
    return name + b":" + space + value + newline


@dataclass
class _Entry:
    header: RawHeader
    received: bool = False


class _HeaderEditor:
    """Postfix's header list under edit; the MTA's Received header is entry 0 if given."""

    def __init__(self, parsed: ParsedMessage, leadspc: bool, received: RawHeader | None) -> None:
        self._entries = [_Entry(h) for h in parsed.headers]
        if received is not None:
            self._entries.insert(0, _Entry(received, received=True))
        self._leadspc = leadspc
        self._newline = parsed.newline

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
        return RawHeader(name, header_field(name, value, self._newline, self._leadspc))

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
                else:
                    del self._entries[pos]
                return
        if mod.value:
            self._entries.append(_Entry(self._field(mod.name, mod.value)))

    def render(self) -> bytes:
        return b"".join(e.header.raw for e in self._entries)


# Sendmail's conf.c HdrInfo: names whose defaults a header of the message does
# not null (H_FORCE), names never replaced (H_TRACE), and Resent- names, which
# Sendmail writes only when the message came with one of them (H_RESENT).
_SM_TRACE = frozenset({b"received", b"x400-received", b"via", b"mail-from"})
_SM_RESENT = frozenset(
    b"resent-" + name
    for name in (b"sender", b"from", b"reply-to", b"to", b"cc", b"bcc", b"message-id", b"date")
)


@dataclass
class _SmEntry:
    """One entry of Sendmail's header list (``HDR``)."""

    name: bytes
    #: The field as written, or None: no value yet, a default whose value only
    #: Sendmail knows, or a header a filter deleted.
    raw: bytes | None
    #: H_USER: from the message or a filter; what CHGHEADER indexes count.
    user: bool = True
    #: The configuration's default this entry stands for, if any.
    default: HeaderDefault | None = None


class _SendmailHeaders:
    """Sendmail's header list: its own defaults first, then the message's headers.

    ``milter.c``'s rules (checked against Sendmail 8.17 in tests/fidelity):
    ADDHEADER and CHGHEADER fill a default (a non-user, non-trace entry) of
    that name in place, keeping the default's spelling of the name; otherwise
    ADDHEADER goes before the first entry of that name (``addheader()``) or at
    the end. CHGHEADER counts only user entries, and a deleted one stays
    counted (its value is nulled). INSHEADER goes after the index-th entry of
    the whole list. Defaults are written only when they hold a value here:
    Sendmail's own values (Date, Message-Id ...) are not invented, except the
    Received header the caller passes.
    """

    def __init__(
        self,
        parsed: ParsedMessage,
        leadspc: bool,
        received: RawHeader | None,
        defaults: Iterable[HeaderDefault],
        mailer_flags: str,
    ) -> None:
        self._entries = [_SmEntry(d.name.encode("ascii"), None, False, d) for d in defaults]
        self._entries += [_SmEntry(h.name, h.raw) for h in parsed.headers]
        if received is not None:
            slot = self._default(received.name, trace_too=True)
            if slot is None:
                self._entries.insert(0, _SmEntry(received.name, received.raw, False))
            else:
                slot.raw = received.raw
        self._leadspc = leadspc
        self._newline = parsed.newline
        self._mailer_flags = mailer_flags
        self._resent = any(h.name.lower() in _SM_RESENT for h in parsed.headers)

    def _default(self, name: bytes, trace_too: bool = False) -> _SmEntry | None:
        """The first non-user entry of that name Sendmail may fill (trace ones only if asked)."""
        wanted = name.lower()
        for entry in self._entries:
            if entry.user or entry.name.lower() != wanted:
                continue
            if trace_too or wanted not in _SM_TRACE:
                return entry
        return None

    def apply(self, mod: Message) -> bool:
        """Apply a header modification; False if ``mod`` is not one."""
        if isinstance(mod, AddHeader):
            slot = self._default(mod.name)
            if slot is None:
                self._add(mod.name, mod.value)
            else:
                self._fill(slot, mod.value)
        elif isinstance(mod, InsertHeader):
            self._insert(mod.index, mod.name, mod.value)
        elif isinstance(mod, ChangeHeader):
            self._change(mod)
        else:
            return False
        return True

    def _field(self, name: bytes, value: bytes) -> bytes:
        return header_field(name, value, self._newline, self._leadspc)

    def _fill(self, entry: _SmEntry, value: bytes) -> None:
        """A new value for an existing entry, which keeps its name and becomes a user one."""
        entry.raw = self._field(entry.name, value)
        entry.user = True

    def _add(self, name: bytes, value: bytes) -> None:
        """``addheader()``: before the first entry of that name, else at the end."""
        new = _SmEntry(name, self._field(name, value))
        wanted = name.lower()
        for pos, entry in enumerate(self._entries):
            if entry.name.lower() == wanted:
                self._entries.insert(pos, new)
                return
        self._entries.append(new)

    def _insert(self, index: int, name: bytes, value: bytes) -> None:
        """``insheader()``: after the index-th entry (0-based, counting every entry)."""
        new = _SmEntry(name, self._field(name, value))
        index = index if index < 2**31 else 0  # a negative mi_int32 walks no entry
        if index >= len(self._entries):
            self._entries.append(new)
        else:
            self._entries.insert(index + 1, new)

    def _change(self, mod: ChangeHeader) -> None:
        """CHGHEADER: the index-th user entry (0 counts as 1), else the last default of the name."""
        wanted = mod.name.lower()
        index = mod.index if mod.index < 2**31 else 0
        target: _SmEntry | None = None
        fallback: _SmEntry | None = None
        for entry in self._entries:
            if entry.name.lower() != wanted:
                continue
            if entry.user:
                index -= 1
                if index <= 0:
                    target = entry
                    break
            elif wanted not in _SM_TRACE:
                fallback = entry
        target = target or fallback
        if target is None:
            if mod.value:
                self._add(mod.name, mod.value)
        elif mod.value:
            self._fill(target, mod.value)
        else:
            target.raw = None

    def _written(self, entry: _SmEntry) -> bool:
        """``putheader()`` skips unmet ``?F?`` conditions and Resent- of a non-resent message."""
        if entry.name.lower() in _SM_RESENT and not self._resent:
            return False
        flag = entry.default.mailer_flag if entry.default is not None else ""
        return not flag or flag in self._mailer_flags

    def render(self) -> bytes:
        return b"".join(e.raw for e in self._entries if e.raw is not None and self._written(e))
