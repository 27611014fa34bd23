"""What a milter costs a real Postfix: messages/s smtpd accepts, with and without a milter.

A private Postfix instance (``tests/realmta/postfix.py``) relays everything to
Postfix's ``smtp-sink``; Postfix's ``smtp-source`` sends 8 KiB messages into it
(one message per SMTP session, as a fresh client does) at 1, 8 and 32
parallel sessions. Each milter configuration gets its own ``smtpd`` listener
in the same instance (``-o smtpd_milters=...``), so every configuration
shares one queue, one qmgr and one smtp-sink, and the runs alternate between
configurations repeat by repeat. Every milter runs the *canonical milter* of
``benchmarks/peers/`` (every step with a reply, continue, add a header at
end of message, accept).

Per run it records the messages smtpd accepted (qmgr's ``queue active``
lines in Postfix's log), the wall time smtp-source took, and, from the start
of the run until the queue has drained to smtp-sink, the CPU of every
Postfix process (the master's tree, reaped children included), of the milter
(its process tree), of smtp-source and of smtp-sink. It checks that nothing
is lost: every accepted message is logged ``status=sent`` to smtp-sink, each
carries the milter's header (``milter_header_checks`` logs a ``milter-header-info:`` line
per header), and the log segment of the run has no warning, reject,
deferral or milter error.

    python benchmarks/postfix.py            # default: quick, about 3 minutes
    python benchmarks/postfix.py --full     # more repeats, longer runs
    python benchmarks/postfix.py --smoke --out /tmp/b.md   # test suite (< 1 min)

The Markdown section is written into ``--out`` (default docs/benchmarks.md)
between two marker comments, replacing an earlier one; the rest of the file
is kept. Needs root (Postfix's master starts as root), postfix and gcc.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.realmta

import compare  # noqa: E402  (benchmarks/compare.py: servers, builds, /proc readers)
from tests.realmta._util import free_port, port_listening, wait_until  # noqa: E402
from tests.realmta.postfix import PostfixInstance, postfix_available  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
NOTES = HERE / "postfix-analysis.md"
#: The raw runs behind docs/benchmarks.md, for --render (other --out: OUT.json beside it).
RESULTS = HERE / "postfix-results.json"
BEGIN = "<!-- begin benchmarks/postfix.py -->"
END = "<!-- end benchmarks/postfix.py -->"
BODY = 8192
SENDER = "bench@example.com"
RECIPIENT = "sink@example.net"
ALONE = "postfix-alone"
DEBIAN_PACKAGES = ("postfix", "libmilter1.0.1")


@dataclasses.dataclass(frozen=True)
class Config:
    """One smtpd listener: its name and the milter server behind it (None: no milter)."""

    name: str
    spec: compare.ServerSpec | None


def milter_specs(venv_python: str, compiled_python: str = "") -> list[compare.ServerSpec]:
    """The milters: milterkit (speed extra or not, 1 or 2 workers), the peers, minimal variants.

    ``libmilter-C`` and ``pymilter`` run as shipped, with Nagle on;
    ``-nodelay`` sets TCP_NODELAY on libmilter's listener (as compare.py does).
    ``-minimal`` is the same filter written with only the end-of-message
    callback, so the library negotiates the NO* bits for the other steps.
    ``-noreply`` (an experiment, see EXPERIMENTS) negotiates NR_* for the content steps.
    ``milterkit-compiled-*`` run the same script on the mypyc-compiled build
    (compare.ensure_compiled_venv: this checkout, built with MILTERKIT_MYPYC=1).
    """

    def mk(
        loop: str, workers: int, style: str = "canonical", *, compiled: bool = False
    ) -> compare.ServerSpec:
        script = str(compare.PEERS / "milterkit_canonical.py")
        argv = [script, "--workers", str(workers), "--loop", loop]
        if style != "canonical":
            argv += ["--style", style]
        suffix = "" if style == "canonical" else f"-{style}"
        build = "compiled-" if compiled else ""
        interpreter = compiled_python if compiled else sys.executable
        return compare.ServerSpec(
            f"milterkit-{build}{loop}-{workers}w{suffix}",
            lambda port: [interpreter, argv[0], str(port), *argv[1:]],
            loop,
            "milterkit",
            "compiled" if compiled else "",
        )

    def pymilter(name: str, *options: str) -> compare.ServerSpec:
        argv = [venv_python, str(compare.PEERS / "pymilter_canonical.py")]
        return compare.ServerSpec(
            name, lambda port: [*argv, str(port), *options], None, "peer", "venv"
        )

    def libmilter(name: str, *options: str) -> compare.ServerSpec:
        c_peer = str(compare.C_PEER)
        return compare.ServerSpec(
            name, lambda port: [c_peer, str(port), *options], None, "peer", "libmilter"
        )

    return [
        mk("uvloop", 1),
        mk("uvloop", 2),
        mk("asyncio", 1),
        mk("asyncio", 2),
        pymilter("pymilter", "nagle"),
        libmilter("libmilter-C", "nagle"),
        libmilter("libmilter-C-nodelay"),
        mk("uvloop", 1, "minimal"),
        libmilter("libmilter-C-nodelay-minimal", "minimal"),
        mk("uvloop", 1, "noreply"),
        mk("uvloop", 1, compiled=True),
        mk("uvloop", 1, "minimal", compiled=True),
    ]


#: Configurations that run only when named in --only: experiments, not ways users write milters.
EXPERIMENTS = ("milterkit-uvloop-1w-noreply",)


SMOKE_CONFIGS = (ALONE, "milterkit-asyncio-1w")


@dataclasses.dataclass
class Run:
    sessions: int
    sent: int  # messages smtp-source was asked to send
    accepted: int  # qmgr "queue active" lines
    delivered: int  # status=sent to smtp-sink
    headers: int  # milter_header_checks info lines (the milter's header arrived)
    problems: list[str]
    wall_s: float
    msgs_per_s: float
    postfix_cpu_ms: float  # per accepted message
    milter_cpu_ms: float
    source_cpu_ms: float
    sink_cpu_ms: float
    load1: float


@dataclasses.dataclass
class Cell:
    config: str
    sessions: int
    runs: list[Run] = dataclasses.field(default_factory=list)

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in self.runs))

    def spread(self, field: str) -> tuple[float, float]:
        values = [float(getattr(r, field)) for r in self.runs]
        return min(values), max(values)

    def total(self, field: str) -> int:
        return sum(int(getattr(r, field)) for r in self.runs)

    @property
    def problems(self) -> list[str]:
        return [p for r in self.runs for p in r.problems]


# ------------------------------------------------------------------ Postfix


class BenchPostfix(PostfixInstance):
    """The private Postfix, relaying to smtp-sink, with one smtpd listener per configuration.

    The instance's own listener (``self.port``) has no milter: it is
    "Postfix alone". ``milter_header_checks`` logs one ``info:`` line per
    milter-added X-Bench header, so the run can check that the milter's
    modification reached the message.
    """

    def __init__(self, sink_port: int, milters: dict[str, str]) -> None:
        super().__init__(milter_default_action="tempfail")
        self.sink_port = sink_port
        self.listeners = {ALONE: self.port}
        self.milter_of = {ALONE: ""}
        for name, milter in milters.items():
            self.listeners[name] = free_port(self.host)
            self.milter_of[name] = milter

    def main_cf(self) -> dict[str, str]:
        params = super().main_cf()
        params.update(
            {
                "relayhost": f"[127.0.0.1]:{self.sink_port}",
                "default_transport": "smtp",
                "relay_transport": "smtp",
                "milter_header_checks": f"regexp:{self.config_dir / 'milter_header_checks'}",
            }
        )
        return params

    def _write_config(self) -> None:
        super()._write_config()
        (self.config_dir / "milter_header_checks").write_text(
            "/^X-Bench:/ INFO bench header from the milter\n"
        )
        lines = [
            f"127.0.0.1:{port} inet n - n - - smtpd -o syslog_name=postfix/{name} "
            f"-o smtpd_milters=inet:127.0.0.1:{self.milter_port(name)}"
            for name, port in self.listeners.items()
            if name != ALONE
        ]
        with open(self.config_dir / "master.cf", "a") as master_cf:
            master_cf.write("\n".join(lines) + "\n")

    def milter_port(self, name: str) -> int:
        return int(self.milter_of[name].rsplit(":", 1)[1])

    def wait_listening(self) -> None:
        for name, port in self.listeners.items():
            wait_until(lambda p=port: True if port_listening(p) else None, 30, f"smtpd {name}")

    def master_pid(self) -> int:
        pid = self._master_pid()
        if pid is None:
            raise RuntimeError(f"Postfix master is not running:\n{self.diagnostics()}")
        return pid

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


class Sink:
    """smtp-sink on a free loopback port (as nobody: it refuses to run as root)."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.logfile = logdir / "smtp-sink.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{self.port}", "1024"]
        compare.log("$ " + shlex.join(argv))
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: True if port_listening(self.port) else None, 30, "smtp-sink")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------- one run

