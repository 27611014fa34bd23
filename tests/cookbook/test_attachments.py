"""Attachment policy on a corpus of real-world MIME shapes, and its command line."""

from __future__ import annotations

import email
import email.policy
import logging

import pytest

from milterkit.contrib import attachments
from milterkit.contrib.attachments import AttachmentPolicy, AttachmentSettings
from milterkit.testing import assert_decision, assert_no_modifications

from . import mime_corpus as corpus


def run(milter_harness, message: bytes, **policy: object):
    settings = AttachmentSettings(**policy)  # type: ignore[arg-type]
    mta = milter_harness(lambda: AttachmentPolicy(settings))
    return mta.check(message, sender="<alice@example.org>", recipients=["<bob@example.com>"])


def parsed(message: bytes) -> email.message.Message:
    return email.message_from_bytes(message, policy=email.policy.compat32)


def leaf_summary(message: bytes) -> list[tuple[str, str | None, bytes]]:
    """(type, file name, decoded payload) of every leaf, in document order."""
    return [
        (p.get_content_type(), p.get_filename(), p.get_payload(decode=True) or b"")
        for p in parsed(message).walk()
        if not p.is_multipart() and p.get_content_type() != "message/rfc822"
    ]


def test_plain_and_allowed_messages_pass_untouched(milter_harness):
    for message in (corpus.PLAIN, corpus.NESTED):
        result = run(milter_harness, message, reject_extensions=frozenset({"scr"}))
        assert_decision(result, "continue")
        assert_no_modifications(result)


def test_rejected_extension_names_the_file(milter_harness):
    result = run(milter_harness, corpus.NESTED, reject_extensions=frozenset({"exe"}))
    assert_decision(result, "reject")
    assert result.smtp_reply is not None
    assert result.smtp_reply.code == 550
    assert 'attachment "setup.exe" refused: files of type .exe are not accepted' in str(
        result.smtp_reply
    )


def test_stripping_keeps_every_other_part_and_the_structure(milter_harness):
    result = run(milter_harness, corpus.NESTED, strip_extensions=frozenset({"exe"}))
    assert_decision(result, "continue")
    delivered = result.apply(corpus.NESTED).message_bytes
    before, after = leaf_summary(corpus.NESTED), leaf_summary(delivered)
    assert [t for t, _, _ in after] == ["text/plain", "text/html", "application/pdf", "text/plain"]
    assert after[:3] == before[:3]  # text, html (QP, 8-bit) and the PDF, byte for byte
    assert after[3][2].decode() == (
        'The attachment "setup.exe" (application/octet-stream, 1032 bytes) was removed '
        "by the mail filter: files of type .exe are not accepted.\r\n"
    )
    assert b"--outer-1\r\n" in delivered and b"--inner-2--\r\n" in delivered
    assert delivered.endswith(b"--outer-1--\r\nepilogue kept\r\n")
    assert b"X-Attachments-Stripped: 1\r\n" in delivered
    assert not parsed(delivered).defects


def test_rfc2231_continued_name_is_recognised(milter_harness):
    result = run(milter_harness, corpus.RFC2231, reject_extensions=frozenset({"exe"}))
    assert_decision(result, "reject")
    # the euro sign is not ASCII: the reply shows it as "?"
    assert 'attachment "Rechnung ?.exe" refused' in str(result.smtp_reply)


def test_rfc2047_name_and_quoted_printable_part(milter_harness):
    result = run(milter_harness, corpus.RFC2047_QP, strip_extensions=frozenset({"js"}))
    delivered = result.apply(corpus.RFC2047_QP).message_bytes
    before, after = leaf_summary(corpus.RFC2047_QP), leaf_summary(delivered)
    assert after[1][2].startswith(b'The attachment "skript.js" (text/x-script, 20 bytes)')
    assert after[2] == before[2] == ("text/plain", "notes.txt", "café notes".encode())


def test_message_without_final_boundary_is_still_judged(milter_harness):
    result = run(milter_harness, corpus.NO_FINAL_BOUNDARY, strip_types=("application/x-ms*",))
    delivered = result.apply(corpus.NO_FINAL_BOUNDARY).message_bytes
    after = leaf_summary(delivered)
    assert [t for t, _, _ in after] == ["text/plain", "text/plain"]
    assert b"application/x-msdownload is not accepted" in after[1][2]
    assert delivered.endswith(b"--cut--\r\n")  # the structure is closed now


def test_attachment_inside_a_forwarded_message_is_stripped(milter_harness):
    result = run(milter_harness, corpus.FORWARDED, strip_extensions=frozenset({"exe"}))
    delivered = result.apply(corpus.FORWARDED).message_bytes
    inner = [p for p in parsed(delivered).walk() if p.get_content_type() == "message/rfc822"]
    assert len(inner) == 1
    assert b"Content-Type: application/octet-stream" not in delivered
    assert leaf_summary(delivered)[-1][2].startswith(b'The attachment "run.exe"')
    assert b"Subject: original\r\n" in delivered


