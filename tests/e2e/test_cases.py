"""milterkit against real MTAs: every case for Postfix and Sendmail, over inet and unix.

Each test sends SMTP through a private MTA (tests/realmta) whose milter is
the :class:`~tests.e2e.milters.E2EMilter` daemon, then asserts on what the
MTA did: the delivered message (maildir), its queue (Postfix hold queue,
Sendmail quarantine) or the SMTP reply.  The ``target`` fixture runs every
test four times: postfix-inet, postfix-unix, sendmail-inet, sendmail-unix.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from . import milters as m
from .harness import (
    SENDER,
    Target,
    body_of,
    header_names,
    make_message,
    parse,
    settle,
    token,
    unique,
)

pytestmark = pytest.mark.realmta


def deliver_one(target: Target, commands: str, **kwargs: object) -> bytes:
    """Send one message with ``commands`` to a fresh recipient; return it as delivered."""
    rcpt = unique("rcpt")
    msg = make_message(commands, to=f"{rcpt}@example.com", **kwargs)  # type: ignore[arg-type]
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    [got] = target.wait_delivered(rcpt)
    return got


# ------------------------------------------------------------------- headers


def test_add_header(target: Target) -> None:
    got = deliver_one(target, "add-header")
    assert parse(got).get_all("X-E2E-Added") == ["yes"]
    assert not [n for n in header_names(got) if n.startswith("X-E2E-") and n != "X-E2E-Added"]
    assert b"\nX-E2E-Added: yes\n" in got.replace(b"\r\n", b"\n")  # one space, as libmilter
    names = header_names(got)
    # SMFIR_ADDHEADER appends: after every header the client sent
    assert names.index("X-E2E-Added") > names.index("Date")


def test_insert_header_at_top(target: Target) -> None:
    got = deliver_one(target, "insert-header", headers=[("X-First", "original")])
    assert parse(got).get_all("X-E2E-Top") == ["top"]
    names = header_names(got)
    top = names.index("X-E2E-Top")
    # before every header of the message as submitted ...
    assert top < names.index("X-First") < names.index("From")
    # ... and before the MTA's own trace header: both MTAs put index 0 at the very top of
    # the message they store; only delivery-time headers (Return-Path etc.) come first
    assert top < names.index("Received")
    assert set(names[:top]) <= {"Return-Path", "Delivered-To", "X-Original-To"}


def test_change_header(target: Target) -> None:
    got = deliver_one(
        target,
        "change-header",
        headers=[("X-Change-Me", "original one"), ("X-Change-Me", "original two")],
    )
    # index 1: only the first X-Change-Me changes, in place
    assert parse(got).get_all("X-Change-Me") == ["changed by milter", "original two"]
    assert b"\nX-Change-Me: changed by milter\n" in got.replace(b"\r\n", b"\n")


def test_delete_header(target: Target) -> None:
    got = deliver_one(
        target, "delete-header", headers=[("X-Delete-Me", "doomed"), ("X-Keep-Me", "kept")]
    )
    parsed = parse(got)
    assert parsed.get_all("X-Delete-Me") is None
    assert parsed.get_all("X-Keep-Me") == ["kept"]


def test_change_first_header(target: Target) -> None:
    got = deliver_one(target, "change-first", headers=[("X-First", "original")])
    parsed = parse(got)
    first_seen = parsed["X-E2E-First-Name"]
    # neither MTA shows the milter its own Received: header: the first header is the client's
    assert first_seen == "X-First"
    assert parsed.get_all("X-First") == ["changed-first"]
    assert header_names(got).index("X-First") < header_names(got).index("From")


# ---------------------------------------------------------------------- body


def test_replace_body(target: Target) -> None:
    got = deliver_one(target, "replace-body", body=b"the original body\r\n")
    assert body_of(got) == m.SMALL_BODY
    assert b"the original body" not in got


def test_replace_body_larger_than_64k(target: Target) -> None:
    original = b"x" * 70 + b"\r\n"
    got = deliver_one(target, "replace-big", body=original * 1000)
    big = m.big_body()
    assert len(big) > 64 * 1024
    assert body_of(got) == big


# ------------------------------------------------------------------ envelope


def test_change_sender(target: Target) -> None:
    got = deliver_one(target, "change-from")
    assert parse(got)["Return-Path"] == f"<{m.CHANGED_FROM}>"
    # the header From is untouched: only the envelope changes
    assert parse(got)["From"] == SENDER


def test_change_sender_esmtp_args_in_queue(target: Target) -> None:
    """Hold the message so the queue file shows what the MTA kept of the ESMTP args."""
    tag = token()
    rcpt = unique("chgfrom")
    msg = make_message("change-from quarantine", to=f"{rcpt}@example.com", tag=tag)
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    held = target.wait_held(tag)
    if target.is_postfix:
        # postcat: the sender record and the DSN attributes Postfix keeps (RET, ENVID)
        assert f"sender: {m.CHANGED_FROM}" in held.content
        assert "named_attribute: envelope_id=e2e-envid-42" in held.content
        assert "named_attribute: ret_flags=2" in held.content  # DSN_RET_HDRS
    else:
        # Sendmail qf: S sender, Z envid; F flags d (RET given) and n (RET=HDRS: no body)
        lines = held.content.splitlines()
        assert f"S<{m.CHANGED_FROM}>" in lines
        assert "Ze2e-envid-42" in lines
        flags = next(line for line in lines if line.startswith("F"))
        assert {"d", "n"} <= set(flags[1:])


def test_add_recipient(target: Target) -> None:
    tag = token()
    rcpt = unique("orig")
    msg = make_message("add-rcpt", to=f"{rcpt}@example.com", tag=tag)
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    target.wait_delivered(rcpt)
    added = _wait_tagged(target, m.ADDED_RCPT.split("@")[0], tag)
    assert f"id={tag}".encode() in added


def test_add_recipient_with_args(target: Target) -> None:
    tag = token()
    rcpt = unique("orig")
    msg = make_message("add-rcpt-args", to=f"{rcpt}@example.com", tag=tag)
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    target.wait_delivered(rcpt)
    _wait_tagged(target, m.ADDED_RCPT_ARGS_ADDR.split("@")[0], tag)


def test_add_recipient_args_in_queue(target: Target) -> None:
    """Hold the message to see that the MTA kept NOTIFY=NEVER for the added recipient."""
    tag = token()
    rcpt = unique("orig")
    msg = make_message("add-rcpt-args quarantine", to=f"{rcpt}@example.com", tag=tag)
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    held = target.wait_held(tag)
    if target.is_postfix:
        # postcat: the DSN notify attribute precedes the recipient it belongs to (1 = NEVER)
        assert (
            f"named_attribute: notify_flags=1\noriginal_recipient: {m.ADDED_RCPT_ARGS_ADDR}\n"
            f"recipient: {m.ADDED_RCPT_ARGS_ADDR}" in held.content
        )
    else:
        # Sendmail qf recipient line: P primary, N notify never
        assert f"RPN:<{m.ADDED_RCPT_ARGS_ADDR}>" in held.content.splitlines()


def test_delete_recipient(target: Target) -> None:
    keep, gone = unique("keep"), unique("gone")
    msg = make_message("del-rcpt", to=f"{keep}@example.com, {gone}@example.com")
    assert target.send([f"{keep}@example.com", f"{gone}@example.com"], msg) == {}
    target.wait_delivered(keep)
    settle()
    assert target.delivered(gone) == []
    # removed, not deferred: nothing for it waits in the queue
    assert gone not in target.queue_text()


def _wait_tagged(target: Target, localpart: str, tag: str) -> bytes:
    """The message for ``localpart`` carrying ``tag`` (the mailbox is shared by tests)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for msg in target.delivered(localpart):
            if f"id={tag}".encode() in msg:
                return msg
        time.sleep(0.1)
    raise TimeoutError(f"no message {tag} for {localpart}\n{target.diagnostics()}")