_ACCEPTED = re.compile(
    r"qmgr\[\d+\]: ([0-9A-F]+): from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)"
)
_SENT = re.compile(
    r"smtp\[\d+\]: ([0-9A-F]+): to=<[^>]*>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:(\d+),.* status=sent"
)
_HEADER = re.compile(r"cleanup\[\d+\]: ([0-9A-F]+): milter-header-info: header X-Bench: ")
_PROBLEM = re.compile(
    r"warning|error|fatal|panic|reject|milter-(?:discard|hold)|status=(?:deferred|bounced|expired)"
    r"|lost connection|timeout|timed out|4\.7\.1|try again",
    re.IGNORECASE,
)


#: Log lines that match _PROBLEM but say nothing about the milter or lost mail: cleanup
#: notices that the file system's clock runs ahead of the system clock (a shared
#: machine's file system).
_BENIGN = re.compile(
    r"warning: file system clock is \d+ seconds? ahead|warning: resetting file time stamps"
)


def is_problem(line: str) -> bool:
    return _BENIGN.search(line) is None


@dataclasses.dataclass
class LogCounts:
    accepted: set[str]
    delivered: set[str]
    headers: set[str]
    problems: list[str]


def scan_log(text: str, sink_port: int) -> LogCounts:
    counts = LogCounts(set(), set(), set(), [])
    for line in text.splitlines():
        if m := _ACCEPTED.search(line):
            counts.accepted.add(m.group(1))
        elif (m := _SENT.search(line)) and int(m.group(2)) == sink_port:
            counts.delivered.add(m.group(1))
        elif m := _HEADER.search(line):
            counts.headers.add(m.group(1))
        elif _PROBLEM.search(line) and is_problem(line):
            counts.problems.append(line.strip())
    return counts


