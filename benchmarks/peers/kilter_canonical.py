"""The canonical benchmark milter on kilter.service (anyio, one task per filter).

kilter asks for a step only when the filter is decorated for it, and with a
reply only when ``can_respond`` is set; the decorators below ask for every
step with a reply. The filter walks the session (helo, sender, recipients,
headers, body) and at end of message appends one header and accepts.

Usage: python kilter_canonical.py PORT
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio  # type: ignore[import-not-found]
from kilter.protocol import Accept  # type: ignore[import-not-found]
from kilter.protocol.messages import Header  # type: ignore[import-not-found]
from kilter.service import END, Runner, Session  # type: ignore[import-not-found]
from kilter.service.options import (  # type: ignore[import-not-found]
    examine_body,
    examine_headers,
    examine_helo,
    examine_recipients,
    examine_sender,
    responds_to_connect,
)


async def walk(session: Session) -> Accept:
    await session.helo()
    await session.envelope_from()
    async for _recipient in session.envelope_recipients():
        pass
    async with session.headers as headers:
        async for _header in headers:
            pass
    async with session.body as body:
        async for _chunk in body:
            pass
    await session.headers.insert(Header("X-Bench", b"kilter"), END)
    return Accept()


# the decorators (untyped for mypy) mark which steps the filter asks for, with a reply
canonical: Any = walk
for mark in (
    responds_to_connect(),
    examine_helo(can_respond=True),
    examine_sender(can_respond=True),
    examine_recipients(can_respond=True),
    examine_headers(can_respond=True, can_add=True),
    examine_body(can_respond=True),
):
    canonical = mark(canonical)


async def serve(port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    await listener.serve(Runner(canonical))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    anyio.run(serve, int(sys.argv[1]))


if __name__ == "__main__":
    main()
