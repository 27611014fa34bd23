"""Milters for the daemon security tests (``tests/hardening/security_milters.py:Name``)."""

from __future__ import annotations

import json
import os

from milterkit import Milter
from milterkit.milter import Accept
from milterkit.protocol.constants import Action

#: Variables :class:`ShowsEnvironment` reports.
SHOWN = ("HOME", "USER", "SECRET_TOKEN", "KEEP_ME", "NOTIFY_SOCKET", "LANG", "PATH")


class ShowsEnvironment(Milter):
    """Reports the worker's directory and environment in a header (what a callback sees)."""

    actions = Action.ADD_HEADERS

    def end_of_message(self) -> object:
        seen = {name: os.environ.get(name) for name in SHOWN}
        seen["cwd"] = os.getcwd()
        self.add_header("X-Env", json.dumps(seen, sort_keys=True))
        return Accept()


class RaisesOnHelo(Milter):
    """Raises with the HELO name in the exception text, as real code often does."""

    def helo(self, name: str) -> None:
        raise ValueError(f"unexpected HELO {name}")
