"""Tests for the prefork supervisor with real forks and real signals.

Each test forks a "supervisor process" (so the supervisor's signal handling
cannot disturb pytest), whose workers append one line per event to a shared
O_APPEND file.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.supervisor import Supervisor, describe_wait_status
from tests.forking import fork_single_threaded


class Run:
    """Handle on a forked supervisor process and its event/log files."""

    def __init__(self, pid: int, events: Path, log: Path) -> None:
        self.pid = pid
        self.events_path = events
        self.log_path = log
        self.status: int | None = None

    def events(self, kind: str, index: int | None = None) -> list[list[str]]:
        """Event lines of ``kind`` (optionally for one worker index), split."""
        text = self.events_path.read_text() if self.events_path.exists() else ""
        rows = [line.split() for line in text.splitlines()]
        return [r for r in rows if r[0] == kind and (index is None or r[1] == str(index))]

    def log(self) -> str:
        """The supervisor's log output so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_exit(self, timeout: float) -> int:
        """Wait for the supervisor process; return its exit code."""
        wait_for(lambda: self._poll() is not None, timeout, "supervisor exit")
        assert self.status is not None
        return self.status

    def _poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def record(events: Path, *fields: object) -> None:
    """Append one event line atomically (single small O_APPEND write)."""
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())
    finally:
        os.close(fd)


def _default_dispositions() -> str:
    """Describe whether the inherited signal state was reset."""
    dfl = (
        all(
            signal.getsignal(s) == signal.SIG_DFL
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        )
        and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    )  # until the worker's own handler
    wakeup = signal.set_wakeup_fd(-1)
    return f"dfl={dfl} wakeup={wakeup} epoll={_epoll_fds()}"


def _epoll_fds() -> int:
    """Epoll instances open here: the supervisor's must not reach its workers."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"
    return count


def worker(events: Path, behaviour: str, index: int) -> int:
    """Test worker: ``behaviour`` selects how worker 0 misbehaves."""
    inherited = _default_dispositions()
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGHUP, lambda s, f: record(events, "hup", index, os.getpid()))
    record(events, "start", index, os.getpid(), inherited)
    if index == 0:
        code = _misbehave(events, behaviour)
        if code is not None:
            return code
    while not stop:
        time.sleep(0.02)
    record(events, "stop", index, os.getpid())
    return 0


def _misbehave(events: Path, behaviour: str) -> int | None:
    """Return an exit code to die with, or None to serve normally."""
    marker = events.with_suffix(".crashed")
    if behaviour == "exit1-once" and not marker.exists():
        marker.touch()
        return 1
    if behaviour == "always-exit1":
        return 1
    if behaviour == "fatal":
        return 78
    if behaviour == "raise-once" and not marker.exists():
        marker.touch()
        raise ValueError("boom")
    if behaviour == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    return None


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Fork supervisor processes; kill leftovers (and their workers) at the end."""
    runs: list[Run] = []

    def _start(behaviour: str = "serve", workers: int = 2, **kwargs: object) -> Run:
        run = Run(fork_single_threaded(), tmp_path / "events", tmp_path / "supervisor.log")
        if run.pid == 0:
            _supervisor_process(run, behaviour, workers, kwargs)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        if run.status is None:
            for row in run.events("start"):
                _kill(int(row[2]))
            _kill(run.pid)
            os.waitpid(run.pid, 0)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _supervisor_process(run: Run, behaviour: str, workers: int, kwargs: dict[str, object]) -> None:
    """Body of the forked supervisor process; never returns."""
    code = 70
    try:
        logger = logging.getLogger(f"test.supervisor.{os.getpid()}")
        handler = logging.FileHandler(run.log_path)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        before = signal.getsignal(signal.SIGTERM)
        supervisor = Supervisor(
            partial(worker, run.events_path, behaviour), workers, logger=logger, **kwargs
        )  # type: ignore[arg-type]
        code = supervisor.run()
        restored = signal.getsignal(signal.SIGTERM) == before
        record(run.events_path, "supervisor-done", code, f"restored={restored}")
    finally:
        os._exit(code)


def _pids(run: Run, index: int) -> list[int]:
    return [int(row[2]) for row in run.events("start", index)]


def test_workers_start_with_default_signal_state(start: Callable[..., Run]) -> None:
    run = start(workers=3)
    wait_for(lambda: len(run.events("start")) == 3, 5, "3 workers")
    assert sorted(row[1] for row in run.events("start")) == ["0", "1", "2"]
    for row in run.events("start"):
        assert row[3:] == ["dfl=True", "wakeup=-1", "epoll=0"]
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0
    assert run.events("supervisor-done") == [["supervisor-done", "0", "restored=True"]]


