"""Per-message resource limits and body collection, in memory (no sockets).

Also the session-level half of the fault tests: a callback that raises or
hangs gets the configured decision and the connection stays in sync; an MTA
that vanishes (even inside a packet) still gets abort then close, and no
Milter instance is leaked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import struct
from typing import Any

import pytest

from milterkit import Milter
from milterkit.milter import Accept, Continue
from milterkit.protocol.constants import Action
from milterkit.session import MilterSession
from milterkit.testing import MilterHarness
from tests.hardening.conftest import frame
from tests.hardening.milters import Counted, Faulty

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\n\r\nbody\r\n"


def message_with(headers: int, value: bytes = b"v", body: bytes = b"body\r\n") -> bytes:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, value) for i in range(headers))
    return b"From: a@example.org\r\nTo: b@example.net\r\n" + lines + b"\r\n" + body


class Headers(Milter):
    def __init__(self) -> None:
        self.seen = 0

    def header(self, name: str, value: str) -> None:
        self.seen += 1


class FewHeaders(Headers):
    max_headers = 10


class SmallHeaders(Headers):
    max_header_bytes = 1000


class Unlimited(Headers):
    max_headers = None
    max_header_bytes = None


def test_defaults_are_documented_values() -> None:
    assert Milter.max_headers == 1000
    assert Milter.max_header_bytes == 1024 * 1024
    assert Milter.collect_body is False
    assert Milter.body_memory_limit == 1024 * 1024
    assert Milter.max_body_bytes == 64 * 1024 * 1024


def test_header_count_limit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "milterkit"), MilterHarness(FewHeaders) as h:
        result = h.check(message_with(20))
        assert result.decision == "tempfail"
        assert h.milter.seen == 10  # the callback is not called past the limit
        # the connection stays usable: the next message is counted afresh
        assert h.check(message_with(5)).decision == "continue"
    assert "max_headers=10" in caplog.text
    assert caplog.text.count("over a limit") == 1


def test_header_bytes_limit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "milterkit"), MilterHarness(SmallHeaders) as h:
        assert h.check(message_with(5, b"x" * 300)).decision == "tempfail"
        assert h.check(message_with(2, b"x" * 300)).decision == "continue"
    assert "max_header_bytes=1000" in caplog.text


def test_limit_uses_the_configured_error_decision() -> None:
    with MilterHarness(FewHeaders, error_decision="reject") as h:
        assert h.check(message_with(20)).decision == "reject"


def test_limits_can_be_turned_off() -> None:
    with MilterHarness(Unlimited) as h:
        assert h.check(message_with(3000)).decision == "continue"
        assert h.milter.seen == 3002


class Collector(Milter):
    collect_body = True
    body_memory_limit = 1000
    sizes: list[tuple[int, bool, bytes]] = []

    def end_of_message(self) -> Any:
        spooled = getattr(self.body_file, "_rolled", None)
        Collector.sizes.append((self.body_size, bool(spooled), self.body_bytes))
        assert self.body_file.read() == self.body_bytes  # rewound for the milter
        return Accept()


def test_collect_body_in_memory_then_spooled() -> None:
    Collector.sizes.clear()
    small = b"small body\r\n"
    large = b"0123456789abcdef\r\n" * 5000  # 90 kB, several chunks
    with MilterHarness(Collector) as h:
        assert h.check(message_with(1, body=small)).decision == "accept"
        assert h.check(message_with(1, body=large)).decision == "accept"
        assert h.check(message_with(1, body=b"")).decision == "accept"
    (s1, rolled1, b1), (s2, rolled2, b2), (s3, _, b3) = Collector.sizes
    assert (s1, rolled1, b1) == (len(small), False, small)
    assert (s2, rolled2, b2) == (len(large), True, large)
    assert (s3, b3) == (0, b"")


def test_collect_body_asks_for_the_body_without_a_body_callback() -> None:
    from milterkit.protocol.constants import ProtocolFlag

    assert not Collector.wanted_protocol() & ProtocolFlag.NOBODY
    assert Milter.wanted_protocol() & ProtocolFlag.NOBODY


class TinyBody(Collector):
    max_body_bytes = 5000


def test_body_limit(caplog: pytest.LogCaptureFixture) -> None:
    Collector.sizes.clear()
    with caplog.at_level(logging.WARNING, "milterkit"), MilterHarness(TinyBody) as h:
        assert h.check(message_with(1, body=b"x" * 6000)).decision == "tempfail"
        assert h.check(message_with(1, body=b"y" * 3998 + b"\r\n")).decision == "accept"
    assert "max_body_bytes=5000" in caplog.text
    assert [s for s, _, _ in Collector.sizes] == [4000]


def test_spool_file_is_closed_when_the_message_ends(tmp_path: Any) -> None:
    class Spooled(Collector):
        body_spool_dir = str(tmp_path)

    opened: list[Any] = []

    class Keeping(Spooled):
        def end_of_message(self) -> Any:
            opened.append(self.body_file)
            return Accept()

    with MilterHarness(Keeping) as h:
        h.check(message_with(1, body=b"z" * 50000))
        h.check(message_with(1, body=b"z" * 50000))
    assert all(f.closed for f in opened)
    assert os.listdir(tmp_path) == []  # anonymous temp files, nothing left behind


# ---------------------------------------------------------- callback faults


def test_callback_that_raises_answers_the_decision_and_stays_in_sync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "milterkit"), MilterHarness(Faulty) as h:
        assert h.check(MESSAGE, sender="<raise@example.org>").decision == "tempfail"
        assert h.check(MESSAGE, sender="<ok@example.org>").decision == "accept"
    assert "callback mail_from raised" in caplog.text


def test_callback_that_hangs_times_out_then_the_connection_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error decision at the deadline, then the connection ends (the callback may
    still be running, so the milter instance is not reused); the next one is served."""
    with (
        caplog.at_level(logging.ERROR, "milterkit"),
        MilterHarness(Faulty, callback_timeout=0.2, error_decision="reject") as h,
    ):
        assert h.check(MESSAGE, sender="<hang@example.org>").decision == "reject"
        assert h.filter.closed
    with MilterHarness(Faulty, callback_timeout=0.2, error_decision="reject") as h:
        assert h.check(MESSAGE, sender="<ok@example.org>").decision == "accept"
    assert "callback mail_from ran" in caplog.text
    assert "over callback_timeout 0.2s" in caplog.text


