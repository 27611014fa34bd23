"""Shared pieces of the hardening suite: daemons, raw MTAs, the C driver, RSS.

Short mode (the default, CI) keeps the whole directory under three minutes;
``MILTERKIT_LONG=1`` runs the same tests with long-mode sizes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from milterkit.client import MilterClient, MilterError

REPO = Path(__file__).resolve().parents[2]
MILTERS = f"{REPO}/tests/hardening/milters.py"
LONG = os.environ.get("MILTERKIT_LONG", "") not in ("", "0")


def scale(short: int, long: int) -> int:
    return long if LONG else short


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def proc_ids(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# -------------------------------------------------------------------- daemons


class Daemon:
    """``python -m milterkit run`` in a subprocess, logging to a file; killed in stop()."""

    def __init__(self, tmp: Path, target: str, *args: str, inet: bool = True) -> None:
        self.tmp = tmp
        self.log_path = tmp / "daemon.log"
        if inet:
            self.port = free_port()
            self.address = f"inet:{self.port}@127.0.0.1"
        else:
            self.port = 0
            self.address = f"unix:{tmp}/milter.sock"
        command = [
            sys.executable,
            "-m",
            "milterkit",
            "run",
            f"{MILTERS}:{target}",
            "--socket",
            self.address,
            "--log",
            f"file:{self.log_path}",
            *args,
        ]
        env = {**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}"}
        self.out = open(tmp / "daemon.out", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            command, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=tmp
        )

    @property
    def sockaddr(self) -> tuple[str, int] | str:
        return ("127.0.0.1", self.port) if self.port else self.address[len("unix:") :]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def wait_ready(self, workers: int, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log()}{self.output()}")
            return len(self.workers()) >= workers and _connectable(self.sockaddr)

        assert wait_for(ready, timeout), f"daemon not ready: {self.log()}{self.output()}"

    def output(self) -> str:
        return (self.tmp / "daemon.out").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.out.close()
        return self.proc.returncode


def _connectable(address: tuple[str, int] | str) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(target: str, *args: str, workers: int = 2, inet: bool = True) -> Daemon:
        sub = tmp_path / f"d{len(started)}"
        sub.mkdir()
        daemon = Daemon(sub, target, "--workers", str(workers), *args, inet=inet)
        started.append(daemon)
        daemon.wait_ready(workers)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL)


# ---------------------------------------------------------------- raw packets


def frame(code: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + code + payload


OPTNEG_V6 = frame(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
CONNECT = frame(b"C", b"hostile.example\x004\x12\x34127.0.0.1\x00")
HELO = frame(b"H", b"hostile.example\x00")
MAIL = frame(b"M", b"<a@example.org>\x00")
RCPT = frame(b"R", b"<b@example.net>\x00")
EOH = frame(b"N")
EOM = frame(b"E")


class Raw:
    """A blocking MTA-side socket that reads whole reply packets."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[bytes, bytes]:
        """One reply packet (code, payload); raises EOFError on close."""
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + length:
                    code, payload = self.buf[4:5], self.buf[5 : 4 + length]
                    self.buf = self.buf[4 + length :]
                    return code, payload
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed with {len(self.buf)} bytes of a packet pending")
            self.buf += data

    def final(self) -> bytes:
        """Codes up to and including the next non-modification, non-progress reply."""
        while True:
            code, _ = self.reply()
            if code in b"acrtdyO" or code == b"s":
                return code

    def closed_within(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within ``timeout``; replies are skipped."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False

    def hello(self) -> None:
        self.send(OPTNEG_V6)
        assert self.reply()[0] == b"O"
        self.send(CONNECT)
        assert self.final() == b"c"
        self.send(HELO)
        assert self.final() == b"c"

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------- good traffic

MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: good\r\n\r\n"
    + b"good traffic line\r\n" * 50
)


@dataclass
class GoodTraffic:
    """Background threads sending good messages; every failure is recorded."""

    address: str
    threads: int = 2
    per_connection: int = 20
    timeout: float = 60.0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    workers_seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: list[threading.Thread] = field(default_factory=list)

    def start(self) -> GoodTraffic:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._pool.append(thread)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with MilterClient(self.address, timeout=self.timeout) as client:
                    for _ in range(self.per_connection):
                        if self._stop.is_set():
                            break
                        result = client.check(
                            MESSAGE, sender="<alice@example.org>", recipients=["<bob@example.net>"]
                        )
                        self._record(result)
            except (MilterError, OSError) as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    def _record(self, result: object) -> None:
        decision = getattr(result, "decision", None)
        with self._lock:
            if decision != "accept":
                self.errors.append(f"decision {decision}")
                return
            self.ok += 1
            for mod in getattr(result, "modifications", []):
                if getattr(mod, "name", b"") == b"X-Worker":
                    self.workers_seen.add(mod.value.decode())

    def count(self) -> int:
        with self._lock:
            return self.ok

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._pool:
            thread.join(timeout)


# ------------------------------------------------------------------ C driver


@pytest.fixture(scope="session")
def milterload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: cannot build benchmarks/driver/milterload.c")
    out = tmp_path_factory.mktemp("driver") / "milterload"
    subprocess.run(
        [gcc, "-O2", "-o", str(out), str(REPO / "benchmarks/driver/milterload.c")],
        check=True,
        timeout=120,
    )
    return out


def run_driver(
    driver: Path,
    daemon: Daemon,
    *,
    conns: int,
    messages: int,
    seconds: float = 0,
    body: int = 2000,
    headers: int = 5,
    rcpts: int = 1,
    per_conn: int = 10,
    timeout: float = 600,
) -> dict[str, float]:
    import json

    host = str(daemon.sockaddr) if isinstance(daemon.sockaddr, str) else "127.0.0.1"
    args = [str(driver), host, str(daemon.port or 0), str(conns), str(seconds), str(messages)]
    args += [str(body), str(headers), str(rcpts), str(per_conn)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result