@dataclasses.dataclass
class SourceRun:
    wall_s: float
    cpu_s: float
    completed: int  # DATA commands smtp-source saw completed (its -c counter)
    output: str  # anything else it printed (errors)


def run_source(port: int, sessions: int, messages: int) -> SourceRun:
    """Run smtp-source with its DATA counter (``-c``: "1\\r2\\r...")."""
    argv = [SMTP_SOURCE, "-c", "-4", "-s", str(sessions), "-m", str(messages), "-l", str(BODY)]
    argv += ["-f", SENDER, "-t", RECIPIENT, "-M", "client.test.example", f"127.0.0.1:{port}"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    counted = [int(word) for word in output.replace("\r", " ").split() if word.isdigit()]
    rest = " ".join(w for w in output.replace("\r", " ").split() if not w.isdigit())
    if proc.returncode != 0:
        rest += f"\nsmtp-source exited {proc.returncode}"
    return SourceRun(wall, usage.ru_utime + usage.ru_stime, max(counted, default=0), rest.strip())


def keep_log(text: str, name: str, sessions: int) -> None:
    """Keep the Postfix log of a run that had problems (the instance's directory goes)."""
    logdir = compare.BUILD / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    (logdir / f"postfix-{name}-{sessions}-{stamp}.log").write_text(text)


def measure(
    postfix: BenchPostfix,
    sink: Sink,
    config: Config,
    milter: compare.Server | None,
    sessions: int,
    messages: int,
) -> Run:
    """One smtp-source run into one listener, until the queue has drained to smtp-sink."""
    if milter is not None and (milter.proc is None or milter.proc.poll() is not None):
        raise RuntimeError(f"{config.name} is not running:\n{milter.log_tail()}")
    master = postfix.master_pid()
    load1 = float(compare._loadavg().split()[0])
    offset = postfix.log_size()
    cpu_postfix = compare.tree_cpu_seconds(master)
    cpu_milter = compare.tree_cpu_seconds(milter.pid) if milter else 0.0
    cpu_sink = compare.tree_cpu_seconds(sink.pid)
    source = run_source(postfix.listeners[config.name], sessions, messages)
    wall = source.wall_s

    def drained() -> LogCounts | None:
        counts = scan_log(postfix.log_since(offset), sink.port)
        done = len(counts.accepted) >= messages and counts.delivered >= counts.accepted
        return counts if done else None

    try:
        counts = wait_until(drained, 120, f"{messages} messages delivered to smtp-sink")
    except TimeoutError:
        counts = scan_log(postfix.log_since(offset), sink.port)
    time.sleep(0.05)  # the last smtp/cleanup processes finish their bookkeeping
    counts = scan_log(postfix.log_since(offset), sink.port)
    accepted = len(counts.accepted)
    per_msg = 1000.0 / accepted if accepted else float("inf")
    problems = list(counts.problems)
    if source.output:
        problems.append(f"smtp-source: {source.output[-500:]}")
    if source.completed != accepted:
        problems.append(
            f"smtp-source completed {source.completed} DATA commands, the log shows {accepted} "
            f"queued and {len(counts.delivered)} sent to smtp-sink"
        )
    if len(counts.delivered & counts.accepted) != accepted:
        problems.append(f"{accepted - len(counts.delivered & counts.accepted)} not delivered")
    if accepted != messages:
        problems.append(f"smtpd accepted {accepted} of {messages}")
    if milter is not None and len(counts.headers & counts.accepted) != accepted:
        problems.append(f"{accepted - len(counts.headers & counts.accepted)} without X-Bench")
    if problems:
        keep_log(postfix.log_since(offset), config.name, sessions)
    return Run(
        sessions=sessions,
        sent=messages,
        accepted=accepted,
        delivered=len(counts.delivered & counts.accepted),
        headers=len(counts.headers & counts.accepted),
        problems=problems,
        wall_s=wall,
        msgs_per_s=accepted / wall if wall > 0 else 0.0,
        postfix_cpu_ms=(compare.tree_cpu_seconds(master) - cpu_postfix) * per_msg,
        milter_cpu_ms=(compare.tree_cpu_seconds(milter.pid) - cpu_milter) * per_msg
        if milter
        else 0.0,
        source_cpu_ms=source.cpu_s * per_msg,
        sink_cpu_ms=(compare.tree_cpu_seconds(sink.pid) - cpu_sink) * per_msg,
        load1=load1,
    )


# ------------------------------------------------------------------- report


def render_throughput(
    cells: dict[tuple[str, int], Cell], names: list[str], sessions: list[int]
) -> str:
    """The headline table: msgs/s (median, min to max) and the ratio to Postfix alone."""
    head = "| milter | " + " | ".join(f"{s} session{'s' if s > 1 else ''}" for s in sessions)
    out = [head + " |", "|---|" + "--:|" * len(sessions)]
    for name in names:
        row = [name]
        for s in sessions:
            cell = cells.get((name, s))
            alone = cells.get((ALONE, s))
            if cell is None or not cell.runs:
                row.append("—")
                continue
            rate = cell.median("msgs_per_s")
            lo, hi = cell.spread("msgs_per_s")
            text = f"{rate:.0f} ({lo:.0f}\u2013{hi:.0f})"
            if name != ALONE and alone is not None and alone.runs:
                text += f", **{rate / alone.median('msgs_per_s'):.2f}x**"
            row.append(text)
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def render_detail(cells: dict[tuple[str, int], Cell], names: list[str], sessions: list[int]) -> str:
    """Per cell: CPU per message of each party, load, and the loss/problem check."""
    out = [
        "| milter | sessions | msgs/s | Postfix CPU ms/msg | milter CPU ms/msg "
        "| smtp-source ms/msg | smtp-sink ms/msg | load (1 min) | sent / accepted / at sink "
        "/ with header | problems |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in sessions:
        for name in names:
            cell = cells.get((name, s))
            if cell is None or not cell.runs:
                continue
            header = "—" if name == ALONE else str(cell.total("headers"))
            out.append(
                f"| {name} | {s} | {cell.median('msgs_per_s'):.0f} "
                f"| {cell.median('postfix_cpu_ms'):.3f} | {cell.median('milter_cpu_ms'):.3f} "
                f"| {cell.median('source_cpu_ms'):.3f} | {cell.median('sink_cpu_ms'):.3f} "
                f"| {cell.median('load1'):.2f} "
                f"| {cell.total('sent')} / {cell.total('accepted')} / {cell.total('delivered')} "
                f"/ {header} | {len(cell.problems)} |"
            )
    return "\n".join(out) + "\n"


def section(
    *,
    throughput: str,
    detail: str,
    meta: dict[str, Any],
    notes: str,
    problems: list[str],
) -> str:
    """The Markdown section; ``meta`` is what main() saves next to the raw runs."""
    parts = [
        BEGIN,
        "## Behind a real Postfix: what the milter costs the MTA",
        "",
        "Generated by `benchmarks/postfix.py`; do not edit the figures by hand. A private "
        "Postfix instance relays to `smtp-sink`; `smtp-source` sends 8 KiB messages (one per "
        "SMTP session) into an smtpd listener without a milter (*Postfix alone*) or with one "
        "canonical milter (`inet:` on loopback, milter protocol 6, "
        "`milter_default_action = tempfail`). "
        f"Each cell ran {meta['repeats']} time(s) for about {meta['seconds']:g} s, the "
        "configurations "
        "alternating within each repeat; figures are medians, with the range over the repeats. "
        "msgs/s is what smtpd accepted divided by smtp-source's wall time; CPU per message is "
        "counted from the start of a run until the queue has drained to smtp-sink. The "
        "machine is shared with other jobs: see the load column.",
        "",
        "### Messages/s accepted by smtpd, and the ratio to Postfix alone",
        "",
        throughput,
        "### CPU per message and the loss check",
        "",
        detail,
    ]
    if problems:
        parts += ["Problems seen in the Postfix log or from smtp-source (first 10):", "", "```"]
        parts += [p[:300] for p in problems[:10]] + ["```", ""]
    else:
        parts += [
            "Every message smtpd accepted was logged `status=sent` to smtp-sink and, behind a "
            "milter, carried its header; smtp-source's count of completed DATA commands matched "
            "the log; the Postfix log of the runs has no warning, reject, deferral, milter "
            "timeout or tempfail.",
            "",
        ]
    if notes:
        parts += [notes.rstrip(), ""]
    parts += ["### How it was run", "", "```", shlex.join(["python3", *meta["argv"]]), "```", ""]
    parts += ["Milters:", "", "```", *meta["commands"]]
    parts += [
        "```",
        "",
        "Load, per run: `smtp-source -c -4 -s SESSIONS -m N -l 8192 -f bench@example.com "
        "-t sink@example.net -M client.test.example 127.0.0.1:PORT`, N sized from a pilot "
        "run so that a run lasts about the configured seconds.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        "Machine: "
        + "; ".join(f"{k} {v}" for k, v in meta["machine"].items())
        + f"; load average (1/5/15 min) {meta['load']}.",
        END,
    ]
    return "\n".join(parts) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the marked section of ``path`` (or append it); keep everything else."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def versions_of(venv_python: str) -> dict[str, str]:
    versions = {"Python": platform.python_version()}
    with contextlib.suppress(Exception):
        import importlib.metadata

        versions["uvloop"] = importlib.metadata.version("uvloop")
    with contextlib.suppress(Exception):
        import milterkit

        versions["milterkit"] = milterkit.__version__ + compare._git_head()
    if venv_python:
        peers = compare.peer_versions(venv_python)
        for name, version in peers.items():
            if name.lower() == "pymilter":
                versions["pymilter"] = version
    if shutil.which("dpkg-query"):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *DEBIAN_PACKAGES],
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            package, _, version = line.partition(" ")
            versions[package] = version
    return versions


# --------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="5 repeats of 3 s per cell (~8 min)")
    mode.add_argument("--smoke", action="store_true", help="test-suite mode: 2 configs, 1 repeat")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell")
    parser.add_argument("--sessions", default=None, help="comma-separated (1,8,32)")
    parser.add_argument("--only", default=None, help="comma-separated configurations")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to update")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown for the section")
    parser.add_argument(
        "--alt-src",
        type=Path,
        default=None,
        help="another milterkit source tree (its src/ directory): each selected milterkit "
        "configuration also runs from it, named NAME+LABEL (to A/B a change)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help=f"no run: rewrite the section from saved runs (e.g. {RESULTS.relative_to(REPO)})",
    )
    parser.add_argument("--alt-label", default="alt", help="suffix for --alt-src configurations")
    args = parser.parse_args(argv)
    seconds, repeats, sessions = (3.0, 5, "1,8,32") if args.full else (1.5, 3, "1,8,32")
    if args.smoke:
        seconds, repeats, sessions = 0.5, 1, "1,8"
    args.seconds = args.seconds if args.seconds is not None else seconds
    args.repeats = args.repeats if args.repeats is not None else repeats
    args.sessions = [int(s) for s in (args.sessions or sessions).split(",")]
    known = {ALONE, *(spec.name for spec in milter_specs(""))}
    if args.alt_src is not None and not (args.alt_src / "milterkit" / "__init__.py").exists():
        parser.error(f"--alt-src {args.alt_src}: no milterkit package in it")
    unknown = set(args.only.split(",") if args.only else ()) - known
    if unknown:
        names = ", ".join(sorted(unknown))
        parser.error(f"unknown configurations: {names} (known: {', '.join(sorted(known))})")
    return args


