"""Option negotiation: versions, 12-byte OPTNEG, macro lists, MDS, checks on both sides."""

from __future__ import annotations

import re

import pytest

from milterkit.protocol import (
    MAX_DATA_SIZE,
    MDS_1M,
    MDS_256K,
    Action,
    Command,
    FilterConnection,
    LocalProtocolError,
    MacroStage,
    MTAConnection,
    Negotiated,
    OptNeg,
    ProtocolFlag,
    RemoteProtocolError,
    accept_filter_reply,
    build_filter_reply,
    data_size_for,
)
from milterkit.protocol.constants import (
    NO_REPLY_FLAG,
    NO_SEND_FLAG,
    V1_ACTIONS,
    V1_PROTOCOL,
)
from milterkit.protocol.negotiate import MacroNames, negotiated, semantic_version

P = ProtocolFlag
A = Action

# What Postfix offers per milter_protocol setting (PROTOCOL.md 4.1).
POSTFIX_OFFERS = {
    2: OptNeg(2, A(0x1FF), P(0x7F)),
    3: OptNeg(3, A(0x1FF), P(0x17F)),
    4: OptNeg(4, A(0x1FF), P(0x37F)),
    6: OptNeg(6, A(0x1FF), P(0x1FFFFF)),
}


def test_optneg_is_12_bytes_both_ways() -> None:
    offer = OptNeg(6, A(0x1FF), P(0x1FFFFF))
    assert offer.encode() == bytes.fromhex("0000000d4f00000006000001ff001fffff")
    reply = build_filter_reply(offer, actions=A.ADD_HEADERS, protocol=P.NOUNKNOWN | P.SKIP)
    assert reply.encode() == bytes.fromhex("0000000d4f00000006000000010000 0500".replace(" ", ""))
    assert OptNeg.unpack(reply.payload()) == reply


@pytest.mark.parametrize("mta_version", [2, 3, 4, 5, 6])
def test_reply_version_is_min_of_both(mta_version: int) -> None:
    offer = OptNeg(mta_version, A(0x1FF), P(0x1FFFFF))
    assert build_filter_reply(offer).version == mta_version
    assert build_filter_reply(offer, version=2).version == 2
    assert build_filter_reply(OptNeg(9, A(0x1FF), P(0x1FFFFF))).version == 6


@pytest.mark.parametrize(
    ("version", "data", "unknown"),
    [(2, False, False), (3, False, True), (4, True, True), (5, True, True), (6, True, True)],
)
def test_commands_by_version(version: int, data: bool, unknown: bool) -> None:
    """v2: no DATA/UNKNOWN; v3 adds UNKNOWN; v4 adds DATA; 5 behaves as 4."""
    agreed = Negotiated(version, A(0), P(0))
    assert agreed.sends(Command.DATA) is data
    assert agreed.sends(Command.UNKNOWN) is unknown
    for cmd in (Command.CONNECT, Command.HELO, Command.MAIL, Command.RCPT, Command.HEADER):
        assert agreed.sends(cmd)
    assert semantic_version(version) == (4 if version == 5 else version)


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
def test_mta_connection_per_version(version: int) -> None:
    from milterkit.protocol import Data, Macro, Unknown

    conn = MTAConnection()
    conn.send(OptNeg(version, A(0x1FF), P(0x1FFFFF)))
    conn.receive_data(OptNeg(version, A(0), P(0)).encode())
    conn.next_event()
    sent_data = conn.send(Data())
    assert sent_data == (b"\0\0\0\x01T" if version >= 4 else b"")
    if sent_data:
        conn.receive_data(b"\0\0\0\x01c")
        conn.next_event()
    # MACRO packets for a stage beyond the version are not sent either.
    assert conn.send(Macro(ord("T"), ((b"i", b"Q"),))) == (
        b"" if version < 4 else b"\0\0\0\x06DTi\0Q\0"
    )
    assert conn.send(Macro(ord("U"))) == (b"" if version < 3 else b"\0\0\0\x02DU")
    assert conn.send(Macro(ord("L"))) == b"\0\0\0\x02DL"  # Postfix sends 'L' even to v2
    assert conn.send(Unknown(b"FOO")) == (b"\0\0\0\x05UFOO\0" if version >= 3 else b"")


