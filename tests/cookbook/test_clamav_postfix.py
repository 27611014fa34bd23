"""ClamAV filter end to end: Postfix, the filter daemon and a real clamd."""

from __future__ import annotations

import re
import smtplib

import pytest

from ._support import contrib_filter, postfix_with
from .test_clamav import CLEAN, INFECTED

pytestmark = pytest.mark.realmta


def test_postfix_rejects_eicar_and_delivers_clean_mail(clamd_socket):
    with (
        contrib_filter("clamav", "--clamd", f"unix:{clamd_socket}") as milter,
        postfix_with([milter]) as postfix,
    ):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            postfix.send("alice@example.org", ["bob@example.com"], INFECTED)
        postfix.send("alice@example.org", ["carol@example.com"], CLEAN)
        (delivered,) = postfix.wait_delivered("carol")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL"
    assert b"X-Virus-Scanned: clean (ClamAV)" in delivered
    assert postfix.delivered("bob") == []


def test_postfix_gets_a_tempfail_when_clamd_is_down(tmp_path):
    with (
        contrib_filter("clamav", "--clamd", f"unix:{tmp_path}/gone.sock") as milter,
        postfix_with([milter]) as postfix,
    ):
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            postfix.send("alice@example.org", ["bob@example.com"], CLEAN)
        logs = milter.logs()
    assert (deferred.value.smtp_code, deferred.value.smtp_error) == (
        451,
        b"4.3.0 virus scanner unavailable, try again later",
    )
    failures = [line for line in logs.splitlines() if "clamd unix:" in line]
    assert len(failures) == 1, logs
    assert re.search(
        r"\[w\d+-c\d+\] clamd unix:\S+/gone.sock failed: FileNotFoundError: .*; answering tempfail",
        failures[0],
    ), failures[0]
