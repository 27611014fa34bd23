"""Test helpers and API guards added for newcomers: reraise, reply/RCPT asserts, body, exit 64."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from milterkit import Accept, BodyNotCollectedError, Milter, ReplyCode
from milterkit.testing import (
    MilterHarness,
    assert_recipient_rejected,
    assert_reply,
)

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


class Picky(Milter):
    def rcpt_to(self, recipient: str, params: list[str]) -> Any:
        if "nobody" in recipient:
            return ReplyCode(550, "No such user here", "5.1.1")
        return None

    def end_of_message(self) -> Any:
        return ReplyCode(451, "Greylisted, try again later", "4.7.1")


def test_assert_reply_and_recipient_rejected_pass_and_fail_with_the_facts() -> None:
    with MilterHarness(Picky) as mta:
        result = mta.check(MESSAGE, recipients=["<nobody@example.net>", "<bob@example.net>"])
    assert_reply(result, 451, "Greylisted")
    assert_recipient_rejected(result, "nobody@example.net", 550, "No such user")
    with pytest.raises(AssertionError, match="expected the SMTP reply 550"):
        assert_reply(result, 550)
    with pytest.raises(AssertionError, match=r"rejected with 550.*expected 551"):
        assert_recipient_rejected(result, "<nobody@example.net>", 551)
    with pytest.raises(AssertionError, match=r"expected recipient <bob@example\.net> rejected"):
        assert_recipient_rejected(result, "<bob@example.net>")


class Broken(Milter):
    def mail_from(self, sender: str, params: list[str]) -> Any:
        raise KeyError("missing setting")


def test_reraise_fails_the_test_with_the_callbacks_own_exception() -> None:
    with MilterHarness(Broken, reraise=True) as mta, pytest.raises(KeyError, match="missing"):
        mta.check(MESSAGE)


def test_without_reraise_the_error_decision_is_answered_as_in_the_daemon() -> None:
    with MilterHarness(Broken) as mta:
        assert mta.check(MESSAGE).decision == "tempfail"


class ForgotToCollect(Milter):
    def end_of_message(self) -> Any:
        return Accept() if b"virus" not in self.body_bytes else None


def test_body_bytes_without_collect_body_names_the_setting() -> None:
    expected = "collect_body = True on ForgotToCollect"
    with (
        MilterHarness(ForgotToCollect, reraise=True) as mta,
        pytest.raises(BodyNotCollectedError, match=expected),
    ):
        mta.check(MESSAGE)


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "message.eml"],  # --socket missing
        ["check", "--socket", "inet:1@127.0.0.1", "--bogus", "m.eml"],
        ["run", "x.py:X"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_64(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "milterkit", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 64, result.stderr
    assert "error:" in result.stderr or "is required" in result.stderr
