"""Each daemon setting is declared once, as a DaemonConfig field, and reaches everything.

From the field come the ``milterkit run`` option (and ``--config`` key), the
``milterkit.run()`` keyword, the ExecutionSettings every session reads and
the Server's timeouts. These tests fail when a new field is not wired
through, or when a reader's parameter and the declaration drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import milterkit
from milterkit.cli.run import add_serve_options, daemon_config
from milterkit.decision import Decision
from milterkit.execution import ExecutionSettings
from milterkit.milter import Milter
from milterkit.runtime.logsetup import LOGGER_NAME
from milterkit.runtime.server import Server
from milterkit.runtime.settings import (
    MILLISECONDS,
    NOT_OPTIONS,
    CliFlag,
    DaemonConfig,
    cli_flag,
    settings_with_options,
)

FIELDS = dataclasses.fields(DaemonConfig)
SOCKET = "inet:1@127.0.0.1"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    return parser.parse_args(["--socket", SOCKET, *argv])


def test_every_setting_is_an_option_unless_the_command_line_spells_it_itself() -> None:
    without = [field.name for field in FIELDS if cli_flag(field) is None]
    assert without == list(NOT_OPTIONS)
    options = [flag.option for _, flag in settings_with_options()]
    assert len(options) == len(set(options)) == len(FIELDS) - len(NOT_OPTIONS)


def test_every_setting_is_a_run_keyword_with_the_same_default() -> None:
    parameters = inspect.signature(milterkit.run).parameters
    assert list(parameters) == ["milter_class", *(field.name for field in FIELDS)]
    assert parameters["address"].default is inspect.Parameter.empty
    for field in FIELDS[1:]:
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[field.name].default == field.default, field.name


def test_command_line_defaults_are_the_settings_defaults() -> None:
    assert daemon_config(parse()) == DaemonConfig(SOCKET)


def _other_value(flag: CliFlag, default: Any) -> tuple[list[str], Any]:
    """Arguments giving ``flag`` a value other than its default, and that value as a setting."""
    if flag.switch:
        return [flag.option], False  # --no-uvloop: never uvloop
    if flag.repeatable:
        return [flag.option, "A", flag.option, "B"], ("A", "B")
    if flag.choices is not None:
        shown = flag.unit.to_cli(default)
        choice = next(c for c in flag.choices if c != shown)
        return [flag.option, choice], choice
    if flag.parse is int:
        return [flag.option, "7"], 7
    if flag.parse is float:
        return [flag.option, "2.5"], 0.0025 if flag.unit is MILLISECONDS else 2.5
    if flag.option == "--socket-mode":
        return [flag.option, "640"], 0o640
    assert flag.parse is None, f"no test value for {flag.option}"
    return [flag.option, "x"], "x"


@pytest.mark.parametrize(
    ("field", "flag"),
    list(settings_with_options()),
    ids=[f.name for f, _ in settings_with_options()],
)
def test_each_option_reaches_its_setting(field: dataclasses.Field[Any], flag: CliFlag) -> None:
    argv, value = _other_value(flag, field.default)
    assert value != field.default
    config = daemon_config(parse(*argv))
    assert getattr(config, field.name) == value
    assert config == dataclasses.replace(DaemonConfig(SOCKET), **{field.name: value})


def test_milliseconds_options_keep_their_unit() -> None:
    config = daemon_config(
        parse(
            "--slow-callback-ms",
            "20",
            "--loop-block-warning-ms",
            "0",
            "--stuck-callback-ms",
            "5000",
        )
    )
    assert (config.slow_callback, config.loop_block_warning, config.stuck_callback) == (0.02, 0, 5)
    help_text = " ".join(action.help or "" for action in _actions())
    assert "moves to the pool (20)" in help_text
    assert "0 turns it off (5000)" in help_text
    assert "unix socket permissions, octal (660)" in help_text


def _actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser()
    add_serve_options(parser)
    return parser._actions


def test_session_settings_are_exactly_the_execution_settings() -> None:
    marked = {field.metadata["session"]: field for field in FIELDS if field.metadata.get("session")}
    assert set(marked) == {field.name for field in dataclasses.fields(ExecutionSettings)}
    for name, field in marked.items():
        assert getattr(ExecutionSettings(), name) == field.default, name


def test_execution_settings_carry_the_daemon_values() -> None:
    config = DaemonConfig(
        SOCKET,
        execution="threads",
        threads=3,
        slow_callback=0.5,
        loop_block_warning=0.25,
        stuck_callback=2,
        callback_timeout=9,
        progress_interval=4,
        error_decision="reject",
    )
    assert config.execution_settings() == ExecutionSettings(
        mode="threads",
        threads=3,
        slow_callback=0.5,
        loop_block_warning=0.25,
        stuck_callback=2,
        callback_timeout=9,
        progress_interval=4,
        error_decision=Decision.REJECT,
    )


def test_server_settings_are_server_keywords_with_the_same_defaults() -> None:
    parameters = inspect.signature(Server).parameters
    marked = [field for field in FIELDS if field.metadata.get("server")]
    assert [field.name for field in marked] == ["timeout", "idle_timeout", "read_timeout"]
    for field in marked:
        assert parameters[field.name].default == field.default, field.name


def test_server_from_settings_takes_timeouts_and_execution() -> None:
    config = DaemonConfig(SOCKET, timeout=100, idle_timeout=50, read_timeout=5, threads=3)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = Server.from_settings(Milter, listener, config, worker=2, max_connections=10)
        assert (server.timeout, server.idle_timeout, server.read_timeout) == (100, 50, 5)
        assert server.execution == config.execution_settings()
        assert (server.worker, server.max_connections, server.listeners) == (2, 10, [listener])
        server.runner.shutdown()


def test_run_refuses_an_unknown_keyword_by_name() -> None:
    with pytest.raises(
        TypeError,
        match=r"^run\(\) got an unexpected keyword argument 'treads' \(did you mean 'threads'\?\)$",
    ):
        milterkit.run(Milter, SOCKET, treads=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^run\(\) got an unexpected keyword argument 'colour'$"):
        milterkit.run(Milter, SOCKET, colour="blue")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^run\(\) takes 2 positional arguments but 3 were given$"):
        milterkit.run(Milter, SOCKET, "nobody")  # type: ignore[misc]


@pytest.fixture
def milterkit_logger() -> Iterator[None]:
    """run() points the shared 'milterkit' logger at its --log: put it back afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.mark.usefixtures("milterkit_logger")