# ----------------------------------------------------------------- decisions


def test_reject_recipient_multiline_enhanced(target: Target) -> None:
    good, bad = unique("good"), unique("reject")
    msg = make_message("add-header", to=f"{good}@example.com")
    refused = target.send([f"{good}@example.com", f"{bad}@example.com"], msg)
    code, text = refused[f"{bad}@example.com"]
    assert code == 550
    lines = text.decode().split("\n")
    expected = [f"{m.REJECT_ENHANCED} {line}" for line in m.REJECT_LINES]
    if not target.is_postfix:
        # Sendmail names the recipient in the first line of a RCPT reply
        expected[0] = f"{m.REJECT_ENHANCED} <{bad}@example.com>... {m.REJECT_LINES[0]}"
    assert lines == expected
    # the other recipient still gets the message
    [got] = target.wait_delivered(good)
    assert parse(got)["X-E2E-Added"] == "yes"


def test_tempfail_recipient_multiline_enhanced(target: Target) -> None:
    bad = unique("tempfail")
    msg = make_message("add-header", to=f"{bad}@example.com")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        target.send([f"{bad}@example.com"], msg)
    code, text = err.value.recipients[f"{bad}@example.com"]
    assert code == 451
    assert text.decode().split("\n") == [
        f"{m.TEMPFAIL_ENHANCED} {line}" for line in m.TEMPFAIL_LINES
    ]


def test_tempfail(target: Target) -> None:
    rcpt = unique("eomtempfail")
    msg = make_message("add-header tempfail", to=f"{rcpt}@example.com")
    with pytest.raises(smtplib.SMTPDataError) as err:
        target.send([f"{rcpt}@example.com"], msg)
    assert 400 <= err.value.smtp_code < 500
    settle()
    assert target.delivered(rcpt) == []


def test_reject_message(target: Target) -> None:
    rcpt = unique("eomreject")
    msg = make_message("reject", to=f"{rcpt}@example.com")
    with pytest.raises(smtplib.SMTPDataError) as err:
        target.send([f"{rcpt}@example.com"], msg)
    assert 500 <= err.value.smtp_code < 600
    settle()
    assert target.delivered(rcpt) == []


