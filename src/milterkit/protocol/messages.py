"""One frozen dataclass per milter command and reply, with exact pack/unpack.

Every string field is ``bytes`` exactly as on the wire (no decoding), so
``unpack(pack(x)) == x`` and ``pack(unpack(p)) == p`` hold byte for byte. The
user-facing layers decode where they need text.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, ClassVar, TypeVar

from milterkit.protocol.codes import (
    CHUNK_SIZE,
    OPTNEG_LEN,
    Action,
    Command,
    Family,
    ProtocolFlag,
    Reply,
)
from milterkit.protocol.errors import LocalProtocolError, RemoteProtocolError
from milterkit.protocol.framing import encode_frame

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_OPTNEG = struct.Struct(">III")
#: Address family by its CONNECT byte (the byte is an int; a dict lookup instead of an Enum call).
_FAMILY_BY_BYTE: dict[int, Family] = {int(family): family for family in Family}
_FAMILY_UNKNOWN = Family.UNKNOWN


def _cstrings(payload: bytes, what: str) -> list[bytes]:
    """Split a run of NUL-terminated strings; the payload must end in NUL."""
    if not payload or payload[-1] != 0:
        raise RemoteProtocolError(f"{what}: payload {payload[:40]!r} is not NUL-terminated")
    return payload[:-1].split(b"\0")


def _exact_cstrings(payload: bytes, what: str, low: int, high: int) -> list[bytes]:
    parts = _cstrings(payload, what)
    if not low <= len(parts) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise RemoteProtocolError(f"{what}: expected {wanted} strings, got {len(parts)}")
    return parts


def _no_nul(value: bytes, what: str) -> None:
    if b"\0" in value:
        raise LocalProtocolError(f"{what} must not contain a NUL byte: {value[:40]!r}")


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{what} {value} does not fit in an unsigned 32-bit field")
    return _U32.pack(value)


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{what} {value} does not fit in an unsigned 16-bit field")
    return _U16.pack(value)


def _empty(payload: bytes, what: str) -> None:
    if payload:
        raise RemoteProtocolError(f"{what} must have no data, got {len(payload)} bytes")


class Message:
    """Base of every packet type; ``code`` is the command or reply byte."""

    __slots__ = ()
    code: ClassVar[int]

    def payload(self) -> bytes:
        """The packet's payload (everything after the command byte)."""
        return b""

    def encode(self) -> bytes:
        """The whole packet as it goes on the wire."""
        return encode_frame(self.code, self.payload())


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class OptNeg(Message):
    """SMFIC_OPTNEG from the MTA, and the filter's OPTNEG reply (same layout).

    ``macros`` holds the optional macro-list extension of the reply as
    ``(stage id, space-separated names)`` pairs; stage ids outside 0-6 are
    kept as they came.
    """

    version: int
    actions: Action
    protocol: ProtocolFlag
    macros: tuple[tuple[int, bytes], ...] = ()

    def payload(self) -> bytes:
        out = [
            _u32(self.version, "OPTNEG version"),
            _u32(int(self.actions), "OPTNEG actions"),
            _u32(int(self.protocol), "OPTNEG protocol"),
        ]
        for stage, names in self.macros:
            _no_nul(names, "macro list")
            out.append(_u32(stage, "macro list stage") + names + b"\0")
        return b"".join(out)

    @classmethod
    def unpack(cls, payload: bytes) -> OptNeg:
        if len(payload) < OPTNEG_LEN:
            raise RemoteProtocolError(
                f"OPTNEG: payload of {len(payload)} bytes, at least {OPTNEG_LEN} needed"
            )
        offer = cls is OptNeg and type(payload) is bytes and len(payload) == OPTNEG_LEN
        if offer:
            known = _OPTNEGS.get(payload)
            if known is not None:
                return known
        version, actions, protocol = _OPTNEG.unpack_from(payload)
        macros = _unpack_macro_lists(payload[OPTNEG_LEN:])
        optneg = cls(version, Action(actions), ProtocolFlag(protocol), macros)
        if offer:
            if len(_OPTNEGS) >= _OPTNEGS_LIMIT:
                _OPTNEGS.clear()
            _OPTNEGS[payload] = optneg
        return optneg


