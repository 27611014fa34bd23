"""An inline callback that never returns costs its connection, not the worker.

The interruption is a signal to the main thread, so these tests serve where a
worker does: in a ``milterkit run`` subprocess (a forked worker, or the
supervisor itself with ``--workers 0``), or on an event loop in pytest's main
thread. Limits are far below the sockets' timeouts: a worker that stayed
stuck fails the test by a timeout, not by a tight time bound.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from milterkit.execution import CallbackInterrupted, ExecutionSettings
from milterkit.milter import Accept, Continue, Milter
from milterkit.protocol import Abort, Mail, Quit, TempFail
from milterkit.protocol import messages as wire
from milterkit.runtime.interrupt import INTERRUPT_SIGNAL
from milterkit.runtime.server import Server, new_event_loop
from milterkit.session import MilterSession
from tests.runtime.test_daemon import Daemon, with_kill
from tests.runtime.test_server_mta import RawMTA, inet_listener, wait_for

pytestmark = pytest.mark.skipif(INTERRUPT_SIGNAL is None, reason="no real-time signals")

STUCK_MILTER = textwrap.dedent(
    """
    import socket, threading, time
    from milterkit.milter import Accept, Continue, Milter

    class Stuck(Milter):
        def mail_from(self, sender, params):
            kind = sender.strip("<>").split("@")[0]
            if kind == "spin":
                while True:
                    pass
            if kind == "sleep":
                time.sleep(10**6)
            if kind == "recv":
                mine, theirs = socket.socketpair()
                mine.recv(1)
            if kind == "lock":
                lock = threading.Lock()
                lock.acquire()
                lock.acquire()
            if kind == "swallow":  # catches the interruption twice, then lets it go
                for _ in range(2):
                    try:
                        time.sleep(10**6)
                    except BaseException:
                        pass
                time.sleep(10**6)
            if kind == "where":  # Accept: it ran in the pool
                in_pool = threading.current_thread() is not threading.main_thread()
                return Accept() if in_pool else Continue()
            self.kind = kind
            return Continue()

        def abort(self):
            if getattr(self, "kind", "") == "aborthang":
                time.sleep(10**6)

        def close(self):
            if getattr(self, "kind", "") == "closehang":
                time.sleep(10**6)
    """
)


@pytest.fixture
def stuck_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``milterkit run`` on the Stuck milter with the given options."""
    (tmp_path / "stuck.py").write_text(STUCK_MILTER)
    started: list[Daemon] = []

    def start(*options: str, milter: str = "stuck.py:Stuck") -> Daemon:
        daemon = Daemon(
            tmp_path,
            "--socket",
            f"unix:{tmp_path}/milter.sock",
            *options,
            target=f"{tmp_path}/{milter}",
        )
        started.append(daemon)
        daemon.wait_socket(20)
        return daemon

    yield start
    for daemon in started:
        with_kill(daemon)


def _stuck_then_served(path: str, kind: str, blocking: Callable[[], object] | None = None) -> None:
    """One connection sticks in mail_from; another is served; the stuck one gets TEMPFAIL.

    ``blocking``: true once the stuck call holds the loop; the other connection
    starts only then (an async callback awaits before it blocks, and a call of
    the other connection begun in that gap would wait out its own timeout).
    """
    with RawMTA.connect(path, timeout=30) as stuck:
        stuck.hello()
        stuck.send(Mail(f"<{kind}@x>".encode()))
        if blocking is not None:
            wait_for(blocking, 30, f"the {kind} callback to block")
        with RawMTA.connect(path, timeout=30) as other:
            other.hello()
            assert other.command(Mail(b"<ok@x>")) == [wire.Continue()]
        assert stuck.replies() == [TempFail()]
        assert stuck.wait_closed(10)


