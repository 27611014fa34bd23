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
from .rawfilter import (
    CONTINUE,
    RawFilter,
    add_header,
    change_header,
    commands,
    frame,
    insert_header,
)

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


# Item 12, second half: Sendmail's own headers. Sendmail keeps the sendmail.cf
# H lines (Return-Path, Received, Date, From, Message-Id, Resent-* ...) ahead
# of the message's headers; filters never see them, but ADDHEADER/CHGHEADER of
# such a name fill them in place, ADDHEADER of a present name goes before its
# first occurrence, and INSHEADER counts them.
NO_DATE = b"From: Alice <alice@example.org>\r\nTo: {to}\r\nSubject: s\r\n"
BARE = b"To: {to}\r\nSubject: s\r\nX-Two: 2\r\n"
FULL = NO_DATE + DATE_AND_ID
RESENT = b"Resent-From: bob@example.org\r\n" + NO_DATE

Edit = tuple[str, int, str, str]  # letter, index, name, value
#: proto.m4's H lines but Received (which is passed to apply()), lower case
OWN_NAMES = {
    b"return-path",
    b"resent-date",
    b"date",
    b"resent-from",
    b"from",
    b"full-name",
    b"resent-message-id",
    b"message-id",
}

DEFAULT_HEADER_CASES: dict[str, tuple[bytes, list[Edit]]] = {
    # Date, From and Message-Id were missing: the filter's values take Sendmail's places
    "generated": (
        BARE,
        [
            ("h", 0, "Date", "milter-date"),
            ("h", 0, "message-id", "<milter@id.example>"),
            ("h", 0, "From", "milter@example.org"),
            ("h", 0, "X-New", "x"),
        ],
    ),
    # the message has them: Sendmail's (nulled) entries take the values, the message's stay
    "present": (
        FULL,
        [
            ("h", 0, "Date", "milter-date"),
            ("h", 0, "Message-ID", "<milter@id.example>"),
            ("h", 0, "Subject", "added-subject"),
        ],
    ),
    # the second ADDHEADER finds a user header: it goes before it
    "twice": (NO_DATE, [("h", 0, "Date", "d1"), ("h", 0, "Date", "d2")]),
    # Received is a trace header: never replaced, the new one goes above Sendmail's
    "trace": (NO_DATE, [("h", 0, "Received", "milter-received")]),
    # ?x? Full-Name (mailer without x) and Resent-* of a message that is not resent vanish;
    # Return-Path (?P?, the test mailer has P) is replaced
    "unwritten": (
        NO_DATE,
        [
            ("h", 0, "Full-Name", "milter-name"),
            ("h", 0, "Resent-Date", "milter-resent-date"),
            ("h", 0, "Return-Path", "<milter@example.org>"),
        ],
    ),
    "resent": (
        RESENT,
        [("h", 0, "Resent-Date", "milter-resent-date"), ("h", 0, "Resent-From", "r@example.org")],
    ),
    # CHGHEADER falls back to Sendmail's entry of the name; past the end it adds before
    # the first header of the name; a changed header keeps its own spelling
    "change": (
        NO_DATE,
        [
            ("m", 0, "date", "changed-date"),
            ("m", 1, "Message-Id", ""),
            ("m", 3, "To", "beyond@example.com"),
            ("m", 1, "subject", "changed-subject"),
        ],
    ),
    # INSHEADER counts Sendmail's entries: index n goes after the nth (0-based) one
    "insert": (
        NO_DATE,
        [
            ("i", 0, "X-I0", "i0"),
            ("i", 1, "X-I1", "i1"),
            ("i", 3, "X-I3", "i3"),
            ("i", 5, "X-I5", "i5"),
            ("i", 100, "X-I100", "i100"),
        ],
    ),
}


def _edit_frame(edit: Edit) -> bytes:
    letter, index, name, value = edit
    if letter == "h":
        return add_header(name, value)
    if letter == "m":
        return change_header(name, index, value)
    return insert_header(name, index, value)


def header_fields(message: bytes) -> list[bytes]:
    """The header fields of a message, LF line ends, a folded field as one item."""
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields


@pytest.mark.parametrize("case", sorted(DEFAULT_HEADER_CASES))
def test_sendmail_own_headers(raw: RawFilter, sendmail: SendmailInstance, case: str) -> None:
    """Item 12: headers Sendmail adds itself, against the delivered header block.

    ``apply()`` does not invent the values Sendmail writes itself (its Date,
    Message-Id, Return-Path ...): fields with such a name whose value came
    neither from the message nor from the filter are left out of the
    comparison. Sendmail's Received header is passed to ``apply()``.
    """
    template, edits = DEFAULT_HEADER_CASES[case]
    raw.script = {"E": [*(_edit_frame(e) for e in edits), CONTINUE]}
    rcpt = unique("own")
    to = f"{rcpt}@example.com"
    data = template.replace(b"{to}", to.encode()) + b"\r\nbody line\r\n"
    assert sendmail.send(SENDER, [to], data) == {}
    [got] = sendmail.wait_delivered(rcpt, 1, timeout=60)
    delivered = header_fields(got)
    known = set(header_fields(data)) | {e[3].encode() for e in edits}

    def sendmails_own(field: bytes) -> bool:
        return field not in known and field.partition(b":")[2].strip() not in known

    [received] = [f for f in delivered if f.startswith(b"Received:") and sendmails_own(f)]
    expected = [
        f for f in delivered if not (f.split(b":")[0].lower() in OWN_NAMES and sendmails_own(f))
    ]
    with MilterClient(raw.milterkit_spec, profile=SENDMAIL, timeout=20) as client:
        result = client.check(data, sender=SENDER, recipients=[to])
    applied = header_fields(result.apply(data, received_header=received).message_bytes)
    assert applied == expected