# Performance: every connection from one MTA starts with the same OPTNEG, and
# building it costs two Flag calls and a frozen dataclass (several
# microseconds, once per message at one message per connection). OptNeg is
# frozen, so one object per distinct 12-byte payload (an MTA's offer, which
# has no macro lists) serves every connection. Small and bounded.
_OPTNEGS_LIMIT = 64
_OPTNEGS: dict[bytes, OptNeg] = {}


def _unpack_macro_lists(data: bytes) -> tuple[tuple[int, bytes], ...]:
    lists = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            raise RemoteProtocolError(f"OPTNEG: truncated macro list entry {data[pos:]!r}")
        (stage,) = _U32.unpack_from(data, pos)
        end = data.find(b"\0", pos + 4)
        if end < 0:
            raise RemoteProtocolError("OPTNEG: macro list is not NUL-terminated")
        lists.append((stage, data[pos + 4 : end]))
        pos = end + 1
    return tuple(lists)


@dataclass(frozen=True, slots=True)
class Macro(Message):
    """SMFIC_MACRO: macro values for the command that follows.

    ``stage`` is the command letter as an int (unknown letters are kept);
    None for a packet with no stage byte at all. An odd trailing name without
    a value is kept in ``dangling`` rather than dropped, so the packet
    round-trips; lookups ignore it.
    """

    stage: int | None
    pairs: tuple[tuple[bytes, bytes], ...] = ()
    dangling: bytes | None = None

    def payload(self) -> bytes:
        if self.stage is None:
            if self.pairs or self.dangling is not None:
                raise LocalProtocolError("MACRO: macro values need a stage byte")
            return b""
        if not 0 <= self.stage <= 0xFF:
            raise LocalProtocolError(f"MACRO: stage {self.stage} is not a byte")
        out = [bytes((self.stage,))]
        for name, value in self.pairs:
            _no_nul(name, "macro name")
            _no_nul(value, "macro value")
            out.append(name + b"\0" + value + b"\0")
        if self.dangling is not None:
            _no_nul(self.dangling, "macro name")
            out.append(self.dangling + b"\0")
        return b"".join(out)

    @classmethod
    def unpack(cls, payload: bytes) -> Macro:
        if not payload:
            return cls(None)
        if len(payload) == 1:
            return cls(payload[0])
        pairs, dangling = split_macro_payload(payload)
        return cls(payload[0], pairs, dangling)

    def as_dict(self) -> dict[bytes, bytes]:
        return dict(self.pairs)


def split_macro_payload(payload: bytes) -> tuple[tuple[tuple[bytes, bytes], ...], bytes | None]:
    """The (name, value) pairs and the dangling name of a MACRO payload of 2+ bytes."""
    if payload[-1] != 0:
        _cstrings(payload[1:], "MACRO")  # raises with the usual message
    # Performance: one split, pairs by zipping one iterator with itself (no
    # _cstrings call, no payload[1:] copy, no two stride slices); an odd last
    # name is dropped by zip and kept as ``dangling``.
    strings = payload[1:-1].split(b"\0")
    names_values = iter(strings)
    pairs = tuple(zip(names_values, names_values, strict=False))
    return pairs, strings[-1] if len(strings) % 2 else None


