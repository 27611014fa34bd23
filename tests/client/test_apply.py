"""CheckResult.apply(): modifications played onto a message, byte for byte."""

from __future__ import annotations

import email

from milterkit.mtaprofile import POSTFIX, SENDMAIL
from milterkit.protocol import (
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    Message,
    Negotiated,
    ProtocolFlag,
    Quarantine,
    ReplaceBody,
)
from milterkit.result import CheckResult, ParsedMessage, SmtpReply

MSG = (
    b"From: <alice@example.org>\r\n"
    b"To: <bob@example.com>\r\n"
    b"Subject:  two  spaces\r\n"
    b"X-Folded: first\r\n\tsecond\r\n"
    b"X-Dup: one\r\n"
    b"x-dup: two\r\n"
    b"\r\n"
    b"Body line\r\n"
)
RECEIVED = b"Received: from client by mx; Fri, 27 Nov 2026 06:00:01 +0000"


def result(*mods: Message, leadspc: bool = False, **kw: object) -> CheckResult:
    protocol = ProtocolFlag.HDR_LEADSPC if leadspc else ProtocolFlag.NONE
    neg = Negotiated(6, Action(0x1FF), protocol)
    base: dict[str, object] = {
        "sender": "<alice@example.org>",
        "recipients": ["<bob@example.com>"],
    }
    base.update(kw)
    return CheckResult(negotiated=neg, modifications=list(mods), **base)  # type: ignore[arg-type]


def headers_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_no_modifications_is_identity() -> None:
    out = result().apply(MSG)
    assert out.message_bytes == MSG
    assert out.sender == "alice@example.org"
    assert out.recipients == ("bob@example.com",)
    assert out.delivered and not out.held


def test_add_header_appends_with_one_space() -> None:
    out = result(AddHeader(b"X-Added", b"yes")).apply(MSG)
    assert headers_of(out.message_bytes).endswith(b"x-dup: two\r\nX-Added: yes\r\n")
    assert out.message_bytes.endswith(b"\r\n\r\nBody line\r\n")


def test_add_header_leadspc_uses_value_verbatim() -> None:
    out = result(AddHeader(b"X-Lead", b"nospace"), leadspc=True).apply(MSG)
    assert b"\r\nX-Lead:nospace\r\n" in out.message_bytes


def test_folded_value_lf_becomes_crlf() -> None:
    out = result(AddHeader(b"X-Multi", b"a\n\tb\r\n\tc")).apply(MSG)
    assert b"\r\nX-Multi: a\r\n\tb\r\n\tc\r\n\r\n" in out.message_bytes


def test_insert_at_zero_goes_above_received() -> None:
    mods = (InsertHeader(0, b"X-Top", b"top"), InsertHeader(2, b"X-Ins2", b"two"))
    out = result(*mods).apply(MSG, received_header=RECEIVED)
    assert out.message_bytes.startswith(
        b"X-Top: top\r\n" + RECEIVED + b"\r\nX-Ins2: two\r\nFrom: <alice@example.org>\r\n"
    )


def test_insert_without_received_counts_own_headers() -> None:
    out = result(InsertHeader(1, b"X-One", b"1")).apply(MSG)
    assert out.message_bytes.startswith(b"From: <alice@example.org>\r\nX-One: 1\r\nTo:")


def test_insert_beyond_end_appends() -> None:
    out = result(InsertHeader(999, b"X-End", b"e")).apply(MSG)
    assert headers_of(out.message_bytes).endswith(b"x-dup: two\r\nX-End: e\r\n")


def test_change_nth_occurrence_case_insensitive() -> None:
    out = result(ChangeHeader(2, b"X-DUP", b"changed")).apply(MSG)
    assert b"X-Dup: one\r\nX-DUP: changed\r\n\r\n" in out.message_bytes


def test_change_index_zero_is_first_and_skips_received() -> None:
    mods = (ChangeHeader(0, b"From", b"<x@example.org>"),)
    out = result(*mods).apply(MSG, received_header=RECEIVED)
    assert out.message_bytes.startswith(RECEIVED + b"\r\nFrom: <x@example.org>\r\nTo:")


def test_change_first_header_of_message() -> None:
    out = result(ChangeHeader(1, b"From", b"<new@example.org>")).apply(MSG)
    assert out.message_bytes.startswith(b"From: <new@example.org>\r\nTo: <bob@example.com>\r\n")


