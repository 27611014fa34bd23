"""milterkit's client (Postfix profile) and a real Postfix in front of the same raw filter.

The filter (:class:`RawFilter`) answers with scripted bytes, including
replies milterkit's own filter side would never send. For each case the
test sends one message through Postfix over SMTP and one through
``milterkit.client.check``, and asserts that the client reports what Postfix
did (issue 10, items 6-9 and 13).
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from milterkit.client import MilterClient, check
from milterkit.mtaprofile import POSTFIX
from milterkit.result import CheckResult

from ..e2e.harness import SENDER, unique
from ..realmta._util import Unavailable
from ..realmta.postfix import PostfixInstance
from .rawfilter import (
    CONTINUE,
    RawFilter,
    add_header,
    commands,
    del_rcpt,
    frame,
    repl_body,
    reply_code,
)

pytestmark = pytest.mark.realmta

#: What Postfix offers at each milter_protocol (milter8.c MILTER8_V*_PROTO_MASK).
OFFERED = {2: 0x7F, 4: 0x37F, 6: 0x1FFFFF}
NOEOH, NR_CONN, NR_HELO, HDR_LEADSPC = 0x40, 0x1000, 0x2000, 0x100000


@pytest.fixture(scope="module")
def raw() -> Iterator[RawFilter]:
    with RawFilter() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_script(raw: RawFilter) -> None:
    raw.script, raw.protocol, raw.macros = {}, 0, {}
    raw.reset()


def _postfix(raw: RawFilter, version: int) -> Iterator[PostfixInstance]:
    try:
        instance = PostfixInstance(milters=raw.postfix_spec, milter_protocol=version)
    except Unavailable as exc:
        pytest.skip(f"postfix unavailable: {exc}")
    with instance:
        yield instance


@pytest.fixture(scope="module")
def postfix6(raw: RawFilter) -> Iterator[PostfixInstance]:
    yield from _postfix(raw, 6)


@pytest.fixture(scope="module")
def postfix2(raw: RawFilter) -> Iterator[PostfixInstance]:
    yield from _postfix(raw, 2)


#: With these Postfix adds no header of its own, so both sides send the same list.
DATE_AND_ID = b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <fid@client.example>\r\n"


def message(to: str, extra: bytes = b"") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\n".encode()
        + DATE_AND_ID
        + extra
        + b"Subject: fidelity\r\n\r\nbody line\r\n"
    )


def client_check(raw: RawFilter, data: bytes, rcpts: list[str], version: int = 6) -> CheckResult:
    result = check(
        raw.milterkit_spec,
        data,
        sender=SENDER,
        recipients=rcpts,
        profile=POSTFIX,
        version=version,
        protocol=OFFERED[version],
        timeout=20,
    )
    raw.wait_ended()  # the client's last packets (ABORT, QUIT) recorded before comparing
    return result


def test_421_at_rcpt_ends_message_and_session(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 6: Postfix answers 421 and drops the SMTP connection."""
    raw.script = {"R": lambda p: [reply_code("421 4.7.0 go away")] if b"bye" in p else [CONTINUE]}
    ok, bye = f"{unique('ok')}@example.com", f"{unique('bye')}@example.com"
    smtp = postfix6.smtp()
    smtp.ehlo()
    smtp.mail(SENDER)
    assert smtp.rcpt(ok)[0] == 250
    assert smtp.rcpt(bye) == (421, b"4.7.0 go away")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.rcpt(f"{unique('late')}@example.com")
    smtp.close()

    with MilterClient(raw.milterkit_spec, profile=POSTFIX, timeout=20) as client:
        result = client.check(message(ok), sender=SENDER, recipients=[ok, bye, "late@example.com"])
        assert (result.decision, result.decided_at) == ("tempfail", "rcpt")
        assert result.smtp_reply is not None and result.smtp_reply.text == "421 4.7.0 go away"
        assert bye not in result.rejected_recipients
        assert not result.apply(message(ok)).delivered
        after = client.check(message(ok), sender=SENDER, recipients=[ok])
        assert after.decision == "tempfail" and after.smtp_reply == result.smtp_reply
    assert commands(raw.seen()[-1]).count("R") == 2  # nothing after the 421, no new message


