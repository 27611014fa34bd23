"""One-line text for people: what a modification does, which flags are set.

Used by ``milterkit check`` and ``milterkit ping``. The strings a filter chose
are shown as they decode; the commands pass them through
:func:`milterkit.cli.display.printable` before they reach a terminal.
"""

from __future__ import annotations

from milterkit.protocol.constants import Reply
from milterkit.protocol.messages import (
    AddHeader,
    AddRecipient,
    AddRecipientPar,
    ChangeFrom,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    Message,
    Quarantine,
    ReplaceBody,
)
from milterkit.protocol.negotiate import describe_flags
from milterkit.protocol.text import text

__all__ = ["describe_flags", "describe_modification"]


def describe_modification(mod: Message) -> str:
    """A one-line human summary of a modification."""
    if isinstance(mod, AddHeader):
        return f"add header {text(mod.name)}: {text(mod.value)!r}"
    if isinstance(mod, InsertHeader):
        return f"insert header at {mod.index} {text(mod.name)}: {text(mod.value)!r}"
    if isinstance(mod, ChangeHeader):
        what = "delete" if not mod.value else f"change to {text(mod.value)!r}"
        return f"{what} header {text(mod.name)}[{mod.index}]"
    if isinstance(mod, ChangeFrom):
        args = f" {text(mod.args)}" if mod.args else ""
        return f"change sender to {text(mod.sender)}{args}"
    if isinstance(mod, AddRecipient | AddRecipientPar):
        args = f" {text(mod.args)}" if isinstance(mod, AddRecipientPar) and mod.args else ""
        return f"add recipient {text(mod.recipient)}{args}"
    if isinstance(mod, DeleteRecipient):
        return f"delete recipient {text(mod.recipient)}"
    if isinstance(mod, ReplaceBody):
        return f"replace body chunk ({len(mod.chunk)} bytes)"
    if isinstance(mod, Quarantine):
        return f"quarantine: {text(mod.reason)}"
    return Reply(mod.code).name
