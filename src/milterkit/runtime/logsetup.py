"""Logging set-up for milter daemons, and escaping of untrusted values.

Everything is plain :mod:`logging` on the ``milterkit`` logger, so applications
can still attach their own handlers.  The process id is part of every record
format (not baked in at configuration time) because the supervisor forks
workers after logging is configured and each line must name its real sender.

Mail peers control many values we log (HELO names, addresses, header values).
Logged raw, a CR/LF would let them forge extra log lines and an ESC sequence
could attack the terminal of whoever reads the log; :func:`safe` escapes them.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from types import TracebackType
from typing import TypeAlias

from milterkit.protocol.text import escape_char
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.logfile import ReopenableFileHandler

__all__ = [
    "LOGGER_NAME",
    "OneLineFormatter",
    "ReopenableFileHandler",
    "as_continuation",
    "configure_logging",
    "reopen_logs",
    "safe",
]

_ExcInfo: TypeAlias = (
    "tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]"
)
LOGGER_NAME = "milterkit"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}


def configure_logging(
    destination: str,
    level: str | int = "info",
    *,
    syslog_address: str | tuple[str, int] = "/dev/log",
    facility: str = "mail",
    ident: str = "milterkit",
) -> logging.Logger:
    """Send the ``milterkit`` logger to one destination and return it.

    ``destination`` is ``"null"``, ``"console"`` (stderr), ``"syslog"`` or
    ``"file:/path"``.  Handlers from a previous call are closed and replaced,
    so calling this again (e.g. after reading a new configuration) is safe.
    If the syslog socket is missing we fall back to the console with a
    warning, rather than losing all messages.
    """
    logger = logging.getLogger(LOGGER_NAME)
    numeric_level = _parse_level(level)
    handler, warning = _make_handler(destination, syslog_address, facility, ident)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(numeric_level)
    logger.propagate = False
    if warning:
        logger.warning("%s", warning)
    return logger


def _parse_level(level: str | int) -> int:
    """Map a level name (case-insensitive) or number to a logging level."""
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise RuntimeConfigError(
            f"invalid log level {level!r}: expected one of {', '.join(_LEVELS)}"
        ) from None


class OneLineFormatter(logging.Formatter):
    """Escapes line breaks and control characters in the formatted message.

    The library passes peer-supplied values through :func:`safe`; this is the
    backstop for everything else (a milter's own ``self.log.info("%s", helo)``,
    an exception text quoting a header): one record is one line, whatever its
    arguments hold. Backslashes are left alone (``safe`` output stays readable).
    A traceback (``exc_info``, ``stack_info``) keeps its lines, but each is
    escaped the same way and indented (:func:`as_continuation`): the exception
    text often quotes peer data (``ValueError(f"bad HELO {name}")``), and an
    indented line can never pass for a record of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        message = record.message
        if not message.isprintable():
            record.message = "".join(
                char if char.isprintable() else _escape_char(char) for char in message
            )
        return super().formatMessage(record)

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 (logging API)
        return as_continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging API)
        return as_continuation(super().formatStack(stack_info))


#: How continuation lines (tracebacks) of a record start in the log.
CONTINUATION_INDENT = "    "


def as_continuation(text: str) -> str:
    """Escape non-printables in every line of ``text`` and indent each line.

    Only LF separates lines; a CR, ESC or Unicode line separator inside a line
    is shown escaped, so the result is exactly as many lines as it claims.
    """
    lines = text.split("\n")
    return "\n".join(
        CONTINUATION_INDENT
        + (line if line.isprintable() else "".join(_escape_char(char) for char in line))
        for line in lines
    )


def _text_format(ident: str) -> logging.Formatter:
    """Timestamped format used for console and file output."""
    name = ident.replace("%", "%%")
    return OneLineFormatter(f"%(asctime)s {name}[%(process)d]: %(levelname)s %(message)s")


def _make_handler(
    destination: str, syslog_address: str | tuple[str, int], facility: str, ident: str
) -> tuple[logging.Handler, str | None]:
    """Build the handler for ``destination`` plus an optional warning."""
    if destination == "null":
        return logging.NullHandler(), None
    if destination == "console":
        return _console_handler(ident), None
    if destination == "syslog":
        return _syslog_handler(syslog_address, facility, ident)
    if destination.startswith("file:") and len(destination) > len("file:"):
        return _file_handler(destination[len("file:") :], ident), None
    raise RuntimeConfigError(
        f"invalid log destination {destination!r}: expected null, console, syslog or file:/path"
    )


def _console_handler(ident: str) -> logging.Handler:
    """StreamHandler on the current stderr with the text format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_text_format(ident))
    return handler


def _file_handler(path: str, ident: str) -> logging.Handler:
    """Reopenable file handler; opening errors are configuration errors."""
    try:
        handler = ReopenableFileHandler(path)
    except OSError as exc:
        raise RuntimeConfigError(f"cannot open log file {path}: {exc.strerror}") from exc
    handler.setFormatter(_text_format(ident))
    return handler


def _syslog_handler(
    address: str | tuple[str, int], facility: str, ident: str
) -> tuple[logging.Handler, str | None]:
    """SysLogHandler, or a console handler plus warning if unreachable."""
    code = logging.handlers.SysLogHandler.facility_names.get(facility.lower())
    if code is None:
        raise RuntimeConfigError(f"invalid syslog facility {facility!r}")
    if isinstance(address, str) and not os.path.exists(address):
        return _console_handler(ident), (
            f"syslog socket {address} does not exist; logging to stderr instead"
        )
    try:
        handler = logging.handlers.SysLogHandler(address=address, facility=code)
    except OSError as exc:
        return _console_handler(ident), (
            f"cannot connect to syslog at {address}: {exc}; logging to stderr instead"
        )
    name = ident.replace("%", "%%")
    handler.setFormatter(OneLineFormatter(f"{name}[%(process)d]: %(message)s"))
    return handler, None


def reopen_logs() -> None:
    """Reopen file-based handlers of the ``milterkit`` logger (for SIGHUP)."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def safe(value: object, max_length: int | None = None) -> str:
    """Render a peer-supplied value so it cannot break or forge log lines.

    CR, LF, TAB, backslash and every non-printable character (controls,
    Unicode line separators, bidi overrides) are escaped Python-repr style
    (``\\r``, ``\\n``, ``\\x1b``, ``\\u2028``).  Bytes are escaped byte-wise so
    invalid UTF-8 stays visible.  Backslash itself is escaped so the output is
    unambiguous.  With ``max_length`` the result is truncated and marked.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = "".join(_escape_byte(byte) for byte in bytes(value))
    else:
        text = str(value)
        if not text.isprintable() or "\\" in text:
            text = "".join(_escape_char(char) for char in text)
    if max_length is not None and len(text) > max_length:
        return text[:max_length] + "...[truncated]"
    return text


def _escape_char(char: str) -> str:
    """Escape one character if it is not safely printable."""
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    return char if char.isprintable() else escape_char(char)


def _escape_byte(byte: int) -> str:
    """Escape one byte; printable ASCII passes through."""
    char = chr(byte)
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    if 0x20 <= byte < 0x7F:
        return char
    return f"\\x{byte:02x}"
