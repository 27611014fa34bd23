"""Soak: many messages through one worker with a mix of decisions, errors and aborts.

Short mode: 20 000 messages from the C driver; long mode (``MILTERKIT_LONG=1``):
1 000 000. Meanwhile a Python MTA aborts messages mid-way and hangs up inside
messages. The worker's RSS at the end must be within 10 % of its RSS after the
first 10 000 messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tests.hardening.conftest import (
    EOH,
    LONG,
    MAIL,
    RCPT,
    Daemon,
    Raw,
    frame,
    rss_kib,
    run_driver,
    scale,
)

WARMUP = 10_000


def abort_loop(daemon: Daemon, stop: threading.Event, counts: dict[str, int]) -> None:
    """Messages cut short: ABORT after the headers, or the MTA vanishing mid-body."""
    while not stop.is_set():
        raw = Raw(daemon.sockaddr, timeout=20)
        try:
            raw.hello()
            for i in range(20):
                raw.send(MAIL + RCPT + frame(b"L", b"Subject\x00abort me\x00") + EOH)
                for _ in range(4):
                    raw.final()
                if i % 5 == 4:
                    raw.send(frame(b"B", b"x" * 1000) + frame(b"B", b"y" * 10)[:8])
                    counts["vanished"] += 1
                    break  # hang up inside a packet, inside a message
                raw.send(frame(b"A"))
                counts["aborted"] += 1
        except (EOFError, OSError) as exc:
            counts["errors"] += 1
            counts.setdefault(f"last error: {exc}", 0)
        finally:
            raw.close()


def test_soak_rss_stays_flat(daemon_factory: Callable[..., Daemon], milterload: Path) -> None:
    daemon = daemon_factory("Mixed", "--log-level", "critical", workers=1)
    (worker,) = daemon.workers()
    total = scale(20_000, 1_000_000)

    first = run_driver(milterload, daemon, conns=8, messages=WARMUP, per_conn=10)
    assert first["errors"] == 0, first
    rss_warm = rss_kib(worker)

    stop = threading.Event()
    counts = {"aborted": 0, "vanished": 0, "errors": 0}
    aborter = threading.Thread(target=abort_loop, args=(daemon, stop, counts), daemon=True)
    aborter.start()
    try:
        rest = run_driver(
            milterload, daemon, conns=8, messages=total - WARMUP, per_conn=10, timeout=3600
        )
    finally:
        stop.set()
        aborter.join(30)
    rss_end = rss_kib(worker)
    assert daemon.workers() == [worker], "the worker was replaced during the soak"
    messages = int(first["messages"] + rest["messages"])
    print(
        f"soak{' [long]' if LONG else ''}: {messages} messages ({rest['msgs_per_s']:.0f} msg/s), "
        f"driver errors {int(first['errors'] + rest['errors'])}, "
        f"{counts['aborted']} aborted + {counts['vanished']} vanished mid-message, "
        f"abort-loop errors {counts['errors']}; "
        f"RSS after {WARMUP}: {rss_warm} KiB, at the end: {rss_end} KiB "
        f"({(rss_end - rss_warm) / rss_warm * 100:+.1f} %)"
    )
    assert rest["errors"] == 0, rest
    assert messages >= total
    assert counts["errors"] == 0, counts
    assert counts["aborted"] > 0 and counts["vanished"] > 0
    assert rss_end <= rss_warm * 1.10, (rss_warm, rss_end)
