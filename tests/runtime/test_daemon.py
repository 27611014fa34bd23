"""The daemon in a subprocess: workers, restart, drain, pid file, privileges, systemd."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.protocol import EndOfMessage, Mail
from milterkit.protocol import messages as wire
from tests.runtime.test_server_mta import RawMTA, kinds, wait_for

REPO = Path(__file__).resolve().parents[2]
SPAMTRAP = f"{REPO}/examples/spamtrap.py:SpamTrap"

#: Runs ``milterkit run`` through cli/run.py alone, independent of the CLI's main().
CLI = (
    "import argparse, sys\n"
    "from milterkit.cli.run import add_parser\n"
    "p = argparse.ArgumentParser(); add_parser(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)

SLOW_MILTER = textwrap.dedent(
    """
    import asyncio
    from milterkit.milter import Accept, Milter

    class SlowEom(Milter):
        async def end_of_message(self):
            await asyncio.sleep(1.0)
            return Accept()
    """
)


class Daemon:
    """A ``milterkit run`` subprocess; always killed in :meth:`stop`."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        target: str = SPAMTRAP,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        prefix: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.sock_path = str(tmp / "milter.sock")
        self.pid_path = tmp / "milter.pid"
        self.log_path = tmp / "daemon.log"
        command = [sys.executable, "-c", CLI, "run", target, *args]
        full_env = {**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}", **(env or {})}
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [*(prefix or []), *command],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            pass_fds=pass_fds,
            cwd=tmp,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_socket(self, timeout: float = 10) -> None:
        wait_for(
            lambda: os.path.exists(self.sock_path) or self.proc.poll() is not None,
            timeout,
            "socket",
        )
        assert self.proc.poll() is None, self.log()

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_workers(self, count: int, timeout: float = 10) -> list[int]:
        wait_for(lambda: len(self.workers()) == count, timeout, f"{count} workers")
        return self.workers()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)  # workers that dropped to nobody still log into it
    return tmp_path


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        with_kill(daemon)


def with_kill(daemon: Daemon) -> None:
    try:
        daemon.stop()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def one_message(address: str) -> list[str]:
    with RawMTA.connect(address) as mta:
        mta.hello()
        replies = kinds(mta.message(sender="<spameri@tiscali.it>"))
        mta.quit()
    return replies


# --------------------------------------------------------------------- tests


def test_serves_removes_pid_file_and_socket(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--pid-file",
        str(tmp / "milter.pid"),
        "--workers",
        "2",
    )
    daemons.append(daemon)
    daemon.wait_socket()
    assert daemon.pid_path.read_text().strip() == str(daemon.proc.pid)
    assert one_message(daemon.sock_path) == ["Quarantine", "AddHeader", "Accept"]
    mode = stat.S_IMODE(os.stat(daemon.sock_path).st_mode)
    assert mode == 0o660
    assert daemon.stop() == 0
    assert not daemon.pid_path.exists()
    assert not os.path.exists(daemon.sock_path)


def test_second_instance_refused(tmp: Path, daemons: list[Daemon]) -> None:
    first = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--pid-file",
        str(tmp / "milter.pid"),
        "--workers",
        "1",
    )
    daemons.append(first)
    first.wait_socket()
    second = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/other.sock",
        "--pid-file",
        str(tmp / "milter.pid"),
        "--workers",
        "1",
    )
    daemons.append(second)
    assert second.proc.wait(10) == 78
    text = second.log()
    assert f"is locked by running process {first.proc.pid}" in text
    assert not os.path.exists(tmp / "other.sock")
    assert first.proc.poll() is None


