"""Security of the daemon's runtime, attacked by a real unprivileged user.

Each test stands for one guarantee listed in docs/reliability.md ("Security"):
root never follows a symlink someone else could plant while creating the
socket or the log file, workers hold no root-owned file open, workers'
logging survives rotation, the current directory is never imported from,
tracebacks cannot forge log records, and workers start from a clean slate.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import milterkit
from milterkit.client import CheckResult, MilterClient
from milterkit.client import check as milter_check
from milterkit.runtime.address import UnixAddress
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.sockets import open_listener
from tests.hardening.conftest import MESSAGE, children, wait_for

REPO = Path(__file__).resolve().parents[2]
MILTERS = f"{REPO}/tests/hardening/security_milters.py"
SPAMTRAP = f"{REPO}/examples/spamtrap.py:SpamTrap"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} milterkit\[\d+\]: [A-Z]+ ")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create the unprivileged attacker account",
)


@pytest.fixture(scope="module")
def service_user() -> Iterator[pwd.struct_passwd]:
    """A throw-away system account standing for the milter's service user."""
    name = f"mksec{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory the service user can reach (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mksec", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user_python(service_user: pwd.struct_passwd) -> str:
    """An interpreter the service user may run (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"],
                user=service_user.pw_uid,
                group=service_user.pw_gid,
                extra_groups=[],
                cwd="/",
                check=False,
                capture_output=True,
            )
        except OSError:  # not executable for that user
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter the unprivileged user may execute")


def as_user(user: pwd.struct_passwd, python: str, code: str, *args: str) -> subprocess.Popen[bytes]:
    """Run Python ``code`` as ``user`` (no supplementary groups), from /."""
    return subprocess.Popen(
        [python, "-c", code, *args],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def user_owned_dir(parent: Path, user: pwd.struct_passwd, name: str = "svc") -> Path:
    """``/run/<svc>`` as commonly set up: owned by the service user, mode 0755."""
    path = parent / name
    path.mkdir(mode=0o755)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


class Daemon:
    """``python -m milterkit run`` logging to a file; always stopped by the test."""

    def __init__(self, tmp: Path, target: str, *args: str, env: dict[str, str] | None = None):
        self.tmp = tmp
        command = [sys.executable, "-m", "milterkit", "run", target, *args]
        full_env = {**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}", **(env or {})}
        self.out_path = tmp / "daemon.out"
        self.out = open(self.out_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            command, stdout=self.out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp
        )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def workers(self, count: int) -> list[int]:
        def enough() -> bool:
            assert self.proc.poll() is None, self.output()
            return len(children(self.proc.pid)) >= count

        assert wait_for(enough, 20), self.output()
        return children(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()
        return self.proc.returncode


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def check_message(address: str) -> CheckResult:
    with MilterClient(address, timeout=20) as client:
        return client.check(MESSAGE, sender="<a@example.org>", recipients=["<b@example.net>"])


def wait_connectable(path: str, daemon: Daemon) -> None:
    def up() -> bool:
        assert daemon.proc.poll() is None, daemon.output()
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(path)
            except OSError:
                return False
        return True

    assert wait_for(up, 20), daemon.output()


# ------------------------------------------------- 1: socket chown/chmod redirect

#: The attacker: exchanges every staging directory root creates in DIR with a
#: symlink to a directory whose entries all point at the victim file.
RACER = textwrap.dedent(
    """
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    directory, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    evil = os.path.join(directory, "evil")
    os.mkdir(evil)
    link = os.path.join(directory, "lnk")
    os.symlink(evil, link)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in os.listdir(directory):
            if not name.startswith(".mk"):
                continue
            for socket_name in ("s", "s" + name):
                try:
                    os.symlink(victim, os.path.join(evil, socket_name))
                except OSError:
                    pass
            libc.renameat2(AT_FDCWD, link.encode(), AT_FDCWD,
                           os.path.join(directory, name).encode(), RENAME_EXCHANGE)
    """
)


def test_socket_in_directory_of_service_user_refused(
    shared: Path, service_user: pwd.struct_passwd
) -> None:
    directory = user_owned_dir(shared, service_user)
    path = directory / "m.sock"
    with pytest.raises(RuntimeConfigError) as caught:
        open_listener(UnixAddress(str(path)))
    assert str(caught.value) == (
        f"cannot create socket {path}: directory {directory} is owned by "
        f"uid {service_user.pw_uid} ({service_user.pw_name}), not by root; root refuses "
        "to work in a directory where another user could swap names for symlinks"
    )
    assert os.listdir(directory) == []


def test_racing_user_cannot_redirect_socket_chown(
    shared: Path, service_user: pwd.struct_passwd, user_python: str
) -> None:
    """The attack of issue 16: swap the staging directory for a symlink mid-creation.

    Before the fix this gave the victim file to the service user with mode
    0660 in most rounds; now no round touches it, because root refuses the
    directory before creating anything in it.
    """
    victim = shared / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    directory = user_owned_dir(shared, service_user)
    racer = as_user(service_user, user_python, RACER, str(directory), str(victim), "60")
    try:
        assert racer.stdout is not None
        assert racer.stdout.readline().strip() == b"ready"
        refusals = []
        for _ in range(30):
            try:
                open_listener(
                    UnixAddress(str(directory / "m.sock")),
                    owner=service_user.pw_uid,
                    group=service_user.pw_gid,
                ).close()
            except RuntimeConfigError as exc:  # the attacker may make a round fail otherwise
                refusals.append(str(exc))
            st = victim.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), "victim redirected"
        assert len(refusals) == 30
        assert all("is owned by uid" in text for text in refusals), refusals
    finally:
        racer.kill()
        racer.wait(5)


def test_daemon_refuses_socket_directory_of_service_user(
    shared: Path, service_user: pwd.struct_passwd, daemons: list[Daemon]
) -> None:
    directory = user_owned_dir(shared, service_user)
    daemon = Daemon(
        shared,
        SPAMTRAP,
        "--socket",
        f"unix:{directory}/m.sock",
        "--user",
        service_user.pw_name,
        "--workers",
        "1",
    )
    daemons.append(daemon)
    assert daemon.proc.wait(20) == 78
    assert f"directory {directory} is owned by uid {service_user.pw_uid}" in daemon.output()


def test_group_membership_error_names_the_group(
    shared: Path, service_user: pwd.struct_passwd, user_python: str
) -> None:
    """Run as the service user, giving the socket to a group it is not in."""
    directory = user_owned_dir(shared, service_user)
    code = textwrap.dedent(
        """
        import sys
        from milterkit.runtime.address import UnixAddress
        from milterkit.runtime.errors import RuntimeConfigError
        from milterkit.runtime.sockets import open_listener
        try:
            open_listener(UnixAddress(sys.argv[1]), group="root")
        except RuntimeConfigError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [user_python, "-c", code, f"{directory}/m.sock"],
        user=service_user.pw_uid,
        group=service_user.pw_gid,
        extra_groups=[],
        cwd="/",
        # the milterkit under test (src/, or the compiled install), which needs nothing
        # outside the stdlib
        env={"PYTHONPATH": str(Path(milterkit.__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.strip() == (
        f"cannot give the socket {directory}/m.sock to group root: not a member"
    ), proc.stderr
    assert os.listdir(directory) == []  # no staging directory left behind


# -------------------------------------------- 3: no root-owned files in workers


def test_workers_hold_neither_pid_file_nor_log_file(
    shared: Path, service_user: pwd.struct_passwd, daemons: list[Daemon]
) -> None:
    pid_file, log_file = shared / "m.pid", shared / "m.log"
    daemon = Daemon(
        shared,
        SPAMTRAP,
        "--socket",
        f"unix:{shared}/m.sock",
        "--user",
        service_user.pw_name,
        "--workers",
        "2",
        "--pid-file",
        str(pid_file),
        "--log",
        f"file:{log_file}",
    )
    daemons.append(daemon)
    wait_connectable(f"{shared}/m.sock", daemon)
    files = {_identity(pid_file), _identity(log_file)}
    assert files <= _open_files(daemon.proc.pid)  # the supervisor keeps them
    for pid in daemon.workers(2):
        assert wait_for(lambda pid=pid: _uid(pid) == service_user.pw_uid, 10)
        assert not files & _open_files(pid)


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _open_files(pid: int) -> set[tuple[int, int]]:
    """(device, inode) of every file ``pid`` has open (names may say "(deleted)")."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/fd/{fd}")
            found.add((st.st_dev, st.st_ino))
    return found


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


# ------------------------------------------------------------ 4: the log file


def test_log_directory_of_service_user_refused(
    shared: Path, service_user: pwd.struct_passwd, user_python: str, daemons: list[Daemon]
) -> None:
    """The service user points m.log at a root-only place; root must not create it."""
    logs = user_owned_dir(shared, service_user, "log")
    private = shared / "private"
    private.mkdir(mode=0o700)
    planted = private / "created-by-root"
    planter = as_user(
        service_user,
        user_python,
        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
        str(planted),
        str(logs / "m.log"),
    )
    assert planter.wait(20) == 0
    daemon = Daemon(
        shared,
        SPAMTRAP,
        "--socket",
        f"unix:{shared}/m.sock",
        "--user",
        service_user.pw_name,
        "--workers",
        "1",
        "--log",
        f"file:{logs}/m.log",
    )
    daemons.append(daemon)
    assert daemon.proc.wait(20) == 78
    assert daemon.output() == (
        f"milterkit: cannot open log file {logs}/m.log: directory {logs} is owned by "
        f"uid {service_user.pw_uid} ({service_user.pw_name}), not by root; root refuses "
        "to work in a directory where another user could swap names for symlinks\n"
    )
    assert not planted.exists()


def test_log_file_symlink_not_followed(shared: Path, daemons: list[Daemon]) -> None:
    private = shared / "private"
    private.mkdir(mode=0o700)
    (shared / "m.log").symlink_to(private / "created-by-root")
    daemon = Daemon(
        shared, SPAMTRAP, "--socket", f"unix:{shared}/m.sock", "--log", f"file:{shared}/m.log"
    )
    daemons.append(daemon)
    assert daemon.proc.wait(20) == 78
    assert f"cannot open log file {shared}/m.log: it is a symbolic link" in daemon.output()
    assert not (private / "created-by-root").exists()


def test_worker_logging_survives_rotation(
    shared: Path, service_user: pwd.struct_passwd, daemons: list[Daemon]
) -> None:
    """mv log log.1; kill -HUP: the new file is root's 0640 and gets the workers' records."""
    log = shared / "m.log"
    sock = f"{shared}/m.sock"
    daemon = Daemon(
        shared,
        SPAMTRAP,
        "--socket",
        f"unix:{sock}",
        "--user",
        service_user.pw_name,
        "--workers",
        "2",
        "--log",
        f"file:{log}",
        "--log-level",
        "debug",
    )
    daemons.append(daemon)
    wait_connectable(sock, daemon)
    workers = daemon.workers(2)
    log.rename(shared / "m.log.1")
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: log.exists(), 20), daemon.output()
    for _ in range(4):
        check_message(f"unix:{sock}")

    def worker_lines() -> list[str]:
        text = log.read_text()
        return [line for line in text.splitlines() if any(f"[{pid}]" in line for pid in workers)]

    assert wait_for(lambda: any("connection from" in x for x in worker_lines()), 20), (
        log.read_text()
    )
    for line in worker_lines():
        assert RECORD.match(line), line
    assert "connection from unix:" + sock in log.read_text()  # not the staging path
    st = log.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)
    assert daemon.stop() == 0
    assert "Logging error" not in daemon.output()
    assert "Traceback" not in daemon.output()


# ------------------------------------------------------- 7: traceback injection

FORGED = "2026-01-01 00:00:00,000 milterkit[1]: INFO root logged in"


def test_exception_text_cannot_forge_records(shared: Path, daemons: list[Daemon]) -> None:
    log = shared / "m.log"
    sock = f"{shared}/m.sock"
    daemon = Daemon(
        shared,
        f"{MILTERS}:RaisesOnHelo",
        "--socket",
        f"unix:{sock}",
        "--workers",
        "1",
        "--log",
        f"file:{log}",
    )
    daemons.append(daemon)
    wait_connectable(sock, daemon)
    result = milter_check(
        f"unix:{sock}",
        MESSAGE,
        helo=f"evil.example\r\n{FORGED}\x1b[31m",
        sender="<a@example.org>",
        recipients=["<b@example.net>"],
        timeout=20,
    )
    assert result.decision == "tempfail"
    assert wait_for(lambda: "ValueError" in log.read_text(), 20), log.read_text()
    text = log.read_text()
    assert "\x1b" not in text
    assert "\r" not in text
    for line in text.splitlines():
        assert RECORD.match(line) or line.startswith("    "), line
    assert "    ValueError: unexpected HELO evil.example\\r" in text
    assert f"    {FORGED}\\x1b[31m" in text  # the forged record is an indented continuation


# ----------------------------------------------------------------- 8: workers


def test_workers_start_from_a_clean_slate(
    shared: Path, service_user: pwd.struct_passwd, daemons: list[Daemon]
) -> None:
    sock = f"{shared}/m.sock"
    daemon = Daemon(
        shared,
        f"{MILTERS}:ShowsEnvironment",
        "--socket",
        f"unix:{sock}",
        "--user",
        service_user.pw_name,
        "--workers",
        "1",
        "--keep-env",
        "KEEP_ME",
        env={
            "SECRET_TOKEN": "s3cret",
            "KEEP_ME": "kept",
            "HOME": "/root",
            "NOTIFY_SOCKET": f"{shared}/no-such-notify",
        },
    )
    daemons.append(daemon)
    wait_connectable(sock, daemon)
    result = check_message(f"unix:{sock}")
    headers = {m.name: m.value for m in result.modifications if hasattr(m, "name")}
    seen = json.loads(headers[b"X-Env"])
    assert seen["cwd"] == "/"
    assert seen["HOME"] == service_user.pw_dir
    assert seen["USER"] == service_user.pw_name
    assert seen["SECRET_TOKEN"] is None
    assert seen["NOTIFY_SOCKET"] is None
    assert seen["KEEP_ME"] == "kept"
    assert seen["PATH"] == os.environ["PATH"]
    (worker,) = daemon.workers(1)
    status = Path(f"/proc/{worker}/status").read_text()
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    assert Path(f"/proc/{worker}/comm").read_text().strip() == "milterkit-w0"
    assert Path(f"/proc/{daemon.proc.pid}/comm").read_text().strip() == "milterkit-sup"
    st = os.stat(sock)  # the socket belongs to the run user by default (as in libmilter)
    assert (st.st_uid, st.st_gid) == (service_user.pw_uid, service_user.pw_gid)


def test_full_process_titles_with_setproctitle(shared: Path, daemons: list[Daemon]) -> None:
    pytest.importorskip("setproctitle", reason="the optional extra 'proctitle' is not installed")
    sock = f"{shared}/m.sock"
    daemon = Daemon(shared, SPAMTRAP, "--socket", f"unix:{sock}", "--workers", "2")
    daemons.append(daemon)
    wait_connectable(sock, daemon)

    def titles() -> list[str]:
        pids = [daemon.proc.pid, *children(daemon.proc.pid)]
        return [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid in pids]

    expected = [f"milterkit: supervisor serving unix:{sock}"] + [
        f"milterkit: worker {index} serving unix:{sock}" for index in range(2)
    ]
    assert wait_for(lambda: sorted(titles()) == sorted(expected), 20), titles()
    comms = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in children(daemon.proc.pid)]
    assert sorted(comms) == ["milterkit-w0", "milterkit-w1"]


def test_no_fork_with_user_removes_pid_file_and_socket(
    shared: Path, service_user: pwd.struct_passwd, daemons: list[Daemon]
) -> None:
    """--workers 0 --user: a dropped process cannot unlink root's files, so one worker forks."""
    sock, pid_file = f"{shared}/m.sock", shared / "m.pid"
    daemon = Daemon(
        shared,
        SPAMTRAP,
        "--socket",
        f"unix:{sock}",
        "--user",
        service_user.pw_name,
        "--workers",
        "0",
        "--pid-file",
        str(pid_file),
    )
    daemons.append(daemon)
    wait_connectable(sock, daemon)
    assert check_message(f"unix:{sock}").decision == "accept"
    assert daemon.stop() == 0
    assert not pid_file.exists()
    assert not os.path.exists(sock)
    assert "Traceback" not in daemon.output()
    assert "serving in one forked worker" in daemon.output()
