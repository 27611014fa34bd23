"""Which directories root creates the socket and the log file in (safepath)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.safepath import open_safe_directory

NOBODY = 65534
ROOT = os.geteuid() == 0
SUFFIX = "; root refuses to work in a directory where another user could swap names for symlinks"


@pytest.fixture
def base() -> Iterator[Path]:
    """A root-owned 0755 directory below /tmp (itself sticky and world-writable)."""
    with tempfile.TemporaryDirectory(prefix="mksafe", dir="/tmp") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def opens(path: Path) -> bool:
    fd = open_safe_directory(str(path), "cannot create socket x")
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    finally:
        os.close(fd)


def refusal(path: Path) -> str:
    with pytest.raises(RuntimeConfigError) as caught:
        open_safe_directory(str(path), "cannot create socket x")
    return str(caught.value)


def test_own_directory_below_sticky_tmp_is_safe(base: Path) -> None:
    assert opens(base)


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o775, "its group"), (0o757, "others"), (0o777, "group and others")],
)
def test_writable_by_others_refused(base: Path, mode: int, who: str) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(mode)
    assert refusal(shared) == (
        f"cannot create socket x: directory {shared} is writable by {who} (mode {mode:04o})"
        + SUFFIX
    )


def test_sticky_parent_refused_sticky_ancestor_accepted(base: Path) -> None:
    sticky = base / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert "is writable by group and others (mode 1777)" in refusal(sticky)
    inner = sticky / "inner"
    inner.mkdir(mode=0o755)
    assert opens(inner)  # nobody else can rename or replace "inner" in a sticky directory


@pytest.mark.skipif(not ROOT, reason="needs root to give a directory to another user")
def test_directory_of_another_user_refused_even_as_ancestor(base: Path) -> None:
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    mine = theirs / "mine"
    mine.mkdir(mode=0o755)
    assert "is owned by uid 65534" in refusal(theirs)
    message = refusal(mine)  # they could rename "mine" away and put a symlink there
    assert message.startswith(f"cannot create socket x: directory {theirs} is owned by uid 65534")


def test_symlinks_in_the_path_are_resolved_once(base: Path) -> None:
    real = base / "real"
    real.mkdir(mode=0o755)
    (base / "link").symlink_to(real)
    assert opens(base / "link")


def test_missing_and_non_directories(base: Path) -> None:
    assert refusal(base / "missing") == (
        f"cannot create socket x: directory {base}/missing does not exist"
    )
    (base / "file").write_text("")
    assert refusal(base / "file") == (
        f"cannot create socket x: directory {base}/file is not a directory"
        " (or was replaced while being checked)"
    )
