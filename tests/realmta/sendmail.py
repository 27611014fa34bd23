"""A private Sendmail 8.17 daemon for integration tests.

Sendmail conflicts with Postfix in dpkg, so ``scripts/install-system-deps``
unpacks it into /opt/milterkit-sendmail instead of installing it.  This module
builds a sendmail.cf with m4 from that cf tree and runs ``sendmail -bD`` (in
the foreground, as root) on a free loopback port with its own queue, pid and
alias files under a temporary directory.

Delivery: every recipient in example.com / example.org is routed (LOCAL_RULE_0)
to a program mailer that writes ``<root>/mail/<domain>/<localpart>/new/*`` as
user nobody, the same layout as the Postfix harness.  No DNS is used.

Host name quirk: Sendmail qualifies the machine's host name at start-up
*before* reading the cf; an unqualified name ("vm") makes it sleep 60 s
("My unqualified host name ... unknown; sleeping for retry").  The daemon is
therefore started in private UTS + mount namespaces (``unshare``) with the
host name mx.test.example and a private /etc/hosts bind-mounted.  Without
``unshare`` it still works, after that 60 s pause.

Sendmail logs only to syslog (and there is no /dev/log here); ``logs()``
returns the daemon's stdout/stderr plus, when ``debug`` flags are given
(e.g. ``debug="-d64.5"`` traces milter traffic), the ``-D`` debug log file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from . import _sendmail_cf as cf
from ._util import (
    DELIVER_SH,
    MailServer,
    Unavailable,
    free_port,
    port_listening,
    run,
    wait_until,
)

__all__ = ["SendmailInstance", "Unavailable", "find_sendmail"]

SEARCH_ROOTS = (Path("/opt/milterkit-sendmail"), Path("/"))
BINARY = "usr/libexec/sendmail/sendmail"
ALT_BINARY = "usr/lib/sm.bin/sendmail"
CF_TREE = "usr/share/sendmail/cf"
HOSTNAME = "mx.test.example"
DELIVER_USER = "nobody"


def find_sendmail() -> tuple[Path, Path]:
    """(binary, cf tree) of a usable Sendmail, or raise Unavailable with the reason.

    $MILTERKIT_SENDMAIL_ROOT overrides the search (a dpkg -x unpack directory).
    """
    env_root = os.environ.get("MILTERKIT_SENDMAIL_ROOT")
    roots = (Path(env_root),) if env_root else SEARCH_ROOTS
    for root in roots:
        for rel in (BINARY, ALT_BINARY):
            binary, tree = root / rel, root / CF_TREE
            if binary.is_file() and (tree / "m4" / "cf.m4").is_file():
                return binary, tree
    raise Unavailable(
        "sendmail binary not found (looked for "
        f"{', '.join(str(r / BINARY) for r in roots)}); run scripts/install-system-deps"
    )


def _check_runtime() -> None:
    if shutil.which("m4") is None:
        raise Unavailable("m4 not found (needed to build sendmail.cf)")
    if os.geteuid() != 0:
        raise Unavailable("the Sendmail daemon must be started as root")


@functools.cache
def _namespaces_work() -> bool:
    """Can we give sendmail its own host name? (needs unshare + CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return False
    try:
        proc = subprocess.run(
            ["unshare", "--uts", "--mount", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class SendmailInstance(MailServer):
    """Context manager running a private ``sendmail -bD``; see the module docstring.

    ``milter`` is a Sendmail socket spec (``inet:PORT@127.0.0.1``,
    ``local:/path``) or empty for no filter; ``milter_flags`` is the ``F=``
    value (``T`` = tempfail when the filter fails, ``R`` reject, ``""`` ignore).
    """

    def __init__(
        self,
        milter: str = "",
        *,
        milter_flags: str = "T",
        milter_timeouts: str = "C:10s;S:30s;R:60s;E:5m",
        extra_mc: str = "",
        debug: str = "",
        keep_dir: bool = False,
    ) -> None:
        self.binary, self.cf_tree = find_sendmail()
        _check_runtime()
        self.milter = milter
        self.milter_flags = milter_flags
        self.milter_timeouts = milter_timeouts
        self.extra_mc = extra_mc
        self.debug = debug
        self.keep_dir = keep_dir
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.root = Path(tempfile.mkdtemp(prefix="milterkit-sendmail-"))
        self.queue_dir = self.root / "queue"
        self.mail_dir = self.root / "mail"
        self.cf_file = self.root / "sendmail.cf"
        self.log_file = self.root / "daemon.log"
        self.debug_file = self.root / "debug.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- configuration -------------------------------------------------

    def _layout(self) -> None:
        self.root.chmod(0o755)  # the delivery program runs as nobody
        self.queue_dir.mkdir(mode=0o700)
        self.mail_dir.mkdir()
        nobody = pwd.getpwnam(DELIVER_USER)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        (self.root / "deliver.sh").write_text(DELIVER_SH)
        (self.root / "service.switch").write_text("hosts\tfiles\naliases\tfiles\n")
        (self.root / "hosts").write_text(f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost\n")
        (self.root / "aliases").write_text("postmaster: root\nMAILER-DAEMON: postmaster\n")
        (self.root / "statistics").touch()

    def mc_text(self) -> str:
        """The .mc source fed to m4 (public so tests can inspect it)."""
        return cf.render_mc(
            cf_tree=self.cf_tree,
            root=self.root,
            port=self.port,
            hostname=HOSTNAME,
            milter=self.milter,
            milter_flags=self.milter_flags,
            milter_timeouts=self.milter_timeouts,
            deliver_user=DELIVER_USER,
            extra=self.extra_mc,
        )

    def _build_cf(self) -> None:
        mc = self.root / "sendmail.mc"
        mc.write_text(self.mc_text())
        proc = run(["m4", f"-D_CF_DIR_={self.cf_tree}/", str(mc)], timeout=60)
        self.cf_file.write_bytes(proc.stdout)
        # Build aliases.db so the daemon does not complain about a stale map.
        run(self._command("-bi"), timeout=150)

    def _command(self, *args: str) -> list[str]:
        """argv running sendmail with our cf, wrapped in the host-name namespaces."""
        argv = [str(self.binary), "-C", str(self.cf_file), *args]
        if not _namespaces_work():
            return argv
        hosts = self.root / "hosts"
        script = f'mount --bind "{hosts}" /etc/hosts && hostname {HOSTNAME} && exec "$@"'
        return [
            "unshare",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *argv,
        ]

    # -- lifecycle -----------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Build the cf, start ``sendmail -bD`` and wait until the port listens."""
        try:
            self._layout()
            self._build_cf()
            with self.log_file.open("wb") as log:
                self._proc = subprocess.Popen(
                    self._command("-bD", *self._debug_args()),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_until(self._listening, timeout, f"sendmail on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _debug_args(self) -> list[str]:
        # -D: without it -d output goes to stdout, which in the SMTP children
        # is the client socket and corrupts the session.
        if not self.debug:
            return []
        return ["-D", str(self.debug_file), *self.debug.split()]

    def _listening(self) -> bool | None:
        """Port check for wait_until that fails fast if the daemon died."""
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"sendmail exited ({self._proc.returncode}): {self.logs()}")
        return True if port_listening(self.port) else None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the daemon and all children it forked; remove the directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # TERM the daemon alone first so it can reap its own children
            # (orphans would become zombies under a non-reaping init).
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            # delivery children forked by the daemon share its process group
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        if not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- mail in / out -------------------------------------------------

    def diagnostics(self) -> str:
        return f"--- mailq ---\n{self.mailq()}"

    # -- queue -----------------------------------------------------------

    def queue_files(self) -> dict[str, Path]:
        """Queue id -> control file; ``qf`` = normal, ``hf`` = quarantined."""
        out: dict[str, Path] = {}
        for p in self.queue_dir.iterdir():
            if p.name[:2] in ("qf", "hf"):
                out[p.name[2:]] = p
        return out

    def quarantined(self) -> dict[str, str]:
        """Queue id -> quarantine reason (the control file's ``q`` line)."""
        result: dict[str, str] = {}
        for qid, path in self.queue_files().items():
            reason = quarantine_reason(path.read_bytes())
            if reason is not None:
                result[qid] = reason
        return result

    def mailq(self, quarantine: bool = False) -> str:
        """``sendmail -bp`` (or ``-bp -qQ`` for the quarantine) output."""
        args = ("-bp", "-qQ") if quarantine else ("-bp",)
        proc = run(self._command(*args), timeout=30, check=False)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def flush(self) -> None:
        """Run the queue once, synchronously (``sendmail -q``)."""
        run(self._command("-q"), timeout=120, check=False)

    def logs(self) -> str:
        """Daemon stdout/stderr followed by the ``-D`` debug log (if debugging)."""
        parts = []
        for path in (self.log_file, self.debug_file):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)


def quarantine_reason(qf: bytes) -> str | None:
    """The ``q`` line of a Sendmail qf/hf file, if any."""
    m = re.search(rb"^q(.*)$", qf, re.MULTILINE)
    return m.group(1).decode(errors="replace") if m else None
