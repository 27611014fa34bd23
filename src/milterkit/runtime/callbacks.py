"""What a session does with a callback call beyond running it inline: time and threads.

:class:`~milterkit.session.MilterSession` keeps the per-packet path: dispatch,
the inline call of a sync callback, replies and limits, with nothing on it
that a fast milter does not use. What involves time, the event loop or another
thread is daemon runtime and lives here, beside the pool and its routing
(:mod:`milterkit.runtime.execution`):

* a callback routed to the worker's pool: one hop through
  :meth:`~milterkit.runtime.execution.CallbackRunner.submit`; what it queues
  and its PROGRESS go through its :class:`~milterkit.runtime.execution.CallScope`
  and are applied on the loop, never from the thread;
* an awaitable decision (``async def``, or a ``def`` that returned a
  coroutine), awaited under ``callback_timeout``;
* the keepalive: PROGRESS every ``progress_interval`` while a slow
  ``end_of_message`` works (only there do both Postfix and Sendmail accept it);
* the outcome when a call runs out of time or is interrupted: one log line,
  the error decision, whatever the call queued dropped, the connection closed.

A :class:`CallbackPolicy` holds settings and the runner, no session: each
method takes the session it acts for, so the two form no reference cycle and a
session is freed as soon as its connection is. It is compiled with mypyc along
with the session (setup.py): async callbacks and pooled calls pass through it
on every command.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from milterkit.decision import Decision
from milterkit.protocol.constants import Command
from milterkit.runtime.execution import (
    CallbackInterrupted,
    CallbackRunner,
    CallScope,
    ExecutionSettings,
    MarkedSteps,
    within,
)

if TYPE_CHECKING:
    from milterkit.session import MilterSession

__all__ = ["CallbackPolicy"]

# Performance: read per keepalive tick (an enum member lookup costs about 80 ns).
_BODYEOB = Command.BODYEOB

#: What :meth:`CallbackPolicy._in_time` returns when callback_timeout ran out.
_TIMED_OUT: Any = object()


class CallbackPolicy:
    """How the callbacks of a session are timed, handed off and given up on.

    Made from the daemon's :class:`ExecutionSettings` and the worker's
    :class:`CallbackRunner` (None: no pool, every callback runs inline).
    """

    def __init__(self, settings: ExecutionSettings, runner: CallbackRunner | None) -> None:
        self.runner = runner
        self.timeout = settings.callback_timeout
        self.progress_interval = settings.progress_interval
        # ExecutionSettings has checked it is one of ERROR_DECISIONS
        self.error_name = Decision(settings.error_decision).value
        #: Inline sync calls that ran this long are looked at (auto switch, timeout).
        self.watch_after = min(
            settings.slow_callback if runner is not None else math.inf,
            settings.callback_timeout or math.inf,
        )

    # ------------------------------------------------- inline calls that took long

    def ran_long(self, session: MilterSession, name: str, elapsed: float, mark: int) -> bool:
        """An inline sync call took long: maybe over its timeout (True: answered)."""
        timeout = self.timeout
        if timeout is not None and elapsed > timeout:
            self.timed_out(session, name, elapsed, mark)
            return True
        if self.runner is not None:
            self.runner.note_inline_duration(
                type(session.milter), name, elapsed, session.connection_id
            )
        return False

    def timed_out(self, session: MilterSession, name: str, elapsed: float, mark: int) -> None:
        """Past callback_timeout: error decision now, drop what the call queued, then close."""
        del session.pending[mark:]
        session.observe_error("timeout")
        session.log.error(
            "callback %s ran %.0f ms, over callback_timeout %gs; answering %s, discarding its "
            "result and actions, and closing the connection",
            name,
            elapsed * 1000,
            self.timeout,
            self.error_name,
        )
        session.answer_error_and_close()

    def interrupted(self, session: MilterSession, name: str, elapsed: float, mark: int) -> None:
        """The worker took its loop back from this inline call: as a timeout, then close."""
        if self.runner is not None:
            self.runner.note_interrupted(type(session.milter), name, elapsed, session.connection_id)
        else:
            session.log.error("callback %s was interrupted; answering %s", name, self.error_name)
        del session.pending[mark:]
        session.observe_error("timeout")
        session.answer_error_and_close()

    # --------------------------------------------------------- awaited decisions

    async def await_decision(
        self, session: MilterSession, name: str, awaitable: Awaitable[Any], mark: int
    ) -> None:
        """Await what a callback returned, under the timeout, and reply with it."""
        keepalive = self._start_keepalive(session)
        started = time.perf_counter()
        marked = self._marked(session, name, awaitable)
        try:
            result = await self._in_time(awaitable if marked is None else marked)
        except CallbackInterrupted:
            assert marked is not None  # only a marked step can be interrupted
            self.interrupted(session, name, time.perf_counter() - marked.step_started, mark)
            return
        except Exception as exc:
            session.callback_raised(name, exc)
            return
        finally:
            if keepalive is not None:
                keepalive.cancel()
        if result is _TIMED_OUT:
            self.timed_out(session, name, time.perf_counter() - started, mark)
            return
        session.reply_decision(name, result)

    async def run_pooled(
        self, session: MilterSession, name: str, function: Callable[..., Any], args: Any
    ) -> None:
        """One hop to the worker's pool; the decision and actions come back together."""
        runner = self.runner
        assert runner is not None
        loop = asyncio.get_running_loop()
        scope = CallScope(lambda s: loop.call_soon_threadsafe(_progress_for, session, s))
        keepalive = self._start_keepalive(session)
        started = time.perf_counter()
        try:
            result = await self._in_time(runner.submit(scope, function, args))
        except Exception as exc:
            session.callback_raised(name, exc)
            return
        finally:
            scope.live = False  # late actions and progress of an abandoned call are dropped
            if keepalive is not None:
                keepalive.cancel()
        if result is _TIMED_OUT:
            self.timed_out(session, name, time.perf_counter() - started, len(session.pending))
            return
        session.pending.extend(scope.actions)
        if inspect.isawaitable(result):  # a def that returned a coroutine
            await self.await_decision(session, name, result, len(session.pending))
            return
        session.reply_decision(name, result)

    # ------------------------------------------------- abort and close (no reply)

    async def await_notify(
        self, session: MilterSession, name: str, awaitable: Awaitable[Any]
    ) -> None:
        """Await what abort/close returned, under the timeout; a failure is only logged."""
        marked = self._marked(session, name, awaitable)
        try:
            await self._with_timeout(awaitable if marked is None else marked)
        except CallbackInterrupted:
            assert marked is not None  # only a marked step can be interrupted
            elapsed = time.perf_counter() - marked.step_started
            self.interrupted(session, name, elapsed, len(session.pending))
        except Exception as exc:
            session.callback_errors.append(exc)
            session.log.exception("callback %s failed", name)

    async def run_notify_pooled(
        self, session: MilterSession, name: str, function: Callable[[], Any]
    ) -> None:
        """abort/close in the pool, under the timeout; a failure is only logged."""
        runner = self.runner
        assert runner is not None
        scope = CallScope(_no_progress)
        try:
            await self._with_timeout(runner.submit(scope, function, ()))
        except Exception as exc:
            session.callback_errors.append(exc)
            session.log.exception("callback %s failed", name)
        finally:
            scope.live = False

    def _marked(
        self, session: MilterSession, name: str, awaitable: Awaitable[Any]
    ) -> MarkedSteps | None:
        """A coroutine on a worker's loop: each step marked, so one that blocks is seen."""
        if self.runner is None or not inspect.iscoroutine(awaitable):
            return None
        return MarkedSteps(awaitable, self.runner, session.connection_id, name)

    # ---------------------------------------------------------- timeout, keepalive

    async def _with_timeout(self, awaitable: Awaitable[Any]) -> Any:
        """abort/close under callback_timeout: any failure, the timeout too, is only logged.

        The same rules as a decision's (:meth:`_in_time`): an interrupted step
        is an interruption even when the deadline fired after it.
        """
        result = await self._in_time(awaitable)
        if result is _TIMED_OUT:
            raise asyncio.TimeoutError(f"over callback_timeout {self.timeout:g}s")
        return result

    async def _in_time(self, awaitable: Awaitable[Any]) -> Any:
        """What the call gives, or ``_TIMED_OUT`` once callback_timeout ran out (it is cancelled).

        A TimeoutError that the callback raised itself (its own lookup or socket
        timing out: ``socket.timeout`` is TimeoutError, and so is
        ``asyncio.TimeoutError`` from Python 3.11) is its exception, answered
        like any other; only the cancelled call is over callback_timeout. A step
        interrupted at the deadline (the guard's limit is the timeout) is an
        interruption, whichever of the two the loop saw first.
        """
        timeout = self.timeout
        if timeout is None:
            return await awaitable
        # a pooled call is a plain Future (not a Task): one timer instead of wait_for
        pooled = type(awaitable) is asyncio.Future
        future = cast("asyncio.Future[Any]", awaitable)
        call = future if pooled else asyncio.ensure_future(awaitable)
        try:
            if pooled:
                return await within(call, timeout)
            return await asyncio.wait_for(call, timeout)
        except asyncio.TimeoutError as exc:
            if call.done() and not call.cancelled():
                raised = call.exception()
                # its own TimeoutError; or the guard interrupted a step that held
                # the loop past the deadline, and the timeout only fired after it
                if raised is exc or isinstance(raised, CallbackInterrupted):
                    raise cast(BaseException, raised) from None
            return _TIMED_OUT

    def _start_keepalive(self, session: MilterSession) -> asyncio.Task[None] | None:
        """PROGRESS while a slow callback runs; only at EOM, where both MTAs accept it."""
        interval = self.progress_interval
        if not interval or session.conn.awaiting != _BODYEOB:
            return None
        return asyncio.get_running_loop().create_task(_keepalive(session, interval))


async def _keepalive(session: MilterSession, interval: float) -> None:
    """PROGRESS every ``interval`` until end of message is answered (then cancelled)."""
    while True:
        await asyncio.sleep(interval)
        if session.conn.awaiting != _BODYEOB:
            return
        session.context.progress()


def _progress_for(session: MilterSession, scope: CallScope) -> None:
    """On the loop: a pooled call asked for PROGRESS; only while it is still answered."""
    if scope.live and not session.closed and session.conn.awaiting is not None:
        session.context.progress()


def _no_progress(scope: CallScope) -> None:
    """abort/close answer nothing, so there is no reply for PROGRESS to precede."""
