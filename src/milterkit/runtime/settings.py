"""The daemon's settings, each declared once, as one field of :class:`DaemonConfig`.

A field's name is the keyword of :func:`milterkit.run` (whose parameters are
DaemonConfig's), its annotation the type, its default the default everywhere.
Its metadata says what else needs the setting:

- ``cli``, a :class:`CliFlag`: the option of ``milterkit run`` and of every
  filter built on :func:`milterkit.cli.run.add_serve_options`, with its help
  text and the conversion between the option's unit and the setting's
  (``--slow-callback-ms`` is in milliseconds, ``slow_callback`` in seconds).
  The argparse options, :func:`milterkit.cli.run.daemon_config` and the
  ``--config`` file keys are derived from it by loops;
- ``session``: the :class:`~milterkit.runtime.execution.ExecutionSettings` field the
  value becomes. Every session reads an ExecutionSettings, built from these
  fields by :meth:`DaemonConfig.execution_settings`; the defaults of these
  fields are ExecutionSettings' own;
- ``server``: the value is the :class:`~milterkit.runtime.server.Server`
  constructor keyword of the same name (the connection timeouts), passed by
  :meth:`Server.from_settings <milterkit.runtime.server.Server.from_settings>`.

So a new setting is one field here (and, if a session or the server reads
it, the field or keyword of the code that reads it). tests/runtime/test_settings.py
checks that every field has an option (or is one of :data:`NOT_OPTIONS`),
and that ``session`` and ``server`` name what ExecutionSettings and Server take.
Values are checked when the daemon starts (``_check_config`` in
:mod:`milterkit.runtime.daemon`), not here, so a bad value is reported in
the daemon's log and exits 78 like every other configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar

from milterkit.decision import ERROR_DECISIONS, Decision
from milterkit.runtime.execution import EXECUTION_MODES, ExecutionSettings
from milterkit.runtime.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_TIMEOUT

__all__ = [
    "MILLISECONDS",
    "NOT_OPTIONS",
    "CliFlag",
    "DaemonConfig",
    "Unit",
    "cli_flag",
    "octal_mode",
    "setting",
]

T = TypeVar("T")

#: The defaults of the settings every session reads, as ExecutionSettings declares them.
_SESSION = ExecutionSettings()
#: Fields without a CliFlag: the command line spells them its own way.
#: ``address`` is ``--socket`` (required with add_serve_options, optional with
#: ``milterkit run --config``); ``target`` is ``milterkit run``'s MODULE:CLASS.
NOT_OPTIONS = ("address", "target")


def _same(value: Any) -> Any:
    return value


def _show(value: Any) -> str:
    """A default as the help text shows it: ``30``, not ``30.0``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Unit:
    """How an option's value relates to its setting's.

    ``to_cli`` turns the setting's default into the option's, ``from_cli``
    the option's value into the setting's, ``show`` the option's default into
    the text that ``{default}`` in the help stands for.
    """

    to_cli: Callable[[Any], Any] = _same
    from_cli: Callable[[Any], Any] = _same
    show: Callable[[Any], str] = _show


#: The option is in milliseconds, the setting in seconds (``--slow-callback-ms 20``).
MILLISECONDS = Unit(to_cli=lambda seconds: seconds * 1000, from_cli=lambda ms: ms / 1000)
#: A repeatable option (``--keep-env A --keep-env B``) giving a tuple.
_REPEATED = Unit(to_cli=list, from_cli=tuple)
#: ``--no-uvloop``: given means False (never uvloop), absent means None (if importable).
_OFF_SWITCH = Unit(
    to_cli=lambda value: value is False, from_cli=lambda given: False if given else None
)
#: An octal file mode, shown as ``660``.
_OCTAL = Unit(show=lambda mode: format(mode, "o"))
#: A Decision setting whose option takes its name (``tempfail``).
_DECISION_NAME = Unit(to_cli=lambda decision: Decision(decision).value)


