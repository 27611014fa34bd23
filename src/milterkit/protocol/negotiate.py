"""Option negotiation for both roles (PROTOCOL.md section 4).

The filter side builds its OPTNEG reply from what it wants and what the MTA
offered (:func:`build_filter_reply`); the MTA side checks the reply it got
(:func:`accept_filter_reply`). Both end with a :class:`Negotiated`, which then
answers the questions the state machines ask on every packet: is this command
sent at all, does it get a reply, is this modification allowed, how large may
a payload be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from milterkit.protocol.constants import (
    COMMAND_SINCE_VERSION,
    MAX_DATA_SIZE,
    MDS_1M,
    MDS_256K,
    MDS_FLAGS,
    MIN_PROTOCOL_VERSION,
    NO_REPLY_FLAG,
    NO_SEND_FLAG,
    PROTOCOL_VERSION,
    UNANSWERED_COMMANDS,
    V1_ACTIONS,
    V1_PROTOCOL,
    Action,
    Command,
    MacroStage,
    ProtocolFlag,
)
from milterkit.protocol.errors import LocalProtocolError, RemoteProtocolError
from milterkit.protocol.messages import OptNeg

MacroNames: TypeAlias = str | bytes | Iterable[str]
#: Stage id -> macro names. Mapping keys are invariant, so ``{MacroStage.EOH: "i"}``
#: and ``{6: "i"}`` need separate members of the union to both type-check.
MacroRequest: TypeAlias = Mapping[MacroStage, MacroNames] | Mapping[int, MacroNames]


def data_size_for(protocol: ProtocolFlag) -> int:
    """Largest payload allowed once these protocol bits are agreed (MDS bits)."""
    if protocol & ProtocolFlag.MDS_1M:
        return MDS_1M
    if protocol & ProtocolFlag.MDS_256K:
        return MDS_256K
    return MAX_DATA_SIZE


def semantic_version(version: int) -> int:
    """Version 5 has no meaning of its own; Postfix treats it as 4."""
    return 4 if version == 5 else min(version, PROTOCOL_VERSION)


def describe_flags(value: int, kind: type[Action] | type[ProtocolFlag]) -> str:
    """``ADD_HEADERS|QUARANTINE`` style names of the bits set in ``value``, for humans.

    One describer for both flag sets (errors, ``milterkit check``, ``ping``, JSON):
    single-bit members only, so a composite alias never repeats its bits, and
    bits the enum does not know are shown in hex instead of being dropped.
    """
    names: list[str] = []
    known = 0
    for member in kind:
        bit = int(member)
        if bit and bit & (bit - 1) == 0 and member.name:
            known |= bit
            if value & bit:
                names.append(member.name)
    unknown = int(value) & ~known
    if unknown:
        names.append(f"0x{unknown:x}")
    return "|".join(names) or "none"


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of OPTNEG, as both sides use it for the rest of the connection."""

    version: int
    actions: Action
    protocol: ProtocolFlag
    macros: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)
    max_data_size: int = MAX_DATA_SIZE

    def sends(self, command: Command) -> bool:
        """Whether the MTA sends this command at all (NO* bits and version)."""
        since = COMMAND_SINCE_VERSION.get(command, 0)
        if semantic_version(self.version) < since:
            return False
        flag = NO_SEND_FLAG.get(command)
        return flag is None or not self.protocol & flag

    def expects_reply(self, command: Command) -> bool:
        """Whether the filter must answer this command (NR_* bits)."""
        if command in UNANSWERED_COMMANDS:
            return False
        flag = NO_REPLY_FLAG.get(command)
        return flag is None or not self.protocol & flag

    def missing_actions(self, needed: Action) -> Action:
        return Action(int(needed) & ~int(self.actions))

    def macro_names(self, stage: MacroStage) -> tuple[bytes, ...] | None:
        """Names the filter asked for at this stage, or None if it asked for no list."""
        return self.macros.get(int(stage))


def _macro_lists(macros: MacroRequest | None) -> tuple[tuple[int, bytes], ...]:
    if not macros:
        return ()
    out = []
    for stage, names in sorted(macros.items()):
        if isinstance(names, bytes):
            raw = names
        elif isinstance(names, str):
            raw = names.encode("ascii")
        else:
            raw = " ".join(names).encode("ascii")
        out.append((int(stage), raw))
    return tuple(out)


def _check_offer(offer: OptNeg) -> tuple[Action, ProtocolFlag]:
    """The MTA's effective offer; libmilter reads zero fields as the v1 sets."""
    if offer.version < MIN_PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"MTA offers protocol version {offer.version}; at least {MIN_PROTOCOL_VERSION} "
            "is needed"
        )
    actions = offer.actions or V1_ACTIONS
    protocol = offer.protocol or V1_PROTOCOL
    return Action(actions), ProtocolFlag(protocol)


