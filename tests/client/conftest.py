"""Fixtures: a scripted milter listening on unix, inet or inet6."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.client.milter_server import MilterServer, Script, has_ipv6

Serve = Callable[..., tuple[str, MilterServer]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(script, family="unix"|"inet"|"inet6") -> (address, server)``."""
    servers: list[MilterServer] = []

    def start(script: Script | None = None, family: str = "unix") -> tuple[str, MilterServer]:
        server = MilterServer(script or Script())
        servers.append(server)
        if family == "unix":
            address = server.listen_unix(str(tmp_path / f"m{len(servers)}.sock"))
        elif family == "inet":
            address = server.listen_inet("127.0.0.1")
        else:
            if not has_ipv6():
                pytest.skip("no IPv6 loopback")
            address = server.listen_inet("::1")
        return address, server

    yield start
    for server in servers:
        server.stop()
