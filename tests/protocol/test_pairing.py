"""An MTAConnection paired in memory with a FilterConnection: complete sessions."""

from __future__ import annotations

from typing import Any

import pytest

from milterkit.protocol import (
    NEED_DATA,
    Abort,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeFrom,
    ChangeHeader,
    Command,
    Connect,
    ConnectionClosed,
    ConnFail,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Family,
    FilterConnection,
    Header,
    Helo,
    InsertHeader,
    LocalProtocolError,
    Macro,
    Mail,
    Message,
    MTAConnection,
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
    encode_frame,
    replace_body_chunks,
)

P = ProtocolFlag
CONNECT = Connect(b"client.example.org", Family.INET, 50000, b"192.0.2.10")


class Pair:
    """Moves bytes between the two sides and records what each side saw."""

    def __init__(self) -> None:
        self.mta = MTAConnection()
        self.flt = FilterConnection()
        self.wire: list[bytes] = []

    def negotiate(self, offer: OptNeg | None = None, **wanted: Any) -> None:
        offer = offer or MTAConnection.default_offer()
        assert self.command(offer) == [offer]
        reply = self.flt.negotiate(**wanted)
        self.mta.receive_data(reply)
        event = self.mta.next_event()
        assert isinstance(event, OptNeg)
        assert self.mta.next_event() is NEED_DATA
        assert self.mta.negotiated == self.flt.negotiated

    def command(self, message: Message) -> list[object]:
        """MTA sends ``message``; return the filter's events (b"" sends nothing)."""
        data = self.mta.send(message)
        self.wire.append(data)
        if data:
            self.flt.receive_data(data)
        return self.filter_events()

    def filter_events(self) -> list[object]:
        events: list[object] = []
        while (event := self.flt.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
        return events

    def reply(self, *messages: Message) -> list[object]:
        """Filter sends ``messages``; return the MTA's events."""
        data = self.flt.send_all(list(messages))
        self.mta.receive_data(data)
        events: list[object] = []
        while (event := self.mta.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
        return events

    def step(self, message: Message, *replies: Message) -> None:
        """Command, exact event on the filter side, replies, exact events on the MTA side."""
        events = self.command(message)
        assert events == [message]
        if replies:
            assert self.reply(*replies) == list(replies)
        assert self.mta.awaiting is None
        assert self.flt.awaiting is None

    def open_session(self) -> None:
        self.step(CONNECT, Continue())
        self.step(Helo(b"client.example.org"), Continue())

    def close(self) -> None:
        assert self.command(Quit()) == [Quit()]
        self.flt.receive_data(b"")
        assert isinstance(self.flt.next_event(), ConnectionClosed)
        self.mta.receive_data(b"")
        assert isinstance(self.mta.next_event(), ConnectionClosed)


def ready(**wanted: Any) -> Pair:
    pair = Pair()
    pair.negotiate(**wanted)
    pair.open_session()
    return pair


def message_steps(n: int = 1) -> list[Message]:
    return [
        Mail(f"<s{n}@example.org>".encode(), (b"SIZE=10",)),
        Rcpt(f"<r{n}@example.net>".encode()),
        Data(),
        Header(b"Subject", f"message {n}".encode()),
        EndOfHeaders(),
        Body(b"line\r\n"),
    ]


def run_message(pair: Pair, n: int = 1) -> None:
    for msg in message_steps(n):
        pair.step(msg, Continue())


# ----------------------------------------------------------------------- sessions


def test_several_messages_on_one_connection() -> None:
    pair = ready(actions=Action.ADD_HEADERS)
    for n in range(1, 4):
        pair.command(Macro(ord("M"), ((b"i", f"Q{n}".encode()),)))
        run_message(pair, n)
        assert pair.flt.macros.lookup("i") == f"Q{n}".encode()
        assert pair.command(EndOfMessage()) == [EndOfMessage()]
        assert pair.reply(AddHeader(b"X-N", str(n).encode()), Accept()) == [
            AddHeader(b"X-N", str(n).encode()),
            Accept(),
        ]
        assert not pair.flt.in_message
        # as in libmilter, the ended message's macros stay until the next one starts
        assert pair.flt.macros.lookup("i") == f"Q{n}".encode()
        # Postfix-style ABORT after the EOM reply: absorbed, no event.
        assert pair.command(Abort()) == []
    pair.close()


def test_sendmail_style_next_message_without_abort() -> None:
    pair = ready()
    run_message(pair, 1)
    pair.step(EndOfMessage(), Continue())
    run_message(pair, 2)
    pair.step(EndOfMessage(), Continue())
    pair.close()


ABORT_POINTS = list(range(1, 7))  # after MAIL, RCPT, DATA, HEADER, EOH, BODY


@pytest.mark.parametrize(
    "after", ABORT_POINTS, ids=["MAIL", "RCPT", "DATA", "HEADER", "EOH", "BODY"]
)
def test_abort_in_every_state(after: int) -> None:
    pair = ready()
    pair.command(Macro(ord("M"), ((b"{mail_addr}", b"s@example.org"),)))
    for msg in message_steps()[:after]:
        pair.step(msg, Continue())
    assert pair.flt.in_message
    assert pair.flt.macros.lookup("mail_addr") == b"s@example.org"
    assert pair.command(Abort()) == [Abort()]
    assert pair.mta.awaiting is None
    assert not pair.flt.in_message
    # libmilter keeps them for xxfi_abort/xxfi_close; the next message drops them
    assert pair.flt.macros.lookup("mail_addr") == b"s@example.org"
    assert pair.command(Abort()) == []  # twice in a row: the second is absorbed
    # the connection goes on with a fresh message
    run_message(pair, 2)
    assert pair.flt.macros.lookup("mail_addr") is None
    pair.step(EndOfMessage(), Continue())
    pair.close()


def test_abort_outside_a_message_yields_nothing() -> None:
    pair = Pair()
    pair.negotiate()
    assert pair.command(Abort()) == []  # before CONNECT
    pair.step(CONNECT, Continue())
    assert pair.command(Abort()) == []
    pair.step(Helo(b"h"), Continue())
    assert pair.command(Abort()) == []
    assert pair.command(Abort()) == []
    pair.close()


def test_abort_while_the_mta_waits() -> None:
    """The MTA may give up waiting and abort; both sides stop waiting."""
    pair = ready()
    pair.step(Mail(b"<a@b>"), Continue())
    assert pair.command(Rcpt(b"<c@d>")) == [Rcpt(b"<c@d>")]
    assert pair.mta.awaiting == Command.RCPT
    assert pair.command(Abort()) == [Abort()]
    assert pair.mta.awaiting is None and pair.flt.awaiting is None


def test_new_mail_inside_a_message_gives_a_synthetic_abort() -> None:
    pair = ready()
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    assert pair.command(Mail(b"<e@f>")) == [Abort(), Mail(b"<e@f>")]
    assert pair.flt.awaiting == Command.MAIL
    pair.reply(Continue())
    assert pair.command(Helo(b"again")) == [Abort(), Helo(b"again")]
    pair.reply(Continue())


EOM_MODIFICATIONS: list[Message] = [
    AddHeader(b"X-Added", b"yes"),
    InsertHeader(0, b"X-Top", b"top"),
    ChangeHeader(1, b"Subject", b"changed"),
    ChangeHeader(2, b"X-Del", b""),
    ChangeFrom(b"<new@example.org>", b"RET=HDRS"),
    ChangeFrom(b"<new2@example.org>"),
    AddRecipient(b"<bcc@example.org>"),
    AddRecipientPar(b"<par@example.org>", b"NOTIFY=NEVER"),
    DeleteRecipient(b"<r1@example.net>"),
    *replace_body_chunks(b"B" * 70000),
    Quarantine(b"suspicious"),
    Progress(),
]


@pytest.mark.parametrize(
    "final",
    [Continue(), Accept(), Reject(), TempFail(), Discard(), ReplyCodePacket(b"550 5.7.1 no")],
)
def test_every_modification_at_eom(final: Message) -> None:
    pair = ready(actions=Action.all())
    run_message(pair)
    assert pair.command(EndOfMessage()) == [EndOfMessage()]
    data = pair.flt.send_all([*EOM_MODIFICATIONS, final])
    assert data == b"".join(m.encode() for m in [*EOM_MODIFICATIONS, final])
    for i in range(0, len(data), 1000):  # arrives in pieces
        pair.mta.receive_data(data[i : i + 1000])
    events = []
    while (event := pair.mta.next_event()) is not NEED_DATA:
        events.append(event)
        assert pair.mta.awaiting == (None if event == final else Command.BODYEOB)
    assert events == [*EOM_MODIFICATIONS, final]
    pair.close()


def test_no_flags_suppress_commands() -> None:
    no_all = P.NOHELO | P.NOMAIL | P.NORCPT | P.NODATA | P.NOHDRS | P.NOEOH | P.NOBODY
    pair = Pair()
    pair.negotiate(protocol=no_all | P.NOCONNECT | P.NOUNKNOWN)
    for msg in [CONNECT, Helo(b"h"), *message_steps(), Unknown(b"FOO")]:
        assert pair.mta.send(msg) == b"", msg
        assert pair.mta.awaiting is None
    # the MACRO packets still go out (both MTAs send them under NO*)
    assert pair.command(Macro(ord("C"), ((b"j", b"mx"),))) == []
    assert pair.flt.macros.lookup("j") == b"mx"
    pair.step(EndOfMessage(), Accept())
    pair.close()


def test_nr_flags_no_reply_awaited() -> None:
    nr_all = (
        P.NR_CONN | P.NR_HELO | P.NR_MAIL | P.NR_RCPT | P.NR_DATA | P.NR_HDR | P.NR_EOH | P.NR_BODY
    )
    pair = Pair()
    pair.negotiate(protocol=nr_all | P.NR_UNKN)
    for msg in [CONNECT, Helo(b"h"), *message_steps(), Unknown(b"FOO")]:
        assert pair.command(msg) == [msg]
        assert pair.mta.awaiting is None
        assert pair.flt.awaiting is None
        with pytest.raises(LocalProtocolError, match="no command is waiting for a reply"):
            pair.flt.send(Continue())
    pair.step(EndOfMessage(), Continue())  # EOM always gets a reply
    pair.close()


def test_nr_flag_not_offered_means_reply_after_all() -> None:
    pair = Pair()
    pair.negotiate(OptNeg(6, Action.all(), P(0x1FFFFF) & ~P.NR_CONN), protocol=P.NR_CONN)
    assert pair.flt.negotiated is not None and pair.flt.negotiated.protocol == P(0)
    pair.step(CONNECT, Continue())


def test_skip_after_body() -> None:
    pair = ready(protocol=P.SKIP)
    for msg in message_steps():
        pair.step(msg, Continue())
    pair.step(Body(b"more\r\n"), Skip())
    pair.step(EndOfMessage(), Accept())
    pair.close()


def test_skip_refused_when_not_negotiated_or_outside_body() -> None:
    pair = ready()
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    pair.command(Body(b"x"))
    with pytest.raises(LocalProtocolError, match=r"SKIP was not negotiated \(SMFIP_SKIP\)"):
        pair.flt.send(Skip())
    pair = ready(protocol=P.SKIP)
    pair.command(Mail(b"<a@b>"))
    with pytest.raises(LocalProtocolError, match="SKIP is only allowed for BODY, not MAIL"):
        pair.flt.send(Skip())
    pair.reply(Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    pair.command(Header(b"a", b"b"))
    with pytest.raises(LocalProtocolError, match="SKIP is only allowed for BODY, not HEADER"):
        pair.flt.send(Skip())


@pytest.mark.parametrize("count", [0, 1, 5])
@pytest.mark.parametrize("at", ["MAIL", "EOM"])
def test_progress_before_the_final_reply(count: int, at: str) -> None:
    pair = ready(actions=Action.ADD_HEADERS)
    if at == "MAIL":
        pair.command(Mail(b"<a@b>"))
        replies: list[Message] = [*(Progress() for _ in range(count)), Reject()]
    else:
        run_message(pair)
        pair.command(EndOfMessage())
        replies = [Progress(), AddHeader(b"X", b"1")] * count + [Progress(), Continue()]
    for reply in replies[:-1]:
        assert pair.reply(reply) == [reply]
        assert pair.mta.awaiting is not None
        assert pair.flt.awaiting is not None
    assert pair.reply(replies[-1]) == [replies[-1]]
    assert pair.mta.awaiting is None and pair.flt.awaiting is None


def test_v2_fallback() -> None:
    pair = Pair()
    pair.negotiate(OptNeg(6, Action.all(), P(0x1FFFFF)), version=2)
    assert pair.mta.negotiated is not None and pair.mta.negotiated.version == 2
    pair.open_session()
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    assert pair.mta.send(Macro(ord("T"))) == b""
    assert pair.mta.send(Data()) == b""
    assert pair.mta.send(Unknown(b"FOO")) == b""
    assert pair.mta.awaiting is None
    pair.step(Header(b"Subject", b"x"), Continue())
    pair.step(EndOfHeaders(), Continue())
    pair.step(EndOfMessage(), Continue())
    pair.close()


@pytest.mark.parametrize("version", [3, 4, 5])
def test_intermediate_versions(version: int) -> None:
    pair = Pair()
    pair.negotiate(OptNeg(6, Action.all(), P(0x1FFFFF)), version=version)
    pair.open_session()
    assert bool(pair.command(Unknown(b"FOO")))
    pair.reply(ReplyCodePacket(b"500 5.5.2 no"))
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    if version >= 4:
        pair.step(Data(), Continue())
    else:
        assert pair.mta.send(Data()) == b""


def test_quit_nc_then_new_connect() -> None:
    pair = ready()
    run_message(pair)
    pair.step(EndOfMessage(), Continue())
    pair.command(Macro(ord("C"), ((b"j", b"old"),)))
    assert pair.command(QuitNoClose()) == [QuitNoClose()]
    assert pair.flt.macros.lookup("j") is None
    pair.command(Macro(ord("C"), ((b"j", b"new"),)))
    second = Connect(b"other.example", Family.INET6, 1, b"IPv6:2001:db8::1")
    pair.step(second, Continue())
    assert pair.flt.macros.lookup("j") == b"new"
    pair.step(Helo(b"other.example"), Continue())
    run_message(pair, 2)
    pair.step(EndOfMessage(), Accept())
    pair.close()


def test_second_connect_without_quit_nc_is_refused() -> None:
    pair = ready()
    pair.flt.receive_data(CONNECT.encode())
    with pytest.raises(RemoteProtocolError, match="second CONNECT on one connection"):
        pair.flt.next_event()


# ------------------------------------------------------ filter side: illegal sends


def eom_pair(**wanted: Any) -> Pair:
    pair = ready(**wanted)
    run_message(pair)
    pair.command(EndOfMessage())
    return pair


@pytest.mark.parametrize(
    "unanswered",
    [Macro(ord("H")), Abort(), Quit(), QuitNoClose()],
    ids=["MACRO", "ABORT", "QUIT", "QUIT_NC"],
)
def test_no_reply_to_unanswered_commands(unanswered: Message) -> None:
    pair = ready()
    pair.step(Mail(b"<a@b>"), Continue())
    pair.command(unanswered)
    with pytest.raises(LocalProtocolError, match="CONTINUE: no command is waiting for a reply"):
        pair.flt.send(Continue())


def test_no_reply_before_negotiation_or_to_nothing() -> None:
    flt = FilterConnection()
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        flt.send(Continue())
    with pytest.raises(LocalProtocolError, match="OPTNEG reply sent without an OPTNEG to answer"):
        flt.send(OptNeg(6, Action(0), P(0)))
    flt.receive_data(MTAConnection.default_offer().encode())
    flt.next_event()
    with pytest.raises(LocalProtocolError, match="no command is waiting"):
        flt.send(Continue())


def test_no_reply_to_nr_command() -> None:
    pair = ready(protocol=P.NR_HDR)
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<c@d>"), Continue())
    pair.command(Header(b"a", b"b"))
    with pytest.raises(LocalProtocolError, match="REJECT: no command is waiting"):
        pair.flt.send(Reject())


def test_two_final_replies() -> None:
    pair = ready()
    pair.command(Mail(b"<a@b>"))
    pair.flt.send(Continue())
    with pytest.raises(LocalProtocolError, match="ACCEPT: no command is waiting"):
        pair.flt.send(Accept())
    pair = eom_pair()
    pair.flt.send(Accept())
    with pytest.raises(LocalProtocolError, match="CONTINUE: no command is waiting"):
        pair.flt.send(Continue())


@pytest.mark.parametrize(
    "modification", EOM_MODIFICATIONS[:-1][:10], ids=lambda m: type(m).__name__
)
def test_modification_before_eom(modification: Message) -> None:
    pair = ready(actions=Action.all())
    pair.step(Mail(b"<a@b>"), Continue())
    pair.command(Rcpt(b"<c@d>"))
    with pytest.raises(
        LocalProtocolError, match="only allowed at end of message, not in reply to RCPT"
    ):
        pair.flt.send(modification)


@pytest.mark.parametrize(
    ("modification", "action"),
    [
        (AddHeader(b"X", b"1"), "ADD_HEADERS"),
        (InsertHeader(0, b"X", b"1"), "ADD_HEADERS"),
        (ChangeHeader(1, b"X", b"1"), "CHANGE_HEADERS"),
        (ChangeFrom(b"<a@b>"), "CHANGE_FROM"),
        (AddRecipient(b"<a@b>"), "ADD_RCPT"),
        (AddRecipientPar(b"<a@b>"), "ADD_RCPT_PAR"),
        (DeleteRecipient(b"<a@b>"), "DELETE_RCPT"),
        (ReplaceBody(b"x"), "CHANGE_BODY"),
        (Quarantine(b"q"), "QUARANTINE"),
    ],
)
def test_modification_not_negotiated(modification: Message, action: str) -> None:
    pair = eom_pair(actions=Action.all() & ~Action[action])
    with pytest.raises(LocalProtocolError, match=f"needs the action {action}, which was not"):
        pair.flt.send(modification)
    pair = eom_pair(actions=Action[action])
    pair.flt.send(modification)  # allowed once negotiated


def test_payload_over_the_negotiated_size() -> None:
    pair = eom_pair(actions=Action.CHANGE_BODY)
    with pytest.raises(
        LocalProtocolError, match=r"REPLBODY: payload of 65536 bytes exceeds .* 65535"
    ):
        pair.flt.send(ReplaceBody(b"x" * 65536))
    pair.flt.send(ReplaceBody(b"x" * 65535))
    pair = Pair()
    pair.negotiate(
        OptNeg(6, Action.all(), P(0x1FFFFF) | P.MDS_256K),
        actions=Action.CHANGE_BODY,
        protocol=P.MDS_256K,
    )
    pair.open_session()
    run_message(pair)
    pair.command(EndOfMessage())
    body = b"y" * 300000
    chunks = list(replace_body_chunks(body, 262143))
    assert [len(c.chunk) for c in chunks] == [262143, 300000 - 262143]
    assert pair.reply(*chunks, Continue()) == [*chunks, Continue()]
    pair = eom_pair(actions=Action.CHANGE_BODY)
    with pytest.raises(LocalProtocolError, match="exceeds the negotiated maximum of 65535"):
        pair.flt.send(ReplyCodePacket(b"550 " + b"x" * 65535))


@pytest.mark.parametrize("at", ["CONNECT", "HELO"])
def test_discard_not_for_connect_or_helo(at: str) -> None:
    pair = Pair()
    pair.negotiate()
    if at == "HELO":
        pair.step(CONNECT, Continue())
        pair.command(Helo(b"h"))
    else:
        pair.command(CONNECT)
    with pytest.raises(LocalProtocolError, match=f"DISCARD is not a valid reply to {at}"):
        pair.flt.send(Discard())


def test_shutdown_and_conn_fail_refused_on_the_filter_side() -> None:
    pair = ready()
    pair.command(Mail(b"<a@b>"))
    with pytest.raises(LocalProtocolError, match=r"send a 421 REPLYCODE instead"):
        pair.flt.send(Shutdown())
    with pytest.raises(LocalProtocolError, match="implemented by neither MTA"):
        pair.flt.send(ConnFail())
    with pytest.raises(LocalProtocolError, match="Mail is not a filter reply"):
        pair.flt.send(Mail(b"x"))


def test_mta_refuses_illegal_sends() -> None:
    mta = MTAConnection()
    with pytest.raises(LocalProtocolError, match="cannot send CONNECT before option negotiation"):
        mta.send(CONNECT)
    with pytest.raises(LocalProtocolError, match="Continue is not an MTA command"):
        mta.send(Continue())
    mta.send(MTAConnection.default_offer())
    with pytest.raises(LocalProtocolError, match="OPTNEG was already sent"):
        mta.send(MTAConnection.default_offer())
    mta.receive_data(OptNeg(6, Action(0), P(0)).encode())
    mta.next_event()
    mta.send(CONNECT)
    with pytest.raises(
        LocalProtocolError, match="cannot send HELO while waiting for the reply to CONNECT"
    ):
        mta.send(Helo(b"h"))
    with pytest.raises(LocalProtocolError, match="cannot send MACRO while waiting"):
        mta.send(Macro(ord("H")))
    mta.receive_data(Continue().encode())
    mta.next_event()
    with pytest.raises(LocalProtocolError, match="BODY chunk of 65536 bytes exceeds"):
        mta.send(Body(b"x" * 65536))
    assert [len(b.chunk) for b in mta.body_chunks(b"z" * 140000)] == [65535, 65535, 8930]
    assert mta.body_chunks(b"") == []


# ---------------------------------------------------- MTA side: malformed replies


def mta_waiting(command: Message | None = None, **wanted: Any) -> MTAConnection:
    pair = Pair()
    pair.negotiate(**wanted)
    if command is not None:
        pair.mta.send(command)
    return pair.mta


def test_reply_with_nothing_awaited() -> None:
    mta = mta_waiting()
    mta.receive_data(Continue().encode())
    with pytest.raises(RemoteProtocolError, match="unexpected CONTINUE: no command is waiting"):
        mta.next_event()


def test_reply_after_nr_command() -> None:
    mta = mta_waiting(CONNECT, protocol=P.NR_CONN)
    mta.receive_data(Continue().encode())
    with pytest.raises(RemoteProtocolError, match="no command is waiting"):
        mta.next_event()


def test_modification_before_eom_on_the_mta_side() -> None:
    mta = mta_waiting(CONNECT, actions=Action.all())
    mta.receive_data(AddHeader(b"X", b"y").encode())
    with pytest.raises(RemoteProtocolError, match="modification ADDHEADER in reply to CONNECT"):
        mta.next_event()


def test_unnegotiated_action_on_the_mta_side() -> None:
    mta = mta_waiting(EndOfMessage(), actions=Action.ADD_HEADERS)
    mta.receive_data(AddHeader(b"X", b"y").encode() + ReplaceBody(b"new").encode())
    assert mta.next_event() == AddHeader(b"X", b"y")
    with pytest.raises(RemoteProtocolError, match="REPLBODY needs the action CHANGE_BODY"):
        mta.next_event()


@pytest.mark.parametrize("command", [CONNECT, Helo(b"h")], ids=["CONNECT", "HELO"])
def test_discard_to_connect_on_the_mta_side(command: Message) -> None:
    mta = mta_waiting(command)
    mta.receive_data(Discard().encode())
    with pytest.raises(RemoteProtocolError, match="DISCARD is not a valid reply to"):
        mta.next_event()


def test_skip_on_the_mta_side() -> None:
    mta = mta_waiting(Body(b"x"))
    mta.receive_data(Skip().encode())
    with pytest.raises(RemoteProtocolError, match="SKIP without SMFIP_SKIP negotiated"):
        mta.next_event()
    mta = mta_waiting(Mail(b"<a@b>"), protocol=P.SKIP)
    mta.receive_data(Skip().encode())
    with pytest.raises(RemoteProtocolError, match="SKIP in reply to MAIL"):
        mta.next_event()
    mta = mta_waiting(Body(b"x"), protocol=P.SKIP)
    mta.receive_data(Skip().encode())
    assert mta.next_event() == Skip()


def test_closing_while_a_reply_is_due() -> None:
    mta = mta_waiting(EndOfMessage())
    mta.receive_data(b"")
    with pytest.raises(
        RemoteProtocolError, match="closed the connection without replying to BODYEOB"
    ):
        mta.next_event()


def test_closing_inside_a_packet() -> None:
    mta = mta_waiting(EndOfMessage())
    mta.receive_data(Continue().encode()[:3])
    mta.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=r"inside a packet \(3 bytes\)"):
        mta.next_event()
    # the connection is in the ERROR state now: later calls name the first error
    with pytest.raises(LocalProtocolError, match=r"ERROR state after .*inside a packet"):
        mta.receive_data(b"x")


def test_data_after_the_filter_closed() -> None:
    mta = mta_waiting(EndOfMessage())
    mta.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="after the filter closed"):
        mta.receive_data(b"x")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (Continue().encode() + b"", None),
        (encode_frame(ord("c"), b"x"), "Continue must have no data, got 1 bytes"),
        (encode_frame(ord("y"), b"550go away\0"), "start with a 4xx/5xx code"),
        (encode_frame(ord("y"), b"550 4.7.1 x\0"), "enhanced status class differs"),
        (encode_frame(ord("l"), b""), "unknown reply byte 0x6c"),
        (encode_frame(ord("M"), b"x\0"), "unknown reply byte 0x4d"),
        (OptNeg(6, Action(0), P(0)).encode(), "OPTNEG reply in answer to MAIL"),
        (b"\0\0\0\0c", "packet length 0"),
    ],
)
def test_malformed_replies(raw: bytes, problem: str | None) -> None:
    mta = mta_waiting(Mail(b"<a@b>"))
    mta.receive_data(raw)
    if problem is None:
        assert mta.next_event() == Continue()
        return
    with pytest.raises(RemoteProtocolError, match=problem):
        mta.next_event()