@pytest.mark.parametrize(
    ("kind", "workers"),
    [("spin", "1"), ("sleep", "1"), ("recv", "1"), ("lock", "1"), ("sleep", "0")],
)
def test_an_inline_callback_that_never_returns_is_interrupted(
    stuck_daemon: Callable[..., Daemon], kind: str, workers: str
) -> None:
    daemon = stuck_daemon(
        "--workers", workers, "--execution", "inline", "--stuck-callback-ms", "500"
    )
    _stuck_then_served(daemon.sock_path, kind)
    _stuck_then_served(daemon.sock_path, kind)  # inline mode: still inline, interrupted again
    for _ in range(3):
        with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
            mta.hello()
            assert mta.command(Mail(b"<ok@x>")) == [wire.Continue()]
    assert daemon.stop() == 0
    log = daemon.log()
    interrupted = [line for line in log.splitlines() if "interrupted it" in line]
    assert len(interrupted) == 2, log
    assert "callback Stuck.mail_from ran " in interrupted[0]
    assert (
        "on the event loop, over the stuck-callback limit 500 ms: interrupted it; "
        in interrupted[0]
    )
    assert (
        "answering tempfail, discarding its result and actions, and closing the connection"
        in interrupted[0]
    )
    assert "thread pool" not in log
    assert "Traceback" not in log


def test_auto_mode_moves_an_interrupted_callback_to_the_pool(
    stuck_daemon: Callable[..., Daemon],
) -> None:
    daemon = stuck_daemon("--workers", "1", "--stuck-callback-ms", "500")
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(b"<where@x>")) == [wire.Continue()]  # inline while fast
    _stuck_then_served(daemon.sock_path, "sleep")
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(b"<where@x>")) == [wire.Accept()]  # now in the pool
    daemon.stop()
    (line,) = [line for line in daemon.log().splitlines() if "interrupted it" in line]
    assert line.endswith("closing the connection; it runs in the thread pool from now on")


def test_inline_callback_timeout_acts_on_time(stuck_daemon: Callable[..., Daemon]) -> None:
    """--callback-timeout shorter than the stuck limit interrupts at the timeout."""
    daemon = stuck_daemon("--workers", "1", "--execution", "inline", "--callback-timeout", "0.5")
    _stuck_then_served(daemon.sock_path, "sleep")
    daemon.stop()
    (line,) = [line for line in daemon.log().splitlines() if "interrupted it" in line]
    assert "on the event loop, over callback_timeout 0.5s: interrupted it" in line


def test_a_callback_that_swallows_the_interruption_is_interrupted_again(
    stuck_daemon: Callable[..., Daemon],
) -> None:
    daemon = stuck_daemon("--workers", "1", "--execution", "inline", "--stuck-callback-ms", "300")
    _stuck_then_served(daemon.sock_path, "swallow")
    daemon.stop()
    log = daemon.log()
    again = "[w0-c1] callback mail_from still holds the event loop after it was interrupted "
    again += "(does it catch BaseException?); interrupting it again"
    assert log.count(again) == 2, log
    assert log.count("interrupted it; answering tempfail") == 1, log


@pytest.mark.parametrize("hangs", ["close", "abort"])
def test_a_stuck_abort_or_close_is_interrupted(
    stuck_daemon: Callable[..., Daemon], hangs: str
) -> None:
    daemon = stuck_daemon("--workers", "1", "--stuck-callback-ms", "500")
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(f"<{hangs}hang@x>".encode())) == [wire.Continue()]
        mta.send(Abort() if hangs == "abort" else Quit())
        assert mta.wait_closed(10)  # after an interrupted abort, no close() either
    for _ in range(2):
        with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
            mta.hello()
            assert mta.command(Mail(b"<ok@x>")) == [wire.Continue()]
    daemon.stop()
    lines = [line for line in daemon.log().splitlines() if "interrupted it" in line]
    (line,) = lines
    assert f"callback Stuck.{hangs} ran " in line
    assert line.endswith(
        "interrupted it; closing the connection; it runs in the thread pool from now on"
    )


ASYNC_STUCK_MILTER = textwrap.dedent(
    """
    import asyncio, time
    from milterkit.milter import Continue, Milter

    class AsyncStuck(Milter):
        async def mail_from(self, sender, params):
            kind = sender.strip("<>").split("@")[0]
            await asyncio.sleep(0.01)  # blocks in a later step, not the first
            if kind in ("sleep", "spin"):
                print(f"BLOCKING {kind}", flush=True)
            if kind == "sleep":
                time.sleep(10**6)
            if kind == "spin":
                while True:
                    pass
            if kind == "slowawait":  # awaits for long, holds the loop never
                await asyncio.sleep(1.5)
            self.kind = kind
            return Continue()

        async def abort(self):
            await asyncio.sleep(0)
            if getattr(self, "kind", "") == "aborthang":
                time.sleep(10**6)
    """
)


