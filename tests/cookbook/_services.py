"""Real services the cookbook filters talk to, started privately by the tests.

Each listens only on loopback or a unix socket in a temporary directory,
is started once per test module, waits a bounded time for readiness and is
stopped (SIGTERM, then SIGKILL) at the end. A missing package skips the
tests that need it, naming the Debian package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ..realmta._util import free_port, wait_until


class Service:
    """A daemon process in the foreground with its output in ``root/log``."""

    def __init__(self, name: str, argv: Sequence[str], root: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.root = root
        self.log = root / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip

        def check() -> bool | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.output()}")
            return True if ready() else None

        try:
            wait_until(check, timeout, f"{self.name} to be ready")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\n{self.output()}") from None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def program(name: str, package: str) -> str:
    """The path of ``name`` (PATH or /usr/sbin), or skip naming the package."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip(
            f"{name} not installed (apt-get install {package}; scripts/install-system-deps)"
        )
    return found


def temp_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def timed_start(service: Service, ready: Callable[[], bool], timeout: float) -> float:
    """Start ``service``; return the seconds it took (reported by the tests' output)."""
    began = time.monotonic()
    service.start(ready, timeout)
    return time.monotonic() - began


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, Service]]:
    """redis-server on a free loopback port, no persistence; yields (URL, service)."""
    binary = program("redis-server", "redis-server")
    root = temp_root("milterkit-redis-")
    port = free_port()
    service = Service(
        "redis-server",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(root), "--unixsocket", str(root / "redis.sock"),
         "--unixsocketperm", "700"],
        root,
    )  # fmt: skip
    try:
        timed_start(service, lambda: (root / "redis.sock").exists(), 30)
        yield f"redis://127.0.0.1:{port}/0", service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@contextlib.contextmanager
def clamd_server() -> Iterator[tuple[Path, Service]]:
    """clamd on a unix socket with a database holding only the EICAR signature.

    The database is one ClamAV body-signature file (.ndb: name, any target,
    any offset, the hex of the EICAR string), so no download is needed and
    start-up takes a moment instead of loading the million official signatures.
    """
    binary = program("clamd", "clamav-daemon")
    root = temp_root("milterkit-clamd-")
    (root / "db").mkdir()
    (root / "tmp").mkdir()
    (root / "db" / "eicar.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    sock = root / "clamd.sock"
    config = root / "clamd.conf"
    config.write_text(
        f"LocalSocket {sock}\nLocalSocketMode 666\nDatabaseDirectory {root / 'db'}\n"
        f"TemporaryDirectory {root / 'tmp'}\nForeground yes\nStreamMaxLength 10M\n"
    )
    service = Service("clamd", [binary, "-c", str(config)], root)
    try:
        took = timed_start(service, sock.exists, 120)
        print(f"clamd started in {took:.2f}s", file=sys.stderr)
        yield sock, service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@contextlib.contextmanager
def spamd_server() -> Iterator[tuple[int, Service]]:
    """spamd on a free loopback port with Debian's shipped rules, local tests only (-L)."""
    binary = program("spamd", "spamd")
    root = temp_root("milterkit-spamd-")
    port = free_port()
    # Debian's site config (plugin .pre files, local.cf) plus: no Bayes. spamd runs
    # as nobody, whose home does not exist; Bayes auto-learning would wait on its
    # lock file there for each message.
    siteconf = root / "siteconf"
    shutil.copytree("/etc/spamassassin", siteconf)
    with (siteconf / "local.cf").open("a") as local:
        local.write("\nuse_bayes 0\nbayes_auto_learn 0\n")
    as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []  # spamd refuses to scan as root
    service = Service(
        "spamd",
        [binary, "--syslog=stderr", "-x", "-L", "-i", "127.0.0.1", "-A", "127.0.0.1",
         "-p", str(port), "-m", "2", *as_nobody, "-H", str(root),
         "--pidfile", str(root / "spamd.pid"), "--siteconfigpath", str(siteconf)],
        root,
    )  # fmt: skip
    try:
        took = timed_start(service, lambda: "server started" in service.output(), 180)
        print(f"spamd started in {took:.2f}s", file=sys.stderr)
        yield port, service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
