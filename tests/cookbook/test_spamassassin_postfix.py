"""SpamAssassin filter end to end: Postfix, the filter daemon and a real spamd."""

from __future__ import annotations

import smtplib

import pytest

from ..realmta._util import wait_until
from ._support import contrib_filter, postfix_with
from .test_spamassassin import HAM, SPAM

pytestmark = pytest.mark.realmta

FORGED = (
    b"X-Spam-Status: No, score=-50 forged\r\nX-Spam-Flag: NO forged\r\n"
    b"X-Spam-Status: No, score=-60 forged\r\n"
)


def test_postfix_tags_ham_and_rejects_gtube(spamd_port):
    options = ("--spamd", f"inet:{spamd_port}@127.0.0.1", "--reject-score", "15")
    with contrib_filter("spamassassin", *options) as milter, postfix_with([milter]) as postfix:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            postfix.send("alice@example.org", ["bob@example.com"], SPAM)
        postfix.send("alice@example.org", ["carol@example.com"], FORGED + HAM)
        (delivered,) = postfix.wait_delivered("carol")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Message refused as spam (score 10")
    assert b"\nX-Spam-Status: No, score=" in delivered
    assert b"\nX-Spam-Score: " in delivered
    assert b"forged" not in delivered  # both incoming X-Spam-Status and the X-Spam-Flag


def test_postfix_holds_quarantined_spam(spamd_port):
    options = ("--spamd", f"inet:{spamd_port}@127.0.0.1", "--quarantine-score", "8")
    with contrib_filter("spamassassin", *options) as milter, postfix_with([milter]) as postfix:
        postfix.send("alice@example.org", ["bob@example.com"], SPAM)
        (held,) = wait_until(lambda: postfix.hold_queue() or None, 30, "a held message")
        headers = postfix.postcat(held, "-h")
    assert "X-Spam-Status: Yes, score=10" in headers
    assert "GTUBE" in headers
