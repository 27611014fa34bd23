"""Tests for listener creation, socket activation and clean-up (real sockets)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime.address import FdAddress, Inet6Address, InetAddress, UnixAddress
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.privileges import resolve_group, resolve_user
from milterkit.runtime.sockets import (
    inherited_listeners,
    open_listener,
    remove_unix_socket,
    socket_from_fd,
)
from tests.forking import fork_single_threaded

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for socket paths (sun_path is limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mk", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """Collect sockets to close after the test."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _accepts(listener: socket.socket, family: int, address: str | tuple[str, int]) -> bool:
    """Connect a client to ``address`` and accept it on ``listener``."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(address)
        listener.settimeout(2)
        conn, _ = listener.accept()
        conn.close()
    return True


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666, 0o640])
def test_unix_socket_mode_exact(sock_dir: Path, listeners: list[socket.socket], mode: int) -> None:
    path = sock_dir / "m.sock"
    listeners.append(open_listener(UnixAddress(str(path)), mode=mode))
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode


def test_unix_default_mode_not_world_accessible(
    sock_dir: Path, listeners: list[socket.socket]
) -> None:
    old_umask = os.umask(0)
    try:
        path = sock_dir / "m.sock"
        listeners.append(open_listener(UnixAddress(str(path))))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


def test_unix_listener_properties_and_accepts(
    sock_dir: Path, listeners: list[socket.socket]
) -> None:
    path = str(sock_dir / "m.sock")
    listener = open_listener(UnixAddress(path))
    listeners.append(listener)
    assert listener.getblocking() is False
    assert listener.get_inheritable() is False
    assert _accepts(listener, socket.AF_UNIX, path)
    assert [p.name for p in sock_dir.iterdir()] == ["m.sock"]  # temp dir removed


def test_unix_owner_and_group_applied(sock_dir: Path, listeners: list[socket.socket]) -> None:
    path = sock_dir / "m.sock"
    listeners.append(open_listener(UnixAddress(str(path)), owner="nobody", group="nogroup"))
    st = os.lstat(path)
    assert st.st_uid == resolve_user("nobody").pw_uid
    assert st.st_gid == resolve_group("nogroup").gr_gid


def test_unix_owner_numeric_id(sock_dir: Path, listeners: list[socket.socket]) -> None:
    path = sock_dir / "m.sock"
    uid = resolve_user("nobody").pw_uid
    listeners.append(open_listener(UnixAddress(str(path)), owner=uid))
    assert os.lstat(path).st_uid == uid
    assert os.lstat(path).st_gid == os.getgid()


def test_unix_unknown_owner_is_error(sock_dir: Path) -> None:
    with pytest.raises(RuntimeConfigError, match="unknown user 'no-such-user-xyz'"):
        open_listener(UnixAddress(str(sock_dir / "m.sock")), owner="no-such-user-xyz")
    assert list(sock_dir.iterdir()) == []


def test_stale_socket_replaced(sock_dir: Path, listeners: list[socket.socket]) -> None:
    path = str(sock_dir / "m.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # file remains, nobody listens
    old_ino = os.lstat(path).st_ino
    listener = open_listener(UnixAddress(path))
    listeners.append(listener)
    assert os.lstat(path).st_ino != old_ino
    assert _accepts(listener, socket.AF_UNIX, path)


def test_live_socket_refused(sock_dir: Path, listeners: list[socket.socket]) -> None:
    path = str(sock_dir / "m.sock")
    listeners.append(open_listener(UnixAddress(path)))
    with pytest.raises(RuntimeConfigError, match="another process is listening on"):
        open_listener(UnixAddress(path))
    assert [p.name for p in sock_dir.iterdir()] == ["m.sock"]


def test_regular_file_refused(sock_dir: Path) -> None:
    path = sock_dir / "m.sock"
    path.write_text("keep me")
    with pytest.raises(RuntimeConfigError, match=r"m\.sock: it is a regular file"):
        open_listener(UnixAddress(str(path)))
    assert path.read_text() == "keep me"


def test_directory_refused(sock_dir: Path) -> None:
    path = sock_dir / "m.sock"
    path.mkdir()
    with pytest.raises(RuntimeConfigError, match="it is a directory"):
        open_listener(UnixAddress(str(path)))


def test_symlink_refused(sock_dir: Path) -> None:
    target = sock_dir / "elsewhere"
    path = sock_dir / "m.sock"
    path.symlink_to(target)
    with pytest.raises(RuntimeConfigError, match="it is a symbolic link"):
        open_listener(UnixAddress(str(path)))
    assert path.is_symlink()
    assert not target.exists()


def test_missing_directory_is_error(sock_dir: Path) -> None:
    path = sock_dir / "missing" / "m.sock"
    with pytest.raises(RuntimeConfigError) as caught:
        open_listener(UnixAddress(str(path)))
    assert str(caught.value) == (
        f"cannot create socket {path}: directory {sock_dir}/missing does not exist"
    )


def test_remove_unix_socket_only_if_ours(sock_dir: Path) -> None:
    path = str(sock_dir / "m.sock")
    listener = open_listener(UnixAddress(path))
    listener.close()
    os.rename(path, path + ".moved")
    os.rename(path + ".moved", path)  # same inode: still ours
    assert remove_unix_socket(path) is True
    assert not os.path.exists(path)
    assert remove_unix_socket(path) is False


def test_remove_unix_socket_keeps_replacement(sock_dir: Path) -> None:
    path = str(sock_dir / "m.sock")
    open_listener(UnixAddress(path)).close()
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)  # another instance took over the path
    try:
        assert remove_unix_socket(path) is False
        assert os.path.exists(path)
    finally:
        other.close()


def test_remove_unix_socket_not_from_forked_child(sock_dir: Path) -> None:
    path = str(sock_dir / "m.sock")
    open_listener(UnixAddress(path)).close()
    pid = fork_single_threaded()
    if pid == 0:
        os._exit(0 if remove_unix_socket(path) is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.exists(path)
    assert remove_unix_socket(path) is True


def test_inet_listener_accepts(listeners: list[socket.socket]) -> None:
    listener = open_listener(InetAddress("127.0.0.1", 0))
    listeners.append(listener)
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert listener.getblocking() is False
    assert listener.get_inheritable() is False
    assert _accepts(listener, socket.AF_INET, listener.getsockname())


def test_inet6_listener_accepts(listeners: list[socket.socket]) -> None:
    listener = open_listener(Inet6Address("::1", 0))
    listeners.append(listener)
    assert listener.family == socket.AF_INET6
    assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert _accepts(listener, socket.AF_INET6, listener.getsockname()[:2])


def test_inet_port_in_use_is_error(listeners: list[socket.socket]) -> None:
    first = open_listener(InetAddress("127.0.0.1", 0))
    listeners.append(first)
    port = first.getsockname()[1]
    with pytest.raises(RuntimeConfigError, match=f"cannot listen on inet:{port}@127.0.0.1"):
        open_listener(InetAddress("127.0.0.1", port))


def test_inet_unresolvable_host_is_error() -> None:
    with pytest.raises(RuntimeConfigError, match="cannot resolve"):
        open_listener(InetAddress("no-such-host.invalid", 25))


def test_fd_address(listeners: list[socket.socket]) -> None:
    original = open_listener(InetAddress("127.0.0.1", 0))
    listeners.append(original)
    fd = os.dup(original.fileno())
    os.set_inheritable(fd, True)
    wrapped = open_listener(FdAddress(fd))
    listeners.append(wrapped)
    assert wrapped.fileno() == fd
    assert wrapped.get_inheritable() is False
    assert wrapped.getblocking() is False
    assert _accepts(wrapped, socket.AF_INET, original.getsockname())


def test_fd_not_open_is_error() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(RuntimeConfigError, match=f"file descriptor {fd} is not open"):
        socket_from_fd(fd)


def test_fd_not_a_socket_is_error() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(RuntimeConfigError, match=f"file descriptor {fd} is not a socket"):
            socket_from_fd(fd)
        os.fstat(fd)  # still open: ownership not taken on failure
    finally:
        os.close(fd)


def test_fd_not_listening_is_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeConfigError, match="is not a listening socket"):
            socket_from_fd(sock.fileno())
        assert sock.fileno() >= 0


_ACTIVATION_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    inherited = int(sys.argv[1])
    if inherited != 3:
        os.dup2(inherited, 3)
        os.close(inherited)
    os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[2] == "self" else "1"
    from milterkit.runtime.sockets import inherited_listeners_with_names
    found = inherited_listeners_with_names()
    leftover = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
    print(len(found), ",".join(leftover) or "-", flush=True)
    for name, sock in found:
        print(name, sock.fileno(), sock.getblocking(), sock.get_inheritable(), flush=True)
        sock.setblocking(True)
        conn, _ = sock.accept()
        conn.sendall(b"hello")
        conn.close()
    """
)


