"""``milterkit run module:ClassName --socket ADDR``: serve a milter class as a daemon.

The target may name an importable module (``mypkg.filters:SpamTrap``) or a
Python file (``examples/spamtrap.py:SpamTrap``), so a one-file milter needs no
packaging. The options mirror :func:`milterkit.runtime.run` one to one.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from milterkit.cli.config import apply_config, load_config, record_given
from milterkit.milter import Milter
from milterkit.runtime.daemon import DaemonConfig, run_daemon
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.supervisor import EX_CONFIG

__all__ = ["add_parser", "load_target", "run"]

_DECISIONS = ("tempfail", "accept", "reject", "continue")
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
    parser.add_argument("--socket-owner", metavar="USER")
    parser.add_argument("--socket-group", metavar="GROUP")
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
        help="close a connection idle this long (7210, as libmilter)",
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
        factory = load_target(args.target)
    except RuntimeConfigError as exc:
        print(f"milterkit run: {exc}", file=sys.stderr)
        return EX_CONFIG
    config = DaemonConfig(
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
        log_format=args.log_format,
        shutdown_delay=args.shutdown_delay,
        target=args.target,
        metrics=args.metrics,
    )
    return run_daemon(factory, config)


def load_target(target: str, *, fresh: bool = False) -> type[Milter]:
    """Resolve ``module:Class`` or ``path/to/file.py:Class`` to a Milter subclass.

    A file is always executed anew; with ``fresh`` an already imported module
    is reloaded too (a SIGUSR2 reload; the modules it imports are not).
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise RuntimeConfigError(f"target {target!r} must look like module:ClassName")
    module = _load_module(module_name, fresh)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise RuntimeConfigError(f"{module_name} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, Milter)):
        raise RuntimeConfigError(f"{target} is not a milterkit.Milter subclass")
    return obj


def _load_module(name: str, fresh: bool = False) -> Any:
    if name.endswith(".py") or os.sep in name:
        return _load_file(Path(name))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
        return importlib.reload(module) if fresh else module
    except ImportError as exc:
        raise RuntimeConfigError(f"cannot import {name}: {exc}") from exc
    except Exception as exc:
        raise RuntimeConfigError(f"error while loading {name}: {exc}") from exc


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
        raise RuntimeConfigError(f"error while loading {path}: {exc}") from exc
    return module
