"""``milterkit bench`` against the scripted milter, without subprocesses."""

from __future__ import annotations

import argparse
import io
import json

from milterkit.cli import bench as bench_cli
from milterkit.protocol import Command, Reject, ReplyCodePacket
from tests.client.conftest import Serve
from tests.client.milter_server import Script


def invoke(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="milterkit")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    status = bench_cli.run(parser.parse_args(["bench", *argv]), out, io.StringIO())
    return status, out.getvalue()


def test_short_run_prints_figures(serve: Serve) -> None:
    address, server = serve()
    options = ["--processes", "1", "--msgs-per-conn", "5", "--body-bytes", "100000"]
    status, out = invoke(["--socket", address, "--messages", "50", "--conns", "4", *options])
    assert status == 0
    assert "messages     50 in" in out and "msg/s" in out
    assert "latency ms   p50" in out and "p99" in out
    assert "errors       0 (none)" in out
    assert "driver cpu" in out
    # 50 messages, at most 5 per connection; 4 connections share the quota
    assert 10 <= len(server.logs) <= 13


def test_json_and_decisions(serve: Serve) -> None:
    address, _ = serve(Script(replies={Command.MAIL: [Reject()]}))
    status, out = invoke(["--socket", address, "--messages", "20", "--processes", "1", "--json"])
    data = json.loads(out)
    assert status == 0
    assert data["messages"] == 20
    assert data["decisions"] == {"reject": 20}
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "max"}


def test_a_reply_code_counts_as_reject_or_tempfail_as_check_reports_it(serve: Serve) -> None:
    """Not as "replycode": bench and the client name the decision the same way."""
    texts = iter([b"550 5.7.1 no"] * 3 + [b"451 4.7.1 later"] * 3)
    responder = lambda command, conn: ReplyCodePacket(next(texts))  # noqa: E731
    address, _ = serve(Script(replies={Command.MAIL: responder}))
    argv = ["--socket", address, "--messages", "6", "--conns", "1", "--processes", "1", "--json"]
    status, out = invoke(argv)
    assert status == 0
    assert json.loads(out)["decisions"] == {"reject": 3, "tempfail": 3}


def test_duration_bound_and_errors(tmp_path: object) -> None:
    options = ["--duration", "0.3", "--conns", "2", "--processes", "1"]
    status, out = invoke(["--socket", f"unix:{tmp_path}/none", *options])
    assert status == 1
    assert "errors" in out and "connect" in out


def test_main_with_two_processes(serve: Serve) -> None:
    address, _ = serve()
    argv = ["--socket", address, "--messages", "30", "--conns", "2", "--processes", "2", "--json"]
    parser = argparse.ArgumentParser()
    bench_cli._add_options(parser)
    out = io.StringIO()
    assert bench_cli.run(parser.parse_args(argv), out, io.StringIO()) == 0
    data = json.loads(out.getvalue())
    assert data["messages"] == 30 and data["processes"] == 2
    assert data["driver_cpu_s"] > 0


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_progress_on_a_tty(serve: Serve) -> None:
    address, _ = serve()
    parser = argparse.ArgumentParser()
    bench_cli._add_options(parser)
    args = parser.parse_args(["--socket", address, "--duration", "1.2", "--processes", "1"])
    err = _Tty()
    assert bench_cli.run(args, io.StringIO(), err) == 0
    assert "msg/s" in err.getvalue()
