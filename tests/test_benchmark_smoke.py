"""Smoke test of the benchmark runner: ``benchmarks/compare.py --quick`` works end to end.

It builds the C load driver, runs the bare ceiling and milterkit (asyncio and
uvloop, one worker) for one second per cell, and writes the report. The
runner itself exits non-zero when a cell had errors or no throughput.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the load driver")
def test_compare_quick(tmp_path: Path) -> None:
    pytest.importorskip("uvloop", reason="the quick run includes milterkit on uvloop")
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    rows = [line for line in report.splitlines() if line.startswith("| milterkit-")]
    assert len(rows) >= 8, report  # 2 servers x 4 cells
    assert any(line.startswith("| bare-asyncio |") for line in report.splitlines())
    assert "## Targets" in report


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind counts the instructions")
def test_instructions_counts_per_message() -> None:
    """benchmarks/instructions.py gives a positive count for this checkout, and a clear
    error for a directory that is not a checkout."""
    script = str(REPO / "benchmarks" / "instructions.py")
    done = subprocess.run(
        [sys.executable, script, "--small", "2", "--large", "6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figure = done.stdout.split(": ")[1].split(" instructions")[0]
    assert int(figure.replace(",", "")) > 10_000, done.stdout
    wrong = subprocess.run(
        [sys.executable, script, "--tree", str(REPO / "docs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert "no benchmarks/session_micro.py there" in wrong.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind counts the instructions")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the load driver")
def test_instructions_counts_a_serving_process() -> None:
    """--worker counts the canonical milter served in-process under load: more than the
    session alone (the server and the loop are in it)."""
    pytest.importorskip("uvloop", reason="the serving process runs on uvloop")
    script = str(REPO / "benchmarks" / "instructions.py")
    done = subprocess.run(
        [sys.executable, script, "--worker", "--seconds", "1", "3"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "instructions per message (serving process)" in done.stdout, done.stdout
    figure = done.stdout.split(": ")[1].split(" instructions")[0]
    assert int(figure.replace(",", "")) > 100_000, done.stdout