@dataclass(frozen=True, slots=True)
class Connect(Message):
    """SMFIC_CONNECT. ``port`` and ``address`` are None for family 'U'."""

    hostname: bytes
    family: Family
    port: int | None = None
    address: bytes | None = None

    def payload(self) -> bytes:
        _no_nul(self.hostname, "CONNECT hostname")
        head = self.hostname + b"\0" + bytes((self.family,))
        if self.family == Family.UNKNOWN:
            if self.port is not None or self.address is not None:
                raise LocalProtocolError("CONNECT: family 'U' carries no port and no address")
            return head
        if self.port is None or self.address is None:
            raise LocalProtocolError("CONNECT: port and address are required unless family is 'U'")
        _no_nul(self.address, "CONNECT address")
        return head + _u16(self.port, "CONNECT port") + self.address + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Connect:
        end = payload.find(b"\0")
        if end < 0 or end + 1 >= len(payload):
            raise RemoteProtocolError("CONNECT: missing hostname terminator or family byte")
        family = _FAMILY_BY_BYTE.get(payload[end + 1])  # one per connection: no Enum call
        if family is None:
            raise RemoteProtocolError(
                f"CONNECT: unknown address family byte 0x{payload[end + 1]:02x}"
            )
        hostname, rest = payload[:end], payload[end + 2 :]
        if family is _FAMILY_UNKNOWN:  # a global: no Enum attribute read per connection
            _empty(rest, "CONNECT with family 'U'")
            return cls(hostname, family)
        if len(rest) < 3 or rest[-1] != 0:
            raise RemoteProtocolError("CONNECT: truncated port or unterminated address")
        address = rest[2:-1]
        if b"\0" in address:
            raise RemoteProtocolError("CONNECT: address contains a NUL byte")
        return cls(hostname, family, _U16.unpack_from(rest)[0], address)

    @property
    def bare_address(self) -> bytes | None:
        """The address without Sendmail's ``IPv6:`` prefix."""
        if self.address is not None and self.address[:5].lower() == b"ipv6:":
            return self.address[5:]
        return self.address


@dataclass(frozen=True, slots=True)
class Helo(Message):
    name: bytes

    def payload(self) -> bytes:
        _no_nul(self.name, "HELO name")
        return self.name + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Helo:
        # Performance: the well-formed case in one split, no helper call; any
        # other payload takes the checked path, for its error.
        parts = payload.split(b"\0", 1)
        if len(parts) == 2 and not parts[1]:
            return cls(parts[0])
        return cls(_exact_cstrings(payload, "HELO", 1, 1)[0])


def _pack_args(first: bytes, args: tuple[bytes, ...], what: str) -> bytes:
    _no_nul(first, what)
    for arg in args:
        _no_nul(arg, f"{what} ESMTP argument")
    return b"\0".join((first, *args)) + b"\0"


@dataclass(frozen=True, slots=True)
class Mail(Message):
    """SMFIC_MAIL: the sender as given (``<a@b>``, ``<>``, bare, or empty) and ESMTP args."""

    sender: bytes
    args: tuple[bytes, ...] = ()

    def payload(self) -> bytes:
        return _pack_args(self.sender, self.args, "MAIL sender")

    @classmethod
    def unpack(cls, payload: bytes) -> Mail:
        # Performance: the well-formed case without a helper call (as Header.unpack)
        parts = payload.split(b"\0")
        if len(parts) > 1 and not parts[-1]:
            return cls(parts[0], tuple(parts[1:-1]))
        parts = _cstrings(payload, "MAIL")
        return cls(parts[0], tuple(parts[1:]))


@dataclass(frozen=True, slots=True)
class Rcpt(Message):
    recipient: bytes
    args: tuple[bytes, ...] = ()

    def payload(self) -> bytes:
        return _pack_args(self.recipient, self.args, "RCPT recipient")

    @classmethod
    def unpack(cls, payload: bytes) -> Rcpt:
        # Performance: the well-formed case without a helper call (as Header.unpack)
        parts = payload.split(b"\0")
        if len(parts) > 1 and not parts[-1]:
            return cls(parts[0], tuple(parts[1:-1]))
        parts = _cstrings(payload, "RCPT")
        return cls(parts[0], tuple(parts[1:]))


