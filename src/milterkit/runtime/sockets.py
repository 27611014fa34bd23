"""Creating, inheriting and cleaning up listening sockets.

Unix-domain sockets get special care because their permissions are the access
control of the milter: anyone who can connect can inject or alter mail
decisions.  ``bind()`` creates the socket file with ``0777 & ~umask``, so we
bind with the umask that yields the final mode, inside a fresh ``0700``
directory next to the target (nobody but us can reach the socket there), give
it its owner and group, start listening, and only then ``rename()`` the
finished socket onto the target path.  The rename is atomic, so the path goes
directly from "absent or stale" to "our socket with the final permissions".

The supervisor does this as root, often in a directory the service uses, so
no step goes through a path that someone else could redirect with a symlink:
the parent directory must pass :func:`~milterkit.runtime.safepath.open_safe_directory`,
and every later call is relative to a directory descriptor (``fchownat``
with ``AT_SYMLINK_NOFOLLOW``, ``renameat``; ``bind`` through
``/proc/self/fd/N``).  There is no chmod by path at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
from dataclasses import dataclass

from milterkit.runtime.address import (
    Address,
    FdAddress,
    Inet6Address,
    InetAddress,
    UnixAddress,
)
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.privileges import resolve_group, resolve_user
from milterkit.runtime.safepath import open_safe_directory

__all__ = [
    "DEFAULT_BACKLOG",
    "describe_listener",
    "inherited_listeners",
    "inherited_listeners_with_names",
    "open_listener",
    "public_name",
    "remove_unix_socket",
    "socket_from_fd",
]

DEFAULT_BACKLOG = 128
SD_LISTEN_FDS_START = 3

# Unix sockets this process created: absolute path -> (st_dev, st_ino, pid).
# Used so clean-up never deletes a socket that another instance has since
# put at the same path, and never from a forked worker.
_created: dict[str, tuple[int, int, int]] = {}
# getsockname() of a listener we created -> the path it was moved to, so that
# logs name the socket operators configured, not the staging path.
_public_names: dict[str, str] = {}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """Create a unix listener at ``path`` without a permission window.

    Everything happens relative to a descriptor of the checked parent
    directory (see :mod:`milterkit.runtime.safepath`), so nobody can redirect
    root's chown to another file by swapping a name for a symlink.
    """
    if not 0 <= mode <= 0o777:
        raise RuntimeConfigError(f"invalid socket mode {mode:#o} for {path}: expected 0-777")
    want = _Ownership(
        path=path,
        mode=mode,
        uid=-1 if owner is None else resolve_user(owner).pw_uid,
        gid=-1 if group is None else resolve_group(group).gr_gid,
        owner=owner,
        group=group,
    )
    target = os.path.abspath(path)
    parent, name = os.path.split(target)
    parent_fd = open_safe_directory(parent, f"cannot create socket {path}")
    try:
        _check_existing(parent_fd, name, path)
        sock, identity = _create_in(parent_fd, name, want, backlog)
    finally:
        os.close(parent_fd)
    _created[target] = (*identity, os.getpid())
    _public_names[sock.getsockname()] = target
    return sock


@dataclass(frozen=True)
class _Ownership:
    """What the finished socket file must look like (and the names for messages)."""

    path: str
    mode: int
    uid: int
    gid: int
    owner: str | int | None
    group: str | int | None


def _create_in(
    parent_fd: int, name: str, want: _Ownership, backlog: int
) -> tuple[socket.socket, tuple[int, int]]:
    """Stage the socket in a private directory below ``parent_fd``, then rename it to ``name``."""
    staging = _make_private_dir(parent_fd, want.path)
    try:
        staging_fd = os.open(staging, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:  # replaced by something else (not by a user: the directory is safe)
        raise RuntimeConfigError(
            f"cannot create socket {want.path}: its temporary directory changed ({exc.strerror})"
        ) from exc
    staged = f"s{staging}"  # unique, so getsockname() tells our listeners apart
    try:
        sock, identity = _bind_private(staging_fd, staged, want, backlog)
        try:
            os.rename(staged, name, src_dir_fd=staging_fd, dst_dir_fd=parent_fd)
        except OSError as exc:
            sock.close()
            raise RuntimeConfigError(
                f"cannot move socket into place at {want.path}: {exc.strerror}"
            ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged, dir_fd=staging_fd)
        os.close(staging_fd)
        with contextlib.suppress(OSError):
            os.rmdir(staging, dir_fd=parent_fd)
    return sock, identity


def _make_private_dir(parent_fd: int, path: str) -> str:
    """Create a fresh 0700 staging directory below ``parent_fd``; return its name."""
    for _ in range(100):
        name = f".mk{secrets.token_hex(8)}"
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RuntimeConfigError(
                f"cannot create socket {path}: {exc.strerror} in its directory"
            ) from exc
        return name
    raise RuntimeConfigError(f"cannot create socket {path}: no free temporary name")


def _fd_path(dir_fd: int, name: str) -> str:
    """A path that reaches ``name`` through the open directory ``dir_fd``.

    bind() has no ``*at`` variant; /proc/self/fd/N names the directory we
    hold, whatever happens to its path meanwhile.
    """
    return f"/proc/self/fd/{dir_fd}/{name}"


def _bind_private(
    staging_fd: int, staged: str, want: _Ownership, backlog: int
) -> tuple[socket.socket, tuple[int, int]]:
    """Bind with the final mode (umask), fchownat without following, listen.

    The umask is process-wide: a file another thread creates during the
    bind() gets at most the socket's permissions, never more.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~want.mode)
        try:
            sock.bind(_fd_path(staging_fd, staged))
        finally:
            os.umask(old_umask)
        _give_away(staging_fd, staged, want)
        sock.listen(backlog)
        sock.setblocking(False)
        st = os.stat(staged, dir_fd=staging_fd, follow_symlinks=False)
    except OSError as exc:
        sock.close()
        raise RuntimeConfigError(f"cannot create socket {want.path}: {exc.strerror}") from exc
    except RuntimeConfigError:
        sock.close()
        raise
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != want.mode:
        sock.close()
        raise RuntimeConfigError(f"cannot create socket {want.path}: it changed while created")
    return sock, (st.st_dev, st.st_ino)


