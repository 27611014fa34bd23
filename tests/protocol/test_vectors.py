"""Replay every session recorded between real MTAs and libmilter, in both directions."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterkit.protocol import (
    NEED_DATA,
    Abort,
    ConnectionClosed,
    FilterConnection,
    Message,
    MTAConnection,
    decode_command,
    decode_reply,
)
from tests.protocol.vectors import all_vector_files, load

VECTORS = all_vector_files()
IDS = [p.stem for p in VECTORS]


@pytest.mark.parametrize("path", VECTORS, ids=IDS)
def test_every_packet_decodes_and_repacks_exactly(path: Path) -> None:
    for packet in load(path):
        decode = decode_command if packet.direction == "mta" else decode_reply
        message = decode(packet.raw[4], packet.payload)
        assert message.encode() == packet.raw, packet.seq


def _drain(conn: FilterConnection) -> list[Message]:
    events: list[Message] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events
        assert isinstance(event, Message)
        events.append(event)


@pytest.mark.parametrize("path", VECTORS, ids=IDS)
@pytest.mark.parametrize("split", [None, 1, 7])
def test_filter_side_replays_mta_packets(path: Path, split: int | None) -> None:
    """Feed the MTA's bytes (whole, byte by byte, 7 at a time) and answer with the
    recorded replies: every event is the recorded command, every reply is accepted
    and encodes to the recorded bytes."""
    packets = load(path)
    conn = FilterConnection()
    expected_events = [p for p in packets if p.direction == "mta" and p.cmd not in "D"]
    seen: list[Message] = []
    i = 0
    while i < len(packets):
        packet = packets[i]
        i += 1
        if packet.direction == "mta":
            data = packet.raw
            step = split or len(data)
            for start in range(0, len(data), step):
                conn.receive_data(data[start : start + step])
            seen.extend(_drain(conn))
            continue
        reply = decode_reply(packet.raw[4], packet.payload)
        assert conn.send(reply) == packet.raw
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    # ABORTs outside a message are absorbed by design; compare the rest in order.
    wanted = [decode_command(p.raw[4], p.payload) for p in expected_events]
    assert [e for e in seen if not isinstance(e, Abort)] == [
        w for w in wanted if not isinstance(w, Abort)
    ]
    assert sum(isinstance(e, Abort) for e in seen) <= sum(isinstance(w, Abort) for w in wanted)
    assert conn.awaiting is None


@pytest.mark.parametrize("path", VECTORS, ids=IDS)
def test_mta_side_replays_filter_replies(path: Path) -> None:
    """Drive an MTAConnection with the recorded MTA packets: every command encodes to
    the recorded bytes, and every recorded filter reply is accepted as the event."""
    conn = MTAConnection()
    finals = 0
    for packet in load(path):
        if packet.direction == "mta":
            message = decode_command(packet.raw[4], packet.payload)
            assert conn.send(message) == packet.raw, packet.seq
            continue
        conn.receive_data(packet.raw)
        event = conn.next_event()
        assert isinstance(event, Message)
        assert event.encode() == packet.raw
        finals += conn.awaiting is None
        assert conn.next_event() is NEED_DATA
    assert conn.awaiting is None
    assert finals > 0