@dataclass(frozen=True, slots=True)
class Header(Message):
    """SMFIC_HEADER. Folded values carry LF (not CRLF) before continuation whitespace."""

    name: bytes
    value: bytes

    def payload(self) -> bytes:
        _no_nul(self.name, "header name")
        _no_nul(self.value, "header value")
        return self.name + b"\0" + self.value + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Header:
        # Performance: runs for every header; the well-formed case (two strings,
        # each NUL-terminated) in one split, without the two helper calls. Any
        # other payload takes the checked path, for its error.
        parts = payload.split(b"\0", 2)
        if len(parts) == 3 and not parts[2]:
            return cls(parts[0], parts[1])
        name, value = _exact_cstrings(payload, "HEADER", 2, 2)
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class Body(Message):
    """SMFIC_BODY: one raw chunk (may contain NUL bytes)."""

    chunk: bytes

    def payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> Body:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class EndOfMessage(Message):
    """SMFIC_BODYEOB. libmilter treats data in it as a last body chunk; we keep it."""

    chunk: bytes = b""

    def payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> EndOfMessage:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    command: bytes

    def payload(self) -> bytes:
        _no_nul(self.command, "UNKNOWN command")
        return self.command + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Unknown:
        parts = payload.split(b"\0", 1)  # as Helo.unpack
        if len(parts) == 2 and not parts[1]:
            return cls(parts[0])
        return cls(_exact_cstrings(payload, "UNKNOWN", 1, 1)[0])


_E = TypeVar("_E", bound="_Empty")


class _Empty(Message):
    """A packet with no payload."""

    __slots__ = ()

    @classmethod
    def unpack(cls: type[_E], payload: bytes) -> _E:
        if payload:  # a call less per packet in the usual (empty) case
            _empty(payload, cls.__name__)
        return cls()