def unavailable() -> str | None:
    reason = postfix_available()
    if reason is not None:
        return reason
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.path.exists(tool):
            return f"{tool} not found (Debian's postfix package has it)"
    return None


def choose_configs(args: argparse.Namespace) -> tuple[list[Config], str]:
    """The configurations to run, and the peers venv's python ('' if not needed)."""
    wanted = args.only.split(",") if args.only else None
    if wanted is None and args.smoke:
        wanted = list(SMOKE_CONFIGS)
    venv_python = ""
    names = [s.name for s in milter_specs("")]
    if wanted is None:
        wanted = [ALONE, *(n for n in names if n not in EXPERIMENTS)]
    if any(n.startswith("pymilter") for n in wanted):
        venv_python = compare.ensure_peers_venv()
    compiled_python = ""
    if any(n.startswith("milterkit-compiled-") for n in wanted):
        compiled_python = compare.ensure_compiled_venv()
    specs = {s.name: s for s in milter_specs(venv_python, compiled_python)}
    if any(n.startswith("libmilter") for n in wanted) and not compare.build_c_peer():
        wanted = [n for n in wanted if not n.startswith("libmilter")]
    if any(n.startswith("milterkit-uvloop") for n in wanted) and not _have_uvloop():
        compare.log("uvloop is not installed: leaving out the milterkit-uvloop configurations")
        wanted = [n for n in wanted if not n.startswith("milterkit-uvloop")]
    configs = [Config(n, specs.get(n)) for n in wanted]
    if args.alt_src is not None:
        configs += [
            Config(f"{c.name}+{args.alt_label}", alt_spec(c.spec, args.alt_src, args.alt_label))
            for c in configs
            if c.spec is not None and c.spec.kind == "milterkit"
        ]
    return configs, venv_python