def test_macro_list_extension_with_stage_ids() -> None:
    offer = POSTFIX_OFFERS[6]
    wanted: dict[MacroStage, MacroNames] = {
        MacroStage.EOH: ["i"],
        MacroStage.EOM: "{msg_id} i",
        MacroStage.CONNECT: b"j {daemon_name}",
        MacroStage.ENVRCPT: ("{rcpt_addr}",),
    }
    reply = build_filter_reply(offer, macros=wanted)
    assert reply.actions == A.SETSYMLIST
    assert reply.macros == (
        (0, b"j {daemon_name}"),
        (3, b"{rcpt_addr}"),
        (5, b"{msg_id} i"),
        (6, b"i"),
    )
    assert reply.payload()[12:] == (
        b"\0\0\0\0j {daemon_name}\0\0\0\0\x03{rcpt_addr}\0\0\0\0\x05{msg_id} i\0\0\0\0\x06i\0"
    )
    agreed = accept_filter_reply(offer, OptNeg.unpack(reply.payload()))
    assert agreed.macro_names(MacroStage.EOM) == (b"{msg_id}", b"i")
    assert agreed.macro_names(MacroStage.EOH) == (b"i",)
    assert agreed.macro_names(MacroStage.HELO) is None


def test_macro_list_unknown_stage_ids_and_commas_are_kept() -> None:
    reply = OptNeg(6, A.SETSYMLIST, P(0), ((7, b"x"), (0xFFFFFFFF, b""), (2, b"i,{a}  {b}")))
    assert OptNeg.unpack(reply.payload()) == reply
    agreed = accept_filter_reply(POSTFIX_OFFERS[6], reply)
    assert agreed.macros == {7: (b"x",), 0xFFFFFFFF: (), 2: (b"i", b"{a}", b"{b}")}


def test_macro_lists_sent_at_every_version_when_setsymlist_is_offered() -> None:
    """Postfix offers SETSYMLIST and parses the lists whatever milter_protocol says."""
    wanted = {MacroStage.CONNECT: "j"}
    for offer in POSTFIX_OFFERS.values():
        reply = build_filter_reply(offer, macros=wanted)
        assert reply.macros == ((0, b"j"),)
        assert reply.actions == A.SETSYMLIST
    assert build_filter_reply(POSTFIX_OFFERS[6], version=5, macros=wanted).macros == ((0, b"j"),)


def test_macro_lists_dropped_without_setsymlist() -> None:
    wanted = {MacroStage.CONNECT: "j"}
    no_symlist = OptNeg(6, A(0xFF), P(0x1FFFFF))
    reply = build_filter_reply(no_symlist, macros=wanted)
    assert reply.macros == ()
    assert reply.actions == A(0)


@pytest.mark.parametrize(
    ("offered", "wanted", "size"),
    [
        (P(0), P.MDS_1M, MAX_DATA_SIZE),
        (P.MDS_256K, P.MDS_256K, MDS_256K),
        (P.MDS_1M, P.MDS_1M, MDS_1M),
        (P.MDS_256K | P.MDS_1M, P.MDS_256K | P.MDS_1M, MDS_1M),
        (P.MDS_256K | P.MDS_1M, P.MDS_256K, MDS_256K),
        (P.MDS_1M, P.MDS_256K, MAX_DATA_SIZE),
        (P.MDS_1M, P(0), MAX_DATA_SIZE),
    ],
)
def test_mds_bits(offered: ProtocolFlag, wanted: ProtocolFlag, size: int) -> None:
    offer = OptNeg(6, A(0x1FF), P(0x1FFFFF) | offered)
    reply = build_filter_reply(offer, protocol=wanted)
    assert reply.protocol == wanted & offered
    assert negotiated(offer, reply).max_data_size == size
    assert accept_filter_reply(offer, reply).max_data_size == size


def test_data_size_for() -> None:
    assert data_size_for(P(0)) == 65535
    assert data_size_for(P.MDS_256K) == 262143
    assert data_size_for(P.MDS_1M) == 1048575
    assert data_size_for(P.MDS_1M | P.MDS_256K) == 1048575


def test_missing_actions_are_named() -> None:
    offer = OptNeg(6, A.ADD_HEADERS | A.CHANGE_BODY, P(0x1FFFFF))
    problem = (
        "the filter needs actions the MTA did not offer: DELETE_RCPT|QUARANTINE "
        "(offered ADD_HEADERS|CHANGE_BODY)"
    )
    with pytest.raises(LocalProtocolError, match=re.escape(problem)):
        build_filter_reply(offer, actions=A.ADD_HEADERS | A.DELETE_RCPT | A.QUARANTINE)


