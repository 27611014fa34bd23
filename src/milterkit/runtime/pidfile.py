"""A locked PID file that is written atomically.

Design
------
Two goals pull in different directions:

* *Atomic content*: readers (init scripts, monitoring) must never see an empty
  or half-written file, which calls for "write a temporary file, rename it".
* *Locking*: "is another instance running?" is answered by an exclusive
  ``fcntl.lockf`` lock, and a lock belongs to an inode.  Naively locking the
  old file and then renaming a new file over it leaves the lock on an unlinked
  inode, so a second instance would happily lock the new file.

So the lock is taken on the *temporary* file before it is published: its inode
is the one that ends up at ``path``, already locked and already containing our
PID.  Publishing is serialised against other starting instances:

* If ``path`` does not exist we publish with ``link(tmp, path)``, which unlike
  ``rename`` fails if someone else published first; we then retry.
* If ``path`` exists we lock *it* first.  Failure means a live owner (error).
  Success means it is stale; after re-checking that the locked inode is still
  the one at ``path`` (it may have been replaced while we waited) we rename our
  locked temporary file over it.  Holding the stale file's lock during the
  rename keeps a concurrent starter from doing the same.

``lockf`` locks are per process: they are not inherited by ``fork()`` and are
released when *any* descriptor of the file is closed by the holder.  Hence the
PID file must be owned by the long-lived supervisor process, and this process
must not open the path elsewhere while holding it (an in-process registry
rejects a second :class:`PidFile` on the same file for that reason).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from types import TracebackType

from milterkit.runtime.errors import RuntimeConfigError

__all__ = ["PidFile"]

_PIDFILE_MODE = 0o644
_held: set[tuple[int, int]] = set()


class PidFile:
    """Context manager holding a locked PID file at ``path`` while active."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def fileno(self) -> int | None:
        """The locked descriptor (None when not held); useful for tests."""
        return self._fd

    def acquire(self) -> None:
        """Create, lock and publish the PID file or raise RuntimeConfigError."""
        if self._fd is not None:
            raise RuntimeConfigError(f"PID file {self.path} is already held")
        self._refuse_held_here()
        while True:
            fd = self._open_existing()
            published = self._publish_new() if fd is None else self._replace_stale(fd)
            if published is not None:
                self._fd = published
                st = os.fstat(published)
                self._identity = (st.st_dev, st.st_ino)
                _held.add(self._identity)
                return

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock."""
        if self._fd is None:
            return
        try:
            if self._identity == _path_identity(self.path):
                os.unlink(self.path)
        finally:
            os.close(self._fd)
            if self._identity is not None:
                _held.discard(self._identity)
            self._fd = None
            self._identity = None

    def forget_in_child(self) -> None:
        """In a forked child: close our copy of the descriptor, leave the file alone.

        A worker runs as the service user; with the root-owned PID file open
        read-write it could write another PID into it and have root signal a
        process of its choice. The lock is not affected: lockf locks belong to
        the process that took them (the supervisor), not to descriptors a
        child inherited.
        """
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._identity = None

    def _refuse_held_here(self) -> None:
        """Opening+closing our own locked file would drop our lock: refuse."""
        identity = _path_identity(self.path)
        if identity is not None and identity in _held:
            raise RuntimeConfigError(f"PID file {self.path} is already held by this process")

    def _open_existing(self) -> int | None:
        """Open ``path`` without following symlinks; None if absent."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RuntimeConfigError(f"refusing PID file {self.path}: it is a symlink") from exc
            raise RuntimeConfigError(f"cannot open PID file {self.path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RuntimeConfigError(f"refusing PID file {self.path}: not a regular file")
        return fd

    def _publish_new(self) -> int | None:
        """Publish a locked temp file with link(); None if we lost a race."""
        fd, tmp = self._locked_temp()
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise RuntimeConfigError(f"cannot create PID file {self.path}: {exc.strerror}") from exc
        finally:
            os.unlink(tmp)
        return fd

    def _replace_stale(self, old_fd: int) -> int | None:
        """Lock the existing file; if stale, rename our temp file over it."""
        try:
            try:
                fcntl.lockf(old_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise self._locked_error(old_fd) from None
            old = os.fstat(old_fd)
            if _path_identity(self.path) != (old.st_dev, old.st_ino):
                return None  # replaced meanwhile; start over
            fd, tmp = self._locked_temp()
            os.rename(tmp, self.path)
            return fd
        finally:
            os.close(old_fd)

    def _locked_error(self, fd: int) -> RuntimeConfigError:
        """Describe the running owner using the PID it wrote."""
        content = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        owner = f"running process {content}" if content.isdigit() else "another process"
        return RuntimeConfigError(f"PID file {self.path} is locked by {owner}")

    def _locked_temp(self) -> tuple[int, str]:
        """Create a locked temp file in the same directory holding our PID."""
        directory, name = os.path.split(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        except OSError as exc:
            raise RuntimeConfigError(
                f"cannot create PID file in {directory}: {exc.strerror}"
            ) from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, _PIDFILE_MODE)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp


def _path_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path`` itself (not a symlink target), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)
