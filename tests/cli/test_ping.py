"""``milterkit ping``: against a real server and against sockets that misbehave."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from milterkit.cli import main
from milterkit.milter import Milter
from milterkit.protocol.constants import Action
from milterkit.runtime.server import Server
from tests.runtime.test_server_mta import inet_listener, serving

REPO = Path(__file__).resolve().parents[2]


class Headers(Milter):
    actions = Action.ADD_HEADERS | Action.QUARANTINE

    def end_of_message(self) -> None:
        self.add_header("X-Seen", "yes")


def ping(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["ping", *args])
    return status, out.getvalue(), err.getvalue()


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"inet:{port}@{host}"


@contextlib.contextmanager
def fake_filter(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A listener whose one accepted connection is handled by ``answer``."""
    sock = inet_listener()

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address(sock)
    finally:
        thread.join(10)
        sock.close()


def test_answering_milter_exit_0_with_what_it_asked_for() -> None:
    sock = inet_listener()
    where = address(sock)
    with serving(Server(Headers, sock)):
        status, out, err = ping("--socket", where)
    assert (status, err) == (0, "")
    assert f"milter at {where} answered in " in out
    assert "version 6, actions ADD_HEADERS|QUARANTINE, protocol " in out
    assert "NOCONNECT" in out  # no connect callback: the filter asked not to get CONNECT


def test_unreachable_exit_69() -> None:
    sock = inet_listener()
    where = address(sock)
    sock.close()  # nothing listens there any more
    status, out, err = ping("--socket", where)
    assert (status, out) == (69, "")
    assert err.startswith(f"milterkit ping: cannot connect to the filter at {where}: ")


def test_closed_without_answer_exit_69() -> None:
    with fake_filter(lambda conn: conn.recv(100)) as where:
        status, _, err = ping("--socket", where)
    assert status == 69
    assert err == (
        f"milterkit ping: the filter at {where} closed the connection without answering OPTNEG\n"
    )


def test_silent_filter_exit_75() -> None:
    done = threading.Event()
    with fake_filter(lambda conn: done.wait(10)) as where:
        status, _, err = ping("--socket", where, "--timeout", "0.5")
        done.set()
    assert status == 75
    assert err == f"milterkit ping: the filter at {where} did not answer OPTNEG within 0.5 s\n"


def test_garbage_answer_exit_76() -> None:
    def garbage(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"\x00\x00\x00\x01a")  # ACCEPT where OPTNEG is due

    with fake_filter(garbage) as where:
        status, _, err = ping("--socket", where)
    assert status == 76
    assert err == (
        f"milterkit ping: the filter at {where} broke the protocol: "
        "expected an OPTNEG reply, got ACCEPT\n"
    )


def test_bad_address_and_timeout_exit_64() -> None:
    status, _, err = ping("--socket", "smtp:25")
    assert status == 64
    assert err.startswith("milterkit ping: ") and "smtp:25" in err
    status, _, err = ping("--socket", "inet:1@127.0.0.1", "--timeout", "0")
    assert (status, err) == (64, "milterkit ping: --timeout must be positive, not 0\n")


def test_command_line_entry_point() -> None:
    sock = inet_listener()
    where = address(sock)
    with serving(Server(Headers, sock)):
        proc = subprocess.run(
            [sys.executable, "-m", "milterkit", "ping", "--socket", where],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": f"{REPO}/src"},
        )
    assert proc.returncode == 0, proc.stderr
    assert "version 6" in proc.stdout
