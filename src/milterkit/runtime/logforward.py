"""Workers' log records travel to the supervisor, which alone writes the log file.

Why: a worker runs as the unprivileged service user. If it held the
root-owned log file open, a compromised worker could truncate or rewrite it;
if it reopened the file itself after logrotate's SIGHUP, it would lack the
permission to and lose every later record. So the file belongs to the
supervisor (as Postfix's postlogd owns its log), and each worker sends its
formatted records over a ``SOCK_DGRAM`` socket pair created before the fork:

* one datagram is one record, delivered whole or not at all, so records of
  different workers never interleave and no framing is needed;
* the worker's end is non-blocking: when the supervisor's queue is full the
  worker waits at most :data:`FULL_QUEUE_WAIT_MS` for room, then drops the
  record and counts it (the count is reported with the next record that gets
  through) rather than stalling mail; when the supervisor is gone, the send
  fails at once and the worker writes to its stderr instead;
* the supervisor reads in its existing select() loop (no thread) and treats
  the text as untrusted: control characters are escaped and every line after
  the first is indented, so a compromised worker cannot forge other records'
  lines (it can still write misleading records of its own).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys

from milterkit.runtime.logfile import ReopenableFileHandler
from milterkit.runtime.logsetup import CONTINUATION_INDENT, as_continuation, safe

__all__ = ["FULL_QUEUE_WAIT_MS", "MAX_RECORD", "ForwardingHandler", "LogForwarder"]

#: Longest record a worker sends (bytes of UTF-8); longer ones are cut and
#: marked. Well below the default socket buffer, which bounds a datagram.
MAX_RECORD = 65536
_TRUNCATED = " ...[record truncated]"
#: How long a worker waits for room when the supervisor's queue is full before
#: it drops the record: long enough to ride out a burst, short enough that a
#: stopped supervisor does not noticeably slow down mail.
FULL_QUEUE_WAIT_MS = 10


class ForwardingHandler(logging.Handler):
    """Worker side: format locally, send one datagram per record, never block."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.dropped = 0  # since the last record that got through (reported with it)
        self.dropped_total = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self.dropped:
            text += f" [{self.dropped} earlier log records dropped: supervisor busy]"
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > MAX_RECORD:
            data = data[: MAX_RECORD - len(_TRUNCATED)] + _TRUNCATED.encode()
        try:
            self._send(data)
        except BlockingIOError:
            self.dropped += 1
            self.dropped_total += 1
            return
        except OSError:
            self._to_stderr(text)
            return
        self.dropped = 0

    def _send(self, data: bytes) -> None:
        """Send; if the supervisor's queue is full, give it a moment, then give up."""
        try:
            self._sock.send(data)
        except BlockingIOError:
            poller = select.poll()
            poller.register(self._sock, select.POLLOUT)
            if not poller.poll(FULL_QUEUE_WAIT_MS):
                raise
            self._sock.send(data)

    @staticmethod
    def _to_stderr(text: str) -> None:
        """The supervisor is gone: the worker's stderr is all that is left."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        self._sock.close()
        super().close()


class LogForwarder:
    """The socket pair between the supervisor's file handler and the workers."""

    def __init__(self, target: ReopenableFileHandler) -> None:
        self._target = target
        self._receiver, self._sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._receiver.setblocking(False)
        self._sender.setblocking(False)

    def fileno(self) -> int:
        """The supervisor's end, for its selector."""
        return self._receiver.fileno()

    def drain(self) -> None:
        """Supervisor: write every record that is waiting, then return."""
        while True:
            try:
                data = self._receiver.recv(MAX_RECORD + 1024)
            except BlockingIOError:
                return
            self._target.write_line(sanitize_record(data))

    def in_worker(self, logger: logging.Logger) -> None:
        """Worker, right after fork: drop the file, log through the socket."""
        self._receiver.close()
        handler = ForwardingHandler(self._sender)
        handler.setFormatter(self._target.formatter)
        handler.setLevel(self._target.level)
        logger.removeHandler(self._target)
        self._target.close()
        logger.addHandler(handler)

    def close(self) -> None:
        """Supervisor, at exit."""
        self._receiver.close()
        self._sender.close()


def sanitize_record(data: bytes) -> str:
    """One received datagram as exactly one record: first line, then indented ones."""
    first, _, rest = data.decode("utf-8", "replace").partition("\n")
    line = safe(first) if not first.isprintable() else first
    if not rest:
        return line
    return line + "\n" + as_continuation(_dedent(rest))


def _dedent(text: str) -> str:
    """Undo the worker formatter's indentation, so it is not applied twice."""
    size = len(CONTINUATION_INDENT)
    return "\n".join(
        part[size:] if part.startswith(CONTINUATION_INDENT) else part for part in text.split("\n")
    )
