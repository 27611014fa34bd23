"""Two milter daemons behind HAProxy, mail through a real Postfix, backends killed and restarted.

Postfix reaches the milters as one ``inet:`` address: HAProxy in TCP mode,
with the milter-level health check of docs/scaling.md (send OPTNEG, expect
the OPTNEG reply) every 500 ms, and ``option redispatch``. Steady SMTP load
runs through Postfix while:

1. backend 1 is killed with SIGKILL (its sessions in flight are cut: Postfix
   answers those messages 4xx, as ``milter_default_action = tempfail`` says),
   then started again;
2. backend 2 is stopped with SIGTERM (``--shutdown-delay``, then it drains
   its backlog and its sessions) and started again: no message may fail;
3. backend 1 reloads its code with SIGUSR2: no message may fail.

Every message must end either delivered *with* the milter's header or
refused with a 4xx: never accepted unfiltered, never lost.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..realmta._util import Unavailable, free_port, port_listening, wait_until
from ..realmta.postfix import PostfixInstance
from .harness import REPO

pytestmark = [pytest.mark.realmta, pytest.mark.slow]

STAMP_MILTER = """\
from milterkit.milter import Accept, Milter
from milterkit.protocol.constants import Action


class Stamp(Milter):
    actions = Action.ADD_HEADERS

    def end_of_message(self):
        self.add_header("X-Milterkit-Filtered", "yes")
        return Accept()
"""

#: OPTNEG as Postfix sends it (version 6, all actions, all protocol bits), and QUIT.
OPTNEG_HEX = "0000000d4f00000006000001ff001fffff"
QUIT_HEX = "0000000151"

HAPROXY_CFG = """\
global
    stats socket {stats} mode 600 level admin
    pidfile {root}/haproxy.pid

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch 1

frontend milter
    bind 127.0.0.1:{port}
    default_backend milters

backend milters
    balance roundrobin
    option tcp-check
    tcp-check connect
    tcp-check send-binary {optneg}
    tcp-check expect binary 4f
    tcp-check send-binary {quit}
    server m1 127.0.0.1:{port1} check inter 500ms fall 2 rise 2
    server m2 127.0.0.1:{port2} check inter 500ms fall 2 rise 2
"""


class Backend:
    """One ``milterkit run`` daemon on 127.0.0.1:port."""

    def __init__(self, root: Path, name: str, port: int) -> None:
        self.root, self.name, self.port = root, name, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{name}.log"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "milterkit",
            "run",
            f"{self.root}/stamp.py:Stamp",
            "--socket",
            f"inet:{self.port}@127.0.0.1",
            "--workers",
            "2",
            "--shutdown-delay",
            "2",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PYTHONPATH": f"{REPO}/src", "PATH": "/usr/bin:/bin"},
                cwd=self.root,
            )
        wait_until(lambda: True if port_listening(self.port) else None, 30, self.name)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class HAProxy:
    def __init__(self, root: Path, port1: int, port2: int) -> None:
        self.port = free_port()
        self.stats = root / "haproxy.sock"
        config = root / "haproxy.cfg"
        config.write_text(
            HAPROXY_CFG.format(
                root=root,
                stats=self.stats,
                port=self.port,
                port1=port1,
                port2=port2,
                optneg=OPTNEG_HEX,
                quit=QUIT_HEX,
            )
        )
        self.proc = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def states(self) -> dict[str, str]:
        """Server name -> UP/DOWN/... from the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        out = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "milters" and fields[1] in ("m1", "m2"):
                out[fields[1]] = fields[17]
        return out

    def wait_state(self, wanted: dict[str, str], timeout: float = 30) -> None:
        def check() -> bool | None:
            with contextlib.suppress(OSError):
                states = self.states()
                if all(states.get(k, "").startswith(v) for k, v in wanted.items()):
                    return True
            return None

        wait_until(check, timeout, f"haproxy servers {wanted}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Outcome:
    phase: str
    rcpt: str
    code: int  # 250 accepted, else the refusal code; 0 for an exception
    detail: str = ""


class Load:
    """SMTP clients sending one message per connection through Postfix, noting each outcome."""

    def __init__(self, mta: PostfixInstance, clients: int = 4) -> None:
        self.mta = mta
        self.phase = "warm-up"
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _next(self) -> tuple[str, str]:
        with self._lock:
            self._count += 1
            return self.phase, f"m{self._count}"

    def _client(self) -> None:
        while not self._stop.is_set():
            phase, rcpt = self._next()
            message = (
                f"From: alice@example.org\r\nTo: {rcpt}@example.com\r\n"
                f"Subject: {rcpt}\r\n\r\nbody of {rcpt}\r\n"
            ).encode()
            try:
                self.mta.send("alice@example.org", [f"{rcpt}@example.com"], message)
                outcome = Outcome(phase, rcpt, 250)
            except smtplib.SMTPResponseException as exc:
                outcome = Outcome(phase, rcpt, exc.smtp_code, repr(exc.smtp_error))
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
                outcome = Outcome(phase, rcpt, code, repr(exc.recipients))
            except (OSError, smtplib.SMTPException) as exc:
                outcome = Outcome(phase, rcpt, 0, repr(exc))
            with self._lock:
                self.outcomes.append(outcome)

    def count(self, phase: str) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.phase == phase)

    def run_phase(self, phase: str, messages: int = 15, timeout: float = 120) -> None:
        """Switch to ``phase`` and wait until that many messages of it completed."""
        self.phase = phase
        wait_until(
            lambda: True if self.count(phase) >= messages else None,
            timeout,
            f"{messages} messages in phase {phase}",
        )

    def finish(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        return self.outcomes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Backend, Backend, HAProxy, PostfixInstance]]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (scripts/install-system-deps installs it)")
    tmp_path.chmod(0o755)
    (tmp_path / "stamp.py").write_text(STAMP_MILTER)
    one, two = Backend(tmp_path, "m1", free_port()), Backend(tmp_path, "m2", free_port())
    proxy: HAProxy | None = None
    try:
        one.start()
        two.start()
        proxy = HAProxy(tmp_path, one.port, two.port)
        proxy.wait_state({"m1": "UP", "m2": "UP"})
        try:
            mta = PostfixInstance(
                milters=f"inet:127.0.0.1:{proxy.port}",
                non_smtpd_milters=f"inet:127.0.0.1:{proxy.port}",
                milter_default_action="tempfail",
            )
        except Unavailable as exc:
            pytest.skip(f"postfix unavailable: {exc}")
        with mta:
            yield one, two, proxy, mta
    finally:
        for backend in (one, two):
            backend.kill()
        if proxy is not None:
            proxy.stop()


