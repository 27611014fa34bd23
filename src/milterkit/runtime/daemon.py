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
   unix socket from root-owned ``/run`` at exit and to restart workers (so
   with a ``user`` there is always a forked worker, even for ``workers=0``).
   Right after the fork a worker closes the root-owned PID file and log file
   and from then on sends its log records to the supervisor
   (:mod:`milterkit.runtime.logforward`); after the drop it moves to ``/``,
   trims its environment and sets PR_SET_NO_NEW_PRIVS
   (:mod:`milterkit.runtime.confine`);
5. READY=1 to systemd; SIGTERM/SIGINT drain (after ``shutdown_delay``),
   SIGHUP reopens log files, SIGUSR2 replaces the workers one at a time,
   each importing the milter code afresh (``target``);
6. at exit STOPPING=1, the unix socket and the PID file are removed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Concatenate, ParamSpec

from milterkit._compiled import build_description
from milterkit.decision import ERROR_DECISIONS, Decision
from milterkit.milter import Milter
from milterkit.runtime import systemd
from milterkit.runtime.address import Inet6Address, InetAddress, UnixAddress, parse_address
from milterkit.runtime.confine import confine_worker, set_process_name
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.jsonlog import apply_log_format
from milterkit.runtime.logfile import ReopenableFileHandler
from milterkit.runtime.logforward import LogForwarder
from milterkit.runtime.logsetup import configure_logging, reopen_logs
from milterkit.runtime.metrics import MetricsHub, MetricsSender
from milterkit.runtime.observe import LogObserver, MultiObserver, Observer
from milterkit.runtime.pidfile import PidFile
from milterkit.runtime.privileges import drop_privileges, resolve_group, resolve_user
from milterkit.runtime.server import (
    MilterStartupError,
    Server,
    new_event_loop,
    serve_sockets,
)
from milterkit.runtime.settings import DaemonConfig
from milterkit.runtime.sockets import (
    describe_listener,
    inherited_listeners,
    open_listener,
    remove_unix_socket,
)
from milterkit.runtime.supervisor import EX_CONFIG, Supervisor, exit_with_parent

__all__ = ["DaemonConfig", "run", "run_daemon"]

#: Extra seconds the supervisor waits beyond a worker's own drain deadline
#: before it SIGKILLs, so workers get to abort their sessions and log it.
_KILL_GRACE = 5.0
_log = logging.getLogger("milterkit")


P = ParamSpec("P")


def _parameters_of(
    config: Callable[P, DaemonConfig],
) -> Callable[[Callable[..., int]], Callable[Concatenate[Callable[[], Milter], P], int]]:
    """Give ``run`` the parameters of ``config`` (DaemonConfig), for mypy and for help().

    The ParamSpec makes mypy check each keyword of a ``run(...)`` call against
    the DaemonConfig field of that name (name, type, keyword-only); the
    ``__signature__`` shows the same parameters, with their defaults, to
    help() and editors.
    """

    def with_parameters(
        run: Callable[..., int],
    ) -> Callable[Concatenate[Callable[[], Milter], P], int]:
        own = inspect.signature(run).parameters["milter_class"]
        settings = inspect.signature(config).parameters.values()
        run.__signature__ = inspect.Signature([own, *settings], return_annotation="int")  # type: ignore[attr-defined]
        return run

    return with_parameters


@_parameters_of(DaemonConfig)
def run(milter_class: Callable[[], Milter], *args: Any, **settings: Any) -> int:
    """Run ``milter_class`` as a daemon in the foreground; return the exit status.

    The other parameters are :class:`DaemonConfig`'s: ``address``
    (``unix:/path``, ``inet:PORT@HOST``, ``inet6:PORT@HOST`` or ``fd:N``;
    sockets passed by systemd socket activation take precedence), then every
    setting as a keyword, with the field's default: ``workers`` processes
    (default: one per CPU, 0 = no fork) share the socket; ``max_connections``
    is the total across them; ``execution`` (``auto``, ``inline``,
    ``threads``), ``threads``, ``slow_callback``, ``loop_block_warning`` and
    ``stuck_callback`` say how sync callbacks run (docs/running.md). An
    unknown keyword raises TypeError naming it. Configuration errors are
    logged in one line and give exit status 78 (EX_CONFIG).

    Why this signature rather than a written-out one: each setting is
    declared once, as a DaemonConfig field (:mod:`milterkit.runtime.settings`),
    and ``run`` takes exactly those fields as keywords (mypy checks names and
    types through the ParamSpec), so a new setting is a ``run`` keyword
    without another edit, and no list of keywords here can fall out of step.
    """
    _refuse_unknown(args, settings)
    return run_daemon(milter_class, DaemonConfig(*args, **settings))


def _refuse_unknown(args: tuple[Any, ...], settings: dict[str, Any]) -> None:
    """TypeError naming a keyword that is no setting, as Python says it for a plain function."""
    if len(args) > 1:
        raise TypeError(f"run() takes 2 positional arguments but {len(args) + 1} were given")
    known = [field.name for field in dataclasses.fields(DaemonConfig)]
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"run() got an unexpected keyword argument {name!r}{hint}")


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
    if config.idle_timeout <= 0:
        raise RuntimeConfigError(f"invalid idle timeout {config.idle_timeout}: must be positive")
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
    try:
        Decision.parse(config.error_decision, ERROR_DECISIONS)
    except ValueError as exc:
        raise RuntimeConfigError(f"invalid error decision: {exc}") from None
    try:
        config.execution_settings()
    except ValueError as exc:
        raise RuntimeConfigError(f"invalid execution setting: {exc}") from None


