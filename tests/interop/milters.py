"""A milterkit twin of tests/ref/ref_filter.c: same negotiation, same behaviour.

Running one message through the C filter and through this class (in the
harness and behind milterkit's own server) must give identical results.
"""

from __future__ import annotations

from milterkit import Accept, Action, Discard, Milter, ReplyCode, Skip, TempFail
from milterkit.milter import CallbackResult
from milterkit.protocol import Family

REPLACED_LINE = b"ref replaced body line 0123456789 abcdefghijklmnopqrstuvwxyz .....\r\n"
REPLACED_BODY = (REPLACED_LINE * (70000 // len(REPLACED_LINE) + 1))[:70000]


class RefTwin(Milter):
    actions = Action.all()
    macros = {"connect": "j {daemon_name}"}

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> CallbackResult:
        return None

    def helo(self, name: str) -> CallbackResult:
        return None

    def mail_from(self, sender: str, params: list[str]) -> CallbackResult:
        self.subject = ""
        return Discard() if sender.lower().startswith("<discard@") else None

    def rcpt_to(self, recipient: str, params: list[str]) -> CallbackResult:
        lowered = recipient.lower()
        if lowered.startswith("<reject@"):
            return ReplyCode(550, "ref: rejected", "5.7.1")
        if lowered.startswith("<multi@"):
            return ReplyCode(550, ["ref: first line", "ref: second line"], "5.7.0")
        if lowered.startswith("<temp@"):
            return TempFail()
        return None

    def data(self) -> CallbackResult:
        return None

    def header(self, name: str, value: str) -> CallbackResult:
        if name.lower() == "subject":
            self.subject = value
        return None

    def end_of_headers(self) -> CallbackResult:
        return None

    def body(self, chunk: bytes) -> CallbackResult:
        return Skip() if b"SKIPME" in chunk else None

    def unknown(self, command: str) -> CallbackResult:
        return None

    def end_of_message(self) -> CallbackResult:
        self.add_header("X-Ref", "yes")
        words = self.subject
        if "insert" in words:
            self.insert_header("X-Top", "top", 0)
        if "change" in words:
            self.change_header("Subject", "changed")
        if "delete" in words:
            self.delete_header("X-Del", 1)
        if "body" in words:
            self.replace_body(REPLACED_BODY)
        if "from" in words:
            self.change_from("<new@example.org>", "RET=HDRS")
        if "addrcpt" in words:
            self.add_recipient("<added@example.com>")
            self.add_recipient("<par@example.com>", "NOTIFY=NEVER")
        if "delrcpt" in words:
            self.delete_recipient("<bob@example.com>")
        if "quarantine" in words:
            self.quarantine("ref quarantine")
        if "progress" in words:
            self.progress()
        return Accept() if "accept" in words else None
