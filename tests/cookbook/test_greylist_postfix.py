"""Greylisting end to end: Postfix defers the first attempt with 451 4.7.1, delivers the retry."""

from __future__ import annotations

import smtplib

import pytest

from ._support import contrib_filter, postfix_with
from .test_greylist import MESSAGE

pytestmark = pytest.mark.realmta


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_postfix_defers_then_delivers(kind, tmp_path, request):
    spec = (
        f"sqlite:{tmp_path / 'g.db'}" if kind == "sqlite" else request.getfixturevalue("redis_url")
    )
    with (
        contrib_filter("greylist", "--store", spec, "--delay", "0") as milter,
        postfix_with([milter]) as postfix,
    ):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
            postfix.send("alice@example.org", ["bob@example.com"], MESSAGE)
        postfix.send("alice@example.org", ["bob@example.com"], MESSAGE)
        (delivered,) = postfix.wait_delivered("bob")
    code, text = deferred.value.recipients["bob@example.com"]
    assert (code, text) == (451, b"4.7.1 Greylisted, please try again in 1 second")
    assert delivered.endswith((b"hello\n", b"hello\r\n"))
