"""The ``milterkit`` entry point and the newcomer's demo, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from milterkit.cli import main


def test_main_without_command_prints_help_and_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 64
    assert "run" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "check", "bench", "demo"])
def test_every_subcommand_has_help(command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0


def test_demo_runs_three_messages_through_a_real_daemon() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "milterkit", "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("=== ") == 3
    assert "quarantine   Spammer in quarantine!" in out
    assert "550-5.1.1 No such user here." in out
    assert "Subject: [SUSPECT] the money you lent me" in out
    assert "X-Milterkit-Demo: checked by w0-c" in out
    assert "daemon stopped with SIGTERM, exit status 0" in out
