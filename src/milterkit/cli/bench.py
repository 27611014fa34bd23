"""``milterkit bench``: a bounded load generator for milters.

Several processes (default: one per CPU) each run asyncio connections over
the client's sans-I/O :class:`~milterkit.client.session.MTASession`: the
opening is its :class:`~milterkit.client.session.Opening` exchange, ABORT and
QUIT come from :meth:`~milterkit.client.session.MTASession.abort` and
:meth:`~milterkit.client.session.MTASession.quit`. Only the messages take a
faster path: the bytes of every command of the test message are computed
once per negotiated outcome (by a dry run of
:class:`~milterkit.client.session.MessageRun` against an always-continue
filter) and replayed, with :meth:`~milterkit.protocol.MTAConnection.sent_encoded`
telling the session's connection which reply to expect; so the per-message
cost on the driver side is a few writes and the parsing of the replies. The
run stops by itself after ``--duration`` seconds or ``--messages`` messages
(failed attempts count too, so a dead filter cannot make it hang).

Latency is measured per message, from writing its first packet (MAIL) to
reading the final end-of-message reply. The driver's own CPU time is reported
so that a filter's figures can be judged against the load generator's cost.
With ``--processes 1`` everything runs in the calling process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from milterkit.client.aio import open_stream
from milterkit.client.errors import MilterError, MilterTimeout
from milterkit.client.session import Exchange, MTASession, decision_of
from milterkit.decision import Decision
from milterkit.mtaprofile import PROFILES, MTAProfile
from milterkit.protocol import (
    NEED_DATA,
    Command,
    Continue,
    Message,
    MTAConnection,
    OptNeg,
    Progress,
    ProtocolError,
    Reply,
    Skip,
)
from milterkit.protocol.constants import REPLY_ACTION
from milterkit.protocol.negotiate import Negotiated
from milterkit.protocol.steps import STEPS

__all__ = ["BenchConfig", "BenchReport", "add_parser", "bench", "main", "run"]

#: Stage name -> command, for the steps of a message.
_STAGE_COMMAND = {s.stage: s.command for s in STEPS if s.position}


@dataclass(frozen=True)
class BenchConfig:
    """What to run; see ``milterkit bench --help`` for each field."""

    socket: str
    conns: int = 10
    duration: float | None = None
    messages: int | None = None
    body_bytes: int = 2000
    headers: int = 10
    rcpts: int = 1
    msgs_per_conn: int = 10
    processes: int = 1
    profile: str = "postfix"
    timeout: float = 10.0


@dataclass
class WorkerReport:
    messages: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    decisions: Counter[Decision] = field(default_factory=Counter)
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    elapsed: float = 0.0


@dataclass
class BenchReport:
    """The figures printed at the end (also the ``--json`` output)."""

    messages: int
    elapsed_s: float
    messages_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    decisions: dict[str, int]
    driver_cpu_s: float
    driver_cpu_user_s: float
    driver_cpu_sys_s: float
    processes: int
    connections: int


# ------------------------------------------------------------------ the message


def build_message(config: BenchConfig) -> tuple[bytes, str, list[str]]:
    """The test message: ``headers`` fields and a body of ``body_bytes`` bytes."""
    base = [
        b"From: <bench@example.org>",
        b"To: <rcpt0@example.com>",
        b"Subject: milterkit bench",
        b"Date: Fri, 27 Nov 2026 06:00:00 +0000",
        b"Message-ID: <bench@example.org>",
    ]
    extra = [b"X-Bench-%d: value %d" % (i, i) for i in range(max(0, config.headers - len(base)))]
    headers = (base + extra)[: config.headers]
    line = (b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq" * 2)[:76]
    lines = b"".join(line + b"\r\n" for _ in range(config.body_bytes // 78 + 1))
    body = lines[: config.body_bytes]
    recipients = [f"rcpt{i}@example.com" for i in range(config.rcpts)]
    return b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body, "bench@example.org", recipients


@dataclass(frozen=True)
class Plan:
    """Prebuilt bytes of one message: batches, each ending in a command that gets a reply."""

    batches: tuple[tuple[bytes, Command, str], ...]
    after: bytes  # the message's trailing packets, written after the EOM reply (Postfix's ABORT)


def make_plan(profile: MTAProfile, negotiated: Negotiated, config: BenchConfig) -> Plan:
    """Dry-run one message against an always-continue filter and keep the bytes."""
    session = MTASession(profile)
    reply = OptNeg(
        negotiated.version,
        negotiated.actions,
        negotiated.protocol,
        tuple((k, b" ".join(v)) for k, v in negotiated.macros.items()),
    )
    _dry_run(session.opening(), reply)
    message, sender, recipients = build_message(config)
    batches: list[tuple[bytes, Command, str]] = []
    run = session.message(message, sender, recipients)
    _dry_run(run, None, batches)
    return Plan(tuple(batches), run.trailing)


def _dry_run(
    exchange: Exchange,
    optneg: OptNeg | None,
    batches: list[tuple[bytes, Command, str]] | None = None,
) -> None:
    out = exchange.start()
    while not exchange.done:
        stage = exchange.stage
        if batches is not None:
            batches.append((out, _STAGE_COMMAND[stage], stage))
        answer = optneg if stage == "optneg" and optneg is not None else Continue()
        out = exchange.receive_data(answer.encode())


# ------------------------------------------------------------------ the driver


class _Worker:
    """One process's share of the load: ``conns`` connections and a message quota."""

    def __init__(self, config: BenchConfig, quota: int | None, progress: Any) -> None:
        self.config = config
        self.profile = PROFILES[config.profile]
        self.quota = quota
        self.deadline = time.monotonic() + config.duration if config.duration else math.inf
        self.report = WorkerReport()
        self.progress = progress
        self.plans: dict[tuple[int, int, int], Plan] = {}

    def take(self) -> bool:
        """Claim one message attempt; False once the run is over."""
        if time.monotonic() >= self.deadline:
            return False
        if self.quota is not None:
            if self.quota <= 0:
                return False
            self.quota -= 1
        return True

    async def run(self, conns: int, progress_to: TextIO | None = None) -> WorkerReport:
        ticker = asyncio.ensure_future(self.tick(progress_to)) if progress_to else None
        await asyncio.gather(*(self.connection_loop() for _ in range(conns)))
        if ticker is not None:
            ticker.cancel()
            print(file=progress_to)
        return self.report

    async def tick(self, stream: TextIO) -> None:
        """Live rate once per second (in-process runs; the parent does it otherwise)."""
        last = 0
        while True:
            await asyncio.sleep(1.0)
            done = self.report.messages
            print(f"\r{done} messages, {done - last} msg/s   ", end="", file=stream, flush=True)
            last = done

    async def connection_loop(self) -> None:
        while self.take():
            try:
                await self.one_connection()
            except (MilterError, ProtocolError, OSError) as exc:
                self.report.errors[_error_kind(exc)] += 1
                await asyncio.sleep(0.05)

    async def one_connection(self) -> None:
        config = self.config
        reader, writer = await open_stream(config.socket, config.timeout)
        try:
            session = MTASession(self.profile)
            await _exchange(session.opening(), reader, writer, config.timeout)
            assert session.negotiated is not None
            plan = self._plan(session.negotiated)
            for n in range(max(config.msgs_per_conn, 1)):
                if n and not self.take():
                    break
                await self.one_message(plan, session, reader, writer)
            writer.write(session.quit())
            with contextlib.suppress(OSError):
                await writer.drain()
        finally:
            writer.close()

    def _plan(self, negotiated: Negotiated) -> Plan:
        key = (negotiated.version, int(negotiated.actions), int(negotiated.protocol))
        if key not in self.plans:
            self.plans[key] = make_plan(self.profile, negotiated, self.config)
        return self.plans[key]

    async def one_message(
        self,
        plan: Plan,
        session: MTASession,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        conn = session.conn
        started = time.perf_counter()
        decision = Decision.CONTINUE
        skipping = ""
        for data, command, stage in plan.batches:
            if stage == skipping:
                continue
            writer.write(data)
            await writer.drain()
            conn.sent_encoded(command)
            reply = await _final_reply(conn, reader, self.config.timeout)
            if isinstance(reply, Skip):
                skipping = stage
            elif not isinstance(reply, Continue) and stage != "rcpt":
                decision = _final_decision(reply)
                writer.write(session.abort())
                break
        else:
            writer.write(plan.after)
        self.report.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        self.report.messages += 1
        self.report.decisions[decision] += 1
        if self.progress is not None:
            self.progress.value += 1


def _final_decision(reply: Message) -> Decision:
    """The message's decision, as ``milterkit check`` reports it: a REPLYCODE is a
    reject or tempfail by its code, and SHUTDOWN a tempfail."""
    decision = decision_of(reply)
    return Decision.TEMPFAIL if decision is Decision.SHUTDOWN else decision


async def _exchange(
    exchange: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> None:
    out = exchange.start()
    while True:
        writer.write(out)
        if exchange.done:
            return
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            raise ConnectionResetError("filter closed the connection")
        out = exchange.receive_data(data)


async def _final_reply(
    conn: MTAConnection, reader: asyncio.StreamReader, timeout: float
) -> Message:
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise ConnectionResetError("filter closed the connection")
            conn.receive_data(data)
            continue
        if not isinstance(event, Message):
            raise ConnectionResetError("filter closed the connection")
        if isinstance(event, Progress) or Reply(event.code) in REPLY_ACTION:
            continue
        return event


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, MilterTimeout | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, MilterError) and exc.stage == "connect":
        return "connect"
    return "connection"


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run_worker(
    config: BenchConfig,
    conns: int,
    quota: int | None,
    progress: Any,
    progress_to: TextIO | None = None,
) -> WorkerReport:
    """One process's load (also used inline when ``processes`` is 1)."""
    user0, sys0 = _cpu()
    started = time.monotonic()
    report = asyncio.run(_Worker(config, quota, progress).run(conns, progress_to))
    report.elapsed = time.monotonic() - started
    user1, sys1 = _cpu()
    report.cpu_user, report.cpu_sys = user1 - user0, sys1 - sys0
    return report


def _worker_main(
    config: BenchConfig, conns: int, quota: int | None, progress: Any, results: Any
) -> None:
    try:
        results.put(run_worker(config, conns, quota, progress))
    except BaseException as exc:  # report instead of dying silently
        report = WorkerReport()
        report.errors[f"worker: {exc!r}"] += 1
        results.put(report)


# --------------------------------------------------------------------- running


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def bench(config: BenchConfig, progress_to: TextIO | None = None) -> BenchReport:
    """Run the load and return the figures; ``progress_to`` gets a live rate per second."""
    processes = max(1, min(config.processes, config.conns))
    conns = _shares(config.conns, processes)
    quotas: list[int | None] = (
        list(_shares(config.messages, processes))
        if config.messages is not None
        else [None] * processes
    )
    if processes == 1:
        reports = [run_worker(config, conns[0], quotas[0], None, progress_to)]
    else:
        reports = _run_processes(config, conns, quotas, progress_to)
    # The slowest worker's own run time: process start-up is not load time.
    elapsed = max((r.elapsed for r in reports), default=0.0)
    return _summarise(config, reports, elapsed, processes)


def _run_processes(
    config: BenchConfig, conns: list[int], quotas: list[int | None], progress_to: TextIO | None
) -> list[WorkerReport]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    counters = [ctx.Value("q", 0, lock=False) for _ in conns]
    procs = [
        ctx.Process(target=_worker_main, args=(config, n, q, c, results), daemon=True)
        for n, q, c in zip(conns, quotas, counters, strict=True)
    ]
    for proc in procs:
        proc.start()
    reports: list[WorkerReport] = []
    last, last_time = 0, time.monotonic()
    while len(reports) < len(procs):
        with contextlib.suppress(Exception):
            reports.append(results.get(timeout=1.0))
            continue
        if progress_to is not None:
            done, now = sum(c.value for c in counters), time.monotonic()
            rate = (done - last) / (now - last_time)
            print(f"\r{done} messages, {rate:.0f} msg/s   ", end="", file=progress_to, flush=True)
            last, last_time = done, now
        if not any(p.is_alive() for p in procs) and results.empty():
            break
    for proc in procs:
        proc.join(5)
    if len(reports) < len(procs):
        died = WorkerReport()
        died.errors["worker died"] = len(procs) - len(reports)
        reports.append(died)
    if progress_to is not None:
        print(file=progress_to)
    return reports


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _summarise(
    config: BenchConfig, reports: list[WorkerReport], elapsed: float, processes: int
) -> BenchReport:
    latencies = sorted(x for r in reports for x in r.latencies_ms)
    errors: Counter[str] = Counter()
    decisions: Counter[Decision] = Counter()
    for r in reports:
        errors.update(r.errors)
        decisions.update(r.decisions)
    messages = sum(r.messages for r in reports)
    user = sum(r.cpu_user for r in reports)
    system = sum(r.cpu_sys for r in reports)
    return BenchReport(
        messages=messages,
        elapsed_s=round(elapsed, 3),
        messages_per_s=round(messages / elapsed, 1) if elapsed > 0 else 0.0,
        latency_ms={
            "p50": round(_percentile(latencies, 50), 3),
            "p90": round(_percentile(latencies, 90), 3),
            "p99": round(_percentile(latencies, 99), 3),
            "max": round(latencies[-1], 3) if latencies else 0.0,
        },
        errors=dict(errors),
        decisions={str(decision): count for decision, count in decisions.items()},
        driver_cpu_s=round(user + system, 3),
        driver_cpu_user_s=round(user, 3),
        driver_cpu_sys_s=round(system, 3),
        processes=processes,
        connections=config.conns,
    )


def render(report: BenchReport) -> str:
    lat = report.latency_ms
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report.errors.items())) or "none"
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(report.decisions.items())) or "none"
    return "\n".join(
        [
            f"messages     {report.messages} in {report.elapsed_s:.2f} s "
            f"({report.messages_per_s:.1f} msg/s)",
            f"latency ms   p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}"
            f"  max {lat['max']:.2f}",
            f"errors       {sum(report.errors.values())} ({errors})",
            f"decisions    {decisions}",
            f"driver cpu   {report.driver_cpu_s:.2f} s (user {report.driver_cpu_user_s:.2f} + "
            f"sys {report.driver_cpu_sys_s:.2f}) in {report.processes} process(es), "
            f"{report.connections} connection(s)",
        ]
    )


