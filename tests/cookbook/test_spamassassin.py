"""SpamAssassin filter against a real spamd: GTUBE scored, tagged, quarantined, rejected."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from milterkit.contrib import spamassassin
from milterkit.contrib._common import service_address
from milterkit.contrib.spamassassin import SpamAssassinMilter, SpamdError, SpamSettings
from milterkit.testing import assert_decision, assert_header_deleted, assert_quarantined

from ._services import GTUBE

HAM = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: lunch\r\n"
    b"Date: Thu, 03 Dec 2026 05:00:00 +0000\r\nMessage-ID: <lunch@example.org>\r\n\r\n"
    b"Shall we have lunch at noon tomorrow?\r\n"
)
SPAM = HAM.replace(b"Shall we", GTUBE + b"\r\nShall we")


def settings(port: int, **kw) -> SpamSettings:
    return SpamSettings(spamd=service_address(f"inet:{port}@127.0.0.1"), **kw)


def check(milter_harness, config: SpamSettings, message: bytes):
    mta = milter_harness(lambda: SpamAssassinMilter(config))
    return mta.check(message, sender="<alice@example.org>", recipients=["<bob@example.com>"])


def added(result, name: str) -> str:
    values = [m.value for m in result.modifications if getattr(m, "name", None) == name.encode()]
    assert len(values) == 1, result.modifications
    return values[0].decode()


def test_ham_is_tagged_not_spam(milter_harness, spamd_port):
    result = check(milter_harness, settings(spamd_port, reject_score=15), HAM)
    assert_decision(result, "continue")
    status = added(result, "X-Spam-Status")
    assert status.startswith("No, score=") and "required=5.0" in status
    assert float(added(result, "X-Spam-Score")) < 5


def test_gtube_is_tagged_as_spam(milter_harness, spamd_port):
    result = check(milter_harness, settings(spamd_port), SPAM)
    assert_decision(result, "continue")
    assert added(result, "X-Spam-Status").startswith("Yes, score=")
    assert "GTUBE" in added(result, "X-Spam-Status")
    assert float(added(result, "X-Spam-Score")) >= 1000


def test_gtube_over_the_quarantine_score_is_quarantined(milter_harness, spamd_port):
    result = check(
        milter_harness, settings(spamd_port, quarantine_score=8, reject_score=5000), SPAM
    )
    assert_decision(result, "continue")
    assert_quarantined(result)


def test_gtube_over_the_reject_score_is_rejected(milter_harness, spamd_port):
    result = check(milter_harness, settings(spamd_port, quarantine_score=8, reject_score=15), SPAM)
    assert_decision(result, "reject")
    assert str(result.smtp_reply).startswith("550 5.7.1 Message refused as spam (score 10")


def test_body_without_final_line_break_is_scored(milter_harness, spamd_port):
    result = check(milter_harness, settings(spamd_port), SPAM + b"no line break at the end")
    assert added(result, "X-Spam-Status").startswith("Yes, score=")


def test_incoming_spam_headers_are_replaced(milter_harness, spamd_port):
    forged = b"X-Spam-Status: No, score=-100\r\nX-Spam-Score: -100\r\n" + SPAM
    result = check(milter_harness, settings(spamd_port), forged)
    assert_header_deleted(result, "X-Spam-Status", 1)
    assert_header_deleted(result, "X-Spam-Score", 1)
    delivered = result.apply(forged).message_bytes
    assert b"score=-100" not in delivered and b"X-Spam-Status: Yes, score=" in delivered


def test_several_incoming_spam_headers_are_all_deleted(milter_harness, spamd_port):
    forged = b"X-Spam-Status: a\r\nX-Spam-Flag: b\r\nX-Spam-Status: c\r\n" + HAM
    result = check(milter_harness, settings(spamd_port), forged)
    assert_header_deleted(result, "X-Spam-Status", 2)
    assert_header_deleted(result, "X-Spam-Status", 1)
    delivered = result.apply(forged).message_bytes
    assert b"X-Spam-Status: a" not in delivered and b"X-Spam-Status: c" not in delivered
    assert b"X-Spam-Flag" not in delivered


def test_message_over_max_size_is_not_scanned(milter_harness, spamd_port):
    result = check(milter_harness, settings(spamd_port, max_size=100), SPAM)
    assert_decision(result, "continue")
    assert added(result, "X-Spam-Status") == "No, skipped: over 100 bytes"


def test_spamd_down_logged_once_and_answered(milter_harness, caplog):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = settings(port, on_error="tempfail")
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = check(milter_harness, config, SPAM)
    assert str(result.smtp_reply) == "451 4.3.0 spam filter unavailable, try again later"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"[harness] spamd inet:{port}@127.0.0.1 failed: ConnectionRefusedError: "
        "[Errno 111] Connection refused; answering tempfail"
    ]


def read_whole_request(conn: socket.socket) -> bytes:
    """Read a spamd request: the header lines, then Content-length bytes of message."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += received(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += received(conn)
    return data


def received(conn: socket.socket) -> bytes:
    if not (chunk := conn.recv(65536)):
        raise ConnectionError("the client closed before its request was complete")
    return chunk


def test_spamd_error_reply_is_an_error(milter_harness, caplog):
    """A server answering as spamd does to a request it cannot parse (EX_PROTOCOL)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            read_whole_request(conn)  # as spamd does: a close with unread data would be a reset
            conn.sendall(b"SPAMD/1.0 76 Bad header line: (Content-length mismatch)\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = check(milter_harness, settings(port), HAM)
    thread.join(30)
    server.close()
    assert_decision(result, "accept")  # the default --on-error
    assert "SpamdError: spamd answered 'SPAMD/1.0 76 Bad header line" in caplog.text


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "spamd closed the connection without answering"),
        (b"HTTP/1.0 200 OK\r\n\r\n", "spamd answered 'HTTP/1.0 200 OK'"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "without a Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n", "bad Spam header: 'True ; lots"),
    ],
)
def test_bad_replies_name_the_problem(reply, error):
    with pytest.raises(SpamdError, match=error.replace("(", r"\(")):
        spamassassin.parse_reply(reply)


# ------------------------------------------------------------- command line


def test_command_line_builds_the_settings():
    args = spamassassin.build_parser().parse_args(
        ["--socket", "inet:1@127.0.0.1", "--spamd", "unix:/run/spamd.sock", "--spamd-user",
         "filter", "--quarantine-score", "6", "--reject-score", "12", "--max-size", "2000000"]
    )  # fmt: skip
    got = spamassassin.settings_from_args(args)
    assert (str(got.spamd), got.user, got.quarantine_score, got.reject_score, got.max_size) == (
        "unix:/run/spamd.sock",
        "filter",
        6.0,
        12.0,
        2000000,
    )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["--quarantine-score", "9", "--reject-score", "5"],
            "--quarantine-score must not be above",
        ),
        (["--max-size", "0"], "--max-size must be positive"),
        (["--spamd", "fd:4"], "a service address must be unix:, inet: or inet6:"),
    ],
)
def test_command_line_errors_name_the_bad_value(argv, error, capsys):
    with pytest.raises(SystemExit):
        spamassassin.main(["--socket", "inet:1@127.0.0.1", *argv])
    assert error in capsys.readouterr().err
