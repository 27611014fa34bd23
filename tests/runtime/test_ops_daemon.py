"""`milterkit run` in a subprocess: JSON log, config file, backlog drain, reload."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.runtime.test_daemon import SPAMTRAP, Daemon, daemons, one_message, tmp

__all__ = ["daemons", "tmp"]  # fixtures used below


def test_json_log_has_the_message_record(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(
        tmp, "--socket", f"unix:{tmp}/milter.sock", "--workers", "1", "--log-format", "json"
    )
    daemons.append(daemon)
    daemon.wait_socket()
    assert one_message(daemon.sock_path)[-1] == "Accept"
    assert daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.log().splitlines()]
    (message,) = [line for line in lines if line.get("event") == "message"]
    assert message["sender"] == "<spameri@tiscali.it>"
    assert message["decision"] == "accept"
    assert message["stage"] == "end_of_message"
    assert message["modifications"] == {"add_header": 1, "quarantine": 1}
    assert message["quarantine"] == "Spammer in quarantine!"
    assert message["connection_id"] == "w0-c1"
    (closed,) = [line for line in lines if line.get("event") == "connection_closed"]
    assert closed["reason"] == "quit"
    assert any("milterkit serving" in line["message"] for line in lines)


def test_config_file_alone_starts_the_daemon(tmp: Path, daemons: list[Daemon]) -> None:
    config = tmp / "milter.toml"
    config.write_text(
        f'target = "{SPAMTRAP}"\n'
        f'socket = "unix:{tmp}/milter.sock"\n'
        "workers = 1\n"
        'log-format = "json"\n'
        "socket-mode = 0o600\n"
    )
    daemon = Daemon(tmp, str(config), target="--config")  # no MODULE:CLASS argument
    daemons.append(daemon)
    daemon.wait_socket()
    assert stat.S_IMODE(os.stat(daemon.sock_path).st_mode) == 0o600
    assert one_message(daemon.sock_path)[-1] == "Accept"
    assert daemon.stop() == 0
    assert json.loads(daemon.log().splitlines()[0])["level"] == "info"


def test_bad_config_file_exits_78(tmp: Path, daemons: list[Daemon]) -> None:
    config = tmp / "milter.toml"
    config.write_text("workers = 'many'\n")
    daemon = Daemon(tmp, "--config", str(config))
    daemons.append(daemon)
    assert daemon.proc.wait(30) == 78
    assert daemon.log() == (
        f"milterkit run: {config}: invalid value for 'workers': expected an integer, got 'many'\n"
    )
