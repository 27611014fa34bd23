"""A private, throw-away Postfix instance for integration tests.

Everything lives under one temporary directory: config (main.cf/master.cf),
queue, data, maildirs and the log file (``maillog_file`` via the ``postlog``
service, so no syslog daemon is needed).  The instance listens only on
127.0.0.1 (or ::1) on a free high port, does no DNS and delivers every
recipient of example.com / example.org to
``<root>/mail/<domain>/<localpart>/new/`` (maildir layout) through a tiny
``pipe(8)`` script: the ``virtual`` agent cannot derive the mailbox from the
address (regexp substitution is forbidden in ``virtual_mailbox_maps``), and
tests need arbitrary local parts.  Other domains are bounced by the
``error`` transport, never relayed.

Milter sockets: Postfix's smtpd and cleanup connect to the filter as the
unprivileged ``postfix`` user (no chroot here).  A ``unix:/path`` milter must
therefore be reachable by that user: every parent directory needs ``x`` for
others and the socket must be writable (e.g. chmod 0666, or put it under
``instance.root`` which is 0755).  ``inet:127.0.0.1:PORT`` avoids the issue.

Requires running as root (Postfix's master must start as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._util import (
    DELIVER_SH,
    MailServer,
    Unavailable,
    free_port,
    run,
    wait_for_port,
)

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
DOMAINS = ("example.com", "example.org")
# pipe(8) refuses root and the mail_owner; maildirs are written as this user.
DELIVER_USER = "nobody"

# Services needed for SMTP in, local maildir delivery and bounces; chroot "n".
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
local     unix - n n - - local
virtual   unix - n n - - virtual
lmtp      unix - - n - - lmtp
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
testdeliver unix - n n - - pipe flags=DRO user={deliver_user}
  argv=/bin/sh {deliver} {maildirs} ${{domain}} ${{user}}
"""


def postfix_available() -> str | None:
    """None if Postfix can be used here, else the reason it cannot."""
    if not os.path.exists(POSTFIX):
        return f"{POSTFIX} not found (run scripts/install-system-deps)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "user 'postfix' does not exist"
    return None


class PostfixInstance(MailServer):
    """Context manager running a private Postfix; see the module docstring."""

    def __init__(
        self,
        milters: str = "",
        non_smtpd_milters: str = "",
        milter_protocol: int | str = 6,
        milter_default_action: str = "tempfail",
        overrides: Mapping[str, str] | None = None,
        *,
        inet_protocols: str = "ipv4",
        host: str = "127.0.0.1",
        keep_dir: bool = False,
    ) -> None:
        reason = postfix_available()
        if reason is not None:
            raise Unavailable(reason)
        self.milters = milters
        self.non_smtpd_milters = non_smtpd_milters
        self.milter_protocol = str(milter_protocol)
        self.milter_default_action = milter_default_action
        self.overrides = dict(overrides or {})
        self.inet_protocols = inet_protocols
        self.host = host
        self.keep_dir = keep_dir
        self.port = free_port(host)
        self.root = Path(tempfile.mkdtemp(prefix="milterkit-postfix-"))
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.mail_dir = self.root / "mail"
        self.log_file = self.root / "log" / "maillog"
        self._started = False

    # -- configuration -------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters (overrides applied last)."""
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.test.example",
            "mydomain": "test.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": self.inet_protocols,
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "default_transport": "error:no outbound mail in tests",
            "relay_transport": "error:no outbound mail in tests",
            "virtual_mailbox_domains": " ".join(DOMAINS),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": "static:any",
            "virtual_transport": "testdeliver",
            "testdeliver_destination_recipient_limit": "1",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "delay_warning_time": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "smtpd_milters": self.milters,
            "non_smtpd_milters": self.non_smtpd_milters,
            "milter_protocol": self.milter_protocol,
            "milter_default_action": self.milter_default_action,
        }
        params.update(self.overrides)
        return params

    def _write_config(self) -> None:
        for d in (
            self.config_dir,
            self.queue_dir,
            self.data_dir,
            self.mail_dir,
            self.log_file.parent,
        ):
            d.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as "postfix" and must traverse to queue/maildirs.
        self.root.chmod(0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        nobody = pwd.getpwnam(DELIVER_USER)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        lines = [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        deliver = self.config_dir / "deliver.sh"
        deliver.write_text(DELIVER_SH)
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(
                listen=listen, deliver=deliver, maildirs=self.mail_dir, deliver_user=DELIVER_USER
            )
        )

    # -- lifecycle -----------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        proc = run([POSTFIX, "-c", str(self.config_dir), *args], timeout=timeout, check=check)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def start(self, timeout: float = 30.0) -> None:
        """Write config, ``postfix start`` and wait until the SMTP port accepts."""
        self._write_config()
        self._postfix("check")
        self._started = True
        try:
            self._postfix("start")
            wait_for_port(self.host, self.port, timeout)
        except BaseException:
            self.stop()
            raise

    def _master_pid(self) -> int | None:
        pidfile = self.queue_dir / "pid" / "master.pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the instance (escalating to SIGKILL) and remove its directory."""
        if self._started:
            self._started = False
            pid = self._master_pid()
            with contextlib.suppress(Exception):
                self._postfix("stop", timeout=timeout, check=False)
            if pid is not None:
                self._wait_gone(pid, timeout)
        if not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _wait_gone(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        # master did not exit: kill its process group (master is a group leader).
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    # -- mail in -------------------------------------------------------

    def sendmail_command(
        self, sender: str, recipients: Iterable[str], message: bytes, timeout: float = 60.0
    ) -> int:
        """Submit via the non-SMTP path (``sendmail -C``, pickup, non_smtpd_milters)."""
        cmd = [SENDMAIL, "-C", str(self.config_dir), "-i", "-f", sender, "--", *recipients]
        proc = run(cmd, stdin=message, timeout=timeout, check=False)
        return proc.returncode

    # -- mail out / queue ----------------------------------------------

    def diagnostics(self) -> str:
        return f"--- maillog tail ---\n{self.logs()[-3000:]}"

    def queue(self) -> list[dict[str, Any]]:
        """All queued messages as ``postqueue -j`` JSON objects (queue_name, queue_id...)."""
        proc = run(["postqueue", "-c", str(self.config_dir), "-j"], timeout=30)
        return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]

    def queue_ids(self, queue_name: str) -> list[str]:
        """Queue ids in one queue: "hold", "deferred", "active", "incoming", "maildrop"."""
        return [str(m["queue_id"]) for m in self.queue() if m.get("queue_name") == queue_name]

    def hold_queue(self) -> list[str]:
        return self.queue_ids("hold")

    def postcat(self, queue_id: str, *flags: str) -> str:
        """``postcat -c DIR -q ID`` output (flags e.g. "-h", "-b", "-e")."""
        proc = run(["postcat", "-c", str(self.config_dir), *flags, "-q", queue_id], timeout=30)
        return proc.stdout.decode(errors="replace")

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now."""
        run(["postqueue", "-c", str(self.config_dir), "-f"], timeout=30)

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
