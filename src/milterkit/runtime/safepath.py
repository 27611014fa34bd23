"""Directories in which root may safely create files for a less trusted user.

The supervisor runs as root and creates the unix socket and the log file in
directories an operator names. If someone else can write to such a
directory -- typically the service user that owns ``/run/<svc>`` or
``/var/log/<svc>`` -- they can swap a name for a symbolic link between two of
root's system calls, and root's ``chown``/``chmod``/``open`` then lands on a
file of their choosing. Sendmail's safefile() and Postfix's set-up checks
answer this the same way we do here:

* the directory and every directory above it must belong to root or to us,
  and must not be writable by group or others (a sticky, world-writable
  ancestor such as ``/tmp`` is fine: nobody else can rename our entries in
  it, but the directory itself must not be shared);
* the walk from ``/`` opens each component with ``O_NOFOLLOW`` relative to its
  parent's descriptor and checks it with ``fstat``, so the checked directory is
  the one we hold, not whatever the path names a moment later;
* callers then work relative to the returned descriptor (``*at`` calls with
  ``AT_SYMLINK_NOFOLLOW``), never through the path again.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["describe_owner", "open_safe_directory", "unsafe_reason"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def describe_owner(uid: int) -> str:
    """``uid 1001 (spamtrap)`` for an error message."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def unsafe_reason(st: os.stat_result, *, is_ancestor: bool) -> str | None:
    """Why a directory with status ``st`` is unsafe for root's files, or None."""
    trusted = {0, os.geteuid()}
    if st.st_uid not in trusted:
        return f"is owned by {describe_owner(st.st_uid)}, not by root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (is_ancestor and st.st_mode & stat.S_ISVTX):
        who = (
            "group and others"
            if writable == (stat.S_IWGRP | stat.S_IWOTH)
            else ("its group" if writable == stat.S_IWGRP else "others")
        )
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_safe_directory(path: str, action: str) -> int:
    """Open directory ``path`` after checking it and all its ancestors.

    Returns a close-on-exec descriptor of the checked directory. ``action``
    starts the error message ("cannot create socket /run/x/x.sock").
    Symbolic links in ``path`` are resolved once, up front (``/var/run`` ->
    ``/run``); the walk itself refuses to follow any.
    """
    real = os.path.realpath(path)
    parts = [part for part in real.split("/") if part]
    fd = os.open("/", _DIR_FLAGS)
    walked = "/"
    try:
        _check(fd, walked, action, is_ancestor=bool(parts))
        for index, part in enumerate(parts):
            next_fd = _open_component(fd, part, path, action)
            os.close(fd)
            fd = next_fd
            walked = os.path.join(walked, part)
            _check(fd, walked, action, is_ancestor=index < len(parts) - 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_component(parent_fd: int, name: str, path: str, action: str) -> int:
    """Open one path component below ``parent_fd`` without following links."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            reason = "does not exist"
        elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "is not a directory (or was replaced while being checked)"
        else:
            reason = f"cannot be opened: {exc.strerror}"
        raise RuntimeConfigError(f"{action}: directory {path} {reason}") from exc


def _check(fd: int, walked: str, action: str, *, is_ancestor: bool) -> None:
    """Raise if the directory open as ``fd`` is not safe."""
    reason = unsafe_reason(os.fstat(fd), is_ancestor=is_ancestor)
    if reason is not None:
        raise RuntimeConfigError(
            f"{action}: directory {walked} {reason}; root refuses to work in a directory "
            "where another user could swap names for symlinks"
        )
