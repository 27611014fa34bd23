"""``milterkit run module:ClassName --socket ADDR``: serve a milter class as a daemon.

The target may name an importable module (``mypkg.filters:SpamTrap``) or a
Python file (``examples/spamtrap.py:SpamTrap``), so a one-file milter needs no
packaging. The options mirror :func:`milterkit.runtime.run` one to one.

Modules are never looked up in the current directory: the daemon is usually
started as root, and a module planted in whatever directory root happens to
be in (``/tmp``, a user's home) would run as root. Python itself puts the
current directory first on ``sys.path`` for ``python -m`` and ``python -c``;
that entry is removed before the target is imported. Use a file path or
``--pythonpath DIR`` to say where the code is.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from milterkit.cli.config import apply_config, load_config, record_given
from milterkit.decision import ERROR_DECISIONS
from milterkit.execution import EXECUTION_MODES
from milterkit.milter import Milter
from milterkit.runtime.daemon import DaemonConfig, run_daemon
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.supervisor import EX_CONFIG

__all__ = ["add_parser", "add_serve_options", "daemon_config", "load_target", "run"]

_DECISIONS = tuple(decision.value for decision in ERROR_DECISIONS)
EX_USAGE = 64


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="serve a milter class (daemon: workers, pid file, privilege drop)",
        description="Serve MODULE:CLASS on a socket until SIGTERM (which drains).",
    )
    record_given(parser)  # so that --config knows what the command line set
    parser.add_argument(
        "target",
        nargs="?",
        metavar="MODULE:CLASS",
        help="e.g. examples/spamtrap.py:SpamTrap (or target in --config)",
    )
    parser.add_argument(
        "--socket",
        metavar="ADDR",
        help="unix:/path, inet:PORT@HOST, inet6:PORT@HOST or fd:N (required here or in --config)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with any of these options (the command line wins)",
    )
    parser.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        metavar="DIR",
        help="import MODULE from DIR (repeatable); the current directory is never searched",
    )
    _add_daemon_options(parser)
    _add_session_options(parser)
    parser.set_defaults(func=run, config_options=parser._actions)
    return parser


def _add_daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="run the workers as this user")
    parser.add_argument("--group", help="and this group (default: the user's)")
    parser.add_argument("--pid-file", metavar="PATH")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default: one per CPU; 0 = no fork)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="concurrent MTA connections, all workers together (1024)",
    )
    parser.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o660,
        metavar="MODE",
        help="unix socket permissions, octal (660)",
    )
    parser.add_argument("--socket-owner", metavar="USER", help="default: --user, if given")
    parser.add_argument(
        "--socket-group", metavar="GROUP", help="default: --group, else the --user's group"
    )
    parser.add_argument(
        "--keep-env",
        action="append",
        default=[],
        metavar="NAME",
        help="with --user, workers keep this environment variable (repeatable)",
    )
    parser.add_argument(
        "--log", default="console", help="console, syslog, null or file:/path (console)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error", "critical")
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines, or one JSON object per line (text)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight messages may take (30)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR",
        help="inet:PORT@HOST: serve Prometheus /metrics and /healthz over HTTP there",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM, go on serving this long before draining, while /healthz "
        "says 503, so a load balancer moves away first (0)",
    )


def _add_session_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=7210.0,
        metavar="SECONDS",
        help="close a connection idle this long inside a message (7210, as libmilter)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=3610.0,
        metavar="SECONDS",
        help="close a connection idle this long between messages (3610; keep it above "
        "the MTA's SMTP command timeout)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a connection whose packet stays incomplete, or which has not "
        "negotiated, this long (300)",
    )
    parser.add_argument(
        "--callback-timeout",
        type=float,
        metavar="SECONDS",
        help="answer the error decision when a callback takes longer",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        metavar="SECONDS",
        help="send PROGRESS this often while a slow end-of-message runs",
    )
    parser.add_argument(
        "--error-decision",
        choices=_DECISIONS,
        default="tempfail",
        help="reply when a callback fails (tempfail)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="do not use uvloop")
    _add_execution_options(parser)


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--execution",
        choices=EXECUTION_MODES,
        help="how sync callbacks run: auto (inline until seen slow, then in the thread "
        "pool), inline, or threads (default: the class's execution attribute, else auto)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=64,
        metavar="N",
        help="thread pool size per worker for blocking callbacks (64)",
    )
    parser.add_argument(
        "--slow-callback-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="auto mode: a sync callback slower than this moves to the pool (20)",
    )
    parser.add_argument(
        "--loop-block-warning-ms",
        type=float,
        default=100.0,
        metavar="MS",
        help="warn when a worker's event loop is held this long; 0 turns it off (100)",
    )
    parser.add_argument(
        "--stuck-callback-ms",
        type=float,
        default=5000.0,
        metavar="MS",
        help="interrupt a sync callback that holds a worker's event loop this long "
        "(error decision, connection closed); 0 turns it off (5000)",
    )


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None


def run(args: argparse.Namespace) -> int:
    """Load the target and run the daemon; returns the exit status."""
    try:
        if args.config is not None:
            apply_config(args, load_config(args.config, args.config_options))
    except RuntimeConfigError as exc:
        print(f"milterkit run: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.target is None or args.socket is None:
        missing = "MODULE:CLASS" if args.target is None else "--socket"
        print(f"milterkit run: {missing} is required (or set it in --config)", file=sys.stderr)
        return EX_USAGE
    try:
        factory = load_target(args.target, args.pythonpath)
    except RuntimeConfigError as exc:
        print(f"milterkit run: {exc}", file=sys.stderr)
        return EX_CONFIG
    return run_daemon(factory, daemon_config(args))


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--socket`` and every daemon/session option of ``milterkit run`` to ``parser``.

    For filters with their own command line (settings passed to a factory),
    so they take the same daemon options as ``milterkit run``.
    """
    parser.add_argument(
        "--socket",
        required=True,
        metavar="ADDR",
        help="unix:/path, inet:PORT@HOST, inet6:PORT@HOST or fd:N",
    )
    _add_daemon_options(parser)
    _add_session_options(parser)


