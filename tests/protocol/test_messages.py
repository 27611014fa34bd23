"""Edge cases of every message type: exact payload bytes and exact decoded objects."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from milterkit.protocol import (
    CHUNK_SIZE,
    MDS_256K,
    Abort,
    Accept,
    Action,
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
    Family,
    Header,
    Helo,
    InsertHeader,
    LocalProtocolError,
    Macro,
    Mail,
    Message,
    OptNeg,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    QuitNoClose,
    Rcpt,
    Reject,
    RemoteProtocolError,
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
from milterkit.protocol.messages import body_pieces


def cmd_roundtrip(message: Message, payload: bytes) -> None:
    """payload() is exactly ``payload`` and decoding it gives the same object back."""
    assert message.payload() == payload
    raw = message.encode()
    assert raw == (len(payload) + 1).to_bytes(4, "big") + bytes((message.code,)) + payload
    assert decode_command(message.code, payload) == message


def reply_roundtrip(message: Message, payload: bytes) -> None:
    assert message.payload() == payload
    assert message.encode()[5:] == payload
    assert decode_reply(message.code, payload) == message


# ------------------------------------------------------------------------ CONNECT


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (Connect(b"cmdline", Family.UNKNOWN), b"cmdline\0U"),
        (Connect(b"", Family.UNKNOWN), b"\0U"),
        (Connect(b"localhost", Family.UNIX, 0, b"/run/sock"), b"localhost\0L\x00\x00/run/sock\0"),
        (
            Connect(b"[127.0.0.1]", Family.INET, 42236, b"127.0.0.1"),
            b"[127.0.0.1]\x004\xa4\xfc127.0.0.1\0",
        ),
        (
            Connect(b"localhost", Family.INET, 0, b"127.0.0.1"),
            b"localhost\x004\x00\x00127.0.0.1\0",
        ),
        (
            Connect(b"v6.example", Family.INET6, 65535, b"IPv6:2001:db8::1"),
            b"v6.example\x006\xff\xffIPv6:2001:db8::1\0",
        ),
        (
            Connect(b"server.client", Family.INET6, 0xA426, b"2001:db8::2"),
            b"server.client\x006\xa4\x262001:db8::2\0",
        ),
        (Connect(b"h", Family.INET, 1, b""), b"h\x004\x00\x01\0"),
    ],
)
def test_connect_families(message: Connect, payload: bytes) -> None:
    cmd_roundtrip(message, payload)


def test_connect_bare_address() -> None:
    assert Connect(b"h", Family.INET6, 1, b"IPv6:2001:db8::1").bare_address == b"2001:db8::1"
    assert Connect(b"h", Family.INET6, 1, b"ipv6:::1").bare_address == b"::1"
    assert Connect(b"h", Family.INET6, 1, b"2001:db8::1").bare_address == b"2001:db8::1"
    assert Connect(b"h", Family.INET, 1, b"192.0.2.1").bare_address == b"192.0.2.1"
    assert Connect(b"h", Family.UNIX, 0, b"/p").bare_address == b"/p"
    assert Connect(b"h", Family.UNKNOWN).bare_address is None
    assert Connect(b"h", Family.UNKNOWN).port is None


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "missing hostname terminator or family byte"),
        (b"host", "missing hostname terminator or family byte"),
        (b"host\0", "missing hostname terminator or family byte"),
        (b"host\0X\x00\x01a\0", "unknown address family byte 0x58"),
        (b"host\0U\0", "CONNECT with family 'U' must have no data, got 1 bytes"),
        (b"host\x004", "truncated port or unterminated address"),
        (b"host\x004\x00", "truncated port or unterminated address"),
        (b"host\x004\x00\x19", "truncated port or unterminated address"),
        (b"host\x004\x00\x19127.0.0.1", "truncated port or unterminated address"),
        (b"host\x004\x00\x19127\x000.0.1\0", "address contains a NUL byte"),
    ],
)
def test_connect_malformed(payload: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        Connect.unpack(payload)


def test_connect_build_errors() -> None:
    with pytest.raises(LocalProtocolError, match="port and address are required"):
        Connect(b"h", Family.INET).payload()
    with pytest.raises(LocalProtocolError, match="port and address are required"):
        Connect(b"h", Family.INET6, 25).payload()
    with pytest.raises(LocalProtocolError, match="no port and no address"):
        Connect(b"h", Family.UNKNOWN, 25, b"x").payload()
    with pytest.raises(LocalProtocolError, match="CONNECT port 65536"):
        Connect(b"h", Family.INET, 65536, b"x").payload()
    with pytest.raises(LocalProtocolError, match="CONNECT port -1"):
        Connect(b"h", Family.INET, -1, b"x").payload()
    with pytest.raises(LocalProtocolError, match="hostname must not contain a NUL"):
        Connect(b"h\0", Family.UNKNOWN).payload()
    with pytest.raises(LocalProtocolError, match="address must not contain a NUL"):
        Connect(b"h", Family.INET, 1, b"1\0").payload()


# ------------------------------------------------------------------- HELO / MAIL / RCPT


def test_helo() -> None:
    cmd_roundtrip(Helo(b"client.example.org"), b"client.example.org\0")
    cmd_roundtrip(Helo(b""), b"\0")
    with pytest.raises(RemoteProtocolError, match="HELO: expected 1 strings, got 2"):
        Helo.unpack(b"a\0b\0")
    with pytest.raises(RemoteProtocolError, match="HELO: payload b'abc' is not NUL-terminated"):
        Helo.unpack(b"abc")


@pytest.mark.parametrize("cls", [Mail, Rcpt])
@pytest.mark.parametrize(
    ("address", "args", "payload"),
    [
        (b"", (), b"\0"),  # Postfix non-SMTP null sender: payload 00
        (b"<>", (), b"<>\0"),
        (b"alice@example.org", (), b"alice@example.org\0"),
        (b"<a@b>", (b"SIZE=100",), b"<a@b>\0SIZE=100\0"),
        (
            b"<a@b>",
            (b"BODY=8BITMIME", b"SIZE=100", b"SMTPUTF8"),
            b"<a@b>\0BODY=8BITMIME\0SIZE=100\0SMTPUTF8\0",
        ),
        (b"", (b"",), b"\0\0"),
    ],
)
def test_mail_and_rcpt(
    cls: type[Mail] | type[Rcpt], address: bytes, args: tuple[bytes, ...], payload: bytes
) -> None:
    cmd_roundtrip(cls(address, args), payload)


def test_mail_rcpt_malformed() -> None:
    with pytest.raises(RemoteProtocolError, match="MAIL: payload b'' is not NUL-terminated"):
        Mail.unpack(b"")
    with pytest.raises(RemoteProtocolError, match=r"RCPT: payload .* is not NUL-terminated"):
        Rcpt.unpack(b"<a@b>\0SIZE=1")
    with pytest.raises(LocalProtocolError, match="ESMTP argument must not contain a NUL"):
        Mail(b"<a@b>", (b"X\0Y",)).payload()
    with pytest.raises(LocalProtocolError, match="RCPT recipient must not contain a NUL"):
        Rcpt(b"a\0").payload()


# ------------------------------------------------------------------------- HEADER


@pytest.mark.parametrize(
    ("name", "value", "payload"),
    [
        (b"Subject", b"Hello", b"Subject\0Hello\0"),
        (b"X-Empty", b"", b"X-Empty\0\0"),
        (b"X-Folded", b"first\n\tsecond", b"X-Folded\0first\n\tsecond\0"),
        (b"X-Lead", b"   three spaces", b"X-Lead\0   three spaces\0"),
        (b"X-8bit", b"caf\xc3\xa9", b"X-8bit\0caf\xc3\xa9\0"),
    ],
)
def test_header(name: bytes, value: bytes, payload: bytes) -> None:
    cmd_roundtrip(Header(name, value), payload)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"Subject\0", "HEADER: expected 2 strings, got 1"),
        (b"Subject\0a\0b\0", "HEADER: expected 2 strings, got 3"),
        (b"Subject\0Hello", "not NUL-terminated"),
        (b"", "not NUL-terminated"),
    ],
)
def test_header_malformed(payload: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        Header.unpack(payload)


# -------------------------------------------------------------------------- MACRO


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (Macro(None), b""),  # no stage byte at all
        (Macro(ord("H")), b"H"),  # Postfix's empty macro packet
        (Macro(ord("C"), ((b"j", b"mx"),)), b"Cj\0mx\0"),
        (Macro(ord("M"), ((b"{a}", b""), (b"b", b"2"))), b"M{a}\0\0b\x002\0"),
        (Macro(ord("R"), (), b"lonely"), b"Rlonely\0"),  # odd string count: 1
        (Macro(ord("R"), ((b"a", b"1"),), b"b"), b"Ra\x001\0b\0"),  # odd: 3
        (Macro(ord("R"), (), b""), b"R\0"),
        (Macro(ord("Z"), ((b"x", b"y"),)), b"Zx\0y\0"),  # unknown stage letter
        (Macro(0, ((b"x", b"y"),)), b"\0x\0y\0"),  # stage byte 0
        (Macro(ord("L"), ((b"i", b"<queue-id>"),)), b"Li\0<queue-id>\0"),
        (Macro(ord("B"), ((b"i", b"Q"),)), b"Bi\0Q\0"),
        (
            Macro(
                ord("U"),
            ),
            b"U",
        ),
    ],
)
def test_macro(message: Macro, payload: bytes) -> None:
    cmd_roundtrip(message, payload)


def test_macro_as_dict_ignores_dangling_name() -> None:
    assert Macro(ord("R"), ((b"a", b"1"),), b"b").as_dict() == {b"a": b"1"}


def test_macro_malformed_and_build_errors() -> None:
    with pytest.raises(RemoteProtocolError, match="MACRO: payload b'j' is not NUL-terminated"):
        Macro.unpack(b"Cj")
    with pytest.raises(LocalProtocolError, match="macro name must not contain a NUL"):
        Macro(ord("C"), ((b"a\0", b"b"),)).payload()
    with pytest.raises(LocalProtocolError, match="macro value must not contain a NUL"):
        Macro(ord("C"), ((b"a", b"b\0"),)).payload()
    with pytest.raises(LocalProtocolError, match="need a stage byte"):
        Macro(None, ((b"a", b"b"),)).payload()
    with pytest.raises(LocalProtocolError, match="stage 256 is not a byte"):
        Macro(256).payload()


# ----------------------------------------------------------- BODY / EOM / UNKNOWN / empty


def test_body_keeps_nul_bytes() -> None:
    cmd_roundtrip(Body(b"\0\0a\0\r\n\0"), b"\0\0a\0\r\n\0")
    cmd_roundtrip(Body(b""), b"")
    cmd_roundtrip(Body(b"x" * CHUNK_SIZE), b"x" * CHUNK_SIZE)
    assert Body(b"x" * CHUNK_SIZE).encode()[:5] == b"\x00\x01\x00\x00B"


def test_end_of_message_with_and_without_data() -> None:
    cmd_roundtrip(EndOfMessage(), b"")
    cmd_roundtrip(EndOfMessage(b"last\0chunk"), b"last\0chunk")


def test_unknown() -> None:
    cmd_roundtrip(Unknown(b"FOO"), b"FOO\0")
    cmd_roundtrip(Unknown(b"FOO bar baz"), b"FOO bar baz\0")
    with pytest.raises(RemoteProtocolError, match="UNKNOWN: expected 1 strings, got 2"):
        Unknown.unpack(b"FOO\0bar\0")
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        Unknown.unpack(b"FOO")


EMPTY_COMMANDS = [Data, EndOfHeaders, Abort, Quit, QuitNoClose]
EMPTY_REPLIES = [Continue, Accept, Reject, TempFail, Discard, Skip, Progress, Shutdown, ConnFail]


@pytest.mark.parametrize("cls", EMPTY_COMMANDS)
def test_empty_commands(cls: type[Message]) -> None:
    message = cls()
    cmd_roundtrip(message, b"")
    assert message.encode() == b"\x00\x00\x00\x01" + bytes((message.code,))
    with pytest.raises(RemoteProtocolError, match=f"{cls.__name__} must have no data, got 2"):
        decode_command(message.code, b"xy")


@pytest.mark.parametrize("cls", EMPTY_REPLIES)
def test_empty_replies(cls: type[Message]) -> None:
    message = cls()
    reply_roundtrip(message, b"")
    assert message.encode() == b"\x00\x00\x00\x01" + bytes((message.code,))
    with pytest.raises(RemoteProtocolError, match=f"{cls.__name__} must have no data, got 1"):
        decode_reply(message.code, b"\0")


def test_command_letters() -> None:
    assert [cls().encode()[4:] for cls in EMPTY_COMMANDS] == [b"T", b"N", b"A", b"Q", b"K"]
    assert [cls().encode()[4:] for cls in EMPTY_REPLIES] == [
        b"c",
        b"a",
        b"r",
        b"t",
        b"d",
        b"s",
        b"p",
        b"4",
        b"f",
    ]


def test_unknown_command_and_reply_bytes() -> None:
    with pytest.raises(RemoteProtocolError, match=r"unknown command byte 0x5a \('Z'\)"):
        decode_command(ord("Z"), b"")
    with pytest.raises(RemoteProtocolError, match=r"unknown reply byte 0x6c \('l'\)"):
        decode_reply(ord("l"), b"")  # SETSYMLIST never travels as a packet
    with pytest.raises(RemoteProtocolError, match="unknown command byte 0x63"):
        decode_command(ord("c"), b"")  # a reply byte is not a command


# ------------------------------------------------------------------------- OPTNEG


def test_optneg() -> None:
    offer = OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))
    cmd_roundtrip(offer, bytes.fromhex("00000006000001ff001fffff"))
    reply_roundtrip(offer, bytes.fromhex("00000006000001ff001fffff"))
    lists = OptNeg(6, Action(0x101), ProtocolFlag(0), ((0, b"j"), (5, b""), (99, b"{x} {y}")))
    reply_roundtrip(
        lists,
        bytes.fromhex("000000060000010100000000")
        + b"\0\0\0\0j\0"
        + b"\0\0\0\x05\0"
        + b"\0\0\0\x63{x} {y}\0",
    )


def test_optneg_offers_with_the_same_bytes_share_one_object() -> None:
    """An MTA's 12-byte offer is decoded once; OptNeg is frozen, so sharing is safe."""
    payload = bytes.fromhex("00000006000001ff001ffffe")
    first = OptNeg.unpack(payload)
    assert OptNeg.unpack(bytes(bytearray(payload))) is first
    assert first == OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFE))
    other = OptNeg.unpack(bytes.fromhex("00000002000000ff0000007f"))
    assert other == OptNeg(2, Action(0xFF), ProtocolFlag(0x7F))
    # longer payloads (a reply with macro lists) are decoded each time
    lists = bytes.fromhex("000000060000010100000000") + b"\0\0\0\0j\0"
    assert OptNeg.unpack(lists) is not OptNeg.unpack(lists)
    assert OptNeg.unpack(lists) == OptNeg.unpack(lists)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "OPTNEG: payload of 0 bytes, at least 12 needed"),
        (b"\0" * 11, "OPTNEG: payload of 11 bytes, at least 12 needed"),
        (b"\0" * 12 + b"\0\0\0\0", "OPTNEG: truncated macro list entry"),
        (b"\0" * 12 + b"\0\0\0\0j", "OPTNEG: macro list is not NUL-terminated"),
    ],
)
def test_optneg_malformed(payload: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        OptNeg.unpack(payload)


def test_optneg_build_errors() -> None:
    with pytest.raises(LocalProtocolError, match="OPTNEG version 4294967296"):
        OptNeg(2**32, Action(0), ProtocolFlag(0)).payload()
    with pytest.raises(LocalProtocolError, match="macro list must not contain a NUL"):
        OptNeg(6, Action(0), ProtocolFlag(0), ((0, b"a\0b"),)).payload()
    with pytest.raises(LocalProtocolError, match="macro list stage -1"):
        OptNeg(6, Action(0), ProtocolFlag(0), ((-1, b"a"),)).payload()


# ---------------------------------------------------------------------- REPLYCODE


@pytest.mark.parametrize(
    ("code", "text", "enhanced", "wire"),
    [
        (550, "go away", "5.7.1", b"550 5.7.1 go away"),
        (451, "later", None, b"451 later"),
        (421, "bye", "4.7.0", b"421 4.7.0 bye"),
        (550, "", None, b"550 "),
        (550, "100% spam", "5.7.1", b"550 5.7.1 100%% spam"),
        (550, "%%", None, b"550 %%%%"),
        (
            550,
            ["line one", "line two"],
            "5.7.0",
            b"550-5.7.0 line one\r\n550 5.7.0 line two",
        ),
        (
            550,
            "line one\nline two",
            "5.7.0",
            b"550-5.7.0 line one\r\n550 5.7.0 line two",
        ),
        (
            451,
            "a\r\nb\nc",
            None,
            b"451-a\r\n451-b\r\n451 c",
        ),
        (554, ["only"], "5.0.0", b"554 5.0.0 only"),
        (550, [], None, b"550 "),
        (550, "caf\u00e9", None, b"550 caf\xc3\xa9"),
    ],
)
def test_replycode_build(
    code: int, text: str | list[str], enhanced: str | None, wire: bytes
) -> None:
    reply = ReplyCodePacket.build(code, text, enhanced)
    assert reply.text == wire
    reply_roundtrip(reply, wire + b"\0")
    assert reply.problem() is None
    assert reply.smtp_code == code


@pytest.mark.parametrize(
    ("code", "text", "enhanced", "problem"),
    [
        (250, "ok", None, "reply code 250 is not a 4xx or 5xx code"),
        (600, "x", None, "reply code 600 is not a 4xx or 5xx code"),
        (399, "x", None, "reply code 399"),
        (550, "x", "4.7.1", "enhanced status code 4.7.1 does not match the class of 550"),
        (451, "x", "5.7.1", "enhanced status code 5.7.1 does not match the class of 451"),
        (550, "x", "2.0.0", "does not match the class of 550"),
        (550, "x", "5.7", "enhanced status code '5.7' is not of the form x.y.z"),
        (550, "x", "5.1234.1", "is not of the form x.y.z"),
        (550, "x", "9.1.1", "is not of the form x.y.z"),
        (550, "bad\rtext", None, "contains CR or NUL"),
        (550, ["ok", "a\rb"], None, "contains CR or NUL"),
        (550, "nul\0", None, "contains CR or NUL"),
    ],
)
def test_replycode_build_errors(
    code: int, text: str | list[str], enhanced: str | None, problem: str
) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(problem)):
        ReplyCodePacket.build(code, text, enhanced)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"", "start with a 4xx/5xx code"),
        (b"550", "start with a 4xx/5xx code"),
        (b"550go away", "start with a 4xx/5xx code"),
        (b"250 ok", "start with a 4xx/5xx code"),
        (b"abc def", "start with a 4xx/5xx code"),
        (b"550 4.7.1 wrong class", "enhanced status class differs"),
        (b"550-one", "line 1 must use ' ' after the code"),
        (b"550-a\r\n550-b", "line 2 must use ' ' after the code"),
        (b"550 a\r\n550 b", "line 1 must use '-' after the code"),
        (b"550-a\r\n451 b", "line 2 does not repeat the code b'550'"),
        (b"550-a\r\nb", "line 2 does not repeat the code"),
        (b"550-5.7.1 a\r\n550 4.7.1 b", "line 2: enhanced status class differs"),
    ],
)
def test_replycode_unpack_malformed(text: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        ReplyCodePacket.unpack(text + b"\0")


def test_replycode_unpack_needs_one_cstring() -> None:
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        ReplyCodePacket.unpack(b"550 x")
    with pytest.raises(RemoteProtocolError, match="REPLYCODE: expected 1 strings, got 2"):
        ReplyCodePacket.unpack(b"550 x\0y\0")


# ------------------------------------------------------------------ modifications


@pytest.mark.parametrize("cls", [InsertHeader, ChangeHeader])
@pytest.mark.parametrize(
    ("index", "prefix"),
    [
        (0, b"\0\0\0\0"),
        (1, b"\0\0\0\x01"),
        (2**32 - 1, b"\xff\xff\xff\xff"),
        (70000, b"\0\x01\x11\x70"),
    ],
)
def test_indexed_headers(
    cls: type[InsertHeader] | type[ChangeHeader], index: int, prefix: bytes
) -> None:
    reply_roundtrip(cls(index, b"X-H", b"v"), prefix + b"X-H\0v\0")
    reply_roundtrip(cls(index, b"X-H", b""), prefix + b"X-H\0\0")
    reply_roundtrip(cls(index, b"X-F", b"a\n\tb"), prefix + b"X-F\0a\n\tb\0")


@pytest.mark.parametrize("cls", [InsertHeader, ChangeHeader])
def test_indexed_headers_malformed(cls: type[InsertHeader] | type[ChangeHeader]) -> None:
    name = (
        cls.__name__.upper()
        .replace("INSERTHEADER", "INSHEADER")
        .replace("CHANGEHEADER", "CHGHEADER")
    )
    with pytest.raises(RemoteProtocolError, match=f"{name}: payload of 3 bytes has no index"):
        cls.unpack(b"\0\0\0")
    with pytest.raises(RemoteProtocolError, match=f"{name}: expected 2 strings, got 1"):
        cls.unpack(b"\0\0\0\x01X\0")
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        cls.unpack(b"\0\0\0\x01")
    with pytest.raises(LocalProtocolError, match=f"{name} index 4294967296"):
        cls(2**32, b"X", b"v").payload()
    with pytest.raises(LocalProtocolError, match=f"{name} index -1"):
        cls(-1, b"X", b"v").payload()
    with pytest.raises(LocalProtocolError, match="header value must not contain a NUL"):
        cls(1, b"X", b"\0").payload()


def test_add_header() -> None:
    reply_roundtrip(AddHeader(b"X-A", b"yes"), b"X-A\0yes\0")
    reply_roundtrip(AddHeader(b"X-A", b""), b"X-A\0\0")
    reply_roundtrip(AddHeader(b"X-A", b"l1\n\tl2"), b"X-A\0l1\n\tl2\0")
    with pytest.raises(RemoteProtocolError, match="ADDHEADER: expected 2 strings, got 1"):
        AddHeader.unpack(b"X-A\0")
    with pytest.raises(LocalProtocolError, match="header name must not contain a NUL"):
        AddHeader(b"X\0", b"v").payload()


@pytest.mark.parametrize(
    ("cls", "name"), [(ChangeFrom, "CHGFROM"), (AddRecipientPar, "ADDRCPT_PAR")]
)
def test_addr_with_optional_args(cls: type[ChangeFrom] | type[AddRecipientPar], name: str) -> None:
    reply_roundtrip(cls(b"<new@example.org>"), b"<new@example.org>\0")
    reply_roundtrip(
        cls(b"<new@example.org>", b"RET=HDRS ENVID=x"), b"<new@example.org>\0RET=HDRS ENVID=x\0"
    )
    reply_roundtrip(cls(b"<>", b""), b"<>\0\0")
    reply_roundtrip(cls(b""), b"\0")
    with pytest.raises(RemoteProtocolError, match=f"{name}: expected 1 to 2 strings, got 3"):
        cls.unpack(b"<a@b>\0A=1\0B=2\0")
    with pytest.raises(RemoteProtocolError, match=f"{name}: payload b'' is not NUL-terminated"):
        cls.unpack(b"")
    with pytest.raises(LocalProtocolError, match="arguments must not contain a NUL"):
        cls(b"<a@b>", b"A=1\0B=2").payload()


@pytest.mark.parametrize(
    ("cls", "name"),
    [(AddRecipient, "ADDRCPT"), (DeleteRecipient, "DELRCPT"), (Quarantine, "QUARANTINE")],
)
def test_single_string_replies(cls: type[Message], name: str) -> None:
    message = cls(b"<x@example.org>")  # type: ignore[call-arg]
    reply_roundtrip(message, b"<x@example.org>\0")
    with pytest.raises(RemoteProtocolError, match=f"{name}: expected 1 strings, got 2"):
        decode_reply(message.code, b"a\0b\0")
    with pytest.raises(RemoteProtocolError, match="not NUL-terminated"):
        decode_reply(message.code, b"a")
    with pytest.raises(LocalProtocolError, match="must not contain a NUL"):
        cls(b"a\0b").payload()  # type: ignore[call-arg]


def test_replace_body() -> None:
    reply_roundtrip(ReplaceBody(b"new\r\nbody\0with nul"), b"new\r\nbody\0with nul")
    reply_roundtrip(ReplaceBody(b""), b"")


@pytest.mark.parametrize(
    ("size", "limit", "lengths"),
    [
        (0, CHUNK_SIZE, [0]),
        (1, CHUNK_SIZE, [1]),
        (CHUNK_SIZE, CHUNK_SIZE, [CHUNK_SIZE]),
        (CHUNK_SIZE + 1, CHUNK_SIZE, [CHUNK_SIZE, 1]),
        (2 * CHUNK_SIZE, CHUNK_SIZE, [CHUNK_SIZE, CHUNK_SIZE]),
        (2 * CHUNK_SIZE + 7, CHUNK_SIZE, [CHUNK_SIZE, CHUNK_SIZE, 7]),
        (MDS_256K, MDS_256K, [MDS_256K]),
        (MDS_256K + 1, MDS_256K, [MDS_256K, 1]),
        (10, 3, [3, 3, 3, 1]),
    ],
)
def test_replace_body_chunks(size: int, limit: int, lengths: list[int]) -> None:
    body = bytes(i % 251 for i in range(size))
    chunks = list(replace_body_chunks(body, limit))
    assert [len(c.chunk) for c in chunks] == lengths
    assert b"".join(c.chunk for c in chunks) == body
    assert all(isinstance(c, ReplaceBody) for c in chunks)
    for chunk in chunks:
        assert chunk.encode()[:4] == (len(chunk.chunk) + 1).to_bytes(4, "big")


def test_replace_body_chunks_default_is_65535() -> None:
    chunks = list(replace_body_chunks(b"a" * (CHUNK_SIZE + 1)))
    assert [c.encode()[:5] for c in chunks] == [b"\x00\x01\x00\x00b", b"\x00\x00\x00\x02b"]


def test_replace_body_chunks_bad_size() -> None:
    with pytest.raises(LocalProtocolError, match="chunk size must be positive, not 0"):
        list(replace_body_chunks(b"x", 0))


class _ShortReads(io.RawIOBase):
    """A raw stream that returns at most 3 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece, self.data = self.data[:3], self.data[3:]
        buffer[: len(piece)] = piece
        return len(piece)


def test_body_pieces_of_bytes_and_of_a_stream_with_short_reads() -> None:
    body = bytes(range(256)) * 40
    assert [len(p) for p in body_pieces(body, 4096)] == [4096, 4096, 2048]
    assert b"".join(body_pieces(body, 4096)) == body
    pieces = list(body_pieces(_ShortReads(body), 4096))  # type: ignore[arg-type]
    assert b"".join(pieces) == body  # read to its end, not to the first short read
    assert max(map(len, pieces)) <= 4096
    assert list(body_pieces(b"", 10)) == []
    assert [m.chunk for m in replace_body_chunks(io.BytesIO(b""))] == [b""]


def test_body_pieces_bad_size() -> None:
    with pytest.raises(LocalProtocolError, match="chunk size must be positive, not 0"):
        list(body_pieces(b"abc", 0))
