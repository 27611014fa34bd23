"""Side-by-side milter benchmark: milterkit against the bare ceiling and other libraries.

Builds the C load driver and the C libmilter peer, installs the Python peers
(pinned) into ``benchmarks/.venv-peers``, starts every server on a free
loopback port, checks what each one negotiates (every step, with a reply),
warms each up, then runs the driver for each cell, rotating through the
servers so that a noisy machine affects all of them alike. Each cell is
repeated; the table shows medians.

Per run it records the driver's figures (messages/s, latency percentiles,
its own CPU), the server's CPU (utime+stime from /proc of the server process
and all its children, before and after) and its peak RSS (VmHWM, reset
before each run through /proc/PID/clear_refs, max over the processes).

    python benchmarks/compare.py                 # everything; writes docs/benchmarks.md
    python benchmarks/compare.py --quick --out /tmp/b.md   # CI smoke (< 60 s)
    python benchmarks/compare.py --only bare-uvloop,milterkit-uvloop-1w --seconds 5
    python benchmarks/compare.py --only milterkit-uvloop-1w --baseline /work/main/src  # A/B
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = HERE / "build"
PEERS = HERE / "peers"
VENV = HERE / ".venv-peers"
DRIVER_SRC = HERE / "driver" / "milterload.c"
DRIVER = BUILD / "milterload"
C_PEER_SRC = PEERS / "canonical_libmilter.c"
C_PEER = BUILD / "canonical_libmilter"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
#: Hand-written analysis appended to the report (not in --quick mode).
ANALYSIS = HERE / "analysis.md"
COMPILED_VENV = BUILD / ".venv-compiled"
MYPY_PIN = "mypy==2.4.1"  # the dev extra's pin: the mypyc that builds the compiled wheel

#: What the peers venv gets; the versions are printed and written to the report.
PEER_PINS = {
    "pymilter": "1.0.5",
    "purepythonmilter": "0.0.1",
    "kilter.service": "0.3.1",
    "kilter.protocol": "0.6.0",
}
DEBIAN_PACKAGES = ("libmilter1.0.1", "libmilter-dev", "gcc", "linux-image-amd64")

HEADERS = 10
RCPTS = 1
PER_CONN = 1
SMALL_BODY = 8192
BIG_BODY = 1 << 20

# protocol bits that would turn a step off or its reply off (PROTOCOL.md 4.2)
_STEP_OFF = {
    "connect": 0x1 | 0x1000,
    "helo": 0x2 | 0x2000,
    "mail": 0x4 | 0x4000,
    "rcpt": 0x8 | 0x8000,
    "body": 0x10 | 0x80000,
    "header": 0x20 | 0x80,
    "eoh": 0x40 | 0x40000,
    "data": 0x200 | 0x10000,
}
_OPTNEG_OFFER = struct.pack(">IBIII", 13, ord("O"), 6, 0x1FF, 0x1FFFFF)


@dataclasses.dataclass(frozen=True)
class Cell:
    conns: int
    body: int

    @property
    def label(self) -> str:
        return f"{self.conns} conn, {_size(self.body)}"


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: Callable[[int], list[str]]
    loop: str | None  # the Python event loop it runs on (for the ceiling ratio)
    kind: str  # "bare", "milterkit", "peer"
    needs: str = ""  # "venv" or "libmilter"


@dataclasses.dataclass
class Run:
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    messages: int
    errors: int
    unfinished: int
    cpu_ms_per_msg: float
    driver_cpu_s: float
    rss_mib: float


@dataclasses.dataclass
class CellResult:
    server: str
    cell: Cell
    runs: list[Run] = dataclasses.field(default_factory=list)

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in self.runs))

    @property
    def errors(self) -> int:
        return sum(r.errors + r.unfinished for r in self.runs)

    @property
    def rss_mib(self) -> float:
        return max((r.rss_mib for r in self.runs), default=0.0)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def python_servers(venv_python: str, compiled_python: str = "") -> list[ServerSpec]:
    py = sys.executable

    def bare(loop: str) -> Callable[[int], list[str]]:
        return lambda port: [py, str(PEERS / "bare_milter.py"), str(port), loop]

    def mk(
        loop: str, workers: int, execution: str = "auto", python: str = py
    ) -> Callable[[int], list[str]]:
        script = str(PEERS / "milterkit_canonical.py")
        options = ["--workers", str(workers), "--loop", loop, "--execution", execution]
        return lambda port: [python, script, str(port), *options]

    def compiled(workers: int) -> ServerSpec:
        name = f"milterkit-compiled-uvloop-{workers}w"
        argv = mk("uvloop", workers, python=compiled_python)
        return ServerSpec(name, argv, "uvloop", "milterkit", "compiled")

    def peer(script: str) -> Callable[[int], list[str]]:
        return lambda port: [venv_python, str(PEERS / script), str(port)]

    return [
        ServerSpec("bare-asyncio", bare("asyncio"), "asyncio", "bare"),
        ServerSpec("bare-uvloop", bare("uvloop"), "uvloop", "bare"),
        ServerSpec("milterkit-asyncio-1w", mk("asyncio", 1), "asyncio", "milterkit"),
        ServerSpec("milterkit-uvloop-1w", mk("uvloop", 1), "uvloop", "milterkit"),
        ServerSpec("milterkit-uvloop-2w", mk("uvloop", 2), "uvloop", "milterkit"),
        # every sync callback handed to the thread pool: the price of "always a thread"
        ServerSpec(
            "milterkit-uvloop-1w-threads", mk("uvloop", 1, "threads"), "uvloop", "milterkit"
        ),
        # the same canonical milter on the mypyc-compiled build (setup.py, MILTERKIT_MYPYC=1)
        compiled(1),
        compiled(2),
        ServerSpec("libmilter-C", lambda port: [str(C_PEER), str(port)], None, "peer", "libmilter"),
        ServerSpec("pymilter", peer("pymilter_canonical.py"), None, "peer", "venv"),
        ServerSpec("purepythonmilter", peer("ppm_canonical.py"), "asyncio", "peer", "venv"),
        ServerSpec("kilter", peer("kilter_canonical.py"), "asyncio", "peer", "venv"),
    ]


def _from_baseline(spec: ServerSpec, src: Path) -> ServerSpec:
    """The same server running the milterkit in ``src`` (PYTHONPATH), for an A/B in one run."""
    argv = spec.argv
    return dataclasses.replace(
        spec,
        name=f"{spec.name}@baseline",
        argv=lambda port: ["env", f"PYTHONPATH={src.resolve()}", *argv(port)],
    )


QUICK_SERVERS = ("bare-asyncio", "milterkit-asyncio-1w", "milterkit-uvloop-1w")


# ------------------------------------------------------------------------ building


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_checked(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + shlex.join(argv))
    return subprocess.run(argv, check=True, text=True, **kwargs)


def build_driver() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    if _stale(DRIVER, DRIVER_SRC):
        run_checked(["gcc", "-O2", "-o", str(DRIVER), str(DRIVER_SRC)])


def build_c_peer() -> bool:
    """Compile the libmilter peer; False if libmilter-dev is missing."""
    if not _stale(C_PEER, C_PEER_SRC):
        return True
    try:
        run_checked(
            ["gcc", "-O2", "-o", str(C_PEER), str(C_PEER_SRC), "-lmilter", "-lpthread"],
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        log(f"cannot build the libmilter peer (is libmilter-dev installed?):\n{exc.stderr}")
        return False
    return True


def _stale(target: Path, source: Path) -> bool:
    return not target.exists() or target.stat().st_mtime < source.stat().st_mtime


def ensure_peers_venv() -> str:
    """Create benchmarks/.venv-peers with the pinned peers; return its python."""
    python = VENV / "bin" / "python"
    stamp = VENV / "pins.json"
    wanted = json.dumps(PEER_PINS, sort_keys=True)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    if not python.exists():
        run_checked([sys.executable, "-m", "venv", str(VENV)])
    pins = [f"{name}=={version}" for name, version in PEER_PINS.items()]
    run_checked([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins])
    stamp.write_text(wanted)
    return str(python)


def ensure_compiled_venv() -> str:
    """benchmarks/build/.venv-compiled: this checkout built by mypyc; return its python.

    milterkit is rebuilt from the working tree on every run, so the compiled
    servers run the same source as the pure ones.
    """
    python = COMPILED_VENV / "bin" / "python"
    BUILD.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        run_checked([sys.executable, "-m", "venv", str(COMPILED_VENV)])
        tools = ["setuptools>=68", "wheel", MYPY_PIN]
        run_checked(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *tools]
        )
    env = {**os.environ, "MILTERKIT_MYPYC": "1"}
    install = ["install", "-q", "--disable-pip-version-check", "--no-build-isolation"]
    install += ["--force-reinstall", f"{REPO}[speed]"]
    run_checked([str(python), "-m", "pip", *install], env=env, cwd=BUILD)
    check = "import milterkit, sys; sys.exit(0 if milterkit.compiled() else 1)"
    run_checked([str(python), "-c", check], cwd=BUILD)
    return str(python)


def peer_versions(venv_python: str) -> dict[str, str]:
    out = subprocess.run(
        [venv_python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"]: p["version"] for p in json.loads(out)}


# ------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (through /proc/PID/task/*/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        seen.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{task}/children").read_text()
                    todo.extend(int(c) for c in children.split())
    return seen


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime (and reaped children's) of a process tree, in seconds."""
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{proc}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
            total += sum(int(f) for f in fields[11:15])
    return total / _TICK


