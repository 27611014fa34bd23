"""Plumbing of the end-to-end suite: milter processes, MTA targets, messages.

* :class:`MilterProcess` runs a milter class in a subprocess through the
  production daemon (``python -m milterkit run`` when that CLI works on this
  checkout, else ``python -m tests.e2e.launch``, which calls
  :func:`milterkit.run` the same way) and knows the socket spelling each MTA
  wants.
* :class:`Target` wraps a private Postfix or Sendmail (tests/realmta) behind
  one interface, so a test body runs unchanged against both MTAs.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import functools
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..realmta._util import free_port, port_listening, wait_until
from ..realmta.postfix import PostfixInstance
from ..realmta.sendmail import SendmailInstance, quarantine_reason

REPO = Path(__file__).resolve().parents[2]
SENDER = "alice@example.org"
T = TypeVar("T")


# --------------------------------------------------------------------- milters


@functools.cache
def cli_usable() -> bool:
    """Does ``python -m milterkit run --help`` work here (the CLI being wired up)?"""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "milterkit", "run", "--help"],
            capture_output=True,
            timeout=30,
            check=False,
            cwd=REPO,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@dataclass
class MilterAddress:
    """Where a milter listens, spelled for milterkit, Postfix and Sendmail."""

    transport: str  # "inet" or "unix"
    port: int = 0
    path: str = ""

    @classmethod
    def new(cls, transport: str) -> MilterAddress:
        if transport == "inet":
            return cls("inet", port=free_port())
        # Postfix connects as user postfix: the directory must be traversable
        # by others (mkdtemp makes 0700) and the socket world-writable.
        directory = tempfile.mkdtemp(prefix="milterkit-e2e-")
        os.chmod(directory, 0o755)
        return cls("unix", path=os.path.join(directory, "milter.sock"))

    @property
    def milterkit(self) -> str:
        return f"inet:{self.port}@127.0.0.1" if self.transport == "inet" else f"unix:{self.path}"

    @property
    def postfix(self) -> str:
        return f"inet:127.0.0.1:{self.port}" if self.transport == "inet" else f"unix:{self.path}"

    @property
    def sendmail(self) -> str:
        return f"inet:{self.port}@127.0.0.1" if self.transport == "inet" else f"local:{self.path}"

    def listening(self) -> bool:
        if self.transport == "inet":
            return port_listening(self.port)
        # no connect probe: it would open a milter session
        with contextlib.suppress(OSError):
            return (os.stat(self.path).st_mode & 0o170000) == 0o140000
        return False


@dataclass
class MilterProcess:
    """A milter class served by the daemon runtime in a child process."""

    target: str  # "module:Class" or a script path (see ``script``)
    address: MilterAddress
    error_decision: str = "tempfail"
    script: Sequence[str] = ()  # a whole argv instead of the daemon (libMilterPHP sample)
    log_file: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="milterkit-e2e-", suffix=".log")
        os.close(fd)
        self.log_file = Path(name)

    def argv(self) -> list[str]:
        if self.script:
            return [sys.executable, *self.script]
        if cli_usable():
            return [
                sys.executable, "-m", "milterkit", "run", self.target,
                "--socket", self.address.milterkit, "--workers", "1",
                "--socket-mode", "666", "--error-decision", self.error_decision,
                "--drain-timeout", "2",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "tests.e2e.launch", self.target, self.address.milterkit,
            "--workers", "1", "--socket-mode", "666", "--error-decision", self.error_decision,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> MilterProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")) if p
        )
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"milter {' '.join(self.argv())} exited {self.proc.returncode}:\n{self.logs()}"
                )
            return True if self.address.listening() else None

        try:
            wait_until(ready, timeout, f"milter on {self.address.milterkit}")
        except BaseException:
            self.stop()
            raise
        if self.address.transport == "unix" and self.script:
            # the daemon got --socket-mode 666; a sample script without that option
            # leaves 0660 root:root, which Postfix (connecting as postfix) cannot use
            with contextlib.suppress(OSError):
                os.chmod(self.address.path, 0o666)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self.address.transport == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MilterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------ MTAs


@dataclass
class Held:
    """A message the MTA put aside (Postfix hold queue / Sendmail quarantine)."""

    queue_id: str
    reason: str | None  # Sendmail keeps the reason in the queue file; Postfix logs it
    content: str  # postcat output / Sendmail control file (envelope + headers)


class Target:
    """One private MTA with a milter attached; same calls for Postfix and Sendmail."""

    def __init__(self, mta: PostfixInstance | SendmailInstance, transport: str) -> None:
        self.mta = mta
        self.transport = transport
        self.name = "postfix" if isinstance(mta, PostfixInstance) else "sendmail"

    def __repr__(self) -> str:
        return f"<Target {self.name}-{self.transport}>"

    @property
    def is_postfix(self) -> bool:
        return self.name == "postfix"

    def smtp(self) -> smtplib.SMTP:
        return self.mta.smtp()

    def send(
        self, recipients: Iterable[str], message: bytes, sender: str = SENDER
    ) -> dict[str, tuple[int, bytes]]:
        return self.mta.send(sender, list(recipients), message)

    def wait_delivered(
        self, localpart: str, count: int = 1, timeout: float = 30.0, domain: str = "example.com"
    ) -> list[bytes]:
        return self.mta.wait_delivered(localpart, count, timeout, domain)

    def delivered(self, localpart: str, domain: str = "example.com") -> list[bytes]:
        return self.mta.delivered(localpart, domain)

    def held(self) -> list[Held]:
        out = []
        if isinstance(self.mta, PostfixInstance):
            for qid in self.mta.hold_queue():
                reason = _postfix_hold_reason(self.mta.logs(), qid)
                out.append(Held(qid, reason, self.mta.postcat(qid)))
        else:
            for qid, path in self.mta.queue_files().items():
                with contextlib.suppress(FileNotFoundError):
                    qf = path.read_bytes()
                    reason = quarantine_reason(qf)
                    if reason is not None:
                        out.append(Held(qid, reason, qf.decode(errors="replace")))
        return out

    def wait_held(self, token: str, timeout: float = 20.0) -> Held:
        """The held message whose queue file mentions ``token``."""

        def find() -> Held | None:
            return next((h for h in self.held() if token in h.content), None)

        try:
            return wait_until(find, timeout, f"a held message containing {token!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    def queued_ids(self) -> list[str]:
        """Every message still in the MTA's queue (any state)."""
        if isinstance(self.mta, PostfixInstance):
            return [str(m["queue_id"]) for m in self.mta.queue()]
        return list(self.mta.queue_files())

    def queue_text(self) -> str:
        """Every queued message's envelope as text (``postqueue -j`` / qf files)."""
        if isinstance(self.mta, PostfixInstance):
            return "\n".join(json.dumps(m) for m in self.mta.queue())
        parts = []
        for path in self.mta.queue_files().values():
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def logs(self) -> str:
        return self.mta.logs()

    def diagnostics(self) -> str:
        if isinstance(self.mta, PostfixInstance):
            return f"--- maillog tail ---\n{self.mta.logs()[-4000:]}"
        return f"--- mailq ---\n{self.mta.mailq()}\n--- logs ---\n{self.mta.logs()[-4000:]}"


