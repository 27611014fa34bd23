"""The named states both connection classes go through, and the ERROR state."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from milterkit import Milter
from milterkit.protocol import (
    Abort,
    Body,
    Command,
    ConnectionClosed,
    ConnectionState,
    Continue,
    EndOfHeaders,
    EndOfMessage,
    FilterConnection,
    Helo,
    LocalProtocolError,
    Mail,
    MTAConnection,
    OptNeg,
    ProtocolFlag,
    Quit,
    QuitNoClose,
    Rcpt,
    Reject,
    RemoteProtocolError,
    Skip,
)
from milterkit.protocol.state import STATES, unusable
from milterkit.session import MilterSession
from tests.protocol.test_pairing import CONNECT, Pair

S = ConnectionState


def negotiated_pair() -> Pair:
    pair = Pair()
    assert pair.mta.state is S.NEGOTIATING and pair.flt.state is S.NEGOTIATING
    pair.negotiate()
    return pair


def states(pair: Pair) -> tuple[ConnectionState, ConnectionState]:
    return pair.mta.state, pair.flt.state


def test_the_states_in_order() -> None:
    assert STATES == (S.NEGOTIATING, S.IDLE, S.IN_MESSAGE, S.CLOSED, S.ERROR)
    assert [int(s) for s in STATES] == list(range(5))


def test_negotiating_until_the_optneg_reply() -> None:
    pair = Pair()
    offer = MTAConnection.default_offer()
    pair.command(offer)
    assert pair.flt.awaiting == Command.OPTNEG and pair.mta.awaiting == Command.OPTNEG
    assert states(pair) == (S.NEGOTIATING, S.NEGOTIATING)
    pair.mta.receive_data(pair.flt.negotiate())
    assert pair.flt.state is S.IDLE  # as soon as its reply is sent
    assert isinstance(pair.mta.next_event(), OptNeg)
    assert pair.mta.state is S.IDLE


def test_idle_in_message_and_back() -> None:
    pair = negotiated_pair()
    pair.open_session()
    assert states(pair) == (S.IDLE, S.IDLE)
    pair.step(Mail(b"<a@example.org>"), Continue())
    assert states(pair) == (S.IN_MESSAGE, S.IN_MESSAGE)
    pair.step(Rcpt(b"<b@example.org>"), Continue())
    pair.step(EndOfHeaders(), Continue())
    pair.step(Body(b"x"), Continue())
    pair.step(EndOfMessage(), Continue())
    assert states(pair) == (S.IDLE, S.IDLE)


def test_without_mail_the_first_message_step_opens_the_message() -> None:
    pair = Pair()
    pair.negotiate(protocol=ProtocolFlag.NOMAIL)
    pair.open_session()
    assert pair.command(Mail(b"<a@example.org>")) == []  # not sent (NOMAIL)
    assert pair.mta.state is S.IN_MESSAGE  # the MTA's own message has begun
    assert pair.flt.state is S.IDLE  # the filter sees nothing yet
    pair.step(Rcpt(b"<b@example.org>"), Continue())
    assert states(pair) == (S.IN_MESSAGE, S.IN_MESSAGE)


def test_abort_ends_the_message() -> None:
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Mail(b"<a@example.org>"), Continue())
    pair.step(Abort())
    assert states(pair) == (S.IDLE, S.IDLE)


def test_a_final_reply_leaves_the_message_open_until_abort() -> None:
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Mail(b"<a@example.org>"), Reject())
    assert states(pair) == (S.IN_MESSAGE, S.IN_MESSAGE)  # the MTA sends ABORT or MAIL next
    pair.step(Abort())
    assert states(pair) == (S.IDLE, S.IDLE)


def test_helo_inside_a_message_ends_it() -> None:
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Mail(b"<a@example.org>"), Continue())
    events = pair.command(Helo(b"again.example.org"))
    assert [type(e) for e in events] == [Abort, Helo]  # the filter's synthetic abort
    assert pair.reply(Continue()) == [Continue()]
    assert states(pair) == (S.IDLE, S.IDLE)


def test_quit_nc_goes_back_to_idle() -> None:
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Mail(b"<a@example.org>"), Continue())
    pair.step(QuitNoClose())
    assert states(pair) == (S.IDLE, S.IDLE)
    pair.step(CONNECT, Continue())  # a new SMTP session on the same connection
    assert states(pair) == (S.IDLE, S.IDLE)


def test_quit_closes_both_sides() -> None:
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Quit())
    assert states(pair) == (S.CLOSED, S.CLOSED)
    with pytest.raises(LocalProtocolError, match="cannot send HELO: the connection is closed"):
        pair.mta.send(Helo(b"x"))
    pair.flt.receive_data(b"")  # the MTA closing its end after QUIT is fine
    assert isinstance(pair.flt.next_event(), ConnectionClosed)
    assert pair.flt.state is S.CLOSED


def test_the_peer_closing_closes() -> None:
    pair = negotiated_pair()
    pair.flt.receive_data(b"")
    assert isinstance(pair.flt.next_event(), ConnectionClosed)
    assert pair.flt.state is S.CLOSED
    pair.mta.receive_data(b"")
    assert isinstance(pair.mta.next_event(), ConnectionClosed)
    assert pair.mta.state is S.CLOSED


def test_filter_error_state_names_the_first_error() -> None:
    pair = negotiated_pair()
    pair.flt.receive_data(pair.mta.send(Helo(b"x")))  # HELO before CONNECT
    with pytest.raises(RemoteProtocolError, match="HELO before CONNECT"):
        pair.flt.next_event()
    assert pair.flt.state is S.ERROR
    first = "ERROR state after RemoteProtocolError: HELO before CONNECT"
    with pytest.raises(LocalProtocolError, match=first) as caught:
        pair.flt.next_event()
    assert isinstance(caught.value.__cause__, RemoteProtocolError)
    with pytest.raises(LocalProtocolError, match=first):
        pair.flt.receive_data(b"more")
    with pytest.raises(LocalProtocolError, match=first):
        pair.flt.send(Continue())
    assert pair.flt.state is S.ERROR


def test_the_peer_hanging_up_is_taken_in_the_error_state() -> None:
    """A session that learns of EOF after the error still reaches its abort/close path."""
    pair = negotiated_pair()
    pair.flt.receive_data(b"\0\0\0\x01Z")
    with pytest.raises(RemoteProtocolError, match="unknown command byte"):
        pair.flt.next_event()
    pair.flt.receive_data(b"")  # no error: only recorded
    with pytest.raises(LocalProtocolError, match="after RemoteProtocolError: unknown command"):
        pair.flt.next_event()
    with pytest.raises(LocalProtocolError, match="after RemoteProtocolError: unknown command"):
        pair.flt.receive_data(b"")  # a second EOF is an error, as outside the ERROR state
    pair.mta.receive_data(Continue().encode())
    with pytest.raises(RemoteProtocolError, match="unexpected CONTINUE"):
        pair.mta.next_event()
    pair.mta.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after RemoteProtocolError: unexpected"):
        pair.mta.next_event()


def test_filter_error_from_receive_data() -> None:
    pair = negotiated_pair()
    pair.flt.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="data received after the connection was closed"):
        pair.flt.receive_data(b"x")
    with pytest.raises(LocalProtocolError, match="after RemoteProtocolError: data received after"):
        pair.flt.next_event()


def test_filter_error_keeps_in_message() -> None:
    """The session runs the abort callback after a protocol error inside a message."""
    pair = negotiated_pair()
    pair.open_session()
    pair.step(Mail(b"<a@example.org>"), Continue())
    pair.flt.receive_data(b"\0\0\0\x01Z")  # an unknown command byte
    with pytest.raises(RemoteProtocolError, match="unknown command byte 0x5a"):
        pair.flt.next_event()
    assert pair.flt.state is S.ERROR
    assert pair.flt.in_message


def test_mta_error_state_names_the_first_error() -> None:
    pair = negotiated_pair()
    pair.mta.receive_data(Continue().encode())  # nothing was asked
    with pytest.raises(RemoteProtocolError, match="unexpected CONTINUE"):
        pair.mta.next_event()
    assert pair.mta.state is S.ERROR
    first = "ERROR state after RemoteProtocolError: unexpected CONTINUE"
    with pytest.raises(LocalProtocolError, match=first):
        pair.mta.next_event()
    with pytest.raises(LocalProtocolError, match=first):
        pair.mta.receive_data(b"x")
    with pytest.raises(LocalProtocolError, match=first):
        pair.mta.send(CONNECT)
    with pytest.raises(LocalProtocolError, match=first):
        pair.mta.sent_encoded(Command.CONNECT)


def test_a_refused_send_changes_nothing() -> None:
    """LocalProtocolError from send: nothing went out, another reply may follow."""
    pair = negotiated_pair()
    pair.open_session()
    pair.command(Mail(b"<a@example.org>"))
    with pytest.raises(LocalProtocolError, match="SKIP was not negotiated"):
        pair.flt.send(Skip())
    assert pair.flt.state is S.IN_MESSAGE
    assert pair.flt.awaiting == Command.MAIL
    with pytest.raises(LocalProtocolError, match=r"cannot send RCPT while waiting .* MAIL"):
        pair.mta.send(Rcpt(b"<b@example.org>"))
    assert pair.mta.state is S.IN_MESSAGE
    assert pair.mta.awaiting == Command.MAIL
    assert pair.reply(Continue()) == [Continue()]


@pytest.mark.parametrize("conn", [FilterConnection(), MTAConnection()])
def test_awaiting_and_state_are_read_only(conn: FilterConnection | MTAConnection) -> None:
    with pytest.raises(AttributeError):
        conn.awaiting = Command.MAIL  # type: ignore[misc]
    with pytest.raises(AttributeError):
        conn.state = S.IDLE  # type: ignore[misc]


def test_unusable_names_the_error() -> None:
    first = RemoteProtocolError("MAIL out of order in the message")
    error = unusable(first)
    assert str(error) == (
        "the connection is in the ERROR state after RemoteProtocolError: "
        "MAIL out of order in the message"
    )
    assert error.__cause__ is first


class _AsyncMail(Milter):
    calls: ClassVar[list[str]] = []

    async def mail_from(self, sender: str, args: list[str]) -> None:
        await asyncio.sleep(0)
        self.calls.append("mail_from")

    def abort(self) -> None:
        self.calls.append("abort")

    def close(self) -> None:
        self.calls.append("close")


def test_session_runs_abort_and_close_after_an_error_found_on_resume() -> None:
    """The server's path: a callback went async, the error comes from resume(), then EOF.

    connection_lost() feeds EOF to a connection in the ERROR state; it must still
    reach the abort and close callbacks.
    """
    _AsyncMail.calls.clear()
    session = MilterSession(_AsyncMail)
    mta = MTAConnection()
    assert session.data_received(mta.send(MTAConnection.default_offer())) is None
    mta.receive_data(session.data_to_send())
    assert isinstance(mta.next_event(), OptNeg)
    pending = session.data_received(Mail(b"<a@example.org>").encode() + b"\0\0\0\x01Z")
    assert pending is not None

    async def drive() -> None:
        await pending
        with pytest.raises(RemoteProtocolError, match="unknown command byte 0x5a"):
            session.resume()
        assert session.conn.state is S.ERROR
        closing = session.connection_lost()
        if closing is not None:
            await closing

    asyncio.run(drive())
    assert _AsyncMail.calls == ["mail_from", "abort", "close"]
    assert session.closed
