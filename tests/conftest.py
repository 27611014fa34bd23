"""Shared test fixtures: where the recorded vectors live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """``../shared`` beside the checkout (as in CI), or MILTERKIT_SHARED."""
    env = os.environ.get("MILTERKIT_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    for path in candidates:
        if (path / "vectors").is_dir():
            return path
    raise RuntimeError(f"shared/vectors not found; looked in {[str(c) for c in candidates]}")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return shared_dir() / "vectors"
