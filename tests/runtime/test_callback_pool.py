"""The worker's callback pool (CallbackRunner.submit), on real event loops and threads.

Each test drives real threads through the same ``submit`` the session uses;
events and barriers (with generous timeouts) order them, never sleeps, so a
loaded machine changes how long a test takes, not its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from milterkit.execution import (
    CallbackRunner,
    CallScope,
    ExecutionSettings,
    current_scope,
    within,
)
from milterkit.milter import Milter
from milterkit.testing import MilterHarness

WAIT = 30.0  # a bound for what must happen, far from how long it takes


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@pytest.fixture(params=_loops())
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Run a coroutine to its end on a new loop of the parametrised kind."""
    if request.param == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield loop.run_until_complete
    finally:
        loop.close()
    assert not errors, errors  # e.g. a late result set on a cancelled future


def _runner(threads: int = 4) -> CallbackRunner:
    return CallbackRunner(ExecutionSettings(threads=threads), logging.getLogger("test"))


def _scope() -> CallScope:
    return CallScope(lambda scope: None)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("milterkit-cb")]


def test_a_pooled_call_returns_its_result_and_runs_in_its_scope(run: Any) -> None:
    runner = _runner()
    scope = _scope()

    def call(a: int, b: int) -> tuple[int, bool, str]:
        return a + b, current_scope() is scope, threading.current_thread().name

    async def main() -> Any:
        return await runner.submit(scope, call, (2, 3))

    try:
        total, in_scope, name = run(main())
    finally:
        runner.shutdown()
    assert (total, in_scope) == (5, True)
    assert name.startswith("milterkit-cb")
    assert current_scope() is None  # the loop thread has none


def test_an_exception_reaches_the_awaiting_coroutine(run: Any) -> None:
    runner = _runner()

    def fails() -> None:
        raise LookupError("no such record")

    async def main() -> None:
        await runner.submit(_scope(), fails, ())

    try:
        with pytest.raises(LookupError, match="no such record"):
            run(main())
    finally:
        runner.shutdown()


def test_calls_past_the_bound_wait_for_a_thread_and_all_complete(run: Any) -> None:
    runner = _runner(threads=2)
    release = threading.Event()
    started: list[int] = []
    two_running = threading.Barrier(3)  # the two pool threads and the test

    def call(n: int) -> int:
        started.append(n)
        if n < 2:
            two_running.wait(WAIT)
            release.wait(WAIT)
        return n * 10

    async def main() -> list[int]:
        futures = [runner.submit(_scope(), call, (n,)) for n in range(6)]
        await asyncio.get_running_loop().run_in_executor(None, two_running.wait, WAIT)
        assert sorted(started) == [0, 1]  # both threads held: the other four wait
        assert len(_pool_threads()) == 2
        release.set()
        return list(await asyncio.gather(*futures))

    try:
        assert run(main()) == [0, 10, 20, 30, 40, 50]
    finally:
        release.set()
        runner.shutdown()


def test_the_pool_grows_to_the_bound_for_calls_that_block_together(run: Any) -> None:
    runner = _runner(threads=8)
    together = threading.Barrier(8)  # passes only when 8 calls run at once

    def call() -> str:
        together.wait(WAIT)
        return threading.current_thread().name

    async def main() -> list[str]:
        return list(await asyncio.gather(*(runner.submit(_scope(), call, ()) for _ in range(8))))

    try:
        names = run(main())
    finally:
        runner.shutdown()
    assert len(set(names)) == 8


def test_a_timed_out_call_is_left_to_finish_and_its_late_result_dropped(run: Any) -> None:
    runner = _runner(threads=1)
    release, finished = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> str:
        release.wait(WAIT)
        finished.set()
        return "late"

    def queued() -> None:
        ran.append("queued")

    async def main() -> None:
        slow_call = runner.submit(_scope(), slow, ())
        behind = runner.submit(_scope(), queued, ())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow_call, 0.05)
        behind.cancel()  # timed out too, before a thread took it
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, finished.wait, WAIT)
        # one more call through the same thread: the late result was delivered before it
        assert await runner.submit(_scope(), lambda: "next", ()) == "next"

    try:
        run(main())  # the fixture checks no late result was set on the cancelled future
    finally:
        release.set()
        runner.shutdown()
    assert ran == []  # a call cancelled before it started never runs


def test_shutdown_lets_a_running_call_finish_and_cancels_waiting_ones(run: Any) -> None:
    runner = _runner(threads=1)
    running, release = threading.Event(), threading.Event()
    done: list[str] = []

    def held() -> None:
        running.set()
        release.wait(WAIT)
        done.append("held")

    async def main() -> None:
        first = runner.submit(_scope(), held, ())
        waiting = runner.submit(_scope(), done.append, ("waiting",))
        await asyncio.get_running_loop().run_in_executor(None, running.wait, WAIT)
        (thread,) = _pool_threads()
        runner.shutdown()
        assert waiting.cancelled()
        assert not first.done()  # still running: not cancelled under it
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, WAIT)
        assert not thread.is_alive()

    try:
        run(main())
    finally:
        release.set()
    assert done == ["held"]


class RaisesInPool(Milter):
    execution = "threads"

    def mail_from(self, sender: str, params: list[str]) -> Any:
        raise RuntimeError("database down")


def test_an_exception_in_a_pooled_callback_is_answered_with_the_error_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "milterkit"), MilterHarness(RaisesInPool) as harness:
        result = harness.check(b"Subject: x\r\n\r\nbody\r\n", sender="<a@b>", recipients=["<c@d>"])
    assert result.decision == "tempfail"
    assert "callback mail_from raised; answering tempfail" in caplog.text
    assert "RuntimeError: database down" in caplog.text


def test_within_times_a_pooled_call_out_and_keeps_an_outside_cancel_a_cancel(run: Any) -> None:
    runner = _runner(threads=2)
    release = threading.Event()

    async def main() -> None:
        assert await within(runner.submit(_scope(), lambda: "quick", ()), WAIT) == "quick"
        held = runner.submit(_scope(), release.wait, (WAIT,))
        with pytest.raises(asyncio.TimeoutError):
            await within(held, 0.05)
        assert held.cancelled()
        waiter = asyncio.ensure_future(within(runner.submit(_scope(), release.wait, (WAIT,)), WAIT))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()

    try:
        run(main())
    finally:
        release.set()
        runner.shutdown()
