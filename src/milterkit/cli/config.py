"""``milterkit run --config milter.toml``: every command-line option, from a TOML file.

Keys are the long option names without the dashes (``max-connections``;
``max_connections`` is accepted too), plus ``target`` for ``MODULE:CLASS``.
Values have the type the option takes: a TOML integer, float, boolean (for
flags such as ``no-uvloop``) or string; ``socket-mode`` is an octal string
(``"660"``) or a TOML octal integer (``0o660``); a repeatable option
(``keep-env``) takes one string or an array of them. The command line wins:
a key only applies when its option was not given there.

Errors (an unknown key, a value of the wrong type, a choice not offered,
invalid TOML, an unreadable file) raise :class:`ConfigFileError`, whose text
is one line naming the file and the key; ``milterkit run`` exits 78 on it.

TOML is read with the standard library's :mod:`tomllib` (Python 3.11+) or,
on 3.10, the ``tomli`` package it came from (a conditional dependency).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from milterkit.runtime.errors import RuntimeConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (exercised by the Python 3.10 run)
    import tomli as tomllib

__all__ = ["ConfigFileError", "apply_config", "load_config", "record_given"]

_GIVEN = "_given_on_command_line"


class ConfigFileError(RuntimeConfigError):
    """The configuration file cannot be used; the message names the file and key."""


class _NotesGiven(argparse.Action):
    """Mixed in before an argparse action: runs it, then notes the option was given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        _note_given(namespace, self.dest)


class GivenStore(_NotesGiven, argparse._StoreAction):
    """``store`` that also notes that the option was on the command line."""


class GivenStoreTrue(_NotesGiven, argparse._StoreTrueAction):
    """``store_true`` that also notes that the flag was on the command line."""


class GivenAppend(_NotesGiven, argparse._AppendAction):
    """``append`` (``--keep-env A --keep-env B``) that also notes it was on the command line."""


def record_given(parser: argparse.ArgumentParser) -> None:
    """Make the parser's plain, ``store_true`` and ``append`` options note when they are given.

    Call before adding the options; :func:`apply_config` then knows which
    options the command line set, even to their default value.
    """
    parser.register("action", None, GivenStore)
    parser.register("action", "store", GivenStore)
    parser.register("action", "store_true", GivenStoreTrue)
    parser.register("action", "append", GivenAppend)


def _note_given(namespace: argparse.Namespace, dest: str) -> None:
    given: set[str] | None = getattr(namespace, _GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, _GIVEN, given)
    given.add(dest)


def load_config(path: str, options: Iterable[argparse.Action]) -> dict[str, Any]:
    """Read ``path`` and return ``{dest: value}`` checked against ``options``."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    by_key = _options_by_key(options)
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = by_key.get(key.replace("_", "-"))
        if action is None:
            raise ConfigFileError(f"{path}: unknown key {key!r}{_hint(key, by_key)}")
        values[action.dest] = _convert(path, key, value, action)
    return values


def apply_config(args: argparse.Namespace, values: Mapping[str, Any]) -> None:
    """Set the file's values on ``args`` except where the command line gave the option."""
    given: set[str] = getattr(args, _GIVEN, set())
    for dest, value in values.items():
        # argparse calls an optional positional's action even when it is absent
        on_command_line = args.target is not None if dest == "target" else dest in given
        if not on_command_line:
            setattr(args, dest, value)


def _options_by_key(options: Iterable[argparse.Action]) -> dict[str, argparse.Action]:
    """Long option name without dashes (or a positional's name) -> its action."""
    by_key: dict[str, argparse.Action] = {}
    for action in options:
        if isinstance(action, argparse._HelpAction) or action.dest in ("config", "help"):
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs:
            by_key[longs[0][2:]] = action
        elif not action.option_strings:
            by_key[action.dest.replace("_", "-")] = action
    return by_key


def _hint(key: str, by_key: Mapping[str, argparse.Action]) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-"), list(by_key), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """The value as the option would hold it, or a ConfigFileError naming the key."""
    where = f"{path}: invalid value for {key!r}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        return _repeated(where, value, action.type)
    converted = _typed(where, value, action.type)
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise ConfigFileError(f"{where}: {converted!r} is not one of {choices}")
    return converted


def _repeated(where: str, value: Any, kind: Any) -> list[Any]:
    """A repeatable option (``keep-env``): one value, or a TOML array of them."""
    values = value if isinstance(value, list) else [value]
    return [_typed(where, item, kind) for item in values]


def _typed(where: str, value: Any, kind: Any) -> Any:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFileError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigFileError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is None:
        if not isinstance(value, str):
            raise ConfigFileError(f"{where}: expected a string, got {value!r}")
        return value
    return _custom(where, value, kind)


def _custom(where: str, value: Any, kind: Any) -> Any:
    """An option with its own converter (e.g. the octal socket mode)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o777:  # a decimal 660 is 0o1224: surely meant as octal
            raise ConfigFileError(f'{where}: {value} is not a mode; write "660" or 0o660')
        return value
    if not isinstance(value, str):
        raise ConfigFileError(f"{where}: expected a string, got {value!r}")
    try:
        return kind(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigFileError(f"{where}: {exc}") from None
