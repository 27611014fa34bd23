"""Milters that block the way real ones do (served by the daemon in e2e tests)."""

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
