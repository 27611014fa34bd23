"""The ceiling: a milter that only frames packets and answers with fixed bytes.

No parsing beyond the length and command byte, no callbacks, no state: what
any Python milter costs at least on a given event loop. It asks for every
step (like the canonical milters), answers CONTINUE, and at end of message
adds one header and accepts, all replies of one event in one write.

Usage: python bare_milter.py PORT [asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from typing import cast

OPTNEG_REPLY = struct.pack(">IBIII", 13, ord("O"), 6, 0x01, 0x100)  # ADDHDRS; NOUNKNOWN
CONTINUE = b"\x00\x00\x00\x01c"
_header = b"X-Bench\0bare\0"
EOM_REPLY = struct.pack(">IB", len(_header) + 1, ord("h")) + _header + b"\x00\x00\x00\x01a"
NO_REPLY = frozenset(b"DAQK")


class BareMilter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        while len(buf) - pos >= 5:
            (length,) = struct.unpack_from(">I", buf, pos)
            if len(buf) - pos < 4 + length:
                break
            cmd = buf[pos + 4]
            pos += 4 + length
            if cmd in NO_REPLY:
                continue
            if cmd == 0x4F:
                out.append(OPTNEG_REPLY)
            elif cmd == 0x45:
                out.append(EOM_REPLY)
            else:
                out.append(CONTINUE)
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareMilter, "127.0.0.1", port, backlog=1024)
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    loop_kind = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(serve(port))
    else:
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
