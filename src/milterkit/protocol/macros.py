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

Code that must see each MACRO packet as it came, not only the values in force
(the libMilterPHP compat layer calls ``smficMacro`` once per packet), sets the
store's :attr:`MacroStore.observer` instead of subclassing: the store is final,
so that it can be compiled with mypyc, and the observer sees the packets the
connection's fast path stores too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Final, final

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
CONNECTION_STAGES: Final = frozenset({int(Command.CONNECT), int(Command.HELO)})
_RANK: Final = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}
#: Stage letters that are stored: Sendmail's C H M R T N E, plus Postfix's
#: L (before each header), B (before each body chunk) and U (before UNKNOWN).
#: A MACRO packet for any other byte is ignored, as libmilter ignores it.
STAGES: Final = frozenset({*STAGE_ORDER, int(Command.UNKNOWN)})
#: Macros held at once per connection. Postfix sends a few dozen by default and
#: Sendmail at most 50 per list (7 lists); this leaves room for generous
#: configurations while bounding what a hostile peer can make us keep.
DEFAULT_MAX_MACROS = 1000
#: Bytes of MACRO payload (names, values and their NULs) held at once per connection.
DEFAULT_MAX_MACRO_BYTES = 256 * 1024
#: Packets up to this size are split into pairs before the caps are checked
#: (splitting them costs little); larger ones are checked first.
_SMALL_PACKET: Final = 1024
#: Each stored stage's rank in STAGE_ORDER; -1 for UNKNOWN's, which is outside the
#: order (it replaces only itself).
_RANK_OR_UNORDERED: Final = {**_RANK, int(Command.UNKNOWN): -1}
#: The stages a MACRO packet for a stage replaces: itself and the later ones.
_REPLACED: Final[dict[int, tuple[int, ...]]] = {
    **{stage: STAGE_ORDER[rank:] for rank, stage in enumerate(STAGE_ORDER)},
    int(Command.UNKNOWN): (int(Command.UNKNOWN),),
}


#: ``observer(stage, pairs)``: called after each MACRO packet is stored.
MacroObserver = Callable[[int, tuple[tuple[bytes, bytes], ...]], None]


#: What the store keeps for a stage: its values by canonical name, or the raw
#: MACRO payload (stage byte included) not yet split.
_Held = dict[bytes, bytes] | bytes


def macro_key(name: bytes | str) -> bytes:
    """Canonical lookup key: braces stripped, so ``i`` and ``{i}`` match."""
    raw = name.encode("ascii", "surrogateescape") if isinstance(name, str) else name
    # Performance: indexing gives ints, where raw[:1] == b"{" would build bytes.
    if len(raw) > 1 and raw[0] == 0x7B and raw[-1] == 0x7D:  # { and }
        return raw[1:-1]
    return raw


