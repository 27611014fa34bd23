"""FrameDecoder: arbitrary splits, several frames per feed, bounded lengths, accounting."""

from __future__ import annotations

import re

import pytest

from milterkit.protocol import (
    MAX_DATA_SIZE,
    MDS_1M,
    MDS_256K,
    NEED_DATA,
    POSTFIX_MAX_PACKET,
    Continue,
    EndOfMessage,
    FilterConnection,
    FrameDecoder,
    LocalProtocolError,
    MTAConnection,
    OptNeg,
    RemoteProtocolError,
    ReplaceBody,
    encode_frame,
)
from milterkit.protocol.constants import Action, ProtocolFlag

FRAMES = [
    (ord("O"), bytes.fromhex("00000006000001ff001fffff")),
    (ord("D"), b"H"),
    (ord("N"), b""),
    (ord("B"), b"\0" * 20000),  # large enough to be gathered
    (ord("L"), b"Subject\0Hello\0"),
    (ord("E"), b""),
]
STREAM = b"".join(encode_frame(c, p) for c, p in FRAMES)


def drain(decoder: FrameDecoder) -> list[tuple[int, bytes]]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def test_encode_frame() -> None:
    assert encode_frame(ord("N")) == b"\x00\x00\x00\x01N"
    assert encode_frame(ord("B"), b"x" * 65535)[:5] == b"\x00\x01\x00\x00B"


def test_one_feed_holding_several_frames() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.feed(STREAM)
    assert decoder.buffered == len(STREAM)
    assert drain(decoder) == FRAMES
    assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    out = []
    for i in range(len(STREAM)):
        decoder.feed(STREAM[i : i + 1])
        out.extend(drain(decoder))
    assert out == FRAMES
    assert decoder.buffered == 0


@pytest.mark.parametrize("step", [2, 3, 5, 6, 7, 13, 4096, 16385, 20005])
def test_fixed_splits(step: int) -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    out = []
    for start in range(0, len(STREAM), step):
        decoder.feed(STREAM[start : start + step])
        out.extend(drain(decoder))
    assert out == FRAMES


def test_feed_without_parsing_in_between() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    for i in range(0, len(STREAM), 11):
        decoder.feed(memoryview(STREAM)[i : i + 11])
    assert decoder.buffered == len(STREAM)
    assert drain(decoder) == FRAMES


def test_mutable_input_is_copied() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    raw = encode_frame(ord("L"), b"a\0b\0")
    data = bytearray(raw[:7])
    decoder.feed(data)
    data[5:7] = b"XX"
    decoder.feed(raw[7:])
    assert decoder.next_frame() == (ord("L"), b"a\0b\0")


def test_empty_feed_is_a_no_op() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.feed(b"")
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_length_zero_is_refused() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.feed(b"\x00\x00\x00\x00c")
    with pytest.raises(RemoteProtocolError, match="packet length 0"):
        decoder.next_frame()


def test_length_zero_needs_the_command_byte_first() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.feed(b"\x00\x00\x00\x00")
    assert decoder.next_frame() is None


def test_too_long_refused_as_soon_as_the_header_is_in() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    header = (MAX_DATA_SIZE + 2).to_bytes(4, "big") + b"B"
    decoder.feed(header[:4])
    assert decoder.next_frame() is None
    decoder.feed(header[4:])  # no payload byte yet
    problem = "packet length 65537 announces a payload of 65536 bytes, over the limit of 65535"
    with pytest.raises(RemoteProtocolError, match=re.escape(problem)):
        decoder.next_frame()


def test_ascii_text_in_the_socket_names_the_length() -> None:
    decoder = FrameDecoder(POSTFIX_MAX_PACKET - 1)
    decoder.feed(b"postfix")  # 0x706F7374 = 1886352244
    with pytest.raises(RemoteProtocolError, match=r"packet length 1886352244 .* 1073741822"):
        decoder.next_frame()


@pytest.mark.parametrize("limit", [MAX_DATA_SIZE, MDS_256K, MDS_1M])
def test_limit_is_inclusive(limit: int) -> None:
    decoder = FrameDecoder(limit)
    payload = b"\x5a" * limit
    decoder.feed(encode_frame(ord("B"), payload))
    assert decoder.next_frame() == (ord("B"), payload)
    decoder.feed((limit + 2).to_bytes(4, "big") + b"B")
    with pytest.raises(RemoteProtocolError, match=f"over the limit of {limit}"):
        decoder.next_frame()


def test_limit_can_be_raised_after_negotiation() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.max_payload = MDS_256K
    payload = bytes(range(256)) * 1000
    decoder.feed(encode_frame(ord("B"), payload))
    assert decoder.next_frame() == (ord("B"), payload)


def test_negative_limit_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="max_payload must be >= 0, not -1"):
        FrameDecoder(-1)


def test_large_frame_gathered_across_many_feeds() -> None:
    payload = bytes(i % 253 for i in range(MDS_1M))
    raw = encode_frame(ord("b"), payload) + encode_frame(ord("c"))
    decoder = FrameDecoder(MDS_1M)
    fed = 0
    for start in range(0, len(raw), 1000):
        piece = raw[start : start + 1000]
        decoder.feed(piece)
        fed += len(piece)
        if fed < len(raw) - 5:
            assert decoder.next_frame() is None
            assert decoder.buffered == fed
            assert decoder.buffered <= MDS_1M + 5
    assert decoder.next_frame() == (ord("b"), payload)
    assert decoder.next_frame() == (ord("c"), b"")
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_gathered_frame_followed_by_a_partial_one() -> None:
    big = encode_frame(ord("B"), b"y" * 30000)
    tail = encode_frame(ord("L"), b"a\0b\0")
    decoder = FrameDecoder(MAX_DATA_SIZE)
    decoder.feed(big[:100])
    assert decoder.next_frame() is None
    decoder.feed(big[100:] + tail[:3])
    assert decoder.buffered == len(big) + 3
    assert decoder.next_frame() == (ord("B"), b"y" * 30000)
    assert decoder.buffered == 3
    assert decoder.next_frame() is None
    decoder.feed(tail[3:])
    assert decoder.next_frame() == (ord("L"), b"a\0b\0")