def _async_stuck(start: Callable[..., Daemon], tmp_path: Path, *options: str) -> Daemon:
    """A one-worker daemon serving AsyncStuck with the given options."""
    (tmp_path / "async_stuck.py").write_text(ASYNC_STUCK_MILTER)
    return start("--workers", "1", *options, milter="async_stuck.py:AsyncStuck")


def _blocked(daemon: Daemon, kind: str, times: int) -> Callable[[], bool]:
    """True once AsyncStuck said ``times`` times that its ``kind`` call is about to block."""
    return lambda: daemon.log().count(f"BLOCKING {kind}") >= times


@pytest.mark.parametrize("kind", ["sleep", "spin"])
def test_an_async_callback_that_blocks_without_awaiting_is_interrupted(
    stuck_daemon: Callable[..., Daemon], tmp_path: Path, kind: str
) -> None:
    daemon = _async_stuck(stuck_daemon, tmp_path, "--stuck-callback-ms", "500")
    _stuck_then_served(daemon.sock_path, kind, _blocked(daemon, kind, 1))
    # auto mode: still on the loop, interrupted again
    _stuck_then_served(daemon.sock_path, kind, _blocked(daemon, kind, 2))
    daemon.stop()
    log = daemon.log()
    interrupted = [line for line in log.splitlines() if "interrupted it" in line]
    assert len(interrupted) == 2, log
    assert "callback AsyncStuck.mail_from ran " in interrupted[0]
    assert interrupted[0].endswith(
        "on the event loop, over the stuck-callback limit 500 ms: interrupted it; answering "
        "tempfail, discarding its result and actions, and closing the connection"
    )
    assert "thread pool" not in log
    assert "in callback mail_from [w0-c1]" in log  # the watchdog names the blocked step
    assert "Traceback" not in log


def test_awaiting_does_not_count_towards_the_stuck_limit(
    stuck_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = _async_stuck(stuck_daemon, tmp_path, "--stuck-callback-ms", "300")
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(b"<slowawait@x>")) == [wire.Continue()]
    daemon.stop()
    assert "interrupted" not in daemon.log()


def test_an_async_callback_timeout_acts_on_time_when_it_blocks(
    stuck_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = _async_stuck(stuck_daemon, tmp_path, "--callback-timeout", "0.5")
    _stuck_then_served(daemon.sock_path, "sleep", _blocked(daemon, "sleep", 1))
    daemon.stop()
    (line,) = [line for line in daemon.log().splitlines() if "interrupted it" in line]
    assert "on the event loop, over callback_timeout 0.5s: interrupted it" in line


@pytest.mark.parametrize(
    "limit", [("--stuck-callback-ms", "500"), ("--callback-timeout", "0.5")], ids=str
)
def test_an_async_abort_that_blocks_is_interrupted(
    stuck_daemon: Callable[..., Daemon], tmp_path: Path, limit: tuple[str, str]
) -> None:
    daemon = _async_stuck(stuck_daemon, tmp_path, *limit)
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(b"<aborthang@x>")) == [wire.Continue()]
        mta.send(Abort())
        assert mta.wait_closed(10)
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:
        mta.hello()
        assert mta.command(Mail(b"<ok@x>")) == [wire.Continue()]
    daemon.stop()
    (line,) = [line for line in daemon.log().splitlines() if "interrupted it" in line]
    assert "callback AsyncStuck.abort ran " in line
    assert line.endswith("interrupted it; closing the connection")


AROUND_MILTER = textwrap.dedent(
    """
    import time
    from milterkit.execution import CallbackInterrupted
    from milterkit.milter import Continue, Milter

    class Around(Milter):
        def mail_from(self, sender, params):
            wanted = sender.strip("<>").split("@")[0]
            started = time.perf_counter()
            try:
                if wanted == "forever":
                    time.sleep(10**6)
                end = started + float(wanted) / 1000
                while time.perf_counter() < end:
                    pass
            except CallbackInterrupted:
                ran = (time.perf_counter() - started) * 1000
                print(f"INTERRUPTED {sender} after {ran:.1f} ms", flush=True)
                raise
            return Continue()
    """
)

