"""Tests for the sd_notify client against real datagram sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from milterkit.runtime import systemd


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in a temp dir advertised as $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_is_received(receiver: socket.socket) -> None:
    assert systemd.notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"


def test_helpers_send_expected_states(receiver: socket.socket) -> None:
    assert systemd.ready("serving 4 workers")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving 4 workers"
    assert systemd.status("draining")
    assert receiver.recv(4096) == b"STATUS=draining"
    assert systemd.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"milterkit-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_unsupported_or_dead_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    assert systemd.notify("READY=1") is False


def test_unset_environment(receiver: socket.socket) -> None:
    assert systemd.notify("READY=1", unset_environment=True) is True
    assert receiver.recv(4096) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ
    assert systemd.notify("STATUS=x") is False
