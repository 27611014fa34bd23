"""The milter that ``milterkit demo`` runs: small, but it uses most of the API.

It quarantines mail from a known spammer (the libMilterPHP sample's rule),
refuses one recipient with a custom multi-line reply, stamps every accepted
message with a header, and tags the Subject of messages that mention money.
"""

from __future__ import annotations

import re

from milterkit.milter import Milter, ReplyCode, Response
from milterkit.protocol.constants import Action

SPAMMER = re.compile(r"spameri@tiscali\.it", re.IGNORECASE)


class DemoMilter(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS | Action.QUARANTINE

    def mail_from(self, sender: str, params: list[str]) -> Response | None:
        self.subject: str | None = None
        if SPAMMER.search(sender):
            self.quarantine("Spammer in quarantine!")
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> Response | None:
        if recipient.lower().startswith("<nobody@"):
            return ReplyCode(550, ["No such user here.", "Try postmaster instead."], "5.1.1")
        return None

    def header(self, name: str, value: str) -> Response | None:
        if name.lower() == "subject":
            self.subject = value
        return None

    def end_of_message(self) -> Response | None:
        if self.subject is not None and re.search(r"\bmoney\b", self.subject, re.I):
            self.change_header("Subject", f"[SUSPECT] {self.subject}")
        self.add_header("X-Milterkit-Demo", f"checked by {self.connection_id}")
        return None
