"""The asyncio server: one :class:`MilterSession` per MTA connection.

Built on :class:`asyncio.Protocol` rather than streams, because a milter's
cost is per packet and streams add a buffer copy and a task switch to each.
The per-packet path is: ``data_received`` -> session, which queues its
replies -> ``session.data_to_send()`` -> one ``transport.write``. One write
matters: several replies of one event (modifications plus the final reply at
end of message) or the replies to pipelined events must leave as one TCP
segment, or Postfix's delayed ACK adds about 40 ms per message. An async
callback's reply goes out when it finishes, with the replies to what was
buffered meanwhile; PROGRESS (keepalives, ``Milter.progress()``) goes out at
once, through the session's ``on_output`` notification.

While a session waits on an async callback, bytes that arrive are only
buffered in the session's frame decoder, not processed, so the session never
sees a command before it has answered the previous one. The transport keeps
reading (an MTA that hangs up mid-callback must be noticed at once, so the
callback can be cancelled; with reading paused, EOF goes unseen) and pauses
only past :data:`BUFFER_HIGH_WATER`, so a misbehaving MTA cannot make us
buffer without bound. A well-behaved MTA sends nothing while it waits.

Connections are accepted by hand (``add_reader`` on the listening socket)
instead of with ``loop.create_server``: when ``max_connections`` sessions are
running the reader is removed, and further connections wait in the kernel
backlog rather than being accepted and dropped. Several worker processes can
share one listening socket this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from milterkit.decision import Decision
from milterkit.milter import Milter
from milterkit.protocol.errors import ProtocolError
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.execution import CallbackRunner, ExecutionSettings, LoopWatchdog
from milterkit.runtime.logsetup import safe
from milterkit.runtime.observe import Observer
from milterkit.runtime.sockets import public_name
from milterkit.session import MilterSession, Pending

if TYPE_CHECKING:
    from milterkit.runtime.settings import DaemonConfig

__all__ = [
    "BUFFER_HIGH_WATER",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MilterStartupError",
    "Server",
    "new_event_loop",
    "serve_sockets",
    "uvloop_wanted",
]

#: libmilter's default socket timeout (``smfi_settimeout``), in seconds.
DEFAULT_TIMEOUT = 7210.0
#: Idle limit of a negotiated connection between messages: above Sendmail's
#: default SMTP command timeout (Timeout.command, 1 h), the longest a real MTA
#: keeps its milter connection idle while waiting for the SMTP client's next
#: command (Postfix: smtpd_timeout, 300 s). See docs/reliability.md.
DEFAULT_IDLE_TIMEOUT = 3610.0
#: How long a partly received packet may stall before the connection is dropped.
DEFAULT_READ_TIMEOUT = 300.0
#: Pause after accept() failed for lack of file descriptors, so we do not spin.
_ACCEPT_RETRY_DELAY = 1.0
#: Buffered, unprocessed bytes past which reading pauses while a callback runs.
BUFFER_HIGH_WATER = 256 * 1024
#: Linux's TCP_QUICKACK (None elsewhere): see _Connection._ack_now.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_QUICKACK_OPTION = _QUICKACK or 0
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

MilterFactory = Callable[[], Milter]


class MilterStartupError(RuntimeConfigError):
    """The milter cannot be built or set up: no connection could be served."""


def _settings(
    execution: ExecutionSettings | None,
    callback_timeout: float | None,
    progress_interval: float | None,
    error_decision: Decision | str | None,
) -> ExecutionSettings:
    """``execution``, with the single settings given beside it taking precedence."""
    settings = execution or ExecutionSettings()
    changes: dict[str, Any] = {}
    if callback_timeout is not None:
        changes["callback_timeout"] = callback_timeout
    if progress_interval is not None:
        changes["progress_interval"] = progress_interval
    if error_decision is not None:
        changes["error_decision"] = error_decision
    return dataclasses.replace(settings, **changes) if changes else settings


async def _run_hook(milter_class: type[Milter], name: str) -> None:
    """Run a class hook (sync or async); a failing setup is a start-up error."""
    try:
        result = getattr(milter_class, name)()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        if name == "setup":
            raise MilterStartupError(
                f"{milter_class.__name__}.setup() failed: {_one_line(exc)}"
            ) from exc
        logging.getLogger("milterkit").exception("%s.%s() failed", milter_class.__name__, name)


def _describe_factory(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` and where it was raised, for a one-line start-up error."""
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
    return safe(f"{type(exc).__name__}: {exc}{where}", 500)