def test_worker_exiting_1_is_restarted_and_logged(start: Callable[..., Run]) -> None:
    run = start("exit1-once", workers=1)
    wait_for(lambda: len(run.events("start", 0)) == 2, 5, "restart of worker 0")
    first = _pids(run, 0)[0]
    wait_for(lambda: "restarting" in run.log(), 2, "log line")
    assert (
        f"worker 0 (pid {first}) exited with status 1 unexpectedly; restarting in 0.0s" in run.log()
    )
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_worker_exception_is_logged_and_restarted(start: Callable[..., Run]) -> None:
    run = start("raise-once", workers=1)
    wait_for(lambda: len(run.events("start", 0)) == 2, 5, "restart of worker 0")
    wait_for(lambda: "exited with status 1" in run.log(), 2, "exit log")
    assert "worker 0 crashed" in run.log()
    assert "ValueError: boom" in run.log()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_sigkilled_worker_replaced_quickly_other_keeps_running(start: Callable[..., Run]) -> None:
    run = start(workers=2)
    wait_for(lambda: len(run.events("start")) == 2, 5, "2 workers")
    victim, survivor = _pids(run, 0)[0], _pids(run, 1)[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(run.events("start", 0)) == 2, 1.0, "replacement within 1s")
    assert time.monotonic() - killed_at < 1.0
    assert _pids(run, 1) == [survivor]
    assert alive(survivor)
    wait_for(lambda: "killed by SIGKILL" in run.log(), 2, "log line")
    assert f"worker 0 (pid {victim}) killed by SIGKILL unexpectedly" in run.log()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_sigterm_stops_all_within_deadline(start: Callable[..., Run]) -> None:
    run = start(workers=3, drain_timeout=5.0)
    wait_for(lambda: len(run.events("start")) == 3, 5, "3 workers")
    pids = [int(row[2]) for row in run.events("start")]
    began = time.monotonic()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0
    assert time.monotonic() - began < 2.0
    assert sorted(int(row[2]) for row in run.events("stop")) == sorted(pids)
    assert not any(alive(pid) for pid in pids)
    assert "received SIGTERM; stopping 3 workers" in run.log()


def test_sigint_also_stops(start: Callable[..., Run]) -> None:
    run = start(workers=1)
    wait_for(lambda: len(run.events("start")) == 1, 5, "worker")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit(5) == 0
    assert len(run.events("stop")) == 1


def test_worker_ignoring_sigterm_is_killed_after_drain_timeout(start: Callable[..., Run]) -> None:
    run = start("ignore-term", workers=2, drain_timeout=0.5)
    wait_for(lambda: len(run.events("start")) == 2, 5, "2 workers")
    stubborn, polite = _pids(run, 0)[0], _pids(run, 1)[0]
    began = time.monotonic()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 1
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 3.0
    assert not alive(stubborn)
    assert [int(row[2]) for row in run.events("stop")] == [polite]
    assert "drain timeout expired; killing workers" in run.log()
    assert f"worker 0 (pid {stubborn}) killed by SIGKILL" in run.log()


def test_sighup_runs_hook_and_is_forwarded(start: Callable[..., Run], tmp_path: Path) -> None:
    hook_marker = tmp_path / "reopened"
    run = start(workers=2, on_reopen=hook_marker.touch)
    wait_for(lambda: len(run.events("start")) == 2, 5, "2 workers")
    os.kill(run.pid, signal.SIGHUP)
    wait_for(lambda: len(run.events("hup")) == 2, 3, "SIGHUP in both workers")
    assert hook_marker.exists()
    assert len(run.events("start")) == 2  # nobody was restarted
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_crash_loop_is_rate_limited(start: Callable[..., Run]) -> None:
    run = start("always-exit1", workers=1, restart_window=0.5, max_fast_restarts=2)
    time.sleep(1.5)
    starts = len(run.events("start", 0))
    # 1 + 2 immediate restarts, then back-off of 0.5s, 1s, ... => at most ~5
    assert 3 <= starts <= 6
    assert "restarting in 0.5s" in run.log()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_fatal_exit_code_stops_everything(start: Callable[..., Run]) -> None:
    run = start("fatal", workers=2)
    assert run.wait_exit(5) == 78
    assert "exited with status 78 (fatal); shutting down" in run.log()
    assert len(run.events("start", 0)) == 1


def test_inline_mode_runs_in_process() -> None:
    seen: list[tuple[int, int]] = []

    def main(index: int) -> int:
        seen.append((index, os.getpid()))
        return 7

    assert Supervisor(main, workers=0).run() == 7
    assert Supervisor(main, workers=1, fork=False).run() == 7
    assert seen == [(0, os.getpid()), (0, os.getpid())]


def test_inline_mode_system_exit() -> None:
    def main(index: int) -> int:
        raise SystemExit(5)

    assert Supervisor(main, workers=0).run() == 5


def test_invalid_worker_counts() -> None:
    with pytest.raises(RuntimeConfigError, match="cannot run 2 workers without forking"):
        Supervisor(lambda i: 0, workers=2, fork=False)
    with pytest.raises(RuntimeConfigError, match="invalid number of workers -1"):
        Supervisor(lambda i: 0, workers=-1)


def test_default_worker_count_is_cpu_count() -> None:
    supervisor = Supervisor(lambda i: 0)
    assert len(supervisor._slots) == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exited with status 0"),
        (3 << 8, "exited with status 3"),
        (signal.SIGKILL, "killed by SIGKILL"),
        (signal.SIGSEGV | 0x80, "killed by SIGSEGV (core dumped)"),
    ],
)
def test_describe_wait_status(status: int, text: str) -> None:
    assert describe_wait_status(status) == text
