"""Daemon runtime: the asyncio server, prefork workers and daemon duties.

:func:`run` is the one-call entry point (``milterkit.runtime.run(MyMilter,
"unix:/run/my.sock", user="postfix")``); :class:`Server` serves a milter
class on sockets you opened yourself, inside your own event loop.

The names below load on first use (PEP 562), not when the package is
imported: the session imports :mod:`milterkit.runtime.execution` (how its
callbacks run), and an eager import of the daemon here would import the
server, which imports the session again, half-initialised.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name is defined (a submodule of this package).
_HOMES = {
    "DaemonConfig": "daemon",
    "RuntimeConfigError": "errors",
    "Server": "server",
    "new_event_loop": "server",
    "run": "daemon",
    "run_daemon": "daemon",
    "serve_sockets": "server",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use, then keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
