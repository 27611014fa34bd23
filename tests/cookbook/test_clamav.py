"""ClamAV filter against a real clamd (EICAR-only database): reject, quarantine, tempfail."""

from __future__ import annotations

import base64
import logging
import socket
import threading

import pytest

from milterkit.contrib import clamav
from milterkit.contrib._common import service_address
from milterkit.contrib.clamav import ClamavMilter, ClamavSettings
from milterkit.mtaprofile import POSTFIX, V2_ONLY
from milterkit.testing import (
    assert_decision,
    assert_header_added,
    assert_no_modifications,
    assert_quarantined,
)

from ._services import EICAR

CLEAN = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
EICAR_B64 = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
INFECTED = (
    b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: test file\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
    b'--b\r\nContent-Type: application/octet-stream; name="eicar.com"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n" + EICAR_B64 + b"--b--\r\n"
)
INLINE = CLEAN.replace(b"hello", EICAR)


def settings(sock, **kw) -> ClamavSettings:
    return ClamavSettings(clamd=service_address(f"unix:{sock}"), timeout=30, **kw)


def check(milter_harness, config: ClamavSettings, message: bytes):
    mta = milter_harness(lambda: ClamavMilter(config))
    return mta.check(message, sender="<alice@example.org>", recipients=["<bob@example.com>"])


def test_clean_mail_passes_with_a_header(milter_harness, clamd_socket):
    result = check(milter_harness, settings(clamd_socket), CLEAN)
    assert_decision(result, "continue")
    assert_header_added(result, "X-Virus-Scanned", "clean (ClamAV)")


@pytest.mark.parametrize("message", [INFECTED, INLINE], ids=["base64-attachment", "inline"])
def test_eicar_is_rejected_with_the_signature_name(milter_harness, clamd_socket, message):
    result = check(milter_harness, settings(clamd_socket), message)
    assert_decision(result, "reject")
    assert str(result.smtp_reply) == "550 5.7.1 Virus found: Eicar-Test-Signature.UNOFFICIAL"


def test_eicar_is_quarantined_when_configured(milter_harness, clamd_socket):
    result = check(milter_harness, settings(clamd_socket, infected="quarantine"), INFECTED)
    assert_decision(result, "continue")
    assert_quarantined(result, "virus Eicar-Test-Signature.UNOFFICIAL")
    assert_header_added(result, "X-Virus-Found", "Eicar-Test-Signature.UNOFFICIAL")


def test_large_body_is_streamed_in_chunks(milter_harness, clamd_socket):
    big = CLEAN.replace(b"hello", b"x" * 3_000_000 + b"\r\n" + EICAR)
    assert_decision(check(milter_harness, settings(clamd_socket), big), "reject")


@pytest.mark.parametrize("profile", [POSTFIX, V2_ONLY], ids=lambda p: p.name)
def test_only_max_scan_bytes_are_scanned(milter_harness, clamd_socket, profile):
    """Past the limit the filter skips the body, or lets it go by where SKIP is not granted."""
    late = CLEAN.replace(b"hello", b"x" * 200_000 + b"\r\n" + EICAR)
    config = settings(clamd_socket, max_scan_bytes=100_000, add_header=False)
    mta = milter_harness(lambda: ClamavMilter(config), profile=profile)
    result = mta.check(late, sender="<alice@example.org>", recipients=["<bob@example.com>"])
    assert_decision(result, "continue")
    assert_no_modifications(result)


@pytest.mark.parametrize(
    ("decision", "reply"),
    [
        ("tempfail", "451 4.3.0 virus scanner unavailable, try again later"),
        ("reject", "550 5.7.1 virus scanner unavailable, message refused"),
    ],
)
def test_clamd_down_logged_once_and_answered(milter_harness, tmp_path, caplog, decision, reply):
    config = settings(tmp_path / "nothing.sock", on_error=decision)
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = check(milter_harness, config, INFECTED)
    assert str(result.smtp_reply) == reply
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"[harness] clamd unix:{tmp_path}/nothing.sock failed: FileNotFoundError: "
        f"[Errno 2] No such file or directory; answering {decision}"
    ]


def test_clamd_down_accept_lets_mail_through(milter_harness, tmp_path):
    result = check(milter_harness, settings(tmp_path / "x.sock", on_error="accept"), INFECTED)
    assert_decision(result, "accept")


def test_clamd_error_reply_is_an_error(milter_harness, tmp_path, caplog):
    """A server that answers like clamd when it refuses a stream."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\0\0\0\0"):
                data += conn.recv(65536)
            conn.sendall(b"INSTREAM size limit exceeded. ERROR\0")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = check(milter_harness, settings(path), CLEAN)
    thread.join(30)
    server.close()
    assert_decision(result, "tempfail")
    assert "ClamdError: clamd answered 'INSTREAM size limit exceeded. ERROR'" in caplog.text


# ------------------------------------------------------------- command line


def test_command_line_builds_the_settings():
    args = clamav.build_parser().parse_args(
        ["--socket", "inet:1@127.0.0.1", "--clamd", "inet:3310@127.0.0.1",
         "--infected", "quarantine", "--on-error", "accept", "--max-scan-bytes", "1000",
         "--no-header"]
    )  # fmt: skip
    got = clamav.settings_from_args(args)
    assert (str(got.clamd), got.infected, got.on_error, got.max_scan_bytes, got.add_header) == (
        "inet:3310@127.0.0.1",
        "quarantine",
        "accept",
        1000,
        False,
    )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--clamd", "fd:3"], "a service address must be unix:, inet: or inet6:"),
        (["--clamd", "tcp:1"], "tcp:1"),
        (["--max-scan-bytes", "0"], "--max-scan-bytes must be positive"),
        (["--infected", "delete"], "invalid choice: 'delete'"),
    ],
)
def test_command_line_errors_name_the_bad_value(argv, error, capsys):
    with pytest.raises(SystemExit):
        clamav.main(["--socket", "inet:1@127.0.0.1", *argv])
    assert error in capsys.readouterr().err