def _report_config_error(config: DaemonConfig, exc: RuntimeConfigError) -> None:
    """One line in the log; also on stderr when the log does not go there.

    Without a handler (the log destination itself was the error) only stderr:
    logging's last-resort handler would print the same line a second time.
    """
    if _log.handlers:
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
        self.forked = False
        self.pid_file: PidFile | None = None
        self.log_forwarder: LogForwarder | None = None
        self.supervisor: Supervisor | None = None
        self.metrics: MetricsHub | None = None
        self.sender: MetricsSender | None = None

    def run(self) -> int:
        with ExitStack() as stack:
            if self.config.pid_file:
                self.pid_file = stack.enter_context(PidFile(self.config.pid_file))
            stack.callback(self._close_listeners)
            self._bind()
            if self.config.metrics is not None:
                self.metrics = MetricsHub(self.config.metrics)
                stack.callback(self.metrics.close)
            supervisor = self._supervisor()
            if self.log_forwarder is not None:
                stack.callback(self.log_forwarder.close)
            set_process_name("milterkit-sup", f"milterkit: supervisor serving {self._describe()}")
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
        owner, group = _socket_ownership(self.config)
        self.listeners = [
            open_listener(address, mode=self.config.socket_mode, owner=owner, group=group)
        ]
        if isinstance(address, UnixAddress):
            self.unix_path = address.path
        _warn_if_every_interface(address)

    def _describe(self) -> str:
        return ", ".join(describe_listener(sock) for sock in self.listeners)

    def _supervisor(self) -> Supervisor:
        self.supervisor_pid = os.getpid()
        workers = (os.cpu_count() or 1) if self.config.workers is None else self.config.workers
        if workers == 0 and self.config.user is not None:
            _log.info(
                "workers 0 with user %s: serving in one forked worker, so that the "
                "supervisor keeps the right to remove the PID file and socket at exit",
                self.config.user,
            )
            workers = 1
        limit = self.config.max_connections
        self.per_worker = None if limit is None else math.ceil(limit / max(workers, 1))
        self.forked = workers > 0
        readers = {}
        if workers > 0:
            self.log_forwarder = _log_forwarder()
            if self.log_forwarder is not None:
                readers[self.log_forwarder.fileno()] = self.log_forwarder.drain
        self.supervisor = Supervisor(
            self._worker_main,
            workers,
            drain_timeout=self.config.drain_timeout,
            kill_grace=_KILL_GRACE,
            on_reopen=reopen_logs,
            on_stop=systemd.stopping,
            logger=_log,
            after_fork=self._after_fork,
            readers=readers,
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
        if os.getpid() == self.supervisor_pid and self.forked:
            for sock in self.listeners:
                sock.close()

    def _after_fork(self, index: int) -> None:
        """First thing in a new worker: let go of the supervisor's root-owned files."""
        if self.pid_file is not None:
            self.pid_file.forget_in_child()
        if self.log_forwarder is not None:
            self.log_forwarder.in_worker(_log)

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
            confine_worker(self.config.user, self.config.keep_env)
            set_process_name(
                f"milterkit-w{index}", f"milterkit: worker {index} serving {self._describe()}"
            )
        self._reimport_after_reload(index)
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
        server = Server.from_settings(
            self.milter_class,
            self.listeners,
            config,
            worker=index,
            max_connections=self.per_worker,
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

    def _observer(self) -> Observer | None:
        """What a worker reports to: the per-message log lines, and the metrics if wanted.

        None when neither is wanted (log level above info, no --metrics): building
        the records costs about a tenth of the session's CPU per message.
        """
        log = LogObserver(_log)
        if self.metrics is None:
            return log if _log.isEnabledFor(logging.INFO) else None
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


def _socket_ownership(config: DaemonConfig) -> tuple[str | int | None, str | int | None]:
    """Owner and group of a unix socket: as asked, else the run user and group.

    libmilter daemons (opendkim, ...) create their socket as the user they
    run as; ``--user spamtrap --group postfix`` thus yields spamtrap:postfix.
    """
    if config.user is None:
        return config.socket_owner, config.socket_group
    owner = config.user if config.socket_owner is None else config.socket_owner
    if config.socket_group is not None:
        return owner, config.socket_group
    if config.group is not None:
        return owner, config.group
    return owner, resolve_user(config.user).pw_gid


def _warn_if_every_interface(address: object) -> None:
    """inet:PORT means every interface (as in libmilter): say so, loudly."""
    if isinstance(address, (InetAddress, Inet6Address)) and address.host in ("0.0.0.0", "::"):
        local = "127.0.0.1" if isinstance(address, InetAddress) else "[::1]"
        scheme = "inet" if isinstance(address, InetAddress) else "inet6"
        _log.warning(
            "listening on every network interface (%s): any host that can reach port %d "
            "can send mail decisions to this milter; use %s:%d@%s if the MTA runs on this host",
            address,
            address.port,
            scheme,
            address.port,
            local,
        )


def _log_forwarder() -> LogForwarder | None:
    """A forwarder when the log is a file: workers must not hold it (see module doc)."""
    for handler in logging.getLogger("milterkit").handlers:
        if isinstance(handler, ReopenableFileHandler):
            return LogForwarder(handler)
    return None


def _name(factory: Callable[[], Milter]) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)
