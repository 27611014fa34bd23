"""plan_header_edits / Milter.rewrite_headers: the MTA ends up with exactly the wanted headers.

Checked with CheckResult.apply() in the Postfix model (its Received header on
top, which INSHEADER counts and CHGHEADER does not), by Hypothesis over
arbitrary current/wanted lists with repeated names.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from milterkit import Accept, Action, Milter
from milterkit.headers import HeaderEdit, plan_header_edits
from milterkit.result import ParsedMessage
from milterkit.testing import MilterHarness

RECEIVED = "Received: from client by mx.test.example"


class Rewriter(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS
    wanted: ClassVar[list[tuple[str, str]]] = []

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def mail_from(self, sender: str, params: list[str]) -> Any:
        self.seen = []

    def header(self, name: str, value: str) -> Any:
        self.seen.append((name, value))

    def end_of_message(self) -> Any:
        self.rewrite_headers(self.seen, self.wanted)
        return Accept()


def _delivered_headers(current: list[tuple[str, str]], wanted: list[tuple[str, str]]) -> list:
    Rewriter.wanted = wanted
    head = "".join(f"{n}: {v}\r\n" for n, v in current)
    message = (head + "\r\nbody\r\n").encode()
    with MilterHarness(Rewriter) as mta:
        result = mta.check(message, sender="<a@b.example>", recipients=["<c@d.example>"])
    delivered = result.apply(message, received_header=RECEIVED).message_bytes
    parsed = ParsedMessage.parse(delivered)
    return [(h.name.decode(), h.raw.decode().split(":", 1)[1].strip()) for h in parsed.headers]


def test_change_delete_insert_and_append() -> None:
    current = [("From", "a"), ("X-Old", "1"), ("Subject", "hi"), ("X-Old", "2"), ("To", "b")]
    wanted = [("X-Top", "t"), ("From", "a"), ("Subject", "changed"), ("To", "b"), ("X-End", "e")]
    assert _delivered_headers(current, wanted) == [("Received", RECEIVED[10:]), *wanted]


def test_plan_deletes_highest_occurrence_first_and_changes_in_place() -> None:
    current = [("X-A", "1"), ("X-A", "2"), ("X-A", "3"), ("S", "s")]
    wanted = [("X-A", "2"), ("S", "new")]
    assert plan_header_edits(current, wanted) == [
        HeaderEdit("change", "S", "new", 1),
        HeaderEdit("delete", "X-A", "", 3),
        HeaderEdit("delete", "X-A", "", 1),
    ]


names = st.sampled_from(["From", "To", "Subject", "X-A", "x-a", "X-B"])
headers = st.lists(st.tuples(names, st.sampled_from(["1", "2", "3"])), max_size=7)


@settings(max_examples=150, deadline=None)
@given(current=headers, wanted=headers)
def test_any_wanted_list_is_reached(current: list, wanted: list) -> None:
    delivered = _delivered_headers(current, wanted)
    assert delivered[0][0] == "Received"
    assert delivered[1:] == wanted
