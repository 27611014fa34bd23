"""Against the C reference: a filter built on Debian's libmilter.

* The raw ``MTAConnection`` over a real socket checks negotiation, every reply and
  every modification byte for byte (the protocol-core issue).
* ``milterkit.client.check`` against the same C filter, against milterkit's own
  server running a twin of it, and the in-memory harness running that twin must
  give identical results (the client/harness issue).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from milterkit.client import check
from milterkit.protocol import (
    NEED_DATA,
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    Body,
    ChangeFrom,
    ChangeHeader,
    Connect,
    Continue,
    Data,
    DeleteRecipient,
    Discard,
    EndOfHeaders,
    EndOfMessage,
    Family,
    Header,
    Helo,
    InsertHeader,
    Mail,
    Message,
    MTAConnection,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    Rcpt,
    ReplaceBody,
    ReplyCodePacket,
    Skip,
    TempFail,
)
from milterkit.result import CheckResult
from milterkit.runtime.address import InetAddress, parse_address
from milterkit.testing import MilterHarness
from tests.interop.milters import REPLACED_BODY, RefTwin


class RawMTA:
    """An MTAConnection on a socket: send a command, collect replies until final."""

    def __init__(self, address: str) -> None:
        target = parse_address(address)
        assert isinstance(target, InetAddress)
        self.sock = socket.create_connection((target.host, target.port), timeout=10)
        self.conn = MTAConnection()

    def ask(self, message: Message) -> list[Message]:
        data = self.conn.send(message)
        if data:
            self.sock.sendall(data)
        events: list[Message] = []
        while self.conn.awaiting is not None:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            assert isinstance(event, Message)
            events.append(event)
        return events

    def close(self) -> None:
        self.sock.sendall(self.conn.send(Quit()))
        self.sock.close()


@pytest.fixture
def mta(ref_filter_address: str) -> Iterator[RawMTA]:
    raw = RawMTA(ref_filter_address)
    offer = raw.ask(MTAConnection.default_offer())
    assert len(offer) == 1
    yield raw
    raw.close()


def _open(mta: RawMTA) -> None:
    assert mta.ask(Connect(b"client.example.org", Family.INET, 50000, b"192.0.2.1")) == [Continue()]
    assert mta.ask(Helo(b"client.example.org")) == [Continue()]


def _message(mta: RawMTA, subject: bytes, body: bytes = b"hello\r\n") -> list[Message]:
    assert mta.ask(Mail(b"<alice@example.org>", (b"SIZE=100",))) == [Continue()]
    assert mta.ask(Rcpt(b"<bob@example.com>")) == [Continue()]
    assert mta.ask(Data()) == [Continue()]
    assert mta.ask(Header(b"Subject", subject)) == [Continue()]
    assert mta.ask(Header(b"X-Del", b"gone")) == [Continue()]
    assert mta.ask(EndOfHeaders()) == [Continue()]
    assert mta.ask(Body(body)) in ([Continue()], [Skip()])
    return mta.ask(EndOfMessage())


def test_negotiation_with_libmilter(mta: RawMTA) -> None:
    negotiated = mta.conn.negotiated
    assert negotiated is not None
    assert negotiated.version == 6
    assert negotiated.actions == Action.all()
    assert negotiated.protocol == ProtocolFlag.SKIP
    assert dict(negotiated.macros) == {0: (b"j", b"{daemon_name}")}


def test_every_modification_from_libmilter(mta: RawMTA) -> None:
    _open(mta)
    subject = b"insert change delete body from addrcpt delrcpt quarantine progress"
    events = _message(mta, subject)
    assert events == [
        AddHeader(b"X-Ref", b"yes"),
        InsertHeader(0, b"X-Top", b"top"),
        ChangeHeader(1, b"Subject", b"changed"),
        ChangeHeader(1, b"X-Del", b""),
        ReplaceBody(REPLACED_BODY[:65535]),
        ReplaceBody(REPLACED_BODY[65535:]),
        ChangeFrom(b"<new@example.org>", b"RET=HDRS"),
        AddRecipient(b"<added@example.com>"),
        AddRecipientPar(b"<par@example.com>", b"NOTIFY=NEVER"),
        DeleteRecipient(b"<bob@example.com>"),
        Quarantine(b"ref quarantine"),
        Progress(),
        Continue(),
    ]
    assert _message(mta, b"accept")[-1] == Accept()


def test_every_reply_from_libmilter(mta: RawMTA) -> None:
    _open(mta)
    assert mta.ask(Mail(b"<alice@example.org>")) == [Continue()]
    assert mta.ask(Rcpt(b"<reject@example.com>")) == [ReplyCodePacket(b"550 5.7.1 ref: rejected")]
    assert mta.ask(Rcpt(b"<multi@example.com>")) == [
        ReplyCodePacket(b"550-5.7.0 ref: first line\r\n550 5.7.0 ref: second line")
    ]
    assert mta.ask(Rcpt(b"<temp@example.com>")) == [TempFail()]
    assert mta.ask(Rcpt(b"<bob@example.com>")) == [Continue()]
    assert mta.ask(Data()) == [Continue()]
    assert mta.ask(EndOfHeaders()) == [Continue()]
    assert mta.ask(Body(b"please SKIPME\r\n")) == [Skip()]
    assert mta.ask(EndOfMessage())[-1] == Continue()
    assert mta.ask(Mail(b"<discard@example.org>")) == [Discard()]


MESSAGES = {
    "plain": (b"plain", ["<bob@example.com>"]),
    "all-modifications": (
        b"insert change delete body from addrcpt delrcpt quarantine",
        ["<bob@example.com>"],
    ),
    "accept": (b"accept", ["<bob@example.com>"]),
    "rejected-rcpts": (b"mixed", ["<reject@example.com>", "<multi@example.com>", "<bob@x.org>"]),
    "tempfail-rcpt": (b"t", ["<temp@example.com>"]),
}


def _eml(subject: bytes) -> bytes:
    return (
        b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: " + subject + b"\r\n"
        b"X-Del: gone\r\n\r\nBody line one\r\nBody line two\r\n"
    )


def _comparable(result: CheckResult) -> tuple[object, ...]:
    return (
        result.decision,
        result.decided_at,
        result.reply,
        result.modifications,
        result.quarantine_reason,
        result.skipped_body,
        result.rejected_recipients,
        [(s.stage, s.decision, s.reply, s.detail) for s in result.stages],
    )


@pytest.mark.parametrize("case", list(MESSAGES))
def test_client_and_harness_agree_with_libmilter(
    case: str, ref_filter_address: str, twin_server_address: str
) -> None:
    subject, recipients = MESSAGES[case]
    eml = _eml(subject)
    options = {"sender": "<alice@example.org>", "recipients": recipients, "macros": {"i": "Q1"}}
    reference = check(ref_filter_address, eml, **options)  # type: ignore[arg-type]
    served = check(twin_server_address, eml, **options)  # type: ignore[arg-type]
    with MilterHarness(RefTwin, macros={"i": "Q1"}) as harness:
        in_memory = harness.check(eml, sender="<alice@example.org>", recipients=recipients)
    assert _comparable(served) == _comparable(reference)
    assert _comparable(in_memory) == _comparable(reference)
    assert served.apply(eml) == reference.apply(eml) == in_memory.apply(eml)