def uvloop_wanted(use_uvloop: bool | None) -> bool:
    """Whether to run on uvloop: None means "if importable", unless the env turns it off."""
    if use_uvloop is False:
        return False
    if use_uvloop is None and os.environ.get("MILTERKIT_NO_UVLOOP", "") not in ("", "0"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if use_uvloop:
            raise
        return False
    return True


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """A fresh event loop, uvloop's when wanted (see :func:`uvloop_wanted`)."""
    if uvloop_wanted(use_uvloop):
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class Server:
    """Serve a :class:`Milter` class on one or more listening sockets.

    ``milter`` is called with no arguments once per connection (a Milter
    subclass or any factory). ``max_connections`` bounds the concurrent
    sessions of this server; ``timeout`` closes a connection on which the MTA
    sent nothing for that long (libmilter's 7210 s), ``idle_timeout`` (shorter)
    one that does so between messages, ``read_timeout`` one that
    stalls in the middle of a packet. Neither runs while a callback is busy:
    ``callback_timeout`` covers that.
    """

    def __init__(
        self,
        milter: MilterFactory,
        listeners: socket.socket | Iterable[socket.socket],
        *,
        worker: int = 0,
        max_connections: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        execution: ExecutionSettings | None = None,
        callback_timeout: float | None = None,
        progress_interval: float | None = None,
        error_decision: Decision | str | None = None,
        logger: logging.Logger | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        observer: Observer | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if timeout <= 0 or read_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("timeout, read_timeout and idle_timeout must be positive")
        self.factory = milter
        self.listeners = [listeners] if isinstance(listeners, socket.socket) else list(listeners)
        self.worker = worker
        self.max_connections = max_connections
        self.timeout = timeout
        self.read_timeout = min(read_timeout, timeout)
        self.execution = _settings(execution, callback_timeout, progress_interval, error_decision)
        self.idle_timeout = min(idle_timeout, timeout)
        self.log = logger or logging.getLogger("milterkit")
        self.runner = CallbackRunner(self.execution, self.log)
        self._watchdog: LoopWatchdog | None = None
        #: observe: told of connections and messages (logs, metrics); None: nothing
        self.observer = observer
        self.connections: set[_Connection] = set()
        self.draining = False
        self._counter = 0
        self._reading = False
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(
        cls,
        milter: MilterFactory,
        listeners: socket.socket | Iterable[socket.socket],
        settings: DaemonConfig,
        *,
        worker: int = 0,
        max_connections: int | None = None,
        logger: logging.Logger | None = None,
        observer: Observer | None = None,
    ) -> Server:
        """A daemon worker's server: the timeouts and execution settings of ``settings``.

        Which settings are the server's is marked on the DaemonConfig fields
        (:mod:`milterkit.runtime.settings`), so a new one needs no edit here.
        ``max_connections`` is this server's share of the daemon's total.
        """
        return cls(
            milter,
            listeners,
            worker=worker,
            max_connections=max_connections,
            execution=settings.execution_settings(),
            logger=logger,
            observer=observer,
            **settings.server_keywords(),
        )

    # --------------------------------------------------------------- accepting

    def start(self) -> None:
        """Begin accepting; must be called from the loop that will serve."""
        if self._started:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = True
        self._start_watchdog()
        self.runner.guard_inline_calls()  # interrupts an inline call that holds the loop
        for sock in self.listeners:
            sock.setblocking(False)
        self._resume_accepting()

    async def serve_forever(self) -> None:
        """Set the milter up, serve until :meth:`drain` or :meth:`close`, tear it down.

        The milter's class hooks run here, in the serving process: ``setup``
        before the first connection is accepted, ``teardown`` after the last one
        finished. A milter that cannot be built or set up raises
        :class:`MilterStartupError` before anything is accepted.
        """
        milter_class = self.milter_class()
        await _run_hook(milter_class, "setup")
        if not self._started:
            self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            self._stop_execution()
            await _run_hook(milter_class, "teardown")

    def milter_class(self) -> type[Milter]:
        """The class the factory makes; building one instance proves the factory works."""
        try:
            milter = self.factory()
        except Exception as exc:
            raise MilterStartupError(
                f"cannot create the milter {_describe_factory(self.factory)}: {_one_line(exc)}"
            ) from exc
        if not isinstance(milter, Milter):
            raise MilterStartupError(
                f"{_describe_factory(self.factory)} returned {type(milter).__name__}, "
                "not a milterkit.Milter"
            )
        return type(milter)

    def _start_watchdog(self) -> None:
        threshold = self.execution.loop_block_warning
        if threshold and self._watchdog is None and self._loop is not None:
            self._watchdog = LoopWatchdog(self._loop, threshold, self.log, self._blocking_now)
            self._watchdog.start()

    def _blocking_now(self) -> str | None:
        current = self.runner.current
        return None if current is None else f"callback {current[1]} [{current[0]}]"

    def _stop_execution(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        self.runner.shutdown()

    def _resume_accepting(self) -> None:
        if self._reading or self.draining or self._full():
            return
        assert self._loop is not None
        for sock in self.listeners:
            self._loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        self._reading = True

    def _pause_accepting(self) -> None:
        if not self._reading:
            return
        assert self._loop is not None
        for sock in self.listeners:
            self._loop.remove_reader(sock.fileno())
        self._reading = False

    def _full(self) -> bool:
        limit = self.max_connections
        return limit is not None and len(self.connections) >= limit

    def _on_acceptable(self, listener: socket.socket) -> None:
        """Accept what the backlog holds, up to the connection limit."""
        while self._reading and not self._full():
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._adopt(sock)
        if self._full():
            self._pause_accepting()

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors: stop accepting for a moment instead of spinning."""
        if exc.errno not in _EXHAUSTED:
            self.log.warning("accept failed: %s", exc)
            return
        self.log.error("accept failed: %s; pausing for %.0fs", exc, _ACCEPT_RETRY_DELAY)
        self._pause_accepting()
        assert self._loop is not None
        self._retry = self._loop.call_later(_ACCEPT_RETRY_DELAY, self._resume_accepting)

    def _adopt(self, sock: socket.socket) -> None:
        """Wrap an accepted socket in a transport driving a new session."""
        sock.setblocking(False)
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._counter += 1
        conn = _Connection(self, f"w{self.worker}-c{self._counter}")
        if tcp and _QUICKACK is not None:
            conn.tcp_sock = sock
        self.connections.add(conn)
        assert self._loop is not None and self._idle is not None
        self._idle.clear()
        task = self._loop.create_task(self._handshake(conn, sock))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: _Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: conn, sock)
        except Exception as exc:
            self.log.warning("[%s] cannot set up the connection: %s", conn.cid, exc)
            sock.close()
            self.release(conn)

    def release(self, conn: _Connection) -> None:
        """A connection is completely finished; its slot is free again."""
        if self.observer is not None and conn.observed:  # observe
            conn.observed = False
            conn.observe_end(self.observer)
        self.connections.discard(conn)
        conn.session = None  # the session's on_output hook points back at conn: break the cycle
        if not self.connections and self._idle is not None:
            self._idle.set()
        if not self.draining:
            self._resume_accepting()

    # -------------------------------------------------------------- stopping

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight messages finish, close the rest after ``timeout``.

        Connections already waiting in the listen backlog are accepted and
        served first, and then this process closes its listening sockets (see
        :meth:`_take_backlog`). Sessions idle between messages are closed at
        once; the others as soon as they become idle. Whatever is still open
        at the deadline is aborted.
        """
        self.draining = True
        self._pause_accepting()
        if self._retry is not None:
            self._retry.cancel()
        self._take_backlog()
        busy = [c for c in list(self.connections) if not c.close_if_idle()]
        if busy:
            self.log.info(
                "draining: %d session(s) in a message, waiting up to %.1fs", len(busy), timeout
            )
        if not await self._wait_idle(timeout):
            left = len(self.connections)
            self.log.warning("drain deadline reached; closing %d session(s)", left)
            for conn in list(self.connections):
                conn.abort()
            await self._wait_idle(5.0)
        self._finish()

    def _take_backlog(self) -> None:
        """Accept every connection queued in the backlog, then close our listeners.

        A connection the kernel has already completed sits in the backlog; the
        MTA (or a load balancer) has sent its OPTNEG and cannot retry
        elsewhere, so closing the socket under it (which resets it) loses the
        message. Once the last process holding the listening socket has
        closed it, new connections are refused instead, which a load balancer
        redispatches and an MTA reports as a connect failure. Accepting and
        closing back to back keeps the window in which a connection can be
        queued and then reset to a few microseconds, however long the drain
        itself takes. The connection limit does not apply here: a few more
        sessions for the length of a drain are better than reset ones.
        """
        for sock in self.listeners:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self.log.warning("accept failed while draining the backlog: %s", exc)
                    break
                self._adopt(conn)
            sock.close()

    async def _wait_idle(self, timeout: float) -> bool:
        assert self._idle is not None
        if not self.connections:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop at once: abort every connection without waiting."""
        self.draining = True
        self._pause_accepting()
        for conn in list(self.connections):
            conn.abort()
        self._finish()

    @property
    def stopped(self) -> bool:
        """:meth:`close` ran, or :meth:`drain` finished."""
        return self._stopped is not None and self._stopped.is_set()

    def _finish(self) -> None:
        if self._stopped is not None:
            self._stopped.set()


class _Connection(asyncio.Protocol):
    """One MTA connection: feeds the session, sends what it queued, runs timers."""

    def __init__(self, server: Server, cid: str) -> None:
        self.server = server
        self.cid = cid
        self.log = server.log
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        #: The accepted TCP socket, for TCP_QUICKACK (None on unix sockets).
        self.tcp_sock: socket.socket | None = None
        self.session: MilterSession | None = None
        self.peer = "?"
        self.lost = False
        #: observe: why we closed it (None: the MTA did, see observe_end)
        self.end_reason: str | None = None
        self.observed = False  # connection_opened was reported
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._paused = False
        # Slow-read guard: when the packet now incomplete began, and how many
        # bytes were buffered after the previous read (see _note_partial).
        self._partial_since: float | None = None
        self._partial_buffered = 0

    # ------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer_name(transport)
        server = self.server
        try:
            self.session = MilterSession(
                server.factory,
                connection_id=self.cid,
                logger=server.log,
                settings=server.execution,
                runner=server.runner,
                on_output=self._send_now,
                observer=server.observer,
            )
        except Exception:
            self.log.exception("[%s] cannot create the milter for %s", self.cid, self.peer)
            self.transport.abort()
            return
        if server.observer is not None:  # observe
            self.observed = True
            server.observer.connection_opened(self.cid, self.peer)
        else:
            self.log.debug("[%s] connection from %s", self.cid, self.peer)
        self._last = self.loop.time()
        self._arm(min(server.read_timeout, server.idle_timeout))
        if server.stopped:  # close() ran while this connection was being set up
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
        task, session = self._task, self.session
        if task is None:
            pending = self._session_eof(session)
            if pending is None:
                self.server.release(self)
                return
            self._task = self.loop.create_task(self._finish_lost(None, pending))
        else:
            task.cancel()
            self._task = self.loop.create_task(self._finish_lost(task, None))

    def _session_eof(self, session: MilterSession | None) -> Pending | None:
        """Tell the session the MTA is gone (abort/close callbacks)."""
        if session is None:
            return None
        try:
            return session.connection_lost()
        except Exception as exc:
            self.log.debug("[%s] error while closing the session: %s", self.cid, exc)
            return None

    async def _finish_lost(self, task: asyncio.Task[None] | None, pending: Pending | None) -> None:
        """Wait for the cancelled callback, then run abort/close, then free the slot."""
        try:
            if task is not None:
                await asyncio.wait([task])
                pending = self._session_eof(self.session)
            if pending is not None:
                await pending
        except Exception as exc:
            self.log.debug("[%s] error while closing the session: %s", self.cid, exc)
        finally:
            self.server.release(self)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.end_reason = self.end_reason or "aborted"
            self.transport.abort()

    def observe_end(self, observer: Observer) -> None:
        """Report the end of this connection and why (observe)."""
        session = self.session
        reason = self.end_reason
        if reason is None:
            record = session.record if session is not None else None
            if record is not None and record.quit_seen:
                reason = "quit"
            elif session is not None and session.negotiated is None and session.closed:
                reason = "negotiation_failed"
            else:
                reason = "mta_vanished"
        if reason in ("mta_vanished", "timeout", "protocol_error"):
            observer.error(reason)
        observer.connection_done(self.cid, reason, self.peer)

    def close_if_idle(self) -> bool:
        """Close now if between messages, after a first one; True if closed.

        A session that has not finished a message yet is kept: the MTA opened
        it for an SMTP session whose message is on its way (it was accepted
        from the backlog during a drain, or sits between HELO and MAIL), and
        closing it would turn that message into a temporary failure.
        """
        session = self.session
        if session is None or self.transport is None:
            return False
        if self._task is not None or session.in_message or session.awaiting_reply:
            return False
        if not session.messages_done and not session.closed:
            return False
        if self.end_reason is None and not session.closed:
            self.end_reason = "drain"
        self.transport.close()
        return True

    # -------------------------------------------------------------- traffic

    def _send(self, data: bytes) -> None:
        if data and not self.lost and self.transport is not None:
            self.transport.write(data)

    def _send_now(self) -> None:
        """The session queued PROGRESS: send it, behind what this read produced so far."""
        session = self.session
        if session is not None:
            self._send(session.data_to_send())

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        self._last = self.loop.time()
        if self._task is not None:
            self._buffer(session, data)
            return
        try:
            pending = session.data_received(data)
        except Exception as exc:
            self._send(session.data_to_send())
            self._failed(exc)
            return
        # Performance: runs once per packet, so _send and _after_events are
        # inlined for the common case (a reply to write, the session goes on).
        out = session.data_to_send()
        if out:
            if not self.lost:
                self.transport.write(out)  # type: ignore[union-attr]  # set before any data
        elif pending is None and self.tcp_sock is not None:
            self._ack_now(self.tcp_sock)
        if pending is not None:
            self._task = self.loop.create_task(self._drive(pending))
            return
        if self._partial_buffered or session.buffered:
            self._note_partial(session, len(data))
        if session.closed or self.server.draining:
            self._after_events()

    @staticmethod
    def _ack_now(sock: socket.socket) -> None:
        """A read that needed no reply (MACRO, a step under an NR flag): ACK it at once.

        Postfix sets no TCP_NODELAY on milter sockets, so its next packet waits
        behind the unacknowledged one until our delayed ACK fires (about 40 ms
        per message for a milter that turned steps off; docs/benchmarks.md).
        Reads that get a reply carry the ACK with it and never come here.
        """
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK_OPTION, 1)

    def _note_partial(self, session: MilterSession, received: int) -> None:
        """Track since when a packet is incomplete (only runs while one is).

        The read timeout counts from the read that began the incomplete packet,
        not from the last byte, so a peer trickling one byte at a time (slowloris)
        is still cut off after ``read_timeout``. If the buffer grew by exactly
        what arrived, no packet completed and the packet is the same as before.
        """
        left = session.buffered
        if not left:
            self._partial_since = None
        elif self._partial_since is None or left != self._partial_buffered + received:
            self._partial_since = self._last
        self._partial_buffered = left

    def _buffer(self, session: MilterSession, data: bytes) -> None:
        """A callback is running: keep the bytes for later, pause if too many."""
        try:
            session.buffer_data(data)
        except Exception as exc:
            self._failed(exc)
            return
        if session.buffered > BUFFER_HIGH_WATER and not self._paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._paused = True

    async def _drive(self, pending: Pending | None) -> None:
        """Await a suspended callback, then let the session go on, until it needs data."""
        session = self.session
        assert session is not None
        try:
            while pending is not None:
                await pending
                if self.lost:
                    return
                try:
                    pending = session.resume()
                finally:
                    # the awaited reply and the replies to what was buffered meanwhile
                    self._send(session.data_to_send())
        except Exception as exc:
            self._task = None
            self._failed(exc)
            return
        self._task = None
        self._last = self.loop.time()
        self._partial_buffered = session.buffered
        self._partial_since = self._last if self._partial_buffered else None
        if not self._after_events() and self._paused:
            assert self.transport is not None
            self._paused = False
            self.transport.resume_reading()

    def _after_events(self) -> bool:
        """Close if the session ended or a drain waits for it; True if closed."""
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        if session.closed:
            transport.close()
            return True
        return self.server.draining and self.close_if_idle()

    def _failed(self, exc: Exception) -> None:
        """A protocol violation or an internal error: close only this connection."""
        protocol = isinstance(exc, ProtocolError)
        self.end_reason = self.end_reason or ("protocol_error" if protocol else "internal_error")
        if protocol:
            self.log.warning(
                "[%s] closing connection from %s: %s: %s",
                self.cid,
                safe(self.peer),
                type(exc).__name__,
                safe(str(exc), 300),
            )
        else:
            self.log.error(
                "[%s] internal error, closing connection from %s",
                self.cid,
                safe(self.peer),
                exc_info=exc,
            )
        if self.transport is not None:
            self.transport.close()

    # --------------------------------------------------------------- timers

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        """Lazy timeout check: data only records a timestamp, the timer re-arms itself."""
        self._timer = None
        session = self.session
        if self.lost or session is None:
            return
        server = self.server
        if self._task is not None:
            self._arm(server.read_timeout)
            return
        mid_packet = session.buffered > 0
        # Before option negotiation the read timeout applies too: an MTA sends
        # OPTNEG right after connecting, and a silent peer must not hold a slot.
        opening = session.negotiated is None
        limit = server.read_timeout if mid_packet or opening else server.timeout
        if not (mid_packet or opening or session.in_message):
            limit = server.idle_timeout
        since = self._partial_since if mid_packet and self._partial_since is not None else None
        idle = self.loop.time() - (self._last if since is None else since)
        if idle < limit:
            self._arm(min(limit - idle, server.read_timeout, server.idle_timeout))
            return
        if mid_packet:
            what = "read timeout: stuck in the middle of a packet"
        elif opening:
            what = "read timeout: no option negotiation"
        else:
            what = "idle timeout: no data from the MTA between commands"
            if not session.in_message:
                what += ", outside a message"
        self.log.warning(
            "[%s] closing connection from %s: %s for %.1fs",
            self.cid,
            safe(self.peer),
            what,
            idle,
        )
        self.end_reason = "timeout"
        self.abort()


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return f"unix:{public_name(sock) or '?'}"
    return str(peer or "?")


async def serve_sockets(
    server: Server,
    *,
    drain_timeout: float = 30.0,
    on_reopen: Callable[[], None] | None = None,
) -> None:
    """Run ``server`` until SIGTERM/SIGINT (then drain); SIGHUP calls ``on_reopen``.

    This is the body of one worker process. Signal handlers go through the
    loop so they run between packets, never inside a callback.
    """
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def stop(signum: int) -> None:
        if draining:
            return
        server.log.info(
            "worker %d: %s, draining (up to %.0fs)",
            server.worker,
            signal.Signals(signum).name,
            drain_timeout,
        )
        draining.append(loop.create_task(server.drain(drain_timeout)))

    def reopen() -> None:
        if on_reopen is not None:
            on_reopen()

    def no_reload() -> None:
        # SIGUSR2 is the supervisor's reload; its default action would kill this process
        server.log.warning("worker %d: SIGUSR2 ignored: send it to the supervisor", server.worker)

    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, reopen)
    loop.add_signal_handler(signal.SIGUSR2, no_reload)
    try:
        await server.serve_forever()
        for task in draining:
            await task
    finally:
        for signum in (*handled, signal.SIGHUP, signal.SIGUSR2):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
