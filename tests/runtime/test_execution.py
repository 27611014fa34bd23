"""How callbacks run, over real sockets: the pool, timeouts, progress, the watchdog, hooks.

Durations here are correctness bounds, not speed goals: a blocking callback
that stalled the worker would make N connections take N times its sleep; the
bounds sit far from both outcomes so a loaded machine does not flip them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from milterkit import blocking
from milterkit.milter import Accept, Continue, Milter
from milterkit.protocol import (
    AddHeader,
    EndOfMessage,
    Header,
    Mail,
    Progress,
    Rcpt,
    ReplaceBody,
    TempFail,
)
from milterkit.protocol import messages as wire
from milterkit.protocol.constants import Action
from milterkit.protocol.events import NeedData
from milterkit.runtime.server import MilterStartupError, Server
from milterkit.testing import MilterHarness
from tests.runtime.test_server_mta import RawMTA, inet_listener, serving, wait_for

SLEEP = 1.0


class PlainSleeper(Milter):
    """What users write: a plain def that blocks."""

    def mail_from(self, sender: str, params: list[str]) -> Any:
        time.sleep(SLEEP)
        return Continue()


class DecoratedSleeper(Milter):
    @blocking
    def mail_from(self, sender: str, params: list[str]) -> Any:
        time.sleep(SLEEP)
        return Continue()


class NamedSleeper(Milter):
    blocking_callbacks = ("mail_from",)

    def mail_from(self, sender: str, params: list[str]) -> Any:
        time.sleep(SLEEP)
        return Continue()


def _mail_round_trips(server: Server, connections: int) -> list[float]:
    """Open ``connections`` at once, each sends MAIL; seconds until each got its reply."""
    address = server.listeners[0].getsockname()[:2]
    done: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(connections)

    def one() -> None:
        try:
            with RawMTA.connect(address, timeout=30) as mta:
                mta.hello()
                barrier.wait(10)
                started = time.monotonic()
                assert mta.command(Mail(b"<a@example.org>")) == [wire.Continue()]
                done.append(time.monotonic() - started)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return done


@pytest.mark.parametrize(
    ("milter", "mode"),
    [
        (DecoratedSleeper, None),
        (NamedSleeper, None),
        (PlainSleeper, "threads"),
    ],
)
def test_declared_or_threaded_blocking_callbacks_run_concurrently(
    milter: type[Milter], mode: str | None
) -> None:
    from milterkit.execution import ExecutionSettings

    server = Server(milter, inet_listener(), execution=ExecutionSettings(mode=mode))
    with serving(server):
        times = _mail_round_trips(server, 8)
    # Serially, the last of 8 would wait 8 s; concurrently every one takes ~1 s.
    assert max(times) < 4 * SLEEP, times


def test_auto_mode_moves_a_slow_plain_def_to_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(PlainSleeper, inet_listener())
    with caplog.at_level(logging.WARNING, "milterkit"), serving(server):
        first = _mail_round_trips(server, 1)
        assert first[0] >= SLEEP * 0.9
        times = _mail_round_trips(server, 8)
    assert max(times) < 4 * SLEEP, times
    switched = [r for r in caplog.records if "thread pool from now on" in r.getMessage()]
    assert len(switched) == 1
    assert "PlainSleeper.mail_from" in switched[0].getMessage()


def test_inline_mode_keeps_sync_callbacks_on_the_loop() -> None:
    """The explicit opt-out: one connection's sleep delays the others (as documented)."""
    from milterkit.execution import ExecutionSettings

    class Short(PlainSleeper):
        pass

    server = Server(Short, inet_listener(), execution=ExecutionSettings(mode="inline"))
    global SLEEP
    saved, SLEEP = SLEEP, 0.4
    try:
        with serving(server):
            times = _mail_round_trips(server, 4)
    finally:
        SLEEP = saved
    assert max(times) >= 4 * 0.4 * 0.9, times


def test_async_callbacks_are_never_handed_to_a_thread() -> None:
    seen: list[str] = []

    class Async(Milter):
        execution = "threads"

        async def mail_from(self, sender: str, params: list[str]) -> Any:
            seen.append(threading.current_thread().name)
            return Continue()

    server = Server(Async, inet_listener())
    with serving(server) as running:
        _mail_round_trips(server, 1)
        loop_thread = running.thread.name
    assert seen == [loop_thread]


