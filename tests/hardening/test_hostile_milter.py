"""The client and ``milterkit check`` against a hostile milter (issue 16 item 6).

A raw-socket milter on 127.0.0.1 answers every command with CONTINUE and
misbehaves at end of message: PROGRESS forever, a packet announcing 1 GiB, a
flood of ADDHEADER, terminal escape sequences and invalid UTF-8 in every
string it controls, a header name that is no RFC 5322 field name. The
library client and the CLI (a subprocess, its peak RSS taken from wait4)
must end in bounded time and memory, print only escaped text and exit with
the status that names what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from milterkit.cli.display import json_safe, printable, write_atomically
from milterkit.client import MilterClient, MilterProtocolError, MilterTimeout
from milterkit.client.limits import DEFAULT_MAX_REPLY_BYTES, is_field_name
from tests.hardening.conftest import REPO, frame

MSG = b"From: <alice@example.org>\r\nTo: <bob@example.net>\r\nSubject: hi\r\n\r\nHello\r\n"
#: Reply deadline given to the client against PROGRESS, sent 5x as often.
TIMEOUT = 1.0
#: Deadline in the other cases: never what ends them, even on a loaded machine.
SLOW_TIMEOUT = 120.0
PROGRESS_EVERY = 0.2
#: How long the PROGRESS milter keeps going; a client that is not stopped by its
#: deadline takes at least this long, far over the bound the test asserts.
PROGRESS_FOR = 90.0
#: Bound on the wall time of one hostile run (generous for a loaded machine).
ELAPSED_BOUND = 30.0
#: Peak RSS bound of the CLI process: the 64 MiB reply cap plus the interpreter.
CLI_RSS_BOUND_KIB = 160 * 1024
ESC = b"\x1b"

EOM_SCRIPTS: dict[str, Callable[[socket.socket, threading.Event], None]] = {}


def at_eom(name: str) -> Callable[[Callable[[socket.socket, threading.Event], None]], None]:
    def register(script: Callable[[socket.socket, threading.Event], None]) -> None:
        EOM_SCRIPTS[name] = script

    return register


@at_eom("progress")
def _progress(sock: socket.socket, stop: threading.Event) -> None:
    deadline = time.monotonic() + PROGRESS_FOR
    while time.monotonic() < deadline and not stop.wait(PROGRESS_EVERY):
        sock.sendall(frame(b"p"))


@at_eom("huge")
def _huge(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(struct.pack(">I", 2**30) + b"h")  # ADDHEADER announcing 1 GiB
    chunk = b"x" * (1 << 20)
    for _ in range(200):
        if stop.is_set():
            return
        sock.sendall(chunk)


@at_eom("flood")
def _flood(sock: socket.socket, stop: threading.Event) -> None:
    packet = frame(b"h", b"X-Flood\0" + b"v" * 60000 + b"\0")
    for _ in range(300 * 1024 * 1024 // len(packet)):
        if stop.is_set():
            return
        sock.sendall(packet)
    sock.sendall(frame(b"c"))


@at_eom("many")
def _many(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(frame(b"h", b"X-A\0v\0") * 20000 + frame(b"c"))


@at_eom("escapes")
def _escapes(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(
        frame(b"h", b"X-Evil\0" + ESC + b"[31mred \xff\0")
        + frame(b"e", b"<" + ESC + b"[2Jevil@example.org>\0")
        + frame(b"q", ESC + b"]0;owned" + b"\x07 \xfe\x9b2J\0")
        + frame(b"y", b"550 5.7.1 " + ESC + b"[5mblink \xff\0")
    )


@at_eom("badname")
def _badname(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(frame(b"h", b"X-" + ESC + b"[31mEvil\0v\0") + frame(b"c"))


def optneg_reply(mode: str) -> bytes:
    payload = struct.pack(">III", 6, 0x1FF, 0)
    if mode == "escapes":  # macro names the client prints in its negotiation lines
        payload += struct.pack(">I", 0) + b"j " + ESC + b"[31m{evil}\xff\0"
    return frame(b"O", payload)


class HostileMilter:
    """Threads on 127.0.0.1: CONTINUE to everything, then the EOM script of ``mode``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"inet:{self.listener.getsockname()[1]}@127.0.0.1"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.accepted: list[socket.socket] = []
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.accepted.append(sock)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                for code in _commands(sock):
                    if code == b"O":
                        sock.sendall(optneg_reply(self.mode))
                    elif code == b"E":
                        EOM_SCRIPTS[self.mode](sock, self.stop)
                    elif code == b"Q":
                        return
                    elif code not in b"DA":
                        sock.sendall(frame(b"c"))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        # a thread blocked in sendall()/recv() on a client that stopped reading but
        # kept its socket would outlive the test (and make later forks unsafe)
        for sock in self.accepted:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(10)


