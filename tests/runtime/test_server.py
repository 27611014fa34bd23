"""The asyncio server over real sockets (unix, 127.0.0.1, ::1) with a raw MTA."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from milterkit.milter import Accept, Continue, Milter, Reject, ReplyCode
from milterkit.protocol import (
    Abort,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    Connect,
    DeleteRecipient,
    EndOfMessage,
    Family,
    Header,
    InsertHeader,
    Mail,
    OptNeg,
    Progress,
    Quarantine,
    ReplaceBody,
    TempFail,
)
from milterkit.protocol import messages as wire
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.runtime.server import Server
from tests.runtime.test_server_mta import (
    OFFER_V2,
    OFFER_V4,
    OFFER_V6,
    ConnectionClosedError,
    RawMTA,
    ServerThread,
    inet_listener,
    kinds,
    serving,
    wait_for,
)


class Recorder(Milter):
    """Records callbacks; quarantines mail from spammer@, adds a header at EOM."""

    actions = Action.ADD_HEADERS | Action.QUARANTINE
    seen: ClassVar[list[str]] = []

    def mail_from(self, sender: str, params: list[str]) -> Any:
        self.seen.append(f"mail {sender}")
        if "spammer" in sender:
            self.quarantine("spammer")
        return Continue()

    def header(self, name: str, value: str) -> Any:
        self.seen.append(f"header {name}")
        return None

    def end_of_message(self) -> Any:
        self.add_header("X-Checked", "yes")
        return Accept()

    def close(self) -> None:
        self.seen.append("close")


class EveryAction(Milter):
    actions = Action(0x1FF) & ~Action.SETSYMLIST

    def end_of_message(self) -> Any:
        self.add_header("X-A", "1")
        self.insert_header("X-First", "0", 0)
        self.change_header("Subject", "changed")
        self.delete_header("X-Old")
        self.add_recipient("<carol@example.org>")
        self.add_recipient("<dave@example.org>", "NOTIFY=NEVER")
        self.delete_recipient("<bob@example.net>")
        self.change_from("<new@example.org>", "SIZE=10")
        self.replace_body(b"new body\r\n")
        self.quarantine("held")
        return Continue()


class Raiser(Milter):
    def mail_from(self, sender: str, params: list[str]) -> Any:
        if "boom" in sender:
            raise RuntimeError("callback exploded")
        return Continue()


class Slow(Milter):
    """MAIL sleeps ``delay``; EOM sleeps ``eom_delay`` (async callbacks)."""

    delay = 0.0
    eom_delay = 0.0
    events: ClassVar[list[str]] = []

    async def mail_from(self, sender: str, params: list[str]) -> Any:
        await asyncio.sleep(self.delay)
        return Continue()

    async def end_of_message(self) -> Any:
        try:
            await asyncio.sleep(self.eom_delay)
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise
        return Accept()

    def abort(self) -> None:
        self.events.append("abort")

    def close(self) -> None:
        self.events.append("close")


@pytest.fixture(params=["unix", "inet", "inet6"])
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    if request.param == "unix":
        with tempfile.TemporaryDirectory() as tmp:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(os.path.join(tmp, "m.sock"))
            sock.listen(16)
            yield sock
            sock.close()
        return
    if request.param == "inet6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = inet_listener("::1" if request.param == "inet6" else "127.0.0.1")
    except OSError as exc:
        pytest.skip(f"cannot listen on {request.param}: {exc}")
    yield sock
    sock.close()


def address_of(sock: socket.socket) -> Any:
    name = sock.getsockname()
    return name if isinstance(name, str) else name[:2]


def start(milter: Any, sock: socket.socket | None = None, **kwargs: Any) -> tuple[Server, Any]:
    sock = sock or inet_listener()
    return Server(milter, sock, **kwargs), address_of(sock)


# -------------------------------------------------------------- full sessions


def test_full_session_several_messages(listener: socket.socket) -> None:
    Recorder.seen = []
    server = Server(Recorder, listener)
    with serving(server), RawMTA.connect(address_of(listener)) as mta:
        reply, _ = mta.hello()
        assert reply.actions == Action.ADD_HEADERS | Action.QUARANTINE
        assert reply.protocol & ProtocolFlag.NOCONNECT
        first = mta.message(sender="<spammer@example.com>")
        assert first[0] == Quarantine(b"spammer")
        assert first[1] == AddHeader(b"X-Checked", b"yes")
        assert isinstance(first[-1], wire.Accept)
        mta.send(Abort())
        second = mta.message()
        assert kinds(second) == ["AddHeader", "Accept"]
        mta.quit()
        assert mta.wait_closed()
    wait_for(lambda: "close" in Recorder.seen, 5, "close callback")
    assert Recorder.seen.count("mail <spammer@example.com>") == 1
    assert Recorder.seen.count("header Subject") == 2


def test_every_action_reaches_the_wire() -> None:
    server, address = start(EveryAction)
    with serving(server), RawMTA.connect(address) as mta:
        mta.hello()
        replies = mta.message()
    assert replies == [
        AddHeader(b"X-A", b"1"),
        InsertHeader(0, b"X-First", b"0"),
        ChangeHeader(1, b"Subject", b"changed"),
        ChangeHeader(1, b"X-Old", b""),
        AddRecipient(b"<carol@example.org>"),
        AddRecipientPar(b"<dave@example.org>", b"NOTIFY=NEVER"),
        DeleteRecipient(b"<bob@example.net>"),
        ChangeFrom(b"<new@example.org>", b"SIZE=10"),
        ReplaceBody(b"new body\r\n"),
        Quarantine(b"held"),
        wire.Continue(),
    ]


@pytest.mark.parametrize("offer", [OFFER_V2, OFFER_V4, OFFER_V6], ids=["v2", "v4", "v6"])
def test_mta_versions(offer: OptNeg) -> None:
    Recorder.seen = []
    server, address = start(Recorder)
    with serving(server), RawMTA.connect(address) as mta:
        reply, _ = mta.hello(offer)
        assert reply.version == offer.version
        assert kinds(mta.message()) == ["AddHeader", "Accept"]
        assert kinds(mta.message(sender="<x@spammer.test>")) == [
            "Quarantine",
            "AddHeader",
            "Accept",
        ]


def test_replies_of_one_event_leave_in_one_write() -> None:
    server, address = start(EveryAction)
    writes: list[int] = []
    with serving(server) as runner, RawMTA.connect(address) as mta:
        mta.hello()
        mta.command(Mail(b"<a@b>"))

        def spy() -> None:
            (conn,) = server.connections
            assert conn.transport is not None
            original = conn.transport.write

            def write(data: Any) -> None:
                writes.append(len(data))
                original(data)

            conn.transport.write = write  # type: ignore[method-assign]

        runner.call(spy)
        replies = mta.command(EndOfMessage())
    assert len(replies) == 11
    assert len(writes) == 1


def test_pipelined_commands_get_one_write() -> None:
    Recorder.seen = []
    server, address = start(Recorder)
    with serving(server), RawMTA.connect(address) as mta:
        mta.negotiate(OFFER_V2)
        # Two headers and EOH in one send: three replies must come in one segment.
        data = b"".join(
            m.encode() for m in (Mail(b"<a@b>"), Header(b"A", b"1"), Header(b"B", b"2"))
        )
        mta.send_raw(data)
        mta.sock.settimeout(5)
        got = mta.sock.recv(4096)
        assert got == wire.Continue().encode() * 3


# ------------------------------------------------------------ error handling


def test_exception_gives_error_decision_and_next_message_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, address = start(Raiser, error_decision="reject")
    with (
        caplog.at_level(logging.ERROR, "milterkit"),
        serving(server),
        RawMTA.connect(address) as mta,
    ):
        mta.hello()
        assert kinds(mta.message(sender="<boom@x>")) == ["Reject"]
        assert kinds(mta.message(sender="<fine@x>")) == ["Continue"]
    assert "callback exploded" in caplog.text


def test_callback_timeout_answers_error_decision() -> None:
    Slow.delay = 3.0
    server, address = start(Slow, callback_timeout=0.2)
    try:
        with serving(server), RawMTA.connect(address) as mta:
            mta.hello()
            replies = mta.command(Mail(b"<a@b>"))
            assert replies == [TempFail()]
    finally:
        Slow.delay = 0.0


def test_progress_sent_during_slow_end_of_message() -> None:
    Slow.eom_delay = 0.7
    server, address = start(Slow, progress_interval=0.1)
    try:
        with serving(server), RawMTA.connect(address) as mta:
            mta.hello()
            replies = mta.message()
        assert replies.count(Progress()) >= 3
        assert replies[-1] == wire.Accept()
    finally:
        Slow.eom_delay = 0.0


def test_connection_lost_mid_callback_cancels_and_closes() -> None:
    Slow.eom_delay = 10.0
    Slow.events = []
    server, address = start(Slow)
    try:
        with serving(server):
            with RawMTA.connect(address) as mta:
                mta.hello()
                for step in (Mail(b"<a@b>"), Header(b"A", b"b")):
                    mta.command(step)
                mta.send(EndOfMessage())
                wait_for(lambda: bool(server.connections), 2, "session")
            wait_for(lambda: "close" in Slow.events, 5, "close callback")
            assert Slow.events == ["cancelled", "abort", "close"]
            wait_for(lambda: not server.connections, 5, "slot release")
    finally:
        Slow.eom_delay = 0.0


def test_malformed_packet_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    server, address = start(Recorder)
    with (
        caplog.at_level(logging.WARNING, "milterkit"),
        serving(server),
        RawMTA.connect(address) as good,
        RawMTA.connect(address) as bad,
    ):
        good.hello()
        bad.hello()
        bad.send_raw(b"\x00\x00\x00\x02Z\x01")  # unknown command 'Z'
        assert bad.wait_closed()
        assert kinds(good.message()) == ["AddHeader", "Accept"]
    lines = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert len(lines) == 1
    assert "w0-c2" in lines[0]


def test_malformed_connect_is_logged_with_escaped_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Connecting(Milter):
        def connect(self, *args: Any) -> Any:
            return None

    server, address = start(Connecting)
    with (
        caplog.at_level(logging.WARNING, "milterkit"),
        serving(server),
        RawMTA.connect(address) as mta,
    ):
        mta.negotiate()
        payload = b"evil\r\nforged log line\x00X"
        mta.send_raw(len(payload).to_bytes(4, "big") + b"C" + payload)
        assert mta.wait_closed()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "closing connection" in text
    assert "forged log line" not in text.splitlines()[0] or "\r\n" not in text


def test_idle_timeout_closes_silent_connection(caplog: pytest.LogCaptureFixture) -> None:
    server, address = start(Recorder, timeout=0.3)
    with (
        caplog.at_level(logging.WARNING, "milterkit"),
        serving(server),
        RawMTA.connect(address) as mta,
    ):
        mta.hello()
        assert mta.wait_closed(5)
    assert "no data from the MTA" in caplog.text
    assert "between commands" in caplog.text


def test_read_timeout_closes_stalled_packet(caplog: pytest.LogCaptureFixture) -> None:
    server, address = start(Recorder, timeout=60, read_timeout=0.3)
    with (
        caplog.at_level(logging.WARNING, "milterkit"),
        serving(server),
        RawMTA.connect(address) as mta,
    ):
        mta.hello()
        mta.send_raw(b"\x00\x00\x00\x10M<a")  # half a packet, then silence
        assert mta.wait_closed(5)
    assert "in the middle of a packet" in caplog.text


# -------------------------------------------------------- connection limits


def test_max_connections_keeps_extra_connection_in_backlog() -> None:
    server, address = start(Recorder, max_connections=1)
    with serving(server), RawMTA.connect(address) as first:
        first.negotiate()
        second = RawMTA.connect(address, timeout=0.5)
        try:
            second.send(OFFER_V6)
            with pytest.raises(TimeoutError):
                second.replies()
            assert len(server.connections) == 1
            first.quit()
            reply = second.replies(timeout=5)
            assert isinstance(reply[0], OptNeg)
        finally:
            second.close()


# ----------------------------------------------------------------- draining


def test_drain_finishes_in_flight_and_closes_idle() -> None:
    Slow.eom_delay = 0.5
    server, address = start(Slow)
    try:
        with serving(server) as runner:
            idle = RawMTA.connect(address)
            busy = RawMTA.connect(address)
            idle.hello()
            idle.message()  # idle between messages, after a first one
            busy.hello()
            for step in (Mail(b"<a@b>"), Header(b"A", b"b")):
                busy.command(step)
            busy.send(EndOfMessage())
            wait_for(lambda: server.connections and len(server.connections) == 2, 2, "sessions")
            drained = threading.Thread(target=runner.drain, args=(10.0,))
            drained.start()
            assert idle.wait_closed(2)
            assert busy.replies(timeout=5) == [wire.Accept()]
            assert busy.wait_closed(2)
            drained.join(10)
            assert not drained.is_alive()
            with pytest.raises(OSError):
                RawMTA.connect(address, timeout=0.5).negotiate()
            idle.close()
            busy.close()
    finally:
        Slow.eom_delay = 0.0


def test_drain_keeps_a_session_until_its_first_message() -> None:
    server, address = start(Recorder)
    with serving(server) as runner:
        fresh = RawMTA.connect(address)
        fresh.hello()  # between HELO and the first MAIL: its message is on its way
        wait_for(lambda: len(server.connections) == 1, 2, "session")
        drained = threading.Thread(target=runner.drain, args=(10.0,))
        drained.start()
        assert not fresh.wait_closed(0.5)
        assert kinds(fresh.message())[-1] == "Accept"
        assert fresh.wait_closed(2)
        drained.join(10)
        assert not drained.is_alive()
        fresh.close()


def test_drain_serves_connections_queued_in_the_backlog() -> None:
    """Connections the kernel completed but nobody accepted yet are served, not reset."""
    server, address = start(Recorder, max_connections=1)
    with serving(server) as runner:
        first = RawMTA.connect(address)
        first.hello()
        wait_for(lambda: len(server.connections) == 1, 2, "first session")
        queued = [RawMTA.connect(address) for _ in range(3)]  # over the limit: in the backlog
        for mta in queued:
            mta.send(OFFER_V6)  # as an MTA does at once; nobody has accepted it yet
        assert len(server.connections) == 1
        drained = threading.Thread(target=runner.drain, args=(10.0,))
        drained.start()
        for mta in queued:
            assert isinstance(mta.replies(timeout=5)[0], OptNeg)
            mta.command(Connect(b"client.example", Family.INET, 4567, b"192.0.2.1"))
            assert kinds(mta.message())[-1] == "Accept"
            assert mta.wait_closed(2)
        assert kinds(first.message())[-1] == "Accept"
        drained.join(10)
        assert not drained.is_alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2)  # the listener is closed now
        for mta in (first, *queued):
            mta.close()


def test_drain_deadline_aborts_stuck_sessions() -> None:
    Slow.eom_delay = 30.0
    server, address = start(Slow)
    try:
        with serving(server) as runner, RawMTA.connect(address) as mta:
            mta.hello()
            mta.command(Mail(b"<a@b>"))
            mta.send(EndOfMessage())
            wait_for(lambda: bool(server.connections), 2, "session")
            runner.drain(0.3)
            with pytest.raises(ConnectionClosedError):
                mta.replies(timeout=5)
    finally:
        Slow.eom_delay = 0.0


def test_replycode_and_reject_decisions() -> None:
    class Picky(Milter):
        def rcpt_to(self, recipient: str, params: list[str]) -> Any:
            if "nobody" in recipient:
                return ReplyCode(550, "no such user", "5.1.1")
            return Continue()

        def connect(self, hostname: str, family: Family, *rest: Any) -> Any:
            return Reject() if hostname == "bad" else None

    server, address = start(Picky)
    with serving(server):
        with RawMTA.connect(address) as mta:
            mta.negotiate()
            assert mta.command(Connect(b"bad", Family.UNKNOWN)) == [wire.Reject()]
        with RawMTA.connect(address) as mta:
            mta.hello()
            replies = mta.message(recipients=("<nobody@x>",))
            assert replies == [wire.ReplyCodePacket(b"550 5.1.1 no such user")]


def test_server_thread_helper_stops_cleanly() -> None:
    server, _ = start(Recorder)
    runner = ServerThread(server)
    runner.thread.start()
    assert runner.started.wait(5)
    runner.stop()
    assert not runner.thread.is_alive()
    for sock in server.listeners:
        sock.close()


# ------------------------------------------------------------------ uvloop


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


needs_uvloop = pytest.mark.skipif(not _uvloop_available(), reason="uvloop is not installed")


@needs_uvloop
def test_uvloop_full_session_and_progress() -> None:
    Slow.eom_delay = 0.4
    server, address = start(Slow, progress_interval=0.1)
    try:
        with serving(server, use_uvloop=True), RawMTA.connect(address) as mta:
            mta.hello()
            replies = mta.message()
            assert replies[-1] == wire.Accept()
            assert Progress() in replies
            assert kinds(mta.message())[-1] == "Accept"
    finally:
        Slow.eom_delay = 0.0


@needs_uvloop
def test_uvloop_connection_lost_mid_callback() -> None:
    Slow.eom_delay = 10.0
    Slow.events = []
    server, address = start(Slow)
    try:
        with serving(server, use_uvloop=True):
            with RawMTA.connect(address) as mta:
                mta.hello()
                mta.command(Mail(b"<a@b>"))
                mta.send(EndOfMessage())
                wait_for(lambda: bool(server.connections), 2, "session")
            wait_for(lambda: "close" in Slow.events, 5, "close callback")
            assert Slow.events == ["cancelled", "abort", "close"]
    finally:
        Slow.eom_delay = 0.0


@needs_uvloop
def test_uvloop_max_connections() -> None:
    server, address = start(Recorder, max_connections=1)
    with serving(server, use_uvloop=True), RawMTA.connect(address) as first:
        first.negotiate()
        second = RawMTA.connect(address, timeout=0.5)
        try:
            second.send(OFFER_V6)
            with pytest.raises(TimeoutError):
                second.replies()
            first.quit()
            assert isinstance(second.replies(timeout=5)[0], OptNeg)
        finally:
            second.close()


def test_uvloop_env_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from milterkit.runtime.server import uvloop_wanted

    monkeypatch.setenv("MILTERKIT_NO_UVLOOP", "1")
    assert uvloop_wanted(None) is False
    assert uvloop_wanted(False) is False
    monkeypatch.delenv("MILTERKIT_NO_UVLOOP")
    assert uvloop_wanted(None) is _uvloop_available()
