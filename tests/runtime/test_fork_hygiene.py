"""The supervisor forks its workers from a single-threaded process, on every Python.

Forking copies only the calling thread: a lock another thread held at that
moment (a logging handler's, an allocator's, a resolver's) stays locked in the
worker for ever. Python 3.12+ warns about it with a DeprecationWarning that
``-W error`` cannot turn into an error: ``os.fork()`` has already forked when
it warns, so CPython clears the exception. The daemon here therefore runs under
a launcher that counts the process's kernel threads just before every fork
(``os.register_at_fork``), turns every other DeprecationWarning raised from
milterkit's own modules into an error, and prints the fork warning instead of
losing it. Workers start threads of their own only after the fork.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.test_daemon import SPAMTRAP, one_message
from tests.runtime.test_server_mta import wait_for

REPO = Path(__file__).resolve().parents[2]
FORK_WARNING = "is multi-threaded, use of fork() may lead to deadlocks"

#: argv: FORK_RECORD THREAD_BEFORE_RUN(0|1) then the milterkit CLI's arguments.
LAUNCHER = r"""
import os, sys, threading, warnings

record = open(sys.argv[1], "a", buffering=1)

def count_threads_before_fork():
    record.write(f"{os.getpid()} {len(os.listdir('/proc/self/task'))}\n")

os.register_at_fork(before=count_threads_before_fork)
warnings.filterwarnings("error", category=DeprecationWarning, module=r"milterkit(\.|$)")
warnings.filterwarnings("always", message=r".*is multi-threaded", category=DeprecationWarning)
if sys.argv[2] == "1":  # the control case: what a thread started before run() looks like
    threading.Thread(target=threading.Event().wait, daemon=True).start()
from milterkit.cli import main
sys.exit(main(sys.argv[3:]))
"""


class ForkWatchedDaemon:
    """``milterkit run`` (2 workers, the SpamTrap example) under :data:`LAUNCHER`."""

    def __init__(self, tmp: Path, *, thread_before_run: bool = False) -> None:
        self.sock_path = tmp / "milter.sock"
        self.forks_path = tmp / "forks"
        self.log_path = tmp / "daemon.log"
        command = [sys.executable, "-c", LAUNCHER, str(self.forks_path)]
        command += ["1" if thread_before_run else "0", "run", SPAMTRAP]
        command += ["--socket", f"unix:{self.sock_path}", "--workers", "2"]
        env = {**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forks(self) -> list[tuple[int, int]]:
        """(pid that forked, its kernel thread count just before) per fork so far."""
        text = self.forks_path.read_text() if self.forks_path.exists() else ""
        return [(int(pid), int(n)) for pid, n in (line.split() for line in text.splitlines())]

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def serve_one_message_then_restart_a_worker(self) -> None:
        """Cover both the first forks and a restart's fork, after mail was handled."""
        wait_for(lambda: len(self.workers()) == 2 or self.proc.poll() is not None, 15, "workers")
        assert self.proc.poll() is None, self.log()
        assert one_message(str(self.sock_path))[-1] == "Accept"
        victim = self.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(self.forks()) >= 3, 15, "the replacement worker's fork")
        assert one_message(str(self.sock_path))[-1] == "Accept"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[ForkWatchedDaemon]]:
    started: list[ForkWatchedDaemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)


def test_supervisor_is_single_threaded_at_every_fork(
    tmp_path: Path, daemons: list[ForkWatchedDaemon]
) -> None:
    daemon = ForkWatchedDaemon(tmp_path)
    daemons.append(daemon)
    daemon.serve_one_message_then_restart_a_worker()
    assert daemon.stop() == 0, daemon.log()
    forks = daemon.forks()
    assert len(forks) >= 3, forks
    assert {pid for pid, _ in forks} == {daemon.proc.pid}, "only the supervisor forks"
    assert [threads for _, threads in forks] == [1] * len(forks), daemon.log()
    assert "DeprecationWarning" not in daemon.log()


def test_the_watch_sees_a_thread_started_before_run(
    tmp_path: Path, daemons: list[ForkWatchedDaemon]
) -> None:
    """The control case: the checks above would fail if the supervisor had a thread."""
    daemon = ForkWatchedDaemon(tmp_path, thread_before_run=True)
    daemons.append(daemon)
    daemon.serve_one_message_then_restart_a_worker()
    assert daemon.stop() == 0, daemon.log()
    assert all(threads == 2 for _, threads in daemon.forks()), daemon.forks()
    assert daemon.log().count("has 2 threads while forking worker") == 1, daemon.log()
    if sys.version_info >= (3, 12):
        assert FORK_WARNING in daemon.log()