def test_buffered_accounting() -> None:
    decoder = FrameDecoder(MAX_DATA_SIZE)
    one = encode_frame(ord("H"), b"x\0")
    decoder.feed(one + one[:2])
    assert decoder.buffered == len(one) + 2
    assert decoder.next_frame() == (ord("H"), b"x\0")
    assert decoder.buffered == 2
    assert decoder.next_frame() is None
    assert decoder.buffered == 2
    decoder.feed(one[2:])
    assert decoder.buffered == len(one)
    assert decoder.next_frame() == (ord("H"), b"x\0")
    assert decoder.buffered == 0


# ------------------------------------------------------- limits of the two connections


def test_filter_connection_default_limit_and_mds() -> None:
    conn = FilterConnection()
    conn.receive_data((MAX_DATA_SIZE + 2).to_bytes(4, "big") + b"O")
    with pytest.raises(RemoteProtocolError, match="over the limit of 65535"):
        conn.next_event()

    conn = FilterConnection()
    offer = OptNeg(6, Action(0x1FF), ProtocolFlag(0x1FFFFF) | ProtocolFlag.MDS_1M)
    conn.receive_data(offer.encode())
    assert conn.next_event() == offer
    conn.negotiate(protocol=ProtocolFlag.MDS_1M)
    assert conn.negotiated is not None and conn.negotiated.max_data_size == MDS_1M
    conn.receive_data((MDS_1M + 2).to_bytes(4, "big") + b"B")
    with pytest.raises(RemoteProtocolError, match="over the limit of 1048575"):
        conn.next_event()


def test_filter_connection_mds_256k() -> None:
    conn = FilterConnection()
    conn.receive_data(OptNeg(6, Action(0x1FF), ProtocolFlag(0x101FFFFF)).encode())
    conn.next_event()
    conn.negotiate(protocol=ProtocolFlag.MDS_256K)
    conn.receive_data((MDS_256K + 1).to_bytes(4, "big") + b"B")
    assert conn.next_event() is NEED_DATA  # a full-size frame is acceptable
    assert conn.buffered == 5

    conn = FilterConnection()
    conn.receive_data(OptNeg(6, Action(0x1FF), ProtocolFlag(0x101FFFFF)).encode())
    conn.next_event()
    conn.negotiate(protocol=ProtocolFlag.MDS_256K)
    conn.receive_data((MDS_256K + 2).to_bytes(4, "big") + b"B")
    with pytest.raises(RemoteProtocolError, match="over the limit of 262143"):
        conn.next_event()


def test_mta_connection_hard_cap() -> None:
    """Postfix refuses a length field over INT_MAX/2 = 1073741823, and so do we."""
    conn = MTAConnection()
    conn.send(MTAConnection.default_offer())
    conn.receive_data(POSTFIX_MAX_PACKET.to_bytes(4, "big") + b"b")
    assert conn.next_event() is NEED_DATA  # accepted: waits for the payload
    assert conn.buffered == 5

    conn = MTAConnection(max_reply_size=2**32)  # a larger wish is still capped
    conn.send(MTAConnection.default_offer())
    conn.receive_data((POSTFIX_MAX_PACKET + 1).to_bytes(4, "big") + b"b")
    with pytest.raises(
        RemoteProtocolError,
        match=r"packet length 1073741824 .* over the limit of 1073741822",
    ):
        conn.next_event()


def test_mta_connection_smaller_limit() -> None:
    conn = MTAConnection(max_reply_size=100)
    conn.send(MTAConnection.default_offer())
    conn.receive_data(encode_frame(ord("b"), b"x" * 101)[:5])
    with pytest.raises(RemoteProtocolError, match="over the limit of 100"):
        conn.next_event()


def test_mta_connection_accepts_large_replies() -> None:
    """Postfix accepts REPLBODY packets of 70 000 bytes (PROTOCOL.md 1.2)."""
    conn = MTAConnection()
    conn.send(MTAConnection.default_offer())
    conn.receive_data(OptNeg(6, Action(0x1FF), ProtocolFlag(0)).encode())
    conn.next_event()
    conn.send(EndOfMessage())
    raw = encode_frame(ord("b"), b"r" * 70000) + Continue().encode()
    for start in range(0, len(raw), 4096):
        conn.receive_data(raw[start : start + 4096])
    event = conn.next_event()
    assert isinstance(event, ReplaceBody)
    assert event.encode() == raw[:70005]
    assert conn.next_event() == Continue()


def test_trickled_large_frame_is_linear_and_compact() -> None:
    """A peer sending one byte per read must not cost one object per byte (or O(n^2))."""
    import tracemalloc

    payload = bytes(range(256)) * 256
    raw = encode_frame(ord("B"), payload[:MAX_DATA_SIZE])
    decoder = FrameDecoder(MAX_DATA_SIZE)
    tracemalloc.start()
    try:
        for i in range(len(raw) - 1):
            decoder.feed(raw[i : i + 1])
            assert decoder.next_frame() is None
            assert decoder.buffered == i + 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_DATA_SIZE  # was ~21 MB with one memoryview per read
    decoder.feed(raw[-1:])
    assert decoder.next_frame() == (ord("B"), payload[:MAX_DATA_SIZE])
