"""Daemon defaults that matter for security and for the operator reading the log."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime.address import Inet6Address, InetAddress, UnixAddress, parse_address
from milterkit.runtime.daemon import DaemonConfig, _socket_ownership, _warn_if_every_interface
from milterkit.runtime.logsetup import LOGGER_NAME
from milterkit.runtime.pidfile import PidFile
from milterkit.runtime.sockets import describe_listener, open_listener
from tests.runtime.test_daemon import Daemon, with_kill
from tests.runtime.test_server_mta import wait_for


@pytest.fixture
def records() -> Iterator[list[str]]:
    """Messages the ``milterkit`` logger emits during the test."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("spec", "advice"), [("inet:8890", "inet:8890@127.0.0.1"), ("inet6:8890", "inet6:8890@[::1]")]
)
def test_every_interface_is_a_warning(records: list[str], spec: str, advice: str) -> None:
    _warn_if_every_interface(parse_address(spec))
    (message,) = records
    assert message.startswith("listening on every network interface (")
    assert message.endswith(f"use {advice} if the MTA runs on this host")


def test_loopback_is_not_a_warning(records: list[str]) -> None:
    _warn_if_every_interface(parse_address("inet:8890@127.0.0.1"))
    _warn_if_every_interface(parse_address("unix:/run/x.sock"))
    assert records == []


def test_listeners_described_as_socket_specs(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    opened = [
        open_listener(InetAddress("127.0.0.1", 0)),
        open_listener(Inet6Address("::1", 0)),
        open_listener(UnixAddress(str(tmp_path / "m.sock"))),
    ]
    try:
        v4, v6, unix = (describe_listener(sock) for sock in opened)
        assert v4 == f"inet:{opened[0].getsockname()[1]}@127.0.0.1"
        assert v6 == f"inet6:{opened[1].getsockname()[1]}@[::1]"
        assert unix == f"unix:{tmp_path}/m.sock"  # not the staging path bind() saw
        with socket.socket(socket.AF_UNIX) as client:  # and it is the path that works
            client.connect(unix[len("unix:") :])
    finally:
        for sock in opened:
            sock.close()


def test_socket_belongs_to_run_user_and_group_by_default() -> None:
    nobody = pwd.getpwnam("nobody")
    mail = grp.getgrnam("mail").gr_name
    assert _socket_ownership(DaemonConfig("x")) == (None, None)
    assert _socket_ownership(DaemonConfig("x", user="nobody")) == ("nobody", nobody.pw_gid)
    assert _socket_ownership(DaemonConfig("x", user="nobody", group=mail)) == ("nobody", mail)
    explicit = DaemonConfig("x", user="nobody", group=mail, socket_owner="root", socket_group="0")
    assert _socket_ownership(explicit) == ("root", "0")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the socket away needs root")
def test_user_and_group_give_the_socket_to_them(tmp_path: Path) -> None:
    """docs/running.md's first example: --user X --group postfix -> X:postfix, 0660."""
    tmp_path.chmod(0o755)
    mail = grp.getgrnam("mail")
    daemon = Daemon(
        tmp_path,
        "--socket",
        f"unix:{tmp_path}/milter.sock",
        "--user",
        "nobody",
        "--group",
        "mail",
        "--workers",
        "1",
        "--drain-timeout",
        "30",
    )
    try:
        daemon.wait_socket()
        st = os.stat(daemon.sock_path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
            pwd.getpwnam("nobody").pw_uid,
            mail.gr_gid,
            0o660,
        )
        daemon.wait_workers(1)
        assert daemon.stop() == 0
        log = daemon.log()
        assert "received SIGTERM; stopping 1 workers (drain timeout 30s)" in log  # not 35
        assert f"SpamTrap on unix:{tmp_path}/milter.sock" in log
    finally:
        with_kill(daemon)


def test_pid_file_forgotten_in_child_keeps_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "m.pid"
    with PidFile(path) as held:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                held.forget_in_child()
                code = 0 if held.fileno is None else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        probe = os.fork()
        if probe == 0:  # another process: the supervisor's lock must still hold
            try:
                PidFile(path).acquire()
                os._exit(1)
            except Exception:
                os._exit(0)
        _, status = os.waitpid(probe, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_socket_activation_names_the_socket_like_a_spec(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    wrapper = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'\n"
        "os.execv(sys.argv[2], sys.argv[2:])\n"
    )
    daemon = Daemon(
        tmp_path,
        "--socket",
        "inet:1@127.0.0.1",
        "--workers",
        "1",
        pass_fds=(listener.fileno(),),
        prefix=[sys.executable, "-c", wrapper, str(listener.fileno())],
    )
    try:
        wait_for(lambda: f"on inet6:{port}@[::1]" in daemon.log(), 15, "serving line")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        assert "('::1'" not in daemon.log()
    finally:
        listener.close()
        with_kill(daemon)
