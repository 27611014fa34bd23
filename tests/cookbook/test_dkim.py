"""DKIM filter: signing of internal mail, verification of the rest, and its command line."""

from __future__ import annotations

from collections.abc import Callable

import dkim
import pytest

from milterkit.contrib import dkim as dkim_filter
from milterkit.contrib.dkim import DkimMilter, DkimSettings, SigningKey
from milterkit.mtaprofile import POSTFIX, SENDMAIL, V2_ONLY
from milterkit.testing import assert_decision

from .conftest import DkimKey

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly   figures\r\n"
    b"Date: Thu, 03 Dec 2026 05:00:00 +0000\r\n"
    b"Message-ID: <q4@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe figures are attached.   \r\n"
)


def settings(key: DkimKey, **kw: object) -> DkimSettings:
    base = DkimSettings(
        keys={"example.org": SigningKey("example.org", "mail", key.pem)},
        authserv_id="mx.test.example",
        txt_lookup=dns_for(key),
    )
    for name, value in kw.items():
        setattr(base, name, value)
    return base


def dns_for(key: DkimKey) -> Callable[..., bytes | None]:
    return dkim_filter.txt_lookup_from({"mail._domainkey.example.org": key.txt})


@pytest.mark.parametrize("canon", dkim_filter.CANONICALIZATIONS)
def test_internal_mail_is_signed_and_verifies(milter_harness, dkim_keys, canon):
    key, _ = dkim_keys
    mta = milter_harness(lambda: DkimMilter(settings(key, canonicalization=canon)))
    result = mta.check(MESSAGE, sender="<alice@example.org>", recipients=["<bob@example.com>"])
    assert_decision(result, "continue")
    signed = result.apply(MESSAGE).message_bytes
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=" + canon.encode())
    assert dkim.verify(signed, dnsfunc=dns_for(key))
    tampered = signed.replace(b"the figures", b"the invoice")
    assert not dkim.verify(tampered, dnsfunc=dns_for(key))


def test_signature_by_another_key_does_not_verify(milter_harness, dkim_keys):
    key, other = dkim_keys
    mta = milter_harness(lambda: DkimMilter(settings(other)))
    signed = mta.check(MESSAGE).apply(MESSAGE).message_bytes
    assert not dkim.verify(signed, dnsfunc=dns_for(key))


def test_authenticated_client_is_signed_from_outside(milter_harness, dkim_keys):
    key, _ = dkim_keys
    mta = milter_harness(
        lambda: DkimMilter(settings(key)),
        client_address="192.0.2.7",
        macros={"{auth_authen}": "alice"},
    )
    signed = mta.check(MESSAGE).apply(MESSAGE).message_bytes
    assert dkim.verify(signed, dnsfunc=dns_for(key))


def test_unkeyed_domain_from_inside_is_verified_not_signed(milter_harness, dkim_keys):
    key, _ = dkim_keys
    message = MESSAGE.replace(b"alice@example.org", b"alice@elsewhere.example")
    mta = milter_harness(lambda: DkimMilter(settings(key)))
    delivered = mta.check(message).apply(message).message_bytes
    assert b"DKIM-Signature" not in delivered
    assert delivered.startswith(b"Authentication-Results: mx.test.example;\r\n\tdkim=none\r\n")


def sign(key: DkimKey, message: bytes = MESSAGE) -> bytes:
    return dkim.sign(message, b"mail", b"example.org", key.pem) + message


def results_header(milter_harness, key: DkimKey, message: bytes, **kw: object) -> bytes:
    mta = milter_harness(lambda: DkimMilter(settings(key, **kw)), client_address="192.0.2.7")
    delivered = mta.check(message).apply(message).message_bytes
    head, _, _ = delivered.partition(b"\r\n\r\n")
    ours = [h for h in head.split(b"\r\n") if h.startswith(b"Authentication-Results")]
    assert len(ours) == 1, head
    return delivered.split(b"\r\n\r\n")[0].split(b"Authentication-Results: ", 1)[1]


def test_incoming_signature_passes(milter_harness, dkim_keys):
    key, _ = dkim_keys
    header = results_header(milter_harness, key, sign(key))
    assert header.startswith(b"mx.test.example;\r\n\tdkim=pass header.d=example.org header.s=mail")


def test_incoming_tampered_signature_fails(milter_harness, dkim_keys):
    key, _ = dkim_keys
    tampered = sign(key).replace(b"the figures", b"the invoice")
    header = results_header(milter_harness, key, tampered)
    assert b'dkim=fail reason="body hash mismatch" header.d=example.org header.s=mail' in header


