"""``milterkit run module:ClassName --socket ADDR``: serve a milter class as a daemon.

The target may name an importable module (``mypkg.filters:SpamTrap``) or a
Python file (``examples/spamtrap.py:SpamTrap``), so a one-file milter needs no
packaging. The options mirror :func:`milterkit.runtime.run` one to one: both
are derived from the DaemonConfig fields of :mod:`milterkit.runtime.settings`.

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
from milterkit.milter import Milter
from milterkit.runtime.daemon import DaemonConfig, run_daemon
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.settings import settings_with_options
from milterkit.runtime.supervisor import EX_CONFIG

__all__ = ["add_parser", "add_serve_options", "daemon_config", "load_target", "run"]

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
    _add_setting_options(parser)
    parser.set_defaults(func=run, config_options=parser._actions)
    return parser


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, as declared on its DaemonConfig field (runtime.settings)."""
    for field, flag in settings_with_options():
        flag.add_to(parser, field.default)


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
    _add_setting_options(parser)


def daemon_config(args: argparse.Namespace) -> DaemonConfig:
    """The :class:`DaemonConfig` of options added by :func:`add_serve_options`.

    Each option's value, in the setting's unit, goes to the field it was
    declared on; ``target`` is ``milterkit run``'s MODULE:CLASS, if any.
    """
    values = {field.name: flag.value(args) for field, flag in settings_with_options()}
    return DaemonConfig(args.socket, target=getattr(args, "target", None), **values)


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
