"""How a worker runs milter callbacks: inline on its event loop, or in a thread pool.

Most milters are plain ``def`` callbacks, and many of them block (DNS, HTTP, a
database). Inline on the event loop such a callback stalls every other
connection of the worker; handing *every* callback to a thread costs a fast
milter 10-20 % of its throughput with several connections busy, more for a
lone one (two thread wake-ups per call; docs/benchmarks.md). So the
default, ``auto``, runs sync callbacks inline while they are fast and moves a
callback to a bounded per-worker pool for the rest of the worker's life the
first time it is seen to run longer than ``slow_callback`` seconds. A callback
declared blocking (:func:`milterkit.blocking`, or ``Milter.blocking_callbacks``)
goes to the pool from its first call; ``async def`` callbacks never do.

One hop per callback: the pooled call returns its decision and the actions it
queued (collected in a :class:`CallScope`, never touching the session from
the thread); the session applies them on the loop. A call that outlived its
timeout has its scope closed, so what it queues or returns later is dropped.

The :class:`LoopWatchdog` thread (started in the worker, after the fork)
reports anything that holds the event loop longer than ``loop_block_warning``.
An inline call that holds the loop past :attr:`ExecutionSettings.interrupt_after`
is interrupted (:class:`CallbackInterrupted`, raised in it by
:mod:`milterkit.runtime.interrupt`), so it costs its connection, not the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from milterkit.decision import ERROR_DECISIONS, Decision
from milterkit.protocol import messages as msg

if TYPE_CHECKING:
    from milterkit.runtime.interrupt import InlineCallGuard

__all__ = [
    "EXECUTION_MODES",
    "CallScope",
    "CallbackInterrupted",
    "CallbackRunner",
    "ExecutionSettings",
    "LoopWatchdog",
    "current_scope",
    "within",
]

#: ``auto``: inline until seen slow; ``inline``: never a thread; ``threads``: every sync callback.
EXECUTION_MODES = ("auto", "inline", "threads")

_local = threading.local()


class CallbackInterrupted(BaseException):
    """Raised inside an inline callback that held the worker's event loop too long.

    A BaseException, like KeyboardInterrupt: milter code often catches
    ``Exception`` around a lookup and carries on, which would swallow the
    interruption and keep the loop held. ``finally`` blocks and ``with``
    statements still run as it unwinds.
    """


class MarkedSteps:
    """Await a coroutine with each of its steps marked as the runner's current call.

    An ``async def`` callback that blocks without awaiting (``time.sleep``, a
    blocking socket read, a busy loop) holds the loop just as a sync one does.
    Marking each step (from one ``await`` to the next) as ``runner.current``
    lets the :class:`~milterkit.runtime.interrupt.InlineCallGuard` interrupt a
    step that holds the loop too long, and the loop watchdog name it. A new key
    per step: the guard measures how long one step holds the loop, not the
    awaits between steps (``callback_timeout`` bounds those). What the
    awaiting task sends or throws reaches the coroutine unchanged.
    """

    __slots__ = ("_cid", "_coro", "_name", "_runner", "step_started")

    def __init__(
        self, coro: Coroutine[Any, Any, Any], runner: CallbackRunner, cid: str, name: str
    ) -> None:
        self._coro = coro
        self._runner = runner
        self._cid = cid
        self._name = name
        #: time.perf_counter() when the latest step began.
        self.step_started = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, runner = self._coro, self._runner
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            self.step_started = time.perf_counter()
            runner.current = (self._cid, self._name)
            try:
                yielded = coro.send(sent) if thrown is None else coro.throw(thrown)
            except StopIteration as stop:
                return stop.value
            finally:
                runner.current = None
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError above all: the coroutine decides
                sent, thrown = None, exc


@dataclass(frozen=True)
class ExecutionSettings:
    """The callback-execution part of the daemon settings, carried to every session.

    ``mode`` None means: the milter class's ``execution`` attribute (``auto`` by
    default). ``threads`` bounds the per-worker pool; calls past the bound wait
    for a free thread (their connections stay open). ``slow_callback`` is the
    ``auto`` threshold; ``loop_block_warning`` (0 turns it off) is when the
    watchdog reports a blocked loop. ``stuck_callback`` (0 turns it off) is
    when a sync callback still running inline is interrupted, unless
    ``callback_timeout`` is shorter (see :attr:`interrupt_after`).
    """

    mode: str | None = None
    threads: int = 64
    slow_callback: float = 0.020
    loop_block_warning: float = 0.100
    stuck_callback: float = 5.0
    callback_timeout: float | None = None
    progress_interval: float | None = None
    #: A :class:`~milterkit.decision.Decision` of ERROR_DECISIONS, or its name
    #: (``"tempfail"``); always a Decision once built.
    error_decision: Decision | str = Decision.TEMPFAIL

    def __post_init__(self) -> None:
        # frozen: the normalised value is set the way dataclasses set fields
        object.__setattr__(
            self, "error_decision", Decision.parse(self.error_decision, ERROR_DECISIONS)
        )
        if self.mode is not None and self.mode not in EXECUTION_MODES:
            raise ValueError(f"execution mode must be one of {EXECUTION_MODES}, not {self.mode!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")
        if self.slow_callback <= 0:
            raise ValueError(f"slow_callback must be positive, not {self.slow_callback}")
        if self.loop_block_warning < 0:
            raise ValueError(f"loop_block_warning must be >= 0, not {self.loop_block_warning}")
        if self.stuck_callback < 0:
            raise ValueError(f"stuck_callback must be >= 0, not {self.stuck_callback}")
        if self.callback_timeout is not None and self.callback_timeout <= 0:
            raise ValueError(f"callback_timeout must be positive, not {self.callback_timeout}")
        if self.progress_interval is not None and self.progress_interval <= 0:
            raise ValueError(f"progress_interval must be positive, not {self.progress_interval}")

    @property
    def interrupt_after(self) -> float | None:
        """Seconds after which an inline sync call is interrupted; None: never.

        The shorter of ``callback_timeout`` (so it acts on time inline too) and
        ``stuck_callback`` (so a long timeout meant for pooled or async calls
        does not let one inline call hold every connection of the worker).
        """
        limits = [limit for limit in (self.callback_timeout, self.stuck_callback) if limit]
        return min(limits) if limits else None


@dataclass(eq=False)
class CallScope:
    """One callback call in the pool: what it queued, and whether anyone still listens.

    ``progress`` is how a pooled call reaches the MTA at once: it is handed to
    the loop thread, which sends PROGRESS only while the scope is live.
    """

    progress: Callable[[CallScope], object]
    actions: list[msg.Message] = field(default_factory=list)
    live: bool = True


def current_scope() -> CallScope | None:
    """The scope of the pooled call running on this thread, None on the loop thread."""
    scope: CallScope | None = getattr(_local, "scope", None)
    return scope


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def _declared_blocking(cls: type, name: str) -> bool:
    function = getattr(cls, name, None)
    if getattr(function, "__milterkit_blocking__", False):
        return True
    return name in getattr(cls, "blocking_callbacks", ())


class CallbackRunner:
    """One per worker: the thread pool, and where each callback of each class runs.

    ``routes(cls)`` is a dict shared by every session of that class: callback
    name → True when it runs in the pool. ``auto`` flips an entry the first
    time the callback is seen slow, for every connection at once.
    """

    def __init__(self, settings: ExecutionSettings, logger: logging.Logger) -> None:
        self.settings = settings
        self.log = logger
        self._pool: _Pool | None = None
        self._routes: dict[type, dict[str, bool]] = {}
        self._modes: dict[type, str] = {}
        #: (connection id, callback name) of the sync callback running inline now;
        #: a new tuple per call, so its identity also tells one call from the next.
        self.current: tuple[str, str] | None = None
        #: Interrupts an inline call that holds the loop too long (None: not running).
        self.guard: InlineCallGuard | None = None

    def mode(self, cls: type) -> str:
        mode = self._modes.get(cls)
        if mode is None:
            mode = self.settings.mode or getattr(cls, "execution", None) or "auto"
            if mode not in EXECUTION_MODES:
                raise ValueError(
                    f"{cls.__name__}.execution must be one of {EXECUTION_MODES}, not {mode!r}"
                )
            self._modes[cls] = mode
        return mode

    def routes(
        self, cls: type, names: list[str], overridden: Callable[[str], bool]
    ) -> dict[str, bool]:
        """The shared name → in-pool table for ``cls`` (built once per class).

        A callback the class does not override never takes the hop. With a
        keepalive configured, a sync ``end_of_message`` always runs in the pool
        (except in ``inline`` mode): the loop must be free to send PROGRESS.
        """
        table = self._routes.get(cls)
        if table is None:
            mode = self.mode(cls)
            table = {name: self._pooled(cls, name, mode) and overridden(name) for name in names}
            self._routes[cls] = table
        return table

    def _pooled(self, cls: type, name: str, mode: str) -> bool:
        if mode == "inline" or _is_async(getattr(cls, name)):
            return False
        if mode == "threads" or _declared_blocking(cls, name):
            return True
        return name == "end_of_message" and self.settings.progress_interval is not None

    def note_inline_duration(self, cls: type, name: str, seconds: float, cid: str) -> None:
        """``auto``: a sync callback ran longer than the threshold; send it to the pool."""
        if seconds < self.settings.slow_callback or self.mode(cls) != "auto":
            return
        table = self._routes.get(cls)
        if table is None or table.get(name, True):
            return
        table[name] = True
        self.log.warning(
            "[%s] callback %s.%s ran %.0f ms on the event loop (over %.0f ms): it runs in "
            "the thread pool from now on; declare it blocking to skip this first slow call",
            cid,
            cls.__name__,
            name,
            seconds * 1000,
            self.settings.slow_callback * 1000,
        )

    def note_interrupted(self, cls: type, name: str, seconds: float, cid: str) -> None:
        """An inline call was interrupted (it held the loop too long): log it; ``auto``: pool it."""
        table = self._routes.get(cls)
        pooled = self.mode(cls) == "auto" and table is not None and not table.get(name, True)
        pooled = pooled and not _is_async(getattr(cls, name, None))  # the loop runs those
        if pooled:
            assert table is not None
            table[name] = True
        self.log.error(
            "[%s] callback %s.%s ran %.0f ms on the event loop, over %s: interrupted it; %s%s",
            cid,
            cls.__name__,
            name,
            seconds * 1000,
            self._interrupt_limit(),
            self._interrupt_outcome(name),
            "; it runs in the thread pool from now on" if pooled else "",
        )

    def _interrupt_limit(self) -> str:
        settings = self.settings
        limit = settings.interrupt_after
        if limit is not None and limit == settings.callback_timeout:
            return f"callback_timeout {limit:g}s"
        return f"the stuck-callback limit {settings.stuck_callback * 1000:.0f} ms"

    def _interrupt_outcome(self, name: str) -> str:
        if name in ("abort", "close"):  # they answer nothing
            return "closing the connection"
        decision = Decision(self.settings.error_decision).value
        return (
            f"answering {decision}, discarding its result and actions, and closing the connection"
        )

    def guard_inline_calls(self) -> None:
        """Start interrupting inline calls that hold the loop (from the loop, once).

        Only where the loop runs in the main thread (a worker, or ``run()``
        without fork): the interruption is a signal, and Python runs signal
        handlers in the main thread only.
        """
        limit = self.settings.interrupt_after
        if limit is None or self.guard is not None:
            return
        from milterkit.runtime.interrupt import InlineCallGuard

        self.guard = InlineCallGuard.start(self, limit, self.log)

    def submit(
        self, scope: CallScope, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        """Run ``function(*args)`` in the pool, its actions going to ``scope``.

        The pool is made on the first call, for the running loop; cancelling
        the returned future (a timeout) drops the call if it has not started,
        and its result if it has.
        """
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            if pool is not None:
                pool.shutdown()
            pool = self._pool = _Pool(loop, self.settings.threads)
        return pool.submit(scope, function, args)

    def shutdown(self) -> None:
        """Stop taking work; threads still running a callback are left to finish."""
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


#: How often the pool checks, while calls wait for a thread, whether its threads
#: are held in calls (and so it should grow). The interpreter's switch interval:
#: a quick call that only waits for the GIL gets it within about that time.
_GROW_AFTER = 0.005

#: A pooled call on its way: the loop's future, the scope, the function, its arguments.
_Work = tuple["asyncio.Future[Any]", CallScope, Callable[..., Any], tuple[Any, ...]]
#: A finished call on its way back: the future, the result, the exception (None: returned).
_Done = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


class _Pool:
    """At most ``bound`` daemon threads running callbacks for one event loop.

    Why not ``loop.run_in_executor``: each hop there builds a
    ``concurrent.futures.Future`` chained to an asyncio one, takes two
    condition-variable semaphores and writes the loop's self-pipe once per
    result. Here a call is one tuple on a ``SimpleQueue`` (C code); a thread
    puts the result on a deque and wakes the loop only when no wake-up is
    pending already, so a burst of results costs one wake-up, and the loop
    sets every finished future in one pass.

    Threads start lazily, so the pool is as large as the *blocking*
    concurrency it met, not the connection count (each thread costs about 20
    KiB of RSS: stack pages, frame stack, thread state): the first thread at
    the first call; then, while calls wait with no thread free, a check every
    :data:`_GROW_AFTER` starts one thread per thread found held in one call
    for over half that time (up to the calls waiting and ``bound``), so a
    pool of blocked threads doubles each check, and a burst of quick calls
    that only wait for the GIL does not grow it. Past ``bound``, calls wait
    in the queue, never dropped. Daemon threads: a callback still running
    when the process exits does not hold the exit.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bound: int) -> None:
        self.loop = loop
        self.bound = bound
        self.threads: list[threading.Thread] = []
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._done: collections.deque[_Done] = collections.deque()
        self._wake_pending = False
        self._idle = 0  # threads not running a call (waiting for one, or starting)
        self._lock = threading.Lock()  # guards _idle, from the loop and the threads
        #: per thread: time.monotonic() when its current call started, 0.0 when idle
        self._call_started: list[float] = []
        self._grow_timer: asyncio.TimerHandle | None = None
        self._open = True

    def submit(
        self, scope: CallScope, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        if not self._open:
            raise RuntimeError("the callback pool is shut down")
        future = self.loop.create_future()
        self._work.put((future, scope, function, args))
        # >=, not >: a thread that has just taken a call still counts as idle
        # until it marks itself busy; the check then tells whether it blocks.
        if self._work.qsize() >= self._idle and len(self.threads) < self.bound:
            self._need_thread()
        return future

    def _need_thread(self) -> None:
        """More calls than free threads: the first thread now, later ones if still short."""
        if not self.threads:
            self._start_thread()
        elif self._grow_timer is None:
            self._grow_timer = self.loop.call_later(_GROW_AFTER, self._grow)

    def _grow(self) -> None:
        """Calls still wait: a thread per thread held in a call, check again if still short."""
        self._grow_timer = None
        if not self._open:
            return
        held_since = time.monotonic() - _GROW_AFTER / 2
        held = sum(1 for started in self._call_started if 0.0 < started < held_since)
        waiting = self._work.qsize() - self._idle
        for _ in range(min(held, waiting, self.bound - len(self.threads))):
            self._start_thread()
        if self._work.qsize() > self._idle and len(self.threads) < self.bound:
            self._grow_timer = self.loop.call_later(_GROW_AFTER, self._grow)

    def _start_thread(self) -> None:
        with self._lock:
            self._idle += 1
        index = len(self.threads)
        self._call_started.append(0.0)
        thread = threading.Thread(
            target=self._serve, args=(index,), name=f"milterkit-cb_{index}", daemon=True
        )
        thread.start()
        self.threads.append(thread)

    def _serve(self, index: int) -> None:
        """A pool thread: run calls until the sentinel None."""
        work, lock, call_started = self._work, self._lock, self._call_started
        while True:
            item = work.get()
            with lock:
                self._idle -= 1
            if item is None:
                return
            future, scope, function, args = item
            del item
            if not future.done():  # cancelled before it started: nobody waits for it
                call_started[index] = time.monotonic()
                outcome = _run_in_scope(scope, function, args)
                call_started[index] = 0.0
                self._finish(future, *outcome)
                del outcome
            del future, scope, function, args  # no result or frame outlives its call
            with lock:
                self._idle += 1

    def _finish(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        """From a pool thread: queue the result; wake the loop unless a wake-up is pending."""
        self._done.append((future, result, error))
        if self._wake_pending:  # _deliver has not started yet: it will see this result
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the loop: hand every finished call to its future; a cancelled one's is dropped.

        The flag is lowered before the deque is read, so a result a thread
        appends meanwhile is either read here or triggers a new wake-up.
        """
        self._wake_pending = False
        done = self._done
        while done:
            future, result, error = done.popleft()
            if future.done():  # timed out or shut down: the late result is discarded
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
            del future, result, error

    def shutdown(self) -> None:
        """Refuse new calls, cancel those not started, let running threads finish and end."""
        self._open = False
        if self._grow_timer is not None:
            self._grow_timer.cancel()
            self._grow_timer = None
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _cancel(item[0])
        for _ in self.threads:
            self._work.put(None)


async def within(future: asyncio.Future[Any], timeout: float) -> Any:
    """Await a pooled call (what :meth:`CallbackRunner.submit` returned) for ``timeout`` s.

    ``asyncio.wait_for`` for this one case (cancel the call and raise
    ``asyncio.TimeoutError`` at the deadline; a cancellation from outside
    stays a cancellation) with one loop timer, not wait_for's extra future
    and callbacks: a few microseconds less per pooled callback when a
    callback_timeout is set (benchmarks/handoff_micro.py).
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = future.cancel()  # False: it finished in time, just not yet awaited

    timer = future.get_loop().call_later(timeout, expire)
    try:
        return await future
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


def _run_in_scope(
    scope: CallScope, function: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, what it raised): exceptions go back to the awaiting coroutine."""
    _local.scope = scope
    try:
        return function(*args), None
    except BaseException as exc:  # as concurrent.futures does: the awaiter decides
        return None, exc
    finally:
        _local.scope = None


def _cancel(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits for it
        future.cancel()


class LoopWatchdog:
    """A thread that notices when something holds the event loop too long.

    Every ``threshold / 2`` it asks the loop to run a no-op; when that has not
    run after ``threshold``, the loop is blocked. One warning when the block
    ends (with its length and the callback running inline, if one was), and
    one every ``_STILL_BLOCKED`` seconds while it lasts, so a callback that
    never returns is visible.
    """

    _STILL_BLOCKED = 5.0

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        logger: logging.Logger,
        describe: Callable[[], str | None],
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.log = logger
        self.describe = describe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="milterkit-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.threshold / 2):
            beat = threading.Event()
            started = time.monotonic()
            try:
                self.loop.call_soon_threadsafe(beat.set)
            except RuntimeError:  # the loop is closed
                return
            if not beat.wait(self.threshold):
                self._report_block(beat, started)

    def _report_block(self, beat: threading.Event, started: float) -> None:
        where = self.describe()
        while not beat.wait(self._STILL_BLOCKED):
            if self._stop.is_set():
                return
            self.log.warning(
                "event loop still blocked after %.0f ms%s; this worker serves no other "
                "connection meanwhile",
                (time.monotonic() - started) * 1000,
                _in(where),
            )
        self.log.warning(
            "event loop blocked for %.0f ms%s (other connections of this worker waited)",
            (time.monotonic() - started) * 1000,
            _in(where),
        )


def _in(where: str | None) -> str:
    return f" in {where}" if where else ""