def octal_mode(text: str) -> int:
    """``660`` -> 0o660, for ``--socket-mode`` (and its ``--config`` key)."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None


@dataclass(frozen=True)
class CliFlag:
    """How the command line spells a setting: the argparse option, one per field.

    ``help`` may say ``{default}``: the default in the option's unit. ``parse``
    is argparse's ``type`` (None: a string); ``repeatable`` options append,
    ``switch`` options take no value (``store_true``).
    """

    option: str
    help: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    unit: Unit = Unit()
    repeatable: bool = False
    switch: bool = False

    @property
    def dest(self) -> str:
        """The attribute argparse stores the option's value under."""
        return self.option[2:].replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, default: Any) -> None:
        """Add the option to ``parser``; ``default`` is the setting's default."""
        cli_default = self.unit.to_cli(default)
        keywords: dict[str, Any] = {"dest": self.dest, "default": cli_default}
        if self.help is not None:
            keywords["help"] = self.help.format(default=self.unit.show(cli_default))
        if self.switch:
            keywords["action"] = "store_true"
        else:
            keywords["metavar"] = self.metavar
            keywords["type"] = self.parse
            keywords["choices"] = self.choices
            if self.repeatable:
                keywords["action"] = "append"
        parser.add_argument(self.option, **{k: v for k, v in keywords.items() if v is not None})

    def value(self, args: argparse.Namespace) -> Any:
        """The setting's value from parsed ``args`` (None stays None: not given)."""
        given = getattr(args, self.dest)
        return None if given is None else self.unit.from_cli(given)


def cli_flag(field: dataclasses.Field[Any]) -> CliFlag | None:
    """The field's option, None for :data:`NOT_OPTIONS`."""
    flag: CliFlag | None = field.metadata.get("cli")
    return flag


def setting(
    default: T, cli: CliFlag | None = None, *, session: str | None = None, server: bool = False
) -> T:
    """A DaemonConfig field: its default, its option, and who else reads it (module doc)."""
    metadata = {"cli": cli, "session": session, "server": server}
    field: T = dataclasses.field(default=default, metadata=metadata)
    return field


