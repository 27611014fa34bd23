"""Every hex example of PROTOCOL.md (section 15, plus 4.3 and 4.5), byte for byte, both ways."""

from __future__ import annotations

import pytest

from milterkit.protocol import (
    NEED_DATA,
    Accept,
    Action,
    AddHeader,
    Body,
    ChangeHeader,
    Command,
    Connect,
    ConnectionClosed,
    Continue,
    EndOfHeaders,
    EndOfMessage,
    Family,
    FilterConnection,
    Header,
    Helo,
    InsertHeader,
    Macro,
    MacroStage,
    Mail,
    Message,
    MTAConnection,
    OptNeg,
    ProtocolFlag,
    Quit,
    Rcpt,
    ReplyCodePacket,
    decode_command,
    decode_reply,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# (step, direction, bytes, message) -- PROTOCOL.md section 15, the 21-step example.
OFFER = OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF))
REPLY = OptNeg(6, Action(0x101), ProtocolFlag(0x300), ((0, b"j {daemon_name}"),))
SESSION: list[tuple[int, str, bytes, Message]] = [
    (1, "mta", h("0000000D4F00000006000001FF001FFFFF"), OFFER),
    (
        2,
        "filter",
        h("000000214F000000060000010100000300000000006A207B6461656D6F6E5F6E616D657D00"),
        REPLY,
    ),
    (
        3,
        "mta",
        h("0000002744436A006D782E6578616D706C652E6E6574007B6461656D6F6E5F6E616D657D00736D74706400"),
        Macro(ord("C"), ((b"j", b"mx.example.net"), (b"{daemon_name}", b"smtpd"))),
    ),
    (
        4,
        "mta",
        h(
            "0000002243636C69656E742E6578616D706C652E6F72670034C350313932 2E302E322E313000".replace(
                " ", ""
            )
        ),
        Connect(b"client.example.org", Family.INET, 50000, b"192.0.2.10"),
    ),
    (5, "filter", h("0000000163"), Continue()),
    (
        6,
        "mta",
        h("0000001448636C69656E742E6578616D706C652E6F726700"),
        Helo(b"client.example.org"),
    ),
    (7, "filter", h("0000000163"), Continue()),
    (
        8,
        "mta",
        h("000000234D3C616C696365406578616D706C652E6F72673E00424F44593D384249544D494D4500"),
        Mail(b"<alice@example.org>", (b"BODY=8BITMIME",)),
    ),
    (9, "filter", h("0000000163"), Continue()),
    (10, "mta", h("00000013523C626F62406578616D706C652E6E65743E00"), Rcpt(b"<bob@example.net>")),
    (11, "filter", h("0000000163"), Continue()),
    (12, "mta", h("0000000F4C5375626A6563740048656C6C6F00"), Header(b"Subject", b"Hello")),
    (13, "filter", h("0000000163"), Continue()),
    (14, "mta", h("000000014E"), EndOfHeaders()),
    (15, "filter", h("0000000163"), Continue()),
    (16, "mta", h("0000000942486920426F620D0A"), Body(b"Hi Bob\r\n")),
    (17, "filter", h("0000000163"), Continue()),
    (18, "mta", h("0000000145"), EndOfMessage()),
    (
        19,
        "filter",
        h("0000000F68582D5363616E6E65640079657300"),
        AddHeader(b"X-Scanned", b"yes"),
    ),
    (20, "filter", h("0000000161"), Accept()),
    (21, "mta", h("0000000151"), Quit()),
]

# "Further verified byte strings" of section 15, and the examples of 4.3 / 4.5.
FURTHER: list[tuple[str, str, bytes, Message]] = [
    (
        "replycode-mail",
        "filter",
        h("000000137935353020352E372E3120676F206177617900"),
        ReplyCodePacket(b"550 5.7.1 go away"),
    ),
    (
        "replycode-multiline",
        "filter",
        b"\x00\x00\x00\x28y550-5.7.0 line one\r\n550 5.7.0 line two\x00",
        ReplyCodePacket(b"550-5.7.0 line one\r\n550 5.7.0 line two"),
    ),
    (
        "chgheader-subject-1",
        "filter",
        h("000000156D000000015375626A656374006368616E67656400"),
        ChangeHeader(1, b"Subject", b"changed"),
    ),
    (
        "insheader-top",
        "filter",
        b"\x00\x00\x00\x0fi\x00\x00\x00\x00X-Top\x00top\x00",
        InsertHeader(0, b"X-Top", b"top"),
    ),
    (
        "delete-header",
        "filter",
        b"\x00\x00\x00\x0cm\x00\x00\x00\x01X-Del\x00\x00",
        ChangeHeader(1, b"X-Del", b""),
    ),
    ("empty-postfix-macro-helo", "mta", h("000000024448"), Macro(ord("H"))),
    (
        "postfix-header-macro",
        "mta",
        b"\x00\x00\x00\x0fDLi\x00<queue-id>\x00",
        Macro(ord("L"), ((b"i", b"<queue-id>"),)),
    ),
    (
        "optneg-reply-4.3",
        "filter",
        h("000000214F000000060000010100000300000000006A207B6461656D6F6E5F6E616D657D00"),
        REPLY,
    ),
    (
        "macro-list-4.5",
        "filter",
        h("000000214F000000060000010100000000") + h("000000006A207B636C69656E745F616464727D00"),
        OptNeg(6, Action(0x101), ProtocolFlag(0), ((0, b"j {client_addr}"),)),
    ),
]

