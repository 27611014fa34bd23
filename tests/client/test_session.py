"""MTASession/MessageRun sans I/O, paired in memory with a FilterConnection.

This is the reuse path of the test harness: no sockets, just bytes handed
back and forth. The packet shapes are compared with the recorded vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from milterkit.client import ClientInfo, Exchange, MTASession
from milterkit.mtaprofile import POSTFIX, POSTFIX_NONSMTP, SENDMAIL, V2_ONLY, MTAProfile
from milterkit.protocol import (
    NEED_DATA,
    Abort,
    Action,
    AddHeader,
    Connect,
    Continue,
    Family,
    FilterConnection,
    FrameDecoder,
    LocalProtocolError,
    Macro,
    Mail,
    Message,
    OptNeg,
    ProtocolFlag,
    Rcpt,
    decode_command,
)
from tests.protocol.vectors import all_vector_files, load

Answer = Callable[[Message], list[Message]]


def eom_header(cmd: Message) -> list[Message]:
    return [AddHeader(b"X-Interop", b"yes"), Continue()] if chr(cmd.code) == "E" else [Continue()]


def pump(exchange: Exchange, filt: FilterConnection, answer: Answer, wire: list[bytes]) -> None:
    """Drive an exchange against an in-memory filter, as a harness would."""
    out = exchange.start()
    while True:
        wire.append(out)
        if out:
            filt.receive_data(out)
        if exchange.done:
            return
        replies = b""
        while (event := filt.next_event()) is not NEED_DATA:
            assert isinstance(event, Message)
            if isinstance(event, OptNeg):
                replies += filt.negotiate(
                    version=6, actions=Action(0x1FF), protocol=ProtocolFlag(0x500)
                )
            elif filt.awaiting is not None:
                replies += filt.send_all(answer(event))
        out = exchange.receive_data(replies)


def decode_all(wire: bytes) -> list[Message]:
    decoder = FrameDecoder(1 << 20)
    decoder.feed(wire)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(decode_command(*frame))
    return out


def shape(wire: bytes) -> str:
    """Command letters; MACRO packets as their lower-case stage letter."""
    return "".join(
        chr(m.stage).lower() if isinstance(m, Macro) and m.stage else chr(m.code)
        for m in decode_all(wire)
    )


def vector_shape(name: str) -> str:
    path = next(p for p in all_vector_files() if p.name == name)
    out = []
    for packet in load(path):
        if packet.direction != "mta":
            continue
        out.append(packet.cmd if packet.cmd != "D" else chr(packet.payload[0]).lower())
    return "".join(out)


def message(n: int) -> bytes:
    headers = b"".join(b"H%d: v\r\n" % i for i in range(n))
    return headers + b"\r\nbody\r\n"


def run_two_messages(profile: MTAProfile) -> str:
    session = MTASession(profile, client=ClientInfo("127.0.0.1", 42236))
    filt = FilterConnection()
    wire: list[bytes] = []
    pump(session.opening(), filt, eom_header, wire)
    for _ in range(2):
        run = session.message(message(5), "alice@example.org", ["bob@example.com"])
        pump(run, filt, eom_header, wire)
        assert run.result.modifications == [AddHeader(b"X-Interop", b"yes")]
    wire.append(session.quit())
    return shape(b"".join(wire))


@pytest.mark.parametrize(
    ("profile", "vector"),
    [
        (POSTFIX, "postfix37-v6-basic.jsonl"),
        (SENDMAIL, "sendmail817-v6-basic.jsonl"),
        (V2_ONLY, "postfix37-v2.jsonl"),
    ],
)
def test_packet_shape_matches_recorded_mta(profile: MTAProfile, vector: str) -> None:
    assert run_two_messages(profile) == vector_shape(vector)


def test_nonsmtp_profile_fakes_connect_and_bare_addresses() -> None:
    session = MTASession(POSTFIX_NONSMTP)
    filt = FilterConnection()
    wire: list[bytes] = []
    pump(session.opening(), filt, eom_header, wire)
    pump(session.message(message(5), "local@example.org", ["x@y.z"]), filt, eom_header, wire)
    wire.append(session.quit())
    data = b"".join(wire)
    assert shape(data) == vector_shape("postfix37-v6-nonsmtp.jsonl")
    decoder_events = decode_all(data)
    assert Connect(b"localhost", Family.INET, 0, b"127.0.0.1") in decoder_events
    assert Mail(b"local@example.org") in decoder_events
    assert Rcpt(b"x@y.z") in decoder_events
    mail_macros = [m for m in decoder_events if isinstance(m, Macro) and m.stage == ord("M")]
    assert [n for n, _ in mail_macros[0].pairs] == [b"i", b"{mail_addr}"]


def test_postfix_queue_id_only_after_first_accepted_rcpt() -> None:
    session = MTASession(POSTFIX)
    filt = FilterConnection()
    wire: list[bytes] = []
    pump(session.opening(), filt, eom_header, wire)
    run = session.message(message(1), "a@b.c", ["d@e.f", "g@h.i"])
    pump(run, filt, eom_header, wire)
    rcpt = [dict(m.pairs) for m in decode_all(b"".join(wire)) if isinstance(m, Macro)]
    rcpt = [m for m in rcpt if b"{rcpt_addr}" in m]
    assert b"i" not in rcpt[0] and b"i" in rcpt[1]


def test_message_before_opening_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        MTASession().message(message(1), "a@b.c", ["d@e.f"])


def test_trailing_abort_belongs_to_the_run_and_leads_the_next_exchange() -> None:
    session = MTASession(POSTFIX)
    filt = FilterConnection()
    wire: list[bytes] = []
    pump(session.opening(), filt, eom_header, wire)
    run = session.message(message(1), "a@b.c", ["d@e.f"])
    pump(run, filt, eom_header, wire)
    # Postfix's ABORT after a message is the run's own, not yet returned by anyone
    assert shape(run.trailing) == "A"
    assert not shape(b"".join(wire)).endswith("A")
    following = session.message(message(1), "a@b.c", ["d@e.f"])
    assert shape(following.start()).startswith("Am")  # ABORT, then the MAIL macros


def test_quit_returns_the_trailing_abort_before_its_own_packets() -> None:
    session = MTASession(POSTFIX)
    filt = FilterConnection()
    pump(session.opening(), filt, eom_header, [])
    pump(session.message(message(1), "a@b.c", ["d@e.f"]), filt, eom_header, [])
    assert shape(session.quit()) == "AAQ"  # the message's ABORT, the session-end ABORT, QUIT


def test_a_message_waits_for_the_previous_exchange() -> None:
    session = MTASession(POSTFIX)
    session.opening().start()  # OPTNEG sent, reply not received
    with pytest.raises(LocalProtocolError, match="Opening is not done"):
        session.message(message(1), "a@b.c", ["d@e.f"])


def test_session_send_returns_bytes_and_keeps_nothing() -> None:
    session = MTASession(POSTFIX)
    pump(session.opening(), FilterConnection(), eom_header, [])
    assert shape(session.send(Abort())) == "A"
    assert shape(session.quit()) == "AQ"  # only quit's own ABORT: send() queued nothing
