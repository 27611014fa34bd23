"""Getting a worker's event loop back from an inline callback that does not return.

A sync callback running inline holds the worker's event loop: while it runs,
no other connection of the worker is served, and one that never returns (a
busy loop, a socket read without a timeout, a lock nobody releases) would stop
the worker for good. :class:`InlineCallGuard` is a thread that looks at which
inline call is running (``CallbackRunner.current``, a new tuple per call, so
its identity tells one call from the next). When the same call is still
running after the limit, it sends :data:`INTERRUPT_SIGNAL` to the main thread.
Python runs the handler there, between two bytecodes of whatever the main
thread executes, and the handler raises
:class:`~milterkit.runtime.execution.CallbackInterrupted` only if that same call is
still the current one: a signal that lands after the call returned (in the
loop, or in the next callback) does nothing. The session catches the
exception (``MilterSession._call``) and its
:class:`~milterkit.runtime.callbacks.CallbackPolicy` answers the error decision.

Blocking calls are interrupted too: the signal makes the system call fail
with EINTR, and Python runs the handler before it would retry (PEP 475), so
``time.sleep``, socket reads, lock and event waits and subprocess waits raise.
Code that holds the GIL in C (a long regular expression, a C extension's
loop) or a C library that retries EINTR itself cannot be interrupted; the
watchdog still reports it.

An ``async def`` callback is watched the same way, one step at a time
(:class:`~milterkit.runtime.execution.MarkedSteps` marks each stretch from one
``await`` to the next as the current call), so one that blocks without
awaiting is interrupted too.

Only a loop in the main thread can be guarded (Python runs signal handlers
there only): a daemon worker, or ``run()`` without fork. A :class:`Server`
run in another thread is not guarded.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from milterkit.runtime.execution import CallbackInterrupted

if TYPE_CHECKING:
    from milterkit.runtime.execution import CallbackRunner

__all__ = ["INTERRUPT_SIGNAL", "InlineCallGuard"]

_SIGRTMIN: int | None = getattr(signal, "SIGRTMIN", None)
#: A real-time signal, away from the daemon's own (SIGTERM, SIGINT, SIGHUP,
#: SIGCHLD, SIGUSR2) and from SIGUSR1 and SIGRTMIN, which user code tends to
#: take. None where the platform has no real-time signals: nothing is guarded.
INTERRUPT_SIGNAL: int | None = None if _SIGRTMIN is None else _SIGRTMIN + 6

#: Guards running in this process; the signal handler serves them all.
_guards: list[InlineCallGuard] = []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The signal handler: raise in the call a guard aimed at, if it still runs."""
    for guard in tuple(_guards):  # a guard's thread may remove itself meanwhile
        target = guard.target
        if target is not None and guard.runner.current is target:
            raise CallbackInterrupted(
                f"callback {target[1]} [{target[0]}] held the event loop over {guard.limit:g}s"
            )


class InlineCallGuard:
    """A thread that interrupts the inline call holding the loop longer than ``limit``.

    It looks every ``limit / 10`` (5 ms to 250 ms), so the interruption comes
    between ``limit`` and ``limit`` plus two looks after the call started. A
    call that swallows the interruption is interrupted again every ``limit``.
    The thread ends on :meth:`stop`, or by itself once the loop is closed (a
    server that was never stopped must not leave a thread behind, e.g. before
    a fork).
    """

    def __init__(
        self,
        runner: CallbackRunner,
        limit: float,
        logger: logging.Logger,
        signum: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.runner = runner
        self.limit = limit
        self.log = logger
        #: The call the last signal was meant for (read by the handler).
        self.target: tuple[str, str] | None = None
        self._signum = signum
        self._loop = loop
        self._main = threading.get_ident()
        self._tick = min(max(limit / 10, 0.005), 0.25)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="milterkit-interrupt", daemon=True)
        # what the thread saw last: the call, when it is due, whether it was interrupted
        self._seen: tuple[str, str] | None = None
        self._due = 0.0
        self._fired = False

    @classmethod
    def start(
        cls, runner: CallbackRunner, limit: float, logger: logging.Logger
    ) -> InlineCallGuard | None:
        """Install the handler and start the thread; None where that cannot be done.

        Must be called from the thread running the event loop.
        """
        signum = INTERRUPT_SIGNAL
        if signum is None or threading.current_thread() is not threading.main_thread():
            return None
        if not _install_handler(signum, logger):
            return None
        guard = cls(runner, limit, logger, signum, asyncio.get_running_loop())
        _guards.append(guard)
        guard._thread.start()
        return guard

    def stop(self) -> None:
        """Stop the thread; the last guard to stop puts the default handler back."""
        self._stop.set()
        self._thread.join(5)
        self._forget()
        if not _guards and not self._thread.is_alive():
            _restore_handler(self._signum)

    def _forget(self) -> None:
        if self in _guards:
            _guards.remove(self)

    def _run(self) -> None:
        while not self._stop.wait(self._tick) and not self._loop.is_closed():
            self._look(self.runner.current, time.monotonic())
        self._forget()

    def _look(self, current: tuple[str, str] | None, now: float) -> None:
        """Interrupt ``current`` if this same call was already running ``limit`` ago."""
        if current is not self._seen:
            self._seen, self._due, self._fired = current, now + self.limit, False
            return
        if current is None or now < self._due:
            return
        if self._fired:
            self.log.warning(
                "[%s] callback %s still holds the event loop after it was interrupted "
                "(does it catch BaseException?); interrupting it again",
                current[0],
                current[1],
            )
        self.target = current
        signal.pthread_kill(self._main, self._signum)
        self._due, self._fired = now + self.limit, True


def _install_handler(signum: int, logger: logging.Logger) -> bool:
    """Take the signal, unless something else in the process already uses it.

    ``getsignal`` gives None for a handler installed from C: taken as well.
    """
    current = signal.getsignal(signum)
    if current is _interrupt:
        return True
    if current is not signal.SIG_DFL:
        logger.warning(
            "signal %d already has a handler (%r): inline callbacks that hold the event "
            "loop will not be interrupted",
            signum,
            current,
        )
        return False
    signal.signal(signum, _interrupt)  # without SA_RESTART: blocking calls see EINTR
    return True


def _restore_handler(signum: int) -> None:
    """Back to the default, as found (the thread that could send the signal is gone)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, signal.SIG_DFL)
