"""MACRO packets cannot exhaust a worker's memory (issue 16 item 2).

The macro store keeps only real stage letters and caps the macros held per
connection in number and bytes; a breach closes that connection with a log
line naming the cap. A negotiated connection between messages is closed after
the (shorter) idle timeout. The live test floods one worker from 4 connections
and bounds its RSS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from milterkit.milter import Milter
from milterkit.protocol import FilterConnection, RemoteProtocolError
from milterkit.protocol.events import NEED_DATA
from milterkit.protocol.macros import DEFAULT_MAX_MACRO_BYTES, DEFAULT_MAX_MACROS, MacroStore
from milterkit.protocol.messages import OptNeg
from milterkit.session import MilterSession
from tests.hardening.conftest import (
    MAIL,
    MILTERS,
    OPTNEG_V6,
    REPO,
    Daemon,
    Raw,
    frame,
    rss_kib,
    scale,
    wait_for,
)

#: Bytes of MACRO packets each flooding connection sends.
FLOOD_BYTES = scale(16, 64) * 1024 * 1024
CONNECTIONS = 4
#: The worker's RSS may grow by at most this much while 4 connections flood it
#: (before the caps, 16 MiB per connection held 146 MiB; 4 took 23 -> 697 MB).
RSS_BOUND_KIB = 40 * 1024


def pairs_payload(stage: bytes, count: int, value: bytes = b"v") -> bytes:
    return stage + b"".join(b"m%d\0%s\0" % (i, value) for i in range(count))


def negotiated_connection() -> FilterConnection:
    conn = FilterConnection()
    conn.receive_data(OPTNEG_V6)
    offer = conn.next_event()
    assert isinstance(offer, OptNeg)
    conn.negotiate()
    return conn


# ------------------------------------------------------------------ the store


def test_only_real_stage_letters_are_kept() -> None:
    store = MacroStore()
    real = b"CHMRTLNBEU"  # in protocol order: no stage clears one set before it
    for stage in range(256):
        if stage not in real:
            store.adopt(pairs_payload(bytes((stage,)), 2))
    assert store.held == (0, 0)
    for stage in real:
        store.adopt(pairs_payload(bytes((stage,)), 2))
    assert sorted(store._stages) == sorted(b"CHMRTLNBEU")
    assert store.held == (20, 10 * 2 * len(b"m0\0v\0"))


def test_a_stage_replaced_or_cleared_is_no_longer_counted() -> None:
    store = MacroStore()
    store.adopt(pairs_payload(b"C", 3))
    store.adopt(pairs_payload(b"M", 5))
    store.adopt(pairs_payload(b"R", 7))
    assert store.held[0] == 15
    store.adopt(pairs_payload(b"M", 1))  # replaces M, clears R
    assert store.held[0] == 4
    store.clear_message()
    assert store.held[0] == 3
    store.clear()
    assert store.held == (0, 0)


def test_count_cap_over_all_stages_names_the_limit() -> None:
    store = MacroStore(max_macros=10)
    store.adopt(pairs_payload(b"C", 6))
    store.adopt(pairs_payload(b"M", 4))
    with pytest.raises(RemoteProtocolError, match=r"11 macros, over the limit of 10 .*max_macros"):
        store.adopt(pairs_payload(b"R", 1))


def test_count_cap_refuses_one_large_packet_before_splitting_it() -> None:
    store = MacroStore(max_macros=10)
    with pytest.raises(RemoteProtocolError, match=r"a MACRO packet of 600 macros.*max_macros"):
        store.adopt(pairs_payload(b"C", 600))
    assert store.held == (0, 0)
    with pytest.raises(RemoteProtocolError, match=r"would hold 11 macros.*max_macros"):
        store.adopt(pairs_payload(b"C", 11))  # a small packet: caught by the totals


def test_byte_cap_names_the_limit() -> None:
    store = MacroStore(max_macro_bytes=1000)
    store.adopt(pairs_payload(b"C", 1, b"x" * 500))
    with pytest.raises(
        RemoteProtocolError, match=r"would hold 1008 bytes, over the limit of 1000 per connection"
    ):
        store.adopt(pairs_payload(b"H", 1, b"x" * 500))
    with pytest.raises(
        RemoteProtocolError,
        match=r"a MACRO packet of 1104 bytes, over the limit of 1000 per connection .max_macro_",
    ):
        store.adopt(pairs_payload(b"M", 1, b"x" * 1100))


def test_a_repeated_stage_replaces_its_own_macros_in_the_totals() -> None:
    """A MACRO packet per header (the same stage again) counts only the newest."""
    store = MacroStore(max_macros=14)
    store.adopt(pairs_payload(b"C", 5))
    for _ in range(20):
        store.adopt(pairs_payload(b"L", 7))
    assert store.held[0] == 12
    store.adopt(pairs_payload(b"U", 2))  # UNKNOWN's stage stands outside the order
    store.adopt(pairs_payload(b"U", 2))
    assert store.held[0] == 14
    assert store.stage(ord("L")) == {b"m%d" % i: b"v" for i in range(7)}
    with pytest.raises(RemoteProtocolError, match=r"would hold 15 macros.*max_macros"):
        store.adopt(pairs_payload(b"L", 8))


def test_caps_can_be_turned_off() -> None:
    store = MacroStore(max_macros=None, max_macro_bytes=None)
    store.adopt(pairs_payload(b"C", DEFAULT_MAX_MACROS + 1, b"x" * 300))
    assert store.held[0] == DEFAULT_MAX_MACROS + 1
    assert store.held[1] > DEFAULT_MAX_MACRO_BYTES


def test_filter_connection_refuses_over_cap_and_ignores_unknown_stages() -> None:
    conn = negotiated_connection()
    conn.receive_data(frame(b"D", pairs_payload(b"\x00", 5000)))
    conn.receive_data(frame(b"D", pairs_payload(b"Z", 5000)))
    conn.receive_data(frame(b"D", pairs_payload(b"C", 2)))
    assert conn.next_event() is NEED_DATA
    assert conn.macros.held[0] == 2
    conn.receive_data(frame(b"D", pairs_payload(b"H", DEFAULT_MAX_MACROS)))
    with pytest.raises(RemoteProtocolError, match="max_macros"):
        conn.next_event()


def test_macro_while_a_reply_is_outstanding_is_refused_before_it_is_split() -> None:
    conn = negotiated_connection()
    conn.receive_data(frame(b"C", b"h\x004\x12\x34127.0.0.1\x00"))
    conn.next_event()
    conn.receive_data(frame(b"D", pairs_payload(b"C", 10)))
    with pytest.raises(RemoteProtocolError, match="MACRO while the reply to CONNECT"):
        conn.next_event()


class SmallCaps(Milter):
    max_macros = 3
    max_macro_bytes = None


def test_milter_class_attributes_set_the_caps() -> None:
    session = MilterSession(SmallCaps)
    assert (session.conn.macros.max_macros, session.conn.macros.max_macro_bytes) == (3, None)
    session.data_received(OPTNEG_V6)
    session.data_received(frame(b"D", pairs_payload(b"C", 3)))
    with pytest.raises(RemoteProtocolError, match="4 macros, over the limit of 3"):
        session.data_received(frame(b"D", pairs_payload(b"H", 1)))


# ------------------------------------------------------------ a live daemon


def flood_within_caps(daemon: Daemon, errors: list[str]) -> None:
    """FLOOD_BYTES of MACRO packets over all 256 stage bytes, none over a cap.

    Unknown stages get 60 KiB packets of distinct small pairs (ignored: no storage); the
    10 real stages get 100 pairs each, so the connection stays within the caps
    and must still answer MAIL afterwards.
    """
    try:
        raw = Raw(daemon.sockaddr, timeout=120)
        raw.hello()
        tiny = frame(b"D", pairs_payload(b"?", 6500))  # 6500 distinct names, ~60 KiB
        real = {s: frame(b"D", pairs_payload(bytes((s,)), 100, b"x" * 200)) for s in b"CHMRTLNBEU"}
        sent = 0
        while sent < FLOOD_BYTES:
            for stage in range(256):
                packet = real.get(stage) or tiny[:5] + bytes((stage,)) + tiny[6:]
                raw.send(packet)
                sent += len(packet)
        raw.send(MAIL)
        code, _ = raw.reply()
        if code != b"c":
            errors.append(f"MAIL after the flood answered {code!r}")
        raw.close()
    except Exception as exc:  # reported by the test
        errors.append(f"{type(exc).__name__}: {exc}")


def test_macro_flood_keeps_worker_memory_bounded(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("Hardened", workers=1)
    (worker,) = daemon.workers()
    warm = Raw(daemon.sockaddr)
    warm.hello()
    warm.close()
    before = rss_kib(worker)
    errors: list[str] = []
    threads = [
        threading.Thread(target=flood_within_caps, args=(daemon, errors))
        for _ in range(CONNECTIONS)
    ]
    for thread in threads:
        thread.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(worker))
        threads[0].join(0.05)
    for thread in threads:
        thread.join()
    assert errors == []
    print(
        f"macro flood: {CONNECTIONS} x {FLOOD_BYTES >> 20} MiB, worker RSS before {before} KiB, "
        f"peak {peak} KiB, growth {peak - before} KiB (bound {RSS_BOUND_KIB} KiB)"
    )
    assert peak - before < RSS_BOUND_KIB


def test_macro_cap_breach_closes_only_that_connection(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory("Hardened", workers=1)
    over_count = Raw(daemon.sockaddr)
    over_count.hello()
    over_count.send(frame(b"D", pairs_payload(b"M", DEFAULT_MAX_MACROS + 1)))
    over_bytes = Raw(daemon.sockaddr)
    over_bytes.hello()
    for stage in b"MRTNE":
        over_bytes.send(frame(b"D", pairs_payload(stage.to_bytes(1, "big"), 1, b"x" * 60000)))
    assert over_count.closed_within(15)
    assert over_bytes.closed_within(15)
    good = Raw(daemon.sockaddr)
    good.hello()
    good.send(MAIL)
    assert good.reply()[0] == b"c"
    good.close()
    log = daemon.log()
    assert wait_for(lambda: "max_macro_bytes" in daemon.log(), 10), log
    assert f"over the limit of {DEFAULT_MAX_MACROS} per connection (max_macros)" in log


def test_idle_timeout_between_messages_is_shorter(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("Hardened", "--idle-timeout", "1", "--timeout", "60", workers=1)
    between = Raw(daemon.sockaddr)
    between.hello()
    inside = Raw(daemon.sockaddr)
    inside.hello()
    inside.send(MAIL)
    assert inside.reply()[0] == b"c"
    assert between.closed_within(30)
    assert wait_for(lambda: "between commands, outside a message" in daemon.log(), 10)
    # the connection inside a message is under --timeout (60 s): still served
    inside.send(frame(b"R", b"<b@example.net>\0"))
    assert inside.reply()[0] == b"c"
    inside.close()


def test_idle_timeout_must_be_positive(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "milterkit",
            "run",
            f"{MILTERS}:Hardened",
            "--socket",
            f"unix:{tmp_path}/s",
            "--idle-timeout",
            "0",
            "--log",
            "console",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}"},
    )
    assert done.returncode == 78, done
    assert "invalid idle timeout 0.0: must be positive" in done.stdout + done.stderr


def test_server_default_idle_timeout_is_above_sendmail_command_timeout() -> None:
    from milterkit.runtime.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, Server

    assert 3600 < DEFAULT_IDLE_TIMEOUT < DEFAULT_TIMEOUT
    with socket.socket() as listener:
        server = Server(Milter, listener, timeout=100)
        assert server.idle_timeout == 100  # never longer than the overall timeout
        with pytest.raises(ValueError, match="idle_timeout must be positive"):
            Server(Milter, listener, idle_timeout=0)
