"""Minimal sd_notify(3) client, so ``Type=notify`` units work without libsystemd.

systemd passes the path of a datagram socket in ``$NOTIFY_SOCKET``; a leading
``@`` denotes the Linux abstract namespace.  Notification is best effort: a
daemon must not fail because its supervisor went away, so errors only make
:func:`notify` return False.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "ready", "status", "stopping"]

_log = logging.getLogger("milterkit.runtime.systemd")


def _socket_address(value: str) -> str | None:
    """Translate $NOTIFY_SOCKET to a connectable AF_UNIX address."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not supported


def notify(state: str, *, unset_environment: bool = False) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager.

    Returns True if the datagram was sent, False when not running under a
    notify-aware manager or when sending failed.  ``unset_environment``
    removes $NOTIFY_SOCKET so that children we spawn do not notify on our
    behalf.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    address = _socket_address(value)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        _log.debug("sd_notify to %r failed: %s", value, exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Report start-up complete (optionally with a status line)."""
    extra = f"\nSTATUS={status_text}" if status_text else ""
    return notify(f"READY=1{extra}")


def stopping() -> bool:
    """Report that shutdown has begun."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the free-form status shown by ``systemctl status``."""
    return notify(f"STATUS={text}")
