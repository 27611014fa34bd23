"""The one text codec and the one flag describer that every layer shares."""

from __future__ import annotations

import pytest

from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.protocol.negotiate import describe_flags
from milterkit.protocol.text import text, wire


@pytest.mark.parametrize("raw", [b"plain", b"caf\xc3\xa9", b"latin1 \xe9 and \xff\xfe", b""])
def test_text_and_wire_round_trip_every_byte(raw: bytes) -> None:
    assert wire(text(raw)) == raw


def test_wire_passes_bytes_through() -> None:
    assert wire(b"\xff") == b"\xff"


def test_describe_flags_names_single_bits_of_either_kind() -> None:
    assert describe_flags(Action.ADD_HEADERS | Action.QUARANTINE, Action) == (
        "ADD_HEADERS|QUARANTINE"
    )
    assert describe_flags(ProtocolFlag.NOCONNECT | ProtocolFlag.SKIP, ProtocolFlag) == (
        "NOCONNECT|SKIP"
    )


def test_describe_flags_shows_unknown_bits_in_hex_and_none_for_zero() -> None:
    assert describe_flags(int(Action.ADD_HEADERS) | 0x4000, Action) == "ADD_HEADERS|0x4000"
    assert describe_flags(0, ProtocolFlag) == "none"
