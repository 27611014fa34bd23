"""The milter process's life as the MTA sees it: down, failing, restarted, replaced.

One MTA per (MTA, socket kind) for the module, configured for a milter
address where, between tests, nothing listens.  Each test starts (or does
not start) its own milter process there:

* nothing listening: the MTA answers 4xx, and no mail is lost — the SMTP
  client keeps the message, the Postfix ``sendmail`` command's message waits
  in the queue, and both go through once the milter is back;
* a milter started with ``error_decision="reject"`` whose callback raises:
  the SMTP client gets 5xx;
* the libMilterPHP sample (examples/libmilterphp_sample.py) quarantines mail
  from its spammer and lets the rest through.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator

import pytest

from ..realmta._util import run, wait_until
from ..realmta.postfix import PostfixInstance
from .conftest import E2E_MILTER, TARGETS, postfix_instance, sendmail_instance
from .harness import (
    REPO,
    MilterAddress,
    MilterProcess,
    Target,
    make_message,
    parse,
    settle,
    token,
    unique,
)

pytestmark = pytest.mark.realmta

SPAMMER = "spameri@tiscali.it"


@pytest.fixture(scope="module", params=TARGETS)
def spare(request: pytest.FixtureRequest) -> Iterator[tuple[Target, MilterAddress]]:
    """An MTA whose milter address has no listener unless a test starts one."""
    name, transport = str(request.param).split("-")
    address = MilterAddress.new(transport)
    mta = (
        postfix_instance(address.postfix, milter_default_action="tempfail")
        if name == "postfix"
        else sendmail_instance(address.sendmail, flags="T")
    )
    with mta:
        yield Target(mta, transport), address


def smtp_code(send: Callable[[], object]) -> int:
    """The SMTP code with which ``send`` was refused, whatever the stage."""
    try:
        send()
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {code for code, _ in exc.recipients.values()}
        assert len(codes) == 1, exc.recipients
        return codes.pop()
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPServerDisconnected:
        return 0
    raise AssertionError("the MTA accepted the message")


def test_milter_down_tempfails_and_loses_nothing(spare: tuple[Target, MilterAddress]) -> None:
    target, address = spare
    assert not address.listening()
    rcpt = unique("down")
    to = f"{rcpt}@example.com"
    msg = make_message("add-header stamp=smtp", to=to)
    code = smtp_code(lambda: target.send([to], msg))
    assert 400 <= code < 500, code
    assert target.delivered(rcpt) == []

    cmd_tag = token()
    if isinstance(target.mta, PostfixInstance):
        # non-SMTP submission: accepted into the queue, held back until the milter answers
        cmd_msg = make_message("add-header stamp=cmd", to=to, tag=cmd_tag)
        assert target.mta.sendmail_command("alice@example.org", [to], cmd_msg) == 0
        settle(3)
        assert target.delivered(rcpt) == []
        assert target.queued_ids(), f"command-line message lost\n{target.diagnostics()}"
        assert "milter" in target.logs()

    with MilterProcess(E2E_MILTER, address):
        # the SMTP client retries: now it goes through, filtered
        assert target.send([to], msg) == {}
        expected = 1
        if isinstance(target.mta, PostfixInstance):
            # wake pickup instead of waiting for its 60 s scan
            run(["postkick", "-c", str(target.mta.config_dir), "public", "pickup", "W"])
            expected = 2
        got = target.wait_delivered(rcpt, expected, timeout=60)
    stamps = sorted(parse(g)["X-E2E-Stamp"] for g in got)
    assert stamps == (["cmd", "smtp"] if expected == 2 else ["smtp"])
    assert all(parse(g)["X-E2E-Added"] == "yes" for g in got)
    wait_until(lambda: True if not target.queued_ids() else None, 20, "an empty queue")


def test_callback_raises_with_error_decision_reject(spare: tuple[Target, MilterAddress]) -> None:
    target, address = spare
    with MilterProcess(E2E_MILTER, address, error_decision="reject") as milter:
        rcpt = unique("raise")
        to = f"{rcpt}@example.com"
        code = smtp_code(lambda: target.send([to], make_message("add-header raise", to=to)))
        assert 500 <= code < 600, code
        # the next message on a fresh connection is filtered normally
        assert target.send([to], make_message("add-header", to=to)) == {}
        [got] = target.wait_delivered(rcpt)
        assert parse(got)["X-E2E-Added"] == "yes"
        assert "deliberate failure in end_of_message" in milter.logs()
        assert "answering reject" in milter.logs().lower()


def test_libmilterphp_sample_quarantines_its_spammer(
    spare: tuple[Target, MilterAddress], tmp_path_factory: pytest.TempPathFactory
) -> None:
    target, address = spare
    pid_file = tmp_path_factory.mktemp("php") / "daemon.pid"
    script = [
        str(REPO / "examples" / "libmilterphp_sample.py"),
        "--socket", address.milterkit, "--user", "nobody", "--group", "nogroup",
        "--pid-file", str(pid_file), "--workers", "1",
    ]  # fmt: skip
    if not (REPO / "examples" / "libmilterphp_sample.py").is_file():
        pytest.skip("examples/libmilterphp_sample.py not present yet")
    with MilterProcess("", address, script=script) as milter:
        spam_tag, ham_tag = token(), token()
        rcpt = unique("php")
        to = f"{rcpt}@example.com"
        spam = make_message("nothing", to=to, sender=SPAMMER, tag=spam_tag)
        assert target.send([to], spam, sender=SPAMMER) == {}
        held = target.wait_held(spam_tag)
        if target.is_postfix:
            assert held.reason == "milter triggers HOLD action"
        else:
            assert held.reason == "Spammer in quarantine!"
        ham = make_message("nothing", to=to, tag=ham_tag)
        assert target.send([to], ham) == {}
        [got] = target.wait_delivered(rcpt)
        assert f"id={ham_tag}".encode() in got
        assert int(pid_file.read_text().split()[0]) == (milter.proc.pid if milter.proc else -1)
