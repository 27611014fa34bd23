"""A small prefork process supervisor.

The supervisor forks ``workers`` children that each run ``worker_main(index)``
(typically an event loop accepting on a listening socket opened before the
fork), replaces children that die, and coordinates shutdown:

* SIGTERM / SIGINT: forward SIGTERM to every worker, wait up to
  ``drain_timeout`` seconds for them to finish their sessions, then SIGKILL
  the rest.
* SIGTERM/SIGINT also run the ``on_stop`` hook first (sd_notify STOPPING=1).
* SIGHUP: run the ``on_reopen`` hook in the supervisor (e.g. reopen log files)
  and forward SIGHUP to the workers.
* ``shutdown_delay``: after SIGTERM, the workers go on serving that long
  before they are told to drain (``stopping`` is already True, so a health
  endpoint can report 503 and a load balancer move away first). The
  ``on_drain`` hook runs when they are told (the daemon closes its copy of
  the listening socket there, so the last worker to drain closes it).
* SIGUSR2: reload. Each worker in turn is replaced: a new one is started
  (``generation`` is higher in it, so it can import the milter code afresh),
  and once it has run ``reload_settle`` seconds the old one gets SIGTERM and
  drains. The listening socket stays open throughout.
* SIGCHLD: reap and, unless shutting down, restart.
* ``after_fork(index)`` runs first in each new child, before its signals are
  reset: the place to close what a worker must not hold (the root-owned PID
  and log files). The supervisor's epoll descriptor is closed there too (an
  epoll instance is shared across fork, so a worker could edit ours).
* ``readers`` maps descriptors to callbacks run from the same loop when the
  descriptor is readable (the workers' log records), so the supervisor stays
  single-threaded.

The loop sleeps in a selector on a pipe registered with
:func:`signal.set_wakeup_fd`, so it wakes exactly when a signal arrives or a
timer (restart back-off, drain deadline) expires -- no polling.  Python signal
handlers only queue the signal number; all work happens in the loop.

A worker crashing right after start (within ``restart_window`` seconds) more
than ``max_fast_restarts`` times in a row is restarted with exponential
back-off, so a broken configuration cannot turn into a fork bomb.  Exit codes
in ``fatal_exit_codes`` (default: 78, ``EX_CONFIG``) mean "restarting will not
help": the supervisor then shuts everything down and returns that code.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["EX_CONFIG", "Supervisor", "describe_wait_status"]

EX_CONFIG = 78
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2)
_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


@dataclass
class _Slot:
    """Book-keeping for one worker index."""

    index: int
    pid: int | None = None
    started: float = 0.0
    fast_failures: int = 0
    restart_at: float = 0.0


def describe_wait_status(status: int) -> str:
    """Human-readable reason for a wait() status, e.g. "killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {name}{core}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"changed state (wait status {status:#x})"


def _exit_code(value: object) -> int:
    """Map a worker_main result or SystemExit.code to a process exit code."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFF
    return 1


class Supervisor:
    """Run ``worker_main`` in ``workers`` forked processes (or inline)."""

    def __init__(
        self,
        worker_main: Callable[[int], int],
        workers: int | None = None,
        *,
        fork: bool = True,
        drain_timeout: float = 10.0,
        kill_grace: float = 0.0,
        restart_window: float = 1.0,
        max_fast_restarts: int = 3,
        max_backoff: float = 30.0,
        fatal_exit_codes: Iterable[int] = (EX_CONFIG,),
        on_reopen: Callable[[], None] | None = None,
        on_stop: Callable[[], object] | None = None,
        logger: logging.Logger | None = None,
        after_fork: Callable[[int], None] | None = None,
        readers: Mapping[int, Callable[[], object]] | None = None,
        shutdown_delay: float = 0.0,
        on_drain: Callable[[], object] | None = None,
        reload_settle: float = 1.0,
    ) -> None:
        count = (os.cpu_count() or 1) if workers is None else workers
        if count < 0:
            raise RuntimeConfigError(f"invalid number of workers {count}: negative")
        if not fork and count > 1:
            raise RuntimeConfigError(f"cannot run {count} workers without forking")
        self._worker_main = worker_main
        self._inline = count == 0 or not fork
        self._slots = [_Slot(index) for index in range(max(count, 1))]
        self._drain_timeout = drain_timeout
        self._kill_grace = kill_grace  # SIGKILL only this long after drain_timeout
        self._restart_window = restart_window
        self._max_fast_restarts = max_fast_restarts
        self._max_backoff = max_backoff
        self._fatal_exit_codes = frozenset(fatal_exit_codes)
        self._on_reopen = on_reopen
        self._on_stop = on_stop
        # after_fork(index) runs first in each child (close what workers must not hold);
        # readers: fd -> callback, run in the loop when fd is readable (workers' logs).
        self._after_fork = after_fork
        self._readers: dict[int, Callable[[], object]] = dict(readers or {})
        self._log = logger or logging.getLogger("milterkit.runtime.supervisor")
        self._pending: list[int] = []
        self._stopping = False
        self._deadline = 0.0
        self._killed = False
        self._status = 0
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._shutdown_delay = shutdown_delay
        self._on_drain = on_drain
        self._drain_at: float | None = None  # when the workers get SIGTERM (stopping)
        self._reload_settle = reload_settle
        self._reload_queue: list[_Slot] = []
        self._retire: tuple[int, float] | None = None  # (old pid, when to SIGTERM it)
        self._retiring: set[int] = set()  # old workers draining after a reload
        #: Incremented by each reload; a worker forked after it sees the new value.
        self.generation = 0
        #: True from SIGTERM on (during ``shutdown_delay`` the workers still serve).
        self.stopping = False
        #: Worker processes started to replace one that died (not by a reload).
        self.restarts = 0
        self._selector: selectors.BaseSelector | None = None
        self._warned_threads = False

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` from the loop when ``fd`` is readable (e.g. a metrics socket).

        The callback runs in the supervisor between signals; it must not block.
        """
        self._readers[fd] = callback
        if self._selector is not None:
            self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it)."""
        if self._readers.pop(fd, None) is not None and self._selector is not None:
            self._selector.unregister(fd)

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the currently running workers."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def run(self) -> int:
        """Supervise until stopped; return the exit status for the process.

        Must be called from the main thread (it installs signal handlers,
        which are restored on return).
        """
        if self._inline:
            return self._run_inline()
        saved = self._install_signals()
        try:
            self._loop()
        except BaseException:
            # A bug in the loop must not leave orphaned workers behind.
            self._signal_workers(signal.SIGTERM)
            raise
        finally:
            self._restore_signals(saved)
        return self._status

    def _run_inline(self) -> int:
        """Debug/test mode: run the single worker in this process."""
        self._log.info("running worker 0 inline (no fork) in pid %d", os.getpid())
        try:
            return _exit_code(self._worker_main(0))
        except SystemExit as exc:
            return _exit_code(exc.code)

    # -- signal plumbing -------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Python-level handler: only record; the wakeup fd wakes the loop."""
        self._pending.append(signum)

    def _install_signals(self) -> tuple[int, dict[int, _SignalHandler]]:
        """Create the wakeup pipe and install handlers; return what to restore."""
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        old_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        old: dict[int, _SignalHandler] = {
            int(sig): signal.signal(sig, self._on_signal) for sig in _HANDLED_SIGNALS
        }
        return old_fd, old

    def _restore_signals(self, saved: tuple[int, dict[int, _SignalHandler]]) -> None:
        """Undo :meth:`_install_signals` (matters for inline callers and tests)."""
        old_fd, old_handlers = saved
        for sig, handler in old_handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(old_fd)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _drain_wakeup(self) -> None:
        """Empty the wakeup pipe (its content is irrelevant)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    # -- main loop -------------------------------------------------------

    def _loop(self) -> None:
        """Start workers, then react to signals, deaths and timers."""
        self._log.info("supervisor %d starting %d workers", os.getpid(), len(self._slots))
        with selectors.DefaultSelector() as selector:
            self._selector = selector
            selector.register(self._wakeup_r, selectors.EVENT_READ)
            for fd, callback in self._readers.items():
                selector.register(fd, selectors.EVENT_READ, callback)
            self._selector = selector
            try:
                while True:
                    self._handle_signals()
                    self._reap()
                    self._tick()
                    if self._stopping and not self._live_pids():
                        break
                    self._dispatch(selector.select(self._timeout()))
            finally:
                self._selector = None
        self._call_readers()  # what the last workers wrote before exiting
        self._log.info("supervisor %d stopped", os.getpid())

    def _dispatch(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Empty the wakeup pipe; run the callbacks of other readable fds."""
        for key, _ in ready:
            if key.fd == self._wakeup_r:
                self._drain_wakeup()
            elif key.fd in self._readers:
                try:
                    key.data()
                except Exception:
                    self._log.exception("reader callback for fd %d failed", key.fd)

    def _call_readers(self) -> None:
        """Run every reader callback once; one that fails is logged, not fatal."""
        for fd, callback in list(self._readers.items()):
            try:
                callback()
            except Exception:
                self._log.exception("reading file descriptor %d failed", fd)

    def _timeout(self) -> float | None:
        """Seconds until the next timer, or None to sleep until a signal."""
        now = time.monotonic()
        if self._stopping:
            if self._drain_at is not None:
                return max(0.0, self._drain_at - now)
            return None if self._killed else max(0.0, self._deadline - now)
        due = [slot.restart_at for slot in self._slots if slot.pid is None]
        if self._retire is not None:
            due.append(self._retire[1])
        return max(0.0, min(due) - now) if due else None

    def _handle_signals(self) -> None:
        """Act on signals queued by :meth:`_on_signal`."""
        pending, self._pending = self._pending, []
        for signum in pending:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(f"received {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR2:
                self._begin_reload()

    def _reload(self) -> None:
        """SIGHUP: reopen our own resources, then tell the workers."""
        self._log.info("received SIGHUP; reopening and forwarding to workers")
        if self._on_reopen is not None:
            try:
                self._on_reopen()
            except Exception:
                self._log.exception("reopen hook failed")
        self._signal_workers(signal.SIGHUP)

    def _begin_stop(self, reason: str) -> None:
        """Enter drain mode: SIGTERM everyone and arm the deadline."""
        if self._stopping:
            return
        self._log.info(
            "%s; stopping %d workers (drain timeout %gs)",
            reason,
            len(self.worker_pids),
            self._drain_timeout,
        )
        self._stopping = self.stopping = True
        self._reload_queue.clear()
        self._retire = None
        if self._on_stop is not None:
            try:  # e.g. sd_notify STOPPING=1, which systemd wants when the drain begins
                self._on_stop()
            except Exception:
                self._log.exception("stop hook failed")
        if self._shutdown_delay > 0:
            self._log.info(
                "serving %.1fs more before draining (shutdown delay)", self._shutdown_delay
            )
            self._drain_at = time.monotonic() + self._shutdown_delay
            return
        self._drain_workers()

    def _drain_workers(self) -> None:
        """Tell every worker to drain, and arm the deadline."""
        self._drain_at = None
        self._deadline = time.monotonic() + self._drain_timeout + self._kill_grace
        if self._on_drain is not None:
            try:
                self._on_drain()
            except Exception:
                self._log.exception("drain hook failed")
        self._signal_workers(signal.SIGTERM)

    # -- reload ------------------------------------------------------------

    def _begin_reload(self) -> None:
        """SIGUSR2: replace the workers one at a time (a reload already running restarts)."""
        if self._stopping:
            return
        self.generation += 1
        self._reload_queue = list(self._slots)
        self._log.info(
            "received SIGUSR2; replacing %d workers one at a time (generation %d)",
            len(self._reload_queue),
            self.generation,
        )
        if self._retire is None:
            self._next_replacement()

    def _next_replacement(self) -> None:
        """Start the new worker of the next slot; its old one retires after the settle time."""
        while self._reload_queue:
            slot = self._reload_queue.pop(0)
            old = slot.pid
            if old is None:
                continue  # dead: its restart (due anyway) runs the new code
            self._retiring.add(old)
            slot.pid = None
            self._spawn(slot)
            self._retire = (old, time.monotonic() + self._reload_settle)
            return
        self._log.info("reload: every worker replaced (generation %d)", self.generation)

    def _retire_due(self, now: float) -> None:
        """The new worker has settled: SIGTERM the old one and go on with the next slot."""
        if self._retire is None or now < self._retire[1]:
            return
        old, _ = self._retire
        self._retire = None
        self._log.info("reload: old worker pid %d drains and exits", old)
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGTERM)
        self._next_replacement()

    def _signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every live worker (old ones still draining after a reload too)."""
        for pid in [*self.worker_pids, *self._retiring]:
            with contextlib.suppress(ProcessLookupError):  # dead: reaped soon
                os.kill(pid, signum)

    def _tick(self) -> None:
        """Start due workers, or escalate to SIGKILL past the deadline."""
        now = time.monotonic()
        if not self._stopping:
            for slot in self._slots:
                if slot.pid is None and slot.restart_at <= now:
                    self._spawn(slot)
            self._retire_due(now)
        elif self._drain_at is not None:
            if now >= self._drain_at:
                self._drain_workers()
        elif not self._killed and now >= self._deadline and self._live_pids():
            self._log.warning("drain timeout expired; killing workers %s", self.worker_pids)
            self._killed = True
            self._status = self._status or 1
            self._signal_workers(signal.SIGKILL)

    # -- children --------------------------------------------------------

    def _live_pids(self) -> list[int]:
        return self.all_pids

    @property
    def all_pids(self) -> list[int]:
        """The workers, plus old ones still draining after a reload."""
        return [*self.worker_pids, *self._retiring]

    def _reap(self) -> None:
        """Collect exited workers without touching unrelated children."""
        for pid in list(self._retiring):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._retiring.discard(pid)
                self._log.info("old worker pid %d %s", pid, describe_wait_status(status))
        for slot in self._slots:
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0  # reaped elsewhere; treat as gone
            if pid:
                self._on_exit(slot, status)

    def _on_exit(self, slot: _Slot, status: int) -> None:
        """Log a worker's death and decide what happens next."""
        pid, slot.pid = slot.pid, None
        reason = describe_wait_status(status)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if self._stopping:
            self._log.info("worker %d (pid %s) %s", slot.index, pid, reason)
            if code not in (0, None):
                self._status = self._status or 1
            return
        if code in self._fatal_exit_codes:
            self._log.error("worker %d (pid %s) %s (fatal); shutting down", slot.index, pid, reason)
            self._status = code if code is not None else 1
            self._begin_stop("fatal worker exit")
            return
        delay = self._schedule_restart(slot)
        self.restarts += 1
        self._log.warning(
            "worker %d (pid %s) %s unexpectedly; restarting in %.1fs",
            slot.index,
            pid,
            reason,
            delay,
        )

    def _schedule_restart(self, slot: _Slot) -> float:
        """Apply the crash-loop back-off; return the restart delay."""
        now = time.monotonic()
        if now - slot.started < self._restart_window:
            slot.fast_failures += 1
        else:
            slot.fast_failures = 0
        excess = slot.fast_failures - self._max_fast_restarts
        delay = (
            0.0 if excess <= 0 else min(self._max_backoff, self._restart_window * 2 ** (excess - 1))
        )
        slot.restart_at = now + delay
        return delay

    def _spawn(self, slot: _Slot) -> None:
        """Fork one worker with signals blocked across the fork."""
        self._warn_if_threaded(slot.index)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._log.error("cannot fork worker %d: %s", slot.index, exc)
            slot.started = time.monotonic()
            self._schedule_restart(slot)
            slot.restart_at = max(slot.restart_at, slot.started + self._restart_window)
            return
        if pid == 0:
            self._child(slot.index, old_mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        slot.pid, slot.started = pid, time.monotonic()
        self._log.info("started worker %d (pid %d)", slot.index, pid)

    def _warn_if_threaded(self, index: int) -> None:
        """Say once if we fork with threads: they are not copied into the worker.

        A lock one of them holds at that moment (logging, malloc, a resolver)
        stays locked in the worker for ever. milterkit starts none before the
        fork; this catches those started by the program around ``run()``.
        """
        threads = _thread_count()
        if threads > 1 and not self._warned_threads:
            self._warned_threads = True
            self._log.warning(
                "supervisor %d has %d threads while forking worker %d: the worker gets only "
                "this one, and locks the others hold stay locked in it; start threads in "
                "the workers, not before run()",
                os.getpid(),
                threads,
                index,
            )

    def _child(self, index: int, old_mask: Iterable[int]) -> NoReturn:
        """Child side of fork: reset inherited state, run the worker, exit."""
        code = 70  # EX_SOFTWARE if anything below escapes
        try:
            if self._after_fork is not None:
                self._after_fork(index)
            self._reset_child_signals(old_mask)
            code = self._call_worker(index)
        finally:
            _flush_before_exit()
            os._exit(code)

    def _reset_child_signals(self, old_mask: Iterable[int]) -> None:
        """Give the worker default dispositions and no supervisor wakeup fd."""
        signal.set_wakeup_fd(-1)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self._selector is not None:  # an epoll fd is shared: a worker could edit ours
            self._selector.close()
        for sig in _HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # A reload request that arrives before the worker has set up its own
        # SIGHUP handler has nothing to reopen yet; by default it would kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _call_worker(self, index: int) -> int:
        """Run worker_main, turning exceptions into exit codes."""
        try:
            return _exit_code(self._worker_main(index))
        except SystemExit as exc:
            return _exit_code(exc.code)
        except BaseException:
            self._log.exception("worker %d crashed", index)
            return 1


def _flush_before_exit() -> None:
    """os._exit skips buffers and atexit; flush what a worker may have written."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    logging.shutdown()


def _thread_count() -> int:
    """Kernel threads of this process, including those Python does not know (libuv's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` to this worker when its supervisor dies.

    Without it, a supervisor killed with SIGKILL (or by the OOM killer) leaves
    its workers running: they keep accepting mail with nobody to restart them,
    and a restarted daemon finds the unix socket still listening. Linux clears
    this setting when a process changes its user or group, so call it after
    dropping privileges. Returns False where prctl is not available.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signum)
    return True
