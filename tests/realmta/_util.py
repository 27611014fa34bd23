"""Small helpers shared by the real-MTA harnesses: ports, bounded waits, maildirs.

Every wait here is bounded by a deadline so a broken MTA makes a test fail
with a clear message instead of hanging CI.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

# Delivery program used by both MTA harnesses: writes stdin as one message
# into BASE/DOMAIN/LOCALPART/new/ (maildir layout).  Args: BASE DOMAIN LOCALPART.
DELIVER_SH = """\
#!/bin/sh
set -eu
user=$(printf '%s' "$3" | tr '/' '_')
domain=$(printf '%s' "$2" | tr '/' '_' | tr 'A-Z' 'a-z')
dir="$1/$domain/$user"
mkdir -p "$dir/tmp" "$dir/new" "$dir/cur"
name="$(date +%s.%N).$$.mx"
cat > "$dir/tmp/$name"
mv "$dir/tmp/$name" "$dir/new/$name"
"""


class Unavailable(RuntimeError):  # noqa: N818 - name fixed by the test API
    """A real MTA (or a tool it needs) is not installed: tests should skip."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for an unused TCP port on ``host`` (tiny race accepted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns a non-None value; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def port_listening(port: int) -> bool:
    """True if some socket LISTENs on TCP ``port``, checked via /proc/net/tcp*.

    Probing with connect() would make the MTA open a session (and contact its
    milters), which would show up as a spurious connection in filter tests.
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
                return True
    return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until ``port`` listens; uses /proc when present, else a connect probe."""
    if Path("/proc/net/tcp").exists():

        def check() -> bool | None:
            return True if port_listening(port) else None
    else:

        def check() -> bool | None:
            return True if port_open(host, port) else None

    wait_until(check, timeout, f"{host}:{port} to listen")


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 30.0,
    stdin: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run with a mandatory timeout and the output in the error text."""
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, timeout=timeout, check=False, env=env
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}: "
            f"{(proc.stdout + proc.stderr).decode(errors='replace').strip()[-2000:]}"
        )
    return proc


def maildir_messages(maildir: Path) -> list[bytes]:
    """Messages in ``maildir/new`` and ``maildir/cur``, oldest first."""
    files = [
        p
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for p in (maildir / sub).iterdir()
        if p.is_file()
    ]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [p.read_bytes() for p in files]


_Server = TypeVar("_Server", bound="MailServer")


class MailServer(ABC):
    """What both private MTAs offer a test: start/stop, SMTP in, maildirs out.

    Subclasses set ``host``, ``port`` and ``mail_dir`` and implement
    :meth:`start`, :meth:`stop` and :meth:`diagnostics` (shown when a wait
    for delivery times out).
    """

    host: str
    port: int
    mail_dir: Path

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def diagnostics(self) -> str:
        """What to show when mail did not arrive: log tail or queue listing."""

    def __enter__(self: _Server) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def smtp(self, timeout: float = 60.0) -> smtplib.SMTP:
        """A connected smtplib client (caller closes it), for multi-step sessions."""
        return smtplib.SMTP(
            self.host, self.port, local_hostname="client.test.example", timeout=timeout
        )

    def send(
        self, sender: str, recipients: Iterable[str], message: bytes, timeout: float = 60.0
    ) -> dict[str, tuple[int, bytes]]:
        """Submit over SMTP; returns smtplib's refused-recipient dict.

        smtplib raises SMTPRecipientsRefused/SMTPDataError/... on rejections,
        which tests can catch to inspect codes and texts.
        """
        with self.smtp(timeout) as client:
            return client.sendmail(sender, list(recipients), message)

    def maildir(self, localpart: str, domain: str = "example.com") -> Path:
        return self.mail_dir / domain / localpart

    def delivered(self, localpart: str, domain: str = "example.com") -> list[bytes]:
        return maildir_messages(self.maildir(localpart, domain))

    def wait_delivered(
        self, localpart: str, count: int = 1, timeout: float = 30.0, domain: str = "example.com"
    ) -> list[bytes]:
        """Wait until ``count`` messages sit in the maildir; return them oldest first."""

        def check() -> list[bytes] | None:
            msgs = self.delivered(localpart, domain)
            return msgs if len(msgs) >= count else None

        try:
            return wait_until(check, timeout, f"{count} message(s) for {localpart}@{domain}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None
