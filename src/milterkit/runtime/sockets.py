"""Creating, inheriting and cleaning up listening sockets.

Unix-domain sockets get special care because their permissions are the access
control of the milter: anyone who can connect can inject or alter mail
decisions.  ``bind()`` creates the socket file with ``0777 & ~umask`` and a
later ``chmod()`` leaves a window in which a local user could connect.  We
therefore bind inside a fresh ``0700`` directory next to the target (nobody but
us can reach the socket there), fix mode and ownership, start listening, and
only then ``rename()`` the finished socket onto the target path.  The rename is
atomic, so the path goes directly from "absent or stale" to "our socket with
the final permissions".

Because the temporary directory lives in the target's directory, the rename
never crosses filesystems.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile

from milterkit.runtime.address import (
    Address,
    FdAddress,
    Inet6Address,
    InetAddress,
    UnixAddress,
)
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.privileges import resolve_group, resolve_user

__all__ = [
    "DEFAULT_BACKLOG",
    "inherited_listeners",
    "inherited_listeners_with_names",
    "open_listener",
    "remove_unix_socket",
    "socket_from_fd",
]

DEFAULT_BACKLOG = 128
SD_LISTEN_FDS_START = 3
_SOCKET_NAME_IN_TMPDIR = "s"

# Unix sockets this process created: absolute path -> (st_dev, st_ino, pid).
# Used so clean-up never deletes a socket that another instance has since
# put at the same path, and never from a forked worker.
_created: dict[str, tuple[int, int, int]] = {}


def open_listener(
    address: Address,
    *,
    mode: int = 0o660,
    owner: str | int | None = None,
    group: str | int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> socket.socket:
    """Return a non-blocking, close-on-exec listening socket for ``address``.

    ``mode``, ``owner`` and ``group`` only apply to unix sockets.  The default
    mode 0660 lets the MTA's group connect; world access requires the caller
    to ask for it explicitly.
    """
    if isinstance(address, FdAddress):
        return socket_from_fd(address.fd)
    if isinstance(address, UnixAddress):
        return _open_unix(address.path, mode, owner, group, backlog)
    return _open_inet(address, backlog)


def _open_inet(address: InetAddress | Inet6Address, backlog: int) -> socket.socket:
    """Resolve, bind and listen on a TCP endpoint of the address's family."""
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            address.family,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise RuntimeConfigError(f"cannot resolve {address}: {exc.strerror}") from exc
    sockaddr = infos[0][4]
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise RuntimeConfigError(f"cannot listen on {address}: {exc.strerror}") from exc
    return sock


def _open_unix(
    path: str, mode: int, owner: str | int | None, group: str | int | None, backlog: int
) -> socket.socket:
    """Create a unix listener at ``path`` without a permission window."""
    if not 0 <= mode <= 0o7777:
        raise RuntimeConfigError(f"invalid socket mode {mode:#o} for {path}")
    uid = -1 if owner is None else resolve_user(owner).pw_uid
    gid = -1 if group is None else resolve_group(group).gr_gid
    target = os.path.abspath(path)
    _check_existing(target)
    tmpdir = _make_private_dir(target)
    try:
        sock, identity = _bind_private(tmpdir, mode, uid, gid, backlog)
        try:
            os.rename(os.path.join(tmpdir, _SOCKET_NAME_IN_TMPDIR), target)
        except OSError as exc:
            sock.close()
            raise RuntimeConfigError(
                f"cannot move socket into place at {path}: {exc.strerror}"
            ) from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _created[target] = (*identity, os.getpid())
    return sock


def _make_private_dir(target: str) -> str:
    """Create the 0700 staging directory next to ``target``."""
    parent = os.path.dirname(target)
    try:
        tmpdir = tempfile.mkdtemp(prefix=".mk", dir=parent)
    except OSError as exc:
        raise RuntimeConfigError(
            f"cannot create temporary directory in {parent}: {exc.strerror}"
        ) from exc
    staged = os.path.join(tmpdir, _SOCKET_NAME_IN_TMPDIR)
    if len(staged.encode()) > 107:
        os.rmdir(tmpdir)
        raise RuntimeConfigError(f"socket directory path too long for a unix socket: {parent}")
    return tmpdir


