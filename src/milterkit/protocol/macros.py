"""Macro storage with libmilter's lifetimes (PROTOCOL.md section 5.1).

One set per stage letter. A new MACRO packet for a stage replaces that stage
and clears the later ones in protocol order, so values never leak from one
message into the next. CONNECT and HELO macros are connection-level; the
rest are message-level and are dropped on ABORT and at the end of a message.
Lookups treat ``x`` and ``{x}`` as the same name, as libmilter does.

What a peer can make us hold is bounded: only the stage letters real MTAs
send are kept (libmilter's ``st_macros`` drops any other byte, so do we), and
the macros held at once, over all stages, are capped in number and in bytes
(:data:`DEFAULT_MAX_MACROS`, :data:`DEFAULT_MAX_MACRO_BYTES`). Going over a
cap raises :class:`RemoteProtocolError` naming it; the caller closes the
connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from milterkit.protocol.constants import Command
from milterkit.protocol.errors import RemoteProtocolError
from milterkit.protocol.messages import split_macro_payload

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
#: Stage letters that are stored: Sendmail's C H M R T N E, plus Postfix's
#: L (before each header), B (before each body chunk) and U (before UNKNOWN).
#: A MACRO packet for any other byte is ignored, as libmilter ignores it.
STAGES = frozenset({*STAGE_ORDER, int(Command.UNKNOWN)})
#: Macros held at once per connection. Postfix sends a few dozen by default and
#: Sendmail at most 50 per list (7 lists); this leaves room for generous
#: configurations while bounding what a hostile peer can make us keep.
DEFAULT_MAX_MACROS = 1000
#: Bytes of MACRO payload (names, values and their NULs) held at once per connection.
DEFAULT_MAX_MACRO_BYTES = 256 * 1024


def macro_key(name: bytes | str) -> bytes:
    """Canonical lookup key: braces stripped, so ``i`` and ``{i}`` match."""
    raw = name.encode("ascii", "surrogateescape") if isinstance(name, str) else name
    if raw[:1] == b"{" and raw[-1:] == b"}":
        return raw[1:-1]
    return raw


class MacroStore(Mapping[bytes, bytes]):
    """The macros in force now, keyed by canonical name (see :func:`macro_key`)."""

    __slots__ = ("_bytes", "_count", "_sizes", "_stages", "max_macro_bytes", "max_macros")

    def __init__(
        self,
        *,
        max_macros: int | None = DEFAULT_MAX_MACROS,
        max_macro_bytes: int | None = DEFAULT_MAX_MACRO_BYTES,
    ) -> None:
        self._stages: dict[int, dict[bytes, bytes]] = {}
        #: (macros, bytes) held per stage, and their totals.
        self._sizes: dict[int, tuple[int, int]] = {}
        self._count = 0
        self._bytes = 0
        #: Caps on what is held at once (None: no cap); assign to change them.
        self.max_macros = max_macros
        self.max_macro_bytes = max_macro_bytes

    def adopt(self, payload: bytes) -> None:
        """Store a raw MACRO payload (stage byte, then name/value strings).

        Checks the caps before splitting the payload, so a packet over them
        costs no per-pair objects. Payloads without a stage byte or with a
        stage byte no MTA uses are ignored.
        """
        if not payload or payload[0] not in STAGES:
            return
        limit = self.max_macro_bytes
        if limit is not None and len(payload) - 1 > limit:
            self._refuse(f"a MACRO packet of {len(payload) - 1} bytes", "max_macro_bytes", limit)
        limit = self.max_macros
        if limit is not None and len(payload) > 2 * limit and payload.count(0) > 2 * limit + 1:
            self._refuse(f"a MACRO packet of {payload.count(0) // 2} macros", "max_macros", limit)
        pairs = split_macro_payload(payload)[0] if len(payload) > 1 else ()
        self.set_stage(payload[0], pairs)

    def set_stage(self, stage: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
        """Adopt a MACRO packet: replace ``stage`` and clear the stages after it."""
        if stage not in STAGES:
            return
        rank = _RANK.get(stage)
        if rank is not None:
            for later in STAGE_ORDER[rank + 1 :]:
                if self._stages.pop(later, None) is not None:
                    self._forget(later)
        if stage in self._sizes:
            self._forget(stage)
        size = sum(len(name) + len(value) for name, value in pairs) + 2 * len(pairs)
        self._hold(len(pairs), size)
        self._stages[stage] = {macro_key(name): value for name, value in pairs}
        self._sizes[stage] = (len(pairs), size)

    def _hold(self, count: int, size: int) -> None:
        """Count a new stage in, or raise if the totals would go over a cap."""
        count += self._count
        size += self._bytes
        if self.max_macros is not None and count > self.max_macros:
            self._refuse(f"MACRO packets would hold {count} macros", "max_macros", self.max_macros)
        if self.max_macro_bytes is not None and size > self.max_macro_bytes:
            self._refuse(
                f"MACRO packets would hold {size} bytes", "max_macro_bytes", self.max_macro_bytes
            )
        self._count = count
        self._bytes = size

    @staticmethod
    def _refuse(what: str, name: str, limit: int) -> None:
        raise RemoteProtocolError(f"{what}, over the limit of {limit} per connection ({name})")

    def _forget(self, stage: int) -> None:
        count, size = self._sizes.pop(stage)
        self._count -= count
        self._bytes -= size

    @property
    def held(self) -> tuple[int, int]:
        """Macros and bytes held now, as counted against the caps."""
        return self._count, self._bytes

    def clear_message(self) -> None:
        for stage in list(self._stages):
            if stage not in CONNECTION_STAGES:
                del self._stages[stage]
                self._forget(stage)

    def clear(self) -> None:
        self._stages.clear()
        self._sizes.clear()
        self._count = self._bytes = 0

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
