"""Resolving users/groups and permanently dropping root privileges.

A milter parses untrusted mail, so after binding privileged resources (a port
below 1024, a socket in a root-owned directory, the PID file) it should run as
an unprivileged account.  The drop must be *permanent*: real, effective, saved
and filesystem ids all change, supplementary groups are replaced by the target
user's, and we verify afterwards -- through both the libc view and the
kernel's ``/proc/self/status`` -- that root cannot be regained.  A silent
partial drop would be worse than an error, so any mismatch raises.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["drop_privileges", "resolve_group", "resolve_user"]

_PROC_STATUS = Path("/proc/self/status")


def _as_id(value: str | int, kind: str) -> int | None:
    """Return the numeric id if ``value`` is one, None if it is a name."""
    if isinstance(value, int):
        if value < 0:
            raise RuntimeConfigError(f"invalid {kind} id {value}: negative")
        return value
    if value.isascii() and value.isdigit():
        return int(value)
    if not value:
        raise RuntimeConfigError(f"invalid {kind}: empty name")
    return None


def resolve_user(user: str | int) -> pwd.struct_passwd:
    """Look up a user by name or numeric id (``"65534"`` counts as an id).

    The account must exist: we need its primary group and supplementary
    groups, and an id without an account is almost always a typo.
    """
    uid = _as_id(user, "user")
    try:
        return pwd.getpwnam(str(user)) if uid is None else pwd.getpwuid(uid)
    except KeyError:
        raise RuntimeConfigError(f"unknown user {user!r}") from None


def resolve_group(group: str | int) -> grp.struct_group:
    """Look up a group by name or numeric id; it must exist."""
    gid = _as_id(group, "group")
    try:
        return grp.getgrnam(str(group)) if gid is None else grp.getgrgid(gid)
    except KeyError:
        raise RuntimeConfigError(f"unknown group {group!r}") from None


def drop_privileges(user: str | int | None, group: str | int | None = None) -> None:
    """Switch the process permanently to ``user`` (and ``group``).

    ``group`` defaults to the user's primary group.  Without a user this is a
    no-op, but a group without a user is rejected rather than silently
    ignored.  When not running as root, asking for the current identity is
    accepted (so the same configuration works in development), anything else
    is an error because it cannot be honoured.
    """
    if user is None:
        if group is not None:
            raise RuntimeConfigError(f"group {group!r} given without a user to run as")
        return
    account = resolve_user(user)
    gid = account.pw_gid if group is None else resolve_group(group).gr_gid
    if account.pw_uid == 0:
        raise RuntimeConfigError(f"refusing to run as user {user!r}: it is root (uid 0)")
    if os.geteuid() != 0:
        _check_already(account, gid)
        return
    _switch(account, gid)
    _verify(account.pw_uid, gid)


def _check_already(account: pwd.struct_passwd, gid: int) -> None:
    """Without root we can only accept being that user/group already."""
    if set(os.getresuid()) == {account.pw_uid} and set(os.getresgid()) == {gid}:
        return
    raise RuntimeConfigError(
        f"cannot switch to user {account.pw_name!r} (uid {account.pw_uid}, gid {gid}): "
        f"not running as root (uid {os.getuid()}, gid {os.getgid()})"
    )


def _switch(account: pwd.struct_passwd, gid: int) -> None:
    """Set groups first (needs root), then gid, then uid -- order matters."""
    try:
        os.initgroups(account.pw_name, gid)
        os.setresgid(gid, gid, gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    except OSError as exc:
        raise RuntimeConfigError(
            f"cannot switch to user {account.pw_name!r} (uid {account.pw_uid}, gid {gid}): "
            f"{exc.strerror}"
        ) from exc


def _verify(uid: int, gid: int) -> None:
    """Prove the drop happened and is irreversible; raise otherwise."""
    if set(os.getresuid()) != {uid} or set(os.getresgid()) != {gid}:
        raise RuntimeConfigError(
            f"privilege drop to uid {uid} gid {gid} incomplete: "
            f"resuid={os.getresuid()} resgid={os.getresgid()}"
        )
    _verify_proc_status(uid, gid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeConfigError(f"privilege drop to uid {uid} failed: setuid(0) still succeeds")


def read_proc_ids(status_text: str) -> dict[str, list[int]]:
    """Parse the ``Uid``, ``Gid`` and ``Groups`` lines of /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(field) for field in value.split()]
    return ids


def _verify_proc_status(uid: int, gid: int) -> None:
    """Cross-check the kernel's view (includes the filesystem ids)."""
    try:
        text = _PROC_STATUS.read_text()
    except OSError:
        return  # no procfs (container without /proc, non-Linux): libc check only
    ids = read_proc_ids(text)
    if set(ids.get("Uid", [uid])) != {uid} or set(ids.get("Gid", [gid])) != {gid}:
        raise RuntimeConfigError(
            f"privilege drop to uid {uid} gid {gid} incomplete according to "
            f"{_PROC_STATUS}: Uid={ids.get('Uid')} Gid={ids.get('Gid')}"
        )