# ------------------------------------------------------------------ timeouts


class LateAdder(Milter):
    """EOM adds a header after sleeping: must never reach the MTA when it timed out."""

    actions = Action.ADD_HEADERS
    delay = 2.0
    finished: ClassVar[list[str]] = []

    def end_of_message(self) -> Any:
        time.sleep(self.delay)
        self.add_header("X-Late", "yes")
        self.finished.append("eom")
        return Accept()


def _message_replies(mta: RawMTA) -> tuple[list[Any], float]:
    mta.hello()
    for step in (Mail(b"<a@b>"), Rcpt(b"<c@d>"), Header(b"Subject", b"x")):
        mta.command(step)
    started = time.monotonic()
    replies = mta.command(EndOfMessage())
    return replies, time.monotonic() - started


@pytest.mark.parametrize("mode", ["threads", "auto"])
def test_sync_timeout_answers_at_once_and_drops_late_actions(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    from milterkit.execution import ExecutionSettings

    settings = ExecutionSettings(mode=mode, callback_timeout=0.3)
    if mode == "auto":  # learn first that EOM is slow, then the timeout acts on time
        LateAdder.delay = 0.2
    server = Server(LateAdder, inet_listener(), execution=settings)
    address = server.listeners[0].getsockname()[:2]
    LateAdder.finished.clear()
    with caplog.at_level(logging.WARNING, "milterkit"), serving(server):
        if mode == "auto":
            with RawMTA.connect(address) as mta:
                assert _message_replies(mta)[0][-1] == wire.Accept()
            LateAdder.delay = 2.0
        with RawMTA.connect(address, timeout=10) as mta:
            replies, took = _message_replies(mta)
            assert replies == [TempFail()]  # no X-Late: the late action is dropped
            assert took < 1.5, took  # at the deadline, not after the 2 s sleep
            assert mta.wait_closed(5)  # closed after the reply
        wait_for(lambda: len(LateAdder.finished) == (2 if mode == "auto" else 1), 10, "late end")
    assert "callback end_of_message ran" in caplog.text
    assert "over callback_timeout 0.3s" in caplog.text


def test_inline_sync_timeout_discards_the_late_result(caplog: pytest.LogCaptureFixture) -> None:
    from milterkit.execution import ExecutionSettings

    LateAdder.delay = 0.6
    settings = ExecutionSettings(mode="inline", callback_timeout=0.2)
    server = Server(LateAdder, inet_listener(), execution=settings)
    address = server.listeners[0].getsockname()[:2]
    with (
        caplog.at_level(logging.ERROR, "milterkit"),
        serving(server),
        RawMTA.connect(address) as mta,
    ):
        replies, _ = _message_replies(mta)
        assert replies == [TempFail()]
        assert AddHeader(b"X-Late", b"yes") not in replies
        assert mta.wait_closed(5)
    assert "end_of_message ran" in caplog.text


def test_a_callback_that_never_returns_costs_one_connection_not_the_worker() -> None:
    from milterkit.execution import ExecutionSettings

    release = threading.Event()

    class Hangs(Milter):
        @blocking
        def mail_from(self, sender: str, params: list[str]) -> Any:
            if "hang" in sender:
                release.wait(60)
            return Continue()

    settings = ExecutionSettings(callback_timeout=0.5)
    server = Server(Hangs, inet_listener(), execution=settings)
    address = server.listeners[0].getsockname()[:2]
    try:
        with serving(server), RawMTA.connect(address) as stuck:
            stuck.hello()
            assert stuck.command(Mail(b"<hang@x>")) == [TempFail()]
            for _ in range(3):
                with RawMTA.connect(address) as other:
                    other.hello()
                    assert other.command(Mail(b"<ok@x>")) == [wire.Continue()]
    finally:
        release.set()


# ------------------------------------------------------------------ progress


class Progressing(Milter):
    """EOM: progress() at once, then a long blocking wait, then accept."""

    def end_of_message(self) -> Any:
        self.progress()
        time.sleep(0.8)
        return Accept()


def _timed_replies(mta: RawMTA) -> list[tuple[float, Any]]:
    """Send EOM; every reply with the seconds after sending at which it arrived."""
    mta.hello()
    for step in (Mail(b"<a@b>"), Rcpt(b"<c@d>")):
        mta.command(step)
    mta.send(EndOfMessage())
    started = time.monotonic()
    out: list[tuple[float, Any]] = []
    while mta.conn.awaiting is not None:
        event = mta.conn.next_event()
        if isinstance(event, NeedData):
            mta.sock.settimeout(10)
            data = mta.sock.recv(65536)
            assert data, "the filter closed the connection"
            mta.conn.receive_data(data)
            continue
        out.append((time.monotonic() - started, event))
    return out


@pytest.mark.parametrize("mode", ["inline", "threads"])
def test_progress_from_sync_code_reaches_the_mta_at_once(mode: str) -> None:
    from milterkit.execution import ExecutionSettings

    server = Server(Progressing, inet_listener(), execution=ExecutionSettings(mode=mode))
    address = server.listeners[0].getsockname()[:2]
    with serving(server), RawMTA.connect(address) as mta:
        timed = _timed_replies(mta)
    (progress_at, progress), (final_at, final) = timed
    assert progress == Progress() and final == wire.Accept()
    assert final_at - progress_at > 0.5, timed  # not held back until the final reply


def test_keepalive_runs_during_a_slow_sync_end_of_message() -> None:
    class SlowEom(Milter):
        def end_of_message(self) -> Any:
            time.sleep(0.8)
            return Accept()

    server = Server(SlowEom, inet_listener(), progress_interval=0.1)
    address = server.listeners[0].getsockname()[:2]
    with serving(server), RawMTA.connect(address) as mta:
        timed = _timed_replies(mta)
    progresses = [at for at, reply in timed if reply == Progress()]
    assert len(progresses) >= 3, timed
    assert progresses[0] < 0.5
    assert timed[-1][1] == wire.Accept()


# ------------------------------------------------------------------ watchdog


def test_a_blocked_loop_is_reported_with_the_callback(caplog: pytest.LogCaptureFixture) -> None:
    from milterkit.execution import ExecutionSettings

    class Blocks(Milter):
        def mail_from(self, sender: str, params: list[str]) -> Any:
            time.sleep(0.5)
            return Continue()

    settings = ExecutionSettings(mode="inline", loop_block_warning=0.1)
    server = Server(Blocks, inet_listener(), execution=settings)
    address = server.listeners[0].getsockname()[:2]
    with caplog.at_level(logging.WARNING, "milterkit"), serving(server):
        with RawMTA.connect(address) as mta:
            mta.hello()
            mta.command(Mail(b"<a@b>"))
        wait_for(lambda: "event loop blocked for" in caplog.text, 5, "watchdog line")
    line = next(r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage())
    assert "callback mail_from" in line


# ------------------------------------------------------------------ hooks


class Hooked(Milter):
    events: ClassVar[list[str]] = []

    @classmethod
    def setup(cls) -> None:
        cls.events.append("setup")

    @classmethod
    async def teardown(cls) -> None:
        await asyncio.sleep(0)
        cls.events.append("teardown")

    def mail_from(self, sender: str, params: list[str]) -> Any:
        self.events.append("mail")
        return Continue()


def test_setup_before_serving_and_teardown_after_drain() -> None:
    Hooked.events = []
    server = Server(Hooked, inet_listener())
    with serving(server) as running:
        _mail_round_trips(server, 1)
        running.drain(5)
        running.thread.join(5)
    assert Hooked.events == ["setup", "mail", "teardown"]


def test_factory_that_raises_is_a_startup_error() -> None:
    def broken() -> Milter:
        return {}["FILTER_CFG"]  # type: ignore[no-any-return]

    server = Server(broken, inet_listener())
    with pytest.raises(MilterStartupError) as caught:
        asyncio.run(server.serve_forever())
    message = str(caught.value)
    assert "KeyError: 'FILTER_CFG'" in message
    assert "test_execution.py:" in message


def test_failing_setup_is_a_startup_error() -> None:
    class BadSetup(Milter):
        @classmethod
        def setup(cls) -> None:
            raise ConnectionRefusedError("database at 127.0.0.1:5432 refused")

    with pytest.raises(MilterStartupError, match=r"BadSetup.setup\(\) failed: Connection"):
        asyncio.run(Server(BadSetup, inet_listener()).serve_forever())


FACTORY_FILE = """
from milterkit import Milter, Continue

class Configured(Milter):
    def __init__(self, tag):
        self.tag = tag

    def mail_from(self, sender, params):
        return Continue()

def make():
    return Configured("from-factory")

def broken():
    raise ValueError("FILTER_CFG is not set")
"""


def _run_cli(tmp_path: Path, target: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "factories.py").write_text(FACTORY_FILE)
    sock = tmp_path / "m.sock"
    command = [sys.executable, "-m", "milterkit", "run", f"{tmp_path}/factories.py:{target}"]
    command += ["--socket", f"unix:{sock}", "--workers", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_cli_factory_construction_failure_exits_78_with_one_line(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "broken")
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot create the milter" in line]
    assert len(lines) == 1, result.stderr
    assert "ValueError: FILTER_CFG is not set" in lines[0]
    assert "factories.py:" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_serves_a_factory(tmp_path: Path) -> None:
    (tmp_path / "factories.py").write_text(FACTORY_FILE)
    sock = tmp_path / "m.sock"
    command = [sys.executable, "-m", "milterkit", "run", f"{tmp_path}/factories.py:make"]
    command += ["--socket", f"unix:{sock}", "--workers", "1"]
    daemon = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock.exists, 20, "the socket")
        with RawMTA.connect(str(sock)) as mta:
            mta.hello()
            assert mta.command(Mail(b"<a@b>")) == [wire.Continue()]
    finally:
        daemon.terminate()
        daemon.wait(30)
    assert daemon.returncode == 0


# ------------------------------------------------------------------ harness, bodies


def test_harness_runs_blocking_callbacks_and_their_actions() -> None:
    class Stamp(Milter):
        actions = Action.ADD_HEADERS

        @blocking
        def end_of_message(self) -> Any:
            self.add_header("X-Thread", threading.current_thread().name)
            return Accept()

    with MilterHarness(Stamp) as harness:
        result = harness.check(b"Subject: x\r\n\r\nbody\r\n", sender="<a@b>", recipients=["<c@d>"])
    assert result.decision == "accept"
    (added,) = result.modifications
    assert isinstance(added, AddHeader)
    assert added.value.startswith(b"milterkit-cb")


class _Trickle(io.RawIOBase):
    """A raw stream that returns at most 7 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk, self.data = self.data[:7], self.data[7:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_replace_body_reads_a_raw_stream_to_its_end() -> None:
    body = b"".join(b"line %d\r\n" % i for i in range(2000))

    class Replacer(Milter):
        actions = Action.CHANGE_BODY

        def end_of_message(self) -> Any:
            self.replace_body(_Trickle(body))  # type: ignore[arg-type]
            return Accept()

    with MilterHarness(Replacer) as harness:
        result = harness.check(b"Subject: x\r\n\r\nold\r\n", sender="<a@b>", recipients=["<c@d>"])
    replaced = [m for m in result.modifications if isinstance(m, ReplaceBody)]
    assert b"".join(m.chunk for m in replaced) == body


class _Broken(io.RawIOBase):
    """A stream that gives one piece, then fails like a vanished pipe."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        if self.reads > 1:
            raise OSError("pipe went away")
        buffer[:5] = b"part\n"
        return 5


def test_replace_body_from_a_failing_stream_queues_none_of_it() -> None:
    """A milter that keeps the old body when its new one cannot be read sends no half body."""

    class Replacer(Milter):
        actions = Action.CHANGE_BODY | Action.ADD_HEADERS

        def end_of_message(self) -> Any:
            self.add_header("X-Kept", "yes")
            with contextlib.suppress(OSError):  # keep the original body
                self.replace_body(_Broken())  # type: ignore[arg-type]
            return Accept()

    with MilterHarness(Replacer) as harness:
        result = harness.check(b"Subject: x\r\n\r\nold\r\n", sender="<a@b>", recipients=["<c@d>"])
    assert result.decision == "accept"
    assert not [m for m in result.modifications if isinstance(m, ReplaceBody)]
    assert b"X-Kept: yes" in result.apply(b"Subject: x\r\n\r\nold\r\n").message_bytes
