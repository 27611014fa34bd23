"""MarkedSteps: an async callback awaited step by step, each step marked as the current call.

The stuck-callback guard and the loop watchdog read ``runner.current``; these
tests check that it names the callback during each step only, with a new key
per step, and that awaiting through the wrapper behaves as awaiting the
coroutine itself: results, exceptions and cancellation pass through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from milterkit.runtime.execution import CallbackRunner, ExecutionSettings, MarkedSteps


def runner() -> CallbackRunner:
    return CallbackRunner(ExecutionSettings(), logging.getLogger("test"))


def test_each_step_is_marked_with_its_own_key_and_nothing_between() -> None:
    calls = runner()
    seen: list[Any] = []

    async def callback() -> str:
        seen.append(calls.current)
        await asyncio.sleep(0)
        seen.append(calls.current)
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        seen.append(calls.current)
        return "done"

    async def main() -> str:
        task = asyncio.ensure_future(MarkedSteps(callback(), calls, "c1", "helo"))
        await asyncio.sleep(0)  # the callback is suspended at its first await
        seen.append(calls.current)
        return await task

    assert asyncio.run(main()) == "done"
    assert seen[0] == seen[2] == seen[3] == ("c1", "helo")
    assert seen[1] is None
    assert seen[0] is not seen[2] and seen[2] is not seen[3]
    assert calls.current is None


def test_an_exception_passes_through_and_clears_the_mark() -> None:
    calls = runner()

    async def callback() -> None:
        await asyncio.sleep(0)
        raise LookupError("dns down")

    async def main() -> None:
        await MarkedSteps(callback(), calls, "c1", "rcpt_to")

    with pytest.raises(LookupError, match="dns down"):
        asyncio.run(main())
    assert calls.current is None


def test_cancellation_reaches_the_coroutine() -> None:
    calls = runner()
    cleaned: list[str] = []

    async def callback() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally ran")

    async def main() -> None:
        task = asyncio.ensure_future(MarkedSteps(callback(), calls, "c1", "body"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == ["finally ran"]
    assert calls.current is None


def test_a_timeout_around_it_cancels_the_coroutine() -> None:
    calls = runner()

    async def callback() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        await asyncio.wait_for(MarkedSteps(callback(), calls, "c1", "data"), 0.01)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())


def test_closing_it_closes_the_coroutine() -> None:
    async def callback() -> None:
        await asyncio.sleep(0)

    coro = callback()
    steps = MarkedSteps(coro, runner(), "c1", "eoh").__await__()
    next(steps)  # the first step ran and suspended
    steps.close()
    assert coro.cr_frame is None  # closed, so no "never awaited" warning either
