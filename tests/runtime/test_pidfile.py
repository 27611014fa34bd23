"""Tests for the locked, atomically written PID file (real locks, real forks)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.pidfile import PidFile
from tests.forking import fork_single_threaded


@contextmanager
def _held_by_child(path: Path) -> Iterator[int]:
    """Hold ``path`` in a forked child (locks are per process); yield its PID."""
    ready_r, ready_w = os.pipe()
    pid = fork_single_threaded()
    if pid == 0:
        os.close(ready_r)
        with PidFile(path):
            os.write(ready_w, b"x")
            signal.pause()
        os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_creates_file_with_pid_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with PidFile(path) as pidfile:
        assert path.read_text() == f"{os.getpid()}\n"
        assert pidfile.fileno is not None
        on_disk, locked = os.stat(path), os.fstat(pidfile.fileno)
        assert (on_disk.st_dev, on_disk.st_ino) == (locked.st_dev, locked.st_ino)
        assert on_disk.st_mode & 0o777 == 0o644
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pid"]
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_second_instance_gets_locked_error(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with _held_by_child(path) as holder:
        message = f"PID file {path} is locked by running process {holder}"
        with pytest.raises(RuntimeConfigError, match=message):
            PidFile(path).acquire()
        assert path.read_text() == f"{holder}\n"


def test_same_process_second_acquire_refused_without_losing_lock(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with PidFile(path):
        with pytest.raises(RuntimeConfigError, match="already held by this process"):
            PidFile(path).acquire()
        pid = fork_single_threaded()
        if pid == 0:  # the lock must still be effective for other processes
            try:
                PidFile(path).acquire()
            except RuntimeConfigError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_stale_unlocked_file_is_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    path.write_text("999999\n")
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_lock_released_when_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with _held_by_child(path):
        pass
    assert path.exists()  # SIGKILLed holder could not clean up
    with PidFile(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_symlink_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    path = tmp_path / "m.pid"
    path.symlink_to(target)
    with pytest.raises(RuntimeConfigError, match="it is a symlink"):
        PidFile(path).acquire()
    assert target.read_text() == "precious\n"


def test_dangling_symlink_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(RuntimeConfigError, match="it is a symlink"):
        PidFile(path).acquire()
    assert not (tmp_path / "nowhere").exists()


def test_directory_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    path.mkdir()
    with pytest.raises(RuntimeConfigError, match=r"m\.pid"):
        PidFile(path).acquire()


def test_missing_directory_is_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeConfigError, match="cannot create PID file in"):
        PidFile(tmp_path / "missing" / "m.pid").acquire()


def test_replaced_file_not_removed_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with PidFile(path):
        path.unlink()
        path.write_text("12345\n")  # someone else's file now
    assert path.read_text() == "12345\n"


def test_reacquire_after_release(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    pidfile = PidFile(path)
    pidfile.acquire()
    with pytest.raises(RuntimeConfigError, match="already held"):
        pidfile.acquire()
    pidfile.release()
    pidfile.release()  # idempotent
    with pidfile:
        assert path.exists()


def _race(path: Path, contenders: int) -> list[int]:
    """Start ``contenders`` processes at once; return each one's exit code.

    Winners hold the file until the losers are done (or 5 s passed), so a
    lost race cannot be hidden by a quick release.
    """
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pids = []
    for _ in range(contenders):
        pid = fork_single_threaded()
        if pid == 0:
            os.close(go_w)
            os.close(done_w)
            os.read(go_r, 1)
            code = 0
            try:
                with PidFile(path):
                    os.read(done_r, 1)  # returns b"" once the parent closes it
            except RuntimeConfigError:
                code = 3
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(done_r)
    os.write(go_w, b"g" * contenders)
    os.close(go_w)
    codes = _reap_until(pids, contenders - 1, time.monotonic() + 5)
    os.close(done_w)
    codes.update(
        {p: os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids if p not in codes}
    )
    return list(codes.values())


def _reap_until(pids: list[int], count: int, deadline: float) -> dict[int, int]:
    """Collect exit codes of ``pids`` until ``count`` exited or the deadline."""
    codes: dict[int, int] = {}
    while len(codes) < count and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return codes


@pytest.mark.parametrize("stale", [False, True])
def test_concurrent_starters_exactly_one_wins(tmp_path: Path, stale: bool) -> None:
    path = tmp_path / "m.pid"
    for _ in range(5):
        if stale:
            path.write_text("999999\n")
        codes = _race(path, 6)
        assert sorted(codes) == [0, 3, 3, 3, 3, 3]
        assert not path.exists()
        assert list(tmp_path.iterdir()) == []