def tree_rss(pid: int) -> tuple[float, int]:
    """Max VmHWM (MiB) over the serving processes, and how many processes the tree has.

    When the server forked workers, the root is a supervisor that never reads
    mail; the target is RSS per *worker*, so only the children count then.
    """
    procs = process_tree(pid)
    serving = procs[1:] or procs
    peak = 0
    for proc in serving:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak / 1024, len(procs)


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM (Linux >= 4.0)."""
    for proc in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{proc}/clear_refs", "w") as f:
            f.write("5")


def probe(port: int, timeout: float) -> tuple[int, int, int]:
    """Connect, offer everything in OPTNEG, return the reply's (version, actions, protocol)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_OPTNEG_OFFER)
        data = b""
        while len(data) < 17:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the OPTNEG reply")
            data += chunk
    _length, cmd, version, actions, protocol = struct.unpack_from(">IBIII", data)
    if cmd != ord("O"):
        raise ConnectionError(f"first reply is {chr(cmd)!r}, not OPTNEG")
    return version, actions, protocol


def steps_turned_off(protocol: int) -> list[str]:
    return [name for name, bits in _STEP_OFF.items() if protocol & bits]


class Server:
    def __init__(self, spec: ServerSpec, logdir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = spec.argv(self.port)
        self.logfile = logdir / f"{spec.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.negotiated: tuple[int, int, int] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log(f"starting {self.spec.name} on port {self.port}: {shlex.join(self.argv)}")
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited at start:\n{self.log_tail()}")
            try:
                self.negotiated = probe(self.port, 5.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.spec.name} does not listen after {timeout}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def drive(port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    argv = [str(DRIVER), "127.0.0.1", str(port), str(cell.conns), str(seconds), "0"]
    argv += [str(cell.body), str(HEADERS), str(RCPTS), str(PER_CONN)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed ({done.returncode}): {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(server: Server, cell: Cell, seconds: float) -> Run:
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError(f"{server.spec.name} is not running:\n{server.log_tail()}")
    reset_peak_rss(server.pid)
    cpu_before = tree_cpu_seconds(server.pid)
    out = drive(server.port, cell, seconds)
    time.sleep(0.05)  # let the server finish closing the last connections
    cpu = tree_cpu_seconds(server.pid) - cpu_before
    rss, _ = tree_rss(server.pid)
    messages = int(out["messages"])
    return Run(
        msgs_per_s=float(out["msgs_per_s"]),
        p50_ms=float(out["p50_ms"]),
        p99_ms=float(out["p99_ms"]),
        messages=messages,
        errors=int(out["errors"]),
        unfinished=int(out["unfinished"]),
        cpu_ms_per_msg=1000.0 * cpu / messages if messages else float("inf"),
        driver_cpu_s=float(out["driver_cpu_s"]),
        rss_mib=rss,
    )


# --------------------------------------------------------------------- report


def ceiling_for(spec: ServerSpec) -> str | None:
    if spec.kind == "bare" or spec.loop is None:
        return None
    return f"bare-{spec.loop}"


def render_table(
    results: dict[tuple[str, Cell], CellResult], specs: list[ServerSpec], cells: list[Cell]
) -> str:
    head = (
        "| server | load | msgs/s | p50 ms | p99 ms | CPU ms/msg | peak RSS MiB "
        "| ratio to ceiling | driver CPU s | errors |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    rows = []
    for cell in cells:
        for spec in specs:
            res = results.get((spec.name, cell))
            if res is None or not res.runs:
                continue
            ratio = "—"
            ceiling = ceiling_for(spec)
            base = results.get((ceiling, cell)) if ceiling else None
            if base is not None and base.runs and base.median("msgs_per_s") > 0:
                ratio = f"{res.median('msgs_per_s') / base.median('msgs_per_s'):.2f}x {ceiling}"
            rows.append(
                f"| {spec.name} | {cell.label} | {res.median('msgs_per_s'):.0f} "
                f"| {res.median('p50_ms'):.2f} | {res.median('p99_ms'):.2f} "
                f"| {res.median('cpu_ms_per_msg'):.3f} | {res.rss_mib:.1f} | {ratio} "
                f"| {res.median('driver_cpu_s'):.2f} | {res.errors} |"
            )
    return head + "\n".join(rows) + "\n"


@dataclasses.dataclass
class Verdict:
    target: str
    status: str  # "met", "missed", "n/a"
    figures: str


def evaluate_targets(
    results: dict[tuple[str, Cell], CellResult], cells: list[Cell]
) -> list[Verdict]:
    def get(name: str, cell: Cell) -> CellResult | None:
        res = results.get((name, cell))
        return res if res is not None and res.runs else None

    small = [c for c in cells if c.body == SMALL_BODY]
    by_conns = {c.conns: c for c in small}
    big = next((c for c in cells if c.body == BIG_BODY and c.conns == 8), None)
    verdicts: list[Verdict] = []

    def compare(
        target: str,
        pairs: list[tuple[str, str, Cell | None]],
        metric: str,
        factor: float,
        higher_is_better: bool = True,
    ) -> None:
        figures = []
        ok: list[bool] = []
        for mine, theirs, cell in pairs:
            a = get(mine, cell) if cell else None
            b = get(theirs, cell) if cell else None
            if a is None or b is None or cell is None:
                continue
            x, y = a.median(metric), b.median(metric)
            good = x >= factor * y if higher_is_better else x <= factor * y
            ok.append(good)
            rel = x / y if y else float("inf")
            figures.append(f"{cell.label}: {mine} {x:.2f} vs {theirs} {y:.2f} ({rel:.2f}x)")
        status = "n/a" if not ok else ("met" if all(ok) else "missed")
        verdicts.append(Verdict(target, status, "; ".join(figures) or "not measured"))

    compare(
        "Library overhead, asyncio: one worker >= 0.7x bare-asyncio msgs/s",
        [("milterkit-asyncio-1w", "bare-asyncio", c) for c in small],
        "msgs_per_s",
        0.7,
    )
    compare(
        "Library overhead, uvloop: one worker >= 0.7x bare-uvloop msgs/s",
        [("milterkit-uvloop-1w", "bare-uvloop", c) for c in small],
        "msgs_per_s",
        0.7,
    )
    compare(
        "uvloop, one worker >= pymilter msgs/s at 8 and 64 connections",
        [("milterkit-uvloop-1w", "pymilter", by_conns.get(n)) for n in (8, 64)],
        "msgs_per_s",
        1.0,
    )
    compare(
        "Two workers >= 0.9x C libmilter msgs/s (8 and 64 connections)",
        [("milterkit-uvloop-2w", "libmilter-C", by_conns.get(n)) for n in (8, 64)],
        "msgs_per_s",
        0.9,
    )
    compare(
        "1 MiB body at 8 connections >= pymilter msgs/s (uvloop, one worker)",
        [("milterkit-uvloop-1w", "pymilter", big)],
        "msgs_per_s",
        1.0,
    )
    compare(
        "Compiled, one worker >= 1.3x pymilter msgs/s at 8 and 64 connections",
        [("milterkit-compiled-uvloop-1w", "pymilter", by_conns.get(n)) for n in (8, 64)],
        "msgs_per_s",
        1.3,
    )
    compare(
        "Compiled, two workers >= 1.3x C libmilter msgs/s (8 and 64 connections)",
        [("milterkit-compiled-uvloop-2w", "libmilter-C", by_conns.get(n)) for n in (8, 64)],
        "msgs_per_s",
        1.3,
    )
    compare(
        "Compiled, one worker >= 0.85x bare-uvloop msgs/s",
        [("milterkit-compiled-uvloop-1w", "bare-uvloop", c) for c in small],
        "msgs_per_s",
        0.85,
    )
    for name in ("milterkit-uvloop-1w", "milterkit-uvloop-2w"):
        compare(
            f"Latency p99 at 64 connections <= 1.5x C libmilter's ({name})",
            [(name, "libmilter-C", by_conns.get(64))],
            "p99_ms",
            1.5,
            higher_is_better=False,
        )
    one = by_conns.get(1)
    for name in ("milterkit-asyncio-1w", "milterkit-uvloop-1w", "milterkit-uvloop-2w"):
        res = get(name, one) if one else None
        if res is None:
            continue
        p50 = res.median("p50_ms")
        verdicts.append(
            Verdict(
                f"TCP p50 at one connection < 3 ms ({name})",
                "met" if p50 < 3.0 else "missed",
                f"p50 {p50:.2f} ms",
            )
        )
    sixty_four = by_conns.get(64)
    compiled_workers = ("milterkit-compiled-uvloop-1w", "milterkit-compiled-uvloop-2w")
    for name in (
        "milterkit-asyncio-1w",
        "milterkit-uvloop-1w",
        "milterkit-uvloop-2w",
        *compiled_workers,
    ):
        res = get(name, sixty_four) if sixty_four else None
        if res is None:
            continue
        verdicts.append(
            Verdict(
                f"Peak RSS per worker <= 25 MiB in the 64-connection run ({name})",
                "met" if res.rss_mib <= 25.0 else "missed",
                f"VmHWM {res.rss_mib:.1f} MiB",
            )
        )
    return verdicts


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "os": _os_release(),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def debian_versions() -> dict[str, str]:
    if shutil.which("dpkg-query") is None:
        return {}
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *DEBIAN_PACKAGES],
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def software_versions(peers: dict[str, str]) -> dict[str, str]:
    versions = {"Python": platform.python_version()}
    try:
        versions["uvloop"] = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        versions["uvloop"] = "not installed"
    try:
        import milterkit

        versions["milterkit"] = milterkit.__version__ + _git_head()
    except ImportError:
        pass
    for name in (*PEER_PINS, "anyio", "attrs"):
        key = name.lower().replace(".", "-")
        for have, version in peers.items():
            if have.lower().replace(".", "-").replace("_", "-") == key:
                versions[name] = version
    for package, version in debian_versions().items():
        versions[f"deb {package}"] = version
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
        versions["gcc"] = gcc.stdout.splitlines()[0]
    return versions


def _git_head() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f" (git {head})"
    return ""


def write_report(
    out: TextIO,
    *,
    table: str,
    verdicts: list[Verdict],
    servers: list[Server],
    args: argparse.Namespace,
    argv: list[str],
    versions: dict[str, str],
    notes: str,
    load: str = "",
) -> None:
    machine = machine_info()
    if load:
        machine["load average (1/5/15 min)"] = load
    out.write("# Benchmarks: milterkit against the bare ceiling and other milter libraries\n\n")
    out.write(
        "Generated by `benchmarks/compare.py`; do not edit the figures by hand. Every server "
        "runs the *canonical milter*: it asks for every step (connect, helo, mail, rcpt, data, "
        "header, eoh, body) with a reply, answers continue, and at end of message adds one "
        "header and accepts. Load: `benchmarks/driver/milterload.c`, Postfix-like traffic "
        f"({HEADERS} headers, {RCPTS} recipient, Postfix's macros before each command, one "
        "message per connection, about 20 round trips per message) over loopback TCP. "
        f"Each cell ran {args.repeats} time(s) for {args.seconds:g} s, rotating through the "
        "servers; figures are medians (peak RSS: the max VmHWM of a serving process; a "
        "supervisor that forks workers and never reads mail is left out). CPU ms/msg is the "
        "server's "
        "utime+stime (all its processes) divided by the messages; the driver's own CPU is "
        "shown because it shares the 2 cores.\n\n"
    )
    out.write("## Results\n\n")
    out.write(table)
    out.write("\n## Targets\n\n| target | status | figures |\n|---|---|---|\n")
    for v in verdicts:
        mark = {"met": "**met**", "missed": "**missed**"}.get(v.status, v.status)
        out.write(f"| {v.target} | {mark} | {v.figures} |\n")
    if notes:
        out.write("\n" + notes.rstrip() + "\n")
    out.write("\n## Negotiation check\n\n")
    out.write(
        "OPTNEG reply of each server to an offer of everything (version, actions, protocol):\n\n"
    )
    for server in servers:
        if server.negotiated is None:
            continue
        optneg_version, actions, protocol = server.negotiated
        off = steps_turned_off(protocol)
        what = "every step, with a reply" if not off else f"turns off: {', '.join(off)}"
        out.write(
            f"- {server.spec.name}: v{optneg_version}, actions 0x{actions:x}, protocol "
            f"0x{protocol:x} ({what})\n"
        )
    out.write("\n## How it was run\n\n```\n")
    out.write(shlex.join([Path(sys.executable).name, *argv]) + "\n```\n\nServers:\n\n```\n")
    for server in servers:
        text = shlex.join(server.argv).replace(sys.executable, "python3")
        text = text.replace(str(REPO) + "/", "").replace(str(server.port), "PORT")
        out.write(f"{server.spec.name}: {text}\n")
    out.write(
        "```\n\nDriver, per cell: `benchmarks/build/milterload 127.0.0.1 PORT CONNS SECONDS 0 "
        f"BODY {HEADERS} {RCPTS} {PER_CONN}` (built with `gcc -O2`).\n\n"
    )
    out.write("## Versions\n\n")
    for name, version in versions.items():
        out.write(f"- {name}: {version}\n")
    out.write("\n## Machine\n\n")
    for name, value in machine.items():
        out.write(f"- {name}: {value}\n")


# ----------------------------------------------------------------------- main


_OWNED = re.compile(r"<!-- begin (\S+) -->\n.*?<!-- end \1 -->\n", re.DOTALL)


def kept_sections(path: Path) -> str:
    """Sections of the report that other scripts own (``<!-- begin X -->``), kept on rewrite.

    benchmarks/postfix.py writes its section into the same file.
    """
    try:
        text = path.read_text()
    except OSError:
        return ""
    return "\n".join(m.group(0) for m in _OWNED.finditer(text))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (< 60 s)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (3)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (3)")
    parser.add_argument("--only", default=None, help="comma-separated server names")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report path")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a milterkit src dir: each milterkit server also runs from it, as NAME@baseline",
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="Markdown appended (default: benchmarks/analysis.md)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "milterkit" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no milterkit package in it")
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    load_start = _loadavg()
    build_driver()
    venv_python = ""
    wanted = (
        args.only.split(",")
        if args.only
        else list(QUICK_SERVERS)
        if args.quick
        else [s.name for s in python_servers("")]
    )
    if not args.quick and any(
        name in ("pymilter", "purepythonmilter", "kilter") for name in wanted
    ):
        venv_python = ensure_peers_venv()
    compiled_python = ""
    if any(name.startswith("milterkit-compiled-") for name in wanted):
        compiled_python = ensure_compiled_venv()
    specs = [s for s in python_servers(venv_python, compiled_python) if s.name in wanted]
    if args.baseline is not None:
        specs += [_from_baseline(s, args.baseline) for s in specs if s.kind == "milterkit"]
    unknown = set(wanted) - {s.name for s in specs}
    if unknown:
        log(f"unknown or unavailable servers: {', '.join(sorted(unknown))}")
        return 2
    if any(s.needs == "libmilter" for s in specs) and not build_c_peer():
        specs = [s for s in specs if s.needs != "libmilter"]
    if any(s.needs == "venv" for s in specs) and not venv_python:
        log("peers need the venv; it is not installed in --quick mode")
        specs = [s for s in specs if s.needs != "venv"]
    peers = peer_versions(venv_python) if venv_python else {}
    versions = software_versions(peers)
    if compiled_python:
        build = run_checked([compiled_python, "-m", "milterkit", "--version"], capture_output=True)
        versions["milterkit (compiled servers)"] = build.stdout.strip()
    for name, version in versions.items():
        log(f"version {name}: {version}")

    cells = [Cell(1, SMALL_BODY), Cell(8, SMALL_BODY), Cell(64, SMALL_BODY), Cell(8, BIG_BODY)]
    logdir = BUILD / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    servers = [Server(spec, logdir) for spec in specs]
    results: dict[tuple[str, Cell], CellResult] = {}
    try:
        for server in servers:
            server.start()
            assert server.negotiated is not None
            off = steps_turned_off(server.negotiated[2])
            if off:
                log(f"warning: {server.spec.name} turns off steps: {', '.join(off)}")
            drive(server.port, Cell(8, SMALL_BODY), 0.5 if args.quick else 1.0)  # warm-up
        for cell in cells:
            for repeat in range(args.repeats):
                for server in servers:
                    run = measure(server, cell, args.seconds)
                    res = results.setdefault(
                        (server.spec.name, cell), CellResult(server.spec.name, cell)
                    )
                    res.runs.append(run)
                    log(
                        f"{server.spec.name:22} {cell.label:18} #{repeat + 1}: "
                        f"{run.msgs_per_s:8.0f} msg/s p50 {run.p50_ms:7.2f} p99 {run.p99_ms:8.2f} "
                        f"cpu {run.cpu_ms_per_msg:6.3f} ms/msg rss {run.rss_mib:5.1f} MiB "
                        f"err {run.errors + run.unfinished}"
                    )
    finally:
        for server in servers:
            server.stop()

    table = render_table(results, specs, cells)
    verdicts = evaluate_targets(results, cells)
    notes_file = args.notes or (None if args.quick or not ANALYSIS.exists() else ANALYSIS)
    notes = notes_file.read_text() if notes_file else ""
    load_end = _loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = kept_sections(args.out)
    with open(args.out, "w") as out:
        write_report(
            out,
            table=table,
            verdicts=verdicts,
            servers=servers,
            args=args,
            argv=[str(Path(__file__).relative_to(REPO)), *argv],
            versions=versions,
            notes=notes,
            load=f"{load_start} at the start, {load_end} at the end",
        )
        if kept:
            out.write("\n" + kept)
    raw = {
        f"{name}|{cell.conns}|{cell.body}": [dataclasses.asdict(r) for r in res.runs]
        for (name, cell), res in results.items()
    }
    (BUILD / "compare-results.json").write_text(json.dumps(raw, indent=1))
    print(table)
    for v in verdicts:
        print(f"[{v.status}] {v.target}: {v.figures}")
    log(f"report written to {args.out} in {time.monotonic() - started:.0f}s")
    bad = [r for r in results.values() if r.errors or r.median("msgs_per_s") <= 0]
    for res in bad:
        log(
            f"FAILED: {res.server} {res.cell.label}: {res.errors} errors, "
            f"{res.median('msgs_per_s'):.0f} msgs/s"
        )
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
