"""``--metrics``: Prometheus text and /healthz scraped over HTTP from a running daemon."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from milterkit.runtime.metrics import BUCKETS, MetricsHub, MetricsSender
from milterkit.runtime.observe import MessageRecord
from tests.realmta._util import free_port
from tests.runtime.test_daemon import Daemon, daemons, one_message, tmp
from tests.runtime.test_server_mta import RawMTA, wait_for

__all__ = ["daemons", "tmp"]  # fixtures

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, checking every line is a comment or a sample."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def scrape(port: int) -> dict[str, float]:
    status, content_type, body = get(port, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return samples(body)


def test_metrics_across_workers_and_health(tmp: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    daemon = Daemon(
        tmp,
        "--socket",
        f"unix:{tmp}/milter.sock",
        "--workers",
        "2",
        "--metrics",
        f"inet:{port}@127.0.0.1",
        "--shutdown-delay",
        "3",
    )
    daemons.append(daemon)
    daemon.wait_socket()
    wait_for(lambda: "metrics on http://127.0.0.1" in daemon.log(), 20, "metrics listener")
    assert get(port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    for _ in range(6):
        assert one_message(daemon.sock_path)[-1] == "Accept"
    with RawMTA.connect(daemon.sock_path) as mta:
        mta.negotiate()
        mta.send_raw(b"\x00\x00\x00\x01\xff")  # an unknown command: protocol error
        assert mta.wait_closed()
    wait_for(lambda: scrape(port).get("milterkit_connections_total") == 7, 20, "7 connections")
    values = scrape(port)
    assert values['milterkit_messages_total{decision="accept"}'] == 6
    assert values['milterkit_errors_total{kind="protocol_error"}'] == 1
    assert values['milterkit_connections_closed_total{reason="quit"}'] == 6
    assert values["milterkit_connections_active"] == 0
    assert values["milterkit_workers"] == 2
    assert values["milterkit_worker_restarts_total"] == 0
    assert values['milterkit_callback_seconds_count{callback="end_of_message"}'] == 6
    assert values['milterkit_callback_seconds_bucket{callback="end_of_message",le="+Inf"}'] == 6
    assert values['milterkit_callback_seconds_sum{callback="end_of_message"}'] > 0

    os.kill(daemon.wait_workers(2)[0], signal.SIGKILL)
    wait_for(lambda: scrape(port)["milterkit_worker_restarts_total"] == 1, 20, "restart count")
    wait_for(lambda: scrape(port)["milterkit_workers"] == 2, 20, "worker replaced")

    assert get(port, "/nothing")[0] == 404
    assert get(port, "/metrics", "POST")[0] == 405
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"nonsense\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: get(port, "/healthz")[0] == 503, 10, "503 while stopping")
    assert get(port, "/healthz")[2] == "draining\n"
    assert one_message(daemon.sock_path)[-1] == "Accept"  # still serving during the delay
    assert daemon.proc.wait(60) == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--metrics", "unix:/tmp/m.sock"), "invalid metrics address 'unix:/tmp/m.sock'"),
        (("--metrics", "inet:9@127.0.0.1", "--workers", "0"), "--metrics needs forked workers"),
        (("--shutdown-delay", "-1"), "invalid shutdown delay -1.0: negative"),
        (("--shutdown-delay", "1", "--workers", "0"), "--shutdown-delay needs forked workers"),
    ],
)
def test_bad_metrics_options_exit_78(
    tmp: Path, daemons: list[Daemon], args: tuple[str, ...], error: str
) -> None:
    daemon = Daemon(tmp, "--socket", f"unix:{tmp}/milter.sock", *args)
    daemons.append(daemon)
    assert daemon.proc.wait(30) == 78
    assert error in daemon.log()


def test_metrics_port_in_use_exits_78(tmp: Path, daemons: list[Daemon]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = ("--socket", f"unix:{tmp}/milter.sock", "--metrics", f"inet:{port}@127.0.0.1")
        daemon = Daemon(tmp, *args)
        daemons.append(daemon)
        assert daemon.proc.wait(30) == 78
    assert f"cannot listen for metrics on inet:{port}@127.0.0.1: " in daemon.log()
    assert not (tmp / "milter.sock").exists()


def test_histogram_buckets_are_cumulative() -> None:
    hub = MetricsHub(f"inet:{free_port()}@127.0.0.1")
    try:
        hub.totals.observe("body", 0.0001)
        hub.totals.observe("body", 0.3)
        hub.totals.observe("body", 99.0)
        hub.totals.add("messages", 'we"ird')
        values = samples(hub.render())
    finally:
        hub.close()
    assert values['milterkit_callback_seconds_bucket{callback="body",le="0.001"}'] == 1
    assert values['milterkit_callback_seconds_bucket{callback="body",le="0.5"}'] == 2
    assert values[f'milterkit_callback_seconds_bucket{{callback="body",le="{BUCKETS[-1]:g}"}}'] == 2
    assert values['milterkit_callback_seconds_bucket{callback="body",le="+Inf"}'] == 3
    assert values['milterkit_callback_seconds_count{callback="body"}'] == 3
    assert values['milterkit_messages_total{decision="we\\"ird"}'] == 1


def test_sender_merges_into_the_hub() -> None:
    hub = MetricsHub(f"inet:{free_port()}@127.0.0.1")
    try:
        # worker_sender() would close the hub's ends (it is for a forked worker):
        # a sender on the same socket pair, outside an event loop (it sends at once)
        worker = MetricsSender(hub._sender)
        worker.connection_opened("w0-c1", "peer")
        worker.message_done(MessageRecord("w0-c1", decision="reject"))
        worker.error("timeout")
        hub._on_datagram()
        hub._serving = lambda: [os.getpid()]
        values = samples(hub.render())
    finally:
        hub.close()
    assert values['milterkit_messages_total{decision="reject"}'] == 1
    assert values['milterkit_errors_total{kind="timeout"}'] == 1
    assert values["milterkit_connections_active"] == 1
