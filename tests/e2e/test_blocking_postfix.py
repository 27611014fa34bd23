"""Blocking callbacks behind a real Postfix: a slow ``def`` delays only its own message.

One worker, a sync ``mail_from`` that sleeps 2 s, Postfix's
``milter_command_timeout = 5s`` and 20 SMTP sessions at once: run inline one
after the other, the later sessions would wait far past 5 s and Postfix
would tempfail them ("451 4.7.1"). With the thread pool every one passes.
"""

from __future__ import annotations

import smtplib
import threading
import uuid

import pytest

from .conftest import postfix_instance
from .harness import MilterAddress, MilterProcess

SESSIONS = 20
TARGET = "tests.e2e.blocking_milters:SleepyMailFrom"


def _daemon(mode: str | None) -> MilterProcess:
    address = MilterAddress.new("inet")
    argv = ["-m", "milterkit", "run", TARGET, "--socket", address.milterkit, "--workers", "1"]
    if mode is not None:
        argv += ["--execution", mode]
    return MilterProcess(TARGET, address, script=argv)


def _send_all(postfix: object, tag: str) -> tuple[list[str], list[str]]:
    """20 sessions at once; returns (failures, subjects sent)."""
    failures: list[str] = []
    subjects = [f"{tag}-{i}" for i in range(SESSIONS)]

    def one(subject: str) -> None:
        message = f"From: a@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
        try:
            postfix.send("a@example.org", ["bob@example.com"], message)  # type: ignore[attr-defined]
        except smtplib.SMTPException as exc:
            failures.append(f"{subject}: {exc}")

    threads = [threading.Thread(target=one, args=(s,)) for s in subjects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return failures, subjects


@pytest.mark.realmta
@pytest.mark.parametrize("mode", [None, "threads"], ids=["default-auto", "threads"])
def test_twenty_sessions_against_a_sleeping_sync_milter_all_pass(mode: str | None) -> None:
    with _daemon(mode) as milter:
        overrides = {"milter_command_timeout": "5s", "smtpd_client_connection_count_limit": "0"}
        with postfix_instance(milter.address.postfix, overrides=overrides) as postfix:
            failures, subjects = _send_all(postfix, uuid.uuid4().hex[:8])
            assert failures == [], f"{failures}\n{milter.logs()}\n{postfix.diagnostics()}"
            delivered = postfix.wait_delivered("bob", SESSIONS, timeout=60)
    assert all(b"X-Sleepy: checked" in m for m in delivered)
    seen = {
        line.split(b":", 1)[1].strip().decode()
        for m in delivered
        for line in m.splitlines()
        if line.startswith(b"Subject:")
    }
    assert seen == set(subjects)
    assert "milter timeout" not in postfix.logs()
