"""``milterkit run --config FILE``: TOML keys for every option, the command line wins."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

from milterkit.cli import run as run_cli
from milterkit.cli.config import ConfigFileError, apply_config, load_config


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser()
    run_cli.add_parser(top.add_subparsers())
    return top


def parse(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["run", *argv])


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "milter.toml"
    path.write_text(text)
    return str(path)


def merged(tmp_path: Path, text: str, *argv: str) -> argparse.Namespace:
    args = parse(*argv, "--config", write(tmp_path, text))
    apply_config(args, load_config(args.config, args.config_options))
    return args


def test_every_kind_of_value(tmp_path: Path) -> None:
    args = merged(
        tmp_path,
        """
        target = "examples/spamtrap.py:SpamTrap"
        socket = "inet:8890@127.0.0.1"
        workers = 2
        max-connections = 64
        drain_timeout = 5          # underscores work too
        callback-timeout = 10
        socket-mode = "640"
        no-uvloop = true
        log-format = "json"
        error-decision = "reject"
        user = "nobody"
        """,
    )
    assert args.target == "examples/spamtrap.py:SpamTrap"
    assert args.socket == "inet:8890@127.0.0.1"
    assert (args.workers, args.max_connections) == (2, 64)
    assert (args.drain_timeout, args.callback_timeout) == (5.0, 10.0)
    assert args.socket_mode == 0o640
    assert args.no_uvloop is True
    assert (args.log_format, args.error_decision, args.user) == ("json", "reject", "nobody")


def test_toml_octal_mode(tmp_path: Path) -> None:
    assert merged(tmp_path, "socket-mode = 0o600\n").socket_mode == 0o600


def test_repeatable_option_takes_a_string_or_an_array(tmp_path: Path) -> None:
    """keep-env = "FOO" once became ("F", "O", "O"); the file replaced the command line's."""
    assert run_cli.daemon_config(merged(tmp_path, 'keep-env = "FOO"\n')).keep_env == ("FOO",)
    both = merged(tmp_path, 'keep-env = ["FOO", "BAR"]\n')
    assert run_cli.daemon_config(both).keep_env == ("FOO", "BAR")
    given = merged(tmp_path, 'keep-env = ["FOO"]\n', "--keep-env", "BAZ")
    assert run_cli.daemon_config(given).keep_env == ("BAZ",)


def test_command_line_wins_even_with_the_default_value(tmp_path: Path) -> None:
    text = 'target = "a.py:A"\nmax-connections = 10\nworkers = 3\nlog-level = "debug"\n'
    args = merged(tmp_path, text, "b.py:B", "--max-connections", "1024", "--workers", "1")
    assert args.target == "b.py:B"
    assert (args.max_connections, args.workers) == (1024, 1)
    assert args.log_level == "debug"  # not on the command line: the file's


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("max_conections = 3\n", "unknown key 'max_conections' (did you mean 'max-connections'?)"),
        ("colour = 3\n", "unknown key 'colour'"),
        ('workers = "two"\n', "invalid value for 'workers': expected an integer, got 'two'"),
        ("workers = true\n", "invalid value for 'workers': expected an integer, got True"),
        ('timeout = "5s"\n', "invalid value for 'timeout': expected a number, got '5s'"),
        ("socket = 8890\n", "invalid value for 'socket': expected a string, got 8890"),
        ('keep-env = ["A", 3]\n', "invalid value for 'keep-env': expected a string, got 3"),
        ('no-uvloop = "yes"\n', "invalid value for 'no-uvloop': expected true or false, got 'yes'"),
        (
            'log-format = "xml"\n',
            "invalid value for 'log-format': 'xml' is not one of text, json",
        ),
        ('socket-mode = "rw"\n', "invalid value for 'socket-mode': 'rw' is not an octal mode"),
        ("socket-mode = 660\n", "invalid value for 'socket-mode': 660 is not a mode"),
        ("workers = \n", "not valid TOML: "),
    ],
)
def test_bad_file_names_the_file_and_key(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path, parse().config_options)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert error in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"cannot read config file .*nope.toml: No such file"):
        load_config(str(tmp_path / "nope.toml"), parse().config_options)


def run(*argv: str) -> tuple[int, str]:
    args = parse(*argv)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = args.func(args)
    return status, err.getvalue()


def test_run_exits_78_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = -\n")
    status, err = run("--config", path)
    assert status == 78
    assert err.startswith(f"milterkit run: {path}: not valid TOML: ")
    assert err.count("\n") == 1


def test_run_needs_target_and_socket_somewhere(tmp_path: Path) -> None:
    assert run("--socket", "inet:1@127.0.0.1") == (
        64,
        "milterkit run: MODULE:CLASS is required (or set it in --config)\n",
    )
    path = write(tmp_path, 'target = "a.py:A"\n')
    assert run("--config", path) == (
        64,
        "milterkit run: --socket is required (or set it in --config)\n",
    )


def test_every_run_option_has_a_key(tmp_path: Path) -> None:
    """A new option of ``milterkit run`` is a config key without further work."""
    lines = []
    for action in parse().config_options:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or longs[0] in ("--help", "--config"):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            value = "true"
        elif action.choices is not None:
            value = f'"{next(iter(action.choices))}"'
        elif action.type is int:
            value = "2"
        elif action.type is float:
            value = "2.5"
        elif action.type is None:
            value = '"x"'
        else:
            value = '"600"'  # the octal socket mode
        lines.append(f"{longs[0][2:]} = {value}")
    assert len(lines) >= 20
    values = load_config(write(tmp_path, "\n".join(lines) + "\n"), parse().config_options)
    assert len(values) == len(lines)