def _run_activated(listener: socket.socket, pid_mode: str) -> subprocess.Popen[str]:
    """Start a child that receives ``listener`` the way systemd passes it."""
    env = dict(os.environ, PYTHONPATH=SRC, LISTEN_FDS="1", LISTEN_FDNAMES="milter")
    return subprocess.Popen(
        [sys.executable, "-c", _ACTIVATION_SCRIPT, str(listener.fileno()), pid_mode],
        pass_fds=(listener.fileno(),),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_systemd_socket_activation(listeners: list[socket.socket]) -> None:
    listener = open_listener(InetAddress("127.0.0.1", 0))
    listeners.append(listener)
    with _run_activated(listener, "self") as child:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["1", "-"]
        assert child.stdout.readline().split() == ["milter", "3", "False", "False"]
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            assert client.recv(5) == b"hello"
        assert child.wait(timeout=5) == 0


def test_systemd_activation_for_other_pid_ignored(listeners: list[socket.socket]) -> None:
    listener = open_listener(InetAddress("127.0.0.1", 0))
    listeners.append(listener)
    with _run_activated(listener, "other") as child:
        out, _ = child.communicate(timeout=5)
    assert out.split() == ["0", "-"]
    assert child.returncode == 0


def test_inherited_listeners_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert inherited_listeners() == []


def test_inherited_listeners_bad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "two")
    with pytest.raises(RuntimeConfigError, match="invalid LISTEN_FDS='two'"):
        inherited_listeners()
    assert "LISTEN_FDS" not in os.environ