def daemon_config(args: argparse.Namespace) -> DaemonConfig:
    """The :class:`DaemonConfig` of options added by :func:`add_serve_options`."""
    return DaemonConfig(
        address=args.socket,
        user=args.user,
        group=args.group,
        pid_file=args.pid_file,
        workers=args.workers,
        max_connections=args.max_connections,
        socket_mode=args.socket_mode,
        socket_owner=args.socket_owner,
        socket_group=args.socket_group,
        timeout=args.timeout,
        read_timeout=args.read_timeout,
        callback_timeout=args.callback_timeout,
        progress_interval=args.progress_interval,
        error_decision=args.error_decision,
        log=args.log,
        log_level=args.log_level,
        drain_timeout=args.drain_timeout,
        use_uvloop=False if args.no_uvloop else None,
        execution=args.execution,
        threads=args.threads,
        slow_callback=args.slow_callback_ms / 1000,
        loop_block_warning=args.loop_block_warning_ms / 1000,
        stuck_callback=args.stuck_callback_ms / 1000,
        keep_env=tuple(args.keep_env),
        idle_timeout=args.idle_timeout,
        log_format=args.log_format,
        shutdown_delay=args.shutdown_delay,
        target=getattr(args, "target", None),
        metrics=args.metrics,
    )


def load_target(
    target: str, pythonpath: list[str] | None = None, *, fresh: bool = False
) -> Callable[[], Milter]:
    """Resolve ``module:NAME`` or ``path/to/file.py:NAME`` to a Milter factory.

    NAME is a Milter subclass or any callable that returns a Milter when called
    with no arguments (a function reading its configuration, a
    ``functools.partial``); what it returns is checked when a worker starts.
    ``pythonpath`` directories are searched first for ``module``; the current
    directory is not searched (see the module docstring). A file is always
    executed anew; with ``fresh`` an already imported module is reloaded too
    (a SIGUSR2 reload; the modules it imports are not).
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise RuntimeConfigError(f"target {target!r} must look like module:ClassName")
    _forget_current_directory()
    for directory in reversed(pythonpath or []):
        if not os.path.isdir(directory):
            raise RuntimeConfigError(f"--pythonpath {directory}: not a directory")
        sys.path.insert(0, os.path.abspath(directory))
    module = _load_module(module_name, fresh)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise RuntimeConfigError(f"{module_name} has no attribute {attr!r}") from None
    if isinstance(obj, type) and not issubclass(obj, Milter):
        raise RuntimeConfigError(f"{target} is a class but not a milterkit.Milter subclass")
    if not callable(obj):
        raise RuntimeConfigError(
            f"{target} is neither a milterkit.Milter subclass nor a factory returning one"
        )
    return cast(Callable[[], Milter], obj)


def _forget_current_directory() -> None:
    """Drop the entry Python adds for ``-m``/``-c`` ("" or the cwd) from sys.path[0]."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


def _load_module(name: str, fresh: bool = False) -> Any:
    if name.endswith(".py") or os.sep in name:
        return _load_file(Path(name))
    try:
        module = importlib.import_module(name)
        return importlib.reload(module) if fresh else module
    except ImportError as exc:
        raise RuntimeConfigError(
            f"cannot import {name}: {exc} (the current directory is not searched; "
            "give a file path or --pythonpath DIR)"
        ) from exc
    except Exception as exc:
        raise RuntimeConfigError(f"error while importing {name}: {_describe_error(exc)}") from exc


def _load_file(path: Path) -> Any:
    """Import a .py file under its stem name; its directory joins sys.path for its imports."""
    if not path.is_file():
        raise RuntimeConfigError(f"milter file {path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise RuntimeConfigError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(path.stem, None)
        raise RuntimeConfigError(f"error while loading {path}: {_describe_error(exc)}") from exc
    return module


def _describe_error(exc: BaseException) -> str:
    """``KeyError: 'FILTER_CFG' (at /etc/m.py line 3)``: type, text and where it was raised."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return text  # its text already says file and line
    frames = traceback.extract_tb(exc.__traceback__)
    stdlib = sysconfig.get_paths()["stdlib"]
    # the innermost frame in the milter's own code, not in os.environ's __getitem__
    own = [f for f in frames if not f.filename.startswith(("<", stdlib))]
    if not own:
        return text
    return f"{text} (at {own[-1].filename} line {own[-1].lineno})"