def test_worker_crash_is_replaced(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(tmp, "--socket", f"unix:{tmp}/milter.sock", "--workers", "2")
    daemons.append(daemon)
    daemon.wait_socket()
    before = daemon.wait_workers(2)
    os.kill(before[0], signal.SIGKILL)
    assert one_message(daemon.sock_path)[-1] == "Accept"  # the other one serves
    start = time.monotonic()
    wait_for(
        lambda: len(daemon.workers()) == 2 and before[0] not in daemon.workers(),
        5,
        "replacement worker",
    )
    assert time.monotonic() - start < 1.5
    for _ in range(4):
        assert one_message(daemon.sock_path)[-1] == "Accept"
    assert "killed by SIGKILL" in daemon.log()


def test_sigterm_drains_sessions_in_flight(tmp: Path, daemons: list[Daemon]) -> None:
    (tmp / "slow_milter.py").write_text(SLOW_MILTER)
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--workers",
        "2",
        target=f"{tmp}/slow_milter.py:SlowEom",
    )
    daemons.append(daemon)
    daemon.wait_socket()
    results: list[list[str]] = []
    sessions = []
    for _ in range(4):
        mta = RawMTA.connect(daemon.sock_path)
        mta.hello()
        mta.command(Mail(b"<a@b>"))
        mta.send(EndOfMessage())
        sessions.append(mta)
    time.sleep(0.2)
    daemon.proc.send_signal(signal.SIGTERM)
    for mta in sessions:
        results.append(kinds(mta.replies(timeout=10)))
        mta.close()
    assert results == [["Accept"]] * 4
    assert daemon.proc.wait(15) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_privilege_drop_to_nobody(tmp: Path, daemons: list[Daemon]) -> None:
    nobody = pwd.getpwnam("nobody")
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--workers",
        "2",
        "--user",
        "nobody",
        "--pid-file",
        str(tmp / "milter.pid"),
        "--socket-owner",
        "nobody",
        "--socket-group",
        str(nobody.pw_gid),
    )
    daemons.append(daemon)
    daemon.wait_socket()
    for pid in daemon.wait_workers(2):
        wait_for(lambda pid=pid: _ids(pid)["Uid"] == [nobody.pw_uid] * 4, 5, "drop")
        ids = _ids(pid)
        assert ids["Gid"] == [nobody.pw_gid] * 4
    st = os.stat(daemon.sock_path)
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert one_message(daemon.sock_path)[-1] == "Accept"
    assert daemon.stop() == 0
    assert not daemon.pid_path.exists()


def _ids(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            out[key] = [int(v) for v in value.split()]
    return out


def test_unknown_user_is_a_config_error(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(tmp, "--socket", f"unix:{tmp}/milter.sock", "--user", "no-such-user-xyz")
    daemons.append(daemon)
    assert daemon.proc.wait(10) == 78
    assert "unknown user 'no-such-user-xyz'" in daemon.log()


WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def test_socket_activation_and_sd_notify(tmp: Path, daemons: list[Daemon]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    notify.settimeout(10)
    try:
        fd = listener.fileno()
        daemon = Daemon(
            tmp,
            "--socket",
            "inet:1@127.0.0.1",
            "--workers",
            "1",
            env={"NOTIFY_SOCKET": str(tmp / "notify.sock")},
            pass_fds=(fd,),
            prefix=[sys.executable, "-c", WRAPPER, str(fd)],
        )
        daemons.append(daemon)
        assert notify.recv(4096).startswith(b"READY=1")
        listener.close()  # only the daemon holds it now
        with RawMTA.connect(("127.0.0.1", port)) as mta:
            mta.hello()
            assert kinds(mta.message()) == ["AddHeader", "Accept"]
        assert daemon.stop() == 0
        assert notify.recv(4096) == b"STOPPING=1"
        assert "passed by systemd" in daemon.log()
    finally:
        notify.close()
        listener.close()


def test_concurrent_clients_across_workers(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(tmp, "--socket", f"unix:{tmp}/milter.sock", "--workers", "2")
    daemons.append(daemon)
    daemon.wait_socket()
    failures: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(5):
                assert one_message(daemon.sock_path)[-1] == "Accept"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures


def test_reply_quarantine_type() -> None:
    assert wire.Quarantine(b"x").code == ord("q")
