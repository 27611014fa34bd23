"""Milters for the e2e tests of the execution model and the header-diff helper."""

from __future__ import annotations

import time
from typing import Any

from milterkit import Accept, Action, Continue, Milter


class SleepyMailFrom(Milter):
    """A plain ``def`` that blocks 2 s at MAIL FROM, like a slow DNS or HTTP lookup."""

    actions = Action.ADD_HEADERS

    def mail_from(self, sender: str, params: list[str]) -> Any:
        time.sleep(2.0)
        return Continue()

    def end_of_message(self) -> Any:
        self.add_header("X-Sleepy", "checked")
        return Accept()


class HeaderRewriter(Milter):
    """States the headers it wants; rewrite_headers computes the edits (header-diff helper)."""

    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS

    def mail_from(self, sender: str, params: list[str]) -> Any:
        self.seen: list[tuple[str, str]] = []
        return None

    def header(self, name: str, value: str) -> Any:
        self.seen.append((name, value))
        return None

    def end_of_message(self) -> Any:
        self.rewrite_headers(self.seen, wanted_headers(self.seen))
        return Accept()


def wanted_headers(seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop X-Old*, rewrite Subject, put X-Top first and X-Filtered last."""
    kept = [
        (name, "[checked] " + value if name == "Subject" else value)
        for name, value in seen
        if not name.lower().startswith("x-old")
    ]
    return [("X-Top", "first"), *kept, ("X-Filtered", "yes")]
