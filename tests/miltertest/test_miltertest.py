"""OpenDKIM's miltertest (a Lua-scripted MTA) drives the example milters.

The milters run as real daemons (``examples/*.py`` as scripts) on a unix
socket; each Lua script prints "<name>: ok" on success and "FAIL: why" on
failure. Skips when miltertest is not installed (Debian: ``apt-get install
miltertest``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MILTERTEST = shutil.which("miltertest")

pytestmark = pytest.mark.skipif(
    MILTERTEST is None, reason="miltertest not installed (Debian package 'miltertest')"
)


def start(tmp: Path, script: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp / f"{Path(script).stem}.sock"
    env = {**os.environ, "PYTHONPATH": f"{REPO}/src", "MILTERKIT_NO_UVLOOP": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / script),
            "--socket",
            f"unix:{sock}",
            "--workers",
            "1",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate(timeout=5)[0].decode(errors="replace")
            raise AssertionError(f"{script} did not start:\n{out}")
        time.sleep(0.05)
    return proc, sock


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out = proc.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate(timeout=5)[0]
    return out.decode(errors="replace")


def miltertest(lua: str, sock: Path) -> subprocess.CompletedProcess[str]:
    assert MILTERTEST is not None
    return subprocess.run(
        [MILTERTEST, "-D", f"SOCKET=unix:{sock}", "-s", str(HERE / lua)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_spamtrap(tmp: Path) -> None:
    proc, sock = start(tmp, "spamtrap.py")
    try:
        result = miltertest("spamtrap.lua", sock)
    finally:
        log = stop(proc)
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert "spamtrap.lua: ok" in result.stdout


def test_libmilterphp_sample(tmp: Path) -> None:
    proc, sock = start(
        tmp,
        "libmilterphp_sample.py",
        "--user",
        "",
        "--group",
        "",
        "--pid-file",
        str(tmp / "daemon.pid"),
    )
    try:
        assert (tmp / "daemon.pid").exists()
        result = miltertest("libmilterphp_sample.lua", sock)
    finally:
        log = stop(proc)
    assert result.returncode == 0, result.stdout + result.stderr + log
    assert "libmilterphp_sample.lua: ok" in result.stdout
    assert not (tmp / "daemon.pid").exists()
