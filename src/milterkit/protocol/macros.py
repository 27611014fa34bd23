"""Macro storage with libmilter's lifetimes (PROTOCOL.md section 5.1).

One set per stage letter. A new MACRO packet for a stage replaces that stage
and clears the later ones in protocol order, so values never leak from one
message into the next. CONNECT and HELO macros are connection-level; the
rest are message-level and are dropped on ABORT and at the end of a message.
Lookups treat ``x`` and ``{x}`` as the same name, as libmilter does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from milterkit.protocol.constants import Command

#: Stage letters in the order the MTA sends them within a session.
STAGE_ORDER: tuple[int, ...] = (
    Command.CONNECT,
    Command.HELO,
    Command.MAIL,
    Command.RCPT,
    Command.DATA,
    Command.HEADER,
    Command.EOH,
    Command.BODY,
    Command.BODYEOB,
)
CONNECTION_STAGES = frozenset({int(Command.CONNECT), int(Command.HELO)})
_RANK = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}


def macro_key(name: bytes | str) -> bytes:
    """Canonical lookup key: braces stripped, so ``i`` and ``{i}`` match."""
    raw = name.encode("ascii", "surrogateescape") if isinstance(name, str) else name
    if raw[:1] == b"{" and raw[-1:] == b"}":
        return raw[1:-1]
    return raw


class MacroStore(Mapping[bytes, bytes]):
    """The macros in force now, keyed by canonical name (see :func:`macro_key`)."""

    __slots__ = ("_stages", "_stale")

    def __init__(self) -> None:
        self._stages: dict[int, dict[bytes, bytes]] = {}
        #: The message-level stages belong to a message that has ended.
        self._stale = False

    def set_stage(self, stage: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
        """Adopt a MACRO packet: replace ``stage`` and clear the stages after it."""
        if self._stale and stage not in CONNECTION_STAGES:
            self.clear_message()
        rank = _RANK.get(stage)
        if rank is not None:
            for later in STAGE_ORDER[rank + 1 :]:
                self._stages.pop(later, None)
        self._stages[stage] = {macro_key(name): value for name, value in pairs}

    def end_message(self) -> None:
        """The message is over: its macros stay readable until the next one starts."""
        self._stale = True

    def start_message(self) -> None:
        """A message command arrived: drop what is left of the previous message."""
        if self._stale:
            self.clear_message()

    def clear_message(self, keep: int | None = None) -> None:
        """Drop the message-level stages now (except ``keep``)."""
        self._stale = False
        for stage in list(self._stages):
            if stage not in CONNECTION_STAGES and stage != keep:
                del self._stages[stage]

    def clear(self) -> None:
        self._stale = False
        self._stages.clear()

    def stage(self, stage: int) -> dict[bytes, bytes]:
        """The values that came with one stage letter (a copy)."""
        return dict(self._stages.get(stage, {}))

    def connection_macros(self) -> dict[bytes, bytes]:
        return self._merged(lambda s: s in CONNECTION_STAGES)

    def message_macros(self) -> dict[bytes, bytes]:
        return self._merged(lambda s: s not in CONNECTION_STAGES)

    def _merged(self, keep: Callable[[int], bool]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for stage in self._ordered():
            if keep(stage):
                out.update(self._stages[stage])
        return out

    def _ordered(self) -> list[int]:
        return sorted(self._stages, key=lambda s: _RANK.get(s, len(_RANK)))

    def lookup(self, name: bytes | str) -> bytes | None:
        key = macro_key(name)
        for stage in reversed(self._ordered()):
            value = self._stages[stage].get(key)
            if value is not None:
                return value
        return None

    def __getitem__(self, name: bytes) -> bytes:
        value = self.lookup(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._merged(lambda s: True))

    def __len__(self) -> int:
        return len(self._merged(lambda s: True))
