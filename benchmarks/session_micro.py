"""CPU per message of MilterSession alone: no sockets, no event loop.

Feeds the canonical milter (benchmarks/peers/milterkit_canonical.py) the
packets of one Postfix-like message, step by step as the load driver sends
them (MACRO + command per write: OPTNEG, CONNECT, HELO, MAIL, RCPT, DATA, 10
headers, EOH, body chunks, EOM, ABORT + QUIT), with a new session per message
as with one message per connection. Prints the median CPU microseconds per
message of several batches, or with --profile the top of a cProfile.

    python benchmarks/session_micro.py [--body BYTES] [--profile] [--observer noop|log]

``--observer`` measures the per-message record (runtime/observe.py): ``noop``
the record building alone, ``log`` also the info line, formatted as JSON and
written to a discarding stream, as the daemon does.
    PYTHONPATH=/other/checkout/src python benchmarks/session_micro.py   # A/B
"""

from __future__ import annotations

import cProfile
import io
import logging
import os
import pstats
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from milterkit_canonical import Canonical

from milterkit.runtime.jsonlog import JsonFormatter
from milterkit.runtime.observe import LogObserver, Observer
from milterkit.session import MilterSession

QID = ("i", "4Bench1234")
HEADER_NAMES = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "X-Mailer",
    "Received",
    "X-Spam-Level",
)


def packet(cmd: str, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", len(payload) + 1, ord(cmd)) + payload


def macro(stage: str, *pairs: str) -> bytes:
    return packet("D", stage.encode() + b"".join(p.encode() + b"\0" for p in pairs))


def message_steps(body_size: int) -> list[bytes]:
    """The writes of one connection carrying one message, as milterload sends them."""
    steps = [struct.pack(">IBIII", 13, ord("O"), 6, 0x1FF, 0x1FFFFF)]
    connect_macros = ("j", "mx.bench.test", "{daemon_name}", "bench", "v", "Postfix 3.7.11")
    steps.append(
        macro("C", *connect_macros)
        + packet("C", b"client.bench.test\0" + b"4\xc3\x50" + b"127.0.0.1\0")
    )
    steps.append(packet("H", b"client.bench.test\0"))
    mail = ("{mail_addr}", "sender@example.org", "{mail_host}", "example.org")
    steps.append(macro("M", *mail) + packet("M", b"<sender@example.org>\0SIZE=9000\0"))
    rcpt = ("{rcpt_addr}", "rcpt@example.com", "{rcpt_host}", "example.com")
    steps.append(macro("R", *rcpt) + packet("R", b"<rcpt0@example.com>\0"))
    steps.append(macro("T", *QID) + packet("T"))
    for number, name in enumerate(HEADER_NAMES):
        value = f"value of header number {number} for the benchmark"
        steps.append(macro("L", *QID) + packet("L", f"{name}\0{value}\0".encode()))
    steps.append(macro("N", *QID) + packet("N"))
    body = bytes(97 + i % 26 for i in range(body_size))
    for offset in range(0, body_size, 65535):
        steps.append(macro("B", *QID) + packet("B", body[offset : offset + 65535]))
    steps.append(macro("E", *QID) + packet("E"))
    steps.append(packet("A") + packet("Q"))
    return steps


OBSERVER: Observer | None = None


def make_observer(kind: str) -> Observer:
    if kind == "noop":
        return Observer()
    logger = logging.getLogger("milterkit.bench")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return LogObserver(logger)


def one_connection(steps: list[bytes]) -> list[bytes]:
    sent: list[bytes] = []
    session = MilterSession(Canonical, observer=OBSERVER)
    for step in steps:
        session.data_received(step)
        out = session.data_to_send()
        if out:
            sent.append(out)
    session.connection_lost()
    return sent


def batch_us(steps: list[bytes], messages: int) -> float:
    start = time.process_time()
    for _ in range(messages):
        one_connection(steps)
    return (time.process_time() - start) / messages * 1e6


def main(argv: list[str]) -> int:
    global OBSERVER
    body = int(argv[argv.index("--body") + 1]) if "--body" in argv else 8192
    if "--observer" in argv:
        OBSERVER = make_observer(argv[argv.index("--observer") + 1])
    steps = message_steps(body)
    replies = one_connection(steps)
    if not replies or not replies[-1].endswith(b"\x00\x00\x00\x01a"):
        print(f"unexpected replies: {replies[-1:]!r}", file=sys.stderr)
        return 1
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.runcall(batch_us, steps, 3000)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return 0
    runs = [batch_us(steps, 2000) for _ in range(5)]
    print(
        f"{statistics.median(runs):.1f} us CPU per message "
        f"(median of 5 x 2000; min {min(runs):.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