def test_unoffered_protocol_bits_are_dropped() -> None:
    """libmilter drops unoffered NR_*/NODATA/NOUNKNOWN; we drop every unoffered bit."""
    reply = build_filter_reply(
        POSTFIX_OFFERS[2],
        protocol=P.NOHELO | P.NR_CONN | P.NODATA | P.NOUNKNOWN | P.SKIP | P.HDR_LEADSPC | P.NR_HDR,
    )
    assert reply.protocol == P.NOHELO | P.HDR_LEADSPC  # kept: dropping it changes bytes
    reply = build_filter_reply(OptNeg(2, A(0x1FF), P(0xFF)), protocol=P.NR_HDR | P.NR_BODY)
    assert reply.protocol == P.NR_HDR  # Postfix "no_header_reply" offers 0x80 with v2
    reply = build_filter_reply(POSTFIX_OFFERS[6], protocol=P.NR_BODY | P.MDS_1M | P.TEST)
    assert reply.protocol == P.NR_BODY


def test_zero_fields_are_the_v1_sets() -> None:
    offer = OptNeg(6, A(0), P(0))
    reply = build_filter_reply(offer, actions=V1_ACTIONS, protocol=P(0x3F) | P.NOEOH)
    assert reply.actions == A(0x0F)
    assert reply.protocol == V1_PROTOCOL
    with pytest.raises(LocalProtocolError, match="CHANGE_HEADERS"):
        build_filter_reply(offer, actions=A.CHANGE_HEADERS)
    agreed = accept_filter_reply(offer, OptNeg(6, A(0x0F), P(0x7F)))
    assert agreed.protocol == P(0x3F)
    with pytest.raises(RemoteProtocolError, match="actions the MTA did not offer: CHANGE_HEADERS"):
        accept_filter_reply(offer, OptNeg(6, A(0x1F), P(0)))


def test_offer_below_v2_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="MTA offers protocol version 1; at least 2"):
        build_filter_reply(OptNeg(1, A(0x0F), P(0x3F)))
    conn = FilterConnection()
    conn.receive_data(OptNeg(1, A(0x0F), P(0x3F)).encode())
    with pytest.raises(RemoteProtocolError, match="MTA offers protocol version 1"):
        conn.next_event()


