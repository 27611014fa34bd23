"""Workers do not outlive their supervisor.

A supervisor killed with SIGKILL (or by the OOM killer) must not leave
workers behind that keep accepting mail with nobody to restart them and that
block a restarted daemon's socket. Linux clears the parent-death signal on a
uid change, so the case with ``--user nobody`` matters most.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("as_user", [None, "nobody"])
def test_workers_exit_when_the_supervisor_is_killed(as_user: str | None) -> None:
    if as_user and os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    command = [
        sys.executable, "-m", "milterkit", "run", "examples/spamtrap.py:SpamTrap",
        "--socket", f"inet:{_free_port()}@127.0.0.1", "--workers", "2", "--log", "null",
    ]  # fmt: skip
    if as_user:
        command += ["--user", as_user]
    daemon = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        # generous: the CI runs this on a loaded 2-core machine under several Pythons
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and daemon.poll() is None:
            workers = _children(daemon.pid)
            time.sleep(0.05)
        if len(workers) != 2:
            daemon.kill()
            _, stderr = daemon.communicate(timeout=10)
            pytest.fail(
                f"the daemon did not start two workers (children {workers}, exit status "
                f"{daemon.returncode}); its stderr:\n{stderr[-3000:]}"
            )
        time.sleep(0.3)  # let the workers reach their serving loop
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "workers outlived their supervisor"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
