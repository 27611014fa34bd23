"""Two cookbook filters through a real Sendmail: the set-up docs/cookbook.md gives for it."""

from __future__ import annotations

import smtplib

import dkim
import pytest

from milterkit.contrib.dkim import txt_lookup_from

from ._support import contrib_filter, sendmail_with
from .test_clamav import CLEAN, INFECTED
from .test_dkim import MESSAGE

pytestmark = pytest.mark.realmta


@pytest.mark.parametrize("canon", ["simple/simple", "relaxed/relaxed"])
def test_sendmail_delivers_mail_signed_by_the_filter(dkim_keys, canon):
    key, _ = dkim_keys
    dns = txt_lookup_from({"mail._domainkey.example.org": key.txt})
    options = ("--key", f"example.org:mail:{key.path}", "--canonicalization", canon)
    with contrib_filter("dkim", *options) as milter, sendmail_with(milter) as sendmail:
        sendmail.send("alice@example.org", ["bob@example.com"], MESSAGE)
        (delivered,) = sendmail.wait_delivered("bob")
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=" + canon.encode() in delivered
    assert dkim.verify(delivered, dnsfunc=dns), delivered.decode()


def test_sendmail_rejects_eicar(clamd_socket):
    with (
        contrib_filter("clamav", "--clamd", f"unix:{clamd_socket}") as milter,
        sendmail_with(milter) as sendmail,
    ):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            sendmail.send("alice@example.org", ["bob@example.com"], INFECTED)
        sendmail.send("alice@example.org", ["carol@example.com"], CLEAN)
        (delivered,) = sendmail.wait_delivered("carol")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL"
    assert b"X-Virus-Scanned: clean (ClamAV)" in delivered
