"""Coverage-guided fuzzing of FilterConnection with atheris (not collected by pytest).

Usage::

    pip install atheris
    python tests/protocol/fuzz_atheris.py [SECONDS] [libFuzzer options...]

The input is split into a small header (negotiation choices and read sizes)
and the byte stream "from the MTA". A permissive filter answers every command
the connection says is due. Only ProtocolError subclasses other than
LocalProtocolError may escape the core; anything else, a LocalProtocolError
for a reply the core itself asked for, or a receive buffer above
``max_payload + 5`` after draining is reported as a crash. The recorded
vector sessions seed the corpus, so the fuzzer starts from real traffic.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from milterkit.protocol import LocalProtocolError, ProtocolError, ProtocolFlag
    from milterkit.protocol.constants import Action

    # The permissive filter of the Hypothesis fuzz tests: one answering logic for both.
    from tests.protocol.test_fuzz import FilterDriver

_PROTOCOLS = [
    ProtocolFlag(0),
    ProtocolFlag.NOUNKNOWN | ProtocolFlag.SKIP,
    ProtocolFlag.NR_HDR | ProtocolFlag.NR_BODY | ProtocolFlag.NOEOH,
    ProtocolFlag.NOCONNECT | ProtocolFlag.NOHELO | ProtocolFlag.NOMAIL | ProtocolFlag.NORCPT,
    ProtocolFlag(0x1FF000) | ProtocolFlag.MDS_256K | ProtocolFlag.MDS_1M,
]
_ACTIONS = [Action(0), Action.ADD_HEADERS | Action.CHANGE_BODY]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    proto = _PROTOCOLS[fdp.ConsumeIntInRange(0, len(_PROTOCOLS) - 1)]
    acts = _ACTIONS[fdp.ConsumeIntInRange(0, len(_ACTIONS) - 1)]
    step = fdp.ConsumeIntInRange(1, 257)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    driver = FilterDriver(proto, acts)
    try:
        for start in range(0, len(stream), step):
            driver.conn.receive_data(stream[start : start + step])
            driver.pump()
        driver.conn.receive_data(b"")
        driver.pump()
    except LocalProtocolError:
        raise
    except ProtocolError:
        pass


def _seed_corpus() -> str:
    """A directory holding each recorded session's MTA stream behind a 3-byte header."""
    from tests.protocol.vectors import all_vector_files, load

    corpus = Path(tempfile.mkdtemp(prefix="milterkit-fuzz-"))
    for i, path in enumerate(all_vector_files()):
        stream = b"".join(p.raw for p in load(path) if p.direction == "mta")
        (corpus / path.stem).write_bytes(bytes((i % 5, i % 2, 13)) + stream)
    return str(corpus)


def main() -> None:
    seconds = 60
    args = sys.argv[1:]
    if args and args[0].isdigit():
        seconds = int(args.pop(0))
    argv = [sys.argv[0], f"-max_total_time={seconds}", "-max_len=300000", *args]
    if not any(not a.startswith("-") for a in args):
        argv.append(_seed_corpus())
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