# ------------------------------------------------------------------- MTA-side checks


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (
            OptNeg(7, A(0), P(0)),
            "filter protocol version 7 conflicts with the offered version 6 (must be 2..6)",
        ),
        (OptNeg(1, A(0), P(0)), "filter protocol version 1 conflicts"),
        (OptNeg(0, A(0), P(0)), "filter protocol version 0 conflicts"),
        (
            OptNeg(6, A(0x200), P(0)),
            "filter requests actions the MTA did not offer: 0x200 (0x200 vs offered 0x1ff)",
        ),
    ],
)
def test_accept_filter_reply_errors(reply: OptNeg, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        accept_filter_reply(POSTFIX_OFFERS[6], reply)


def test_accept_filter_reply_version_above_a_lower_offer() -> None:
    with pytest.raises(RemoteProtocolError, match="version 6 conflicts with the offered version 4"):
        accept_filter_reply(POSTFIX_OFFERS[4], OptNeg(6, A(0), P(0)))


def test_accept_filter_reply_actions_beyond_offer() -> None:
    offer = OptNeg(6, A.ADD_HEADERS, P(0x1FFFFF))
    with pytest.raises(RemoteProtocolError, match=re.escape("CHANGE_BODY (0x3 vs offered 0x1)")):
        accept_filter_reply(offer, OptNeg(6, A.ADD_HEADERS | A.CHANGE_BODY, P(0)))


def test_accept_filter_reply_strips_unoffered_protocol_bits() -> None:
    """Like Postfix: protocol bits beyond the offer are ignored, not an error."""
    agreed = accept_filter_reply(POSTFIX_OFFERS[2], OptNeg(2, A(0x1FF), P(0x1FFFFF) | P.MDS_1M))
    assert agreed.protocol == P(0x7F)
    assert agreed.max_data_size == MAX_DATA_SIZE
    assert agreed.version == 2


def test_filter_side_refuses_to_send_unoffered_bits() -> None:
    conn = FilterConnection()
    conn.receive_data(POSTFIX_OFFERS[2].encode())
    conn.next_event()
    with pytest.raises(LocalProtocolError, match="protocol bits the MTA did not offer"):
        conn.send(OptNeg(2, A(0), P.NR_CONN))
    with pytest.raises(LocalProtocolError, match="version 3 conflicts"):
        conn.send(OptNeg(3, A(0), P(0)))
    with pytest.raises(LocalProtocolError, match="actions the MTA did not offer"):
        conn.send(OptNeg(2, A(0x200), P(0)))
    assert conn.send(OptNeg(2, A(0x3F), P(0x7F))) == OptNeg(2, A(0x3F), P(0x7F)).encode()


# ----------------------------------------------------------- sends / expects_reply


REPLIED = [
    Command.CONNECT,
    Command.HELO,
    Command.MAIL,
    Command.RCPT,
    Command.DATA,
    Command.HEADER,
    Command.EOH,
    Command.BODY,
    Command.UNKNOWN,
]


def test_defaults_send_and_answer_everything() -> None:
    agreed = Negotiated(6, A(0), P(0))
    for cmd in Command:
        assert agreed.sends(cmd), cmd
    for cmd in [*REPLIED, Command.OPTNEG, Command.BODYEOB]:
        assert agreed.expects_reply(cmd), cmd
    for cmd in (Command.MACRO, Command.ABORT, Command.QUIT, Command.QUIT_NC):
        assert not agreed.expects_reply(cmd), cmd


@pytest.mark.parametrize("command", REPLIED)
def test_each_no_send_flag(command: Command) -> None:
    flag = NO_SEND_FLAG[command]
    agreed = Negotiated(6, A(0), flag)
    assert not agreed.sends(command)
    assert agreed.expects_reply(command)  # NO* does not touch the reply
    for other in Command:
        if other != command:
            assert agreed.sends(other), other


@pytest.mark.parametrize("command", REPLIED)
def test_each_no_reply_flag(command: Command) -> None:
    flag = NO_REPLY_FLAG[command]
    agreed = Negotiated(6, A(0), flag)
    assert agreed.sends(command)
    assert not agreed.expects_reply(command)
    for other in [*REPLIED, Command.BODYEOB, Command.OPTNEG]:
        if other != command:
            assert agreed.expects_reply(other), other


def test_flag_tables_match_protocol_md() -> None:
    assert {c.name: int(f) for c, f in NO_SEND_FLAG.items()} == {
        "CONNECT": 0x1,
        "HELO": 0x2,
        "MAIL": 0x4,
        "RCPT": 0x8,
        "BODY": 0x10,
        "HEADER": 0x20,
        "EOH": 0x40,
        "UNKNOWN": 0x100,
        "DATA": 0x200,
    }
    assert {c.name: int(f) for c, f in NO_REPLY_FLAG.items()} == {
        "HEADER": 0x80,
        "CONNECT": 0x1000,
        "HELO": 0x2000,
        "MAIL": 0x4000,
        "RCPT": 0x8000,
        "DATA": 0x10000,
        "UNKNOWN": 0x20000,
        "EOH": 0x40000,
        "BODY": 0x80000,
    }


def test_eom_and_control_commands_cannot_be_disabled() -> None:
    agreed = Negotiated(6, A(0), P(0xFFFFFFFF))
    for cmd in (Command.BODYEOB, Command.MACRO, Command.ABORT, Command.QUIT, Command.QUIT_NC):
        assert agreed.sends(cmd)
    assert agreed.expects_reply(Command.BODYEOB)


def test_missing_actions_helper() -> None:
    agreed = Negotiated(6, A.ADD_HEADERS | A.QUARANTINE, P(0))
    assert agreed.missing_actions(A.ADD_HEADERS | A.CHANGE_BODY) == A.CHANGE_BODY
    assert agreed.missing_actions(A.QUARANTINE) == A(0)


def test_filter_connection_negotiate_round_trip() -> None:
    conn = FilterConnection()
    conn.receive_data(POSTFIX_OFFERS[6].encode())
    assert conn.next_event() == POSTFIX_OFFERS[6]
    out = conn.negotiate(
        actions=A.ADD_HEADERS | A.CHANGE_FROM,
        protocol=P.NR_HDR | P.SKIP,
        macros={MacroStage.EOH: "i"},
    )
    assert out == (b"\0\0\0\x13O\0\0\0\x06\0\0\x01\x41\0\0\x04\x80" + b"\0\0\0\x06i\0")
    assert conn.negotiated == Negotiated(
        6, A(0x141), P.NR_HDR | P.SKIP, {6: (b"i",)}, MAX_DATA_SIZE
    )
    with pytest.raises(LocalProtocolError, match="no OPTNEG from the MTA to answer"):
        conn.negotiate()
