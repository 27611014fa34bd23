"""A blocking milter under concurrency: how long N connections take when a callback sleeps.

One worker serves a milter whose plain ``def mail_from`` sleeps (a stand-in
for DNS, HTTP or a database), declared in four ways: as users write it (the
default ``auto`` mode), ``@blocking``, the whole milter in ``threads`` mode,
and ``inline`` (the opt-out, which shows what a stalled loop costs). N
connections send one message each at the same moment; the script prints the
wall time until all are done and each connection's latency percentiles, as
medians over several repeats. Each repeat starts a fresh daemon, so ``auto``
always pays for its one learning call.

    python benchmarks/blocking.py                   # 16 connections, sleep 1 s, 3 repeats
    python benchmarks/blocking.py --connections 32 --sleep 0.5 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from milterkit.client import check

MILTER = textwrap.dedent(
    """
    import os, sys, time
    import milterkit
    from milterkit import Accept, Action, Continue, Milter, blocking

    SLEEP = float(os.environ["BENCH_SLEEP"])

    class Plain(Milter):
        actions = Action.ADD_HEADERS

        def mail_from(self, sender, params):
            time.sleep(SLEEP)
            return Continue()

        def end_of_message(self):
            self.add_header("X-Bench", "blocking")
            return Accept()

    class Declared(Plain):
        @blocking
        def mail_from(self, sender, params):
            time.sleep(SLEEP)
            return Continue()

    if __name__ == "__main__":
        cls = Declared if sys.argv[2] == "declared" else Plain
        mode = sys.argv[2] if sys.argv[2] in ("threads", "inline") else None
        raise SystemExit(milterkit.run(cls, sys.argv[1], workers=1, execution=mode,
                                       log_level="error", threads=int(sys.argv[3])))
    """
)
MODES = ("auto", "declared", "threads", "inline")
MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: bench\r\n\r\nhello\r\n"


def one_run(script: Path, mode: str, connections: int, sleep: float) -> tuple[float, list[float]]:
    """Start a daemon, fire ``connections`` messages at once; (wall s, per-message s)."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "m.sock")
        env = dict(os.environ, BENCH_SLEEP=str(sleep))
        threads = str(max(connections, 1))
        daemon = subprocess.Popen(
            [sys.executable, str(script), f"unix:{sock}", mode, threads], env=env
        )
        try:
            _wait_listening(sock)
            return _fire(sock, connections)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def _wait_listening(path: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    raise SystemExit(f"the daemon did not listen on {path}")


def _fire(sock: str, connections: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    failures: list[str] = []
    gate = threading.Barrier(connections + 1)

    def one() -> None:
        gate.wait()
        started = time.monotonic()
        result = check(f"unix:{sock}", MESSAGE, timeout=120)
        latencies.append(time.monotonic() - started)
        if result.decision != "accept":
            failures.append(result.decision)

    workers = [threading.Thread(target=one) for _ in range(connections)]
    for worker in workers:
        worker.start()
    gate.wait()
    started = time.monotonic()
    for worker in workers:
        worker.join()
    wall = time.monotonic() - started
    if failures:
        raise SystemExit(f"{len(failures)} message(s) not accepted: {failures[:3]}")
    return wall, latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "blocking_milter.py"
        script.write_text(MILTER)
        print(
            f"{args.connections} connections at once, mail_from sleeps {args.sleep}s, "
            f"1 worker, medians of {args.repeats} runs (load {os.getloadavg()[0]:.2f})"
        )
        print(f"{'mode':10} {'all done (s)':>13} {'p50 (s)':>9} {'max (s)':>9}")
        for mode in args.modes.split(","):
            runs = [
                one_run(script, mode, args.connections, args.sleep) for _ in range(args.repeats)
            ]
            wall = statistics.median(r[0] for r in runs)
            p50 = statistics.median(_percentile(r[1], 0.5) for r in runs)
            worst = statistics.median(max(r[1]) for r in runs)
            print(f"{mode:10} {wall:13.2f} {p50:9.2f} {worst:9.2f}")


if __name__ == "__main__":
    main()
