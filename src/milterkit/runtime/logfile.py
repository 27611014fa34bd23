"""The log file: opened by root without following symlinks, reopened for logrotate.

Only the supervisor opens the file (workers send their records to it, see
:mod:`milterkit.runtime.logforward`). As root it must not be tricked into
creating or appending to another file, so the file's directory has to pass
:func:`~milterkit.runtime.safepath.open_safe_directory` and the file itself
is opened relative to that directory with ``O_NOFOLLOW``: a symbolic link at
the log's name is an error, never followed. New files get mode 0640 (mail
logs name senders and recipients).

The handler notices when the file was renamed or deleted (logrotate without
``copytruncate``) and reopens it at the next record; SIGHUP reopens it
unconditionally. Records are written with one ``write()`` each on an
``O_APPEND`` descriptor, unbuffered, so nothing sits in a buffer that a
forked child could write a second time.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.safepath import open_safe_directory

__all__ = ["LOG_FILE_MODE", "ReopenableFileHandler", "open_log_file"]

LOG_FILE_MODE = 0o640
_OPEN_FLAGS = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | os.O_NOFOLLOW
    | os.O_NOCTTY
    | os.O_NONBLOCK
    | os.O_CLOEXEC
)


def open_log_file(path: str) -> int:
    """Open ``path`` for appending (creating it 0640); return the descriptor."""
    action = f"cannot open log file {path}"
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = open_safe_directory(directory, action)
    try:
        fd = os.open(name, _OPEN_FLAGS, LOG_FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "it is a symbolic link"
        elif exc.errno == errno.ENXIO:  # a FIFO nobody reads (O_NONBLOCK: no hang)
            reason = "it is not a regular file"
        else:
            reason = exc.strerror or str(exc)
        raise RuntimeConfigError(f"{action}: {reason}") from exc
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RuntimeConfigError(f"{action}: it is not a regular file")
    os.set_blocking(fd, True)
    return fd


class ReopenableFileHandler(logging.Handler):
    """Appends formatted records to a log file that root opened safely."""

    def __init__(self, path: str, encoding: str = "utf-8") -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.encoding = encoding
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        """(Re)open the file; the old descriptor is closed only on success."""
        fd = open_log_file(self.path)
        st = os.fstat(fd)
        old, self._fd, self._identity = self._fd, fd, (st.st_dev, st.st_ino)
        if old >= 0:
            os.close(old)

    def emit(self, record: logging.LogRecord) -> None:
        """Never raise into the code that logs (a callback, the server): report and go on."""
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, text: str) -> None:
        """Append one record (already formatted) as one write()."""
        data = (text + "\n").encode(self.encoding, "backslashreplace")
        self.acquire()
        try:
            self._reopen_if_moved()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        finally:
            self.release()

    def _reopen_if_moved(self) -> None:
        """Follow a rotation: the name now denotes another file, or none."""
        try:
            st = os.lstat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current == self._identity:
            return
        try:
            self._open()
        except (RuntimeConfigError, OSError) as exc:
            self._identity = current  # keep the old file; do not retry on every record
            print(f"milterkit: {exc}; still writing to the previous file", file=sys.stderr)

    def reopen(self) -> None:
        """SIGHUP: reopen unconditionally (errors are the caller's to log)."""
        self.acquire()
        try:
            self._open()
        finally:
            self.release()

    def close(self) -> None:
        """Close the descriptor (also what a forked worker does with its copy)."""
        self.acquire()
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        finally:
            self.release()
        super().close()