def _bind_private(
    tmpdir: str, mode: int, uid: int, gid: int, backlog: int
) -> tuple[socket.socket, tuple[int, int]]:
    """Bind, chown, chmod and listen inside the private directory."""
    staged = os.path.join(tmpdir, _SOCKET_NAME_IN_TMPDIR)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staged)
        os.chown(staged, uid, gid)
        os.chmod(staged, mode)
        sock.listen(backlog)
        sock.setblocking(False)
        st = os.lstat(staged)
    except OSError as exc:
        sock.close()
        raise RuntimeConfigError(f"cannot set up unix socket in {tmpdir}: {exc}") from exc
    return sock, (st.st_dev, st.st_ino)


def _describe_mode(st_mode: int) -> str:
    """Name a file type for an error message."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(st_mode):
            return name
    return "not a socket"


def _check_existing(path: str) -> None:
    """Allow only a missing path or a stale socket at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeConfigError(
            f"refusing to replace {path}: it is {_describe_mode(st.st_mode)}, not a socket"
        )
    if _is_live(path):
        raise RuntimeConfigError(f"another process is listening on {path}")


def _is_live(path: str) -> bool:
    """Probe a socket file: ECONNREFUSED means nobody listens (stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except FileNotFoundError:
            return False
        except (BlockingIOError, TimeoutError):
            return True  # backlog full: definitely alive
        except OSError as exc:
            raise RuntimeConfigError(
                f"cannot check existing socket {path}: {exc.strerror}"
            ) from exc
    return True


def remove_unix_socket(path: str) -> bool:
    """Unlink ``path`` if it is still the socket this process created there.

    Returns True if removed.  Another instance may have replaced the socket
    after a restart, and forked workers share our registry, so we compare
    device/inode and the creating PID before unlinking.
    """
    target = os.path.abspath(path)
    recorded = _created.get(target)
    if recorded is None or recorded[2] != os.getpid():
        return False
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        del _created[target]
        return False
    if (st.st_dev, st.st_ino) != recorded[:2] or not stat.S_ISSOCK(st.st_mode):
        del _created[target]
        return False
    os.unlink(target)
    del _created[target]
    return True


def socket_from_fd(fd: int) -> socket.socket:
    """Wrap an inherited listening stream socket; the socket owns ``fd``.

    The fd is made close-on-exec and non-blocking.  Anything that is not a
    listening stream socket is rejected, since accept() on it would fail later
    in a far less obvious way.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        reason = "is not open" if exc.errno == errno.EBADF else "is not a socket"
        raise RuntimeConfigError(f"file descriptor {fd} {reason}") from exc
    try:
        _check_listening(sock, fd)
    except RuntimeConfigError:
        sock.detach()
        raise
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def _check_listening(sock: socket.socket, fd: int) -> None:
    """Raise unless ``sock`` is a stream socket in the listening state."""
    if sock.type != socket.SOCK_STREAM:
        raise RuntimeConfigError(f"file descriptor {fd} is not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise RuntimeConfigError(f"file descriptor {fd} is not a listening socket")


def inherited_listeners() -> list[socket.socket]:
    """Return the sockets passed by systemd socket activation (maybe none)."""
    return [sock for _, sock in inherited_listeners_with_names()]


def inherited_listeners_with_names() -> list[tuple[str, socket.socket]]:
    """Like :func:`inherited_listeners` with each socket's FileDescriptorName.

    Implements the sd_listen_fds() protocol: the variables are only meant for
    us if LISTEN_PID is our PID (a forked child must not take over the parent's
    sockets), and they are removed from the environment so that processes we
    spawn do not misinterpret them.
    """
    pid_text = os.environ.pop("LISTEN_PID", None)
    count_text = os.environ.pop("LISTEN_FDS", None)
    names_text = os.environ.pop("LISTEN_FDNAMES", None)
    if pid_text is None or count_text is None:
        return []
    pid = _env_int("LISTEN_PID", pid_text)
    count = _env_int("LISTEN_FDS", count_text)
    if pid != os.getpid():
        return []
    names = names_text.split(":") if names_text else []
    names += ["unknown"] * (count - len(names))
    return [(names[i], socket_from_fd(SD_LISTEN_FDS_START + i)) for i in range(count)]


def _env_int(name: str, text: str) -> int:
    """Parse a non-negative integer from a socket-activation variable."""
    if not text.isascii() or not text.isdigit():
        raise RuntimeConfigError(f"invalid {name}={text!r} in environment")
    return int(text)
