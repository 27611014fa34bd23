"""``milterkit check`` through its own parser: output and exit codes."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from milterkit.cli import check as check_cli
from milterkit.protocol import (
    AddHeader,
    Command,
    Continue,
    Discard,
    Quarantine,
    Reject,
    ReplyCodePacket,
    TempFail,
)
from tests.client.conftest import Serve
from tests.client.milter_server import GARBAGE, SILENT, Script

MSG = b"From: <alice@example.org>\r\nTo: <bob@example.com>\r\nSubject: hi\r\n\r\nHello\r\n"


def invoke(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="milterkit")
    check_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = check_cli.run(args, out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "msg.eml"
    path.write_bytes(MSG)
    return path


def test_table_output_and_apply(serve: Serve, eml: Path, tmp_path: Path) -> None:
    eom = [AddHeader(b"X-Checked", b"yes"), Continue()]
    address, _ = serve(Script(replies={Command.BODYEOB: eom}))
    out_file = tmp_path / "out.eml"
    status, out, err = invoke(["--socket", address, str(eml), "--apply", str(out_file)])
    assert (status, err) == (0, "")
    assert "version      6" in out
    assert "header   continue  x3" in out
    assert "decision     continue (at eom)" in out
    assert "1. add header X-Checked: 'yes'" in out
    assert out_file.read_bytes() == MSG.replace(b"\r\n\r\n", b"\r\nX-Checked: yes\r\n\r\n")


@pytest.mark.parametrize(
    ("command", "reply", "status"),
    [
        (Command.MAIL, Reject(), 1),
        (Command.DATA, TempFail(), 2),
        (Command.EOH, ReplyCodePacket(b"451 4.7.1 later"), 2),
        (Command.BODYEOB, Discard(), 3),
        (Command.BODYEOB, [Quarantine(b"hold"), Continue()], 4),
    ],
)
def test_exit_codes(serve: Serve, eml: Path, command: Command, reply: object, status: int) -> None:
    replies = reply if isinstance(reply, list) else [reply]
    address, _ = serve(Script(replies={command: replies}))  # type: ignore[dict-item]
    assert invoke(["--socket", address, str(eml)])[0] == status


def test_json_output_and_options(serve: Serve, eml: Path) -> None:
    address, server = serve()
    argv = ["--socket", address, "--json", "--from", "x@y.z", "--rcpt", "a@b.c"]
    argv += ["--rcpt", "d@e.f", "--macro", "{auth_authen}=alice", "--profile", "sendmail"]
    status, out, _ = invoke([*argv, str(eml)])
    data = json.loads(out)
    assert status == 0
    assert data["profile"] == "sendmail"
    assert data["recipients"] == ["a@b.c", "d@e.f"]
    assert [s["stage"] for s in data["stages"]].count("rcpt") == 2
    mail_macros = [e for e in server.logs[0].packets() if getattr(e, "stage", 0) == ord("M")]
    assert (b"{auth_authen}", b"alice") in mail_macros[0].pairs  # type: ignore[attr-defined]


def test_usage_and_connection_errors(serve: Serve, eml: Path, tmp_path: Path) -> None:
    status, _, err = invoke(["--socket", "nonsense", str(eml)])
    assert status == 64 and "invalid socket spec" in err
    status, _, err = invoke(["--socket", f"unix:{tmp_path}/none", str(eml)])
    assert status == 69 and "cannot connect" in err
    status, _, err = invoke(["--socket", "unix:/x", str(tmp_path / "missing.eml")])
    assert status == 66
    status, _, err = invoke(["--socket", "unix:/x", "--macro", "novalue", str(eml)])
    assert status == 64 and "NAME=VALUE" in err
    nobody = tmp_path / "nobody.eml"
    nobody.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    status, _, err = invoke(["--socket", "unix:/x", str(nobody)])
    assert status == 64 and "no recipient" in err


def test_timeout_and_protocol_errors(serve: Serve, eml: Path) -> None:
    address, _ = serve(Script(replies={Command.HELO: SILENT}))
    status, _, err = invoke(["--socket", address, "--timeout", "0.3", str(eml)])
    assert status == 75 and "HELO" in err
    address, _ = serve(Script(replies={Command.BODYEOB: GARBAGE}))
    status, _, err = invoke(["--socket", address, str(eml)])
    assert status == 76 and "broke the protocol during eom" in err
