"""Which stages a MACRO packet replaces, and the counts held against the caps.

A packet for a stage replaces that stage and every later one (libmilter keeps
one list per stage and a new list for an earlier stage means a new message or
command); UNKNOWN's list stands outside that order and replaces only itself.
The store skips the replacement work when the new stage ranks after all it
holds; these tests cover the orders where it must not skip it.
"""

from __future__ import annotations

from milterkit.protocol.macros import MacroStore


def payload(stage: str, *pairs: tuple[str, str]) -> bytes:
    return stage.encode() + b"".join(f"{n}\0{v}\0".encode() for n, v in pairs)


def held_stages(store: MacroStore) -> list[str]:
    return [chr(stage) for stage in b"CHMRTLNBEU" if store.stage(stage)]


def test_stages_in_order_accumulate() -> None:
    store = MacroStore()
    for stage in "CHMRT":
        store.adopt(payload(stage, (f"{{{stage}}}", "1")))
    assert held_stages(store) == list("CHMRT")
    assert store.held == (5, 5 * len("{C}\x001\x00"))


def test_an_earlier_stage_drops_the_later_ones_and_their_counts() -> None:
    store = MacroStore()
    for stage in "CHMRTLNE":
        store.adopt(payload(stage, ("a", "1"), ("b", "2")))
    store.adopt(payload("R", ("r", "3")))
    assert held_stages(store) == list("CHMR")
    assert store[b"r"] == b"3"
    assert store.held == (3 * 2 + 1, 3 * 8 + 4)


def test_a_repeated_stage_replaces_itself() -> None:
    store = MacroStore()
    store.adopt(payload("T", ("i", "Q1")))
    for number in range(3):
        store.adopt(payload("L", ("h", str(number))))
    assert store[b"h"] == b"2"
    assert store.held == (2, 2 * len("i\0Q1\0") - 1)


def test_unknown_replaces_only_itself() -> None:
    store = MacroStore()
    store.adopt(payload("M", ("m", "1")))
    store.adopt(payload("U", ("u", "1")))
    store.adopt(payload("R", ("r", "1")))
    store.adopt(payload("U", ("u", "2")))
    assert held_stages(store) == list("MRU")
    assert store[b"u"] == b"2"
    store.adopt(payload("M", ("m", "2")))
    assert held_stages(store) == list("MU")


def test_after_a_message_an_earlier_stage_still_drops_what_is_left() -> None:
    store = MacroStore()
    store.adopt(payload("C", ("c", "1")))
    for stage in "MRTE":
        store.adopt(payload(stage, ("x", stage)))
    store.end_message()
    store.adopt(payload("R", ("x", "R2")))  # NOMAIL: the next message starts at RCPT
    assert held_stages(store) == list("CR")
    assert store[b"x"] == b"R2"
    store.clear()
    store.adopt(payload("E", ("e", "1")))
    store.adopt(payload("C", ("c", "2")))
    assert held_stages(store) == list("C")


def test_clearing_the_message_keeps_the_connection_stages_replaceable() -> None:
    store = MacroStore()
    for stage in "CHMRE":
        store.adopt(payload(stage, ("x", stage)))
    store.clear_message()
    assert held_stages(store) == list("CH")
    store.adopt(payload("H", ("x", "H2")))
    assert held_stages(store) == list("CH")
    assert store[b"x"] == b"H2"
    assert store.held == (2, 2 * len("x\0H\0") + 1)
