"""``os.fork()`` from the pytest process, only while it is single-threaded.

Forking a multi-threaded process copies only the calling thread: a lock that
another thread held at that moment stays locked forever in the child, so the
child may deadlock (Python 3.12+ warns about it). Tests that fork pytest itself
check first, so a thread left running by an earlier test (libuv's thread pool,
started by the first uvloop name lookup, never ends) fails here, naming it,
instead of making these tests flaky.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

#: Threads that are ending (joined, but not yet gone from the kernel) get this long.
SETTLE_SECONDS = 10.0


def os_threads() -> list[str]:
    """Names (``comm``) of this process's kernel threads, the main thread included."""
    names = []
    for tid in sorted(os.listdir("/proc/self/task")):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                names.append(f"{tid}:{comm.read().strip()}")
        except FileNotFoundError:  # ended meanwhile
            continue
    return names


def fork_single_threaded() -> int:
    """``os.fork()``, after waiting for this process to be down to one thread."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(os.listdir("/proc/self/task")) > 1:
        python_threads = [t.name for t in threading.enumerate()]
        pytest.fail(
            f"pytest process is multi-threaded before fork: kernel threads {os_threads()}, "
            f"Python threads {python_threads}; an earlier test left a thread running"
        )
    return os.fork()
