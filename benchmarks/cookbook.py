"""Figures of the cookbook filters under load: ``milterkit bench`` against each one.

Each filter runs as its daemon (``python -m milterkit.contrib.NAME``) with
the real service it talks to, started privately as the tests do (clamd with
the EICAR-only database, spamd with Debian's rules and no network tests,
redis-server without persistence). The load is ``milterkit bench``:
Postfix-like sessions, one message per connection, 10 headers, 8 KiB body.

    python benchmarks/cookbook.py                      # all filters, 1 and 8 connections
    python benchmarks/cookbook.py --only clamav,dkim --duration 10 --workers 2

Prints a Markdown table (the one in docs/cookbook.md). Run it from the
repository root with the dev virtualenv; clamd/spamd/redis-server must be
installed (scripts/install-system-deps).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cookbook._services import clamd_server, redis_server, spamd_server  # noqa: E402
from tests.cookbook.conftest import _make_key  # noqa: E402
from tests.e2e.harness import MilterAddress, MilterProcess  # noqa: E402

FILTERS = ("dkim", "attachments", "greylist-sqlite", "greylist-redis", "clamav", "spamassassin")


@contextlib.contextmanager
def filter_options(name: str, scratch: Path) -> Iterator[tuple[str, list[str]]]:
    """(contrib module, its options) for ``name``, with its service running."""
    if name == "dkim":
        key = _make_key(scratch, "bench")
        yield "dkim", ["--key", f"example.org:bench:{key.path}"]
    elif name == "attachments":
        yield "attachments", ["--reject-extension", "exe,scr", "--strip-extension", "js"]
    elif name == "greylist-sqlite":
        yield "greylist", ["--store", f"sqlite:{scratch / 'greylist.db'}", "--delay", "0"]
    elif name == "greylist-redis":
        with redis_server() as (url, _):
            yield "greylist", ["--store", url, "--delay", "0"]
    elif name == "clamav":
        with clamd_server() as (sock, _):
            yield "clamav", ["--clamd", f"unix:{sock}"]
    elif name == "spamassassin":
        with spamd_server() as (port, _):
            yield "spamassassin", ["--spamd", f"inet:{port}@127.0.0.1"]
    else:
        raise SystemExit(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")


def bench(address: str, conns: int, duration: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "milterkit", "bench", "--socket", address, "--conns", str(conns),
         "--duration", str(duration), "--body-bytes", "8192", "--headers", "10", "--json"],
        capture_output=True, check=True, timeout=duration + 120, cwd=REPO,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def row(name: str, conns: int, report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    decisions = ", ".join(f"{k} {v}" for k, v in report["decisions"].items())
    errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "0"
    return (
        f"| {name} | {conns} | {report['messages_per_s']} | {lat['p50']:.1f} | "
        f"{lat['p99']:.1f} | {decisions} | {errors} |"
    )


def serve_and_bench(name: str, conns: Sequence[int], duration: float, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="milterkit-cookbench-") as tmp:
        scratch = Path(tmp)
        scratch.chmod(0o755)
        with filter_options(name, scratch) as (module, options):
            address = MilterAddress.new("inet")
            argv = [
                "-m", f"milterkit.contrib.{module}", "--socket", address.milterkit,
                "--workers", str(workers), "--log-level", "warning", *options,
            ]  # fmt: skip
            with MilterProcess(module, address, script=argv) as milter:
                bench(milter.address.milterkit, 1, 1)  # warm-up
                for n in conns:
                    print(row(name, n, bench(milter.address.milterkit, n, duration)), flush=True)


def run(names: Sequence[str], conns: Sequence[int], duration: float, workers: int) -> None:
    print(
        f"Load: milterkit bench, {duration:g} s per cell, 8 KiB body, 10 headers, 1 recipient, "
        f"1 message per connection; filter daemon with {workers} worker(s).\n"
    )
    print("| filter | conns | msgs/s | p50 ms | p99 ms | decisions | errors |")
    print("|---|--:|--:|--:|--:|---|---|")
    for name in names:
        serve_and_bench(name, conns, duration, workers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(FILTERS), help="comma-separated filters")
    parser.add_argument("--conns", default="1,8", help="comma-separated connection counts")
    parser.add_argument("--duration", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    run(names, [int(c) for c in args.conns.split(",")], args.duration, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
