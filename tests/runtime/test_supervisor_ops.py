"""Supervisor: SIGUSR2 replaces workers one at a time; the shutdown delay; the drain hook."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.runtime.test_supervisor import Run, alive, record, start, wait_for

__all__ = ["start"]  # the fixture


def _pids(run: Run, kind: str) -> list[int]:
    return [int(row[2]) for row in run.events(kind)]


def test_sigusr2_replaces_each_worker_new_before_old(start: Callable[..., Run]) -> None:
    run = start(workers=2, reload_settle=0.3)
    wait_for(lambda: len(run.events("start")) == 2, 10, "2 workers")
    old = _pids(run, "start")
    os.kill(run.pid, signal.SIGUSR2)
    wait_for(lambda: len(run.events("stop")) == 2, 20, "both old workers stopped")
    wait_for(lambda: "reload: every worker replaced" in run.log(), 10, "reload done")
    starts = run.events("start")
    new = [int(row[2]) for row in starts[2:]]
    assert sorted(row[1] for row in starts[2:]) == ["0", "1"]
    assert sorted(_pids(run, "stop")) == sorted(old)
    assert all(alive(pid) for pid in new)
    lines = (run.events_path.read_text()).splitlines()
    order = [line.split()[0] + line.split()[1] for line in lines]
    # each successor starts before its predecessor stops; worker 1 only after worker 0's
    assert order.index("start0", order.index("start0") + 1) < order.index("stop0")
    assert order.index("start1", order.index("start1") + 1) < order.index("stop1")
    assert order.index("start0", order.index("start0") + 1) < order.index("stop1")
    assert "worker" in run.log() and "restarting" not in run.log()
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert sorted(_pids(run, "stop")) == sorted(old + new)


def test_shutdown_delay_serves_on_then_drains(start: Callable[..., Run], tmp_path: Path) -> None:
    drained = tmp_path / "drain-hook"
    run = start(workers=1, shutdown_delay=2.0, on_drain=partial(record, drained, "drain"))
    wait_for(lambda: len(run.events("start")) == 1, 10, "worker")
    os.kill(run.pid, signal.SIGTERM)
    wait_for(lambda: "serving 2.0s more before draining" in run.log(), 10, "delay log line")
    assert run.events("stop") == [] and not drained.exists()  # still serving
    wait_for(lambda: run.events("stop"), 15, "worker stop")
    assert drained.read_text() == "drain\n"
    assert run.wait_exit(10) == 0
