"""Loading the recorded sessions of ../shared/vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import shared_dir


@dataclass(frozen=True)
class Packet:
    seq: int
    direction: str  # "mta" or "filter"
    cmd: str
    raw: bytes

    @property
    def payload(self) -> bytes:
        return self.raw[5:]


def load(path: Path) -> list[Packet]:
    packets = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            packets.append(Packet(rec["seq"], rec["dir"], rec["cmd"], bytes.fromhex(rec["hex"])))
    return packets


def all_vector_files() -> list[Path]:
    return sorted((shared_dir() / "vectors").glob("*.jsonl"))
