"""Fixtures of the end-to-end suite: milter processes and MTAs wired to them.

Server count is kept low: one :class:`~tests.e2e.milters.E2EMilter` process
per socket kind for the whole session, and one MTA per (MTA, socket kind)
per module.  A missing MTA makes its tests skip with the reason (never a
silent pass).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..realmta._util import Unavailable
from ..realmta.postfix import PostfixInstance
from ..realmta.sendmail import SendmailInstance
from .harness import MilterAddress, MilterProcess, Target

E2E_MILTER = "tests.e2e.milters:E2EMilter"
TARGETS = ["postfix-inet", "postfix-unix", "sendmail-inet", "sendmail-unix"]


def _milter(transport: str) -> Iterator[MilterProcess]:
    with MilterProcess(E2E_MILTER, MilterAddress.new(transport)) as milter:
        yield milter


@pytest.fixture(scope="session")
def milter_inet() -> Iterator[MilterProcess]:
    """The E2E milter on a loopback TCP port (error decision: tempfail)."""
    yield from _milter("inet")


@pytest.fixture(scope="session")
def milter_unix() -> Iterator[MilterProcess]:
    """The E2E milter on a unix socket reachable by the postfix user."""
    yield from _milter("unix")


def postfix_instance(spec: str, **kwargs: object) -> PostfixInstance:
    """A Postfix with ``spec`` as smtpd and non-smtpd milter; skips when unavailable."""
    try:
        return PostfixInstance(milters=spec, non_smtpd_milters=spec, **kwargs)  # type: ignore[arg-type]
    except Unavailable as exc:
        pytest.skip(f"postfix unavailable: {exc}")


def sendmail_instance(spec: str, flags: str = "T") -> SendmailInstance:
    try:
        return SendmailInstance(milter=spec, milter_flags=flags)
    except Unavailable as exc:
        pytest.skip(f"sendmail unavailable: {exc}")


def mta_for(name: str, milter: MilterAddress) -> PostfixInstance | SendmailInstance:
    if name == "postfix":
        return postfix_instance(milter.postfix)
    return sendmail_instance(milter.sendmail)


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A started MTA (Postfix or Sendmail) using the session's E2E milter (inet or unix)."""
    name, transport = str(request.param).split("-")
    mta = mta_for(name, _address(request, transport))
    milter: MilterProcess = request.getfixturevalue(f"milter_{transport}")
    with mta:
        yield Target(mta, transport)
    if milter.proc is None or milter.proc.poll() is not None:
        pytest.fail(f"the E2E milter died during the module:\n{milter.logs()[-4000:]}")


def _address(request: pytest.FixtureRequest, transport: str) -> MilterAddress:
    milter: MilterProcess = request.getfixturevalue(f"milter_{transport}")
    return milter.address