def test_rolling_kill_restart_and_reload_behind_haproxy(
    cluster: tuple[Backend, Backend, HAProxy, PostfixInstance],
) -> None:
    one, two, proxy, mta = cluster
    load = Load(mta)
    try:
        load.run_phase("warm-up")

        one.signal(signal.SIGKILL)  # (1) a crash: in-flight messages may be tempfailed
        one.wait()
        load.run_phase("m1-killed")
        one.start()
        proxy.wait_state({"m1": "UP", "m2": "UP"})
        load.run_phase("m1-back")

        two.signal(signal.SIGTERM)  # (2) a clean stop: nothing may fail
        load.phase = "m2-sigterm"
        assert two.wait(120) == 0, two.log()
        two.start()
        proxy.wait_state({"m1": "UP", "m2": "UP"})
        load.run_phase("m2-back")

        one.signal(signal.SIGUSR2)  # (3) a reload: nothing may fail
        load.phase = "m1-reload"
        wait_until(
            lambda: True if "reload: every worker replaced" in one.log() else None, 60, "reload"
        )
        load.run_phase("m1-reload", messages=load.count("m1-reload") + 10)
        load.run_phase("after")
    finally:
        outcomes = load.finish()

    clean = ("m2-sigterm", "m2-back", "m1-reload", "after")
    check_outcomes(mta, outcomes, clean=clean, what="kill, stop and reload")


def test_rolling_sigterm_restart_of_every_backend_fails_nothing(
    cluster: tuple[Backend, Backend, HAProxy, PostfixInstance],
) -> None:
    one, two, proxy, mta = cluster
    load = Load(mta)
    try:
        load.run_phase("warm-up")
        for backend in (one, two, one, two):  # two full rounds
            backend.signal(signal.SIGTERM)
            load.phase = f"{backend.name}-sigterm"
            assert backend.wait(120) == 0, backend.log()
            backend.start()
            proxy.wait_state({"m1": "UP", "m2": "UP"})
            load.run_phase(f"{backend.name}-back", messages=load.count(f"{backend.name}-back") + 10)
    finally:
        outcomes = load.finish()
    phases = {o.phase for o in outcomes}
    check_outcomes(mta, outcomes, clean=tuple(phases), what="rolling SIGTERM")


def check_outcomes(
    mta: PostfixInstance, outcomes: list[Outcome], clean: tuple[str, ...], what: str
) -> None:
    """Delivered and filtered, or 4xx (only outside ``clean`` phases); never lost."""
    accepted = [o for o in outcomes if o.code == 250]
    deferred = [o for o in outcomes if 400 <= o.code < 500]
    wrong = [o for o in outcomes if o.code != 250 and not 400 <= o.code < 500]
    assert wrong == [], wrong[:5]  # no 5xx, no broken SMTP session
    failed_clean = [o for o in deferred if o.phase in clean]
    assert failed_clean == [], failed_clean[:5]
    for outcome in accepted:  # delivered, and filtered
        (delivered,) = mta.wait_delivered(outcome.rcpt, timeout=120)
        assert b"\nX-Milterkit-Filtered: yes" in delivered, outcome
    for outcome in deferred:
        assert mta.delivered(outcome.rcpt) == []
    print(
        f"haproxy {what}: {len(outcomes)} messages, {len(accepted)} delivered filtered, "
        f"{len(deferred)} deferred 4xx (SIGKILL phases only), 0 lost"
    )
    assert len(accepted) >= 60
