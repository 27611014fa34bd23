"""Per-message records and connection ends, over real sockets with a raw MTA."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
from typing import Any

import pytest

from milterkit.decision import Decision
from milterkit.milter import Accept, Continue, Milter, ReplyCode
from milterkit.protocol import Abort, EndOfMessage, Mail, Rcpt
from milterkit.protocol import messages as wire
from milterkit.protocol.constants import Action, Command
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.jsonlog import JsonFormatter, apply_log_format
from milterkit.runtime.observe import LogObserver, MessageRecord, MultiObserver, Observer
from milterkit.runtime.server import Server
from tests.runtime.test_server_mta import RawMTA, inet_listener, serving, wait_for


class Recording(Observer):
    """Keeps every call (the server runs in another thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[MessageRecord] = []
        self.ends: list[tuple[str, str]] = []
        self.opened: list[str] = []
        self.errors: list[str] = []
        self.timed: list[str] = []

    def connection_opened(self, cid: str, peer: str) -> None:
        with self.lock:
            self.opened.append(cid)

    def message_done(self, record: MessageRecord) -> None:
        with self.lock:
            self.messages.append(record)

    def connection_done(self, cid: str, reason: str, peer: str) -> None:
        with self.lock:
            self.ends.append((cid, reason))

    def callback_timed(self, name: str, seconds: float) -> None:
        with self.lock:
            self.timed.append(name)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors.append(kind)


class Judge(Milter):
    """Decides by sender; refuses recipients named nobody; quarantines spammers."""

    actions = Action.ADD_HEADERS | Action.QUARANTINE

    def connect(self, *args: Any) -> Any:
        return None  # overridden, so the MTA sends CONNECT (the client address)

    def mail_from(self, sender: str, params: list[str]) -> Any:
        if "reject" in sender:
            return ReplyCode(550, "go away", "5.7.1")
        if "boom" in sender:
            raise RuntimeError("callback exploded")
        if "spammer" in sender:
            self.quarantine("spammer")
        return Continue()

    def rcpt_to(self, recipient: str, params: list[str]) -> Any:
        if "nobody" in recipient:
            return ReplyCode(550, "no such user", "5.1.1")
        return None

    def end_of_message(self) -> Any:
        self.add_header("X-Checked", "yes")
        self.add_header("X-Also", "yes")
        return Accept()


def served(observer: Observer, **kwargs: Any) -> tuple[Server, Any]:
    sock = inet_listener()
    return Server(Judge, sock, observer=observer, **kwargs), sock.getsockname()[:2]


def test_accepted_message_with_modifications_queue_id_and_quit() -> None:
    seen = Recording()
    server, address = served(seen)
    with serving(server), RawMTA.connect(address) as mta:
        mta.hello()
        for step in (Mail(b"<spammer@example.org>"), Rcpt(b"<a@x>"), Rcpt(b"<nobody@x>")):
            mta.command(step)
        mta.send(wire.Macro(Command.BODYEOB, ((b"i", b"4QUEUE1"),)))
        replies = mta.command(EndOfMessage())
        assert isinstance(replies[-1], wire.Accept)
        mta.quit()
        assert mta.wait_closed()
        wait_for(lambda: seen.ends, 5, "connection end")
    (record,) = seen.messages
    assert record.decision == "accept"
    assert record.stage == "end_of_message"
    assert record.queue_id == "4QUEUE1"
    assert record.client == "client.example [192.0.2.1]"
    assert record.sender == "<spammer@example.org>"
    assert record.recipients == 1  # the refused one does not count
    assert record.modifications == {"add_header": 2, "quarantine": 1}
    assert record.quarantine == "spammer"
    assert record.milter_ms > 0
    assert seen.ends == [(seen.opened[0], "quit")]
    assert {"mail_from", "rcpt_to", "end_of_message"} <= set(seen.timed)
    assert seen.errors == []


def test_reply_code_at_mail_then_abort_then_callback_error() -> None:
    seen = Recording()
    server, address = served(seen)
    with serving(server), RawMTA.connect(address) as mta:
        mta.hello()
        assert isinstance(mta.command(Mail(b"<reject@x>"))[0], wire.ReplyCodePacket)
        mta.send(Abort())
        mta.command(Mail(b"<fine@x>"))
        mta.send(Abort())
        assert isinstance(mta.command(Mail(b"<boom@x>"))[0], wire.TempFail)
        mta.quit()
        assert mta.wait_closed()
        wait_for(lambda: seen.ends, 5, "connection end")
    rejected, aborted, failed = seen.messages
    assert (rejected.decision, rejected.stage) == ("reject", "mail_from")
    assert rejected.decision is Decision.REJECT  # a custom 5xx reply, named as the client names it
    assert rejected.reply == "550 5.7.1 go away"
    assert (aborted.decision, aborted.sender) == ("abort", "<fine@x>")
    assert (failed.decision, failed.stage) == ("tempfail", "mail_from")
    assert seen.errors == ["callback_raised"]


def test_mta_vanishing_mid_message_is_reported() -> None:
    seen = Recording()
    server, address = served(seen)
    with serving(server):
        mta = RawMTA.connect(address)
        mta.hello()
        mta.command(Mail(b"<a@x>"))
        mta.close()
        wait_for(lambda: seen.ends, 5, "connection end")
    assert [r.decision for r in seen.messages] == ["incomplete"]
    assert seen.ends[0][1] == "mta_vanished"
    assert seen.errors == ["mta_vanished"]


def test_protocol_error_and_timeout_are_connection_end_reasons() -> None:
    seen = Recording()
    server, address = served(seen, read_timeout=0.3)
    with serving(server):
        with RawMTA.connect(address) as mta:
            mta.negotiate()
            mta.send_raw(b"\x00\x00\x00\x01\xff")  # an unknown command
            assert mta.wait_closed()
        with RawMTA.connect(address) as mta:
            mta.send_raw(b"\x00\x00\x00")  # half a packet, then silence
            assert mta.wait_closed(10)
        wait_for(lambda: len(seen.ends) == 2, 5, "two connection ends")
    assert sorted(reason for _, reason in seen.ends) == ["protocol_error", "timeout"]
    assert sorted(seen.errors) == ["protocol_error", "timeout"]


def test_connect_level_reject_is_a_record() -> None:
    class NoConnect(Milter):
        def connect(self, *args: Any) -> Any:
            return ReplyCode(421, "not now", "4.3.2")

    seen = Recording()
    sock = inet_listener()
    with serving(Server(NoConnect, sock, observer=seen)), RawMTA.connect(sock.getsockname()) as mta:
        mta.hello()
        mta.quit()
        wait_for(lambda: seen.ends, 5, "connection end")
    (record,) = seen.messages
    assert (record.decision, record.stage, record.sender) == ("tempfail", "connect", None)
    assert record.decision is Decision.TEMPFAIL
    assert record.reply == "421 4.3.2 not now"


# ------------------------------------------------------------------ the log


def _json_logger(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger("milterkit.test_observe")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_log_observer_writes_one_json_object_per_line() -> None:
    stream = io.StringIO()
    observer = MultiObserver([LogObserver(_json_logger(stream)), Recording()])
    server, address = served(observer)
    with serving(server), RawMTA.connect(address) as mta:
        mta.hello()
        mta.message(sender="<evil\r\nforged@x>")
        mta.quit()
        assert mta.wait_closed()
        wait_for(lambda: stream.getvalue().count("\n") >= 2, 5, "two log lines")
    message, closed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert message["event"] == "message"
    assert message["sender"] == "<evil\r\nforged@x>"
    assert message["decision"] == "accept"
    assert message["modifications"] == {"add_header": 2}
    assert message["level"] == "info"
    assert isinstance(message["pid"], int)
    assert "decision=accept" in message["message"]
    assert "\\r\\n" in message["message"]  # the text form escapes it too
    assert closed["event"] == "connection_closed"
    assert closed["reason"] == "quit"


def test_text_line_names_every_field(caplog: pytest.LogCaptureFixture) -> None:
    record = MessageRecord(
        "w0-c1",
        client="mx [192.0.2.1]",
        queue_id="Q1",
        sender="<a@x>",
        recipients=2,
        decision="accept",
        stage="end_of_message",
        modifications={"add_header": 1, "quarantine": 1},
        quarantine="held",
        milter_ms=1.25,
    )
    with caplog.at_level(logging.INFO, "milterkit"):
        LogObserver().message_done(record)
    assert caplog.messages == [
        "[w0-c1] message queue_id=Q1 client=mx [192.0.2.1] sender=<a@x> recipients=2 "
        "decision=accept stage=end_of_message modifications=add_header:1,quarantine:1 "
        'quarantine="held" milter_ms=1.2'
    ]


def test_bad_log_format_names_it() -> None:
    expected = "invalid log format 'yaml': expected text or json"
    with pytest.raises(RuntimeConfigError, match=expected):
        apply_log_format("yaml")


def test_fields_has_every_field_of_the_record() -> None:
    record = MessageRecord("w0-c1", modifications={"add_header": 1}, milter_ms=1.23456)
    data = record.fields()
    assert set(data) == {f.name for f in dataclasses.fields(MessageRecord)}
    assert data["milter_ms"] == 1.235
    data["modifications"]["add_header"] = 5
    assert record.modifications == {"add_header": 1}  # a copy


class OnlyEnd(Milter):
    """Overrides end_of_message only: the MTA sends no MAIL or RCPT (SMFIP_NOMAIL...)."""

    actions = Action.ADD_HEADERS

    def end_of_message(self) -> Any:
        self.add_header("X-Only", "end")
        return Accept()


def test_a_milter_without_mail_from_still_gets_its_message_line() -> None:
    seen = Recording()
    sock = inet_listener()
    server = Server(OnlyEnd, sock, observer=seen)
    with serving(server), RawMTA.connect(sock.getsockname()[:2]) as mta:
        mta.negotiate()
        # no CONNECT reaches this filter: the client comes from Postfix's default "_" macro
        mta.send(wire.Macro(Command.CONNECT, ((b"_", b"client.example [192.0.2.1]"),)))
        for step in (Mail(b"<a@example.org>"), Rcpt(b"<b@x>")):
            mta.command(step)  # not sent: the filter turned these steps off
        mta.send(wire.Macro(Command.BODYEOB, ((b"i", b"4QUEUE2"),)))
        assert isinstance(mta.command(EndOfMessage())[-1], wire.Accept)
        mta.quit()
        assert mta.wait_closed()
        wait_for(lambda: seen.ends, 5, "connection end")
    (record,) = seen.messages
    assert record.decision == "accept"
    assert record.queue_id == "4QUEUE2"
    assert record.sender is None
    assert record.client == "client.example [192.0.2.1]"
    assert record.modifications == {"add_header": 1}
