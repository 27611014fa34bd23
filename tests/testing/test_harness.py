"""The in-memory harness and its pytest plugin, driving real Milter classes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from milterkit import Accept, Action, Milter, Reject, ReplyCode, TempFail
from milterkit.mtaprofile import POSTFIX, SENDMAIL, V2_ONLY
from milterkit.protocol import ProtocolFlag
from milterkit.testing import (
    HarnessError,
    MilterHarness,
    assert_body_replaced,
    assert_decision,
    assert_from_changed,
    assert_header_added,
    assert_header_changed,
    assert_header_deleted,
    assert_header_inserted,
    assert_no_modifications,
    assert_quarantined,
    assert_recipient_added,
    assert_recipient_deleted,
    check,
)

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"X-Old: one\r\n"
    b"\r\n"
    b"Hi Bob,\r\nsee you.\r\n"
)


class EveryAction(Milter):
    actions = Action.all()

    def end_of_message(self) -> Accept:
        self.add_header("X-Added", "yes")
        self.insert_header("X-Top", "top", 0)
        self.change_header("Subject", "changed")
        self.delete_header("X-Old")
        self.add_recipient("<carol@example.net>")
        self.add_recipient("<dave@example.net>", ["NOTIFY=NEVER", "ORCPT=rfc822;d@x"])
        self.delete_recipient("<bob@example.net>")
        self.change_from("<bounce@example.org>", "RET=HDRS")
        self.replace_body(b"new body\r\n")
        self.quarantine("held for review")
        return Accept()


def test_every_modification_is_reported_in_order_and_applied() -> None:
    result = check(EveryAction, MESSAGE)
    assert_decision(result, "accept")
    assert_header_added(result, "X-Added", "yes")
    assert_header_inserted(result, "X-Top", "top", 0)
    assert_header_changed(result, "Subject", "changed")
    assert_header_deleted(result, "X-Old")
    assert_recipient_added(result, "carol@example.net")
    assert_recipient_added(result, "dave@example.net", "NOTIFY=NEVER ORCPT=rfc822;d@x")
    assert_recipient_deleted(result, "bob@example.net")
    assert_from_changed(result, "bounce@example.org", ["RET=HDRS"])
    assert_body_replaced(result, b"new body\r\n")
    assert_quarantined(result, "held for review")
    names = [type(m).__name__ for m in result.modifications]
    assert names == [
        "AddHeader",
        "InsertHeader",
        "ChangeHeader",
        "ChangeHeader",
        "AddRecipient",
        "AddRecipientPar",
        "DeleteRecipient",
        "ChangeFrom",
        "ReplaceBody",
        "Quarantine",
    ]
    delivered = result.apply(MESSAGE)
    assert delivered.sender == "bounce@example.org"
    assert set(delivered.recipients) == {"carol@example.net", "dave@example.net"}
    assert delivered.message_bytes == (
        b"X-Top: top\r\n"
        b"From: Alice <alice@example.org>\r\n"
        b"To: bob@example.net\r\n"
        b"Subject: changed\r\n"
        b"X-Added: yes\r\n"
        b"\r\n"
        b"new body\r\n"
    )


def test_assertion_failure_lists_what_the_milter_did() -> None:
    result = check(EveryAction, MESSAGE)
    with pytest.raises(AssertionError, match="AddHeader"):
        assert_header_added(result, "X-Missing", "no")


class RcptPolicy(Milter):
    def rcpt_to(self, recipient: str, params: list[str]) -> ReplyCode | None:
        if recipient.startswith("<reject@"):
            return ReplyCode(550, ["no such user", "try another"], "5.1.1")
        return None


def test_rejected_recipient_keeps_the_message_for_the_others() -> None:
    result = check(RcptPolicy, MESSAGE, recipients=["<reject@example.net>", "<ok@example.net>"])
    assert result.delivered
    reply = result.rejected_recipients["<reject@example.net>"]
    assert reply.code == 550
    assert reply.text == "550-5.1.1 no such user\r\n550 5.1.1 try another"


class Slow(Milter):
    actions = Action.ADD_HEADERS

    async def end_of_message(self) -> None:
        await asyncio.sleep(0.01)
        self.add_header("X-Async", "1")


def test_async_callbacks_run_on_the_private_loop() -> None:
    assert_header_added(check(Slow, MESSAGE), "X-Async", "1")


class Broken(Milter):
    def mail_from(self, sender: str, params: list[str]) -> None:
        if "boom" in sender:
            raise ValueError("callback bug")


def test_exception_answers_the_error_decision_and_the_next_message_works(
    milter_harness: Callable[..., MilterHarness], caplog: pytest.LogCaptureFixture
) -> None:
    mta = milter_harness(Broken)
    failed = mta.check(MESSAGE, sender="<boom@example.org>")
    assert_decision(failed, "tempfail", 451)
    assert "callback mail_from raised" in caplog.text
    assert mta.check(MESSAGE).delivered
    rejecting = milter_harness(Broken, error_decision="reject")
    assert_decision(rejecting.check(MESSAGE, sender="<boom@example.org>"), "reject")


class Counter(Milter):
    actions = Action.ADD_HEADERS

    def connect(self, hostname: str, family: object, address: str | None, port: int | None) -> None:
        self.messages = 0
        self.client = address

    def mail_from(self, sender: str, params: list[str]) -> None:
        self.messages += 1

    def end_of_message(self) -> None:
        self.add_header("X-Count", str(self.messages))


def test_several_messages_share_one_milter_instance(
    milter_harness: Callable[..., MilterHarness],
) -> None:
    mta = milter_harness(Counter, client_address="192.0.2.7")
    for n in (1, 2, 3):
        assert_header_added(mta.check(MESSAGE), "X-Count", str(n))
    assert getattr(mta.milter, "client", None) == "192.0.2.7"


class Lazy(Milter):
    """Overrides nothing: every step is switched off by NO* bits."""


def test_unused_callbacks_are_not_negotiated() -> None:
    result = check(Lazy, MESSAGE)
    assert result.negotiated is not None
    for flag in (ProtocolFlag.NOCONNECT, ProtocolFlag.NOHELO, ProtocolFlag.NOBODY):
        assert result.negotiated.protocol & flag
    assert [s.stage for s in result.stages] == ["eom"]
    assert_no_modifications(result)


class MacroReader(Milter):
    actions = Action.ADD_HEADERS
    macros = {"connect": ["j", "{daemon_name}"], "mail": "{mail_addr}"}

    def mail_from(self, sender: str, params: list[str]) -> None:
        self.seen = (self.macro_values.get("j"), self.macro_values.get("{mail_addr}"))

    def end_of_message(self) -> None:
        self.add_header("X-Seen", repr((*self.seen, self.macro_values.get("i"))))


@pytest.mark.parametrize(
    ("profile", "queue_id"),
    # Sendmail carries i only in its envfrom list, which our request for that stage replaces.
    [(POSTFIX, b"'QID1'"), (SENDMAIL, b"None")],
    ids=["postfix", "sendmail"],
)
def test_macros_follow_the_profile(profile: object, queue_id: bytes) -> None:
    overrides = {"j": "mx.test", "i": "QID1"}
    result = check(MacroReader, MESSAGE, profile=profile, macros=overrides)
    added = [m for m in result.modifications if getattr(m, "name", b"") == b"X-Seen"]
    assert added, result.modifications
    expected = b"('mx.test', 'alice@example.org', " + queue_id + b")"
    assert added[0].value == expected  # type: ignore[attr-defined]


class NewStyle(Milter):
    actions = Action.CHANGE_FROM

    def data(self) -> None:
        self.saw_data = True

    def end_of_message(self) -> None:
        self.change_from("<x@example.org>")


def test_v2_mta_fallback_sends_no_data_and_refuses_v6_actions() -> None:
    with MilterHarness(NewStyle, profile=V2_ONLY) as mta:
        result = mta.check(MESSAGE)
        assert result.negotiated is not None and result.negotiated.version == 2
        assert not hasattr(mta.milter, "saw_data")
        assert result.decision == "continue"
        assert_from_changed(result, "x@example.org")


class Picky(Milter):
    def helo(self, name: str) -> Reject | None:
        return Reject() if name == "evil" else None

    def body(self, chunk: bytes) -> TempFail:
        return TempFail()


def test_connection_level_reject_and_body_tempfail() -> None:
    assert_decision(check(Picky, MESSAGE, helo="evil"), "reject")
    assert_decision(check(Picky, MESSAGE), "tempfail")


class NotGranted(Milter):
    actions = Action.ADD_HEADERS

    def end_of_message(self) -> None:
        self.quarantine("no")


def test_action_not_negotiated_is_logged_and_answered_with_the_error_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = check(NotGranted, MESSAGE)
    assert_decision(result, "tempfail")
    assert "QUARANTINE" in caplog.text


def test_closed_harness_refuses_more_work() -> None:
    mta = MilterHarness(Lazy)
    mta.close()
    with pytest.raises(HarnessError):
        mta.check(MESSAGE)