def test_discard(target: Target) -> None:
    rcpt = unique("discard")
    tag = token()
    msg = make_message("add-header discard", to=f"{rcpt}@example.com", tag=tag)
    # the client is told 250: the message is accepted and silently dropped
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    settle()
    assert target.delivered(rcpt) == []
    assert all(tag not in h.content for h in target.held())
    if target.is_postfix:
        assert "milter-discard: END-OF-MESSAGE" in target.logs()


def test_quarantine(target: Target) -> None:
    rcpt = unique("quarantine")
    tag = token()
    msg = make_message("add-header quarantine", to=f"{rcpt}@example.com", tag=tag)
    assert target.send([f"{rcpt}@example.com"], msg) == {}
    held = target.wait_held(tag)
    if target.is_postfix:
        # Postfix drops the milter's reason: the hold queue has no place for it and
        # cleanup logs a fixed text
        assert held.reason == "milter triggers HOLD action"
    else:
        assert held.reason == m.QUARANTINE_REASON
    # held with the modifications already applied
    assert "X-E2E-Added: yes" in held.content
    settle()
    assert target.delivered(rcpt) == []


def test_callback_raises_default_tempfail(target: Target) -> None:
    """An exception in a callback: the default error decision (tempfail) reaches the client."""
    rcpt = unique("raise")
    msg = make_message("add-header raise", to=f"{rcpt}@example.com")
    with pytest.raises(smtplib.SMTPDataError) as err:
        target.send([f"{rcpt}@example.com"], msg)
    assert 400 <= err.value.smtp_code < 500
    settle()
    assert target.delivered(rcpt) == []
    # the milter process survived and serves the next message
    assert parse(deliver_one(target, "add-header"))["X-E2E-Added"] == "yes"


# ---------------------------------------------------------------- sessions


def test_several_messages_on_one_connection(target: Target) -> None:
    rcpts = [unique(f"multi{i}") for i in range(4)]
    addr = [f"{r}@example.com" for r in rcpts]
    with target.smtp() as client:
        client.sendmail(SENDER, [addr[0]], make_message("stamp=1 add-header", to=addr[0]))
        client.sendmail(
            SENDER,
            [addr[1]],
            make_message("stamp=2 replace-body", to=addr[1], body=b"second original\r\n"),
        )
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(SENDER, [addr[2]], make_message("stamp=3 tempfail", to=addr[2]))
        client.sendmail(
            SENDER,
            [addr[3]],
            make_message("stamp=4 delete-header", to=addr[3], headers=[("X-Delete-Me", "x")]),
        )
    [one] = target.wait_delivered(rcpts[0])
    [two] = target.wait_delivered(rcpts[1])
    [four] = target.wait_delivered(rcpts[3])
    p1, p2, p4 = parse(one), parse(two), parse(four)
    assert p1.get_all("X-E2E-Stamp") == ["1"] and p1["X-E2E-Added"] == "yes"
    assert body_of(one) == b"Hello from the milterkit end-to-end suite.\r\n"
    assert p2.get_all("X-E2E-Stamp") == ["2"] and p2["X-E2E-Added"] is None
    assert body_of(two) == m.SMALL_BODY
    assert p4.get_all("X-E2E-Stamp") == ["4"] and p4["X-E2E-Added"] is None
    assert p4["X-Delete-Me"] is None
    assert body_of(four) == b"Hello from the milterkit end-to-end suite.\r\n"
    settle(0.5)
    assert target.delivered(rcpts[2]) == []


def test_sendmail_command(target: Target) -> None:
    """Submission through the ``sendmail`` command: Postfix's non_smtpd_milters path."""
    if not target.is_postfix:
        pytest.skip(
            "Sendmail applies milters to SMTP sessions only; its command-line submission "
            "reaches them via the MSP relaying over SMTP (covered by the SMTP cases)"
        )
    assert target.mta.__class__.__name__ == "PostfixInstance"
    rcpt = unique("cmd")
    msg = make_message("add-header change-header", to=f"{rcpt}@example.com",
                       headers=[("X-Change-Me", "before")])  # fmt: skip
    rc = target.mta.sendmail_command(SENDER, [f"{rcpt}@example.com"], msg)  # type: ignore[union-attr]
    assert rc == 0
    [got] = target.wait_delivered(rcpt)
    parsed = parse(got)
    assert parsed["X-E2E-Added"] == "yes"
    assert parsed["X-Change-Me"] == "changed by milter"


def test_macros_reach_the_milter(target: Target) -> None:
    """The per-stage macro lists the milter asks for in OPTNEG (v6) are sent."""
    got = parse(deliver_one(target, "macros"))
    # {mail_addr} is the address as the MTA resolved it: Sendmail gives the user part
    # its mailer sees (our test mailer routes example.org locally), Postfix the whole one
    assert got["X-E2E-Macro-Mail-Addr"] == (SENDER if target.is_postfix else "alice")
    assert got["X-E2E-Macro-Rcpt-Addr"] not in (None, "(none)")
    queue_id = got["X-E2E-Macro-i"]
    assert queue_id not in (None, "(none)")
    # the queue id the milter saw is the one in the MTA's Received: header
    assert f"id {queue_id}" in " ".join(got.get_all("Received") or [])
