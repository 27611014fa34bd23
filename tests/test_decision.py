"""Decision: one typed value for callbacks, error_decision, results, exit codes and JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

import milterkit
from milterkit import Accept, Decision, Milter, ReplyCode, Response
from milterkit.cli.check import EXIT_CODES, exit_status
from milterkit.client.session import decision_of
from milterkit.contrib._common import service_failure
from milterkit.decision import ERROR_DECISIONS
from milterkit.execution import ExecutionSettings
from milterkit.protocol import Reject, ReplyCodePacket, Shutdown, TempFail
from milterkit.result import CheckResult, StageResult
from milterkit.runtime.daemon import DaemonConfig, _check_config
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.testing import MilterHarness, assert_decision

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def test_a_decision_is_its_lowercase_string_everywhere_text_is_made() -> None:
    assert Decision.ACCEPT == "accept" and Decision.TEMPFAIL == "tempfail"
    assert {Decision.REJECT: 1}["reject"] == 1  # hashes as its string
    assert (str(Decision.DISCARD), f"{Decision.SKIP}", f"{Decision.CONTINUE:>9}") == (
        "discard",
        "skip",
        " continue",
    )
    assert json.dumps({"decision": Decision.ACCEPT}) == '{"decision": "accept"}'
    assert milterkit.Decision is Decision


@pytest.mark.parametrize(
    ("given", "expected"),
    [("tempfail", Decision.TEMPFAIL), ("TempFail", Decision.TEMPFAIL), (Decision.ACCEPT, "accept")],
)
def test_parse_takes_a_member_or_its_name_in_any_case(given: str, expected: Decision) -> None:
    assert Decision.parse(given) is Decision(expected)


def test_parse_names_the_allowed_choices() -> None:
    expected = "expected one of tempfail, accept, reject, continue"
    with pytest.raises(ValueError, match=f"'skip' is not a decision here; {expected}"):
        Decision.parse("skip", ERROR_DECISIONS)
    with pytest.raises(ValueError, match="'acept' is not a decision here"):
        Decision.parse("acept")


def test_a_reply_code_decides_by_its_class() -> None:
    assert ReplyCode(550, "no").decision is Decision.REJECT
    assert ReplyCode(451, "later").decision is Decision.TEMPFAIL
    assert decision_of(ReplyCodePacket(b"550 5.7.1 no")) is Decision.REJECT
    assert decision_of(ReplyCodePacket(b"421 4.3.2 bye")) is Decision.TEMPFAIL
    assert decision_of(Shutdown()) is Decision.SHUTDOWN
    assert decision_of(Reject()) is Decision.REJECT


class Decides(Milter):
    """Answers with a Decision member at RCPT and EOM, as a callback may now."""

    def rcpt_to(self, recipient: str, params: list[str]) -> Response | None:
        if "nobody" in recipient:
            return Decision.REJECT
        return Decision.CONTINUE

    def end_of_message(self) -> Response:
        return Decision.DISCARD


def test_a_callback_may_return_a_decision() -> None:
    with MilterHarness(Decides) as mta:
        result = mta.check(MESSAGE, recipients=["<nobody@example.net>", "<bob@example.net>"])
    assert result.decision is Decision.DISCARD
    assert list(result.rejected_recipients) == ["<nobody@example.net>"]
    assert [s.decision for s in result.stages if s.stage == "rcpt"] == [
        Decision.REJECT,
        Decision.CONTINUE,
    ]
    assert all(type(s.decision) is Decision for s in result.stages)


class Unsendable(Milter):
    decision: Decision = Decision.NOREPLY

    def mail_from(self, sender: str, params: list[str]) -> Response:
        return self.decision


@pytest.mark.parametrize(
    ("decision", "logged"),
    [
        (Decision.NOREPLY, "is a client's record, not a reply to send"),
        (Decision.SHUTDOWN, "refused by Sendmail; send a 421 REPLYCODE instead"),
    ],
)
def test_a_decision_no_milter_can_send_gets_the_error_decision(
    decision: Decision, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    milter = type("Sends", (Unsendable,), {"decision": decision})
    with caplog.at_level(logging.ERROR, "milterkit"), MilterHarness(milter) as mta:
        result = mta.check(MESSAGE)
    assert (result.decision, result.decided_at) == (Decision.TEMPFAIL, "mail")
    assert logged in caplog.text


class Raises(Milter):
    def mail_from(self, sender: str, params: list[str]) -> Response:
        raise RuntimeError("boom")


@pytest.mark.parametrize("error_decision", ["reject", "REJECT", Decision.REJECT])
def test_error_decision_takes_a_decision_or_its_name(error_decision: Decision | str) -> None:
    assert ExecutionSettings(error_decision=error_decision).error_decision is Decision.REJECT
    with MilterHarness(Raises, error_decision=error_decision) as mta:
        assert mta.check(MESSAGE).decision is Decision.REJECT


@pytest.mark.parametrize("bad", ["skip", "discard", "maybe"])
def test_error_decision_refuses_what_cannot_answer_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="expected one of tempfail, accept, reject, continue"):
        ExecutionSettings(error_decision=bad)
    with pytest.raises(RuntimeConfigError, match=f"invalid error decision: '{bad}'"):
        _check_config(DaemonConfig(address="inet:1@127.0.0.1", error_decision=bad))


def test_results_json_and_exit_codes_use_the_decision() -> None:
    result = CheckResult(decision=Decision.TEMPFAIL, stages=[StageResult("eoh", Decision.NOREPLY)])
    data = json.loads(result.to_json())
    assert (data["decision"], data["stages"][0]["decision"]) == ("tempfail", "noreply")
    assert exit_status(result) == 2
    assert {str(k): v for k, v in EXIT_CODES.items()} == {
        "continue": 0,
        "accept": 0,
        "reject": 1,
        "tempfail": 2,
        "discard": 3,
    }
    assert not CheckResult(decision=Decision.REJECT).delivered
    assert CheckResult(decision=Decision.ACCEPT).delivered


class Accepts(Milter):
    def end_of_message(self) -> Response:
        return Accept()


def test_assert_decision_takes_a_decision_or_its_name_and_refuses_a_misspelt_one() -> None:
    with MilterHarness(Accepts) as mta:
        result = mta.check(MESSAGE)
    assert_decision(result, "accept")
    assert_decision(result, Decision.ACCEPT)
    with pytest.raises(AssertionError, match="expected decision 'reject', got 'accept'"):
        assert_decision(result, "reject")
    with pytest.raises(ValueError, match="'acept' is not a decision"):
        assert_decision(result, "acept")


def test_wire_replies_keep_working_as_answers() -> None:
    """Accept(), the class Accept and TempFail() still answer, beside the Decision members."""

    class Mixed(Milter):
        def rcpt_to(self, recipient: str, params: list[str]) -> Any:
            return TempFail() if "later" in recipient else Accept

    with MilterHarness(Mixed) as mta:
        result = mta.check(MESSAGE, recipients=["<later@example.net>", "<now@example.net>"])
    assert result.decision is Decision.ACCEPT and result.decided_at == "rcpt"
    assert list(result.rejected_recipients) == ["<later@example.net>"]


if sys.version_info >= (3, 11):

    def test_it_prints_as_the_stdlib_strenum_does() -> None:
        from enum import StrEnum

        class Same(StrEnum):
            ACCEPT = "accept"

        assert (str(Decision.ACCEPT), f"{Decision.ACCEPT}") == (str(Same.ACCEPT), f"{Same.ACCEPT}")


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        ("accept", Accept()),
        (Decision.REJECT, ReplyCode(550, "scanner unavailable, message refused", "5.7.1")),
        ("TempFail", ReplyCode(451, "scanner unavailable, try again later", "4.3.0")),
    ],
)
def test_a_cookbook_filters_service_failure_setting_is_a_decision_or_its_name(
    on_error: Decision | str, expected: Response
) -> None:
    assert service_failure(on_error, "scanner") == expected


def test_a_cookbook_filters_service_failure_setting_refuses_other_decisions() -> None:
    with pytest.raises(ValueError, match="expected one of tempfail, accept, reject"):
        service_failure("discard", "scanner")
