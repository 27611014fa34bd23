"""Instructions per message of MilterSession, counted by valgrind: an A/B that noise cannot move.

CPU time on this shared 2-core machine moves by 10-30 % from one minute to
the next, and by a factor of two between days, so a per-packet change of a
few per cent cannot be seen in ``session_micro.py``'s microseconds. The
number of machine instructions the interpreter executes for the same work
does not depend on the neighbours: this script counts them with
``valgrind --tool=callgrind`` for each source tree given, running that
tree's own ``benchmarks/session_micro.py`` connection (one Postfix-like
message per connection, the canonical milter) ``--small`` and ``--large``
times and dividing the difference by the extra messages, so interpreter
start-up and imports cancel out.

    python benchmarks/instructions.py                       # this checkout
    python benchmarks/instructions.py --tree /tmp/old --tree .   # A/B, in that order
    python benchmarks/instructions.py --python benchmarks/build/.venv-compiled/bin/python

``--worker`` counts a whole serving process instead: the tree's canonical
milter served by ``milterkit.run()`` in-process (``--workers 0``, uvloop) under
valgrind, driven over loopback by the C load driver (``benchmarks/driver``, 8
connections, one message each) for two durations, and the difference divided
by the extra messages: the session plus the server, the event loop and the
accept path, all user-space instructions (the kernel's are not counted).
``--bare`` does the same for the bare uvloop ceiling (``peers/bare_milter.py``),
the floor the same traffic costs without milterkit. Both take a few minutes.

    python benchmarks/instructions.py --worker [--tree ...]
    python benchmarks/instructions.py --bare

A tree is a milterkit checkout (its ``src`` goes first on ``PYTHONPATH``;
``MILTERKIT_PURE=1`` unless ``--compiled``, which takes the interpreter's
installed build instead). Needs valgrind (Debian: ``apt-get install
valgrind``). Instructions are not time: a C call and a Python call of the same
count cost differently, and cache misses are not counted. Use it to compare
two versions of the same code, and time to state speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from compare import DRIVER, build_driver

REPO = Path(__file__).resolve().parent.parent

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def runner_source(tree: Path, messages: int) -> str:
    """A script that runs ``messages`` connections of ``tree``'s session_micro."""
    bench = tree / "benchmarks"
    return (
        "import sys\n"
        "sys.argv = ['session_micro']\n"
        f"sys.path.insert(0, {str(bench)!r})\n"
        "import session_micro as sm\n"
        "steps = sm.message_steps(8192)\n"
        f"for _ in range({messages}):\n"
        "    sm.one_connection(steps)\n"
    )


def count(python: str, tree: Path, messages: int, *, compiled: bool) -> int:
    """Instructions valgrind counted for one interpreter run of ``messages`` connections."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if not compiled:
        env["PYTHONPATH"] = str(tree / "src")
        env["MILTERKIT_PURE"] = "1"
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            python,
            "-c",
            runner_source(tree, messages),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        timeout=1800,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, server: subprocess.Popen[str], timeout: float) -> None:
    """Until the server (slow to start under valgrind) accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before listening")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def count_serving(
    python: str, tree: Path, seconds: float, *, compiled: bool, bare: bool
) -> tuple[int, int]:
    """(instructions, messages) of one valgrind-run server driven for ``seconds``."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if not compiled:
        env["PYTHONPATH"] = str(tree / "src")
        env["MILTERKIT_PURE"] = "1"
    port = free_port()
    peers = tree / "benchmarks" / "peers"
    if bare:
        script = [str(peers / "bare_milter.py"), str(port), "uvloop"]
    else:
        script = [str(peers / "milterkit_canonical.py"), str(port), "--workers", "0"]
        script += ["--loop", "uvloop"]
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python]
    server = subprocess.Popen(
        [*valgrind, *script], stderr=subprocess.PIPE, text=True, env=env, cwd=tree
    )
    try:
        wait_listening(port, server, 300)
        driver = [str(DRIVER), "127.0.0.1", str(port), "8", str(seconds), "0", "8192"]
        done = subprocess.run(
            [*driver, "10", "1", "1"], capture_output=True, text=True, timeout=seconds + 120
        )
        if done.returncode != 0:
            raise RuntimeError(f"load driver failed ({done.returncode}): {done.stderr}")
        messages = int(json.loads(done.stdout)["messages"])
        server.send_signal(signal.SIGINT if bare else signal.SIGTERM)
        _, stderr = server.communicate(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    found = _COLLECTED.search(stderr)
    if found is None:
        raise RuntimeError(f"valgrind gave no count:\n{stderr[-2000:]}")
    return int(found.group(1)), messages


def per_served_message(python: str, tree: Path, args: argparse.Namespace) -> float:
    short, long_ = (
        count_serving(python, tree, seconds, compiled=args.compiled, bare=args.bare)
        for seconds in args.seconds
    )
    if long_[1] <= short[1]:
        raise RuntimeError(f"no more messages in the longer run ({short[1]}, {long_[1]})")
    return (long_[0] - short[0]) / (long_[1] - short[1])


def per_message(python: str, tree: Path, small: int, large: int, *, compiled: bool) -> float:
    # a first run writes the tree's .pyc files, which would count in one run only
    count(python, tree, 1, compiled=compiled)
    low = count(python, tree, small, compiled=compiled)
    high = count(python, tree, large, compiled=compiled)
    return (high - low) / (large - small)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", help="a checkout (repeatable)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run")
    parser.add_argument("--compiled", action="store_true", help="use the installed build")
    parser.add_argument("--small", type=int, default=100, help="connections of the short run")
    parser.add_argument("--large", type=int, default=400, help="connections of the long run")
    parser.add_argument("--worker", action="store_true", help="count a whole serving process")
    parser.add_argument("--bare", action="store_true", help="count the bare uvloop ceiling")
    parser.add_argument(
        "--seconds",
        type=float,
        nargs=2,
        default=(4.0, 16.0),
        help="--worker/--bare: the two load durations (4 16)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds[0] < args.seconds[1]:
        parser.error("--seconds: two durations, the second longer")
    if args.large <= args.small or args.small < 1:
        parser.error("--large must be above --small, and --small at least 1")
    args.tree = [tree.resolve() for tree in (args.tree or [REPO])]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    what = "bare uvloop ceiling" if args.bare else "serving process" if args.worker else "session"
    first: float | None = None
    for tree in args.tree:
        if not (tree / "benchmarks" / "session_micro.py").is_file():
            print(f"{tree}: no benchmarks/session_micro.py there", file=sys.stderr)
            return 2
        if args.worker or args.bare:
            build_driver()
            value = per_served_message(args.python, tree, args)
        else:
            value = per_message(args.python, tree, args.small, args.large, compiled=args.compiled)
        ratio = "" if first is None else f"  ({value / first:.3f}x the first)"
        first = value if first is None else first
        print(f"{tree}: {value:,.0f} instructions per message ({what}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