# ------------------------------------------------------------------ the command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="load-test a milter: messages/s, latency percentiles, errors",
        description="Drive --conns connections against the milter at --socket until "
        "--duration seconds or --messages messages are done.",
    )
    _add_options(parser)
    parser.set_defaults(func=run)
    return parser


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, metavar="ADDR")
    parser.add_argument("--conns", type=int, default=10, metavar="N")
    stop = parser.add_mutually_exclusive_group(required=True)
    stop.add_argument("--duration", type=float, metavar="S")
    stop.add_argument("--messages", type=int, metavar="M")
    parser.add_argument("--body-bytes", type=int, default=2000, metavar="B")
    parser.add_argument("--headers", type=int, default=10, metavar="H")
    parser.add_argument("--rcpts", type=int, default=1, metavar="R")
    parser.add_argument("--msgs-per-conn", type=int, default=10, metavar="K")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, metavar="P", help="1 = in-process"
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="postfix")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Execute ``milterkit bench``: 0 when every attempt succeeded, 1 with errors, 64 usage."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.conns < 1 or args.rcpts < 1 or args.processes < 1:
        print("milterkit bench: --conns, --rcpts and --processes must be >= 1", file=err)
        return 64
    config = BenchConfig(
        socket=args.socket,
        conns=args.conns,
        duration=args.duration,
        messages=args.messages,
        body_bytes=args.body_bytes,
        headers=args.headers,
        rcpts=args.rcpts,
        msgs_per_conn=args.msgs_per_conn,
        processes=args.processes,
        profile=args.profile,
        timeout=args.timeout,
    )
    report = bench(config, progress_to=err if err.isatty() else None)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report), file=out)
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m milterkit.cli.bench ...``."""
    parser = argparse.ArgumentParser(prog="milterkit bench")
    _add_options(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
