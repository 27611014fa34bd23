"""DKIM filter end to end: signed by the filter through a real Postfix, checked by dkimpy."""

from __future__ import annotations

import dkim
import pytest

from milterkit.contrib.dkim import txt_lookup_from

from ._support import contrib_filter, postfix_with
from .test_dkim import MESSAGE

pytestmark = pytest.mark.realmta


def test_postfix_delivers_mail_signed_by_the_filter(dkim_keys):
    key, _ = dkim_keys
    dns = txt_lookup_from({"mail._domainkey.example.org": key.txt})
    signer = contrib_filter("dkim", "--key", f"example.org:mail:{key.path}")
    with signer as milter, postfix_with([milter]) as postfix:
        postfix.send("alice@example.org", ["bob@example.com"], MESSAGE)
        (delivered,) = postfix.wait_delivered("bob")
    assert b"\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.org;" in delivered
    assert dkim.verify(delivered, dnsfunc=dns), delivered.decode()
    assert not dkim.verify(delivered.replace(b"Hello Bob", b"Hello Eve"), dnsfunc=dns)


def test_postfix_delivers_results_of_incoming_signatures(dkim_keys, tmp_path):
    key, other = dkim_keys
    txt = tmp_path / "keys.txt"
    txt.write_text(key.txt_line("mail", "example.org") + "\n")
    good = dkim.sign(MESSAGE, b"mail", b"example.org", key.pem) + MESSAGE
    forged = dkim.sign(MESSAGE, b"mail", b"example.org", other.pem) + MESSAGE
    verifier = contrib_filter(
        "dkim", "--internal", "192.0.2.0/24", "--authserv-id", "mx.test.example",
        "--txt-file", str(txt),
    )  # fmt: skip
    with verifier as milter, postfix_with([milter]) as postfix:
        postfix.send("alice@example.org", ["good@example.com"], good)
        postfix.send("alice@example.org", ["forged@example.com"], forged)
        (passed,) = postfix.wait_delivered("good")
        (failed,) = postfix.wait_delivered("forged")
    assert b"Authentication-Results: mx.test.example;\n\tdkim=pass header.d=example.org" in (
        passed.replace(b"\r\n", b"\n")
    )
    assert b"Authentication-Results: mx.test.example;\n\tdkim=fail header.d=example.org" in (
        failed.replace(b"\r\n", b"\n")
    )
