"""Assertion helpers for :class:`~milterkit.result.CheckResult`, one per modification.

Each helper fails with a message that lists everything the milter did, so a
failing test shows the difference at a glance. Addresses compare with or
without angle brackets; ESMTP arguments compare as the single string that
travels on the wire (``"RET=HDRS ENVID=x"``), given as a string or a list.
"""

from __future__ import annotations

from collections.abc import Iterable

from milterkit._deprecation import change_header_args, insert_header_args
from milterkit.decision import Decision
from milterkit.protocol import messages as msg
from milterkit.protocol.text import text, wire
from milterkit.result import CheckResult, SmtpReply, bare_address

__all__ = [
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
    "describe",
]


def _optional_text(value: bytes | None) -> str | None:
    return None if value is None else text(value)


def _args(args: str | Iterable[str] | None) -> str | None:
    if args is None:
        return None
    joined = args if isinstance(args, str) else " ".join(args)
    return joined or None


def describe(result: CheckResult) -> str:
    """The decision and every modification, one per line."""
    lines = [f"decision: {result.decision} (at {result.decided_at or 'end'})"]
    if result.smtp_reply is not None:
        lines.append(f"reply: {result.smtp_reply}")
    lines += [f"  {mod!r}" for mod in result.modifications] or ["  (no modifications)"]
    return "\n".join(lines)


def _fail(what: str, result: CheckResult) -> AssertionError:
    return AssertionError(f"{what}\nthe milter did:\n{describe(result)}")


def _find(result: CheckResult, wanted: msg.Message, what: str) -> None:
    if wanted not in result.modifications:
        raise _fail(f"expected {what}: {wanted!r}", result)


def _value(value: str) -> bytes:
    return wire(value).replace(b"\r\n", b"\n")


def assert_decision(result: CheckResult, decision: Decision | str, code: int | None = None) -> None:
    """``decision`` is a :class:`~milterkit.decision.Decision` or its name (continue,
    accept, reject, tempfail, discard); ``code`` the SMTP code. A name that is no
    decision raises ValueError, so a misspelt one cannot pass."""
    wanted = Decision.parse(decision)
    if result.decision != wanted:
        raise _fail(f"expected decision '{wanted}', got '{result.decision}'", result)
    reply = result.smtp_reply
    if code is not None and (reply is None or reply.code != code):
        raise _fail(f"expected SMTP code {code}, got {reply}", result)


def assert_header_added(result: CheckResult, name: str, value: str) -> None:
    _find(result, msg.AddHeader(wire(name), _value(value)), "an added header")


def assert_header_inserted(result: CheckResult, name: str, value: str, index: int) -> None:
    """The milter called ``insert_header(name, value, index)`` (same argument order)."""
    name, value, index = insert_header_args(name, value, index, what="assert_header_inserted")
    _find(result, msg.InsertHeader(index, wire(name), _value(value)), "an inserted header")


def assert_header_changed(result: CheckResult, name: str, value: str, index: int = 1) -> None:
    """The milter called ``change_header(name, value, index)`` (same argument order)."""
    name, value, index = change_header_args(name, value, index, what="assert_header_changed")
    _find(result, msg.ChangeHeader(index, wire(name), _value(value)), "a changed header")


def assert_header_deleted(result: CheckResult, name: str, index: int = 1) -> None:
    _find(result, msg.ChangeHeader(index, wire(name), b""), "a deleted header")


def _rcpt_matches(mod: msg.Message, address: str, args: str | None) -> bool:
    if isinstance(mod, msg.AddRecipient):
        return args is None and bare_address(text(mod.recipient)) == address
    if isinstance(mod, msg.AddRecipientPar):
        found = bare_address(text(mod.recipient))
        return found == address and _optional_text(mod.args) == args
    return False


def assert_recipient_added(
    result: CheckResult, address: str, esmtp_args: str | Iterable[str] | None = None
) -> None:
    wanted, args = bare_address(address), _args(esmtp_args)
    if not any(_rcpt_matches(mod, wanted, args) for mod in result.modifications):
        raise _fail(f"expected recipient {address} added with args {args!r}", result)


def assert_recipient_deleted(result: CheckResult, address: str) -> None:
    wanted = bare_address(address)
    for mod in result.modifications:
        if isinstance(mod, msg.DeleteRecipient) and bare_address(text(mod.recipient)) == wanted:
            return
    raise _fail(f"expected recipient {address} deleted", result)


def _from_matches(mod: msg.ChangeFrom, address: str, args: str | None) -> bool:
    return bare_address(text(mod.sender)) == address and _optional_text(mod.args) == args


def assert_from_changed(
    result: CheckResult, address: str, esmtp_args: str | Iterable[str] | None = None
) -> None:
    wanted, args = bare_address(address), _args(esmtp_args)
    for mod in result.modifications:
        if isinstance(mod, msg.ChangeFrom) and _from_matches(mod, wanted, args):
            return
    raise _fail(f"expected sender changed to {address} with args {args!r}", result)


def assert_body_replaced(result: CheckResult, body: bytes | None = None) -> None:
    """The body was replaced (with exactly ``body``, when given)."""
    chunks = [m.chunk for m in result.modifications if isinstance(m, msg.ReplaceBody)]
    if not chunks:
        raise _fail("expected the body to be replaced", result)
    if body is not None and b"".join(chunks) != body:
        raise _fail(f"expected the new body {body[:60]!r}...", result)


def assert_quarantined(result: CheckResult, reason: str | None = None) -> None:
    if not result.held:
        raise _fail("expected the message to be quarantined", result)
    if reason is not None and result.quarantine_reason != reason:
        raise _fail(f"expected quarantine reason {reason!r}", result)


def assert_no_modifications(result: CheckResult) -> None:
    if result.modifications:
        raise _fail("expected no modifications", result)


def _reply_matches(reply: SmtpReply | None, code: int, text: str | None) -> bool:
    """``text`` is found in the reply (any line), so callers need not repeat the code."""
    if reply is None or reply.code != code:
        return False
    return text is None or text in reply.text


def assert_reply(result: CheckResult, code: int, text: str | None = None) -> None:
    """The SMTP client got ``code`` (and a reply containing ``text``, when given)."""
    if not _reply_matches(result.smtp_reply, code, text):
        wanted = f"{code}" + (f" with {text!r}" if text is not None else "")
        raise _fail(f"expected the SMTP reply {wanted}, got {result.smtp_reply}", result)


def assert_recipient_rejected(
    result: CheckResult, address: str, code: int | None = None, text: str | None = None
) -> None:
    """The milter refused ``address`` at RCPT (with ``code`` / a reply containing ``text``)."""
    wanted = bare_address(address)
    for recipient, reply in result.rejected_recipients.items():
        if bare_address(recipient) != wanted:
            continue
        if code is None or _reply_matches(reply, code, text):
            return
        raise _fail(f"recipient {address} was rejected with {reply}, expected {code}", result)
    refused = ", ".join(result.rejected_recipients) or "none"
    raise _fail(f"expected recipient {address} rejected; rejected: {refused}", result)