def test_replbody_after_another_request_is_refused(
    raw: RawFilter, postfix6: PostfixInstance
) -> None:
    """Item 7: REPLBODY, ADDHEADER, REPLBODY: Postfix 451 4.3.5, nothing delivered."""
    raw.script = {
        "E": [repl_body(b"new\r\n"), add_header("X-A", "a"), repl_body(b"more\r\n"), CONTINUE]
    }
    to = f"{unique('mixed')}@example.com"
    with pytest.raises(smtplib.SMTPDataError) as err:
        postfix6.send(SENDER, [to], message(to))
    postfix_reply = f"{err.value.smtp_code} {err.value.smtp_error.decode()}"

    result = client_check(raw, message(to), [to])
    assert result.decision == "tempfail"
    assert result.smtp_reply is not None
    assert result.smtp_reply.text == postfix_reply
    assert postfix_reply == "451 4.3.5 Server configuration problem - try again later"


def test_replbody_run_then_other_requests_is_applied(
    raw: RawFilter, postfix6: PostfixInstance
) -> None:
    """REPLBODY packets in one run, a header after them: Postfix applies both."""
    raw.script = {
        "E": [repl_body(b"new\r\n"), repl_body(b"more\r\n"), add_header("X-A", "a"), CONTINUE]
    }
    rcpt = unique("run")
    to = f"{rcpt}@example.com"
    assert postfix6.send(SENDER, [to], message(to)) == {}
    [got] = postfix6.wait_delivered(rcpt, 1, timeout=60)
    result = client_check(raw, message(to), [to])
    applied = result.apply(message(to)).message_bytes
    assert applied.endswith(b"X-A: a\r\n\r\nnew\r\nmore\r\n")
    assert got.replace(b"\r\n", b"\n").endswith(b"X-A: a\n\nnew\nmore\n")


def test_unoffered_protocol_bits_are_acted_on(raw: RawFilter, postfix2: PostfixInstance) -> None:
    """Item 8: at milter_protocol 2 the filter sets NR_CONN, NR_HELO and HDR_LEADSPC.

    Postfix answers nothing for CONNECT/HELO and sends header values verbatim;
    the client must neither wait for those replies nor eat a space.
    """
    raw.protocol = NR_CONN | NR_HELO | HDR_LEADSPC
    raw.script = {"C": [], "H": []}
    rcpt = unique("nr")
    to = f"{rcpt}@example.com"
    data = message(to, b"X-Lead:  two\r\n")
    assert postfix2.send(SENDER, [to], data) == {}
    postfix2.wait_delivered(rcpt, 1, timeout=60)
    from_postfix = _headers(raw.seen()[-1])
    raw.reset()
    result = client_check(raw, data, [to], version=2)
    assert result.decision == "continue"
    assert _headers(raw.seen()[-1]) == from_postfix
    assert (b"X-Lead", b"  two") in from_postfix


def test_skip_without_negotiation(raw: RawFilter, postfix2: PostfixInstance) -> None:
    """libmilter sends SKIP from the body callback whatever was agreed; Postfix takes it."""
    raw.script = {"B": [frame("s")]}
    rcpt = unique("skip")
    to = f"{rcpt}@example.com"
    data = message(to).replace(b"body line\r\n", b"x" * 150_000 + b"\r\n")
    assert postfix2.send(SENDER, [to], data) == {}
    postfix2.wait_delivered(rcpt, 1, timeout=60)
    from_postfix = commands(raw.seen()[-1])
    raw.reset()
    result = client_check(raw, data, [to], version=2)
    assert (result.decision, result.skipped_body) == ("continue", True)
    assert commands(raw.seen()[-1]) == from_postfix
    assert from_postfix.count("B") == 1


