"""CPU and wall time of one thread hand-off (a pooled callback) against calling inline.

Runs a no-op callback many times on a real event loop (uvloop when installed,
as the worker uses it): ``inline`` calls it in the coroutine, ``executor`` is
``loop.run_in_executor`` on a ``ThreadPoolExecutor`` (the hand-off milterkit
used before its own pool), ``runner`` is ``CallbackRunner.submit`` of the
milterkit on the path, and ``runner+wait_for`` / ``runner+timer`` add a
callback timeout the way the session does (``asyncio.wait_for``, or
``milterkit.execution.within``: one loop timer, for a pooled call). Each is measured
sequentially (one hop in flight) and with ``--conns`` coroutines hopping at
once (as many connections' callbacks in flight). CPU is the process's
(every thread); both are per hop, medians of ``--runs`` runs.

    python benchmarks/handoff_micro.py [--hops N] [--conns 8,64] [--loop asyncio]
    PYTHONPATH=/other/checkout/src python benchmarks/handoff_micro.py   # A/B
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import milterkit
from milterkit.execution import CallbackRunner, CallScope, ExecutionSettings

try:
    from milterkit.execution import within
except ImportError:  # an older milterkit (A/B): no such variant
    within = None

Hop = Callable[[], Awaitable[Any]]


def noop() -> None:
    """The callback: nothing, so what is measured is the hand-off alone."""


def _ignore(scope: CallScope) -> None:
    """No PROGRESS in this benchmark."""


def _hops(
    loop: asyncio.AbstractEventLoop, threads: int
) -> dict[str, tuple[Hop, Callable[[], None]]]:
    """Each variant: one hop (an awaitable factory) and how to stop its pool."""
    runner = CallbackRunner(ExecutionSettings(threads=threads), logging.getLogger("bench"))
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench")

    async def inline() -> None:
        noop()

    async def via_executor() -> None:
        await loop.run_in_executor(executor, noop)

    async def via_runner() -> None:
        await runner.submit(CallScope(_ignore), noop, ())

    async def via_runner_wait_for() -> None:
        await asyncio.wait_for(runner.submit(CallScope(_ignore), noop, ()), 30.0)

    async def via_runner_within() -> None:
        await within(runner.submit(CallScope(_ignore), noop, ()), 30.0)

    def stop_executor() -> None:
        executor.shutdown(wait=True)

    variants = {
        "inline": (inline, _nothing),
        "executor": (via_executor, stop_executor),
        "runner": (via_runner, runner.shutdown),
        "runner+wait_for": (via_runner_wait_for, _nothing),
    }
    if within is not None:  # a milterkit that has it
        variants["runner+within"] = (via_runner_within, _nothing)
    return variants


def _nothing() -> None:
    """A variant without a pool of its own."""


async def _timed(hop: Hop, hops: int, conns: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``hops`` hops spread over ``conns`` coroutines."""

    async def connection(count: int) -> None:
        for _ in range(count):
            await hop()

    share = hops // conns
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection(share) for _ in range(conns)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def _measure(args: argparse.Namespace) -> dict[tuple[str, int], list[tuple[float, float]]]:
    loop = asyncio.get_running_loop()
    variants = _hops(loop, args.threads)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    levels = [1, *args.conns]
    for hop, _ in variants.values():  # warm up: threads started, code paths hot
        await _timed(hop, max(levels) * 20, max(levels))
    for _ in range(args.runs):  # rotate, so a noisy moment hits every variant alike
        for conns in levels:
            for name, (hop, _) in variants.items():
                cpu, wall = await _timed(hop, args.hops - args.hops % conns, conns)
                per = args.hops - args.hops % conns
                results.setdefault((name, conns), []).append((cpu / per, wall / per))
    pool = sum(1 for t in threading.enumerate() if t.name.startswith("milterkit-cb"))
    print(f"CallbackRunner pool threads started: {pool} (bound {args.threads})")
    for _, stop in variants.values():
        stop()
    return results


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed; using asyncio", file=sys.stderr)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _report(results: dict[tuple[str, int], list[tuple[float, float]]], inline_ref: bool) -> None:
    print(
        f"{'variant':<18}{'in flight':>10}{'CPU µs/hop':>12}{'wall µs/hop':>13}{'CPU - inline':>14}"
    )
    for (name, conns), runs in results.items():
        cpu = statistics.median(r[0] for r in runs) * 1e6
        wall = statistics.median(r[1] for r in runs) * 1e6
        base = statistics.median(r[0] for r in results[("inline", conns)]) * 1e6
        extra = f"{cpu - base:14.2f}" if inline_ref else ""
        print(f"{name:<18}{conns:>10}{cpu:12.2f}{wall:13.2f}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=20000, help="hops per run (20000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are printed (5)")
    parser.add_argument("--conns", default="8,64", help="concurrent levels besides 1 (8,64)")
    parser.add_argument("--threads", type=int, default=64, help="pool bound (64, the default)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval (s)"
    )
    args = parser.parse_args(argv)
    args.conns = [int(c) for c in args.conns.split(",") if c]
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    loop = _new_loop(args.loop)
    print(
        f"milterkit {milterkit.__version__} from {milterkit.__file__}; "
        f"loop {type(loop).__module__}; switch interval {sys.getswitchinterval() * 1000:g} ms; "
        f"{args.hops} hops x {args.runs} runs"
    )
    try:
        results = loop.run_until_complete(_measure(args))
    finally:
        loop.close()
    _report(results, inline_ref=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
