"""Smoke tests of the real-MTA infrastructure itself (not of milterkit).

They prove the harnesses deliver mail, that a failing milter has the
configured effect and that the libmilter reference filter negotiates and
acts, so later integration tests can trust the plumbing.
"""

from __future__ import annotations

import smtplib
import socket
import struct
import time
from collections.abc import Callable

import pytest

from ._util import Unavailable, free_port
from .conftest import RefFilter
from .postfix import PostfixInstance
from .sendmail import SendmailInstance

pytestmark = pytest.mark.realmta

SENDER = "alice@example.org"


def message(subject: str, to: str = "bob@example.com") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello from the infra test\r\n"
    ).encode()


def test_postfix_delivers_smtp(postfix: PostfixInstance) -> None:
    assert postfix.send(SENDER, ["bob@example.com"], message("smtp path")) == {}
    [msg] = postfix.wait_delivered("bob", 1, timeout=30)
    assert b"Subject: smtp path" in msg
    assert b"by mx.test.example (Postfix)" in msg


def test_postfix_delivers_sendmail_command(postfix: PostfixInstance) -> None:
    rc = postfix.sendmail_command(SENDER, ["carol@example.org"], message("cmd path"))
    assert rc == 0
    [msg] = postfix.wait_delivered("carol", 1, timeout=30, domain="example.org")
    assert b"Subject: cmd path" in msg
    assert "starting the Postfix mail system" in postfix.logs()


def test_postfix_with_ref_filter_holds_and_modifies(ref_filter: RefFilter) -> None:
    try:
        instance = PostfixInstance(milters=ref_filter.postfix_spec)
    except Unavailable as exc:
        pytest.skip(f"postfix unavailable: {exc}")
    with instance as pf:
        pf.send(SENDER, ["bob@example.com"], message("quarantine change"))
        [qid] = _wait(pf.hold_queue, "held message")
        content = pf.postcat(qid)
        assert "Subject: changed" in content and "X-Ref: yes" in content
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            pf.send(SENDER, ["reject@example.com"], message("x"))
        assert err.value.recipients["reject@example.com"][0] == 550


def test_sendmail_delivers_smtp(sendmail: SendmailInstance) -> None:
    assert sendmail.send(SENDER, ["bob@example.com"], message("sendmail path")) == {}
    [msg] = sendmail.wait_delivered("bob", 1, timeout=30)
    assert b"Subject: sendmail path" in msg
    assert b"by mx.test.example (8.17" in msg


def test_sendmail_unreachable_milter_tempfails() -> None:
    """F=T with nothing listening: Sendmail must tempfail, not deliver."""
    try:
        instance = SendmailInstance(milter=f"inet:{free_port()}@127.0.0.1", milter_flags="T")
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")
    with instance as sm, pytest.raises(smtplib.SMTPResponseException) as err:
        sm.send(SENDER, ["bob@example.com"], message("never"))
    assert 400 <= err.value.smtp_code < 500


def test_sendmail_with_ref_filter_quarantines(ref_filter: RefFilter) -> None:
    try:
        instance = SendmailInstance(milter=ref_filter.sendmail_spec)
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")
    with instance as sm:
        sm.send(SENDER, ["bob@example.com"], message("quarantine"))
        reasons = _wait(lambda: list(sm.quarantined().values()), "quarantined message")
        assert reasons == ["ref quarantine"]
        sm.send(SENDER, ["bob@example.com"], message("insert"))
        [msg] = sm.wait_delivered("bob", 1, timeout=30)
        assert msg.index(b"X-Top: top") < msg.index(b"Subject: insert")
        assert b"X-Ref: yes" in msg


def test_ref_filter_answers_optneg(ref_filter: RefFilter) -> None:
    """The raw OPTNEG from the brief gets an 'O' reply with our action bits."""
    with socket.create_connection(("127.0.0.1", ref_filter.port), timeout=10) as s:
        s.sendall(bytes.fromhex("0000000D4F00000006000001FF001FFFFF"))
        length, cmd = struct.unpack(">IB", _recv_exact(s, 5))
        payload = _recv_exact(s, length - 1)
    assert cmd == ord("O")
    version, actions, protocol = struct.unpack(">III", payload[:12])
    assert (version, actions, protocol) == (6, 0x1FF, 0x400)
    assert payload[12:] == b"\x00\x00\x00\x00j {daemon_name}\x00"


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _wait(get: Callable[[], list[str]], what: str, timeout: float = 20.0) -> list[str]:
    """Poll ``get`` until it returns a non-empty list (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = get()
        if items:
            return items
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout}s")