def test_run_keywords_reach_the_checks(capfd: pytest.CaptureFixture[str]) -> None:
    """A keyword's value is the daemon's: a bad one is exit 78 before anything is bound."""
    assert milterkit.run(Milter, address=SOCKET, log="null", workers=-1) == 78
    assert capfd.readouterr().err == "milterkit: invalid number of workers -1: negative\n"
    assert milterkit.run(Milter, SOCKET, log="null", stuck_callback=-1) == 78
    assert (
        "invalid execution setting: stuck_callback must be >= 0, not -1" in capfd.readouterr().err
    )


SCRIPT = """
    import milterkit
    from milterkit import Milter

    milterkit.run(Milter, "unix:/x", workers=2, threads=8, stuck_callback=1.5, keep_env=("A",))
    milterkit.run(Milter, "unix:/x", treads=8)
    milterkit.run(Milter, "unix:/x", workers="2")
    milterkit.run(Milter, "unix:/x", "nobody")
"""

EXPECTED = [
    'Unexpected keyword argument "treads" for "run"',
    'Argument "workers" to "run" has incompatible type "str"; expected "int | None"',
    'Too many positional arguments for "run"',
]


def test_mypy_checks_every_run_keyword(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    cache = str(tmp_path / "cache")
    out, _, status = mypy_api.run(
        ["--strict", "--cache-dir", cache, "--python-version", "3.10", str(script)]
    )
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert status == 1, out
    assert len(errors) == len(EXPECTED), out
    for line, wanted in zip(errors, EXPECTED, strict=True):
        assert wanted in line, out
