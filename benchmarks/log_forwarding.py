"""What it costs a worker to log through the supervisor instead of into the file.

Workers no longer write the log file themselves (docs/reliability.md,
"Security"): each record is one datagram to the supervisor, which appends it
to the file. This prints records per second for a worker writing the file
directly (the old way) and for a forked worker forwarding to a supervisor
that drains in a select() loop (the new way), plus how many records the
forwarding worker dropped because the supervisor fell behind.

    python benchmarks/log_forwarding.py [--records 50000]
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import tempfile
import time
from pathlib import Path

from milterkit.runtime.logfile import ReopenableFileHandler
from milterkit.runtime.logforward import ForwardingHandler, LogForwarder
from milterkit.runtime.logsetup import OneLineFormatter

FORMAT = "%(asctime)s milterkit[%(process)d]: %(levelname)s %(message)s"


def direct(path: Path, records: int) -> float:
    """Records/s of one process appending to the file itself."""
    handler = ReopenableFileHandler(str(path))
    handler.setFormatter(OneLineFormatter(FORMAT))
    logger = _logger("bench.direct", handler)
    start = time.perf_counter()
    for number in range(records):
        logger.info("[w0-c%d] MAIL FROM <sender%d@example.org>", number, number)
    elapsed = time.perf_counter() - start
    handler.close()
    return records / elapsed


def forwarded(path: Path, records: int) -> tuple[float, int, int]:
    """Records/s of a forked worker forwarding; records written and dropped."""
    target = ReopenableFileHandler(str(path))
    target.setFormatter(OneLineFormatter(FORMAT))
    logger = _logger("bench.forwarded", target)
    forwarder = LogForwarder(target)
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(result_r)
        forwarder.in_worker(logger)
        start = time.perf_counter()
        for number in range(records):
            logger.info("[w0-c%d] MAIL FROM <sender%d@example.org>", number, number)
        elapsed = time.perf_counter() - start
        handler = next(h for h in logger.handlers if isinstance(h, ForwardingHandler))
        os.write(result_w, f"{elapsed} {handler.dropped_total}".encode())
        os._exit(0)
    os.close(result_w)
    with selectors.DefaultSelector() as selector:
        selector.register(forwarder.fileno(), selectors.EVENT_READ)
        selector.register(result_r, selectors.EVENT_READ)
        report = b""
        while not report:
            for key, _ in selector.select():
                if key.fd == result_r:
                    report = os.read(result_r, 100)
                else:
                    forwarder.drain()
    os.waitpid(pid, 0)
    forwarder.drain()
    forwarder.close()
    target.close()
    elapsed_text, dropped_text = report.decode().split()
    written = sum(1 for _ in path.open())
    return records / float(elapsed_text), written, int(dropped_text)


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        base = Path(name)
        own = direct(base / "direct.log", args.records)
        rate, written, dropped = forwarded(base / "forwarded.log", args.records)
    print(f"records: {args.records}")
    print(f"worker writes the file itself: {own:10.0f} records/s")
    print(f"worker forwards to supervisor: {rate:10.0f} records/s")
    print(f"  written by the supervisor: {written}, dropped (supervisor behind): {dropped}")
    assert written + dropped == args.records, "records lost without being counted"


if __name__ == "__main__":
    main()