def test_incoming_signature_without_published_key_is_permerror(milter_harness, dkim_keys):
    key, _ = dkim_keys
    no_keys = dkim_filter.txt_lookup_from({})
    header = results_header(milter_harness, key, sign(key), txt_lookup=no_keys)
    assert header.startswith(
        b'mx.test.example;\r\n\tdkim=permerror reason="no key published" header.d=example.org'
    )


def test_forged_results_claiming_our_name_are_removed(milter_harness, dkim_keys):
    key, _ = dkim_keys
    forged = b"Authentication-Results: MX.test.example; dkim=pass\r\n" + MESSAGE
    kept = b"Authentication-Results: other.example; dkim=pass\r\n" + forged
    mta = milter_harness(lambda: DkimMilter(settings(key)), client_address="192.0.2.7")
    delivered = mta.check(kept).apply(kept).message_bytes
    assert b"MX.test.example; dkim=pass" not in delivered
    assert b"Authentication-Results: other.example; dkim=pass" in delivered
    assert b"Authentication-Results: mx.test.example;\r\n\tdkim=none" in delivered


# ---------------------------------------------------------------- command line


def parse(*argv: str) -> DkimSettings:
    parser = dkim_filter.build_parser()
    return dkim_filter.settings_from_args(
        parser.parse_args(["--socket", "inet:1@127.0.0.1", *argv])
    )


def test_command_line_builds_the_settings(dkim_keys, tmp_path):
    key, _ = dkim_keys
    txt = tmp_path / "keys.txt"
    txt.write_text("# published keys\n" + key.txt_line("mail", "example.org") + "\n")
    got = parse(
        "--key", f"Example.ORG:mail:{key.path}", "--canonicalization", "simple/simple",
        "--sign-headers", "From, Subject", "--internal", "10.0.0.0/8", "--txt-file", str(txt),
    )  # fmt: skip
    assert got.keys["example.org"] == SigningKey("example.org", "mail", key.pem)
    assert got.signed_headers == ("from", "subject")
    assert [str(n) for n in got.internal] == ["10.0.0.0/8"]
    assert got.txt_lookup is not None
    assert got.txt_lookup(b"mail._domainkey.example.org.") == key.txt


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--key", "example.org:mail"], "'example.org:mail' is not DOMAIN:SELECTOR:KEYFILE"),
        (["--key", "example.org:mail:/nonexistent.pem"], "cannot read key file /nonexistent.pem"),
        (["--key", "example.org:mail:/etc/hostname"], "/etc/hostname holds no PEM private key"),
        (["--internal", "10.0.0.300/8"], "'10.0.0.300/8' is not an IP network"),
        (["--sign-headers", "subject,to"], "--sign-headers must include 'from'"),
    ],
)
def test_command_line_errors_name_the_bad_value(argv, error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        dkim_filter.main(["--socket", "inet:1@127.0.0.1", *argv])
    assert exit_info.value.code == 2
    assert error in capsys.readouterr().err


def test_txt_file_syntax_error_names_the_line(tmp_path, capsys):
    txt = tmp_path / "keys.txt"
    txt.write_text("\nmail._domainkey.example.org\n")
    with pytest.raises(SystemExit):
        dkim_filter.main(["--socket", "inet:1@127.0.0.1", "--txt-file", str(txt)])
    assert f"{txt}:2: expected 'NAME TXT-VALUE'" in capsys.readouterr().err


@pytest.mark.parametrize("profile", [POSTFIX, SENDMAIL, V2_ONLY], ids=lambda p: p.name)
@pytest.mark.parametrize("canon", ["simple/simple", "relaxed/relaxed"])
def test_signature_verifies_with_every_mta_profile(milter_harness, dkim_keys, profile, canon):
    """With or without HDR_LEADSPC granted, the signed header text is what gets delivered."""
    key, _ = dkim_keys
    message = MESSAGE.replace(b"Subject: ", b"Subject:  \t")  # odd spacing after the colon
    mta = milter_harness(lambda: DkimMilter(settings(key, canonicalization=canon)), profile=profile)
    signed = mta.check(message).apply(message).message_bytes
    assert dkim.verify(signed, dnsfunc=dns_for(key)), signed


def test_every_forged_result_is_removed(milter_harness, dkim_keys):
    key, _ = dkim_keys
    forged = (
        b"Authentication-Results: mx.test.example; dkim=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n"
        b"Authentication-Results: mx.test.example; dkim=pass header.d=bank.example\r\n" + MESSAGE
    )
    mta = milter_harness(lambda: DkimMilter(settings(key)), client_address="192.0.2.7")
    delivered = mta.check(forged).apply(forged).message_bytes
    assert b"mx.test.example; dkim=pass" not in delivered
    assert delivered.count(b"Authentication-Results: ") == 2
    assert b"Authentication-Results: other.example; spf=pass" in delivered
