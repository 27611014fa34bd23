"""MilterSession hands back the bytes to send; the milter sees a MilterContext.

The session does no I/O: each input's replies are queued and taken with
``data_to_send()``, all of one read at once; PROGRESS while a callback works is
signalled through ``on_output`` so it need not wait for the callback. The
milter reaches its connection through a context that does not point back at
the session, so a finished session is freed without the cyclic GC.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import subprocess
import sys
import weakref
from typing import Any

import pytest

from milterkit import Action, Milter
from milterkit.execution import CallbackRunner, ExecutionSettings
from milterkit.protocol.errors import LocalProtocolError
from milterkit.session import MilterSession


def frame(command: str, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", len(payload) + 1, ord(command)) + payload


OPTNEG = struct.pack(">IBIII", 13, ord("O"), 6, 0x1FF, 0x1FFFFF)
OPENING = OPTNEG + frame("C", b"h\x004\x00\x19127.0.0.1\x00") + frame("H", b"h\x00")
MESSAGE = (
    frame("M", b"<a@example.org>\x00")
    + frame("R", b"<b@example.net>\x00")
    + frame("L", b"Subject\x00hi\x00")
    + frame("N")
    + frame("B", b"body\r\n")
    + frame("E")
)


def commands(data: bytes) -> list[str]:
    """The command letters of the frames in ``data``, in order."""
    letters = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        letters.append(chr(data[4]))
        data = data[4 + length :]
    return letters


class Tagger(Milter):
    actions = Action.ADD_HEADERS
    collect_body = True

    def helo(self, name: str) -> None:
        return None

    def header(self, name: str, value: str) -> None:
        return None

    def end_of_message(self) -> None:
        self.add_header("X-Size", str(self.body_size))


class ProgressAtEom(Tagger):
    def end_of_message(self) -> None:
        self.progress()
        super().end_of_message()


def test_one_read_gives_all_its_replies_in_one_piece() -> None:
    session = MilterSession(Tagger)
    assert session.data_received(OPENING + MESSAGE) is None
    # OPTNEG; continue to HELO, the header and the body (the other steps are
    # negotiated without a reply); the header added at end of message, then continue
    assert commands(session.data_to_send()) == ["O", "c", "c", "c", "h", "c"]
    assert session.data_to_send() == b""


def test_a_read_without_a_reply_gives_nothing_to_send() -> None:
    session = MilterSession(Tagger)
    session.data_received(OPTNEG)
    session.data_to_send()
    session.data_received(frame("D", b"Cj\x00mx\x00"))
    assert session.data_to_send() == b""


def test_progress_is_signalled_at_once_behind_earlier_replies() -> None:
    taken: list[list[str]] = []
    session: MilterSession

    def on_output() -> None:
        taken.append(commands(session.data_to_send()))

    session = MilterSession(ProgressAtEom, on_output=on_output)
    session.data_received(OPENING + MESSAGE)
    assert taken == [["O", "c", "c", "c", "p"]]
    assert commands(session.data_to_send()) == ["h", "c"]


def test_progress_from_the_thread_pool_reaches_on_output() -> None:
    settings = ExecutionSettings(mode="threads")
    runner = CallbackRunner(settings, logging.getLogger("milterkit"))
    signalled: list[list[str]] = []
    session: MilterSession

    def on_output() -> None:
        signalled.append(commands(session.data_to_send()))

    session = MilterSession(ProgressAtEom, settings=settings, runner=runner, on_output=on_output)
    taken: list[str] = []
    try:
        for data in (OPENING, MESSAGE):
            pending: Any = session.data_received(data)
            while pending is not None:  # as the server does: take the output after each step
                taken += commands(session.data_to_send())
                asyncio.run(pending)
                pending = session.resume()
            taken += commands(session.data_to_send())
    finally:
        runner.shutdown()
    assert signalled == [["p"]]
    assert taken == ["O", "c", "c", "c", "h", "c"]


def test_session_state_for_the_server() -> None:
    session = MilterSession(Tagger)
    assert session.negotiated is None
    session.data_received(OPENING + frame("M", b"<a@example.org>\x00") + frame("R")[:3])
    assert session.negotiated is not None and session.negotiated.version == 6
    assert session.in_message
    assert session.buffered == 3
    assert not session.awaiting_reply
    session.buffer_data(frame("R")[3:] + b"\x00\x00")
    assert session.buffered == 5 + 2  # held back, not processed
    assert not session.awaiting_reply


def test_progress_outside_a_reply_is_refused() -> None:
    class Early(Milter):
        def connect(self, *args: Any) -> None:
            return None

    session = MilterSession(Early)
    session.data_received(OPTNEG)
    with pytest.raises(LocalProtocolError, match="no command is waiting for a reply"):
        session.milter.progress()


def test_a_finished_session_is_freed_without_the_cyclic_gc() -> None:
    gc.collect()
    gc.disable()
    try:
        session = MilterSession(Tagger)
        session.data_received(OPENING + MESSAGE + frame("Q"))
        milter = weakref.ref(session.milter)  # (a compiled session takes no weak reference)
        del session
        assert milter() is None
    finally:
        gc.enable()


def test_the_milter_module_does_not_import_the_session() -> None:
    code = "import sys, milterkit.milter; print('milterkit.session' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_session_attributes_fit_a_shared_key_dict() -> None:
    """CPython 3.11 shares an instance dict's keys up to 30 attributes; past that the
    per-packet attribute reads of the session get slower (benchmarks/instructions.py
    measured 3 %). A new attribute must replace one, or move to the context."""
    session = MilterSession(Milter)
    if not hasattr(session, "__dict__"):
        pytest.skip("the compiled session has no instance dict")
    assert len(vars(session)) <= 30, sorted(vars(session))