# ------------------------------------------------------ the MTA vanishing


def _opening() -> bytes:
    return (
        frame(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
        + frame(b"C", b"h\x004\x00\x19127.0.0.1\x00")
        + frame(b"H", b"h\x00")
    )


def _vanish(cut: int) -> None:
    """One session in which the MTA disappears after ``cut`` bytes of a message."""
    session = MilterSession(Counted)
    message = (
        frame(b"M", b"<a@example.org>\x00")
        + frame(b"R", b"<b@example.net>\x00")
        + frame(b"L", b"Subject\x00hi\x00")
        + frame(b"N")
        + frame(b"B", b"x" * 3000)
        + frame(b"E")
    )
    for pending in (session.data_received(_opening()), session.data_received(message[:cut])):
        assert pending is None
    pending = session.connection_lost()
    if pending is not None:
        asyncio.run(pending)  # type: ignore[arg-type]
    assert session.closed


@pytest.mark.parametrize("cut", [5, 12, 21, 30, 60, 80, 200, 3050])
def test_mta_vanishing_mid_message_runs_abort_then_close(cut: int) -> None:
    Counted.events.clear()
    _vanish(cut)
    serial = Counted.created[0]
    mail = len(frame(b"M", b"<a@example.org>\x00"))
    expected = ["close"] if cut < mail else ["abort", "close"]  # abort only inside a message
    assert [e for s, e in Counted.events if s == serial] == expected


def test_no_milter_instance_leaks_after_many_vanishing_sessions() -> None:
    gc.collect()
    live_before = len(Counted.live)
    for i in range(2000):
        _vanish(5 + (i * 37) % 3060)
    gc.collect()
    assert len(Counted.live) == live_before


def test_vanishing_during_async_callback_cancels_it_and_closes() -> None:
    """A hung async callback is cancelled by the server when the MTA goes away (see faults)."""

    class Hangs(Milter):
        closed = asyncio.Event

        async def mail_from(self, sender: str, params: list[str]) -> Any:
            await asyncio.sleep(3600)
            return Continue()

    session = MilterSession(Hangs)
    assert session.data_received(_opening()) is None
    pending = session.data_received(frame(b"M", b"<a@b>\x00"))
    assert pending is not None

    async def drive() -> None:
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = session.connection_lost()
        if after is not None:
            await after

    asyncio.run(drive())
    assert session.closed


def test_actions_flag_values_unchanged() -> None:
    assert Counted.actions & Action.ADD_HEADERS