def test_delete_header_last_one_first() -> None:
    mods = (ChangeHeader(2, b"X-Dup", b""), ChangeHeader(1, b"X-Dup", b""))
    out = result(*mods).apply(MSG)
    assert b"dup" not in out.message_bytes.lower()
    assert out.message_bytes.endswith(b"\tsecond\r\n\r\nBody line\r\n")


def test_delete_folded_header_removes_all_its_lines() -> None:
    out = result(ChangeHeader(1, b"X-Folded", b"")).apply(MSG)
    assert b"second" not in out.message_bytes


def test_change_beyond_count_adds_and_delete_beyond_count_is_noop() -> None:
    out = result(ChangeHeader(5, b"X-New", b"v"), ChangeHeader(3, b"X-Dup", b"")).apply(MSG)
    assert headers_of(out.message_bytes).endswith(b"x-dup: two\r\nX-New: v\r\n")


def test_change_with_leadspc_keeps_given_whitespace() -> None:
    out = result(ChangeHeader(1, b"Subject", b"\tTabbed"), leadspc=True).apply(MSG)
    assert b"\r\nSubject:\tTabbed\r\n" in out.message_bytes


def test_envelope_changes() -> None:
    mods = (
        ChangeFrom(b"<rewritten@example.com>", b"RET=HDRS"),
        AddRecipient(b"<bcc@example.com>"),
        AddRecipientPar(b"<par@example.com>", b"NOTIFY=NEVER"),
        DeleteRecipient(b"bob@example.com"),
    )
    out = result(*mods).apply(MSG)
    assert out.sender == "rewritten@example.com"
    assert out.sender_args == "RET=HDRS"
    assert out.recipients == ("bcc@example.com", "par@example.com")
    assert out.recipient_args == {"par@example.com": "NOTIFY=NEVER"}


def test_delete_recipient_with_brackets_matches_bare() -> None:
    res = result(DeleteRecipient(b"<bob@example.com>"), recipients=["bob@example.com", "c@d.e"])
    assert res.apply(MSG).recipients == ("c@d.e",)


def test_delete_recipient_is_case_sensitive_as_in_postfix() -> None:
    """cleanup_del_rcpt() compares with strcmp(): another spelling deletes nothing."""
    res = result(DeleteRecipient(b"<Bob@Example.com>"), recipients=["bob@example.com", "c@d.e"])
    assert res.apply(MSG).recipients == ("bob@example.com", "c@d.e")


def test_rejected_recipients_are_not_delivered() -> None:
    reply = SmtpReply.parse("550 5.7.1 no")
    res = result(recipients=["<a@x.y>", "<b@x.y>"], rejected_recipients={"<a@x.y>": reply})
    assert res.apply(MSG).recipients == ("b@x.y",)


def test_replace_body_large_and_normalised() -> None:
    line = b"0123456789" * 7 + b"\n"
    new_body = line * 1000  # 71000 bytes, LF only
    chunks = [new_body[i : i + 65535] for i in range(0, len(new_body), 65535)]
    out = result(*(ReplaceBody(c) for c in chunks)).apply(MSG)
    head, body = out.message_bytes.split(b"\r\n\r\n", 1)
    assert head + b"\r\n" == headers_of(MSG)
    assert body == new_body.replace(b"\n", b"\r\n")


def test_replace_body_keeps_lone_cr_and_terminates_last_line() -> None:
    out = result(ReplaceBody(b"a\r\nb\rc\r\n"), ReplaceBody(b"last")).apply(MSG)
    assert out.message_bytes.endswith(b"\r\n\r\na\r\nb\rc\r\nlast\r\n")


def test_quarantine_and_rejected_flags() -> None:
    out = result(Quarantine(b"held")).apply(MSG)
    assert out.held and out.delivered
    assert not result(decision="reject").apply(MSG).delivered


def test_lf_message_uses_lf_for_new_lines() -> None:
    msg = b"Subject: x\nX-A: 1\n\nbody\n"
    out = result(AddHeader(b"X-B", b"2"), ChangeHeader(1, b"X-A", b"3")).apply(msg)
    assert out.message_bytes == b"Subject: x\nX-A: 3\nX-B: 2\n\nbody\n"


def test_email_message_input() -> None:
    parsed_input = email.message_from_bytes(MSG)
    out = result(AddHeader(b"X-E", b"1")).apply(parsed_input)
    assert out.message_bytes.startswith(b"From: <alice@example.org>\r\n")
    assert b"X-E: 1\r\n" in out.message_bytes


