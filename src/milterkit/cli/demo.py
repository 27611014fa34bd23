"""``milterkit demo``: a real daemon, a real client, three messages, then a clean stop.

It starts ``milterkit run milterkit.demo:DemoMilter`` on a unix socket in a
temporary directory (a subprocess, exactly as an administrator would run
it), sends three messages through it with :mod:`milterkit.client`, prints
what the MTA would do with each, and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from milterkit.cli.check import render
from milterkit.client import MilterClient, MilterError

MESSAGES: list[tuple[str, str, list[str], bytes]] = [
    (
        "an ordinary message",
        "<alice@example.org>",
        ["<bob@example.net>"],
        b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: lunch?\r\n\r\n"
        b"Noon at the usual place?\r\n",
    ),
    (
        "a known spammer, one recipient unknown",
        "<spameri@tiscali.it>",
        ["<nobody@example.net>", "<bob@example.net>"],
        b"From: spameri@tiscali.it\r\nTo: bob@example.net\r\nSubject: easy money\r\n\r\n"
        b"Click here.\r\n",
    ),
    (
        "money mentioned by a regular sender",
        "<carol@example.org>",
        ["<bob@example.net>"],
        b"From: carol@example.org\r\nTo: bob@example.net\r\nSubject: the money you lent me\r\n"
        b"\r\nThanks, I will pay you back on Friday.\r\n",
    ),
]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="start an example milter, run three messages through it, stop it"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each step")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="milterkit-demo-") as tmp:
        socket_path = Path(tmp) / "demo.sock"
        address = f"unix:{socket_path}"
        daemon = _start_daemon(address, Path(tmp) / "daemon.log")
        try:
            _wait_for_socket(socket_path, daemon, args.timeout)
            out.write(f"demo milter (milterkit.demo:DemoMilter) listening on {address}\n\n")
            status = _send_messages(address, args.timeout, out)
        finally:
            _stop_daemon(daemon, args.timeout, out)
        out.write("\ndaemon log:\n" + (Path(tmp) / "daemon.log").read_text())
    return status


def _start_daemon(address: str, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "milterkit", "run", "milterkit.demo:DemoMilter",
        "--socket", address, "--workers", "1", "--log", "console", "--socket-mode", "0600",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_socket(path: Path, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if daemon.poll() is not None:
            raise SystemExit(f"milterkit demo: the daemon exited with status {daemon.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"milterkit demo: no socket at {path} after {timeout}s")
        time.sleep(0.05)


def _send_messages(address: str, timeout: float, out: TextIO) -> int:
    try:
        with MilterClient(address, timeout=timeout) as client:
            for title, sender, recipients, message in MESSAGES:
                result = client.check(message, sender=sender, recipients=recipients)
                out.write(f"=== {title}\n{render(result, address)}\n")
                delivered = result.apply(message)
                if delivered.delivered:
                    where = "held in quarantine" if delivered.held else "as delivered"
                    out.write(f"--- {where}:\n")
                    out.write(delivered.message_bytes.decode("utf-8", "replace") + "\n")
    except MilterError as exc:
        out.write(f"milterkit demo: {exc}\n")
        return 69
    return 0


def _stop_daemon(daemon: subprocess.Popen[bytes], timeout: float, out: TextIO) -> None:
    if daemon.poll() is None:
        os.kill(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    out.write(f"\ndaemon stopped with SIGTERM, exit status {daemon.returncode}\n")
