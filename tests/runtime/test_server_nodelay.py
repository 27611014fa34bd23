"""TCP_NODELAY on every accepted MTA connection, on both event loops.

Without it, a reply written right after another small one waits for the
MTA's delayed ACK: about 40 ms per message with Postfix.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket

import pytest

from milterkit import Milter
from milterkit.runtime.server import Server, new_event_loop

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop missing")),
]


class Quiet(Milter):
    """Overrides nothing; the test only needs a connection."""


async def _nodelay_of_accepted(family: int, host: str) -> int:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    server = Server(Quiet, listener)
    server.start()
    client = socket.socket(family, socket.SOCK_STREAM)
    # A blocking connect to a listening local socket completes in the kernel. Not
    # loop.sock_connect: uvloop resolves the address on libuv's thread pool, whose
    # threads then live as long as pytest, and later tests fork pytest.
    client.connect(listener.getsockname()[:2])
    for _ in range(200):
        if server.connections and next(iter(server.connections)).transport is not None:
            break
        await asyncio.sleep(0.01)
    conn = next(iter(server.connections))
    assert conn.transport is not None
    accepted = conn.transport.get_extra_info("socket")
    value = int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    client.close()
    server.close()
    listener.close()
    return value


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1")])
def test_accepted_tcp_connections_have_nodelay(loop_kind: str, family: int, host: str) -> None:
    loop = new_event_loop(use_uvloop=loop_kind == "uvloop")
    try:
        assert loop.run_until_complete(_nodelay_of_accepted(family, host)) != 0
    finally:
        loop.close()