def test_parser_header_values_as_mta_sends_them() -> None:
    parsed = ParsedMessage.parse(MSG)
    values = {h.name: h.value() for h in parsed.headers}
    assert values[b"Subject"] == b" two  spaces"
    assert values[b"X-Folded"] == b"first\n\tsecond"
    assert parsed.headers[2].value(leading_space=True) == b"  two  spaces"


def test_parser_without_blank_line_starts_body_at_non_header() -> None:
    parsed = ParsedMessage.parse(b"Subject: a\r\nnot a header line\r\n")
    assert [h.name for h in parsed.headers] == [b"Subject"]
    assert parsed.body == b"not a header line\r\n"
    assert ParsedMessage.parse(b"Subject: a\nb").smtp_body() == b"b\r\n"


def test_to_json_roundtrip() -> None:
    import json

    data = json.loads(result(AddHeader(b"X", b"y"), ReplaceBody(b"z" * 5000)).to_json())
    assert data["modifications"][0] == {"type": "ADDHEADER", "name": "X", "value": "y"}
    assert data["modifications"][1]["size"] == 5000
    assert data["negotiated"]["protocol_names"] == "none"


def test_sendmail_rules_delete_without_shifting_indexes() -> None:
    """Sendmail nulls a deleted header's value: X-Dup[2] is still the second one."""
    mods = (ChangeHeader(1, b"X-Dup", b""), ChangeHeader(2, b"X-Dup", b"changed"))
    postfix = headers_of(result(*mods).apply(MSG).message_bytes)
    sendmail = headers_of(result(*mods, header_edits="sendmail").apply(MSG).message_bytes)
    # Postfix: the second X-Dup is now the first; index 2 is past the end, so it is added
    assert postfix.endswith(b"\tsecond\r\nx-dup: two\r\nX-Dup: changed\r\n")
    # Sendmail: the second X-Dup itself changes, and keeps its own spelling of the name
    assert sendmail.endswith(b"\tsecond\r\nx-dup: changed\r\n")


# Sendmail's own headers (the sendmail.cf H lines): checked against Sendmail 8.17 in
# tests/fidelity/test_sendmail_client.py::test_sendmail_own_headers
NO_DATE = b"From: <alice@example.org>\r\nTo: <bob@example.com>\r\nSubject: s\r\n\r\nBody\r\n"


def sendmail_headers(*mods: Message, message: bytes = NO_DATE, **kw: object) -> list[bytes]:
    kw.setdefault("mailer_flags", SENDMAIL.mailer_flags)
    res = result(*mods, header_edits="sendmail", header_defaults=SENDMAIL.header_defaults, **kw)
    return headers_of(res.apply(message, received_header=RECEIVED).message_bytes).splitlines()


def test_sendmail_add_header_fills_its_own_header_in_place() -> None:
    got = sendmail_headers(
        AddHeader(b"message-id", b"<m@id>"), AddHeader(b"Date", b"d"), AddHeader(b"X-New", b"x")
    )
    # Sendmail's entries come first, in cf order, and keep the cf's spelling
    assert got == [
        RECEIVED,
        b"Date: d",
        b"Message-Id: <m@id>",
        b"From: <alice@example.org>",
        b"To: <bob@example.com>",
        b"Subject: s",
        b"X-New: x",
    ]


def test_sendmail_add_header_of_a_present_name_goes_before_it() -> None:
    # the first Date fills Sendmail's entry; the second finds a user header of the name
    got = sendmail_headers(AddHeader(b"Date", b"d1"), AddHeader(b"Date", b"d2"))
    assert got[:3] == [RECEIVED, b"Date: d2", b"Date: d1"]
    got = sendmail_headers(AddHeader(b"subject", b"new"), AddHeader(b"Received", b"r"))
    assert got == [
        b"Received: r",
        RECEIVED,
        b"From: <alice@example.org>",
        b"To: <bob@example.com>",
        b"subject: new",
        b"Subject: s",
    ]


def test_sendmail_header_the_message_has_gets_a_second_one_on_top() -> None:
    message = NO_DATE.replace(b"Subject", b"Date: mine\r\nSubject")
    got = sendmail_headers(AddHeader(b"Date", b"theirs"), message=message)
    assert got[:3] == [RECEIVED, b"Date: theirs", b"From: <alice@example.org>"]
    assert b"Date: mine" in got


