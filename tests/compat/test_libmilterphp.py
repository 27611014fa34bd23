"""libMilterPHP compatibility layer over a real socket, driven by the raw MTA."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from milterkit.compat import libmilterphp as php
from milterkit.protocol import (
    Abort,
    Body,
    Connect,
    EndOfHeaders,
    EndOfMessage,
    Family,
    Header,
    Helo,
    Macro,
    Mail,
    Quit,
    QuitNoClose,
    Rcpt,
)
from milterkit.protocol import messages as wire
from milterkit.protocol.constants import LIBMILTER_NAMES, Action, ProtocolFlag
from milterkit.runtime.server import Server
from tests.runtime.test_server_mta import (
    OFFER_V6,
    RawMTA,
    inet_listener,
    kinds,
    serving,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))

import libmilterphp_sample  # noqa: E402


def serve(template: php.Milter) -> tuple[Server, Any]:
    sock = inet_listener()
    return Server(php.adapter_class(template), sock), sock.getsockname()[:2]


def make(
    cls: type[php.Milter],
    actions: list[int] | None = None,
    ignored: list[int] | None = None,
) -> php.Milter:
    return cls(None, None, None, 10, "inet:1@127.0.0.1", actions or [], ignored or [])


# ------------------------------------------------------------- the sample


def test_sample_quarantines_spammer_at_end_of_message() -> None:
    server, address = serve(libmilterphp_sample.build(None, None, None, "inet:1@127.0.0.1"))
    with serving(server), RawMTA.connect(address) as mta:
        reply, _ = mta.hello()
        assert reply.version == 2
        assert reply.actions == Action.QUARANTINE
        assert reply.protocol == ProtocolFlag(0x7B)  # NOCONNECT|NOHELO|NORCPT|NOBODY|NOHDRS|NOEOH
        assert mta.command(Mail(b"<SpamEri@Tiscali.it>")) == [wire.Continue()]
        assert mta.command(EndOfMessage()) == [
            wire.Quarantine(b"Spammer in quarantine!"),
            wire.Continue(),
        ]
        mta.send(Abort())
        assert kinds(mta.message(sender="<friend@example.org>")) == ["Continue"]
        mta.send(Quit())
        assert mta.wait_closed()


# ------------------------------------------------------- message arrays


class Recording(php.Milter):
    seen: ClassVar[list[dict[str, Any]]] = []

    def _keep(self, message: php.Message) -> None:
        self.seen.append(message)

    smficConnect = smficHelo = smficMail = smficRcpt = smficHeader = _keep  # noqa: N815
    smficEoh = smficBody = smficBodyeob = smficMacro = smficAbort = smficQuit = _keep  # noqa: N815


def test_message_arrays_per_command() -> None:
    Recording.seen = []
    server, address = serve(make(Recording))
    with serving(server), RawMTA.connect(address) as mta:
        mta.negotiate(OFFER_V6)
        mta.send(Macro(ord("C"), ((b"j", b"mx.example"), (b"{daemon_name}", b"smtpd"))))
        mta.command(Connect(b"client.example", Family.INET, 4567, b"192.0.2.1"))
        mta.command(Helo(b"helo.example"))
        mta.command(Mail(b"<a@example.org>", (b"BODY=8BITMIME", b"SIZE=10")))
        mta.command(Rcpt(b"<b@example.net>"))
        mta.command(Header(b"Subject", b"caf\xc3\xa9 \xff"))
        mta.command(EndOfHeaders())
        mta.command(Body(b"line\r\n\x00x"))
        assert mta.command(EndOfMessage()) == [wire.Continue()]
        mta.send(Abort())
        mta.command(Mail(b"<c@example.org>"))
        mta.send(Abort())
        mta.send(Quit())
        assert mta.wait_closed()
    wait_for(lambda: Recording.seen and Recording.seen[-1]["command"] == "Q", 5, "quit")
    by = [(m["command"], m["args"]) for m in Recording.seen]
    assert by[0] == ("D", ["C", "j", "mx.example", "{daemon_name}", "smtpd"])
    assert Recording.seen[0]["macros"] == {"j": "mx.example", "{daemon_name}": "smtpd"}
    assert by[1] == ("C", ["client.example", "4", "4567", "192.0.2.1"])
    assert by[2] == ("H", ["helo.example"])
    assert by[3] == ("M", ["<a@example.org>", "BODY=8BITMIME", "SIZE=10"])
    assert by[4] == ("R", ["<b@example.net>"])
    assert by[5] == ("L", ["Subject", "caf\u00e9 \udcff"])
    assert by[6] == ("N", [])
    assert by[7][0] == "B"
    assert Recording.seen[7]["binary"] == b"line\r\n\x00x"
    assert by[8] == ("E", [])
    assert by[9:] == [("M", ["<c@example.org>"]), ("A", []), ("Q", [])]
    mail = Recording.seen[3]
    assert mail["binary"] == b"<a@example.org>\x00BODY=8BITMIME\x00SIZE=10\x00"
    assert mail["size"] == len(mail["binary"]) + 1


def test_smfic_macro_once_per_packet_also_after_quit_nc() -> None:
    """Each MACRO packet, as sent, reaches smficMacro before the next command's callback,
    also two for one command (the second replaces the first in the store), and also on
    a connection reused after QUIT_NC, which gets a new adapter."""
    Recording.seen = []
    first = Macro(ord("C"), ((b"j", b"mx.example"),))
    second = Macro(ord("C"), ((b"{daemon_name}", b"smtpd"),))
    again = Macro(ord("C"), ((b"j", b"mx2.example"),))
    server, address = serve(make(Recording))
    with serving(server), RawMTA.connect(address) as mta:
        mta.negotiate(OFFER_V6)
        mta.send(first)
        mta.send(second)
        mta.command(Connect(b"client.example", Family.INET, 4567, b"192.0.2.1"))
        mta.send(QuitNoClose())
        mta.send(again)
        mta.command(Connect(b"other.example", Family.INET, 4568, b"192.0.2.2"))
        mta.send(Quit())
        assert mta.wait_closed()
    wait_for(lambda: Recording.seen and Recording.seen[-1]["command"] == "Q", 5, "quit")
    by = [(m["command"], m["args"]) for m in Recording.seen]
    assert by[:3] == [
        ("D", ["C", "j", "mx.example"]),
        ("D", ["C", "{daemon_name}", "smtpd"]),
        ("C", ["client.example", "4", "4567", "192.0.2.1"]),
    ]
    assert by[-3:] == [
        ("D", ["C", "j", "mx2.example"]),
        ("C", ["other.example", "4", "4568", "192.0.2.2"]),
        ("Q", []),
    ]
    assert [m["binary"] for m in Recording.seen if m["command"] == "D"] == [
        first.payload(),
        second.payload(),
        again.payload(),
    ]
    assert Recording.seen[1]["size"] == len(Recording.seen[1]["binary"]) + 1


# ---------------------------------------------------------- reply forms


class Replier(php.Milter):
    """Replies at EOM whatever the class attribute ``plan`` says."""

    protocol_version = 6
    plan: ClassVar[list[dict[str, Any]]] = []

    def smficBodyeob(self, message: php.Message) -> None:  # noqa: N802
        for reply in self.plan:
            self.reply(reply)


ALL = [int(a) for a in Action if a not in (Action.NONE, Action.SETSYMLIST)]


def eom_replies(plan: list[dict[str, Any]], actions: list[int] = ALL) -> list[wire.Message]:
    Replier.plan = plan
    server, address = serve(make(Replier, actions))
    with serving(server), RawMTA.connect(address) as mta:
        mta.hello()
        return mta.message()


def test_every_modification_reply() -> None:
    replies = eom_replies(
        [
            {"command": php.SMFIR_ADDHEADER, "data": {"name": "X-A", "value": "1"}},
            {"command": php.SMFIR_INSHEADER, "data": {"index": 0, "name": "X-B", "value": "2"}},
            {
                "command": php.SMFIR_CHGHEADER,
                "data": {"index": 1, "name": "Subject", "value": "new"},
            },
            {"command": php.SMFIR_CHGHEADER, "data": {"index": 1, "name": "X-Gone"}},
            {"command": php.SMFIR_ADDRCPT, "data": {"rcpt": "<c@x>"}},
            {"command": php.SMFIR_ADDRCPT_PAR, "data": {"rcpt": "<d@x>", "args": "NOTIFY=NEVER"}},
            {"command": php.SMFIR_DELRCPT, "data": {"rcpt": "<b@x>"}},
            {"command": php.SMFIR_CHGFROM, "data": {"from": "<new@x>"}},
            {"command": php.SMFIR_REPLBODY, "data": {"body": "new body\r\n"}},
            {"command": php.SMFIR_QUARANTINE, "data": {"reason": "held"}},
            {"command": php.SMFIR_ACCEPT, "data": {}},
        ]
    )
    assert replies == [
        wire.AddHeader(b"X-A", b"1"),
        wire.InsertHeader(0, b"X-B", b"2"),
        wire.ChangeHeader(1, b"Subject", b"new"),
        wire.ChangeHeader(1, b"X-Gone", b""),
        wire.AddRecipient(b"<c@x>"),
        wire.AddRecipientPar(b"<d@x>", b"NOTIFY=NEVER"),
        wire.DeleteRecipient(b"<b@x>"),
        wire.ChangeFrom(b"<new@x>"),
        wire.ReplaceBody(b"new body\r\n"),
        wire.Quarantine(b"held"),
        wire.Accept(),
    ]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"code": 550, "text": "go away", "xcode": "5.7.1"}, b"550 5.7.1 go away"),
        ({"smtpcode": "451", "text": "later"}, b"451 later"),
        ({"text": "554 5.7.1 whole line"}, b"554 5.7.1 whole line"),
    ],
)
def test_replycode_forms(data: dict[str, Any], text: bytes) -> None:
    assert eom_replies([{"command": php.SMFIR_REPLYCODE, "data": data}]) == [
        wire.ReplyCodePacket(text)
    ]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (php.SMFIR_REJECT, wire.Reject()),
        (php.SMFIR_TEMPFAIL, wire.TempFail()),
        (php.SMFIR_DISCARD, wire.Discard()),
        (php.SMFIR_CONTINUE, wire.Continue()),
    ],
)
def test_final_replies(command: str, expected: wire.Message) -> None:
    assert eom_replies([{"command": command}]) == [expected]


def test_first_final_reply_wins_and_no_reply_means_continue() -> None:
    assert eom_replies([{"command": "r"}, {"command": "a"}]) == [wire.Reject()]
    assert eom_replies([]) == [wire.Continue()]


def test_bad_replies_answer_the_error_decision(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "milterkit"):
        assert eom_replies([{"command": "Z"}]) == [wire.TempFail()]
        assert eom_replies([{"command": php.SMFIR_ADDHEADER, "data": {"value": "x"}}]) == [
            wire.TempFail()
        ]
        assert eom_replies(
            [{"command": php.SMFIR_QUARANTINE, "data": {"reason": "r"}}], actions=[]
        ) == [wire.TempFail()]
    text = caplog.text
    assert "unknown or unsupported reply command 'Z'" in text
    assert "needs data key 'name'" in text
    assert "QUARANTINE" in text


# ----------------------------------------------------------- isolation


class Counter(php.Milter):
    def smficMail(self, message: php.Message) -> None:  # noqa: N802
        self.mails = getattr(self, "mails", 0) + 1
        if self.mails > 1:
            self.reply({"command": php.SMFIR_REJECT})


def test_each_connection_gets_its_own_copy() -> None:
    template = make(Counter)
    server, address = serve(template)
    with serving(server):
        for _ in range(2):
            with RawMTA.connect(address) as mta:
                mta.hello()
                assert kinds(mta.message()) == ["Continue"]
    assert not hasattr(template, "mails")


def test_reply_outside_a_callback_is_an_error() -> None:
    with pytest.raises(php.ReplyError):
        make(Counter).reply({"command": "c"})


# ------------------------------------------------------------ constants


def test_constants_match_the_protocol() -> None:
    for name, value in LIBMILTER_NAMES.items():
        if name.startswith(("SMFIC_", "SMFIR_")) and hasattr(php, name):
            assert getattr(php, name) == chr(value), name
        elif name.startswith(("SMFIF_", "SMFIP_")) and hasattr(php, name):
            assert getattr(php, name) == value, name
    assert php.SMFIR_QUARANTINE == "q"
    assert php.SMFIC_BODYEOB == "E"
    assert isinstance(php.SMFIF_QUARANTINE, int)
    assert php.SMFIP_NOBODY == 0x10


# -------------------------------------------------- accept_connections()


def test_sample_script_runs_the_daemon(tmp_path: Path) -> None:
    sock = tmp_path / "daemon.sock"
    pid = tmp_path / "daemon.pid"
    env = {**os.environ, "PYTHONPATH": f"{REPO}/src"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples/libmilterphp_sample.py"),
            "--socket",
            f"unix:{sock}",
            "--user",
            "",
            "--group",
            "",
            "--pid-file",
            str(pid),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 10, "socket")
        assert proc.poll() is None
        assert pid.exists()
        with RawMTA.connect(str(sock)) as mta:
            mta.hello()
            assert kinds(mta.message(sender="<spameri@tiscali.it>")) == ["Quarantine", "Continue"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not pid.exists() and not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()