def alt_spec(spec: compare.ServerSpec, src: Path, label: str) -> compare.ServerSpec:
    """The same milterkit server, importing milterkit from another source tree."""
    src = src.resolve()
    return dataclasses.replace(
        spec,
        name=f"{spec.name}+{label}",
        argv=lambda port: ["env", f"PYTHONPATH={src}", *spec.argv(port)],
    )


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def message_count(rate: float, sessions: int, seconds: float) -> int:
    """Messages for a run of about ``seconds`` at ``rate``; at least 4 per session."""
    return max(4 * sessions, min(20000, round(rate * seconds)))


def run_all(
    args: argparse.Namespace,
    configs: list[Config],
    postfix: BenchPostfix,
    sink: Sink,
    servers: dict[str, compare.Server],
) -> dict[tuple[str, int], Cell]:
    cells: dict[tuple[str, int], Cell] = {}
    for sessions in args.sessions:
        rates: dict[str, float] = {}
        for config in configs:  # pilot: warms up and sizes the runs
            pilot = measure(postfix, sink, config, servers.get(config.name), sessions, 4 * sessions)
            rates[config.name] = max(pilot.msgs_per_s, 1.0)
            compare.log(
                f"pilot {config.name:22} {sessions:2} sessions: {pilot.msgs_per_s:6.0f} msg/s"
            )
            if pilot.problems:
                compare.log("  problems: " + "; ".join(pilot.problems[:3]))
        for repeat in range(args.repeats):
            order = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
            for config in order:
                count = message_count(rates[config.name], sessions, args.seconds)
                run = measure(postfix, sink, config, servers.get(config.name), sessions, count)
                cell = cells.setdefault((config.name, sessions), Cell(config.name, sessions))
                cell.runs.append(run)
                rates[config.name] = cell.median("msgs_per_s") or 1.0
                compare.log(
                    f"{config.name:22} {sessions:2} sessions #{repeat + 1}: "
                    f"{run.msgs_per_s:6.0f} msg/s ({run.accepted} msgs) postfix "
                    f"{run.postfix_cpu_ms:.3f} milter {run.milter_cpu_ms:.3f} ms/msg "
                    f"load {run.load1:.2f} problems {len(run.problems)}"
                )
                for problem in run.problems[:3]:
                    compare.log("  " + problem[:300])
    return cells


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render is not None:
        return render(json.loads(args.render.read_text()), args)
    reason = unavailable()
    if reason is not None:
        compare.log(f"cannot run: {reason}")
        return 2
    load_start = compare._loadavg()
    configs, venv_python = choose_configs(args)
    logdir = compare.BUILD / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    servers = {c.name: compare.Server(c.spec, logdir) for c in configs if c.spec is not None}
    sink = Sink(logdir)
    postfix = BenchPostfix(
        sink.port, {name: f"inet:127.0.0.1:{s.port}" for name, s in servers.items()}
    )
    try:
        for server in servers.values():
            server.start()
        sink.start()
        postfix.start()
        postfix.wait_listening()
        cells = run_all(args, configs, postfix, sink, servers)
    finally:
        postfix.stop()
        sink.stop()
        for server in servers.values():
            server.stop()
    meta = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "sessions": args.sessions,
        "names": [c.name for c in configs],
        "argv": [str(Path(__file__).relative_to(REPO)), *argv],
        "commands": [command_line(server) for server in servers.values()],
        "versions": versions_of(venv_python),
        "machine": compare.machine_info(),
        "load": f"{load_start} at the start, {compare._loadavg()} at the end",
    }
    saved = {
        "meta": meta,
        "cells": {
            f"{n}|{s}": [dataclasses.asdict(r) for r in c.runs] for (n, s), c in cells.items()
        },
    }
    results = RESULTS if args.out == DEFAULT_OUT else args.out.with_suffix(".json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(saved, indent=1))
    return render(saved, args)


def command_line(server: compare.Server) -> str:
    text = shlex.join(server.argv).replace(sys.executable, "python3")
    text = text.replace(str(REPO) + "/", "").replace(str(server.port), "PORT")
    return f"{server.spec.name}: {text}"


def render(saved: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the section from saved runs (a fresh run's, or --render FILE's); print the tables."""
    meta = saved["meta"]
    cells: dict[tuple[str, int], Cell] = {}
    for key, runs in saved["cells"].items():
        name, sessions = key.rsplit("|", 1)
        kept = [Run(**r) for r in runs]
        for run in kept:
            run.problems = [p for p in run.problems if is_problem(p)]
        cells[(name, int(sessions))] = Cell(name, int(sessions), kept)
    names, sessions = meta["names"], meta["sessions"]
    throughput = render_throughput(cells, names, sessions)
    detail = render_detail(cells, names, sessions)
    problems = [
        f"{cell.config}, {cell.sessions} session(s): {p}"
        for cell in cells.values()
        for p in cell.problems
    ]
    notes_file = args.notes or (None if args.smoke or not NOTES.exists() else NOTES)
    text = section(
        throughput=throughput,
        detail=detail,
        meta=meta,
        notes=notes_file.read_text() if notes_file else "",
        problems=problems,
    )
    write_section(args.out, text)
    print(throughput)
    print(detail)
    compare.log(f"section written to {args.out}")
    if problems:
        compare.log(f"FAILED: {len(problems)} problem(s); first: {problems[0][:300]}")
    return 1 if problems or not cells else 0


if __name__ == "__main__":
    sys.exit(main())
