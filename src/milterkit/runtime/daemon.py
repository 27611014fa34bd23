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
5. READY=1 to systemd; SIGTERM/SIGINT drain (after ``shutdown_delay``),
   SIGHUP reopens log files, SIGUSR2 replaces the workers one at a time,
   each importing the milter code afresh (``target``);
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

from milterkit.milter import Milter
from milterkit.runtime import systemd
from milterkit.runtime.address import UnixAddress, parse_address
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.jsonlog import apply_log_format
from milterkit.runtime.logsetup import configure_logging, reopen_logs
from milterkit.runtime.metrics import MetricsHub, MetricsSender
from milterkit.runtime.observe import LogObserver, MultiObserver, Observer
from milterkit.runtime.pidfile import PidFile
from milterkit.runtime.privileges import drop_privileges, resolve_group, resolve_user
from milterkit.runtime.server import (
    DEFAULT_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
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
    #: ``text`` or ``json`` (one JSON object per line)
    log_format: str = "text"
    #: After SIGTERM, go on serving this long before draining (load balancers move away).
    shutdown_delay: float = 0.0
    #: ``module:Class`` or ``path.py:Class`` the milter came from; workers started by a
    #: reload (SIGUSR2) import it afresh. None: they keep the class already imported.
    target: str | None = None
    #: ``inet:PORT@HOST``: serve Prometheus ``/metrics`` and ``/healthz`` there.
    metrics: str | None = None


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
    log_format: str = "text",
) -> int:
    """Run ``milter_class`` as a daemon in the foreground; return the exit status.

    ``address`` is ``unix:/path``, ``inet:PORT@HOST``, ``inet6:PORT@HOST`` or
    ``fd:N``; sockets passed by systemd socket activation take precedence.
    ``workers`` processes (default: one per CPU, 0 = no fork) share the
    socket; ``max_connections`` is the total across them. Configuration
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
        log_format=log_format,
    )
    return run_daemon(milter_class, config)


def run_daemon(milter_class: Callable[[], Milter], config: DaemonConfig) -> int:
    """:func:`run` with the settings in a :class:`DaemonConfig`."""
    try:
        configure_logging(config.log, config.log_level)
        apply_log_format(config.log_format)
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
    if config.metrics is not None and config.workers == 0:
        raise RuntimeConfigError(
            "--metrics needs forked workers (--workers 1 or more): the supervisor serves it"
        )
    if config.shutdown_delay > 0 and config.workers == 0:
        raise RuntimeConfigError(
            "--shutdown-delay needs forked workers (--workers 1 or more): the supervisor waits"
        )
    if config.shutdown_delay < 0:
        raise RuntimeConfigError(f"invalid shutdown delay {config.shutdown_delay}: negative")
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
        self.supervisor: Supervisor | None = None
        self.metrics: MetricsHub | None = None
        self.sender: MetricsSender | None = None

    def run(self) -> int:
        with ExitStack() as stack:
            if self.config.pid_file:
                stack.enter_context(PidFile(self.config.pid_file))
            stack.callback(self._close_listeners)
            self._bind()
            if self.config.metrics is not None:
                self.metrics = MetricsHub(self.config.metrics)
                stack.callback(self.metrics.close)
            supervisor = self._supervisor()
            systemd.ready(f"serving on {self._describe()}")
            _log.info("milterkit serving %s on %s", _name(self.milter_class), self._describe())
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
        self.supervisor = Supervisor(
            self._worker_main,
            workers,
            drain_timeout=self.config.drain_timeout + _KILL_GRACE,
            on_reopen=reopen_logs,
            on_stop=systemd.stopping,
            logger=_log,
            shutdown_delay=self.config.shutdown_delay,
            on_drain=self._release_listeners,
        )
        if self.metrics is not None:
            self.metrics.attach(self.supervisor)
            host, port = self.metrics.http.getsockname()[:2]
            _log.info("metrics on http://%s:%d/metrics and /healthz", host, port)
        return self.supervisor

    def _release_listeners(self) -> None:
        """The workers drain: close the supervisor's copy of the listening sockets.

        The socket stops listening when the last process holding it closes it;
        each worker closes its copy right after taking what is queued in the
        backlog, so the last one to do so leaves nothing queued behind. (The
        unix socket's path is removed at exit, as before.)
        """
        if os.getpid() == self.supervisor_pid and self.config.workers != 0:
            for sock in self.listeners:
                sock.close()

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
        self._reimport_after_reload(index)
        loop = new_event_loop(self.config.use_uvloop)
        try:
            loop.run_until_complete(self._serve(index))
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
            callback_timeout=config.callback_timeout,
            progress_interval=config.progress_interval,
            error_decision=config.error_decision,
            logger=_log,
            observer=self._observer(),
        )
        await serve_sockets(server, drain_timeout=config.drain_timeout, on_reopen=reopen_logs)
        if self.sender is not None:
            self.sender.flush()  # the last increments, before the worker exits

    def _reimport_after_reload(self, index: int) -> None:
        """In a worker started by a reload, import the milter code afresh.

        A forked worker inherits the classes the supervisor imported at start;
        new code on disk only runs if it is imported again here, after the
        privilege drop. If the new code does not load, the worker logs why and
        serves the code it inherited, so a broken edit cannot take the service down.
        """
        supervisor, target = self.supervisor, self.config.target
        if supervisor is None or supervisor.generation == 0 or target is None:
            return
        from milterkit.cli.run import load_target  # the CLI's loader: module or file path

        try:
            self.milter_class = load_target(target, fresh=True)
        except RuntimeConfigError as exc:
            _log.error("worker %d: reload: %s; serving the code loaded before", index, exc)
            return
        _log.info("worker %d: reload: imported %s afresh", index, target)

    def _observer(self) -> Observer:
        """What a worker reports to: the per-message log lines, and the metrics if wanted."""
        log = LogObserver(_log)
        if self.metrics is None:
            return log
        self.sender = self.metrics.worker_sender()
        return MultiObserver([log, self.sender])

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
