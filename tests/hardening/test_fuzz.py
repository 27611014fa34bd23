"""Bounded fuzzing: Hypothesis over MilterSession (the layer tests/protocol/test_fuzz.py
does not cover), and atheris over all four targets when it is installed.

``tests/protocol/test_fuzz.py`` already fuzzes the frame decoder and both state
machines with Hypothesis; this adds the session (callbacks, limits, body spool)
and a coverage-guided run. Short mode: 300 examples and 20 s of atheris;
``MILTERKIT_LONG=1``: 20 000 examples and 300 s.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import OPTNEG_V6, fuzz_session
from tests.hardening.conftest import REPO, frame, scale

FRAMES = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda code, payload: len(payload + b"x").to_bytes(4, "big") + code + payload,
        st.sampled_from([bytes([c]) for c in b"CHMRTLNBEUAQKDO"] + [b"c", b"\x00"]),
        st.binary(max_size=80),
    ),
)
OPENING = OPTNEG_V6 + frame(b"C", b"client\x004\x00\x19127.0.0.1\x00") + frame(b"H", b"client\x00")
LONG_MESSAGE = (
    frame(b"M", b"<a@example>\x00")
    + frame(b"R", b"<b@example>\x00")
    + frame(b"L", b"Subject\x00x\x00") * 40
    + frame(b"N")
    + frame(b"B", b"b" * 65535) * 2
    + frame(b"E")
)
SETTINGS = settings(
    max_examples=scale(300, 20_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not os.environ.get("MILTERKIT_LONG"),
)


@SETTINGS
@given(st.lists(FRAMES, max_size=30), st.lists(st.integers(1, 300), max_size=4))
def test_session_survives_hostile_frames(frames: list[bytes], sizes: list[int]) -> None:
    fuzz_session(b"".join(frames), sizes, OPENING)


@SETTINGS
@given(st.data(), st.lists(st.integers(512, 70000), max_size=3))
def test_session_survives_mutated_message(data: st.DataObject, sizes: list[int]) -> None:
    stream = bytearray(LONG_MESSAGE)
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    fuzz_session(bytes(stream[:cut]), sizes, OPENING)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_finds_nothing(tmp_path: object) -> None:
    seconds = scale(20, 300)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/fuzz/atheris_fuzz.py"),
            f"-max_total_time={seconds}",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": f"{REPO}/src:{REPO}"},
    )
    tail = done.stderr[-3000:]
    assert done.returncode == 0, tail
    runs = [line for line in done.stderr.splitlines() if "stat::number_of_executed_units" in line]
    print(f"atheris: {seconds}s, {runs[-1].split(':')[-1].strip() if runs else '?'} inputs")
