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


#: Set by scripts/test-compiled: the run is against the installed mypyc-compiled build.
TESTING_COMPILED = os.environ.get("MILTERKIT_TEST_COMPILED") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under scripts/test-compiled, skip (and so count) tests marked incompatible_with_compiled."""
    if not TESTING_COMPILED:
        return
    for item in items:
        marker = item.get_closest_marker("incompatible_with_compiled")
        if marker is not None:
            reason = marker.args[0] if marker.args else "cannot run against compiled modules"
            item.add_marker(pytest.mark.skip(reason=f"incompatible_with_compiled: {reason}"))
