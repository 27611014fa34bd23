"""Prometheus metrics and ``/healthz`` for the daemon, aggregated in the supervisor.

Workers are separate processes, so their counts have to meet somewhere. Each
worker's :class:`MetricsSender` (an :class:`~milterkit.runtime.observe.Observer`)
adds up what happens and, at most every :data:`FLUSH_INTERVAL` seconds, sends
the increments as one datagram over a unix datagram socket pair made before
the fork. The supervisor's :class:`MetricsHub` adds them to its totals and
answers HTTP on the ``--metrics`` port from the supervisor's own select loop:
no thread (the supervisor forks, and forking a threaded process is unsafe),
no shared files (prometheus-client's multiprocess mode needs a directory of
mmap files that must be wiped at every start), and no dependency: the text
exposition format is a few lines of standard library.

``/metrics`` is the Prometheus text format 0.0.4; ``/healthz`` answers 200
while serving and 503 once a stop has begun (including ``--shutdown-delay``),
so a load balancer can move away before the drain. A worker killed by SIGKILL
loses at most its last half second of increments; its active connections
leave the gauge because the gauge is kept per live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from milterkit.runtime.address import Inet6Address, InetAddress, parse_address
from milterkit.runtime.errors import RuntimeConfigError
from milterkit.runtime.observe import MessageRecord, Observer

__all__ = ["BUCKETS", "FLUSH_INTERVAL", "MetricsHub", "MetricsSender"]

#: Upper bounds of the callback latency histogram, in seconds (+Inf is implied).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: How often a busy worker sends its increments to the supervisor.
FLUSH_INTERVAL = 0.5
_MAX_REQUEST = 8192
_MAX_DATAGRAM = 65536
_log = logging.getLogger("milterkit")


class _Counts:
    """Counters by (name, label value) and histograms by callback; mergeable."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, float]] = {}
        self.histograms: dict[str, list[float]] = {}  # buckets..., +Inf, sum

    def add(self, name: str, label: str = "", amount: float = 1) -> None:
        family = self.counters.setdefault(name, {})
        family[label] = family.get(label, 0) + amount

    def observe(self, callback: str, seconds: float) -> None:
        row = self.histograms.get(callback)
        if row is None:
            row = self.histograms[callback] = [0.0] * (len(BUCKETS) + 2)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                row[i] += 1
                break
        else:
            row[len(BUCKETS)] += 1
        row[-1] += seconds

    def merge(self, data: dict[str, Any]) -> None:
        for name, family in data.get("counters", {}).items():
            for label, amount in family.items():
                self.add(name, label, amount)
        for callback, row in data.get("histograms", {}).items():
            mine = self.histograms.setdefault(callback, [0.0] * (len(BUCKETS) + 2))
            if len(row) == len(mine):
                for i, value in enumerate(row):
                    mine[i] += value

    def empty(self) -> bool:
        return not self.counters and not self.histograms


