"""MilterContext: what a :class:`~milterkit.Milter` sees and does on its connection.

The session gives one to each milter it makes (``milter._context``), and the
milter's public API (``negotiated``, ``event``, ``body_file``, the actions,
``progress()``) reads and writes it instead of the session. The context holds
no reference back to the session, so session -> milter -> context is a tree,
not a cycle: a finished connection is freed by reference counting, without a
weak proxy and without waiting for the cyclic garbage collector. This module
imports neither the session nor the milter module.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import IO

from milterkit.protocol import messages as msg
from milterkit.protocol.filter import FilterConnection
from milterkit.protocol.negotiate import Negotiated

__all__ = ["MilterContext"]

_PROGRESS = msg.Progress()


class MilterContext:
    """One connection's state as its milter sees it; the per-message part is reset
    by :meth:`new_message`.

    ``protocol`` is the connection's protocol state (negotiated options, whether
    a message is open); ``out`` the session's list of bytes to send,
    and ``on_output`` what to call when bytes must leave at once (PROGRESS while
    a callback works), so the session's caller can take them without waiting
    for the callback to return.
    """

    __slots__ = (
        "_body",
        "_body_memory_limit",
        "_body_spool_dir",
        "_on_output",
        "_out",
        "_protocol",
        "body_size",
        "event",
        "pending",
    )

    def __init__(
        self,
        protocol: FilterConnection,
        out: list[bytes],
        on_output: Callable[[], None] | None = None,
        *,
        body_memory_limit: int = 1024 * 1024,
        body_spool_dir: str | None = None,
    ) -> None:
        #: Modifications requested for the current message, sent at end of message.
        self.pending: list[msg.Message] = []
        #: The protocol message being handled (None before the first).
        self.event: msg.Message | None = None
        #: Body bytes collected for the current message.
        self.body_size = 0
        self._body: IO[bytes] | None = None
        self._body_memory_limit = body_memory_limit
        self._body_spool_dir = body_spool_dir
        self._protocol = protocol
        self._out = out
        self._on_output = on_output

    @property
    def negotiated(self) -> Negotiated | None:
        """What option negotiation agreed on; None before it."""
        return self._protocol.negotiated

    @property
    def in_message(self) -> bool:
        """Between MAIL (or the first message step) and end of message or abort."""
        return self._protocol.in_message

    def body_file(self) -> IO[bytes]:
        """The spool of the collected body (created empty on first use)."""
        if self._body is None:
            self._body = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed in new_message)
                max_size=self._body_memory_limit, mode="w+b", dir=self._body_spool_dir
            )
        return self._body

    def rewind_body(self) -> None:
        """Put the collected body back at its start (end of message)."""
        if self._body is not None:
            self._body.seek(0)

    def new_message(self) -> None:
        """Forget the modifications and the body of the message that ended."""
        self.pending.clear()
        self.body_size = 0
        if self._body is not None:
            self._body.close()
            self._body = None

    def progress(self) -> None:
        """Queue PROGRESS and have it sent at once, behind what is queued already."""
        self._out.append(self._protocol.send(_PROGRESS))
        if self._on_output is not None:
            self._on_output()