ALL = [(f"step{s}", d, b, m) for s, d, b, m in SESSION] + FURTHER
IDS = [name for name, *_ in ALL]


def _decode(direction: str, raw: bytes) -> Message:
    decode = decode_command if direction == "mta" else decode_reply
    return decode(raw[4], raw[5:])


def test_length_fields_are_consistent() -> None:
    for name, _, raw, _ in ALL:
        assert int.from_bytes(raw[:4], "big") == len(raw) - 4, name


@pytest.mark.parametrize(("name", "direction", "raw", "message"), ALL, ids=IDS)
def test_encode_gives_the_documented_bytes(
    name: str, direction: str, raw: bytes, message: Message
) -> None:
    assert message.encode() == raw


@pytest.mark.parametrize(("name", "direction", "raw", "message"), ALL, ids=IDS)
def test_decode_gives_the_documented_message(
    name: str, direction: str, raw: bytes, message: Message
) -> None:
    assert _decode(direction, raw) == message


def test_macro_list_bytes_of_section_4_5() -> None:
    reply = OptNeg(6, Action(0x101), ProtocolFlag(0), ((0, b"j {client_addr}"),))
    assert reply.payload()[12:] == h("000000006A207B636C69656E745F616464727D00")


def test_replycode_build_reproduces_the_verified_strings() -> None:
    assert ReplyCodePacket.build(550, "go away", "5.7.1").encode() == FURTHER[0][2]
    multi = ReplyCodePacket.build(550, ["line one", "line two"], "5.7.0")
    assert multi.encode() == FURTHER[1][2]
    assert multi.encode()[:4] == b"\x00\x00\x00\x28"


def _drain(conn: FilterConnection) -> list[object]:
    events: list[object] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


@pytest.mark.parametrize("split", [None, 1, 3])
def test_session_through_filter_connection(split: int | None) -> None:
    conn = FilterConnection()
    for step, direction, raw, message in SESSION:
        if direction == "mta":
            chunk = split or len(raw)
            for start in range(0, len(raw), chunk):
                conn.receive_data(raw[start : start + chunk])
            events = _drain(conn)
            # MACRO packets are folded into conn.macros, never events.
            assert events == ([] if isinstance(message, Macro) else [message]), step
        elif step == 2:
            out = conn.negotiate(
                actions=Action.ADD_HEADERS,
                protocol=ProtocolFlag.NOUNKNOWN | ProtocolFlag.NODATA,
                macros={MacroStage.CONNECT: "j {daemon_name}"},
            )
            assert out == raw
        else:
            assert conn.send(message) == raw, step
    assert conn.macros.lookup("daemon_name") == b"smtpd"
    assert conn.macros.lookup("{j}") == b"mx.example.net"
    assert conn.awaiting is None
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_session_through_filter_connection_all_at_once() -> None:
    """All MTA bytes up to the first reply-expecting command arrive in one read."""
    conn = FilterConnection()
    conn.receive_data(SESSION[0][2])
    assert conn.next_event() == OFFER
    assert conn.send(REPLY) == SESSION[1][2]
    conn.receive_data(SESSION[2][2] + SESSION[3][2])
    assert conn.next_event() == SESSION[3][3]
    assert conn.next_event() is NEED_DATA
    assert conn.macros.stage(ord("C")) == {b"j": b"mx.example.net", b"daemon_name": b"smtpd"}


def test_session_through_mta_connection() -> None:
    conn = MTAConnection()
    for step, direction, raw, message in SESSION:
        if direction == "mta":
            assert conn.send(message) == raw, step
            continue
        for i in range(len(raw)):  # the filter's bytes one at a time
            assert conn.next_event() is NEED_DATA
            conn.receive_data(raw[i : i + 1])
        assert conn.next_event() == message, step
        assert conn.next_event() is NEED_DATA
    negotiated = conn.negotiated
    assert negotiated is not None
    assert negotiated.version == 6
    assert negotiated.actions == Action.ADD_HEADERS | Action.SETSYMLIST
    assert negotiated.protocol == ProtocolFlag.NOUNKNOWN | ProtocolFlag.NODATA
    assert negotiated.macros == {0: (b"j", b"{daemon_name}")}
    assert not conn.sends(Command.DATA)
    assert not conn.sends(Command.UNKNOWN)
    assert conn.awaiting is None
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_mta_connection_awaits_exactly_the_documented_replies() -> None:
    conn = MTAConnection()
    awaited = []
    for step, direction, raw, message in SESSION:
        if direction == "mta":
            conn.send(message)
            awaited.append((step, conn.awaiting))
        else:
            conn.receive_data(raw)
            conn.next_event()
    assert awaited == [
        (1, Command.OPTNEG),
        (3, None),
        (4, Command.CONNECT),
        (6, Command.HELO),
        (8, Command.MAIL),
        (10, Command.RCPT),
        (12, Command.HEADER),
        (14, Command.EOH),
        (16, Command.BODY),
        (18, Command.BODYEOB),
        (21, None),
    ]