#: Exchanges every staging directory in DIR with a symlink to a directory whose
#: entries all point at the victim, as fast as it can (a separate process, so
#: it really runs between the creator's system calls).
SWAPPER = textwrap.dedent(
    """
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    directory, victim = sys.argv[1], sys.argv[2]
    evil = os.path.join(directory, "evil")
    link = os.path.join(directory, "lnk")
    os.mkdir(evil)
    os.symlink(evil, link)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for name in os.listdir(directory):
            if name.startswith(".mk"):
                for staged in ("s", "s" + name):
                    try:
                        os.symlink(victim, os.path.join(evil, staged))
                    except OSError:
                        pass
                libc.renameat2(-100, link.encode(), -100,
                               os.path.join(directory, name).encode(), 2)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket to uid 65534 needs root")
def test_swapping_names_never_redirects_the_chown(sock_dir: Path) -> None:
    """Even where someone can swap names (root here, in the safe directory), nothing is followed.

    Before the fix, chown/chmod by path followed the swapped-in symlink and gave
    the victim away within a few hundred rounds. Now every step after mkdir
    goes through the staging directory's descriptor: a round may fail, but
    only with a RuntimeConfigError, and the victim keeps its owner and mode.
    """
    victim = sock_dir / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o600)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(sock_dir), str(victim)], stdout=subprocess.PIPE
    )
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"ready\n"
        for _ in range(300):
            with contextlib.suppress(RuntimeConfigError):
                open_listener(
                    UnixAddress(str(sock_dir / "m.sock")), owner=65534, group=65534
                ).close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_dir / "m.sock")
            st = victim.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), "victim redirected"
    finally:
        swapper.kill()
        swapper.wait(10)