def test_first_reply_must_be_optneg() -> None:
    mta = MTAConnection()
    mta.send(MTAConnection.default_offer())
    mta.receive_data(Continue().encode())
    with pytest.raises(RemoteProtocolError, match="expected an OPTNEG reply, got CONTINUE"):
        mta.next_event()


def test_mta_side_accepts_shutdown_and_conn_fail_as_final() -> None:
    """Postfix accepts '4' (421 and disconnect); the core passes both up as events."""
    for reply in (Shutdown(), ConnFail()):
        mta = mta_waiting(Mail(b"<a@b>"))
        mta.receive_data(reply.encode())
        assert mta.next_event() == reply
        assert mta.awaiting is None


# ------------------------------------------------------- filter side: bad MTA input


@pytest.mark.parametrize(
    ("packets", "problem"),
    [
        ([Helo(b"h")], "HELO before CONNECT"),
        ([CONNECT, Rcpt(b"x")], "RCPT before MAIL"),
        ([CONNECT, Mail(b"x"), Data()], "DATA before any RCPT"),
        ([CONNECT, EndOfMessage()], "BODYEOB before MAIL"),
        (
            [CONNECT, Mail(b"x"), Rcpt(b"y"), EndOfHeaders(), Header(b"a", b"b")],
            "HEADER out of order",
        ),
        ([CONNECT, Mail(b"x"), Rcpt(b"y"), Data(), Data()], "DATA out of order"),
        ([OptNeg(6, Action(0), P(0))], "OPTNEG after option negotiation"),
    ],
)
def test_filter_refuses_out_of_order_commands(packets: list[Message], problem: str) -> None:
    flt = FilterConnection()
    flt.receive_data(MTAConnection.default_offer().encode())
    flt.next_event()
    flt.send(OptNeg(6, Action(0), P(0)))
    for packet in packets[:-1]:
        flt.receive_data(packet.encode())
        flt.next_event()
        flt.send(Continue())
    flt.receive_data(packets[-1].encode())
    with pytest.raises(RemoteProtocolError, match=problem):
        flt.next_event()