@dataclass(frozen=True, slots=True)
class Data(_Empty):
    """The ``Command.DATA`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class EndOfHeaders(_Empty):
    """The ``Command.EOH`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Abort(_Empty):
    """The ``Command.ABORT`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Quit(_Empty):
    """The ``Command.QUIT`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class QuitNoClose(_Empty):
    """The ``Command.QUIT_NC`` packet (no payload)."""


# ---------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Continue(_Empty):
    """The ``Reply.CONTINUE`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Accept(_Empty):
    """The ``Reply.ACCEPT`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Reject(_Empty):
    """The ``Reply.REJECT`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class TempFail(_Empty):
    """The ``Reply.TEMPFAIL`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Discard(_Empty):
    """The ``Reply.DISCARD`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Skip(_Empty):
    """The ``Reply.SKIP`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Progress(_Empty):
    """The ``Reply.PROGRESS`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class Shutdown(_Empty):
    """The ``Reply.SHUTDOWN`` packet (no payload)."""


@dataclass(frozen=True, slots=True)
class ConnFail(_Empty):
    """The ``Reply.CONN_FAIL`` packet (no payload)."""


_REPLY_LINE = re.compile(rb"([45])(\d\d)([ -])(?:([245])\.\d{1,3}\.\d{1,3}(?: |$))?")


@dataclass(frozen=True, slots=True)
class ReplyCodePacket(Message):
    """SMFIR_REPLYCODE: a complete SMTP reply, lines joined by CRLF, no final CRLF.

    Build one with :meth:`build`, which formats multi-line replies and doubles
    ``%`` the way both MTAs require (PROTOCOL.md section 9). Named for the
    packet to tell it from :class:`milterkit.ReplyCode`, the custom reply a
    callback returns, which builds one of these.
    """

    text: bytes

    def payload(self) -> bytes:
        _no_nul(self.text, "reply text")
        return self.text + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> ReplyCodePacket:
        text = _exact_cstrings(payload, "REPLYCODE", 1, 1)[0]
        reply = cls(text)
        problem = reply.problem()
        if problem:
            raise RemoteProtocolError(f"REPLYCODE {text[:80]!r}: {problem}")
        return reply

    @classmethod
    def build(
        cls, smtp_code: int, text: str | list[str], enhanced: str | None = None
    ) -> ReplyCodePacket:
        """Format ``smtp_code [enhanced] text``; a list or newlines give a multi-line reply."""
        # a trailing newline ends the text; it does not start an empty last line
        lines = text if isinstance(text, list) else text.rstrip("\r\n").split("\n")
        lines = [line.rstrip("\r") for line in lines] or [""]
        _check_reply_parts(smtp_code, enhanced, lines)
        prefix = f"{smtp_code}"
        ext = f"{enhanced} " if enhanced else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{prefix}{sep}{ext}{line.replace('%', '%%')}")
        return cls("\r\n".join(out).encode("utf-8", "surrogateescape"))

    @property
    def smtp_code(self) -> int:
        return int(self.text[:3])

    def lines(self) -> list[bytes]:
        return self.text.split(b"\r\n")

    def problem(self) -> str | None:
        """Why an MTA would refuse this reply text, or None if it is well formed."""
        lines = self.lines()
        first = _REPLY_LINE.match(lines[0])
        if first is None:
            return "each line must start with a 4xx/5xx code followed by a space or '-'"
        for i, line in enumerate(lines):
            match = _REPLY_LINE.match(line)
            last = i == len(lines) - 1
            if match is None or match.group(1, 2) != first.group(1, 2):
                return f"line {i + 1} does not repeat the code {lines[0][:3]!r}"
            if match.group(3) != (b" " if last else b"-"):
                return f"line {i + 1} must use {' ' if last else '-'!r} after the code"
            if match.group(4) and match.group(4) != match.group(1):
                return f"line {i + 1}: enhanced status class differs from the reply code"
        return None


#: The old spelling, kept for imports from this module. ``milterkit.protocol.ReplyCode``
#: warns that it is deprecated; this module cannot (mypyc compiles it, and a compiled
#: module has no module-level ``__getattr__``).
ReplyCode = ReplyCodePacket


def _check_reply_parts(smtp_code: int, enhanced: str | None, lines: list[str]) -> None:
    if not 400 <= smtp_code <= 599:
        raise LocalProtocolError(f"reply code {smtp_code} is not a 4xx or 5xx code")
    if enhanced is not None:
        if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", enhanced):
            raise LocalProtocolError(f"enhanced status code {enhanced!r} is not of the form x.y.z")
        if enhanced[0] != str(smtp_code)[0]:
            raise LocalProtocolError(
                f"enhanced status code {enhanced} does not match the class of {smtp_code}"
            )
    for line in lines:
        if "\r" in line or "\0" in line:
            raise LocalProtocolError(f"reply line {line!r} contains CR or NUL")


@dataclass(frozen=True, slots=True)
class AddHeader(Message):
    name: bytes
    value: bytes

    def payload(self) -> bytes:
        return Header(self.name, self.value).payload()

    @classmethod
    def unpack(cls, payload: bytes) -> AddHeader:
        name, value = _exact_cstrings(payload, "ADDHEADER", 2, 2)
        return cls(name, value)


def _indexed_header(payload: bytes, what: str) -> tuple[int, bytes, bytes]:
    if len(payload) < 4:
        raise RemoteProtocolError(f"{what}: payload of {len(payload)} bytes has no index")
    name, value = _exact_cstrings(payload[4:], what, 2, 2)
    return _U32.unpack_from(payload)[0], name, value


@dataclass(frozen=True, slots=True)
class InsertHeader(Message):
    """SMFIR_INSHEADER: index 0 is the very top (above the MTA's Received)."""

    index: int
    name: bytes
    value: bytes

    def payload(self) -> bytes:
        return _u32(self.index, "INSHEADER index") + Header(self.name, self.value).payload()

    @classmethod
    def unpack(cls, payload: bytes) -> InsertHeader:
        return cls(*_indexed_header(payload, "INSHEADER"))


@dataclass(frozen=True, slots=True)
class ChangeHeader(Message):
    """SMFIR_CHGHEADER: the index-th header of that name (1-based); empty value deletes."""

    index: int
    name: bytes
    value: bytes

    def payload(self) -> bytes:
        return _u32(self.index, "CHGHEADER index") + Header(self.name, self.value).payload()

    @classmethod
    def unpack(cls, payload: bytes) -> ChangeHeader:
        return cls(*_indexed_header(payload, "CHGHEADER"))


def _addr_and_args(payload: bytes, what: str) -> tuple[bytes, bytes | None]:
    parts = _exact_cstrings(payload, what, 1, 2)
    return parts[0], parts[1] if len(parts) == 2 else None


def _pack_addr_args(addr: bytes, args: bytes | None, what: str) -> bytes:
    _no_nul(addr, what)
    if args is None:
        return addr + b"\0"
    _no_nul(args, f"{what} arguments")
    return addr + b"\0" + args + b"\0"


@dataclass(frozen=True, slots=True)
class ChangeFrom(Message):
    """SMFIR_CHGFROM: new sender plus ONE optional string of space-separated ESMTP args."""

    sender: bytes
    args: bytes | None = None

    def payload(self) -> bytes:
        return _pack_addr_args(self.sender, self.args, "CHGFROM sender")

    @classmethod
    def unpack(cls, payload: bytes) -> ChangeFrom:
        return cls(*_addr_and_args(payload, "CHGFROM"))


@dataclass(frozen=True, slots=True)
class AddRecipient(Message):
    recipient: bytes

    def payload(self) -> bytes:
        return _pack_addr_args(self.recipient, None, "ADDRCPT recipient")

    @classmethod
    def unpack(cls, payload: bytes) -> AddRecipient:
        return cls(_exact_cstrings(payload, "ADDRCPT", 1, 1)[0])


@dataclass(frozen=True, slots=True)
class AddRecipientPar(Message):
    """SMFIR_ADDRCPT_PAR: recipient plus ONE optional string of ESMTP args."""

    recipient: bytes
    args: bytes | None = None

    def payload(self) -> bytes:
        return _pack_addr_args(self.recipient, self.args, "ADDRCPT_PAR recipient")

    @classmethod
    def unpack(cls, payload: bytes) -> AddRecipientPar:
        return cls(*_addr_and_args(payload, "ADDRCPT_PAR"))


@dataclass(frozen=True, slots=True)
class DeleteRecipient(Message):
    recipient: bytes

    def payload(self) -> bytes:
        return _pack_addr_args(self.recipient, None, "DELRCPT recipient")

    @classmethod
    def unpack(cls, payload: bytes) -> DeleteRecipient:
        return cls(_exact_cstrings(payload, "DELRCPT", 1, 1)[0])


@dataclass(frozen=True, slots=True)
class ReplaceBody(Message):
    """SMFIR_REPLBODY: one chunk of the new body; all chunks of one EOM concatenate."""

    chunk: bytes

    def payload(self) -> bytes:
        return self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> ReplaceBody:
        return cls(payload)


def body_pieces(body: bytes | BinaryIO, max_size: int) -> Iterator[bytes]:
    """A body as pieces of at most ``max_size`` bytes, for BODY and REPLBODY packets.

    The one splitter of both sides (a message's BODY commands, a filter's new
    body). A stream is read until it says end of file (``b""``): a pipe or a
    socket file may return short reads long before its end. An empty body
    yields nothing.
    """
    if max_size < 1:
        raise LocalProtocolError(f"chunk size must be positive, not {max_size}")
    if isinstance(body, bytes | bytearray):
        view = memoryview(body)
        for start in range(0, len(body), max_size):
            yield bytes(view[start : start + max_size])
        return
    while piece := body.read(max_size):
        yield piece


def replace_body_chunks(
    body: bytes | BinaryIO, max_size: int = CHUNK_SIZE
) -> Iterator[ReplaceBody]:
    """Split a new body into REPLBODY packets of at most ``max_size`` bytes.

    An empty body still yields one empty packet: it replaces the body with nothing.
    """
    empty = True
    for piece in body_pieces(body, max_size):
        empty = False
        yield ReplaceBody(piece)
    if empty:
        yield ReplaceBody(b"")


@dataclass(frozen=True, slots=True)
class Quarantine(Message):
    reason: bytes

    def payload(self) -> bytes:
        _no_nul(self.reason, "quarantine reason")
        return self.reason + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Quarantine:
        return cls(_exact_cstrings(payload, "QUARANTINE", 1, 1)[0])


# --------------------------------------------------------------------------- decoding

# The packet byte of each type. It is set here, not as ``code: ClassVar[int] = ...``
# in each class body, because mypyc hands a ClassVar of a dataclass body to
# ``dataclasses`` as a field, which breaks the compiled build (see setup.py).
_CODES: tuple[tuple[type[Message], int], ...] = (
    (OptNeg, Command.OPTNEG),
    (Macro, Command.MACRO),
    (Connect, Command.CONNECT),
    (Helo, Command.HELO),
    (Mail, Command.MAIL),
    (Rcpt, Command.RCPT),
    (Header, Command.HEADER),
    (Body, Command.BODY),
    (EndOfMessage, Command.BODYEOB),
    (Unknown, Command.UNKNOWN),
    (Data, Command.DATA),
    (EndOfHeaders, Command.EOH),
    (Abort, Command.ABORT),
    (Quit, Command.QUIT),
    (QuitNoClose, Command.QUIT_NC),
    (Continue, Reply.CONTINUE),
    (Accept, Reply.ACCEPT),
    (Reject, Reply.REJECT),
    (TempFail, Reply.TEMPFAIL),
    (Discard, Reply.DISCARD),
    (Skip, Reply.SKIP),
    (Progress, Reply.PROGRESS),
    (Shutdown, Reply.SHUTDOWN),
    (ConnFail, Reply.CONN_FAIL),
    (ReplyCodePacket, Reply.REPLYCODE),
    (AddHeader, Reply.ADDHEADER),
    (InsertHeader, Reply.INSHEADER),
    (ChangeHeader, Reply.CHGHEADER),
    (ChangeFrom, Reply.CHGFROM),
    (AddRecipient, Reply.ADDRCPT),
    (AddRecipientPar, Reply.ADDRCPT_PAR),
    (DeleteRecipient, Reply.DELRCPT),
    (ReplaceBody, Reply.REPLBODY),
    (Quarantine, Reply.QUARANTINE),
)
for _type, _code in _CODES:
    _type.code = _code

CommandMessage = (
    OptNeg
    | Macro
    | Connect
    | Helo
    | Mail
    | Rcpt
    | Data
    | Header
    | EndOfHeaders
    | Body
    | EndOfMessage
    | Unknown
    | Abort
    | Quit
    | QuitNoClose
)

_Unpacker = Callable[[bytes], Message]

COMMAND_TYPES: dict[int, _Unpacker] = {
    cls.code: cls.unpack
    for cls in (
        OptNeg,
        Macro,
        Connect,
        Helo,
        Mail,
        Rcpt,
        Data,
        Header,
        EndOfHeaders,
        Body,
        EndOfMessage,
        Unknown,
        Abort,
        Quit,
        QuitNoClose,
    )
}

REPLY_TYPES: dict[int, _Unpacker] = {
    cls.code: cls.unpack
    for cls in (
        OptNeg,
        Continue,
        Accept,
        Reject,
        TempFail,
        Discard,
        ReplyCodePacket,
        Skip,
        Progress,
        AddHeader,
        InsertHeader,
        ChangeHeader,
        ChangeFrom,
        AddRecipient,
        AddRecipientPar,
        DeleteRecipient,
        ReplaceBody,
        Quarantine,
        Shutdown,
        ConnFail,
    )
}


def decode_command(code: int, payload: bytes) -> Message:
    """Unpack a packet the MTA sent; unknown command bytes are a RemoteProtocolError."""
    unpack = COMMAND_TYPES.get(code)
    if unpack is None:
        raise RemoteProtocolError(f"unknown command byte 0x{code:02x} ({chr(code)!r})")
    return unpack(payload)


def decode_reply(code: int, payload: bytes) -> Message:
    """Unpack a packet the filter sent; unknown reply bytes are a RemoteProtocolError."""
    unpack = REPLY_TYPES.get(code)
    if unpack is None:
        raise RemoteProtocolError(f"unknown reply byte 0x{code:02x} ({chr(code)!r})")
    return unpack(payload)