def _postfix_hold_reason(log: str, queue_id: str) -> str | None:
    """Postfix logs ``QUEUEID: milter-hold: END-OF-MESSAGE from ...: REASON; from=<...``."""
    m = re.search(rf"{queue_id}: milter-hold: \S+ from [^:]*: (.*?); from=", log)
    return m.group(1) if m else None


# -------------------------------------------------------------------- messages


def token() -> str:
    return uuid.uuid4().hex[:10]


def unique(prefix: str) -> str:
    """A fresh local part, so tests sharing one MTA never see each other's mail."""
    return f"{prefix}-{token()}"


def make_message(
    commands: str,
    *,
    to: str,
    sender: str = SENDER,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"Hello from the milterkit end-to-end suite.\r\n",
    tag: str | None = None,
) -> bytes:
    """A CRLF message whose Subject carries the milter commands (see milters.py)."""
    tag = tag or token()
    lines = [
        *(f"{name}: {value}" for name, value in headers),
        f"From: {sender}",
        f"To: {to}",
        f"Subject: e2e: {commands} id={tag}",
        f"Message-ID: <{tag}@client.test.example>",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def header_names(raw: bytes) -> list[str]:
    """Header names in order (unfolded), from a delivered message."""
    head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n")
    return [line.split(b":", 1)[0].decode() for line in head.split(b"\n") if line[:1] not in b" \t"]


def body_of(raw: bytes) -> bytes:
    """The body as delivered, normalised to CRLF line ends."""
    normal = raw.replace(b"\r\n", b"\n")
    body = normal.split(b"\n\n", 1)[1] if b"\n\n" in normal else b""
    return body.replace(b"\n", b"\r\n")


def settle(seconds: float = 1.5) -> None:
    """Give the MTA time to (wrongly) deliver before asserting that it did not."""
    time.sleep(seconds)


def retry(fn: Callable[[], T], attempts: int = 3, delay: float = 0.5) -> T:
    for i in range(attempts):
        try:
            return fn()
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")
