"""Attachment policy end to end through a real Postfix: a refusal and a stripped part."""

from __future__ import annotations

import email
import smtplib

import pytest

from . import mime_corpus as corpus
from ._support import contrib_filter, postfix_with

pytestmark = pytest.mark.realmta


def test_postfix_refuses_and_strips_as_configured():
    policy = contrib_filter(
        "attachments", "--reject-extension", "scr,exe", "--strip-extension", "js"
    )
    with policy as milter, postfix_with([milter]) as postfix:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            postfix.send("alice@example.org", ["bob@example.com"], corpus.NESTED)
        postfix.send("alice@example.org", ["carol@example.com"], corpus.RFC2047_QP)
        (delivered,) = postfix.wait_delivered("carol")
    assert refused.value.smtp_code == 550
    assert b'5.7.1 attachment "setup.exe" refused' in refused.value.smtp_error
    parts = [p for p in email.message_from_bytes(delivered).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/plain"] * 3
    assert parts[1].get_payload(decode=True).startswith(b'The attachment "skript.js"')
    assert parts[2].get_payload(decode=True) == "café notes".encode()
