"""Fixtures: the C libmilter reference filter, milterkit's own server running RefTwin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realmta._util import free_port
from tests.ref import build as ref_build

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ref_filter_address() -> Iterator[str]:
    """``inet:PORT@127.0.0.1`` of a running C reference filter (skips without libmilter)."""
    try:
        ref_build.build_ref_filter()
    except ref_build.Unavailable as exc:
        pytest.skip(f"C reference filter unavailable: {exc}")
    spec = f"inet:{free_port()}@127.0.0.1"
    with ref_build.running_ref_filter(spec):
        yield spec


@pytest.fixture(scope="module")
def twin_server_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RefTwin served by ``milterkit run`` over a unix socket, as in production."""
    socket_path = tmp_path_factory.mktemp("twin") / "twin.sock"
    command = [
        sys.executable, "-m", "milterkit", "run", "tests.interop.milters:RefTwin",
        "--socket", f"unix:{socket_path}", "--workers", "1", "--log", "null",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert daemon.poll() is None, "milterkit run exited early"
            assert time.monotonic() < deadline, "no socket after 20 s"
            time.sleep(0.05)
        yield f"unix:{socket_path}"
    finally:
        daemon.terminate()
        daemon.wait(20)