def test_filter_refuses_a_command_while_its_reply_is_due() -> None:
    pair = ready()
    pair.command(Mail(b"<a@b>"))
    pair.flt.receive_data(Rcpt(b"x").encode())
    with pytest.raises(
        RemoteProtocolError, match="MTA sent RCPT while the reply to MAIL is outstanding"
    ):
        pair.flt.next_event()


def test_filter_refuses_data_after_quit() -> None:
    pair = ready()
    pair.command(Quit())
    with pytest.raises(RemoteProtocolError, match="5 bytes received after QUIT"):
        pair.flt.receive_data(Abort().encode())


def test_filter_message_over_after_accept_at_mail() -> None:
    pair = ready()
    pair.step(Mail(b"<a@b>"), Accept())
    pair.flt.receive_data(Rcpt(b"<c@d>").encode())
    with pytest.raises(RemoteProtocolError, match="RCPT after the filter's final reply"):
        pair.flt.next_event()


def test_rejected_recipient_keeps_the_message_open() -> None:
    pair = ready()
    pair.step(Mail(b"<a@b>"), Continue())
    pair.step(Rcpt(b"<bad@d>"), ReplyCodePacket(b"550 5.1.1 unknown"))
    pair.step(Rcpt(b"<bad2@d>"), Reject())
    pair.step(Rcpt(b"<good@d>"), Continue())
    pair.step(Data(), Continue())
    pair.step(EndOfMessage(), Continue())
