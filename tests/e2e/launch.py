"""Serve a milter class with the production daemon: ``python -m tests.e2e.launch``.

Used when ``python -m milterkit run`` is not usable on this checkout; it calls
:func:`milterkit.run` (the same code path the CLI takes), so the milter runs
exactly as in production: supervisor, one forked worker, asyncio server.

    python -m tests.e2e.launch tests.e2e.milters:E2EMilter inet:8891@127.0.0.1 \
        --error-decision reject --socket-mode 666
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import milterkit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.launch")
    parser.add_argument("target", metavar="MODULE:CLASS")
    parser.add_argument("socket", metavar="ADDR")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--error-decision", default="tempfail")
    parser.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o660)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    module_name, _, class_name = args.target.partition(":")
    milter_class = getattr(importlib.import_module(module_name), class_name)
    status: int = milterkit.run(
        milter_class,
        args.socket,
        workers=args.workers,
        error_decision=args.error_decision,
        socket_mode=args.socket_mode,
        log_level=args.log_level,
        drain_timeout=2.0,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
