"""Faults at a live daemon: a worker SIGKILLed, SIGTERM under load, callbacks that fail."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from milterkit.client import MilterClient, MilterError
from tests.hardening.conftest import (
    EOH,
    MAIL,
    MESSAGE,
    RCPT,
    Daemon,
    Raw,
    frame,
    scale,
    wait_for,
)


@dataclass
class Conn:
    """One persistent good connection: which worker serves it, what went wrong."""

    worker: str | None = None
    ok: int = 0
    errors: list[tuple[float, str | None, str]] = field(default_factory=list)


def persistent_client(address: str, conn: Conn, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with MilterClient(address, timeout=10) as client:
                conn.worker = None
                while not stop.is_set():
                    result = client.check(
                        MESSAGE, sender="<a@example.org>", recipients=["<b@example.net>"]
                    )
                    assert result.decision == "accept", result.decision
                    for mod in result.modifications:
                        if getattr(mod, "name", b"") == b"X-Worker":
                            conn.worker = mod.value.decode()  # type: ignore[attr-defined]
                    conn.ok += 1
        except (MilterError, OSError, AssertionError) as exc:
            conn.errors.append((time.monotonic(), conn.worker, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.05)


def test_sigkill_worker_only_its_sessions_fail(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("Hardened", "--log-level", "warning")
    stop = threading.Event()
    conns: list[Conn] = []
    threads: list[threading.Thread] = []

    def per_worker() -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for c in conns:
            counts[c.worker] = counts.get(c.worker, 0) + 1
        return counts

    try:
        # Which worker accepts a connection is up to the kernel; add connections
        # until both workers serve at least two.
        while len(conns) < 40:
            conn = Conn()
            thread = threading.Thread(
                target=persistent_client, args=(daemon.address, conn, stop), daemon=True
            )
            conns.append(conn)
            threads.append(thread)
            thread.start()
            assert wait_for(lambda c=conn: c.ok >= 1, 20)  # type: ignore[misc]
            counts = per_worker()
            if len(counts) == 2 and min(counts.values()) >= 2:
                break
            time.sleep(0.05)
        assert wait_for(lambda: all(c.ok >= 3 for c in conns), 20)
        pids = {c.worker for c in conns}
        assert len(pids) == 2, f"connections all landed on one worker: {pids}"
        assert not any(c.errors for c in conns)
        victim = conns[0].worker
        assert victim is not None
        before = set(daemon.workers())
        killed_at = time.monotonic()
        os.kill(int(victim), signal.SIGKILL)
        assert wait_for(
            lambda: len(set(daemon.workers()) - before) == 1 and len(daemon.workers()) == 2, 1.0
        ), "the supervisor did not replace the worker within a second"
        replaced_in = time.monotonic() - killed_at
        # every connection runs more messages afterwards
        done = [c.ok for c in conns]
        assert wait_for(lambda: all(c.ok > n for c, n in zip(conns, done, strict=True)), 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    on_victim = [c for c in conns if any(w == victim for _, w, _ in c.errors)]
    survivors = [c for c in conns if c not in on_victim]
    assert on_victim, "no connection noticed the killed worker"
    for conn in survivors:
        assert conn.errors == [], conn.errors
    for conn in on_victim:
        assert len(conn.errors) == 1, conn.errors  # its session failed once, then reconnected
    print(
        f"sigkill: worker replaced in {replaced_in * 1000:.0f} ms; "
        f"{len(on_victim)} session(s) on the victim failed once, "
        f"{len(survivors)} on the other worker saw no error"
    )
    assert "killed by SIGKILL" in daemon.log()


@dataclass
class Tally:
    completed: int = 0
    completed_after_term: int = 0
    refused_before_message: int = 0
    in_flight: int = 0
    bad: list[str] = field(default_factory=list)


def raw_message_loop(daemon: Daemon, tally: Tally, term: list[float], lock: threading.Lock) -> None:
    """Messages one per connection; classify how each one ends."""
    while True:
        try:
            raw = Raw(daemon.sockaddr, timeout=20)
        except OSError:
            with lock:
                tally.refused_before_message += 1
            if term:
                return
            continue
        stage = "opening"
        try:
            raw.hello()
            raw.send(MAIL)
            if raw.final() != b"c":
                raise AssertionError("MAIL not continued")
            stage = "message"
            started = time.monotonic()
            with lock:
                tally.in_flight += 1
            raw.send(RCPT)
            raw.final()
            raw.send(frame(b"L", b"Subject\x00x\x00"))
            raw.final()
            raw.send(EOH)
            raw.final()
            raw.send(frame(b"B", b"body\r\n"))
            raw.final()
            raw.send(frame(b"E"))
            final = raw.final()
            stage = "done"
            with lock:
                tally.in_flight -= 1
                tally.completed += 1
                if term and started < term[0] < time.monotonic():
                    tally.completed_after_term += 1
            assert final == b"a", final
            raw.send(frame(b"Q"))
        except (EOFError, OSError, AssertionError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            truncated = "bytes of a packet pending" in text and " 0 bytes" not in text
            with lock:
                if stage == "message":
                    tally.in_flight -= 1
                if stage == "message" or truncated:
                    tally.bad.append(f"{stage}: {text}")
                else:
                    tally.refused_before_message += 1
            if term:
                return
        finally:
            raw.close()


def test_sigterm_under_load_finishes_messages_in_flight(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory("SlowEom", "--log-level", "warning", "--drain-timeout", "10")
    tally, term, lock = Tally(), [], threading.Lock()
    threads = [
        threading.Thread(target=raw_message_loop, args=(daemon, tally, term, lock), daemon=True)
        for _ in range(scale(12, 40))
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.3 / len(threads))  # stagger, so messages are in flight at any moment
    assert wait_for(lambda: tally.completed >= 20 and tally.in_flight >= 3, 20)
    term.append(time.monotonic())
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    for thread in threads:
        thread.join(30)
    print(
        f"sigterm: {tally.completed} messages completed, {tally.completed_after_term} of them "
        f"in flight at SIGTERM; {tally.refused_before_message} connections refused or closed "
        f"before a message; cut: {len(tally.bad)}"
    )
    assert tally.bad == [], tally.bad[:5]
    assert tally.completed_after_term > 0, "no message was in flight at SIGTERM"


def test_callback_that_raises_or_hangs_live(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(
        "Faulty", "--callback-timeout", "0.5", "--error-decision", "reject", workers=1
    )
    with MilterClient(daemon.address, timeout=10) as client:
        for sender, expected in [
            ("<raise@example.org>", "reject"),
            ("<ok@example.org>", "accept"),
            ("<hang@example.org>", "reject"),  # then the daemon closes this connection
        ]:
            result = client.check(MESSAGE, sender=sender, recipients=["<b@example.net>"])
            assert result.decision == expected, (sender, result.decision)
    with MilterClient(daemon.address, timeout=10) as client:
        result = client.check(MESSAGE, sender="<ok@example.org>", recipients=["<b@example.net>"])
        assert result.decision == "accept"
    log = daemon.log()
    assert "callback mail_from raised" in log
    assert "over callback_timeout 0.5s" in log
