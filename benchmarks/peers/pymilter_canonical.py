"""The canonical benchmark milter on pymilter (libmilter with Python callbacks).

Every step callback is overridden without ``@nocallback``/``@noreply``, so
pymilter's negotiation asks the MTA for each of them with a reply; end of
message adds one header and accepts.

libmilter sets no TCP_NODELAY and writes the added header and the final
reply as two small writes, so with Nagle the second waits for the MTA's
delayed ACK (40 ms). As for the C peer, TCP_NODELAY is set on the listening
socket right after libmilter opens it (Linux copies it to accepted sockets).

Options after PORT (benchmarks/postfix.py uses them): ``nagle`` leaves Nagle
on, as a pymilter filter runs by default; ``minimal`` defines only ``eom``
(the same filter written with the one callback that does something, so
pymilter negotiates the NO* bits for the rest).

Usage: python pymilter_canonical.py PORT [nagle] [minimal]
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import Milter  # type: ignore[import-not-found]


class Canonical(Milter.Base):  # type: ignore[misc]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return int(Milter.CONTINUE)

    def hello(self, hostname: str) -> int:
        return int(Milter.CONTINUE)

    def envfrom(self, sender: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def envrcpt(self, recipient: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def data(self) -> int:
        return int(Milter.CONTINUE)

    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    def eoh(self) -> int:
        return int(Milter.CONTINUE)

    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        self.addheader("X-Bench", "pymilter")
        return int(Milter.ACCEPT)


class Minimal(Milter.Base):  # type: ignore[misc]
    def eom(self) -> int:
        self.addheader("X-Bench", "pymilter")
        return int(Milter.ACCEPT)


def nodelay_on_listeners() -> None:
    """TCP_NODELAY on each listening socket of this process (libmilter's listener)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        finally:
            sock.detach()


def main() -> None:
    port = int(sys.argv[1])
    options = set(sys.argv[2:])
    if options - {"nagle", "minimal"}:
        raise SystemExit(__doc__)
    Milter.factory = Minimal if "minimal" in options else Canonical
    Milter.set_flags(Milter.ADDHDRS)
    opensocket = Milter.milter.opensocket
    if "nagle" in options:
        Milter.runmilter("canonical", f"inet:{port}@127.0.0.1", 240)
        return

    def opensocket_nodelay(rmsock: bool) -> Any:
        result = opensocket(rmsock)
        nodelay_on_listeners()
        return result

    Milter.milter.opensocket = opensocket_nodelay  # runmilter looks it up at call time
    Milter.runmilter("canonical", f"inet:{port}@127.0.0.1", 240)


if __name__ == "__main__":
    main()