class MetricsSender(Observer):
    """Worker side: count events, send the increments to the supervisor now and then."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = _Counts()
        self.active = 0
        self._scheduled = False

    def connection_opened(self, cid: str, peer: str) -> None:
        self.active += 1
        self.pending.add("connections")
        self._schedule()

    def message_done(self, record: MessageRecord) -> None:
        self.pending.add("messages", record.decision)
        self._schedule()

    def connection_done(self, cid: str, reason: str, peer: str) -> None:
        self.active -= 1
        self.pending.add("closed", reason)
        self._schedule()

    def callback_timed(self, name: str, seconds: float) -> None:
        self.pending.observe(name, seconds)
        self._schedule()

    def error(self, kind: str) -> None:
        self.pending.add("errors", kind)
        self._schedule()

    def _schedule(self) -> None:
        """Flush in FLUSH_INTERVAL (one timer at a time; none while idle)."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(FLUSH_INTERVAL, self._timer)

    def _timer(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send what was counted since the last flush; keep it if the socket is full."""
        if self.pending.empty():
            return
        data = {
            "pid": os.getpid(),
            "active": self.active,
            "counters": self.pending.counters,
            "histograms": self.pending.histograms,
        }
        try:
            self.sock.send(json.dumps(data).encode())
        except (BlockingIOError, InterruptedError):
            self._schedule()  # the supervisor is behind: try again later, nothing lost
            return
        except OSError:
            return  # the supervisor is gone; the worker follows it
        self.pending = _Counts()


class MetricsHub:
    """Supervisor side: the datagram socket, the totals and the HTTP endpoint.

    Create it before the workers fork; call :meth:`attach` with the
    supervisor, and in each worker :meth:`worker_sender` (which closes the
    supervisor's ends in the worker and returns its observer).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.http = _listen(address)
        self._receiver, self._sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._receiver.setblocking(False)
        self._sender.setblocking(False)
        self._receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.totals = _Counts()
        self.active: dict[int, int] = {}
        self._clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self._add_reader: Callable[[int, Callable[[], object]], None] | None = None
        self._remove_reader: Callable[[int], None] | None = None
        self._workers: Callable[[], Iterable[int]] = list
        self._serving: Callable[[], Iterable[int]] = list
        self._stopping: Callable[[], bool] = lambda: False
        self._restarts: Callable[[], int] = lambda: 0

    @property
    def port(self) -> int:
        return int(self.http.getsockname()[1])

    def attach(self, supervisor: Any) -> None:
        """Serve from ``supervisor``'s loop, reading its workers, restarts and state."""
        self._add_reader = supervisor.add_reader
        self._remove_reader = supervisor.remove_reader
        self._workers = lambda: list(supervisor.worker_pids)
        self._serving = lambda: list(supervisor.all_pids)  # with old ones draining
        self._stopping = lambda: bool(supervisor.stopping)
        self._restarts = lambda: int(supervisor.restarts)
        supervisor.add_reader(self._receiver.fileno(), self._on_datagram)
        supervisor.add_reader(self.http.fileno(), self._on_accept)

    def worker_sender(self) -> MetricsSender:
        """In a worker after fork: drop the supervisor's ends, return the observer."""
        self.http.close()
        self._receiver.close()
        for conn, _ in self._clients.values():
            conn.close()
        self._clients.clear()
        return MetricsSender(self._sender)

    def close(self) -> None:
        for sock in (self.http, self._receiver, self._sender):
            sock.close()

    # ---------------------------------------------------------- aggregation

    def _on_datagram(self) -> None:
        """Merge every datagram waiting (bounded: the loop must get back to signals)."""
        for _ in range(1000):
            try:
                data = self._receiver.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            try:
                update = json.loads(data)
                self.totals.merge(update)
                self.active[int(update["pid"])] = int(update["active"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                _log.warning("metrics: unreadable update from a worker: %s", exc)

    def render(self) -> str:
        """The Prometheus text exposition of the current totals."""
        serving = set(self._serving())
        for pid in [p for p in self.active if p not in serving]:
            del self.active[pid]  # a dead worker's connections are gone with it
        out: list[str] = []
        counters = self.totals.counters
        _family(out, "milterkit_messages_total", "counter", "Messages by decision.")
        _labelled(out, "milterkit_messages_total", "decision", counters.get("messages", {}))
        _family(out, "milterkit_connections_total", "counter", "MTA connections accepted.")
        out.append(f"milterkit_connections_total {_num(counters.get('connections', {}))}")
        _family(out, "milterkit_connections_active", "gauge", "MTA connections open now.")
        out.append(f"milterkit_connections_active {sum(self.active.values())}")
        _family(out, "milterkit_connections_closed_total", "counter", "Connection ends by reason.")
        _labelled(out, "milterkit_connections_closed_total", "reason", counters.get("closed", {}))
        _family(out, "milterkit_errors_total", "counter", "Errors by kind.")
        _labelled(out, "milterkit_errors_total", "kind", counters.get("errors", {}))
        self._render_histogram(out)
        _family(out, "milterkit_workers", "gauge", "Worker processes running.")
        out.append(f"milterkit_workers {len(list(self._workers()))}")
        _family(out, "milterkit_worker_restarts_total", "counter", "Workers restarted after dying.")
        out.append(f"milterkit_worker_restarts_total {self._restarts()}")
        return "\n".join(out) + "\n"

    def _render_histogram(self, out: list[str]) -> None:
        name = "milterkit_callback_seconds"
        _family(out, name, "histogram", "Time from an MTA command to our answer, by callback.")
        for callback, row in sorted(self.totals.histograms.items()):
            label = f'callback="{_escape(callback)}"'
            running = 0.0
            for bound, count in zip(BUCKETS, row, strict=False):
                running += count
                out.append(f'{name}_bucket{{{label},le="{bound:g}"}} {_fmt(running)}')
            running += row[len(BUCKETS)]
            out.append(f'{name}_bucket{{{label},le="+Inf"}} {_fmt(running)}')
            out.append(f"{name}_sum{{{label}}} {row[-1]!r}")
            out.append(f"{name}_count{{{label}}} {_fmt(running)}")

    # ----------------------------------------------------------------- HTTP

    def _on_accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.http.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("metrics: accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._clients[conn.fileno()] = (conn, bytearray())
            assert self._add_reader is not None
            fd = conn.fileno()
            self._add_reader(fd, functools.partial(self._on_request, fd))

    def _on_request(self, fd: int) -> None:
        conn, buffer = self._clients[fd]
        try:
            data = conn.recv(_MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer += data
        if data and b"\r\n\r\n" not in buffer and len(buffer) < _MAX_REQUEST:
            return
        self._finish(fd, conn, self._respond(bytes(buffer)) if data else None)

    def _finish(self, fd: int, conn: socket.socket, response: bytes | None) -> None:
        assert self._remove_reader is not None
        self._remove_reader(fd)
        del self._clients[fd]
        with contextlib.suppress(OSError):
            if response is not None:
                conn.setblocking(True)
                conn.settimeout(2.0)  # a few kB: only a client that stopped reading blocks
                conn.sendall(response)
        conn.close()

    def _respond(self, request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _http(400, "bad request\n")
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _http(405, "method not allowed\n")
        if target == "/metrics":
            body = self.render()
            return _http(200, body, "text/plain; version=0.0.4; charset=utf-8", method == "HEAD")
        if target == "/healthz":
            if self._stopping():
                return _http(503, "draining\n", head=method == "HEAD")
            return _http(200, "ok\n", head=method == "HEAD")
        return _http(404, "not found: try /metrics or /healthz\n")


def _listen(address: str) -> socket.socket:
    """A TCP listener for ``inet:PORT@HOST`` / ``inet6:PORT@HOST``."""
    parsed = parse_address(address)
    if not isinstance(parsed, InetAddress | Inet6Address):
        raise RuntimeConfigError(
            f"invalid metrics address {address!r}: expected inet:PORT@HOST or inet6:PORT@HOST"
        )
    family = socket.AF_INET6 if isinstance(parsed, Inet6Address) else socket.AF_INET
    try:
        sock = socket.create_server((parsed.host, parsed.port), family=family, backlog=64)
    except OSError as exc:
        raise RuntimeConfigError(f"cannot listen for metrics on {address}: {exc}") from None
    sock.setblocking(False)
    return sock


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


def _http(
    status: int, body: str, content_type: str = "text/plain; charset=utf-8", head: bool = False
) -> bytes:
    payload = body.encode()
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return header.encode() + (b"" if head else payload)


def _family(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _labelled(out: list[str], name: str, label: str, values: dict[str, float]) -> None:
    for value, count in sorted(values.items()):
        out.append(f'{name}{{{label}="{_escape(value)}"}} {_fmt(count)}')


def _num(values: dict[str, float]) -> str:
    return _fmt(sum(values.values()))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
