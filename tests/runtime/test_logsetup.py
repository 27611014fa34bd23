"""Tests for logging configuration, log reopening and value escaping."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.logsetup import (
    LOGGER_NAME,
    ReopenableFileHandler,
    configure_logging,
    reopen_logs,
    safe,
)


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """Leave the shared 'milterkit' logger as we found it."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_null_destination() -> None:
    logger = configure_logging("null")
    assert logger.name == "milterkit"
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    assert logger.propagate is False


def test_console_has_timestamp_pid_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure_logging("console", "debug", ident="mymilter")
    logging.getLogger("milterkit.sub").debug("hello %s", "world")
    err = capsys.readouterr().err
    assert f"mymilter[{os.getpid()}]: DEBUG hello world" in err
    assert err[:4].isdigit()  # asctime first
    assert logger.level == logging.DEBUG


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "WARNING")
    logger = logging.getLogger(LOGGER_NAME)
    logger.info("quiet")
    logger.warning("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert "loud" in err


def test_reconfigure_replaces_handlers() -> None:
    configure_logging("console")
    logger = configure_logging("null")
    assert len(logger.handlers) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("console", "verbose"), "invalid log level 'verbose'"),
        (("stdout",), "invalid log destination 'stdout'"),
        (("file:",), "invalid log destination 'file:'"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(RuntimeConfigError, match=message):
        configure_logging(*args)


def test_bad_facility() -> None:
    with pytest.raises(RuntimeConfigError, match="invalid syslog facility 'postoffice'"):
        configure_logging("syslog", facility="postoffice")


def test_syslog_to_real_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        logger = configure_logging("syslog", syslog_address=path, facility="mail", ident="mk")
        logger.info("started %s", "ok")
        data = server.recv(4096)
    # mail (2) * 8 + info (6) = 22
    assert data == f"<22>mk[{os.getpid()}]: started ok\x00".encode()


def test_syslog_missing_falls_back_to_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-log"
    logger = configure_logging("syslog", syslog_address=str(missing))
    logger.error("after fallback")
    err = capsys.readouterr().err
    assert f"syslog socket {missing} does not exist; logging to stderr instead" in err
    assert "after fallback" in err
    assert isinstance(logger.handlers[0], logging.StreamHandler)


def test_file_destination_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "milter.log"
    logger = configure_logging(f"file:{path}")
    assert isinstance(logger.handlers[0], ReopenableFileHandler)
    logger.info("one")
    os.rename(path, tmp_path / "milter.log.1")
    reopen_logs()  # what the SIGHUP handler calls after logrotate
    logger.info("two")
    assert "one" in (tmp_path / "milter.log.1").read_text()
    content = path.read_text()
    assert "two" in content
    assert "one" not in content


def test_reopen_recreates_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "milter.log"
    logger = configure_logging(f"file:{path}")
    path.unlink()
    reopen_logs()
    logger.warning("again")
    assert "WARNING again" in path.read_text()


def test_file_destination_unwritable(tmp_path: Path) -> None:
    with pytest.raises(RuntimeConfigError, match="cannot open log file"):
        configure_logging(f"file:{tmp_path}/missing/milter.log")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("evil\r\nFAKE: line", "evil\\r\\nFAKE: line"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85", "c1\\x85"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bidi\u202e", "bidi\\u202e"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("caf\u00e9 \u00fc", "caf\u00e9 \u00fc"),
        (b"raw\r\n\xff", "raw\\r\\n\\xff"),
        ("decoded \udcff", "decoded \\xff"),  # invalid UTF-8 kept by text(): the byte, as above
        (bytearray(b"\x1b"), "\\x1b"),
        (42, "42"),
        (None, "None"),
    ],
)
def test_safe_escapes(value: object, expected: str) -> None:
    assert safe(value) == expected


def test_safe_truncates() -> None:
    assert safe("abcdef", max_length=3) == "abc...[truncated]"
    assert safe("abc", max_length=3) == "abc"


def test_safe_value_cannot_forge_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure_logging("console")
    logger.info("HELO %s", safe("x\nMAIL FROM:<forged>"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1
