"""Hostile input at a live daemon while good traffic flows.

One daemon (2 workers, read timeout 2 s, idle timeout 5 s, 64 connections)
serves a milter that collects bodies. Background threads run good messages
through :class:`MilterClient` the whole time. Every hostile case must end with
the daemon closing (or correctly answering) the connection, a log line naming
the reason, zero errors for the good traffic, and bounded worker memory.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.hardening.conftest import (
    CONNECT,
    EOH,
    HELO,
    LONG,
    MAIL,
    OPTNEG_V6,
    RCPT,
    Daemon,
    GoodTraffic,
    Raw,
    frame,
    rss_kib,
    scale,
    wait_for,
)

READ_TIMEOUT = 2.0
IDLE_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
#: Worker RSS may grow by at most this much over the hostile phase.
RSS_BOUND_KIB = 24 * 1024

Case = Callable[[Daemon], None]


def expect_closed(raw: Raw, within: float = 5.0) -> None:
    try:
        assert raw.closed_within(within), "the daemon did not close the connection"
    finally:
        raw.close()


def send_then_closed(data: bytes, *, hello: bool = False) -> Case:
    def case(daemon: Daemon) -> None:
        raw = Raw(daemon.sockaddr)
        if hello:
            raw.hello()
        try:
            raw.send(data)
        except (BrokenPipeError, ConnectionResetError):
            raw.close()
            return
        expect_closed(raw)

    return case


def truncated_then_close(daemon: Daemon) -> None:
    raw = Raw(daemon.sockaddr)
    raw.hello()
    raw.send(frame(b"M", b"<a@example.org>\x00")[:9])  # header and 4 payload bytes
    time.sleep(0.1)
    raw.close()


def optneg_nonsense_accepted(daemon: Daemon) -> None:
    """Version 0xFFFFFFFF and all flag bits: answered with a sane v6 reply, then usable."""
    for version, actions, protocol in (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (7, 0x1FF, 0xFFFFFFFF),
        (6, 0x1FF, 0),
    ):
        raw = Raw(daemon.sockaddr)
        raw.send(frame(b"O", struct.pack(">III", version, actions, protocol)))
        code, payload = raw.reply()
        assert code == b"O"
        got_version, got_actions, _ = struct.unpack(">III", payload[:12])
        assert 2 <= got_version <= 6
        assert got_actions & ~actions == 0, "asked for actions the MTA did not offer"
        raw.close()


def odd_macros_tolerated(daemon: Daemon) -> None:
    """Macro packets with an odd string count or no pairs are harmless (no reply, no close)."""
    raw = Raw(daemon.sockaddr)
    raw.send(OPTNEG_V6)
    assert raw.reply()[0] == b"O"
    raw.send(frame(b"D", b"Cj\x00"))  # a name without a value
    raw.send(frame(b"D", b"C"))  # stage only
    raw.send(frame(b"D", b"Z{x}\x00y\x00{z}\x00"))  # unknown stage, odd count
    raw.send(frame(b"D"))  # empty
    raw.send(CONNECT)
    assert raw.final() == b"c"
    raw.send(HELO)
    assert raw.final() == b"c"
    raw.close()


def huge_header_count(daemon: Daemon) -> None:
    """1500 headers pipelined: 1000 continues, then the error decision, then a close."""
    raw = Raw(daemon.sockaddr)
    raw.hello()
    raw.send(MAIL + RCPT)
    assert raw.final() == b"c"
    assert raw.final() == b"c"
    headers = b"".join(frame(b"L", b"X-Many\x00%d\x00" % i) for i in range(1500))
    raw.send(headers)
    codes = [raw.final() for _ in range(1001)]
    assert codes[:1000] == [b"c"] * 1000
    assert codes[1000] == b"t"
    expect_closed(raw)


def huge_header_bytes(daemon: Daemon) -> None:
    """Headers of 60 000 bytes each: over 1 MiB in total gets the error decision."""
    raw = Raw(daemon.sockaddr)
    raw.hello()
    raw.send(MAIL + RCPT)
    raw.final()
    raw.final()
    value = b"v" * 60000
    for i in range(40):
        raw.send(frame(b"L", b"X-Big\x00" + value + b"\x00"))
        code = raw.final()
        if code != b"c":
            assert code == b"t"
            assert i * 60006 >= 1024 * 1024 - 60006
            raw.close()
            return
    raise AssertionError("40 headers of 60 kB were all accepted")


def body_without_end(daemon: Daemon) -> None:
    """Body chunks without EOM: collection stops at max_body_bytes (4 MiB) with tempfail."""
    raw = Raw(daemon.sockaddr)
    raw.hello()
    raw.send(MAIL + RCPT + EOH)
    for _ in range(3):
        assert raw.final() == b"c"
    chunk = frame(b"B", b"x" * 65535)
    for i in range(200):  # up to 12.5 MiB
        try:
            raw.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        code = raw.final()
        if code != b"c":
            assert code == b"t"
            assert i * 65535 <= 4 * 1024 * 1024
            break
    else:
        raise AssertionError("a body without end was collected without limit")
    raw.close()


def slowloris(daemon: Daemon) -> None:
    """One byte at a time, faster than the read timeout: still cut off after it."""
    raw = Raw(daemon.sockaddr)
    raw.hello()
    data = frame(b"M", b"<" + b"s" * 200 + b"@example.org>\x00")
    start = time.monotonic()
    try:
        for byte in data:
            raw.send(bytes([byte]))
            time.sleep(READ_TIMEOUT / 5)
            if time.monotonic() - start > READ_TIMEOUT * 3:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    expect_closed(raw, 1.0)
    assert time.monotonic() - start < READ_TIMEOUT * 3


def never_speaks(daemon: Daemon) -> None:
    raw = Raw(daemon.sockaddr)
    start = time.monotonic()
    expect_closed(raw, READ_TIMEOUT + 3)
    assert time.monotonic() - start >= READ_TIMEOUT - 0.5


def negotiates_then_idles(daemon: Daemon) -> None:
    raw = Raw(daemon.sockaddr)
    raw.hello()
    expect_closed(raw, IDLE_TIMEOUT + 3)


def flood(daemon: Daemon, good: GoodTraffic, count: int) -> None:
    """``count`` connections at once; they hold slots, then go away; good traffic resumes."""
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(daemon.sockaddr)  # type: ignore[arg-type]
        assert err in (0, errno.EINPROGRESS, errno.EAGAIN), errno.errorcode.get(err)
        socks.append(sock)
    time.sleep(READ_TIMEOUT + 1.5)
    for sock in socks:
        sock.close()
    before = good.count()
    assert wait_for(lambda: good.count() >= before + 20, 30), "good traffic did not resume"


# expected reason in the daemon log for each case that the daemon closes
CASES: list[tuple[str, Case, str | None]] = [
    ("length 0", send_then_closed(b"\x00\x00\x00\x00O"), "packet length 0"),
    (
        "length over the limit",
        send_then_closed(b"\x00\x10\x00\x00B" + b"x" * 100),
        "over the limit",
    ),
    ("length 0xFFFFFFFF", send_then_closed(b"\xff\xff\xff\xffB"), "over the limit"),
    ("truncated packet then close", truncated_then_close, "inside a packet"),
    ("unknown command first", send_then_closed(frame(b"Z")), "unknown command byte 0x5a"),
    (
        "unknown command later",
        send_then_closed(frame(b"\x00"), hello=True),
        "unknown command byte 0x00",
    ),
    (
        "reply code sent to the filter",
        send_then_closed(frame(b"c"), hello=True),
        "unknown command byte 0x63",
    ),
    ("reply before OPTNEG", send_then_closed(frame(b"a")), "unknown command byte 0x61"),
    ("MAIL before OPTNEG", send_then_closed(MAIL), "expected OPTNEG first"),
    ("RCPT before MAIL", send_then_closed(RCPT, hello=True), "RCPT before MAIL"),
    ("EOM before MAIL", send_then_closed(frame(b"E"), hello=True), "before MAIL"),
    ("second CONNECT", send_then_closed(CONNECT, hello=True), "second CONNECT"),
    ("second OPTNEG", send_then_closed(OPTNEG_V6, hello=True), "OPTNEG"),
    ("OPTNEG version 0", send_then_closed(frame(b"O", bytes(12))), "version 0"),
    (
        "OPTNEG version 1",
        send_then_closed(frame(b"O", struct.pack(">III", 1, 0xF, 0x3F))),
        "version 1",
    ),
    ("OPTNEG too short", send_then_closed(frame(b"O", b"\x00\x06")), "at least 12 needed"),
    ("OPTNEG nonsense accepted", optneg_nonsense_accepted, None),
    (
        "OPTNEG without the needed actions",
        send_then_closed(frame(b"O", struct.pack(">III", 7, 0, 0))),
        "needs actions the MTA did not offer",
    ),
    ("macro odd counts", odd_macros_tolerated, None),
    (
        "macro not NUL-terminated",
        send_then_closed(frame(b"D", b"Cxxxx"), hello=True),
        "not NUL-terminated",
    ),
    ("CONNECT garbage", send_then_closed(frame(b"C", b"\x01\x02")), None),
    ("data after QUIT", send_then_closed(frame(b"Q") + HELO, hello=True), None),
    ("random bytes", send_then_closed(bytes(range(256)) * 4), None),
    ("huge header count", huge_header_count, "max_headers=1000"),
    ("huge header bytes", huge_header_bytes, "max_header_bytes="),
    ("body without end", body_without_end, "max_body_bytes="),
    ("slowloris", slowloris, "stuck in the middle of a packet"),
    ("never speaks", never_speaks, "no option negotiation"),
    ("negotiates then idles", negotiates_then_idles, "idle timeout"),
]


def test_hostile_inputs_with_good_traffic(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(
        "Hardened",
        "--read-timeout",
        str(READ_TIMEOUT),
        "--timeout",
        str(IDLE_TIMEOUT),
        "--max-connections",
        str(MAX_CONNECTIONS),
    )
    good = GoodTraffic(daemon.address, threads=2).start()
    try:
        assert wait_for(lambda: good.count() >= 50, 20), f"no good traffic: {good.errors}"
        workers = daemon.workers()
        rss_before = {pid: rss_kib(pid) for pid in workers}

        rounds = scale(1, 20)
        failures: list[str] = []
        lock = threading.Lock()

        def run(name: str, case: Case) -> None:
            try:
                case(daemon)
            except Exception as exc:  # collected, reported together below
                with lock:
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")

        tried = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(rounds):
                futures = [pool.submit(run, name, case) for name, case, _ in CASES]
                for future in futures:
                    future.result(timeout=120)
                tried += len(CASES)
        assert not failures, "\n".join(failures)

        flood(daemon, good, scale(1000, 1000))
        tried += 1000
        assert daemon.workers() == workers, "a worker died during the hostile phase"

        ok_before_end = good.count()
        assert wait_for(lambda: good.count() >= ok_before_end + 50, 20)
        rss_after = {pid: rss_kib(pid) for pid in workers}
    finally:
        good.stop()

    assert good.errors == [], good.errors[:10]
    log = daemon.log()
    missing = [name for name, _, reason in CASES if reason and reason not in log]
    assert not missing, f"no log line for {missing}"
    for line in log.splitlines():
        if "closing connection" in line:
            assert "[w" in line, line  # every close names the session
    growth = {pid: rss_after[pid] - rss_before[pid] for pid in workers}
    print(
        f"hostile: {tried} hostile connections in {rounds} round(s), good messages {good.count()}, "
        f"good errors {len(good.errors)}, RSS before {rss_before} after {rss_after} KiB"
        + (" [long]" if LONG else "")
    )
    assert all(g < RSS_BOUND_KIB for g in growth.values()), growth
