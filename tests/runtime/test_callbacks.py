"""CallbackPolicy (runtime/callbacks.py) through a real session and thread pool.

What the MTA gets and what the log says when abort/close fail awaited or in
the pool (they answer nothing: the failure is only logged), and when a
callback's own lookup times out (its exception, not callback_timeout), next
to the pooled and async paths that tests/runtime/test_execution.py covers
over sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket

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


class OwnLookupTimesOut(Milter):
    """An async lookup with its own timeout, which the callback does not catch."""

    async def mail_from(self, sender: str, args: list[str]) -> None:
        await asyncio.wait_for(asyncio.sleep(60), 0.01)


class PooledSocketTimesOut(Milter):
    """A blocking read with a socket timeout (socket.timeout is TimeoutError)."""

    def mail_from(self, sender: str, args: list[str]) -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.settimeout(0.01)
            ours.recv(1)  # nothing comes


@pytest.mark.parametrize("callback_timeout", [None, 60.0])
@pytest.mark.parametrize(
    ("milter", "execution"), [(OwnLookupTimesOut, None), (PooledSocketTimesOut, "threads")]
)
def test_a_timeout_the_callback_raises_is_its_error_not_callback_timeout(
    milter: type[Milter],
    execution: str | None,
    callback_timeout: float | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with MilterHarness(milter, execution=execution, callback_timeout=callback_timeout) as harness:
        with caplog.at_level(logging.ERROR, logger="milterkit"):
            assert harness.check(MESSAGE).decision.value == "tempfail"
        assert "[harness] callback mail_from raised; answering tempfail" in caplog.text
        assert "over callback_timeout" not in caplog.text
        (error,) = harness.filter.callback_errors
        assert isinstance(error, (TimeoutError, asyncio.TimeoutError))  # distinct before 3.11
        assert not harness.filter.closed  # as after any exception: the next message is served
        assert harness.check(MESSAGE).decision.value == "tempfail"


class Sleeps(Milter):
    async def mail_from(self, sender: str, args: list[str]) -> None:
        await asyncio.sleep(60)


def test_callback_timeout_itself_still_answers_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with MilterHarness(Sleeps, callback_timeout=0.2) as harness:
        with caplog.at_level(logging.ERROR, logger="milterkit"):
            assert harness.check(MESSAGE).decision.value == "tempfail"
        assert "[harness] callback mail_from ran " in caplog.text
        assert (
            "over callback_timeout 0.2s; answering tempfail, discarding its result and "
            "actions, and closing the connection"
        ) in caplog.text
        assert harness.filter.callback_errors == []
        assert harness.filter.closed
