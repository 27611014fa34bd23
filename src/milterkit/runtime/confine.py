"""What a worker leaves behind of the supervisor's world, and how it is named.

After the privilege drop a worker still carries things from root's start-up
that it has no use for and that an attacker who takes over a worker could
use: the current directory of the starting shell, root's environment (HOME,
SUDO_*, whatever secrets the shell exported), systemd's NOTIFY_SOCKET (with
``NotifyAccess=all`` a worker could claim to be the main process), and the
ability to gain privileges back through a setuid program.
:func:`confine_worker` removes them. :func:`set_process_name` makes
supervisor and workers tell apart in ``ps`` and ``top``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterable

from milterkit.runtime.privileges import resolve_user

__all__ = ["KEPT_ENVIRONMENT", "confine_worker", "set_no_new_privs", "set_process_name"]

#: Variables a worker that changed user keeps (besides ``--keep-env`` ones):
#: locale and time zone, which affect formatting, and the search PATH.
KEPT_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
#: Variables meant for the supervisor only, removed from every worker.
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID")
_PR_SET_NAME = 15
_PR_SET_NO_NEW_PRIVS = 38


def confine_worker(user: str | int | None, keep_env: Iterable[str] = ()) -> None:
    """Move to ``/``, trim the environment, forbid regaining privileges.

    With a ``user`` the environment is rebuilt from :data:`KEPT_ENVIRONMENT`,
    ``LC_*`` and ``keep_env``, and HOME, USER, LOGNAME and SHELL describe that
    user. Without one the worker runs as whoever started it and keeps that
    environment, less the supervisor-only variables.
    """
    os.chdir("/")
    for name in _SUPERVISOR_ONLY:
        os.environ.pop(name, None)
    if user is not None:
        _reset_environment(user, frozenset(keep_env))
    set_no_new_privs()


def _reset_environment(user: str | int, keep: frozenset[str]) -> None:
    """Keep only harmless and explicitly kept variables; describe ``user``."""
    account = resolve_user(user)
    for name in list(os.environ):
        if name not in keep and name not in KEPT_ENVIRONMENT and not name.startswith("LC_"):
            del os.environ[name]
    os.environ.update(
        HOME=account.pw_dir,
        USER=account.pw_name,
        LOGNAME=account.pw_name,
        SHELL=account.pw_shell or "/bin/sh",
    )


def _prctl(option: int, value: int | bytes) -> bool:
    """Call Linux prctl(2) through libc; False where it is missing or fails."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def set_no_new_privs() -> bool:
    """PR_SET_NO_NEW_PRIVS: execve() of a setuid program no longer grants its owner's rights."""
    return _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def set_process_name(short: str, title: str | None = None) -> None:
    """Name this process: ``short`` (15 bytes, ``ps -o comm``, ``top``) via prctl.

    With the optional ``setproctitle`` package (extra ``proctitle``) the whole
    command line shown by ``ps`` becomes ``title`` as well.
    """
    if title is not None:
        with contextlib.suppress(ImportError):
            import setproctitle  # type: ignore[import-not-found,unused-ignore]

            setproctitle.setproctitle(title)
    _prctl(_PR_SET_NAME, short.encode()[:15])  # after: setproctitle sets it to the title's start
