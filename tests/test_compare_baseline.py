"""``benchmarks/compare.py --baseline SRC``: every milterkit server also runs from SRC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import milterkit

REPO = Path(__file__).resolve().parent.parent
COMPARE = REPO / "benchmarks" / "compare.py"
#: Where the milterkit under test is: the checkout's src, or site-packages when the
#: suite runs against an installed (compiled) wheel and the tree has no src.
INSTALLED = Path(milterkit.__file__).resolve().parent.parent


def test_baseline_without_a_milterkit_package_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--baseline", str(tmp_path), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"--baseline {tmp_path}: no milterkit package in it" in done.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the load driver")
def test_baseline_servers_run_beside_the_others(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    argv = [sys.executable, str(COMPARE), "--quick", "--only", "milterkit-asyncio-1w"]
    done = subprocess.run(
        [*argv, "--baseline", str(INSTALLED), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| milterkit-")]
    assert sum(row.startswith("| milterkit-asyncio-1w@baseline |") for row in rows) == 4, rows
    assert sum(row.startswith("| milterkit-asyncio-1w |") for row in rows) == 4, rows