def build_filter_reply(
    offer: OptNeg,
    *,
    version: int = PROTOCOL_VERSION,
    actions: Action = Action.NONE,
    protocol: ProtocolFlag = ProtocolFlag.NONE,
    macros: MacroRequest | None = None,
) -> OptNeg:
    """The filter's OPTNEG reply.

    Raises :class:`LocalProtocolError` naming the actions the MTA did not
    offer. Protocol bits the MTA did not offer are dropped, as libmilter does
    for NR_*/NODATA/NOUNKNOWN; a dropped NR_* bit means the filter must answer
    that command after all, which :class:`Negotiated` reflects. HDR_LEADSPC is
    the exception: dropping it would change header bytes silently, so it is
    kept. Postfix honours it at every ``milter_protocol``; an MTA that does not
    refuses the connection, which is what libmilter does in that case.
    """
    lists = _macro_lists(macros)
    key = (offer, version, int(actions), int(protocol), lists)
    reply = _REPLIES.get(key)
    if reply is None:  # errors raise before anything is remembered
        reply = _filter_reply(offer, version, actions, protocol, lists)
        if len(_REPLIES) >= _REPLIES_LIMIT:
            _REPLIES.clear()
        _REPLIES[key] = reply
    return reply


# Performance: every MTA connection starts with the same offer and the same
# class settings, and the reply depends on nothing else (OptNeg is frozen), so
# the Flag arithmetic below (about ten Enum operations) runs once per distinct
# offer and setting, not once per connection.
_REPLIES_LIMIT = 64
_REPLIES: dict[tuple[OptNeg, int, int, int, tuple[tuple[int, bytes], ...]], OptNeg] = {}


def _filter_reply(
    offer: OptNeg,
    version: int,
    actions: Action,
    protocol: ProtocolFlag,
    lists: tuple[tuple[int, bytes], ...],
) -> OptNeg:
    offered_actions, offered_protocol = _check_offer(offer)
    agreed_version = min(version, offer.version)
    missing = Action(int(actions) & ~int(offered_actions))
    if missing:
        raise LocalProtocolError(
            f"the filter needs actions the MTA did not offer: {describe_flags(missing, Action)} "
            f"(offered {describe_flags(offered_actions, Action)})"
        )
    if lists and not offered_actions & Action.SETSYMLIST:
        lists = ()  # Postfix offers SETSYMLIST and reads the lists at every version
    if lists:
        actions |= Action.SETSYMLIST
    agreed_protocol = ProtocolFlag(protocol & (offered_protocol | ProtocolFlag.HDR_LEADSPC))
    return OptNeg(agreed_version, Action(actions), agreed_protocol, lists)


def negotiated(offer: OptNeg, reply: OptNeg) -> Negotiated:
    """What both sides agreed, given the offer and a reply already checked."""
    macros = {
        stage: tuple(n for n in names.replace(b",", b" ").split(b" ") if n)
        for stage, names in reply.macros
    }
    return Negotiated(
        version=reply.version,
        actions=reply.actions,
        protocol=reply.protocol,
        macros=macros,
        max_data_size=data_size_for(reply.protocol & offer.protocol & MDS_FLAGS),
    )


def check_filter_reply_local(offer: OptNeg, reply: OptNeg) -> None:
    """Refuse an OPTNEG reply that this filter must not send (LocalProtocolError)."""
    offered_actions, offered_protocol = _check_offer(offer)
    problem = _reply_problem(offer, reply, offered_actions)
    if problem:
        raise LocalProtocolError(problem)
    extra = ProtocolFlag(int(reply.protocol) & ~int(offered_protocol | ProtocolFlag.HDR_LEADSPC))
    if extra:
        raise LocalProtocolError(
            f"OPTNEG reply asks for protocol bits the MTA did not offer: {extra!r}; "
            "build the reply with build_filter_reply() to drop them"
        )


def accept_filter_reply(
    offer: OptNeg, reply: OptNeg, *, keep_unoffered_protocol: bool = False
) -> Negotiated:
    """MTA side: validate the filter's reply (RemoteProtocolError) and adopt it.

    Protocol bits beyond the offer are dropped, unless ``keep_unoffered_protocol``:
    Postfix keeps the filter's bits as sent and acts on NO*, NR_* and
    HDR_LEADSPC whatever it offered (milter8.c uses the filter's event mask).
    The body chunk size never goes beyond what was offered (MDS bits).
    """
    offered_actions, offered_protocol = _check_offer(offer)
    problem = _reply_problem(offer, reply, offered_actions)
    if problem:
        raise RemoteProtocolError(problem)
    if keep_unoffered_protocol:
        return negotiated(offer, reply)
    trimmed = OptNeg(
        reply.version, reply.actions, ProtocolFlag(reply.protocol & offered_protocol), reply.macros
    )
    return negotiated(offer, trimmed)


def _reply_problem(offer: OptNeg, reply: OptNeg, offered_actions: Action) -> str | None:
    if not MIN_PROTOCOL_VERSION <= reply.version <= offer.version:
        return (
            f"filter protocol version {reply.version} conflicts with the offered version "
            f"{offer.version} (must be {MIN_PROTOCOL_VERSION}..{offer.version})"
        )
    missing = Action(int(reply.actions) & ~int(offered_actions))
    if missing:
        return (
            f"filter requests actions the MTA did not offer: {describe_flags(missing, Action)} "
            f"(0x{int(reply.actions):x} vs offered 0x{int(offered_actions):x})"
        )
    return None
