"""Security: socket permissions without a window, privilege drop, symlinks, log injection."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from milterkit.client import MilterClient
from milterkit.runtime.address import UnixAddress
from milterkit.runtime.logsetup import OneLineFormatter
from milterkit.runtime.sockets import open_listener, remove_unix_socket
from tests.hardening.conftest import (
    MESSAGE,
    OPTNEG_V6,
    RCPT,
    Daemon,
    Raw,
    frame,
    proc_ids,
    scale,
    wait_for,
)

ROOT = os.geteuid() == 0


# ------------------------------------------------------------ socket mode


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_unix_socket_never_visible_with_another_mode(tmp_path: Path, mode: int) -> None:
    """A thread stat()s the path in a tight loop while the listener is created.

    The implementation binds inside a fresh 0700 directory, chmods, listens and
    only then rename()s the socket onto the path, so the path goes from absent
    straight to the final mode. Every observation must be "absent" or ``mode``.
    """
    path = str(tmp_path / "m.sock")
    seen: set[int] = set()
    observations = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            observations[0] += 1
            seen.add(stat.S_IMODE(st.st_mode))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    old_umask = os.umask(0o000)  # the most permissive umask: bind() alone would give 0777
    try:
        for _ in range(scale(100, 2000)):
            sock = open_listener(UnixAddress(path), mode=mode)
            sock.close()
            assert remove_unix_socket(path)
    finally:
        os.umask(old_umask)
        stop.set()
        watcher.join(5)
    assert observations[0] > 0, "the watcher never saw the socket; the check proved nothing"
    assert seen == {mode}, {oct(m) for m in seen}


# ---------------------------------------------------------- privileges


@pytest.mark.skipif(not ROOT, reason="needs root to drop privileges")
def test_workers_run_as_nobody(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("Hardened", "--user", "nobody", inet=True)
    nobody = 65534
    for pid in daemon.workers():
        # A worker is listed from its fork on; it drops privileges right after.
        wait_for(lambda pid=pid: proc_ids(pid)["Uid"][0] != 0, 10)
        ids = proc_ids(pid)
        assert ids["Uid"] == [nobody] * 4, ids  # real, effective, saved, filesystem
        assert ids["Gid"] == [nobody] * 4, ids
        assert ids["Groups"] in ([nobody], []), ids
    assert proc_ids(daemon.proc.pid)["Uid"][0] == 0  # the supervisor keeps its identity
    with MilterClient(daemon.address, timeout=10) as client:
        result = client.check(MESSAGE, sender="<a@example.org>", recipients=["<b@example.net>"])
    assert result.decision == "accept"


# ------------------------------------------------------------- symlinks


@pytest.mark.parametrize("dangling", [False, True])
def test_pid_file_symlink_refused(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "elsewhere"
    if not dangling:
        target.write_text("precious\n")
    link = tmp_path / "milter.pid"
    link.symlink_to(target)
    daemon = Daemon(tmp_path, "Hardened", "--workers", "0", "--pid-file", str(link), inet=True)
    try:
        assert daemon.proc.wait(15) == 78
    finally:
        daemon.stop()
    assert "symlink" in daemon.log() + daemon.output()
    assert link.is_symlink()
    if not dangling:
        assert target.read_text() == "precious\n"
    else:
        assert not target.exists()


@pytest.mark.parametrize("dangling", [False, True])
def test_socket_path_symlink_refused(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "elsewhere"
    if not dangling:
        target.write_text("precious\n")
    link = tmp_path / "milter.sock"
    link.symlink_to(target)
    daemon = Daemon(tmp_path, "Hardened", "--workers", "0", inet=False)
    try:
        assert daemon.proc.wait(15) == 78
    finally:
        daemon.stop()
    assert "symbolic link" in daemon.log() + daemon.output()
    assert link.is_symlink()
    if not dangling:
        assert target.read_text() == "precious\n"


# ----------------------------------------------------------- log injection

EVIL_HELO = b"evil.example\r\nFAKE LOG LINE: root logged in\x1b[31m"
EVIL_SENDER = b"<%s%n{0}%(x)s@evil.example>\nFAKE2"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} milterkit\[\d+\]: [A-Z]+ ")


def test_peer_values_cannot_forge_log_lines(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("Hardened", workers=1)
    raw = Raw(daemon.sockaddr)
    raw.send(OPTNEG_V6)
    raw.reply()
    raw.send(frame(b"C", b"h\x004\x00\x19127.0.0.1\x00"))
    raw.final()
    raw.send(frame(b"H", EVIL_HELO + b"\x00"))
    raw.final()
    raw.send(frame(b"M", EVIL_SENDER + b"\x00"))
    raw.final()
    raw.send(RCPT)
    raw.final()
    # a protocol error that quotes peer bytes
    raw.send(frame(b"D", b"C\r\nFAKE3 macro"))
    assert raw.closed_within(5)
    raw.close()
    raw = Raw(daemon.sockaddr)
    raw.send(b"\x00\x00\x00\x08\r\nFAKE4!")  # command byte CR, payload LF...
    assert raw.closed_within(5)
    raw.close()
    assert wait_for(lambda: "FAKE3" in daemon.log() and "MAIL FROM" in daemon.log(), 5)
    log = daemon.log()
    for line in log.splitlines():
        assert LINE.match(line), f"a line that is not a log record: {line!r}"
        assert "\x1b" not in line
    assert "FAKE LOG LINE" in log  # present, but escaped inside its record
    assert "evil.example\\r\\nFAKE LOG LINE: root logged in\\x1b[31m" in log
    assert "<%s%n{0}%(x)s@evil.example>\\nFAKE2" in log  # no format string interpretation


def test_formatter_escapes_controls_but_keeps_tracebacks() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "a %s b", ("x\r\ny\x00",), None)
    assert formatter.format(record) == "INFO a x\\r\\ny\\x00 b"
    try:
        raise ValueError("boom\nline")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("ERROR failed\n    Traceback")  # continuation lines are indented
    assert text.endswith("\n    ValueError: boom\n    line")
