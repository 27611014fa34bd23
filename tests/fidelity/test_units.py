"""Issue 10 without a real MTA: the in-memory harness (client profile + MilterSession).

The real-MTA tests next to this file prove the behaviour against Postfix and
Sendmail; these pin the same rules down where those MTAs are not installed.
"""

from __future__ import annotations

import logging

import pytest

from milterkit import Action, Milter, ReplyCode, Skip
from milterkit.client import MilterTimeout, check
from milterkit.milter import ActionOutsideMessageError, Family, Response
from milterkit.mtaprofile import POSTFIX, SENDMAIL, V2_ONLY, MTAProfile
from milterkit.protocol import (
    NEED_DATA,
    Abort,
    Connect,
    Macro,
    Mail,
    MTAConnection,
    ProtocolFlag,
    ReplaceBody,
)
from milterkit.session import MilterSession
from milterkit.testing import MilterHarness

from .rawfilter import CONTINUE, RawFilter, add_header

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nX-Lead:  two\r\n\r\n"
BIG = MESSAGE + b"x" * 200_000 + b"\r\n"


class Recorder(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_BODY
    leading_space = True
    macros = {"connect": ["{client_addr}"]}

    def __init__(self) -> None:
        self.body_calls = 0
        self.client_addr: str | None = None
        self.lead: str | None = None
        self.errors: list[str] = []
        self.aborted: tuple[str | None, str | None] | None = None

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response | None:
        self.client_addr = self.macro_values.get("{client_addr}")
        try:
            self.add_header("X-Early", "no")
        except ActionOutsideMessageError as exc:
            self.errors.append(str(exc))
        return None

    def mail_from(self, sender: str, params: list[str]) -> Response | None:
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> Response | None:
        return ReplyCode(421, "closing") if recipient.startswith("<bye") else None

    def header(self, name: str, value: str) -> Response | None:
        if name == "X-Lead":
            self.lead = value
        return None

    def body(self, chunk: bytes) -> Response | None:
        self.body_calls += 1
        return Skip()

    def end_of_message(self) -> Response | None:
        self.replace_body(b"one\r\n")
        self.add_header("X-Lead-Seen", f" {self.lead!r}")
        self.replace_body(b"two\r\n")
        return None

    def abort(self) -> None:
        self.aborted = (self.macro_values.get("i"), self.macro_values.get("{mail_addr}"))
        try:
            self.add_header("X-Late", "no")
        except ActionOutsideMessageError as exc:
            self.errors.append(str(exc))


@pytest.mark.parametrize("profile", [V2_ONLY, POSTFIX], ids=["v2", "v6"])
def test_filter_side_at_every_version(profile: object) -> None:
    with MilterHarness(Recorder, profile=profile) as harness:  # type: ignore[arg-type]
        result = harness.check(BIG, sender="a@example.org", recipients=["b@example.com"])
        milter = harness.milter
        assert isinstance(milter, Recorder)
    assert result.decision == "continue"
    assert milter.body_calls == 1  # SKIP, or CONTINUE and no more body() calls
    assert milter.client_addr == "127.0.0.1"  # macro lists at every version
    assert milter.lead == "  two"  # verbatim, HDR_LEADSPC offered or not
    delivered = result.apply(BIG).message_bytes
    assert b"X-Lead-Seen: '  two'\r\n\r\none\r\ntwo\r\n" in delivered
    assert [type(m) for m in result.modifications][:2] == [ReplaceBody, ReplaceBody]
    assert milter.errors == [
        "add_header() called in connect(): modifications belong to one message and may "
        "only be requested from mail_from() (or the first message step) to end_of_message()"
    ]


def test_leading_space_not_offered_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    import milterkit.session as session_module

    session_module._LEADSPC_WARNED.clear()
    caplog.set_level(logging.WARNING, logger="milterkit")
    for _ in range(2):
        with MilterHarness(Recorder, profile=V2_ONLY) as harness:
            harness.check(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
    lines = [r.getMessage() for r in caplog.records if "HDR_LEADSPC" in r.getMessage()]
    assert len(lines) == 1
    assert "did not offer SMFIP_HDR_LEADSPC (milter protocol 2); asking for it anyway" in lines[0]


def test_421_at_rcpt_ends_the_session() -> None:
    with MilterHarness(Recorder) as harness:
        first = harness.check(MESSAGE, sender="a@example.org", recipients=["<bye@x.y>", "b@x.y"])
        second = harness.check(MESSAGE, sender="a@example.org", recipients=["b@x.y"])
    assert (first.decision, first.decided_at, str(first.smtp_reply)) == (
        "tempfail",
        "rcpt",
        "421 closing",
    )
    assert first.rejected_recipients == {}
    assert (second.decision, second.smtp_reply) == ("tempfail", first.smtp_reply)
    assert [s.stage for s in second.stages] == ["connect"]  # no packet for this message


def test_abort_sees_the_message_macros_and_refuses_actions() -> None:
    """libmilter's xxfi_abort still reads i and {mail_addr}; actions there are refused."""
    session = MilterSession(Recorder)
    mta = MTAConnection()
    for command in (
        MTAConnection.default_offer(),
        Connect(b"h", Family.INET, 1, b"127.0.0.1"),
        Macro(ord("M"), ((b"i", b"QID1"), (b"{mail_addr}", b"a@example.org"))),
        Mail(b"<a@example.org>"),
        Abort(),
    ):
        session.data_received(mta.send(command))
        replies = session.data_to_send()
        if replies:  # b"" would tell the MTA side that the filter closed
            mta.receive_data(replies)
        while mta.next_event() is not NEED_DATA:
            pass
    milter = session.milter
    assert isinstance(milter, Recorder)
    assert milter.aborted == ("QID1", "a@example.org")
    assert milter.errors[-1].startswith("add_header() called in abort():")


def test_postfix_profile_acts_on_unoffered_bits() -> None:
    """NR_CONN/NR_HELO/HDR_LEADSPC set at v2: no reply awaited, values verbatim."""
    with RawFilter(protocol=0x1000 | 0x2000 | 0x100000, script={"C": [], "H": []}) as raw:
        result = check(raw.milterkit_spec, MESSAGE, profile=V2_ONLY, timeout=20)
        headers = [p for letter, p in raw.seen()[-1] if letter == "L"]
    assert result.decision == "continue"
    assert headers[-1] == b"X-Lead\0  two\0"
    assert result.negotiated is not None and result.negotiated.protocol == ProtocolFlag(0x103000)


def test_sendmail_profile_strips_unoffered_bits() -> None:
    """Sendmail does not act on them: the client waits for the CONNECT reply."""
    with (
        RawFilter(version=2, protocol=0x1000, script={"C": []}) as raw,
        pytest.raises(MilterTimeout, match="to reply at CONNECT"),
    ):
        check(raw.milterkit_spec, MESSAGE, profile=SENDMAIL, version=2, protocol=0x7F, timeout=2)


@pytest.mark.parametrize("profile", [SENDMAIL, POSTFIX], ids=["sendmail", "postfix"])
def test_add_header_of_an_mta_header(profile: MTAProfile) -> None:
    """Item 12: ADDHEADER Date fills Sendmail's own (cf) Date in place; Postfix appends."""
    with RawFilter(script={"E": [add_header("Date", "d"), CONTINUE]}) as raw:
        result = check(raw.milterkit_spec, MESSAGE, profile=profile, timeout=20)
    headers = result.apply(MESSAGE).message_bytes.split(b"\r\n")
    if profile is SENDMAIL:
        assert headers[:2] == [b"Date: d", b"From: a@example.org"]
    else:
        assert headers[2:4] == [b"X-Lead:  two", b"Date: d"]
