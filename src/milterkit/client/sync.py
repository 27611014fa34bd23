"""The blocking milter client: the sans-I/O exchange over a plain socket.

No event loop is involved: each read and write is a blocking socket call
bounded by the step's deadline (``socket.settimeout``), in the calling
thread. So it works the same in a script, a plain pytest test, a worker
thread, or a synchronous function called from inside a running asyncio loop
(where it blocks that loop like any other blocking call; use
:class:`~milterkit.client.AsyncMilterClient` there to keep the loop free).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from milterkit.client.base import (
    READ_SIZE,
    BaseMilterClient,
    Read,
    Write,
    connect_error,
    connect_target,
    connect_timeout_error,
)
from milterkit.client.errors import MilterError
from milterkit.client.options import ClientKeywords, ClientOptions, resolve
from milterkit.client.session import Exchange
from milterkit.result import CheckResult, MessageInput
from milterkit.runtime.address import UnixAddress

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MilterClient", "open_socket"]


def open_socket(address: str, timeout: float) -> socket.socket:
    """A connected blocking socket to ``unix:/path``, ``inet:PORT@HOST`` or ``inet6:...``."""
    target = connect_target(address)
    try:
        if isinstance(target, UnixAddress):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(target.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((target.host, target.port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except TimeoutError:
        raise connect_timeout_error(address, timeout) from None
    except OSError as exc:
        raise connect_error(address, exc) from None


class MilterClient(BaseMilterClient):
    """Connect to one filter and run messages through it like an MTA, blocking.

    Settings come as ``options=`` (a :class:`ClientOptions`) and/or as the
    same settings in keywords (``timeout=10``, ``profile=SENDMAIL``; see
    :class:`~milterkit.client.options.ClientKeywords`), which override
    ``options``. ``check`` connects on first use. Usable as ``with``.
    """

    def __init__(
        self,
        address: str,
        *,
        options: ClientOptions | None = None,
        **keywords: Unpack[ClientKeywords],
    ) -> None:
        super().__init__(address, resolve(options, **keywords))
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        """Open the connection, negotiate, and send CONNECT and HELO."""
        self._usable()
        if self.session.opened:
            return
        self._sock = open_socket(self.address, self.options.effective_connect_timeout)
        self._drive(self.session.opening())

    def check(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
    ) -> CheckResult:
        """Run one message; sender/recipients default to the From/To(/Cc) headers."""
        self.connect()
        run = self._message_run(message, sender, recipients, sender_args, recipient_args)
        self._drive(run)
        return run.result

    def abort(self) -> None:
        """Send ABORT now (what an MTA does on RSET); no reply is expected."""
        self._usable()
        if self.session.opened:
            self._write(Write(self.session.abort(), "abort"))

    def close(self) -> None:
        """Send QUIT (plus any trailing ABORT) and close the socket."""
        sock = self._sock
        if sock is None:
            return
        try:
            if self._broken is None and self.session.opened:
                self._write(Write(self.session.quit(), "quit"))
        except MilterError:
            pass
        finally:
            self._broken = self._broken or "closed"
            self._sock = None
            sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ driving

    def _drive(self, exchange: Exchange) -> None:
        """Run an exchange to completion; on any failure the connection is dropped."""
        steps = self._steps(exchange)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Write):
                    self._write(step)
                    step = next(steps)
                else:
                    step = steps.send(self._read(step))
        except StopIteration:
            return
        except MilterError as exc:
            self._abandon(exc)
            raise

    def _abandon(self, error: MilterError) -> None:
        self._mark_broken(error)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _write(self, step: Write) -> None:
        sock = self._sock
        if sock is None:
            raise self._not_connected()
        if not step.data:
            return
        try:
            sock.settimeout(self.options.timeout)
            sock.sendall(step.data)
        except TimeoutError:
            raise self._timeout(step.stage, "to accept our data") from None
        except OSError as exc:
            raise self._lost(step.stage, exc) from None

    def _read(self, step: Read) -> bytes:
        """Bytes from the filter (``b""``: it closed), waiting at most ``step.remaining`` s."""
        sock = self._sock
        if sock is None:
            raise self._not_connected()
        try:
            sock.settimeout(step.remaining)
            return sock.recv(READ_SIZE)
        except TimeoutError:
            raise self._timeout(step.stage, "to reply") from None
        except OSError as exc:
            raise self._lost(step.stage, exc) from None
