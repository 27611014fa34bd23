"""The milter under test in the real-MTA suite: one class, behaviour picked per message.

Keeping a single class lets one milter process (per socket kind) serve every
case, so the suite starts few servers.  What :class:`E2EMilter` does is read
from the message itself:

* the Subject is a list of *commands* after ``e2e:``, e.g.
  ``Subject: e2e: add-header stamp=3``; several may be combined;
* a recipient whose local part starts with ``reject-`` or ``tempfail-`` is
  refused at RCPT time with a custom (multi-line) reply;
* the message content and the envelope seen are reported back in headers
  (``X-E2E-*``) where a test needs to see what the milter saw.

Commands (all act at end of message, in the order listed):

``add-header``      add ``X-E2E-Added: yes`` (at the end of the header)
``insert-header``   insert ``X-E2E-Top: top`` at index 0 (the very top)
``change-header``   set the first ``X-Change-Me`` to ``changed by milter``
``delete-header``   delete the first ``X-Delete-Me``
``change-first``    change the first header the milter saw to ``changed-first``
                    and report its name in ``X-E2E-First-Name``
``replace-body``    replace the body with :data:`SMALL_BODY`
``replace-big``     replace the body with :func:`big_body` (> 64 KiB)
``change-from``     envelope sender := ``changed-from@example.org`` with
                    :data:`CHANGE_FROM_ARGS`
``add-rcpt``        add ``added@example.com`` (no ESMTP args)
``add-rcpt-args``   add ``addedargs@example.com`` with ``NOTIFY=NEVER``
``del-rcpt``        delete every recipient whose local part starts with ``gone``
``quarantine``      quarantine with :data:`QUARANTINE_REASON`
``tempfail``        answer TEMPFAIL
``reject``          answer REJECT
``discard``         answer DISCARD
``raise``           raise inside end_of_message (the runtime's error decision applies)
``macros``          report macros ``i``, ``{mail_addr}``, ``{rcpt_addr}`` in headers
``stamp=N``         add ``X-E2E-Stamp: N``
``id=TAG``          nothing (tests tag messages to find them in a shared queue)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from milterkit.milter import (
    Continue,
    Discard,
    Milter,
    Reject,
    ReplyCode,
    Response,
    TempFail,
)
from milterkit.protocol.constants import Action

SMALL_BODY = b"This body was replaced by the milter.\r\nSecond line.\r\n"
QUARANTINE_REASON = "e2e quarantine: suspicious subject"
CHANGED_FROM = "changed-from@example.org"
CHANGE_FROM_ARGS = "RET=HDRS ENVID=e2e-envid-42"
ADDED_RCPT = "added@example.com"
ADDED_RCPT_ARGS_ADDR = "addedargs@example.com"
ADDED_RCPT_ARGS = "NOTIFY=NEVER"
REJECT_LINES = ["e2e: recipient refused by policy", "see https://example.org/policy"]
REJECT_ENHANCED = "5.7.1"
TEMPFAIL_LINES = ["e2e: try again later", "the policy store is busy"]
TEMPFAIL_ENHANCED = "4.7.1"
BIG_BODY_SIZE = 200 * 1024


def big_body() -> bytes:
    """A deterministic body of :data:`BIG_BODY_SIZE` bytes in short CRLF lines."""
    lines = []
    size = 0
    n = 0
    while size < BIG_BODY_SIZE:
        line = f"line {n:06d} {hashlib.sha256(str(n).encode()).hexdigest()[:48]}\r\n".encode()
        lines.append(line)
        size += len(line)
        n += 1
    return b"".join(lines)


def _bare(address: str) -> str:
    return address.strip().strip("<>").strip()


class E2EMilter(Milter):
    """Subject/recipient-driven milter; see the module docstring."""

    actions = (
        Action.ADD_HEADERS
        | Action.CHANGE_HEADERS
        | Action.CHANGE_BODY
        | Action.ADD_RCPT
        | Action.ADD_RCPT_PAR
        | Action.DELETE_RCPT
        | Action.CHANGE_FROM
        | Action.QUARANTINE
    )
    # "i" twice: Sendmail knows the queue id at MAIL but does not send it at EOM
    macros = {"mail": ["i", "{mail_addr}"], "rcpt": ["{rcpt_addr}"], "eom": ["i"]}

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self.commands: list[str] = []
        self.first_header: str | None = None
        self.recipients: list[str] = []
        self.mail_addr: str | None = None
        self.rcpt_addrs: list[str] = []

    # ------------------------------------------------------------ callbacks

    def mail_from(self, sender: str, params: list[str]) -> Response:
        self._reset()  # message state starts over with every MAIL
        self.mail_addr = self.macro_values.get("{mail_addr}")
        return Continue()

    def rcpt_to(self, recipient: str, params: list[str]) -> Response:
        local = _bare(recipient).split("@")[0]
        if local.startswith("reject-"):
            return ReplyCode(550, REJECT_LINES, REJECT_ENHANCED)
        if local.startswith("tempfail-"):
            return ReplyCode(451, TEMPFAIL_LINES, TEMPFAIL_ENHANCED)
        self.recipients.append(recipient)
        rcpt_addr = self.macro_values.get("{rcpt_addr}")
        if rcpt_addr is not None:
            self.rcpt_addrs.append(rcpt_addr)
        return Continue()

    def header(self, name: str, value: str) -> Response:
        if self.first_header is None:
            self.first_header = name
        if name.lower() == "subject":
            text = value.strip()
            if text.startswith("e2e:"):
                self.commands = text[4:].split()
        return Continue()

    def body(self, chunk: bytes) -> Response:
        return Continue()

    def end_of_message(self) -> Response:
        for command in self.commands:
            decision = self._run(command)
            if decision is not None:
                return decision
        return Continue()

    def abort(self) -> None:
        self._reset()

    # ------------------------------------------------------------- commands

    def _run(self, command: str) -> Response | None:
        name, _, arg = command.partition("=")
        if name == "id":  # the test's tag, for finding the message again
            return None
        if name == "stamp":
            self.add_header("X-E2E-Stamp", arg)
            return None
        handler = _COMMANDS.get(name)
        if handler is None:
            self.add_header("X-E2E-Unknown-Command", command)
            return None
        return handler(self)

    def _add_header(self) -> None:
        self.add_header("X-E2E-Added", "yes")

    def _insert_header(self) -> None:
        self.insert_header("X-E2E-Top", "top", 0)

    def _change_header(self) -> None:
        self.change_header("X-Change-Me", "changed by milter")

    def _delete_header(self) -> None:
        self.delete_header("X-Delete-Me")

    def _change_first(self) -> None:
        assert self.first_header is not None
        self.change_header(self.first_header, "changed-first")
        self.add_header("X-E2E-First-Name", self.first_header)

    def _replace_body(self) -> None:
        self.replace_body(SMALL_BODY)

    def _replace_big(self) -> None:
        self.replace_body(big_body())

    def _change_from(self) -> None:
        self.change_from(f"<{CHANGED_FROM}>", CHANGE_FROM_ARGS)

    def _add_rcpt(self) -> None:
        self.add_recipient(f"<{ADDED_RCPT}>")

    def _add_rcpt_args(self) -> None:
        self.add_recipient(f"<{ADDED_RCPT_ARGS_ADDR}>", ADDED_RCPT_ARGS)

    def _del_rcpt(self) -> None:
        for rcpt in self.recipients:
            if _bare(rcpt).startswith("gone"):
                self.delete_recipient(rcpt)

    def _quarantine(self) -> None:
        self.quarantine(QUARANTINE_REASON)

    def _macros(self) -> None:
        self.add_header("X-E2E-Macro-i", self.macro_values.get("i", "(none)"))
        self.add_header("X-E2E-Macro-Mail-Addr", self.mail_addr or "(none)")
        self.add_header("X-E2E-Macro-Rcpt-Addr", ",".join(self.rcpt_addrs) or "(none)")

    def _raise(self) -> None:
        raise RuntimeError("e2e: deliberate failure in end_of_message")


def _tempfail(_: E2EMilter) -> Response:
    return TempFail()


def _reject(_: E2EMilter) -> Response:
    return Reject()


def _discard(_: E2EMilter) -> Response:
    return Discard()


_COMMANDS: dict[str, Callable[[E2EMilter], Response | None]] = {
    "add-header": E2EMilter._add_header,
    "insert-header": E2EMilter._insert_header,
    "change-header": E2EMilter._change_header,
    "delete-header": E2EMilter._delete_header,
    "change-first": E2EMilter._change_first,
    "replace-body": E2EMilter._replace_body,
    "replace-big": E2EMilter._replace_big,
    "change-from": E2EMilter._change_from,
    "add-rcpt": E2EMilter._add_rcpt,
    "add-rcpt-args": E2EMilter._add_rcpt_args,
    "del-rcpt": E2EMilter._del_rcpt,
    "quarantine": E2EMilter._quarantine,
    "macros": E2EMilter._macros,
    "raise": E2EMilter._raise,
    "tempfail": _tempfail,
    "reject": _reject,
    "discard": _discard,
}
