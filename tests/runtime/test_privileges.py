"""Tests for user/group resolution and the privilege drop (real forks, as root)."""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.privileges import (
    drop_privileges,
    read_proc_ids,
    resolve_group,
    resolve_user,
)
from tests.forking import fork_single_threaded

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrnam("nogroup")


def _in_child(action: Callable[[], object]) -> dict[str, object]:
    """Run ``action`` in a forked child; return its JSON result or error."""
    read_fd, write_fd = os.pipe()
    pid = fork_single_threaded()
    if pid == 0:
        os.close(read_fd)
        try:
            result: dict[str, object] = {"value": action()}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(data))


def _drop_and_report(user: str | int, group: str | int | None = None) -> object:
    """Drop privileges, then report what the kernel says about us."""
    drop_privileges(user, group)
    ids = read_proc_ids(Path("/proc/self/status").read_text())
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    return {"proc": ids, "resuid": os.getresuid(), "resgid": os.getresgid(), "regained": regained}


def test_resolve_user_by_name_and_id() -> None:
    assert resolve_user("nobody").pw_uid == NOBODY.pw_uid
    assert resolve_user(NOBODY.pw_uid).pw_name == "nobody"
    assert resolve_user(str(NOBODY.pw_uid)).pw_name == "nobody"


def test_resolve_group_by_name_and_id() -> None:
    assert resolve_group("nogroup").gr_gid == NOGROUP.gr_gid
    assert resolve_group(NOGROUP.gr_gid).gr_name == "nogroup"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no-such-user-xyz", "unknown user 'no-such-user-xyz'"),
        ("", "invalid user: empty name"),
        (-1, "invalid user id -1"),
        (4_000_000_000, "unknown user 4000000000"),
    ],
)
def test_resolve_user_errors(value: str | int, message: str) -> None:
    with pytest.raises(RuntimeConfigError, match=message):
        resolve_user(value)


def test_resolve_group_unknown() -> None:
    with pytest.raises(RuntimeConfigError, match="unknown group 'no-such-group-xyz'"):
        resolve_group("no-such-group-xyz")


def test_drop_without_user_is_noop() -> None:
    before = (os.getresuid(), os.getresgid())
    drop_privileges(None)
    assert (os.getresuid(), os.getresgid()) == before


def test_group_without_user_is_error() -> None:
    with pytest.raises(RuntimeConfigError, match="group 'nogroup' given without a user"):
        drop_privileges(None, "nogroup")


def test_nonexistent_user_is_clear_error() -> None:
    with pytest.raises(RuntimeConfigError, match="unknown user 'no-such-user-xyz'"):
        drop_privileges("no-such-user-xyz")
    assert os.geteuid() == os.getuid()  # nothing changed


def test_root_as_target_is_refused() -> None:
    with pytest.raises(RuntimeConfigError, match="refusing to run as user 'root'"):
        drop_privileges("root")


@requires_root
def test_drop_to_nobody_nogroup_in_child() -> None:
    result = _in_child(lambda: _drop_and_report("nobody", "nogroup"))
    assert "error" not in result, result
    report = result["value"]
    assert isinstance(report, dict)
    uid, gid = NOBODY.pw_uid, NOGROUP.gr_gid
    assert report["proc"]["Uid"] == [uid] * 4
    assert report["proc"]["Gid"] == [gid] * 4
    assert 0 not in report["proc"]["Groups"]
    assert report["resuid"] == [uid] * 3
    assert report["resgid"] == [gid] * 3
    assert report["regained"] is False


@requires_root
def test_drop_uses_primary_group_by_default() -> None:
    result = _in_child(lambda: _drop_and_report(NOBODY.pw_uid))
    report = result["value"]
    assert isinstance(report, dict)
    assert report["proc"]["Gid"] == [NOBODY.pw_gid] * 4


@requires_root
def test_after_drop_same_user_is_fine_other_user_is_error() -> None:
    def scenario() -> object:
        drop_privileges("nobody", "nogroup")
        drop_privileges("nobody", "nogroup")  # not root, but already that user
        try:
            drop_privileges("daemon")
        except RuntimeConfigError as exc:
            return str(exc)
        return "no error"

    result = _in_child(scenario)
    assert "not running as root" in str(result["value"])
    assert "'daemon'" in str(result["value"])


def test_read_proc_ids_parses_status() -> None:
    text = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t9 10 \n"
    assert read_proc_ids(text) == {"Uid": [1, 2, 3, 4], "Gid": [5, 6, 7, 8], "Groups": [9, 10]}
