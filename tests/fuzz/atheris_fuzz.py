"""Coverage-guided fuzzing of the frame decoder, both state machines and MilterSession.

Run: ``python tests/fuzz/atheris_fuzz.py -max_total_time=60`` (libFuzzer flags).
The first input byte picks the target, the next ones the read sizes, the rest
is the byte stream; every target may only raise ProtocolError (see targets.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    import milterkit.protocol
    import milterkit.session  # noqa: F401
    from tests.fuzz.targets import OPTNEG_V6, TARGETS

NAMES = sorted(TARGETS)


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    name = NAMES[data[0] % len(NAMES)]
    sizes = [1 + data[1] % 64, 1 + data[2] * 7]
    stream = data[3:]
    if name == "filter" and data[0] & 0x80:
        TARGETS[name](stream, sizes, OPTNEG_V6)  # type: ignore[call-arg]
    else:
        TARGETS[name](stream, sizes)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