@dataclass
class DaemonConfig:
    """Everything :func:`milterkit.run` accepts, declared once (see the module doc).

    The fields are in the order ``milterkit run --help`` lists the options;
    all but ``address`` are keyword-only.
    """

    address: str
    _: KW_ONLY
    user: str | int | None = setting(None, CliFlag("--user", "run the workers as this user"))
    group: str | int | None = setting(
        None, CliFlag("--group", "and this group (default: the user's)")
    )
    pid_file: str | None = setting(None, CliFlag("--pid-file", metavar="PATH"))
    workers: int | None = setting(
        None,
        CliFlag(
            "--workers", "worker processes (default: one per CPU; 0 = no fork)", "N", parse=int
        ),
    )
    max_connections: int | None = setting(
        1024,
        CliFlag(
            "--max-connections",
            "concurrent MTA connections, all workers together ({default})",
            "N",
            parse=int,
        ),
    )
    socket_mode: int = setting(
        0o660,
        CliFlag(
            "--socket-mode",
            "unix socket permissions, octal ({default})",
            "MODE",
            parse=octal_mode,
            unit=_OCTAL,
        ),
    )
    socket_owner: str | int | None = setting(
        None, CliFlag("--socket-owner", "default: --user, if given", "USER")
    )
    socket_group: str | int | None = setting(
        None, CliFlag("--socket-group", "default: --group, else the --user's group", "GROUP")
    )
    keep_env: tuple[str, ...] = setting(
        (),
        CliFlag(
            "--keep-env",
            "with --user, workers keep this environment variable (repeatable)",
            "NAME",
            unit=_REPEATED,
            repeatable=True,
        ),
    )
    log: str = setting(
        "console", CliFlag("--log", "console, syslog, null or file:/path ({default})")
    )
    log_level: str = setting(
        "info",
        CliFlag("--log-level", choices=("debug", "info", "warning", "error", "critical")),
    )
    #: ``text`` or ``json`` (one JSON object per line)
    log_format: str = setting(
        "text",
        CliFlag(
            "--log-format",
            "text lines, or one JSON object per line ({default})",
            choices=("text", "json"),
        ),
    )
    drain_timeout: float = setting(
        30.0,
        CliFlag(
            "--drain-timeout",
            "on SIGTERM, how long in-flight messages may take ({default})",
            "SECONDS",
            parse=float,
        ),
    )
    #: ``inet:PORT@HOST``: serve Prometheus ``/metrics`` and ``/healthz`` there.
    metrics: str | None = setting(
        None,
        CliFlag(
            "--metrics",
            "inet:PORT@HOST: serve Prometheus /metrics and /healthz over HTTP there",
            "ADDR",
        ),
    )
    #: After SIGTERM, go on serving this long before draining (load balancers move away).
    shutdown_delay: float = setting(
        0.0,
        CliFlag(
            "--shutdown-delay",
            "on SIGTERM, go on serving this long before draining, while /healthz "
            "says 503, so a load balancer moves away first ({default})",
            "SECONDS",
            parse=float,
        ),
    )
    timeout: float = setting(
        DEFAULT_TIMEOUT,
        CliFlag(
            "--timeout",
            "close a connection idle this long inside a message ({default}, as libmilter)",
            "SECONDS",
            parse=float,
        ),
        server=True,
    )
    idle_timeout: float = setting(
        DEFAULT_IDLE_TIMEOUT,
        CliFlag(
            "--idle-timeout",
            "close a connection idle this long between messages ({default}; keep it above "
            "the MTA's SMTP command timeout)",
            "SECONDS",
            parse=float,
        ),
        server=True,
    )
    read_timeout: float = setting(
        DEFAULT_READ_TIMEOUT,
        CliFlag(
            "--read-timeout",
            "close a connection whose packet stays incomplete, or which has not "
            "negotiated, this long ({default})",
            "SECONDS",
            parse=float,
        ),
        server=True,
    )
    callback_timeout: float | None = setting(
        _SESSION.callback_timeout,
        CliFlag(
            "--callback-timeout",
            "answer the error decision when a callback takes longer",
            "SECONDS",
            parse=float,
        ),
        session="callback_timeout",
    )
    progress_interval: float | None = setting(
        _SESSION.progress_interval,
        CliFlag(
            "--progress-interval",
            "send PROGRESS this often while a slow end-of-message runs",
            "SECONDS",
            parse=float,
        ),
        session="progress_interval",
    )
    # setting() returns a dataclasses.Field, which ruff cannot see
    error_decision: Decision | str = setting(  # noqa: RUF009
        _SESSION.error_decision,
        CliFlag(
            "--error-decision",
            "reply when a callback fails ({default})",
            choices=tuple(decision.value for decision in ERROR_DECISIONS),
            unit=_DECISION_NAME,
        ),
        session="error_decision",
    )
    use_uvloop: bool | None = setting(
        None, CliFlag("--no-uvloop", "do not use uvloop", unit=_OFF_SWITCH, switch=True)
    )
    execution: str | None = setting(
        _SESSION.mode,
        CliFlag(
            "--execution",
            "how sync callbacks run: auto (inline until seen slow, then in the thread "
            "pool), inline, or threads (default: the class's execution attribute, else auto)",
            choices=EXECUTION_MODES,
        ),
        session="mode",
    )
    threads: int = setting(
        _SESSION.threads,
        CliFlag(
            "--threads",
            "thread pool size per worker for blocking callbacks ({default})",
            "N",
            parse=int,
        ),
        session="threads",
    )
    slow_callback: float = setting(
        _SESSION.slow_callback,
        CliFlag(
            "--slow-callback-ms",
            "auto mode: a sync callback slower than this moves to the pool ({default})",
            "MS",
            parse=float,
            unit=MILLISECONDS,
        ),
        session="slow_callback",
    )
    loop_block_warning: float = setting(
        _SESSION.loop_block_warning,
        CliFlag(
            "--loop-block-warning-ms",
            "warn when a worker's event loop is held this long; 0 turns it off ({default})",
            "MS",
            parse=float,
            unit=MILLISECONDS,
        ),
        session="loop_block_warning",
    )
    stuck_callback: float = setting(
        _SESSION.stuck_callback,
        CliFlag(
            "--stuck-callback-ms",
            "interrupt a sync callback that holds a worker's event loop this long "
            "(error decision, connection closed); 0 turns it off ({default})",
            "MS",
            parse=float,
            unit=MILLISECONDS,
        ),
        session="stuck_callback",
    )
    #: ``module:Class`` or ``path.py:Class`` the milter came from; workers started by a
    #: reload (SIGUSR2) import it afresh. None: they keep the class already imported.
    target: str | None = setting(None)

    def execution_settings(self) -> ExecutionSettings:
        """What every session reads (raises ValueError on an invalid value).

        Built from the fields marked ``session``, so a new one needs no edit here.
        """
        return ExecutionSettings(**dict(self._marked("session")))

    def server_keywords(self) -> dict[str, Any]:
        """The :class:`~milterkit.runtime.server.Server` keywords among the settings."""
        return dict(self._marked("server"))

    def _marked(self, mark: str) -> Iterator[tuple[str, Any]]:
        """(name the reader knows it by, value) of the fields marked ``mark``."""
        for field in dataclasses.fields(self):
            name = field.metadata.get(mark)
            if name:
                yield (field.name if name is True else name), getattr(self, field.name)


def settings_with_options() -> Iterator[tuple[dataclasses.Field[Any], CliFlag]]:
    """Each DaemonConfig field that is a command-line option, with its option, in order."""
    for field in dataclasses.fields(DaemonConfig):
        flag = cli_flag(field)
        if flag is not None:
            yield field, flag