#: Busy times (ms) around the 50 ms limit, so that the guard often fires as a
#: call ends and its signal lands late: in the session, the loop or the next call.
_AROUND = ["0", "0", "10", "40", "48", "50", "52", "55", "60", "80", "0", "forever"]


def test_a_late_interrupt_never_hits_another_call(
    tmp_path: Path, stuck_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "around.py").write_text(AROUND_MILTER)
    daemon = stuck_daemon(
        "--workers",
        "1",
        "--execution",
        "inline",
        "--stuck-callback-ms",
        "50",
        milter="around.py:Around",
    )
    (worker,) = daemon.wait_workers(1)
    replies: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def client(rounds: int) -> None:
        try:
            mta: RawMTA | None = None
            for wanted in _AROUND * rounds:
                if mta is None:
                    mta = RawMTA.connect(daemon.sock_path, timeout=30)
                    mta.hello()
                (reply,) = mta.command(Mail(f"<{wanted}@x>".encode()))
                replies.append((wanted, type(reply).__name__))
                if isinstance(reply, TempFail):
                    assert mta.wait_closed(10)
                    mta.close()
                    mta = None
                else:
                    mta.command(Abort())
            if mta is not None:
                mta.close()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(4,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(replies) == 3 * 4 * len(_AROUND)
    with RawMTA.connect(daemon.sock_path, timeout=30) as mta:  # the same worker serves on
        mta.hello()
        assert mta.command(Mail(b"<0@x>")) == [wire.Continue()]
    assert daemon.workers() == [worker]
    daemon.stop()
    log = daemon.log()
    assert "Traceback" not in log and "raised" not in log, log
    assert {reply for _, reply in replies} <= {"Continue", "TempFail"}
    assert all(reply == "TempFail" for wanted, reply in replies if wanted == "forever")
    failed = sum(reply == "TempFail" for _, reply in replies)
    assert failed == log.count("interrupted it")
    # mostly caught in the callback's try; else after it (its return, the session's finally)
    assert 0 < log.count("INTERRUPTED ") <= failed
    # each interruption landed in a call that had run the limit, not in a fresh one
    for ran in re.findall(r"INTERRUPTED \S+ after ([0-9.]+) ms", log):
        assert float(ran) >= 25, log


# ------------------------------------------------------- in pytest's main thread


def _serve_here(server: Server, client: Callable[[], None]) -> None:
    """Serve on an event loop in this (the main) thread while ``client`` runs in another."""
    loop = new_event_loop()

    async def main() -> None:
        server.start()
        serving = asyncio.ensure_future(server.serve_forever())
        try:
            await loop.run_in_executor(None, client)
        finally:
            server.close()
            await serving

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_signal_meant_for_an_earlier_call_raises_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Aimed at a call that has returned, the signal lands in the next call and in the loop."""
    assert INTERRUPT_SIGNAL is not None
    signum = INTERRUPT_SIGNAL
    main = threading.get_ident()
    earlier: list[Any] = []
    survived: list[str] = []

    class Aims(Milter):
        def mail_from(self, sender: str, params: list[str]) -> Any:
            runner = server.runner
            assert runner.guard is not None
            if sender == "<first@x>":
                earlier.append(runner.current)  # equal to the next call's, not the same
                return Continue()
            if sender == "<stale@x>":
                assert runner.current == earlier[0]
                runner.guard.target = earlier[0]
                signal.pthread_kill(main, signum)
                time.sleep(0.2)  # the signal is handled here (EINTR) and must not raise
                survived.append(sender)
                return Accept()
            runner.guard.target = runner.current  # this call: it is interrupted
            signal.pthread_kill(main, signum)
            time.sleep(30)
            survived.append(sender)
            return Accept()

    def client() -> None:
        address = server.listeners[0].getsockname()[:2]
        with RawMTA.connect(address, timeout=30) as mta:
            mta.hello()
            assert mta.command(Mail(b"<first@x>")) == [wire.Continue()]
            mta.command(Abort())
            assert mta.command(Mail(b"<stale@x>")) == [wire.Accept()]
            mta.command(Abort())
            signal.pthread_kill(main, signum)  # late, into the idle loop
            time.sleep(0.2)
            assert mta.command(Mail(b"<now@x>")) == [TempFail()]
            assert mta.wait_closed(10)

    settings = ExecutionSettings(mode="inline", stuck_callback=60)  # the guard itself never fires
    server = Server(Aims, inet_listener(), execution=settings)
    with caplog.at_level(logging.WARNING, "milterkit"):
        _serve_here(server, client)
    assert survived == ["<stale@x>"]
    assert "callback Aims.mail_from ran" in caplog.text
    assert "interrupted it" in caplog.text
    assert signal.getsignal(signum) is signal.SIG_DFL  # put back when the server stopped


def test_a_signal_already_in_use_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    assert INTERRUPT_SIGNAL is not None

    def theirs(signum: int, frame: Any) -> None:
        """Someone else's handler."""

    previous = signal.signal(INTERRUPT_SIGNAL, theirs)
    try:
        server = Server(Milter, inet_listener(), execution=ExecutionSettings(stuck_callback=1))
        guards: list[object] = []
        with caplog.at_level(logging.WARNING, "milterkit"):
            _serve_here(server, lambda: guards.append(server.runner.guard))
        assert guards == [None]
        assert signal.getsignal(INTERRUPT_SIGNAL) is theirs
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)
    assert f"signal {INTERRUPT_SIGNAL} already has a handler" in caplog.text
    assert "inline callbacks that hold the event loop will not be interrupted" in caplog.text


