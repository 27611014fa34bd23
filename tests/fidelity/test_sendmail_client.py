"""milterkit's client (Sendmail profile) and a real Sendmail 8.17 in front of the same raw filter.

Like test_postfix_client.py: the same scripted filter serves one SMTP
session through the unpacked Sendmail and one ``MilterClient`` session with
the Sendmail profile; the packets each sent to the filter must match
(issue 10, items 10, 11 and 13).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from milterkit.client import MilterClient
from milterkit.mtaprofile import SENDMAIL

from ..e2e.harness import SENDER, unique
from ..realmta._util import Unavailable, wait_until
from ..realmta.sendmail import SendmailInstance
from .rawfilter import CONTINUE, RawFilter, change_header, commands, frame

pytestmark = pytest.mark.realmta

SKIP = 0x400
DATE_AND_ID = b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <fid@client.example>\r\n"


@pytest.fixture(scope="module")
def raw() -> Iterator[RawFilter]:
    with RawFilter() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_script(raw: RawFilter) -> None:
    raw.script, raw.protocol, raw.macros = {}, 0, {}
    raw.reset()


@pytest.fixture(scope="module")
def sendmail(raw: RawFilter) -> Iterator[SendmailInstance]:
    try:
        instance = SendmailInstance(milter=raw.milterkit_spec, milter_flags="T")
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")
    with instance:
        yield instance


def message(to: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\n".encode()
        + DATE_AND_ID
        + b"Subject: fidelity\r\nX-Two: 2\r\n\r\nbody line\r\n"
    )


def sendmail_session(sm: SendmailInstance, messages: list[tuple[str, list[str]]]) -> None:
    """One SMTP session: per message MAIL, RCPTs, and DATA if a recipient was taken."""
    with sm.smtp() as smtp:
        smtp.ehlo("client.example.org")
        for sender, rcpts in messages:
            if smtp.mail(sender)[0] != 250:
                continue
            taken = [r for r in rcpts if smtp.rcpt(r)[0] == 250]
            if taken:
                smtp.data(message(taken[0]))
            else:
                smtp.rset()


def client_session(raw: RawFilter, messages: list[tuple[str, list[str]]]) -> None:
    with MilterClient(raw.milterkit_spec, profile=SENDMAIL, timeout=20) as client:
        for sender, rcpts in messages:
            client.check(message(rcpts[0]), sender=sender, recipients=rcpts)


def both(
    raw: RawFilter, sm: SendmailInstance, messages: list[tuple[str, list[str]]]
) -> tuple[list[str], list[str]]:
    sendmail_session(sm, messages)
    from_sendmail = _wait_quit(raw)
    raw.reset()
    client_session(raw, messages)
    # the client's QUIT may still be on its way to the filter thread: wait for it too
    return from_sendmail, _wait_quit(raw)


def _wait_quit(raw: RawFilter) -> list[str]:
    """The packets of Sendmail's filter connection, once its QUIT came."""

    def done() -> list[str] | None:
        seen = raw.seen()
        return commands(seen[-1]) if seen and seen[-1] and seen[-1][-1][0] == "Q" else None

    return wait_until(done, 30, "QUIT from Sendmail")


def _rcpts(n: int) -> list[str]:
    return [f"{unique('sm')}@example.com" for _ in range(n)]


def test_no_abort_after_a_message_rejected_at_mail(
    raw: RawFilter, sendmail: SendmailInstance
) -> None:
    """Item 13: MAIL rejected, then a second message: compare the packets."""
    raw.script = {"M": lambda p: [frame("r")] if b"bad" in p else [CONTINUE]}
    bad = f"{unique('bad')}@example.org"
    got = both(raw, sendmail, [(bad, _rcpts(1)), (SENDER, _rcpts(1))])
    assert got[1] == got[0], f"client   {got[1]}\nsendmail {got[0]}"


def test_skip_at_rcpt(raw: RawFilter, sendmail: SendmailInstance) -> None:
    """Item 10: SKIP at RCPT, then a second message in the same session."""
    raw.protocol = SKIP
    raw.script = {"R": [frame("s")]}
    got = both(raw, sendmail, [(SENDER, _rcpts(2)), (SENDER, _rcpts(2))])
    assert got[1] == got[0], f"client   {got[1]}\nsendmail {got[0]}"


def test_skip_at_header(raw: RawFilter, sendmail: SendmailInstance) -> None:
    """Item 10: SKIP at the first header."""
    raw.protocol = SKIP
    raw.script = {"L": [frame("s")]}
    got = both(raw, sendmail, [(SENDER, _rcpts(1))])
    assert got[1] == got[0], f"client   {got[1]}\nsendmail {got[0]}"


@pytest.mark.parametrize(
    "lists",
    [{5: "i {mail_addr}"}, {6: "{mail_addr}"}, {5: "i {mail_addr}", 6: "{mail_addr}"}],
    ids=["eom-only", "eoh-only", "both"],
)
def test_eom_macro_list(raw: RawFilter, sendmail: SendmailInstance, lists: dict[int, str]) -> None:
    """Item 11: which EOM macros come, for each combination of requested lists."""
    raw.macros = lists
    sendmail_session(sendmail, [(SENDER, _rcpts(1))])
    from_sendmail = _macros(raw, "E")
    raw.reset()
    client_session(raw, [(SENDER, _rcpts(1))])
    assert _macros(raw, "E") == from_sendmail


def _macros(raw: RawFilter, stage: str) -> list[bytes] | None:
    """Names in the stage's MACRO packet; None when there was no packet."""
    for letter, payload in raw.seen()[-1]:
        if letter == "D" and payload[:1] == stage.encode():
            return payload[1:].split(b"\0")[0:-1:2]
    return None


def test_no_eoh_macros_under_noeoh(raw: RawFilter, sendmail: SendmailInstance) -> None:
    """Item 13: with NOEOH Sendmail sends neither EOH nor the EOH macros."""
    raw.protocol = 0x40  # NOEOH
    raw.macros = {6: "{mail_addr}"}
    got = both(raw, sendmail, [(SENDER, _rcpts(1))])
    assert "N" not in got[0] and "DN" not in got[0]
    assert got[1] == got[0], f"client   {got[1]}\nsendmail {got[0]}"


def test_deleted_header_keeps_its_index(raw: RawFilter, sendmail: SendmailInstance) -> None:
    """Item 12: Sendmail deletes by nulling the value; later indexes do not shift."""
    raw.script = {
        "E": [change_header("X-Dup", 1, ""), change_header("X-Dup", 2, "changed"), CONTINUE]
    }
    rcpt = unique("hdr")
    to = f"{rcpt}@example.com"
    data = message(to).replace(b"X-Two: 2\r\n", b"X-Dup: one\r\nX-Dup: two\r\nX-Dup: three\r\n")
    assert sendmail.send(SENDER, [to], data) == {}
    [got] = sendmail.wait_delivered(rcpt, 1, timeout=60)
    dups = [line for line in got.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"X-Dup")]
    with MilterClient(raw.milterkit_spec, profile=SENDMAIL, timeout=20) as client:
        result = client.check(data, sender=SENDER, recipients=[to])
    applied = result.apply(data).message_bytes.split(b"\r\n")
    assert [line for line in applied if line.startswith(b"X-Dup")] == dups
    assert dups == [b"X-Dup: changed", b"X-Dup: three"]