def test_sendmail_unwritten_defaults() -> None:
    """?x? Full-Name, and Resent-* unless the message is resent, are filled but not written."""
    mods = (
        AddHeader(b"Full-Name", b"n"),
        AddHeader(b"Resent-Date", b"rd"),
        AddHeader(b"Return-Path", b"<rp@example.org>"),
    )
    got = sendmail_headers(*mods)
    assert got[:2] == [b"Return-Path: <rp@example.org>", RECEIVED]
    assert not any(h.startswith((b"Full-Name", b"Resent-Date")) for h in got)
    resent = sendmail_headers(*mods, message=b"Resent-To: <c@example.com>\r\n" + NO_DATE)
    assert resent[:3] == [b"Return-Path: <rp@example.org>", RECEIVED, b"Resent-Date: rd"]
    # without P the delivering mailer (esmtp) does not write Return-Path
    esmtp = sendmail_headers(*mods, mailer_flags="DFM")
    assert not any(h.startswith(b"Return-Path") for h in esmtp)


def test_sendmail_change_header_falls_back_to_its_own_header() -> None:
    got = sendmail_headers(
        ChangeHeader(0, b"date", b"d"),
        ChangeHeader(3, b"To", b"<c@example.com>"),
        ChangeHeader(1, b"subject", b"t"),
    )
    assert got == [
        RECEIVED,
        b"Date: d",
        b"From: <alice@example.org>",
        b"To: <c@example.com>",
        b"To: <bob@example.com>",
        b"Subject: t",
    ]
    # a default deleted by CHGHEADER can still be filled by a later ADDHEADER
    got = sendmail_headers(ChangeHeader(1, b"Date", b""), AddHeader(b"Date", b"d"))
    assert got[:2] == [RECEIVED, b"Date: d"]


def test_sendmail_insert_header_counts_its_own_headers() -> None:
    got = sendmail_headers(
        InsertHeader(0, b"X-I0", b"0"),
        InsertHeader(1, b"X-I1", b"1"),
        InsertHeader(3, b"X-I3", b"3"),
        InsertHeader(12, b"X-I12", b"12"),
        InsertHeader(100, b"X-End", b"e"),
    )
    # entries: Return-Path, X-I0, X-I1, Received, X-I3, Resent-Date, Date, Resent-From,
    # From (Sendmail's), Full-Name, Resent-Message-Id, Message-Id, From (the message's) ...
    assert got == [
        b"X-I0: 0",
        b"X-I1: 1",
        RECEIVED,
        b"X-I3: 3",
        b"From: <alice@example.org>",
        b"X-I12: 12",
        b"To: <bob@example.com>",
        b"Subject: s",
        b"X-End: e",
    ]


def test_postfix_profile_has_no_mta_headers() -> None:
    got = headers_of(result(AddHeader(b"Date", b"d")).apply(NO_DATE).message_bytes)
    assert got.endswith(b"Subject: s\r\nDate: d\r\n")
    assert POSTFIX.header_defaults == () and POSTFIX.header_edits == "postfix"


def test_result_module_still_exports_the_names_that_moved() -> None:
    import milterkit.message
    import milterkit.result
    from milterkit.cli.describe import describe_modification

    for name in ("ParsedMessage", "RawHeader", "MessageInput", "bare_address"):
        assert getattr(milterkit.result, name) is getattr(milterkit.message, name)
    assert milterkit.result.describe_modification is describe_modification


def test_apply_modifications_edits_the_envelope_in_place() -> None:
    from milterkit.message import Envelope, apply_modifications
    from milterkit.protocol.messages import AddRecipientPar, ChangeFrom, DeleteRecipient

    envelope = Envelope("a@example.org", None, ["b@example.net", "c@example.net"])
    mods = [
        ChangeFrom(b"<new@example.org>", b"SIZE=1"),
        DeleteRecipient(b"<b@example.net>"),
        AddRecipientPar(b"<d@example.net>", b"NOTIFY=NEVER"),
    ]
    out = apply_modifications(b"Subject: x\r\n\r\nbody\r\n", mods, envelope)
    assert out == b"Subject: x\r\n\r\nbody\r\n"
    assert envelope == Envelope(
        "new@example.org",
        "SIZE=1",
        ["c@example.net", "d@example.net"],
        {"d@example.net": "NOTIFY=NEVER"},
    )
