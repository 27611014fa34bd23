"""`milterkit run` in a subprocess: JSON log, config file, backlog drain, reload."""

from __future__ import annotations

import json
from pathlib import Path

from tests.runtime.test_daemon import Daemon, daemons, one_message, tmp

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
