"""Fuzz targets shared by Hypothesis (tests/hardening) and atheris (atheris_fuzz.py).

Each target feeds hostile bytes to one layer and allows exactly one kind of
failure: :class:`ProtocolError` (the peer broke the protocol; the server
closes the connection). Anything else is a bug. Bounds are checked too: the
decoder never holds more than one packet, a session's collected body never
exceeds its limit.
"""

from __future__ import annotations

import asyncio
import struct

from milterkit import Milter
from milterkit.milter import Accept, Continue
from milterkit.protocol import FilterConnection, MTAConnection, ProtocolError
from milterkit.protocol.constants import Action, ProtocolFlag
from milterkit.protocol.events import NEED_DATA, ConnectionClosed
from milterkit.protocol.framing import FrameDecoder
from milterkit.protocol.messages import OptNeg
from milterkit.session import MilterSession

OPTNEG_V6 = struct.pack(">IBIII", 13, ord("O"), 6, 0x1FF, 0x1FFFFF)
FILTER_REPLY_V6 = struct.pack(">IBIII", 13, ord("O"), 6, 0x1FF, 0)
MAX_PAYLOAD = 65535


class FuzzMilter(Milter):
    """Overrides every callback so every command is asked for; tight limits."""

    actions = Action.ADD_HEADERS | Action.CHANGE_BODY | Action.QUARANTINE
    collect_body = True
    body_memory_limit = 4096
    max_body_bytes = 100_000
    max_headers = 50
    max_header_bytes = 20_000

    def connect(self, *args: object) -> None:
        return None

    def helo(self, name: str) -> None:
        return None

    def mail_from(self, sender: str, params: list[str]) -> None:
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> None:
        return None

    def data(self) -> None:
        return None

    def header(self, name: str, value: str) -> None:
        return None

    def end_of_headers(self) -> None:
        return None

    def body(self, chunk: bytes) -> object:
        return Continue()

    def unknown(self, command: str) -> None:
        return None

    def end_of_message(self) -> object:
        assert self.body_size <= self.max_body_bytes  # type: ignore[operator]
        self.add_header("X-Fuzz", str(self.body_size))
        if self.body_size > 10:
            self.replace_body(self.body_file)
        return Accept()


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into reads of the given sizes (cycled), as a socket delivers it."""
    if not sizes:
        return [data] if data else []
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)])
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def fuzz_decoder(data: bytes, sizes: list[int]) -> None:
    decoder = FrameDecoder(MAX_PAYLOAD)
    try:
        for piece in split(data, sizes):
            decoder.feed(piece)
            while (item := decoder.next_frame()) is not None:
                assert len(item[1]) <= MAX_PAYLOAD
            assert decoder.buffered <= MAX_PAYLOAD + 5
    except ProtocolError:
        pass


def fuzz_filter(data: bytes, sizes: list[int], prefix: bytes = b"") -> None:
    conn = FilterConnection()
    try:
        for piece in split(prefix + data, sizes):
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                if isinstance(event, OptNeg) and conn.awaiting is not None:
                    conn.negotiate(
                        version=6, actions=Action.ADD_HEADERS, protocol=ProtocolFlag.NONE
                    )
        conn.receive_data(b"")
        conn.next_event()
    except ProtocolError:
        pass


def fuzz_mta(data: bytes, sizes: list[int]) -> None:
    conn = MTAConnection()
    try:
        conn.send(MTAConnection.default_offer())
        for piece in split(data, sizes):
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
    except ProtocolError:
        pass


def fuzz_session(data: bytes, sizes: list[int], prefix: bytes = OPTNEG_V6) -> None:
    """The whole per-connection driver: framing, state machine, callbacks, limits."""
    session = MilterSession(FuzzMilter)
    pending = None
    try:
        for piece in split(prefix + data, sizes):
            pending = session.data_received(piece)
            assert pending is None  # all callbacks are synchronous
            session.data_to_send()
            assert session.buffered <= MAX_PAYLOAD + 5
            assert session.context.body_size <= 100_000
            if session.closed:
                break
        pending = session.connection_lost()
    except ProtocolError:
        pending = session.connection_lost()
    if pending is not None:
        asyncio.run(pending)  # type: ignore[arg-type]
    assert session.closed


TARGETS = {
    "decoder": fuzz_decoder,
    "filter": fuzz_filter,
    "mta": fuzz_mta,
    "session": fuzz_session,
}