def _give_away(staging_fd: int, staged: str, want: _Ownership) -> None:
    """Set owner and group of the staged socket; explain the usual EPERM."""
    if want.uid == -1 and want.gid == -1:
        return
    try:
        os.chown(staged, want.uid, want.gid, dir_fd=staging_fd, follow_symlinks=False)
    except PermissionError as exc:
        if want.uid not in (-1, os.geteuid()):
            reason = f"cannot give the socket {want.path} to user {want.owner}: not running as root"
        else:
            reason = f"cannot give the socket {want.path} to group {want.group}: not a member"
        raise RuntimeConfigError(reason) from exc


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


def _check_existing(parent_fd: int, name: str, path: str) -> None:
    """Allow only a missing name or a stale socket at ``name`` below ``parent_fd``."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeConfigError(
            f"refusing to replace {path}: it is {_describe_mode(st.st_mode)}, not a socket"
        )
    if _is_live(_fd_path(parent_fd, name), path):
        raise RuntimeConfigError(f"another process is listening on {path}")


def _is_live(address: str, path: str) -> bool:
    """Probe a socket file: ECONNREFUSED means nobody listens (stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
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


def public_name(sock: socket.socket) -> str:
    """The path a unix listener is reachable at (bind() saw a staging path)."""
    bound = sock.getsockname()
    return _public_names.get(bound, bound) if isinstance(bound, str) else str(bound)


def describe_listener(sock: socket.socket) -> str:
    """A listener in the spelling ``--socket`` takes: unix:/path, inet:PORT@HOST, ..."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{public_name(sock)}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return str(Inet6Address(host, port))
    return str(InetAddress(host, port))


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