def _commands(sock: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        while len(buf) >= 5 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            length = struct.unpack(">I", buf[:4])[0]
            yield buf[4:5]
            buf = buf[4 + length :]
        data = sock.recv(65536)
        if not data:
            return
        buf += data


@pytest.fixture
def hostile() -> Iterator[Callable[[str], HostileMilter]]:
    started: list[HostileMilter] = []

    def start(mode: str) -> HostileMilter:
        milter = HostileMilter(mode)
        started.append(milter)
        return milter

    yield start
    for milter in started:
        milter.close()


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "msg.eml"
    path.write_bytes(MSG)
    return path


# ------------------------------------------------------------- the library


def lib_check(address: str, timeout: float = SLOW_TIMEOUT) -> tuple[float, Exception | None]:
    started = time.monotonic()
    try:
        with MilterClient(address, timeout=timeout) as client:
            client.check(MSG)
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_progress_does_not_extend_the_reply_deadline(hostile: Callable[..., HostileMilter]) -> None:
    elapsed, error = lib_check(hostile("progress").address, TIMEOUT)
    assert isinstance(error, MilterTimeout), error
    assert f"took longer than {TIMEOUT:g} s to reply at EOM" in str(error)
    assert elapsed < ELAPSED_BOUND


def test_reply_packet_over_the_negotiated_size_is_refused(
    hostile: Callable[..., HostileMilter],
) -> None:
    _, error = lib_check(hostile("huge").address)
    assert isinstance(error, MilterProtocolError), error
    assert "announces a payload of 1073741823 bytes, over the limit of 65535" in str(error)


def test_reply_bytes_per_message_are_capped(hostile: Callable[..., HostileMilter]) -> None:
    _, error = lib_check(hostile("flood").address)
    assert isinstance(error, MilterProtocolError), error
    assert f"more than {DEFAULT_MAX_REPLY_BYTES} bytes of replies" in str(error)
    assert "(max_reply_bytes)" in str(error)


def test_modification_count_is_capped(hostile: Callable[..., HostileMilter]) -> None:
    _, error = lib_check(hostile("many").address)
    assert isinstance(error, MilterProtocolError), error
    assert "more than 10000 modifications for one message (max_modifications)" in str(error)


def test_caps_are_configurable(hostile: Callable[..., HostileMilter]) -> None:
    address = hostile("many").address
    with MilterClient(address, timeout=30, max_modifications=None) as client:
        assert len(client.check(MSG).modifications) == 20000
    with (
        pytest.raises(MilterProtocolError, match=r"more than 1000 bytes of replies"),
        MilterClient(address, timeout=30, max_reply_bytes=1000) as client,
    ):
        client.check(MSG)


def test_header_name_must_be_an_rfc5322_field_name(hostile: Callable[..., HostileMilter]) -> None:
    _, error = lib_check(hostile("badname").address)
    assert isinstance(error, MilterProtocolError), error
    assert "header name b'X-\\x1b[31mEvil', which is not an RFC 5322 field name" in str(error)


def test_field_names() -> None:
    assert is_field_name(b"X-Spam_Score.1")
    for bad in (b"", b"X Y", b"X:Y", b"X\x1bY", b"X\x7f", "Ä".encode(), b"X\r\n"):
        assert not is_field_name(bad), bad


def test_printable_escapes_controls_and_invalid_utf8() -> None:
    evil = (ESC + b"[31m\xff" + "é".encode() + b"\xc2\x9b\r\n").decode("utf-8", "surrogateescape")
    assert printable(evil) == "\\x1b[31m\\xffé\\x9b\\x0d\\x0a"
    assert printable("plain é ünïcode") == "plain é ünïcode"
    assert printable("\u202eright-to-left") == "\\u202eright-to-left"
    text = json.dumps({"v": evil + "\u202e"}, ensure_ascii=False)
    safe = json_safe(text)
    assert safe.isascii() or all(ch.isprintable() or ch == "\n" for ch in safe)
    assert json.loads(safe) == json.loads(text)


# ------------------------------------------------------------------ the CLI


#: Runs the CLI and writes its peak RSS (wait4) to a file. A small process of
#: its own forks the CLI: the RSS of a process forked straight from pytest
#: would count pytest's pages too.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdout: int | None = None
) -> tuple[int, bytes, bytes, int, float]:
    """``milterkit check`` as a subprocess: status, stdout, stderr, peak RSS (KiB), seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path, rss_path = (Path(tmp) / name for name in ("out", "err", "rss"))
        started = time.monotonic()
        with open(out_path, "wb") as out_file, open(err_path, "wb") as err_file:
            command = [sys.executable, "-m", "milterkit", "check", *args]
            done = subprocess.run(
                [sys.executable, "-c", _MEASURE, str(rss_path), *command],
                stdout=out_file if stdout is None else stdout,
                stderr=err_file,
                env={**os.environ, "PYTHONPATH": f"{REPO}/src", **(env or {})},
                timeout=300,
                check=False,
            )
        elapsed = time.monotonic() - started
        rss = int(rss_path.read_text())
        return done.returncode, out_path.read_bytes(), err_path.read_bytes(), rss, elapsed


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("progress", 75, b"took longer than 1 s to reply at EOM"),
        ("huge", 76, b"over the limit of 65535"),
        ("flood", 76, b"(max_reply_bytes)"),
        ("many", 76, b"(max_modifications)"),
        ("badname", 76, b"b'X-\\x1b[31mEvil', which is not an RFC 5322 field name"),
    ],
)
def test_cli_against_hostile_milter_is_bounded(
    hostile: Callable[..., HostileMilter], eml: Path, mode: str, status: int, message: bytes
) -> None:
    milter = hostile(mode)
    out_file = eml.with_name("out.eml")
    timeout = TIMEOUT if mode == "progress" else SLOW_TIMEOUT
    code, out, err, rss, elapsed = run_cli(
        "--socket", milter.address, "--timeout", str(timeout), "--apply", str(out_file), str(eml)
    )
    print(f"check vs {mode}: exit {code} in {elapsed:.1f}s, peak RSS {rss} KiB")
    assert code == status, err
    assert message in err, err
    assert ESC not in out + err
    assert not out_file.exists()
    if mode == "progress":
        assert elapsed < ELAPSED_BOUND
    assert rss < CLI_RSS_BOUND_KIB


@pytest.mark.parametrize("encoding", ["utf-8", "ascii:strict"])
@pytest.mark.parametrize("as_json", [False, True])
def test_cli_escapes_what_the_milter_chose(
    hostile: Callable[..., HostileMilter], eml: Path, encoding: str, as_json: bool
) -> None:
    milter = hostile("escapes")
    out_file = eml.with_name("out.eml")
    args = ["--socket", milter.address, "--apply", str(out_file), str(eml)]
    code, out, err, _, _ = run_cli(
        *args, *(["--json"] if as_json else []), env={"PYTHONIOENCODING": encoding}
    )
    assert (code, err) == (1, b"")  # the EOM reply code is a 550: rejected
    assert ESC not in out and b"\x9b" not in out and b"\xc2\x9b" not in out and b"\x07" not in out
    if as_json:
        data = json.loads(out)
        assert data["quarantine_reason"].startswith("\x1b]0;owned")  # the value, losslessly
        assert data["smtp_reply"].startswith("550 5.7.1 \x1b[5mblink")
        return
    text = out.decode("ascii")
    assert "macros[0]    j \\x1b[31m{evil}\\xff" in text
    assert "quarantine   \\x1b]0;owned\\x07 \\xfe\\x9b2J" in text
    assert "smtp reply   550 5.7.1 \\x1b[5mblink \\xff" in text
    assert "add header X-Evil: '\\x1b[31mred \\udcff'" in text
    assert "change sender to <\\x1b[2Jevil@example.org>" in text


def test_cli_output_error_is_not_a_decision(
    hostile: Callable[..., HostileMilter], eml: Path
) -> None:
    milter = hostile("escapes")
    with open("/dev/full", "wb") as full:
        code, _, err, _, _ = run_cli("--socket", milter.address, str(eml), stdout=full.fileno())
    assert code == 74, err
    assert b"cannot write the report to standard output" in err
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: EPIPE
    try:
        code, _, err, _, _ = run_cli("--socket", milter.address, str(eml), stdout=write_end)
    finally:
        os.close(write_end)
    assert code == 74, err


def test_apply_replaces_a_symlink_instead_of_writing_through_it(
    hostile: Callable[..., HostileMilter], eml: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "out.eml"
    link.symlink_to(victim)
    milter = hostile("escapes")
    code, _, err, _, _ = run_cli("--socket", milter.address, "--apply", str(link), str(eml))
    assert code == 1, err
    assert victim.read_bytes() == b"precious\n"
    assert not link.is_symlink()
    assert b"X-Evil: \x1b[31mred \xff" in link.read_bytes()  # the file keeps the real bytes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.eml")] == []


def test_apply_into_a_missing_directory_fails_with_its_own_status(
    hostile: Callable[..., HostileMilter], eml: Path, tmp_path: Path
) -> None:
    milter = hostile("escapes")
    target = tmp_path / "no" / "such" / "out.eml"
    code, out, err, _, _ = run_cli("--socket", milter.address, "--apply", str(target), str(eml))
    assert code == 73
    assert f"cannot write {str(target)!r}: No such file or directory".encode() in err
    assert out == b""


def test_write_atomically_uses_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomically(str(tmp_path / "f"), b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"data"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
