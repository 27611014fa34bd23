"""Daemon runtime: the asyncio server, prefork workers and daemon duties.

:func:`run` is the one-call entry point (``milterkit.runtime.run(MyMilter,
"unix:/run/my.sock", user="postfix")``); :class:`Server` serves a milter
class on sockets you opened yourself, inside your own event loop.
"""

from __future__ import annotations

from milterkit.runtime.daemon import DaemonConfig, run, run_daemon
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.server import Server, new_event_loop, serve_sockets

__all__ = [
    "DaemonConfig",
    "RuntimeConfigError",
    "Server",
    "new_event_loop",
    "run",
    "run_daemon",
    "serve_sockets",
]
