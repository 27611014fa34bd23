"""Workers' records reach the supervisor's log file; a dead or busy supervisor never blocks."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.logfile import ReopenableFileHandler
from milterkit.runtime.logforward import (
    MAX_RECORD,
    ForwardingHandler,
    LogForwarder,
    sanitize_record,
)
from milterkit.runtime.logsetup import OneLineFormatter


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    yield receiver, sender
    receiver.close()
    sender.close()


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("milterkit", logging.INFO, __file__, 1, message, args, None)


def handler_on(sock: socket.socket) -> ForwardingHandler:
    handler = ForwardingHandler(sock)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    return handler


def test_one_datagram_per_record(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver, sender = pair
    handler = handler_on(sender)
    handler.emit(record("first %s", "x\ny"))
    handler.emit(record("second"))
    assert receiver.recv(65536) == b"INFO first x\\ny"
    assert receiver.recv(65536) == b"INFO second"


def test_dead_supervisor_means_stderr_not_a_hang(
    pair: tuple[socket.socket, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    receiver, sender = pair
    receiver.close()  # the supervisor died: its end is gone
    handler_on(sender).emit(record("still here"))
    assert capsys.readouterr().err == "INFO still here\n"


def test_full_queue_drops_and_counts(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver, sender = pair
    handler = handler_on(sender)
    sent = 0
    while not handler.dropped:  # fill the receiver's queue; never blocks
        handler.emit(record("filler %d", sent))
        sent += 1
    handler.emit(record("dropped too"))
    assert handler.dropped == 2
    receiver.setblocking(False)
    received = []
    while True:
        try:
            received.append(receiver.recv(65536))
        except BlockingIOError:
            break
    assert len(received) == sent - 1
    handler.emit(record("after"))
    assert receiver.recv(65536) == b"INFO after [2 earlier log records dropped: supervisor busy]"
    assert handler.dropped == 0


def test_long_record_is_cut(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver, sender = pair
    handler_on(sender).emit(record("x" * (2 * MAX_RECORD)))
    data = receiver.recv(4 * MAX_RECORD)
    assert len(data) == MAX_RECORD
    assert data.endswith(b" ...[record truncated]")


def test_supervisor_treats_records_as_untrusted() -> None:
    forged = b"INFO ok\n2026-01-01 00:00:00,000 milterkit[1]: INFO forged\x1b[31m\r\n    Traceback"
    assert sanitize_record(forged) == (
        "INFO ok\n    2026-01-01 00:00:00,000 milterkit[1]: INFO forged\\x1b[31m\\r\n    Traceback"
    )
    assert sanitize_record(b"one\x1bline") == "one\\x1bline"


def test_forwarder_end_to_end(tmp_path: Path) -> None:
    """Supervisor and one forked worker: the worker's records land in the file."""
    path = tmp_path / "m.log"
    target = ReopenableFileHandler(str(path))
    target.setFormatter(OneLineFormatter("%(process)d %(message)s"))
    logger = logging.getLogger("milterkit.test_forwarder")
    logger.propagate = False
    logger.addHandler(target)
    forwarder = LogForwarder(target)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            forwarder.in_worker(logger)
            logger.warning("from the worker %s", "a\rb")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    logger.warning("from the supervisor")
    forwarder.drain()
    forwarder.close()
    logger.removeHandler(target)
    target.close()
    assert path.read_text() == (f"{os.getpid()} from the supervisor\n{pid} from the worker a\\rb\n")


def test_log_file_mode_and_symlink(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    handler = ReopenableFileHandler(str(path))
    handler.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    (tmp_path / "link.log").symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(RuntimeConfigError, match=r"link\.log: it is a symbolic link"):
        ReopenableFileHandler(str(tmp_path / "link.log"))
    assert not (tmp_path / "elsewhere.log").exists()
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(RuntimeConfigError, match=r"fifo\.log: it is not a regular file"):
        ReopenableFileHandler(str(tmp_path / "fifo.log"))


def test_rotation_without_sighup_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    handler = ReopenableFileHandler(str(path))
    handler.write_line("one")
    path.rename(tmp_path / "m.log.1")
    handler.write_line("two")
    handler.close()
    assert (tmp_path / "m.log.1").read_text() == "one\n"
    assert path.read_text() == "two\n"
