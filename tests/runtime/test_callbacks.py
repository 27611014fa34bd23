"""CallbackPolicy (runtime/callbacks.py) through a real session and thread pool.

What the MTA gets and what the log says when abort/close fail awaited or in
the pool (they answer nothing: the failure is only logged), next to the
pooled and async paths that tests/runtime/test_execution.py covers over sockets.
"""

from __future__ import annotations

import logging

import pytest

from milterkit import Milter, Reject
from milterkit.testing import MilterHarness

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


class AsyncCloseFails(Milter):
    async def close(self) -> None:
        raise RuntimeError("close broke")


class PooledCloseFails(Milter):
    def close(self) -> None:
        raise RuntimeError("close broke in the pool")


class PooledAbortFails(Milter):
    def mail_from(self, sender: str, args: list[str]) -> Reject:
        return Reject()  # the fake MTA aborts the message

    def abort(self) -> None:
        raise RuntimeError("abort broke in the pool")


@pytest.mark.parametrize(
    ("milter", "execution", "error"),
    [
        (AsyncCloseFails, None, "close broke"),
        (PooledCloseFails, "threads", "close broke in the pool"),
    ],
)
def test_a_failing_close_is_logged_and_kept(
    milter: type[Milter], execution: str | None, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    harness = MilterHarness(milter, execution=execution)
    assert harness.check(MESSAGE).decision.value == "continue"
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        harness.close()
    assert "[harness] callback close failed" in caplog.text
    assert f"RuntimeError: {error}" in caplog.text
    assert [str(exc) for exc in harness.filter.callback_errors] == [error]


def test_a_failing_pooled_abort_is_logged_and_the_connection_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with MilterHarness(PooledAbortFails, execution="threads") as harness:
        assert harness.check(MESSAGE).decision.value == "reject"
        with caplog.at_level(logging.ERROR, logger="milterkit"):
            harness.abort()
        assert "[harness] callback abort failed" in caplog.text
        assert "RuntimeError: abort broke in the pool" in caplog.text
        assert not harness.filter.closed
        assert harness.check(MESSAGE).decision.value == "reject"