def test_shutdown_reply_text(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 9: SHUTDOWN (at MAIL): the client shows Postfix's 421 text, not 451."""
    raw.script = {"M": [frame("4")]}
    to = f"{unique('shut')}@example.com"
    with pytest.raises(smtplib.SMTPResponseException) as err:
        postfix6.send(SENDER, [to], message(to))
    postfix_reply = f"{err.value.smtp_code} {err.value.smtp_error.decode()}"
    result = client_check(raw, message(to), [to])
    assert result.smtp_reply is not None and result.smtp_reply.text == postfix_reply
    assert (result.decision, postfix_reply) == ("tempfail", "421 4.7.0 Server closing connection")


def test_percent_in_reply_text(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 9: REPLYCODE '100%%': the SMTP client reads '100%'."""
    raw.script = {
        "R": lambda p: [reply_code("550 5.7.1 100%% rejected")] if b"pct" in p else [CONTINUE]
    }
    ok, pct = f"{unique('ok')}@example.com", f"{unique('pct')}@example.com"
    refused = postfix6.send(SENDER, [ok, pct], message(ok))
    code, text = refused[pct]
    result = client_check(raw, message(ok), [ok, pct])
    assert (
        str(result.rejected_recipients[pct])
        == f"{code} {text.decode()}"
        == ("550 5.7.1 100% rejected")
    )


def test_obsolete_header_syntax(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 9: 'Subject : x' is a header for Postfix; the client sends the same headers."""
    rcpt = unique("obs")
    to = f"{rcpt}@example.com"
    head = f"From: {SENDER}\r\nTo: {to}\r\n".encode() + DATE_AND_ID
    data = head + b"Subject : spaced\r\nX-After: yes\r\n\r\nbody\r\n"
    assert postfix6.send(SENDER, [to], data) == {}
    postfix6.wait_delivered(rcpt, 1, timeout=60)
    from_postfix = _headers(raw.seen()[-1])
    raw.reset()
    client_check(raw, data, [to])
    assert _headers(raw.seen()[-1]) == from_postfix
    assert (b"Subject", b"spaced") in from_postfix and (b"X-After", b"yes") in from_postfix


def test_delete_recipient_is_case_sensitive(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 13: DELRCPT with another spelling deletes nothing in Postfix (strcmp)."""
    rcpt = unique("case")
    to = f"{rcpt}@example.com"
    raw.script = {"E": [del_rcpt(f"<{rcpt.upper()}@example.com>"), CONTINUE]}
    assert postfix6.send(SENDER, [to], message(to)) == {}
    postfix6.wait_delivered(rcpt, 1, timeout=60)
    result = client_check(raw, message(to), [to])
    assert result.apply(message(to)).recipients == (to,)


def test_no_eoh_macros_under_noeoh(raw: RawFilter, postfix6: PostfixInstance) -> None:
    """Item 13: with NOEOH Postfix sends neither EOH nor its macros; same packets from both."""
    raw.protocol = NOEOH
    rcpt = unique("noeoh")
    to = f"{rcpt}@example.com"
    assert postfix6.send(SENDER, [to], message(to)) == {}
    postfix6.wait_delivered(rcpt, 1, timeout=60)
    from_postfix = commands(raw.seen()[-1])
    raw.reset()
    client_check(raw, message(to), [to])
    from_client = commands(raw.seen()[-1])
    assert "DN" not in from_postfix and "N" not in from_postfix
    assert from_client == from_postfix, f"{from_client}\n{from_postfix}"


def _headers(record: list[tuple[str, bytes]]) -> list[tuple[bytes, bytes]]:
    out = []
    for letter, payload in record:
        if letter == "L":
            name, value, _ = payload.split(b"\0")
            out.append((name, value))
    return out
