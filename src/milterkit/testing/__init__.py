"""Test a milter without an MTA: an in-memory harness, assertion helpers, a pytest plugin.

::

    from milterkit.testing import MilterHarness, assert_header_added

    def test_adds_header():
        with MilterHarness(MyMilter) as mta:
            result = mta.check(b"From: a@example.org\\r\\nTo: b@example.net\\r\\n\\r\\nhi\\r\\n")
        assert_header_added(result, "X-Checked", "yes")
"""

from milterkit.testing.assertions import (
    assert_body_replaced,
    assert_decision,
    assert_from_changed,
    assert_header_added,
    assert_header_changed,
    assert_header_deleted,
    assert_header_inserted,
    assert_no_modifications,
    assert_quarantined,
    assert_recipient_added,
    assert_recipient_deleted,
    assert_recipient_rejected,
    assert_reply,
    describe,
)
from milterkit.testing.harness import HarnessError, MilterHarness, check

__all__ = [
    "HarnessError",
    "MilterHarness",
    "assert_body_replaced",
    "assert_decision",
    "assert_from_changed",
    "assert_header_added",
    "assert_header_changed",
    "assert_header_deleted",
    "assert_header_inserted",
    "assert_no_modifications",
    "assert_quarantined",
    "assert_recipient_added",
    "assert_recipient_deleted",
    "assert_recipient_rejected",
    "assert_reply",
    "check",
    "describe",
]
