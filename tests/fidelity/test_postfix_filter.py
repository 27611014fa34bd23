"""milterkit's filter side against a real Postfix at milter_protocol 2, 4 and 6 (issue 10).

Each case is what libmilter does with the same Postfix (see
docs/protocol-notes.md): SKIP from ``body()`` lets the message through,
requested macro lists arrive at every version, header values keep their exact
leading white space both ways, an action outside a message is refused with
an error naming the stage, and ``abort()`` still sees the message's macros.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from ..e2e.conftest import postfix_instance
from ..e2e.harness import MilterAddress, MilterProcess, Target, make_message, unique
from ..realmta._util import wait_until
from .milters import LEAD_VALUE

pytestmark = pytest.mark.realmta

#: Three chunks at Postfix's 64 KiB body packets: SKIP must stop after the first.
BIG_BODY = b"".join(
    b"line %06d of a body that spans several BODY packets\r\n" % n for n in range(4000)
)


@pytest.fixture(scope="module")
def fidelity_milter() -> Iterator[MilterProcess]:
    with MilterProcess("tests.fidelity.milters:FidelityMilter", MilterAddress.new("inet")) as m:
        yield m


@pytest.fixture(scope="module", params=[2, 4, 6], ids=lambda v: f"v{v}")
def postfix_at(request: pytest.FixtureRequest, fidelity_milter: MilterProcess) -> Iterator[Target]:
    mta = postfix_instance(fidelity_milter.address.postfix, milter_protocol=request.param)
    with mta:
        yield Target(mta, "inet")


def _deliver(target: Target, **kwargs: object) -> bytes:
    rcpt = unique("fid")
    to = f"{rcpt}@example.com"
    refused = target.send([to], make_message("fidelity", to=to, **kwargs))  # type: ignore[arg-type]
    assert refused == {}
    try:
        [got] = target.wait_delivered(rcpt, timeout=60)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{target.diagnostics()}") from None
    return got


def _header(raw: bytes, name: bytes) -> bytes:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    found = re.search(rb"^" + re.escape(name) + rb":(.*)$", head, re.MULTILINE)
    assert found is not None, f"no {name!r} in:\n{head.decode(errors='replace')}"
    return found.group(1)


def test_skip_from_body_lets_the_message_through(postfix_at: Target) -> None:
    """Item 1: without SMFIP_SKIP (v2, v4) the MTA gets CONTINUE, not a 451."""
    got = _deliver(postfix_at, body=BIG_BODY)
    assert _header(got, b"X-Fid-Body-Calls") == b" 1"
    assert got.replace(b"\r\n", b"\n").endswith(BIG_BODY.replace(b"\r\n", b"\n"))


def test_requested_macros_arrive_at_every_version(postfix_at: Target) -> None:
    """Item 2: Postfix parses the OPTNEG macro lists whatever milter_protocol says."""
    got = _deliver(postfix_at)
    assert _header(got, b"X-Fid-Client-Addr") == b" 127.0.0.1"


def test_header_values_keep_their_exact_leading_space(postfix_at: Target) -> None:
    """Item 3: leading_space=True gets verbatim values and adds verbatim values."""
    got = _deliver(postfix_at, headers=[("X-Lead", " two leading spaces")])
    assert _header(got, b"X-Fid-Seen-Lead") == b" '  two leading spaces'"
    assert _header(got, b"X-Fid-Added") == LEAD_VALUE.encode()


def test_action_in_connect_raises_naming_the_stage(postfix_at: Target) -> None:
    """Item 4: add_header() in connect() is refused (libmilter: mi_sendok), not lost."""
    got = _deliver(postfix_at)
    error = _header(got, b"X-Fid-Connect-Error").decode()
    assert error.startswith(" ActionOutsideMessageError: add_header() called in connect()")
    assert b"X-Fid-From-Connect" not in got


def test_abort_sees_the_message_macros(postfix_at: Target, fidelity_milter: MilterProcess) -> None:
    """Item 5: RSET after RCPT: abort() still reads the queue id and {mail_addr}."""
    sender = f"{unique('abort')}@example.org"
    with postfix_at.smtp() as smtp:
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        # Postfix has a queue id after the first accepted RCPT: the second brings it
        assert smtp.rcpt(f"{unique('fid')}@example.com")[0] == 250
        assert smtp.rcpt(f"{unique('fid')}@example.com")[0] == 250
        assert smtp.rset()[0] == 250

    def logged() -> str | None:
        found = re.search(rf"fidelity abort: i=(\S+) mail_addr={re.escape(sender)}\b",
                          fidelity_milter.logs())  # fmt: skip
        return found.group(1) if found else None

    try:
        queue_id = wait_until(logged, 30, "the abort() log line")
    except TimeoutError:
        raise AssertionError(fidelity_milter.logs()[-3000:]) from None
    assert re.fullmatch(r"[0-9A-F]{6,}", queue_id), queue_id


def test_reply_text_with_trailing_newline_is_one_line(postfix_at: Target) -> None:
    """Item 9: ReplyCode(550, "text\\n") is one line, not a second empty one."""
    ok, nl = unique("fid"), unique("nl")
    to = f"{ok}@example.com"
    refused = postfix_at.send([to, f"{nl}@example.com"], make_message("fidelity", to=to))
    assert refused == {f"{nl}@example.com": (550, b"5.7.1 rejected by fidelity")}
