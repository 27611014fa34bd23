"""`milterkit run` in a subprocess: JSON log, config file, backlog drain, reload."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import threading
from pathlib import Path

from milterkit.protocol import AddHeader, Connect, EndOfMessage, Family, Mail, OptNeg
from tests.runtime.test_daemon import SLOW_MILTER, SPAMTRAP, Daemon, daemons, one_message, tmp
from tests.runtime.test_server_mta import OFFER_V6, RawMTA, kinds, wait_for

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


def test_sigterm_serves_the_connections_queued_in_the_backlog(
    tmp: Path, daemons: list[Daemon]
) -> None:
    (tmp / "slow.py").write_text(SLOW_MILTER)
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--workers",
        "1",
        "--max-connections",
        "1",
        target=f"{tmp}/slow.py:SlowEom",
    )
    daemons.append(daemon)
    daemon.wait_socket()
    busy = RawMTA.connect(daemon.sock_path, timeout=30)
    busy.hello()
    busy.command(Mail(b"<a@example.org>"))
    busy.send(EndOfMessage())  # takes a second: the one connection slot is taken
    queued = [RawMTA.connect(daemon.sock_path, timeout=30) for _ in range(3)]
    for mta in queued:
        mta.send(OFFER_V6)  # what an MTA sends at once; nobody accepted it yet
    daemon.proc.send_signal(signal.SIGTERM)
    assert kinds(busy.replies()) == ["Accept"]
    for mta in queued:
        assert isinstance(mta.replies()[0], OptNeg)
        mta.command(Connect(b"client.example", Family.INET, 4567, b"192.0.2.1"))
        assert kinds(mta.message())[-1] == "Accept"
        assert mta.wait_closed(10)  # draining: closed once its message is done
    assert daemon.proc.wait(60) == 0
    for mta in (busy, *queued):
        mta.close()
    log = daemon.log()
    assert "internal error" not in log and "closing connection" not in log


VERSIONED = """\
from milterkit.milter import Accept, Milter
from milterkit.protocol.constants import Action


class Versioned(Milter):
    actions = Action.ADD_HEADERS

    def end_of_message(self):
        self.add_header("X-Version", "{version}")
        return Accept()
"""


class Load:
    """Clients sending one message per connection in a loop, recording X-Version or the error."""

    def __init__(self, address: str, clients: int = 4) -> None:
        self.address = address
        self.results: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        while not self.stop.is_set():
            try:
                with RawMTA.connect(self.address, timeout=30) as mta:
                    mta.hello()
                    replies = mta.message()
                    with contextlib.suppress(OSError):  # a draining worker closes after it
                        mta.quit()
                headers = [r for r in replies if isinstance(r, AddHeader)]
                self.results.append(headers[0].value.decode() if headers else repr(replies))
            except Exception as exc:
                self.results.append(f"failed: {exc!r}")

    def finish(self) -> list[str]:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return self.results


def test_sigusr2_reload_picks_up_new_code_and_fails_nothing(
    tmp: Path, daemons: list[Daemon]
) -> None:
    code = tmp / "versioned.py"
    code.write_text(VERSIONED.format(version="1"))
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--workers",
        "2",
        target=f"{code}:Versioned",
    )
    daemons.append(daemon)
    daemon.wait_socket()
    load = Load(daemon.sock_path)
    try:
        wait_for(lambda: load.results.count("1") >= 20, 60, "messages before the reload")
        code.write_text(VERSIONED.format(version="2") + "# a different size than v1\n")
        daemon.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: "reload: every worker replaced" in daemon.log(), 60, "reload")
        gone = re.compile(r"old worker pid \d+ exited")
        wait_for(lambda: len(gone.findall(daemon.log())) == 2, 60, "old workers gone")
        after = len(load.results)
        wait_for(lambda: len(load.results) >= after + 20, 60, "messages after the reload")
    finally:
        results = load.finish()
    failed = [r for r in results if r not in ("1", "2")]
    assert failed == [], failed[:5]
    assert set(results[after + 4 :]) == {"2"}  # at most one message per client in flight
    assert daemon.log().count("reload: imported") == 2
    assert daemon.stop() == 0


def test_sigusr2_without_a_supervisor_is_ignored(tmp: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(tmp, "--socket", f"unix:{tmp}/milter.sock", "--workers", "0")
    daemons.append(daemon)
    daemon.wait_socket()
    assert one_message(daemon.sock_path)[-1] == "Accept"  # serving: its handlers are set
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "SIGUSR2 ignored: send it to the supervisor" in daemon.log(), 10, "log")
    assert one_message(daemon.sock_path)[-1] == "Accept"
    assert daemon.stop() == 0


def test_reload_with_broken_code_keeps_serving_the_old(tmp: Path, daemons: list[Daemon]) -> None:
    code = tmp / "versioned.py"
    code.write_text(VERSIONED.format(version="1"))
    daemon = Daemon(
        tmp, "--socket", f"unix:{tmp}/milter.sock", "--workers", "1", target=f"{code}:Versioned"
    )
    daemons.append(daemon)
    daemon.wait_socket()
    assert one_message(daemon.sock_path)[-1] == "Accept"
    code.write_text("this is not python\n")
    daemon.proc.send_signal(signal.SIGUSR2)
    gone = re.compile(r"old worker pid \d+ exited")
    wait_for(lambda: gone.search(daemon.log()), 60, "old worker gone")
    with RawMTA.connect(daemon.sock_path) as mta:
        mta.hello()
        replies = mta.message()
    assert AddHeader(b"X-Version", b"1") in replies
    log = daemon.log()
    assert f"worker 0: reload: error while loading {code}: " in log
    assert "; serving the code loaded before" in log
    assert daemon.stop() == 0