@final
class MacroStore(Mapping[bytes, bytes]):
    """The macros in force now, keyed by canonical name (see :func:`macro_key`).

    Final (compiled with mypyc in the compiled build): to see every MACRO packet,
    set :attr:`observer` rather than subclassing.
    """

    __slots__ = (
        "_bytes",
        "_count",
        "_counts",
        "_sizes",
        "_stages",
        "_stale",
        "_top",
        "max_macro_bytes",
        "max_macros",
        "observer",
    )

    def __init__(
        self,
        *,
        max_macros: int | None = DEFAULT_MAX_MACROS,
        max_macro_bytes: int | None = DEFAULT_MAX_MACRO_BYTES,
        observer: MacroObserver | None = None,
    ) -> None:
        #: Per stage letter: its values, or its raw payload until first read.
        self._stages: dict[int, _Held] = {}
        #: At least the rank (in STAGE_ORDER) of every held stage; -1 when none is
        #: held. A stage ranked above it replaces nothing, which is the usual case.
        self._top = -1
        #: The message-level stages belong to a message that has ended.
        self._stale = False
        #: Macros (name/value pairs) and payload bytes held per stage; their totals.
        self._counts: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._count = 0
        self._bytes = 0
        #: Caps on what is held at once (None: no cap); assign to change them.
        self.max_macros = max_macros
        self.max_macro_bytes = max_macro_bytes
        #: Called as ``observer(stage, pairs)`` after each MACRO packet is stored
        #: (the stage letter as an int, the pairs as they came, names with their
        #: braces); packets that are ignored or refused (over a cap) are not
        #: seen. One observer; assigning replaces it, None removes it. What it
        #: raises propagates to the caller of adopt()/set_stage() (for a
        #: connection, out of ``FilterConnection.next_event``), with the packet
        #: already stored.
        self.observer = observer

    def adopt(self, payload: bytes) -> None:
        """Store a raw MACRO payload (stage byte, then name/value strings).

        Checks the caps before splitting the payload, so a packet over them
        costs no per-pair objects. Payloads without a stage byte or with a
        stage byte no MTA uses are ignored.
        """
        size = len(payload)
        if size > _SMALL_PACKET:
            if payload[0] not in STAGES:
                return
            self._check_packet(payload)
        elif not size or payload[0] not in STAGES:
            return
        stage = payload[0]
        if size > 1 and payload[-1] != 0:
            split_macro_payload(payload)  # raises, naming the unterminated string
        observer = self.observer
        if observer is not None:
            pairs = split_macro_payload(payload)[0] if size > 1 else ()
            self._store(stage, payload, len(pairs), size - 1)
            observer(stage, pairs)
            return
        # Performance: keep the payload as it came and split it on the first
        # read (most milters read a few macros, and Postfix sends ~17 packets
        # a message); the caps only need the number of pairs, which is the
        # number of NULs halved. The usual case of _store (nothing stale, no
        # later stage held) is inline here: one call less per packet.
        count = payload.count(0) // 2
        rank = _RANK_OR_UNORDERED[stage]
        if self._stale or rank < self._top:
            self._store(stage, payload, count, size - 1)
            return
        # Nothing held ranks after this stage: at most the stage itself is
        # replaced. Same steps, in the same order, as _store.
        total_count = self._count + count
        total = self._bytes + size - 1
        stages = self._stages
        if stage in stages:  # the same stage again (one per header, per body chunk)
            del stages[stage]
            total_count -= self._counts.pop(stage)
            total -= self._sizes.pop(stage)
        self._top = rank
        limit = self.max_macros
        if limit is not None and total_count > limit:
            self._refuse(f"MACRO packets would hold {total_count} macros", "max_macros", limit)
        limit = self.max_macro_bytes
        if limit is not None and total > limit:
            self._refuse(f"MACRO packets would hold {total} bytes", "max_macro_bytes", limit)
        self._count = total_count
        self._bytes = total
        stages[stage] = payload
        self._counts[stage] = count
        self._sizes[stage] = size - 1

    def _check_packet(self, payload: bytes) -> None:
        limit = self.max_macro_bytes
        if limit is not None and len(payload) - 1 > limit:
            self._refuse(f"a MACRO packet of {len(payload) - 1} bytes", "max_macro_bytes", limit)
        limit = self.max_macros
        if limit is not None and len(payload) > 2 * limit and payload.count(0) > 2 * limit + 1:
            self._refuse(f"a MACRO packet of {payload.count(0) // 2} macros", "max_macros", limit)

    def set_stage(self, stage: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
        """Adopt a MACRO packet: replace ``stage`` and clear the stages after it."""
        if stage in STAGES:
            size = sum(map(len, chain.from_iterable(pairs))) + 2 * len(pairs)
            values = {macro_key(name): value for name, value in pairs}
            self._store(stage, values, len(pairs), size)
            if self.observer is not None:
                self.observer(stage, pairs)

    def _store(self, stage: int, held: _Held, count: int, size: int) -> None:
        """Replace ``stage`` (and the later ones) by ``count`` macros of ``size`` payload bytes.

        ``held`` is the parsed values, or the raw payload that :meth:`_values`
        parses when the stage is first read.
        """
        # Performance: runs for nearly every packet, so the bookkeeping is inline.
        if self._stale and stage not in CONNECTION_STAGES:
            self.clear_message()  # the first macros of a new message
        stages = self._stages
        total_count = self._count + count
        total = self._bytes + size
        rank = _RANK_OR_UNORDERED.get(stage, -1)
        if rank <= self._top:  # something held may rank at or after it: drop those
            counts = self._counts
            sizes = self._sizes
            for dropped in _REPLACED[stage]:
                if stages.pop(dropped, None) is not None:
                    total_count -= counts.pop(dropped)
                    total -= sizes.pop(dropped)
        if rank >= 0:
            self._top = rank  # what ranked after it is gone (or was never there)
        limit = self.max_macros
        if limit is not None and total_count > limit:
            self._refuse(f"MACRO packets would hold {total_count} macros", "max_macros", limit)
        limit = self.max_macro_bytes
        if limit is not None and total > limit:
            self._refuse(f"MACRO packets would hold {total} bytes", "max_macro_bytes", limit)
        self._count = total_count
        self._bytes = total
        stages[stage] = held
        self._counts[stage] = count
        self._sizes[stage] = size

    def _values(self, stage: int) -> dict[bytes, bytes]:
        """The parsed values of a held stage (split from its payload on first use)."""
        held = self._stages[stage]
        if isinstance(held, bytes):
            pairs = split_macro_payload(held)[0] if len(held) > 1 else ()
            held = {macro_key(name): value for name, value in pairs}
            self._stages[stage] = held
        return held

    @staticmethod
    def _refuse(what: str, name: str, limit: int) -> None:
        raise RemoteProtocolError(f"{what}, over the limit of {limit} per connection ({name})")

    def _forget(self, stage: int) -> None:
        del self._stages[stage]
        self._count -= self._counts.pop(stage)
        self._bytes -= self._sizes.pop(stage)

    @property
    def held(self) -> tuple[int, int]:
        """Macros and bytes held now, as counted against the caps."""
        return self._count, self._bytes

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
                self._forget(stage)
        self._top = max(map(_RANK_OR_UNORDERED.__getitem__, self._stages), default=-1)

    def clear(self) -> None:
        self._stale = False
        self._stages.clear()
        self._top = -1
        self._counts.clear()
        self._sizes.clear()
        self._count = self._bytes = 0

    def stage(self, stage: int) -> dict[bytes, bytes]:
        """The values that came with one stage letter (a copy)."""
        return dict(self._values(stage)) if stage in self._stages else {}

    def _merged(self, keep: Callable[[int], bool]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for stage in self._ordered():
            if keep(stage):
                out.update(self._values(stage))
        return out

    def _ordered(self) -> list[int]:
        return sorted(self._stages, key=lambda s: _RANK.get(s, len(_RANK)))

    def lookup(self, name: bytes | str) -> bytes | None:
        key = macro_key(name)
        for stage in reversed(self._ordered()):
            value = self._values(stage).get(key)
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
