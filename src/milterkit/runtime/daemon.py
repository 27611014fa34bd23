"""``milterkit.run``: the memory-resident milter daemon.

Start-up order, and why:

1. logging, so every later failure is reported where the operator looks;
2. the PID file, locked, so a second instance stops before touching the socket
   the first one serves;
3. the listening socket (or the one systemd passed), while we may still be
   root: ports below 1024 and sockets in root-owned directories need it;
4. the worker processes, each of which drops privileges to ``user``/``group``
   before it reads a single byte of mail. The supervisor keeps its identity:
   it never parses mail, and it must be able to remove the PID file and the
   unix socket from root-owned ``/run`` at exit and to restart workers;
5. READY=1 to systemd; SIGTERM/SIGINT drain, SIGHUP reopens log files;
6. at exit STOPPING=1, the unix socket and the PID file are removed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from milterkit._compiled import build_description
from milterkit.execution import ExecutionSettings
from milterkit.milter import Milter
from milterkit.runtime import systemd
from milterkit.runtime.address import UnixAddress, parse_address
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.logsetup import configure_logging, reopen_logs
from milterkit.runtime.pidfile import PidFile
from milterkit.runtime.privileges import drop_privileges, resolve_group, resolve_user
from milterkit.runtime.server import (
    DEFAULT_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
    MilterStartupError,
    Server,
    new_event_loop,
    serve_sockets,
)
from milterkit.runtime.sockets import inherited_listeners, open_listener, remove_unix_socket
from milterkit.runtime.supervisor import EX_CONFIG, Supervisor, exit_with_parent

__all__ = ["DaemonConfig", "run", "run_daemon"]

#: Extra seconds the supervisor waits beyond a worker's own drain deadline
#: before it SIGKILLs, so workers get to abort their sessions and log it.
_KILL_GRACE = 5.0
_log = logging.getLogger("milterkit")


@dataclass
class DaemonConfig:
    """Everything :func:`run` accepts, in one place for the CLI and compat layers."""

    address: str
    user: str | int | None = None
    group: str | int | None = None
    pid_file: str | None = None
    workers: int | None = None
    max_connections: int | None = 1024
    socket_mode: int = 0o660
    socket_owner: str | int | None = None
    socket_group: str | int | None = None
    timeout: float = DEFAULT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    callback_timeout: float | None = None
    progress_interval: float | None = None
    error_decision: str = "tempfail"
    log: str = "console"
    log_level: str = "info"
    drain_timeout: float = 30.0
    use_uvloop: bool | None = None
    execution: str | None = None
    threads: int = 64
    slow_callback: float = 0.020
    loop_block_warning: float = 0.100

    def execution_settings(self) -> ExecutionSettings:
        """The part every session needs (raises ValueError on an invalid value)."""
        return ExecutionSettings(
            mode=self.execution,
            threads=self.threads,
            slow_callback=self.slow_callback,
            loop_block_warning=self.loop_block_warning,
            callback_timeout=self.callback_timeout,
            progress_interval=self.progress_interval,
            error_decision=self.error_decision,
        )


def run(
    milter_class: Callable[[], Milter],
    address: str,
    *,
    user: str | int | None = None,
    group: str | int | None = None,
    pid_file: str | None = None,
    workers: int | None = None,
    max_connections: int | None = 1024,
    socket_mode: int = 0o660,
    socket_owner: str | int | None = None,
    socket_group: str | int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    callback_timeout: float | None = None,
    error_decision: str = "tempfail",
    log: str = "console",
    log_level: str = "info",
    drain_timeout: float = 30.0,
    progress_interval: float | None = None,
    use_uvloop: bool | None = None,
    execution: str | None = None,
    threads: int = 64,
    slow_callback: float = 0.020,
    loop_block_warning: float = 0.100,
) -> int:
    """Run ``milter_class`` as a daemon in the foreground; return the exit status.

    ``address`` is ``unix:/path``, ``inet:PORT@HOST``, ``inet6:PORT@HOST`` or
    ``fd:N``; sockets passed by systemd socket activation take precedence.
    ``workers`` processes (default: one per CPU, 0 = no fork) share the
    socket; ``max_connections`` is the total across them. ``execution``
    (``auto``, ``inline``, ``threads``), ``threads``, ``slow_callback`` and
    ``loop_block_warning`` say how sync callbacks run (docs/running.md). Configuration
    errors are logged in one line and give exit status 78 (EX_CONFIG).
    """
    config = DaemonConfig(
        address=address,
        user=user,
        group=group,
        pid_file=pid_file,
        workers=workers,
        max_connections=max_connections,
        socket_mode=socket_mode,
        socket_owner=socket_owner,
        socket_group=socket_group,
        timeout=timeout,
        read_timeout=read_timeout,
        callback_timeout=callback_timeout,
        progress_interval=progress_interval,
        error_decision=error_decision,
        log=log,
        log_level=log_level,
        drain_timeout=drain_timeout,
        use_uvloop=use_uvloop,
        execution=execution,
        threads=threads,
        slow_callback=slow_callback,
        loop_block_warning=loop_block_warning,
    )
    return run_daemon(milter_class, config)


def run_daemon(milter_class: Callable[[], Milter], config: DaemonConfig) -> int:
    """:func:`run` with the settings in a :class:`DaemonConfig`."""
    try:
        configure_logging(config.log, config.log_level)
        _check_config(config)
        return _Daemon(milter_class, config).run()
    except RuntimeConfigError as exc:
        _report_config_error(config, exc)
        return EX_CONFIG


def _check_config(config: DaemonConfig) -> None:
    """Fail before binding anything if the accounts or numbers are wrong."""
    if config.user is not None:
        resolve_user(config.user)
    if config.group is not None:
        resolve_group(config.group)
    if config.group is not None and config.user is None:
        raise RuntimeConfigError(f"group {config.group!r} given without a user to run as")
    if config.workers is not None and config.workers < 0:
        raise RuntimeConfigError(f"invalid number of workers {config.workers}: negative")
    if config.max_connections is not None and config.max_connections < 1:
        raise RuntimeConfigError(f"invalid max_connections {config.max_connections}: must be >= 1")
    if config.timeout <= 0:
        raise RuntimeConfigError(f"invalid timeout {config.timeout}: must be positive")
    if config.read_timeout <= 0:
        raise RuntimeConfigError(f"invalid read timeout {config.read_timeout}: must be positive")
    if config.callback_timeout is not None and config.callback_timeout <= 0:
        raise RuntimeConfigError(
            f"invalid callback timeout {config.callback_timeout}: must be positive"
        )
    if config.error_decision not in ("tempfail", "accept", "reject", "continue"):
        raise RuntimeConfigError(
            f"invalid error decision {config.error_decision!r}: "
            "expected tempfail, accept, reject or continue"
        )
    try:
        config.execution_settings()
    except ValueError as exc:
        raise RuntimeConfigError(f"invalid execution setting: {exc}") from None


def _report_config_error(config: DaemonConfig, exc: RuntimeConfigError) -> None:
    """One line in the log; also on stderr when the log does not go there."""
    _log.error("%s", exc)
    if config.log != "console" or not _log.handlers:
        print(f"milterkit: {exc}", file=sys.stderr)


class _Daemon:
    """The start-up sequence of the module docstring, with clean-up on every path."""

    def __init__(self, milter_class: Callable[[], Milter], config: DaemonConfig) -> None:
        self.milter_class = milter_class
        self.config = config
        self.listeners: list[socket.socket] = []
        self.unix_path: str | None = None
        self.per_worker: int | None = None
        self.supervisor_pid = os.getpid()

    def run(self) -> int:
        with ExitStack() as stack:
            if self.config.pid_file:
                stack.enter_context(PidFile(self.config.pid_file))
            stack.callback(self._close_listeners)
            self._bind()
            supervisor = self._supervisor()
            systemd.ready(f"serving on {self._describe()}")
            _log.info(
                "milterkit serving %s on %s (%s)",
                _name(self.milter_class),
                self._describe(),
                build_description(),
            )
            try:
                status = supervisor.run()
            finally:
                systemd.stopping()  # again, for exits that did not begin with a drain
            _log.info("milterkit stopped (status %d)", status)
            return status
        raise AssertionError("unreachable")  # pragma: no cover

    def _bind(self) -> None:
        inherited = inherited_listeners()
        if inherited:
            self.listeners = inherited
            _log.info(
                "using %d socket(s) passed by systemd; ignoring %s",
                len(inherited),
                self.config.address,
            )
            return
        address = parse_address(self.config.address)
        self.listeners = [
            open_listener(
                address,
                mode=self.config.socket_mode,
                owner=self.config.socket_owner,
                group=self.config.socket_group,
            )
        ]
        if isinstance(address, UnixAddress):
            self.unix_path = address.path

    def _describe(self) -> str:
        if self.unix_path is None and self.listeners:
            names = [str(s.getsockname()) for s in self.listeners]
            return ", ".join(names)
        return self.config.address

    def _supervisor(self) -> Supervisor:
        self.supervisor_pid = os.getpid()
        workers = (os.cpu_count() or 1) if self.config.workers is None else self.config.workers
        limit = self.config.max_connections
        self.per_worker = None if limit is None else math.ceil(limit / max(workers, 1))
        return Supervisor(
            self._worker_main,
            workers,
            drain_timeout=self.config.drain_timeout + _KILL_GRACE,
            on_reopen=reopen_logs,
            on_stop=systemd.stopping,
            logger=_log,
        )

    def _worker_main(self, index: int) -> int:
        """Body of one worker: drop privileges, then serve until told to stop."""
        try:
            drop_privileges(self.config.user, self.config.group)
        except RuntimeConfigError as exc:
            _log.error("worker %d: %s; refusing to serve", index, exc)
            return EX_CONFIG
        if self.config.user is not None and os.geteuid() == 0:
            _log.error("worker %d: still root after dropping privileges; refusing to serve", index)
            return EX_CONFIG
        if os.getpid() != self.supervisor_pid:  # forked (not --workers 0): die with the parent
            exit_with_parent(self.supervisor_pid)
        loop = new_event_loop(self.config.use_uvloop)
        try:
            loop.run_until_complete(self._serve(index))
        except MilterStartupError as exc:
            _log.error("worker %d: %s; the daemon stops", index, exc)
            return EX_CONFIG
        finally:
            loop.close()
        return 0

    async def _serve(self, index: int) -> None:
        config = self.config
        server = Server(
            self.milter_class,
            self.listeners,
            worker=index,
            max_connections=self.per_worker,
            timeout=config.timeout,
            read_timeout=config.read_timeout,
            execution=config.execution_settings(),
            logger=_log,
        )
        await serve_sockets(server, drain_timeout=config.drain_timeout, on_reopen=reopen_logs)

    def _close_listeners(self) -> None:
        for sock in self.listeners:
            sock.close()
        if self.unix_path is not None:
            try:
                remove_unix_socket(self.unix_path)
            except OSError as exc:
                _log.warning("cannot remove socket %s: %s", self.unix_path, exc)


def _name(factory: Callable[[], Milter]) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)
