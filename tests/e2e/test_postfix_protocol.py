"""Postfix speaking milter protocol 2, 4 and 6 to the same milterkit daemon.

``milter_protocol`` decides what Postfix offers in OPTNEG: version 2 has no
SMFIP_NO* steps for DATA/unknown, no per-stage macro lists, no CHGFROM or
ADDRCPT_PAR; version 4 adds the skip bits and v6 everything.  milterkit must
negotiate down and keep working: header changes, body replacement and a
custom RCPT reply are checked for every version.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import milters as m
from .conftest import postfix_instance
from .harness import MilterProcess, Target, body_of, make_message, parse, unique

pytestmark = pytest.mark.realmta


@pytest.fixture(scope="module", params=[2, 4, 6], ids=lambda v: f"v{v}")
def versioned(request: pytest.FixtureRequest, milter_inet: MilterProcess) -> Iterator[Target]:
    mta = postfix_instance(milter_inet.address.postfix, milter_protocol=request.param)
    with mta:
        yield Target(mta, "inet")


def test_add_header(versioned: Target) -> None:
    rcpt = unique("v")
    to = f"{rcpt}@example.com"
    assert versioned.send([to], make_message("add-header", to=to)) == {}
    [got] = versioned.wait_delivered(rcpt)
    assert parse(got).get_all("X-E2E-Added") == ["yes"]


def test_change_header_and_body(versioned: Target) -> None:
    rcpt = unique("v")
    to = f"{rcpt}@example.com"
    msg = make_message("change-header replace-body", to=to, headers=[("X-Change-Me", "old")])
    assert versioned.send([to], msg) == {}
    [got] = versioned.wait_delivered(rcpt)
    assert parse(got)["X-Change-Me"] == "changed by milter"
    assert body_of(got) == m.SMALL_BODY


def test_reject_recipient(versioned: Target) -> None:
    good, bad = unique("good"), unique("reject")
    to = f"{good}@example.com"
    refused = versioned.send([to, f"{bad}@example.com"], make_message("add-header", to=to))
    code, text = refused[f"{bad}@example.com"]
    assert code == 550
    assert text.decode().split("\n") == [f"{m.REJECT_ENHANCED} {x}" for x in m.REJECT_LINES]
    [got] = versioned.wait_delivered(good)
    assert parse(got)["X-E2E-Added"] == "yes"