def test_callback_interrupted_without_a_runner_is_answered_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session with no runner (no guard) still answers when the exception comes anyway."""

    class Raises(Milter):
        def mail_from(self, sender: str, params: list[str]) -> Any:
            raise CallbackInterrupted("raised by hand")

    def frame(code: bytes, payload: bytes = b"") -> bytes:
        return struct.pack(">I", len(payload) + 1) + code + payload

    session = MilterSession(Raises)
    opening = frame(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
    opening += frame(b"C", b"h\x004\x00\x19127.0.0.1\x00") + frame(b"H", b"h\x00")
    with caplog.at_level(logging.ERROR, "milterkit"):
        assert session.data_received(opening + frame(b"M", b"<a@b>\x00")) is None
    assert session.data_to_send().endswith(frame(b"t"))
    assert session.closed
    assert "callback mail_from was interrupted; answering tempfail" in caplog.text


def test_the_guard_thread_ends_with_its_loop() -> None:
    """A server started but never stopped leaves no thread once its loop is closed."""

    def guards() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "milterkit-interrupt"]

    before = len(guards())
    loop = new_event_loop()
    server = Server(Milter, inet_listener(), execution=ExecutionSettings(stuck_callback=1))
    loop.run_until_complete(asyncio.sleep(0))
    loop.call_soon(server.start)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert server.runner.guard is not None and len(guards()) == before + 1
    loop.close()
    server.listeners[0].close()
    wait_for(lambda: len(guards()) == before, 10, "the guard thread to end")


# ------------------------------------------------------------------ settings


def test_interrupt_after_is_the_shorter_limit() -> None:
    assert ExecutionSettings().interrupt_after == 5.0
    assert ExecutionSettings(callback_timeout=2).interrupt_after == 2
    assert ExecutionSettings(callback_timeout=60).interrupt_after == 5.0
    assert ExecutionSettings(stuck_callback=0).interrupt_after is None
    assert ExecutionSettings(stuck_callback=0, callback_timeout=60).interrupt_after == 60


def test_negative_stuck_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^stuck_callback must be >= 0, not -1$"):
        ExecutionSettings(stuck_callback=-1)


def test_cli_refuses_a_negative_stuck_limit(tmp_path: Path) -> None:
    (tmp_path / "stuck.py").write_text(STUCK_MILTER)
    command = [sys.executable, "-m", "milterkit", "run", f"{tmp_path}/stuck.py:Stuck"]
    command += ["--socket", f"unix:{tmp_path}/m.sock", "--stuck-callback-ms", "-5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "invalid execution setting: stuck_callback must be >= 0, not -0.005" in result.stderr