def test_single_part_attachment_becomes_a_text_message(milter_harness):
    result = run(milter_harness, corpus.SINGLE_PART, strip_extensions=frozenset({"exe"}))
    delivered = parsed(result.apply(corpus.SINGLE_PART).message_bytes)
    assert delivered.get_content_type() == "text/plain"
    assert delivered.get_all("Content-Disposition") is None
    assert delivered.get_all("Content-Transfer-Encoding") == ["base64"]
    text = delivered.get_payload(decode=True)
    assert text.startswith(b'The attachment "update.exe" (application/octet-stream, 1032 bytes)')


def test_oversized_attachment_is_stripped_and_small_ones_kept(milter_harness):
    # the PDF decodes to 1040 bytes, the executable to 1032
    result = run(milter_harness, corpus.NESTED, max_attachment_size=1035)
    after = leaf_summary(result.apply(corpus.NESTED).message_bytes)
    assert b"(application/pdf, 1040 bytes) was removed" in after[2][2]
    assert b"larger than 1035 bytes" in after[2][2]
    assert after[3] == ("application/octet-stream", "setup.exe", corpus.EXE)


def test_body_over_the_size_limit_gets_the_error_decision(milter_harness):
    small = type("Small", (AttachmentPolicy,), {"max_body_bytes": 100})
    mta = milter_harness(lambda: small(AttachmentSettings()))
    result = mta.check(corpus.NESTED)
    assert_decision(result, "tempfail")


@pytest.mark.parametrize(
    ("name", "ext"),
    [("a.EXE", "exe"), ("a.exe. ", "exe"), ("dir/a.tar.gz", "gz"), ("noext", None), (None, None)],
)
def test_extension(name, ext):
    assert attachments.extension(name) == ext


# ---------------------------------------------------------------- command line


def test_command_line_builds_the_settings():
    args = attachments.build_parser().parse_args(
        ["--socket", "inet:1@127.0.0.1", "--reject-extension", "EXE, .scr",
         "--reject-extension", "js", "--strip-type", "application/x-*",
         "--max-attachment-size", "10M"]
    )  # fmt: skip
    got = attachments.settings_from_args(args)
    assert got.reject_extensions == {"exe", "scr", "js"}
    assert got.strip_types == ("application/x-*",)
    assert got.max_attachment_size == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--max-attachment-size", "ten"], "'ten' is not a size like 10485760 or 10M"),
        (["--max-attachment-size", "0"], "'0' must be positive"),
        (["--strip-type", "exe"], "'exe' is not a MIME type like application/zip"),
    ],
)
def test_command_line_errors_name_the_bad_value(argv, error, capsys):
    with pytest.raises(SystemExit):
        attachments.main(["--socket", "inet:1@127.0.0.1", *argv])
    assert error in capsys.readouterr().err


# ------------------------------------------------------------------ archives

EVIL_ZIP = corpus.with_zip(corpus.zip_of("readme.txt", "invoice.pdf.exe"))
GOOD_ZIP = corpus.with_zip(corpus.zip_of("readme.txt", "report.pdf"))


def test_names_inside_a_zip_are_checked_when_asked(milter_harness):
    rules = {"reject_extensions": frozenset({"exe"}), "look_inside_zip": True}
    refused = run(milter_harness, EVIL_ZIP, **rules)
    assert str(refused.smtp_reply) == (
        '550 5.7.1 attachment "documents.zip" refused: '
        'the archive holds "invoice.pdf.exe": .exe is not accepted'
    )
    assert_decision(run(milter_harness, GOOD_ZIP, **rules), "continue")
    assert_decision(run(milter_harness, EVIL_ZIP, reject_extensions=frozenset({"exe"})), "continue")


def test_zip_holding_a_stripped_type_is_stripped_whole(milter_harness):
    result = run(
        milter_harness, EVIL_ZIP, strip_extensions=frozenset({"exe"}), look_inside_zip=True
    )
    after = leaf_summary(result.apply(EVIL_ZIP).message_bytes)
    assert [t for t, _, _ in after] == ["text/plain", "text/plain"]
    assert after[1][2].startswith(b'The attachment "documents.zip" (application/zip, ')


def test_unreadable_zip_is_kept(milter_harness, caplog):
    broken = corpus.with_zip(b"PK\x03\x04 not really a zip")
    with caplog.at_level(logging.INFO, logger="milterkit"):
        result = run(
            milter_harness, broken, reject_extensions=frozenset({"exe"}), look_inside_zip=True
        )
    assert_decision(result, "continue")
    assert_no_modifications(result)
    assert '"documents.zip" application/zip: not a readable ZIP archive' in caplog.text
